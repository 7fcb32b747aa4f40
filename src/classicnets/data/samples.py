"""A folder of real colour photos for demos, tests and benchmarks, built from the photos scikit-image ships.

    >>> from classicnets.data.samples import sample_photo_folder
    >>> root = sample_photo_folder("photos", train_per_class=40, val_per_class=10)  # photos/train, photos/val

Each class is one photo (the astronaut, a coffee cup, a cat, a rocket, ...); each image is a random crop of
it (a third to all of its area), mirrored half the time, slightly brightened or darkened, rescaled to an
ImageNet-like size (500x375, or 375x500 for upright crops) and saved as a JPEG. The classes are learnable, the
files are real JPEGs of realistic size, and the same arguments give the same files. Needs scikit-image
(``pip install classicnets[samples]``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import ConfigError

# class name -> skimage.data loader; all colour photos (or photo-like), shipped with scikit-image itself
PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "hubble_deep_field", "immunohistochemistry")


def _photo(name: str) -> np.ndarray:
    try:
        import skimage.data
    except ImportError as error:
        raise ConfigError(
            "the sample photos come from scikit-image: pip install scikit-image (or classicnets[samples])"
        ) from error
    return getattr(skimage.data, name)()[..., :3]


def sample_photo_folder(
    root: str | Path,
    *,
    classes: int = 4,
    train_per_class: int = 64,
    val_per_class: int = 16,
    size: tuple[int, int] = (500, 375),
    quality: int = 90,
    seed: int = 0,
) -> Path:
    """Write ``root/train/<photo>/<i>.jpg`` and ``root/val/<photo>/<i>.jpg``; return ``root``."""
    from PIL import Image

    if not 1 <= classes <= len(PHOTOS):
        raise ConfigError(f"classes must lie in 1..{len(PHOTOS)} (the sample photos), found {classes}")
    root = Path(root)
    rng = np.random.default_rng(seed)
    for name in PHOTOS[:classes]:
        photo = Image.fromarray(_photo(name))
        width, height = photo.size
        for split, count in (("train", train_per_class), ("val", val_per_class)):
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                area = rng.uniform(1 / 3, 1.0)
                aspect = np.exp(rng.uniform(np.log(3 / 4), np.log(4 / 3)))
                w = min(width, round(np.sqrt(area * width * height * aspect)))
                h = min(height, round(np.sqrt(area * width * height / aspect)))
                left, top = rng.integers(0, width - w + 1), rng.integers(0, height - h + 1)
                crop = photo.crop((left, top, left + w, top + h))
                if rng.random() < 0.5:
                    crop = crop.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
                target = size if w >= h else size[::-1]
                crop = crop.resize(target, Image.Resampling.BICUBIC)
                pixels = np.asarray(crop, dtype=np.float32) * rng.uniform(0.8, 1.2)
                image = Image.fromarray(pixels.clip(0, 255).astype(np.uint8))
                image.save(folder / f"{i:04d}.jpg", quality=quality)
    return root
