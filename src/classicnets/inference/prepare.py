"""The model's input from uint8 images, as the trainer's test loader made it: channels, size, mean/std."""

from __future__ import annotations

from collections.abc import Callable

import torch

from ..checkpoint import Preprocessing
from ..errors import ConfigError

# ITU-R 601 luma, the weights PIL's convert("L") uses, to feed colour images to a grey model.
LUMA_WEIGHTS = (0.299, 0.587, 0.114)


def prepare_batch(images: torch.Tensor, prep: Preprocessing, *, uncropped: bool = False,
                  channels_last: bool = False) -> torch.Tensor:
    """uint8 (N, C, H, W) images -> the float input the model was trained on, on the images' device.

    Channels are converted to the model's (grey repeated, colour to luma), then the data layer's test
    transform runs, the one the trainer evaluates with: resize to the image size, scale to [0, 1],
    normalise with the checkpoint's mean/std when it has them. ``uncropped`` resizes to the paper's
    pre-crop size instead (256 for 224), for ten-crop TTA.
    """
    return eval_transform(prep, uncropped=uncropped, channels_last=channels_last)(images)


def eval_transform(prep: Preprocessing, *, uncropped: bool = False,
                   channels_last: bool = False) -> Callable[[torch.Tensor], torch.Tensor]:
    """:func:`prepare_batch` as one transform for many batches: it keeps its constants (resize matrices,
    mean/std) on the device, where building them for every batch would wait on a copy each time."""
    from ..data.augment import BatchTransform

    transform = BatchTransform(image_size=prep.image_size, train=False, mean=prep.mean, std=prep.std,
                               channels_last=channels_last, uncropped=uncropped)
    return lambda images: transform(_match_channels(images, prep.in_channels))


def _match_channels(images: torch.Tensor, channels: int) -> torch.Tensor:
    found = images.shape[1]
    if found == channels:
        return images
    if found == 1:
        return images.expand(-1, channels, -1, -1)
    if found == 3 and channels == 1:
        weights = torch.tensor(LUMA_WEIGHTS, device=images.device).view(1, 3, 1, 1)
        return (images.float() * weights).sum(dim=1, keepdim=True).round_().to(torch.uint8)
    raise ConfigError(f"images have {found} channels and the model takes {channels}; only grey <-> RGB "
                      "conversions are defined")
