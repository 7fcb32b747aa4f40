"""``classicnets.predict``: the most probable classes of image files or PIL images."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..checkpoint import LoadedCheckpoint, Preprocessing, load_model
from ..errors import ClassicnetsError, ConfigError
from ..evaluation import check_tta, scores
from ..runtime import resolve_device
from .evaluate import warn_tta
from .prepare import eval_transform


class ImageInputError(ClassicnetsError, ValueError):
    """An image file that is missing or cannot be decoded."""


@dataclass
class Prediction:
    """The top classes for one image, most probable first, as (class name, probability)."""

    source: str
    top: list[tuple[str, float]]
    # entropy of the whole distribution over the classes, divided by its largest value, log(classes):
    # 0 is one certain class, 1 a uniform guess
    entropy: float = 0.0
    note: str = ""  # why the label may not mean much (low confidence, an image unlike the training images)

    @property
    def label(self) -> str:
        return self.top[0][0]


LOW_CONFIDENCE = 0.5  # a top class below this probability, or an entropy above it, is flagged
BRIGHTNESS_GAP = 0.25  # a mean brightness this far from the training images' is flagged


def _prediction_note(probability: float, entropy: float, brightness: float, prep: Preprocessing,
                     invert: bool) -> str:
    notes = []
    if probability < LOW_CONFIDENCE or entropy > LOW_CONFIDENCE:
        notes.append("low confidence: the model cannot tell these classes apart on this image")
    if prep.mean is not None:
        trained = sum(prep.mean) / len(prep.mean)
        if abs(brightness - trained) > BRIGHTNESS_GAP:
            hint = ""
            if brightness > trained:
                hint = "; try without --invert" if invert else "; dark things on light photos need --invert"
            notes.append(f"the image is {'brighter' if brightness > trained else 'darker'} than the training "
                         f"images (mean {brightness:.2f} vs {trained:.2f}), so it is unlike what the model "
                         f"learnt from and its label may be wrong however confident{hint}")
    return "; ".join(notes)


def predict(
    checkpoint: str | Path | LoadedCheckpoint,
    images: Sequence[str | Path | Any],
    *,
    top_k: int = 5,
    tta: str = "none",
    invert: bool = False,
    device: str | torch.device = "auto",
    weights: str | Path | None = None,
) -> list[Prediction]:
    """The ``top_k`` classes with probabilities for each image (paths or PIL images), in one batch.

    Any size, grey or colour: each image is converted to the model's channels, centre-cropped to a square
    (the paper's test crop; training images are square) and resized and normalised as in training.
    ``invert`` turns dark-on-light photos into the light-on-dark look of Fashion-MNIST and MNIST.
    With ``weights``, ``checkpoint`` is a model name (``predict("resnet18", ["cat.jpg"],
    weights="resnet18.pth")``): ImageNet weights print ImageNet's class names.
    """
    check_tta(tta)
    if not images:
        raise ConfigError("no images given; pass one or more image files")
    loaded = load_model(checkpoint, weights=weights)
    warn_tta(loaded, tta)
    prep = loaded.preprocessing
    run_device = resolve_device(device)
    model = loaded.model.to(run_device)
    prepare = eval_transform(prep, uncropped=tta == "ten-crop")
    with torch.inference_mode():
        squares = [square_image(image, prep.in_channels, invert) for image in images]
        x = torch.cat([prepare(square[None].to(run_device)) for square in squares])
        probabilities = scores(model, x, tta, prep.image_size)
        if tta == "none":
            probabilities = probabilities.softmax(dim=1)
        values, indices = probabilities.topk(min(top_k, len(loaded.classes)), dim=1)
        entropy = -(probabilities * probabilities.clamp_min(1e-12).log()).sum(dim=1)
        entropy = (entropy / math.log(max(len(loaded.classes), 2))).tolist()
    classes = loaded.classes
    brightness = [float(square.float().mean()) / 255 for square in squares]
    return [Prediction(source_name(image), [(classes[i], p) for i, p in zip(row_i, row_p, strict=True)],
                       entropy=h, note=_prediction_note(row_p[0], h, light, prep, invert))
            for image, row_i, row_p, h, light in zip(images, indices.tolist(), values.tolist(), entropy,
                                                       brightness, strict=True)]


def square_image(image: str | Path | Any, channels: int, invert: bool) -> torch.Tensor:
    """An image file or PIL image as uint8 (channels, S, S): its centred square, before any resizing.

    Files are decoded as the training folders are (data.formats.decode_image: EXIF orientation, 16-bit
    grey scaled to 8 bits, decompression bombs refused), so a picture is the same input as in training."""
    from PIL import ImageOps

    from ..data.formats import as_8bit

    mode = "L" if channels == 1 else "RGB"
    pil = _read_image_file(image, mode) if isinstance(image, (str, Path)) else as_8bit(image, mode)
    if invert:
        pil = ImageOps.invert(pil)
    array = np.asarray(pil, dtype=np.uint8)
    tensor = torch.from_numpy(array.copy()).reshape(array.shape[0], array.shape[1], -1).permute(2, 0, 1)
    height, width = tensor.shape[-2:]
    side = min(height, width)
    top, left = (height - side) // 2, (width - side) // 2
    return tensor[:, top:top + side, left:left + side]


def _read_image_file(image: str | Path, mode: str):
    """Decode an image file with the data loader's guarded decode (data.formats.decode_image): its size is
    checked from the header before any pixel is decoded, so a decompression bomb is refused unread, and a
    pipe or device is refused unopened (reading a named pipe would wait for a writer forever)."""
    from ..data.formats import decode_image
    from ..errors import DatasetError, refuse_url

    refuse_url(image, "image", ImageInputError)
    path = Path(image)
    if not path.exists():
        raise ImageInputError(f"image {image} does not exist")
    try:
        return decode_image(path, mode=mode)
    except DatasetError as error:
        raise ImageInputError(f"{image} is not an image predict can use: {error} "
                              "Pass a PNG, JPEG, BMP, GIF or TIFF file") from None


def source_name(image: Any) -> str:
    """How an image is named in results: its path, or its type for an array or a PIL image."""
    return str(image) if isinstance(image, (str, Path)) else f"<{type(image).__name__}>"
