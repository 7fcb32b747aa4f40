"""torch.hub entry points: every classicnets model, built by name.

    model = torch.hub.load("path/to/classicnets", "alexnet", source="local", num_classes=10)
    model = torch.hub.load("path/to/classicnets", "resnet18", source="local", weights="resnet18.pth")

Each entry takes the model's own options (``classicnets models`` lists the models; ``num_classes``,
``in_channels``, ``width_mult``...) and ``weights``: a file that classicnets.weights loads (a torchvision or
timm-style state_dict, read without running code, a .safetensors file or a classicnets run directory).
"""

import sys
from pathlib import Path

dependencies = ["torch"]

_SRC = str(Path(__file__).resolve().parent / "src")
if _SRC not in sys.path:
    sys.path.insert(0, _SRC)  # this checkout's package, not another installed copy

from classicnets.registry import create_model, list_models, model_info  # noqa: E402


def _entry_point(name: str):
    def build(weights=None, **options):
        if weights is None:
            return create_model(name, **options)
        from classicnets.weights import infer_size, load_weights, read_weights

        file = read_weights(weights)
        model_options = {k: v for k, v in options.items() if k not in ("num_classes", "in_channels")}
        num_classes, in_channels = infer_size(file, name, model_options)
        model = create_model(name, **{"num_classes": num_classes, "in_channels": in_channels, **options})
        load_weights(model, file, name=name, options=model_options)
        return model

    info = model_info(name)
    build.__name__ = build.__qualname__ = name
    build.__doc__ = (f"{name}: {info.paper} ({info.year}). Options as create_model({name!r}, ...); "
                     "weights=FILE loads a state_dict, .safetensors file or run directory.")
    return build


for _name in list_models():
    globals()[_name] = _entry_point(_name)
