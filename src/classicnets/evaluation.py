"""THE evaluation: test-time views, scores, and running sums (with confusion counts when asked).

The Trainer's test after every epoch and ``classicnets.evaluate`` (``classicnets eval``) both run
:func:`evaluate_batches`, so the accuracy a run reports is the accuracy its checkpoint evaluates to.

Test-time augmentation (TTA) averages the model's softmax over views of each image, as the AlexNet paper's
test does (section 4.1: the four corner and the centre 224 crops of the 256 image, and their mirrors):

- ``none``: the image itself; the scores are the logits.
- ``flip``: the image and its mirror.
- ``ten-crop``: the paper's ten views, cut from images prepared at the pre-crop size (the loaders'
  ``test_uncropped``).

Views are yielded one at a time as slices of the batch: stacking all ten into one tensor would hold ten
times the batch (and ten times the activations) at once.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from .errors import ConfigError
from .runtime import autocast

TTA_MODES = ("none", "flip", "ten-crop")


def check_tta(tta: str) -> str:
    """``tta`` if it is one of :data:`TTA_MODES`, else a :class:`ConfigError` naming them."""
    if tta not in TTA_MODES:
        raise ConfigError(f"unknown TTA mode {tta!r}; expected one of {', '.join(TTA_MODES)}")
    return tta


def tta_views(x: torch.Tensor, tta: str, size: int) -> Iterator[torch.Tensor]:
    """The model inputs whose softmax outputs TTA averages, one at a time (slices: no copy of the batch).

    ``none``: ``x``. ``flip``: ``x`` and its mirror. ``ten-crop``: the four corner and the centre ``size``
    crops of ``x`` (prepared at the pre-crop size), each followed by its mirror.
    """
    check_tta(tta)
    if tta == "none":
        yield x
    elif tta == "flip":
        yield x
        yield x.flip(-1)
    else:
        height, width = x.shape[-2:]
        if size > min(height, width):
            raise ConfigError(f"ten-crop size {size} is larger than the images ({height}x{width}); prepare "
                              "them at the pre-crop size (the loaders' test_uncropped)")
        far_h, far_w = height - size, width - size
        for top, left in ((0, 0), (0, far_w), (far_h, 0), (far_h, far_w), (far_h // 2, far_w // 2)):
            crop = x[..., top:top + size, left:left + size]
            yield crop
            yield crop.flip(-1)


def scores(model: nn.Module, x: torch.Tensor, tta: str = "none", size: int | None = None) -> torch.Tensor:
    """float32 class scores of a batch: the logits without TTA; with TTA, the softmax averaged over the
    views (the paper averages softmax, not logits). ``size``: the crop side for ten-crop."""
    if tta == "none":
        return model(x).float()
    total, count = None, 0
    for view in tta_views(x, tta, size if size is not None else x.shape[-1]):
        probabilities = model(view).float().softmax(dim=1)
        total = probabilities if total is None else total.add_(probabilities)
        count += 1
    return total.div_(count)


def log_scores(scores_: torch.Tensor, tta: str) -> torch.Tensor:
    """Scores as logits for a loss: TTA's averaged probabilities turned back by log (clamped above 0)."""
    return scores_ if tta == "none" else scores_.clamp_min(1e-12).log()


def topk_correct(logits: torch.Tensor, target: torch.Tensor, ks: tuple[int, ...] = (1, 5)) -> torch.Tensor:
    """How many of the batch have the target among the top-k scores, for each k (a device tensor).

    A k larger than the number of classes counts every sample (top-5 of a 3-class problem is certain).
    """
    k_max = min(max(ks), logits.size(1))
    top = logits.topk(k_max, dim=1).indices  # (B, k_max), best first
    hits = top.eq(target.unsqueeze(1)).cumsum(dim=1)  # hits[:, j]: target within the top j+1
    return torch.stack([hits[:, min(k, k_max) - 1].sum() for k in ks])


class RunningSums:
    """Loss, top-k hits and sample count of one pass, accumulated as device tensors; with ``num_classes``,
    also the confusion counts (``confusion[i, j]``: images of class i scored highest as j).

    ``add`` launches a few small kernels and never waits for the device; ``values`` reads them once.
    The confusion counts use ``scatter_add_``, not ``bincount``: CUDA's bincount reads the largest index back
    to the host to size its output, a sync per batch.
    """

    def __init__(self, device: torch.device, ks: tuple[int, ...] = (1, 5), num_classes: int | None = None):
        self.ks = ks
        # one float64 vector [loss_sum, count, hits@k...]: a single all-reduce and a single read
        self.sums = torch.zeros(2 + len(ks), dtype=torch.float64, device=device)
        self.num_classes = num_classes
        self.confusion = (None if num_classes is None else
                          torch.zeros(num_classes * num_classes, dtype=torch.int64, device=device))

    def add(self, loss: torch.Tensor | None, logits: torch.Tensor, target: torch.Tensor) -> None:
        """One batch: its mean ``loss`` (None: not tracked), its scores and targets."""
        batch = target.size(0)
        loss_sum = (torch.zeros(1, dtype=torch.float64, device=self.sums.device) if loss is None
                    else (loss.detach().double() * batch).reshape(1))
        update = torch.cat([loss_sum, torch.full((1,), batch, dtype=torch.float64, device=self.sums.device),
                            topk_correct(logits.detach(), target, self.ks).double()])
        self.sums += update
        if self.confusion is not None:
            cells = target * self.num_classes + logits.argmax(dim=1)
            self.confusion.scatter_add_(0, cells, torch.ones_like(cells))

    def loss_finite_flag(self) -> torch.Tensor:
        """1.0 while every loss so far was finite, else 0.0, as a device tensor (to all-reduce, then read)."""
        return torch.isfinite(self.sums[:1]).to(self.sums.dtype)

    def values(self) -> dict[str, float]:
        """Mean loss and top-k accuracies as floats (one device read)."""
        loss_sum, count, *hits = self.sums.tolist()
        divisor = max(count, 1.0)
        out = {"loss": loss_sum / divisor, "count": int(count)}  # the true count: 0 when nothing was added
        for k, h in zip(self.ks, hits, strict=True):
            out[f"top{k}"] = h / divisor
        return out

    def hits(self, k: int) -> int:
        """How many samples had the target among the top ``k`` scores (one device read)."""
        return int(self.sums[2 + self.ks.index(k)])

    def confusion_matrix(self) -> torch.Tensor:
        """The (num_classes, num_classes) counts, on the CPU (one device read)."""
        return self.confusion.view(self.num_classes, self.num_classes).cpu()

    def state(self) -> torch.Tensor:
        return self.sums.detach().clone()

    def load_state(self, sums: torch.Tensor) -> None:
        self.sums.copy_(sums.to(self.sums.device))


@dataclass(frozen=True)
class EvalViews:
    """A TTA mode with the side of the model's input (ten-crop cuts crops of that side)."""

    mode: str = "none"
    size: int | None = None

    def __post_init__(self):
        check_tta(self.mode)
        if self.mode == "ten-crop" and self.size is None:
            raise ConfigError("ten-crop needs the crop size (the model's input side)")


NO_TTA = EvalViews()


@torch.no_grad()
def evaluate_batches(model: nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor]], *,
                     device: torch.device, views: EvalViews = NO_TTA, bf16: bool = False,
                     channels_last: bool = False, with_loss: bool = True,
                     num_classes: int | None = None) -> RunningSums:
    """Run ``model`` (in eval mode) over ``batches`` of inputs and labels and return the running sums, still
    on the device (nothing is read back here): loss (cross-entropy of the scores as logits), top-1 and
    top-5 hits, and with ``num_classes`` the confusion counts."""
    model.eval()
    sums = RunningSums(device, ks=(1, 5), num_classes=num_classes)
    for x, y in batches:
        x, y = to_device(x, y, device, channels_last)
        with autocast(device, bf16):
            batch_scores = scores(model, x, views.mode, views.size)
        loss = F.cross_entropy(log_scores(batch_scores, views.mode), y) if with_loss else None
        sums.add(loss, batch_scores, y)
    return sums


def to_device(x: torch.Tensor, y: torch.Tensor, device: torch.device,
               channels_last: bool) -> tuple[torch.Tensor, torch.Tensor]:
    memory_format = torch.channels_last if channels_last and x.dim() == 4 else torch.preserve_format
    # no-ops when the loader already delivers device tensors in the right layout
    x = x.to(device, non_blocking=True, memory_format=memory_format)
    return x, y.to(device, non_blocking=True)
