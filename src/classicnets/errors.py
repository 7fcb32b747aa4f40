"""Errors a user can act on. The CLI prints their message and exits non-zero, without a traceback."""


class ClassicnetsError(Exception):
    """Base of every error caused by input (a name, a file, a flag) rather than by a bug.

    The message names the input, what was expected, what was found and what to do.
    """


class ConfigError(ClassicnetsError, ValueError):
    """A setting that cannot be used (unknown key, wrong type, out of range)."""


class InputShapeError(ClassicnetsError, ValueError):
    """A tensor whose shape the model cannot take; the message names the expected shape."""


class DatasetError(ClassicnetsError):
    """A dataset that is missing, truncated, corrupt or inconsistent."""


class CheckpointError(ClassicnetsError):
    """A checkpoint that is missing, corrupt, unsafe or for another model."""


def refuse_url(path: object, what: str, error: type[ClassicnetsError] = ClassicnetsError) -> None:
    """Raise ``error`` when ``path`` is a URL: classicnets reads local files only (``Path`` would turn
    ``https://host/x`` into ``https:/host/x`` and report that it "does not exist")."""
    text = str(path)
    if "://" in text:
        raise error(f"{what} {text} is a URL; classicnets reads local files and folders only. Download it "
                    "first (e.g. curl -LO URL) and pass the local path")


class ClassicnetsWarning(UserWarning):
    """Something that works but may not do what was meant; the CLI prints it as one line, no source line."""


class MissingDependencyError(ClassicnetsError, ImportError):
    """An optional package (onnx, onnxruntime, tensorboard...) that a command needs is not installed."""
