"""``classicnets.predict``: the most probable classes of image files or PIL images."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..checkpoint import load_model
from ..errors import ClassicnetsError, ConfigError
from ..evaluation import check_tta, scores
from ..runtime import resolve_device
from .prepare import eval_transform


class ImageInputError(ClassicnetsError, ValueError):
    """An image file that is missing or cannot be decoded."""


@dataclass
class Prediction:
    """The top classes for one image, most probable first, as (class name, probability)."""

    source: str
    top: list[tuple[str, float]]

    @property
    def label(self) -> str:
        return self.top[0][0]


def predict(
    checkpoint: str | Path,
    images: Sequence[str | Path | Any],
    *,
    top_k: int = 5,
    tta: str = "none",
    invert: bool = False,
    device: str | torch.device = "auto",
) -> list[Prediction]:
    """The ``top_k`` classes with probabilities for each image (paths or PIL images), in one batch.

    Any size, grey or colour: each image is converted to the model's channels, centre-cropped to a square
    (the paper's test crop; training images are square) and resized and normalised as in training.
    ``invert`` turns dark-on-light photos into the light-on-dark look of Fashion-MNIST and MNIST.
    """
    check_tta(tta)
    if not images:
        raise ConfigError("no images given; pass one or more image files")
    loaded = load_model(checkpoint)
    prep = loaded.preprocessing
    run_device = resolve_device(device)
    model = loaded.model.to(run_device)
    prepare = eval_transform(prep, uncropped=tta == "ten-crop")
    with torch.inference_mode():
        x = torch.cat([prepare(_square_image(image, prep.in_channels, invert)[None].to(run_device))
                       for image in images])
        probabilities = scores(model, x, tta, prep.image_size)
        if tta == "none":
            probabilities = probabilities.softmax(dim=1)
        values, indices = probabilities.topk(min(top_k, len(loaded.classes)), dim=1)
    classes = loaded.classes
    return [Prediction(_source_name(image), [(classes[i], p) for i, p in zip(row_i, row_p, strict=True)])
            for image, row_i, row_p in zip(images, indices.tolist(), values.tolist(), strict=True)]


def _square_image(image: str | Path | Any, channels: int, invert: bool) -> torch.Tensor:
    """An image file or PIL image as uint8 (channels, S, S): its centred square, before any resizing."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    if isinstance(image, (str, Path)):
        try:
            with Image.open(image) as opened:
                opened.load()
                pil = opened
        except FileNotFoundError:
            raise ImageInputError(f"image {image} does not exist") from None
        except (UnidentifiedImageError, OSError) as error:
            raise ImageInputError(f"{image} is not an image PIL can read ({error}); "
                                  "pass a PNG, JPEG, BMP, GIF or TIFF file") from None
    else:
        pil = image
    pil = ImageOps.exif_transpose(pil)  # phone photos store their rotation in EXIF
    pil = pil.convert("L" if channels == 1 else "RGB")
    if invert:
        pil = ImageOps.invert(pil)
    array = np.asarray(pil, dtype=np.uint8)
    tensor = torch.from_numpy(array.copy()).reshape(array.shape[0], array.shape[1], -1).permute(2, 0, 1)
    height, width = tensor.shape[-2:]
    side = min(height, width)
    top, left = (height - side) // 2, (width - side) // 2
    return tensor[:, top:top + side, left:left + side]


def _source_name(image: Any) -> str:
    return str(image) if isinstance(image, (str, Path)) else f"<{type(image).__name__}>"
