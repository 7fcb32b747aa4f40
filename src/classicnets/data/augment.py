"""Batch transforms that run where the batch is (CPU or GPU): one call per batch, never one per image.

Every random transform takes an explicit ``torch.Generator`` on the batch's device, so a run is reproducible
from its seed. Images are (B, C, H, W); uint8 where noted, float in [0, 1] otherwise.

The paper's training views (Krizhevsky et al. 2012, section 4.1): shorter side 256, random 224x224 crops,
horizontal flips, and PCA colour augmentation, adding sum_i alpha_i lambda_i p_i to every pixel with
alpha_i ~ N(0, 0.1) drawn once per image per use. Its test view: ten 224 crops (four corners and the centre,
and their mirrors) with the softmax averaged: :mod:`classicnets.evaluation` cuts those views.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import ConfigError

PAPER_PRE_CROP = 256 / 224  # the paper crops 224 out of 256


def pre_crop_size(image_size: int) -> int:
    """The side the paper's crops are cut from: 256 for 224, scaled alike for other sizes."""
    return round(image_size * PAPER_PRE_CROP)


# ----------------------------------------------------------------------------------------- geometry


def to_float(images: torch.Tensor) -> torch.Tensor:
    """uint8 [0, 255] -> float32 [0, 1] (what d2l's ToTensor gives)."""
    return images.float().div_(255)


def resize(images: torch.Tensor, size: int) -> torch.Tensor:
    """Bilinear resize of a float batch to size x size; anti-aliased when shrinking, as Pillow does."""
    if images.shape[-2:] == (size, size):
        return images
    shrinking = size < max(images.shape[-2:])
    return F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False, antialias=shrinking)


def random_flip(images: torch.Tensor, generator: torch.Generator, p: float = 0.5) -> torch.Tensor:
    """Mirror each image left-right with probability p (a mask and torch.where: no per-image loop)."""
    flip = torch.rand(images.shape[0], device=images.device, generator=generator) < p
    return torch.where(flip[:, None, None, None], images.flip(-1), images)


def _crop_at(images: torch.Tensor, top: torch.Tensor, left: torch.Tensor, size: int) -> torch.Tensor:
    """Gather one size x size window per image at (top, left): index grids, one advanced-indexing op."""
    steps = torch.arange(size, device=images.device)
    count, channels, height, width = images.shape
    if images.permute(0, 2, 3, 1).is_contiguous():
        # NHWC bytes (decoded images): a window's row is one contiguous run of size x C values, and unfold
        # offers every such run as a view, so the gather copies whole rows (one index per row, not per
        # pixel): the same result, 5x faster on a CPU
        runs = images.permute(0, 2, 3, 1).reshape(count, height, width * channels)
        runs = runs.unfold(2, size * channels, channels)  # B x H x (W - size + 1) x size*C
        batch = torch.arange(count, device=images.device)[:, None]
        rows = runs[batch, top[:, None] + steps, left[:, None]]  # B x size x size*C
        return rows.view(count, size, size, channels).permute(0, 3, 1, 2)
    rows = (top[:, None] + steps)[:, :, None]  # B x size x 1
    cols = (left[:, None] + steps)[:, None, :]  # B x 1 x size
    batch = torch.arange(images.shape[0], device=images.device)[:, None, None]
    return images[batch, :, rows, cols].permute(0, 3, 1, 2)  # B x size x size x C -> B x C x size x size


def random_crop(
    images: torch.Tensor, size: int, generator: torch.Generator, padding: int = 0
) -> torch.Tensor:
    """A random size x size window of each image, after zero-padding by ``padding`` on every side."""
    if padding:
        images = F.pad(images, (padding,) * 4)
    height, width = images.shape[-2:]
    if size > min(height, width):
        raise ConfigError(f"crop size {size} is larger than the padded image ({height}x{width})")
    count, device = images.shape[0], images.device
    top = torch.randint(0, height - size + 1, (count,), device=device, generator=generator)
    left = torch.randint(0, width - size + 1, (count,), device=device, generator=generator)
    return _crop_at(images, top, left, size)


def random_crop_flip(images: torch.Tensor, size: int, generator: torch.Generator, p: float = 0.5):
    """``random_flip(random_crop(images, size, generator), generator)``: the same draws and the same result,
    with the mirror done in place on the chosen crops only (on a CPU, a third of torch.where's traffic; on
    a GPU torch.where, as boolean indexing would read the mask back to the host)."""
    crops = random_crop(images, size, generator)
    flip = torch.rand(crops.shape[0], device=crops.device, generator=generator) < p
    if crops.device.type != "cpu":
        return torch.where(flip[:, None, None, None], crops.flip(-1), crops)
    crops[flip] = crops[flip].flip(-1)
    return crops


def center_crop(images: torch.Tensor, size: int) -> torch.Tensor:
    height, width = images.shape[-2:]
    top, left = (height - size) // 2, (width - size) // 2
    return images[..., top : top + size, left : left + size]


def random_boxes(count: int, generator: torch.Generator, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3)):
    """Inception-style crop boxes as fractions of the image: width, height (a random area fraction in
    ``scale`` and aspect ratio in ``ratio``, relative to the image's) and centre (in [-1, 1]). Boxes that do
    not fit are shrunk to fit rather than redrawn (torchvision redraws up to 10 times, then centre-crops)."""
    device = generator.device
    uniform = torch.rand(count, 4, device=device, generator=generator)
    area = scale[0] + (scale[1] - scale[0]) * uniform[:, 0]
    aspect = (math.log(ratio[0]) + (math.log(ratio[1]) - math.log(ratio[0])) * uniform[:, 1]).exp()
    width = (area * aspect).sqrt().clamp(max=1.0)
    height = (area / aspect).sqrt().clamp(max=1.0)
    centre_x = (uniform[:, 2] * 2 - 1) * (1 - width)
    centre_y = (uniform[:, 3] * 2 - 1) * (1 - height)
    return width, height, centre_x, centre_y


def random_resized_crop(
    images: torch.Tensor,
    size: int,
    generator: torch.Generator,
    scale: tuple[float, float] = (0.08, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
) -> torch.Tensor:
    """Inception-style random crops resized to size x size, as one ``grid_sample`` over per-image affine
    grids (the general path; small images upsampled take the matmul path in :class:`BatchTransform`)."""
    count = images.shape[0]
    width, height, centre_x, centre_y = random_boxes(count, generator, scale, ratio)
    theta = torch.zeros(count, 2, 3, device=images.device)
    theta[:, 0, 0], theta[:, 0, 2] = width, centre_x
    theta[:, 1, 1], theta[:, 1, 2] = height, centre_y
    grid = F.affine_grid(theta, [count, images.shape[1], size, size], align_corners=False)
    return F.grid_sample(
        images, grid.to(images.dtype), mode="bilinear", padding_mode="border", align_corners=False
    )


# --------------------------------------------------------------------- resampling as two matmuls
#
# Bilinear resampling is separable and linear: out[b, c] = R[b] @ x[b, c] @ C[b].T, with R (S x h) and
# C (S x w) holding two weights per row. A resize, a crop of a resize, a flip (C's rows reversed) and a
# resized crop are all just other R and C, so one batched matmul does the geometry of a whole batch. For a
# 28 -> 224 upsample that is 4x faster on a CPU than F.interpolate (BLAS instead of a gather per output
# pixel) and gives the same numbers (F.interpolate's and grid_sample's sample positions, align_corners=False,
# edges clamped).


def interpolation_matrices(start: torch.Tensor, length: torch.Tensor, source: int, size: int) -> torch.Tensor:
    """(B, size, source) bilinear weights: ``size`` outputs spanning [start, start + length) source pixels."""
    steps = torch.arange(size, device=start.device, dtype=torch.float32) + 0.5
    position = (start[:, None] + steps * (length[:, None] / size) - 0.5).clamp(0, source - 1)
    low = position.floor()
    weight = position - low
    low = low.long()
    high = (low + 1).clamp(max=source - 1)
    matrices = torch.zeros(start.shape[0], size, source, device=start.device)
    matrices.scatter_add_(2, low[..., None], (1 - weight)[..., None])
    return matrices.scatter_add_(2, high[..., None], weight[..., None])


def box_matrices(boxes, height: int, width: int, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Row and column matrices of ``random_boxes`` crops: the same samples as ``random_resized_crop``."""
    box_w, box_h, centre_x, centre_y = boxes
    rows = interpolation_matrices((centre_y + 1 - box_h) * height / 2, box_h * height, height, size)
    cols = interpolation_matrices((centre_x + 1 - box_w) * width / 2, box_w * width, width, size)
    return rows, cols


def resize_matrix(source: int, size: int, device) -> torch.Tensor:
    """(1, size, source): the plain resize, F.interpolate(mode="bilinear", align_corners=False)."""
    whole = torch.tensor([float(source)], device=device)
    return interpolation_matrices(torch.zeros(1, device=device), whole, source, size)


def resample(
    images: torch.Tensor,
    rows: torch.Tensor,
    cols: torch.Tensor,
    dtype: torch.dtype | None = None,
    channels_last: bool = False,
) -> torch.Tensor:
    """(B, C, h, w) -> (B, C, S, S) = rows @ images @ cols.T per image; rows and cols (B or 1, S, h or w).

    The second (large) product runs in ``dtype`` when that is bf16 (AMX on CPUs, tensor cores on GPUs);
    with ``channels_last`` the result is computed straight into that layout."""
    dtype = dtype or images.dtype
    low = dtype == torch.bfloat16 or (dtype == torch.float16 and images.device.type == "cuda")
    final = dtype if low else images.dtype
    if channels_last:
        pixels = images.permute(0, 2, 3, 1)  # B h w C view
        half = torch.matmul(cols[:, None], pixels)  # B h S C
        count, height, size, channels = half.shape
        out = torch.matmul(rows.to(final), half.reshape(count, height, size * channels).to(final))
        return out.view(count, rows.shape[1], size, channels).permute(0, 3, 1, 2)
    half = torch.matmul(rows[:, None], images)  # B C S w
    if cols.shape[0] == 1:  # one column matrix for all: a single large GEMM, 2x faster than a broadcast bmm
        count, channels, size, width = half.shape
        out = half.reshape(-1, width).to(final) @ cols[0].T.to(final)
        return out.view(count, channels, size, cols.shape[1])
    return torch.matmul(half.to(final), cols[:, None].transpose(-1, -2).to(final))


# -------------------------------------------------------------------------------------------- colour


@dataclass(frozen=True)
class ColourPCA:
    """Eigen-decomposition of the training set's channel covariance (pixel values in [0, 1])."""

    eigenvalues: torch.Tensor  # (C,) ascending
    eigenvectors: torch.Tensor  # (C, C), column i is p_i


def channel_stats(images: torch.Tensor) -> tuple[list[float], list[float]]:
    """Exact per-channel mean and std in [0, 1] units of a uint8 set, from a 256-bin histogram per channel
    (no float copy of the whole set)."""
    means, stds = [], []
    values = np.arange(256, dtype=np.float64) / 255
    for channel in range(images.shape[1]):
        counts = torch.bincount(images[:, channel].reshape(-1), minlength=256).numpy().astype(np.float64)
        mean = float(counts @ values / counts.sum())
        means.append(mean)
        stds.append(float(math.sqrt(counts @ (values - mean) ** 2 / counts.sum())))
    return means, stds


def colour_pca(images: torch.Tensor, max_images: int = 10_000, seed: int = 0) -> ColourPCA:
    """The RGB covariance over every pixel of (up to ``max_images`` images of) a uint8 training set.

    The paper uses all of ImageNet; a sample of 10,000 images pins a 3x3 covariance down to well under 1%.
    """
    if len(images) > max_images:
        pick = torch.randperm(len(images), generator=torch.Generator().manual_seed(seed))[:max_images]
        images = images[pick]
    channels = images.shape[1]
    total = torch.zeros(channels, dtype=torch.float64)
    outer = torch.zeros(channels, channels, dtype=torch.float64)
    for chunk in images.split(2048):  # bounded memory: a float copy of 2048 images at a time
        pixels = chunk.transpose(0, 1).reshape(channels, -1).to(torch.float64) / 255
        total += pixels.sum(1)
        outer += pixels @ pixels.T
    count = images.shape[0] * images.shape[2] * images.shape[3]
    mean = total / count
    covariance = outer / count - torch.outer(mean, mean)
    eigenvalues, eigenvectors = torch.linalg.eigh(covariance)
    return ColourPCA(eigenvalues.clamp(min=0).float(), eigenvectors.float())


def pca_shift(count: int, pca: ColourPCA, generator: torch.Generator, std: float = 0.1) -> torch.Tensor:
    """(B, C): the paper's colour shift P @ (alpha * lambda) per image, alpha ~ N(0, std), batched."""
    values, vectors = pca.eigenvalues, pca.eigenvectors
    alpha = torch.randn(count, len(values), device=values.device, generator=generator) * std
    return (alpha * values) @ vectors.T


def pca_colour(
    images: torch.Tensor, pca: ColourPCA, generator: torch.Generator, std: float = 0.1
) -> torch.Tensor:
    """The paper's colour augmentation: the same ``pca_shift`` added to every pixel of an image, one draw of
    alpha per image per call."""
    pca = ColourPCA(pca.eigenvalues.to(images.device), pca.eigenvectors.to(images.device))
    return images + pca_shift(images.shape[0], pca, generator, std).to(images.dtype)[:, :, None, None]


# -------------------------------------------------------------------------------- the pipeline


@dataclass(frozen=True)
class AugmentPlan:
    """What one ``augment`` mode does to a training batch; :class:`BatchTransform` carries it out.

    ``crop``: "none" (a plain resize of small images, the centre crop of decoded ones); "pad" (small images:
    a random crop of the zero-padded image at its stored size, as the CIFAR recipes; decoded ones: a random
    crop); "grid" (the paper's random 224 of 256); "box" (Inception-style random resized crops).
    ``flip``: random left-right mirrors. ``pca``: the paper's colour shift (needs the set's ``ColourPCA``).
    """

    crop: str = "none"
    flip: bool = False
    pca: bool = False


PLANS: dict[str, AugmentPlan] = {
    "none": AugmentPlan(),
    "flip": AugmentPlan(flip=True),
    "crop-flip": AugmentPlan("pad", flip=True),
    "resized-crop-flip": AugmentPlan("box", flip=True),
    "paper": AugmentPlan("grid", flip=True, pca=True),
}
AUGMENTS = tuple(PLANS)  # the choices of TrainConfig.augment and the CLI's --augment


@dataclass
class BatchTransform:
    """uint8 batch (B, C, h, w) on the device -> float training or test batch (B, C, S, S).

    ``source="array"``: small images held in memory (28 or 32 px), resized here to ``image_size``.
    ``source="folder"``: decoded images already at ``pre_crop_size(image_size)`` (the paper's 256),
    cropped here. Training batches follow ``PLANS[augment]``; test batches the plan "none".
    """

    image_size: int
    augment: str = "none"
    train: bool = True
    source: str = "array"
    mean: tuple[float, ...] | None = None  # None: keep [0, 1]
    std: tuple[float, ...] | None = None
    pca: ColourPCA | None = None
    dtype: torch.dtype = torch.float32
    channels_last: bool = False
    uncropped: bool = False  # test views at pre_crop_size, for ten-crop TTA (classicnets.evaluation)
    _device_constants: dict = field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self):
        if self.augment not in PLANS:
            raise ConfigError(f"unknown augment {self.augment!r}; choose one of {', '.join(AUGMENTS)}")
        if self.train and PLANS[self.augment].pca and self.pca is None:
            raise ConfigError(f"augment={self.augment!r} needs the training set's colour PCA "
                              "(augment.colour_pca)")

    @property
    def plan(self) -> AugmentPlan:
        return PLANS[self.augment if self.train else "none"]

    def __call__(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        plan = self.plan
        if plan != PLANS["none"] and generator is None:
            raise ConfigError("random augmentation needs a torch.Generator on the batch's device")
        layout = torch.channels_last if self.channels_last else torch.contiguous_format
        if self.source == "folder":
            x = self._colour(self._folder_views(images, plan, generator), plan, generator, layout)
        else:
            x = self._array_views(images, plan, generator, layout)
        return x.to(dtype=self.dtype, memory_format=layout)

    def _colour(self, images: torch.Tensor, plan: AugmentPlan, generator, layout=None) -> torch.Tensor:
        """uint8 (or [0, 1] float) -> float: /255, PCA colour, normalisation, fused into one multiply-add.

        All three are per-image, per-channel affine maps, so they commute with bilinear resampling and
        cropping: the in-memory path applies them before upsampling, on 64x fewer pixels. ``layout``: write
        the result in that memory format at once (the crops of NHWC bytes are channels-last views, and a
        later copy into the contiguous layout would cost as much again)."""
        mean, std = self._on(images.device, "stats")
        scale = (1 / 255 if images.dtype == torch.uint8 else 1.0) / std  # C
        offset = (-mean / std).expand(images.shape[0], -1)  # B x C
        if plan.pca:  # the shift is in [0, 1] units, so normalisation divides it by std too
            offset = offset + pca_shift(len(images), self._on(images.device, "pca"), generator) / std
        if layout is None:
            return torch.addcmul(offset[:, :, None, None], images, scale[:, None, None])
        out = torch.empty(images.shape, dtype=torch.float32, device=images.device, memory_format=layout)
        if images.dtype == torch.uint8:  # convert in the copy: addcmul would make a float temporary first
            images = out.copy_(images)
        return torch.addcmul(offset[:, :, None, None], images, scale[:, None, None], out=out)

    def _on(self, device: torch.device, what):
        """Constants made on the batch's device once, not on every batch (no host-to-device copies):
        "stats" (mean, std; 0 and 1 without normalisation), "pca", or ("resize", source, size)."""
        key = (str(device), what)
        if key not in self._device_constants:
            if what == "pca":
                value = ColourPCA(self.pca.eigenvalues.to(device), self.pca.eigenvectors.to(device))
            elif what == "stats":
                stats = (self.mean, self.std) if self.mean is not None else ((0.0,), (1.0,))
                value = tuple(torch.tensor(v, dtype=torch.float32, device=device) for v in stats)
            else:
                value = resize_matrix(what[1], what[2], device)
            self._device_constants[key] = value
        return self._device_constants[key]

    def _array_views(self, images, plan: AugmentPlan, generator, layout):
        size = self.image_size
        if plan.crop == "pad":
            # crop with padding at the stored size (4 px at 32, as in the CIFAR recipes), before the resize
            padding = max(1, round(images.shape[-1] / 8))
            images = random_crop(images, images.shape[-1], generator, padding=padding)
        if plan.flip and plan.crop in ("none", "pad"):  # on the small images: the resize stays one matrix
            images = random_flip(images, generator)
        x = self._colour(images, plan, generator)  # on the small images
        height, width = x.shape[-2:]
        target = pre_crop_size(size) if self.uncropped else size
        if target < max(height, width):  # shrinking: anti-aliased F.interpolate (the matrices do not filter)
            return self._shrunk_views(x, plan, generator, layout)
        rows, cols = self._geometry(x, plan, generator, target)
        return resample(x, rows, cols, self.dtype, self.channels_last)

    def _geometry(self, x, plan: AugmentPlan, generator, target):
        """The row and column matrices of this batch's views (resize, paper crop or resized crop; flips)."""
        count, device = x.shape[0], x.device
        (height, width), size = x.shape[-2:], target
        if plan.crop == "box":
            rows, cols = box_matrices(random_boxes(count, generator), height, width, size)
        elif plan.crop == "grid" and not self.uncropped:
            # shorter side to 256, a random 224 crop (the same proportions at other sizes): as boxes in the
            # small image, at the whole-pixel offsets of the 256 grid
            grid = pre_crop_size(size)
            top, left = torch.randint(0, grid - size + 1, (2, count), device=device, generator=generator)
            span = torch.full((count,), float(size), device=device)
            rows = interpolation_matrices(top * (height / grid), span * (height / grid), height, size)
            cols = interpolation_matrices(left * (width / grid), span * (width / grid), width, size)
        else:
            rows = self._on(device, ("resize", height, size))
            cols = self._on(device, ("resize", width, size))
        if plan.flip and plan.crop in ("grid", "box") and not self.uncropped:  # per-image matrices: flip them
            flip = torch.rand(count, device=device, generator=generator) < 0.5
            cols = torch.where(flip[:, None, None], cols.flip(1), cols)  # reversed output columns = a mirror
        return rows, cols

    def _shrunk_views(self, x, plan: AugmentPlan, generator, layout):
        size = self.image_size
        x = x.contiguous(memory_format=layout)
        if self.uncropped:
            return resize(x, pre_crop_size(size))
        if plan.crop == "box":
            x = random_resized_crop(x, size, generator)
        elif plan.crop == "grid":
            x = resize(x, pre_crop_size(size))
            return random_crop_flip(x, size, generator) if plan.flip else random_crop(x, size, generator)
        else:
            return resize(x, size)  # flips, if any, were done on the small images
        return random_flip(x, generator) if plan.flip else x

    def _folder_views(self, x, plan: AugmentPlan, generator):
        """Views of uint8 images decoded at pre_crop_size: the paper's random or centre crops."""
        size = self.image_size
        if self.uncropped:
            return x
        if plan.crop == "box":
            x = random_resized_crop(to_float(x), size, generator)
        elif plan.crop in ("pad", "grid"):  # crops and flips on the uint8 bytes: a quarter of the traffic
            if plan.flip:
                return random_crop_flip(x, size, generator)
            x = random_crop(x, size, generator)
        else:
            x = center_crop(x, size)
        return random_flip(x, generator) if plan.flip else x
