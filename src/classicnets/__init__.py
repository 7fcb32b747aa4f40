"""classicnets: AlexNet as the 2012 paper built it, and the classic CNNs that followed.

    >>> import classicnets
    >>> model = classicnets.create_model("alexnet_d2l", num_classes=10, in_channels=1)
    >>> classicnets.list_models("resnet*")
    ['resnet101', 'resnet152', 'resnet18', 'resnet34', 'resnet50']

Names are loaded on first use, so `import classicnets` stays cheap for the CLI.
"""

from importlib import import_module

__version__ = "0.1.0"

# public name -> module that defines it
_EXPORTS = {
    "create_model": "registry",
    "list_models": "registry",
    "model_info": "registry",
    "register_model": "registry",
    "ModelInfo": "registry",
    "ClassicnetsError": "errors",
    "summarize": "inspect",
    "TrainConfig": "training.config",
    "train": "experiment",
    "load_model": "checkpoint",
    "evaluate": "inference",
    "predict": "inference",
    "export": "inference",
    "reproduce": "experiments",
    "load_dataset": "data",
    "build_loaders": "data",
    "load_weights": "weights",
    "prepare": "data.prepare",
}

# subpackages reachable as attributes without their own import: classicnets.show.kernels(...)
_SUBPACKAGES = ("experiments", "show")

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _SUBPACKAGES:
        return import_module(f".{name}", __name__)
    if name not in _EXPORTS:
        raise AttributeError(f"module 'classicnets' has no attribute {name!r}")
    value = getattr(import_module(f".{_EXPORTS[name]}", __name__), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(__all__))
