"""What a run records: the per-epoch line the seeds print, JSONL and CSV logs, and TensorBoard events with
``log_to="tensorboard"`` (the curves are drawn by :mod:`classicnets.inference.plots`).

Every file is rewritten from the whole history at the end of each epoch (they are a few kilobytes), so a
resumed run's logs hold exactly the epochs its checkpoint holds, with no duplicates from a killed attempt.
"""

from __future__ import annotations

import csv
import io
import json
import os
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from ..errors import MissingDependencyError

METRICS_JSONL = "metrics.jsonl"
METRICS_CSV = "metrics.csv"
CONFIG_JSON = "config.json"
TENSORBOARD_DIR = "tensorboard"


def epoch_line(record: dict[str, Any]) -> str:
    """The seeds' line (``epoch 1, loss 0.xxxx, train acc 0.xxx, test acc 0.xxx, time x.x sec``), and below it
    what classicnets adds, indented: two lines that fit 80 columns."""
    top5 = f"test top5 {record['test_top5']:.3f}, " if record.get("test_top5") is not None else ""
    return (f"epoch {record['epoch']}, loss {record['train_loss']:.4f}, train acc {record['train_acc']:.3f}, "
            f"test acc {record['test_acc']:.3f}, time {record['time']:.1f} sec\n"
            f"  {top5}lr {record['lr']:.3g}, {record['images_per_sec']:.0f} img/s")


def write_text_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, path)


def write_logs(run_dir: Path, history: list[dict[str, Any]]) -> None:
    """metrics.jsonl (one JSON object per epoch) and metrics.csv (the same, as columns)."""
    write_text_atomic(run_dir / METRICS_JSONL, "".join(json.dumps(r) + "\n" for r in history))
    if history:
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=list(history[0]), extrasaction="ignore")
        writer.writeheader()
        writer.writerows(history)
        write_text_atomic(run_dir / METRICS_CSV, buffer.getvalue())


# ------------------------------------------------------------------------------------------ TensorBoard


def require_tensorboard() -> None:
    """Fail early, before any data is loaded, when ``log_to="tensorboard"`` cannot work."""
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        raise MissingDependencyError(
            "--log-to tensorboard needs the tensorboard package, which is not installed; install it with "
            "pip install 'classicnets[tensorboard]' (or log to files only: --log-to files)") from None


class TensorBoardLog:
    """Scalars every ``log_every`` steps and every epoch, and the first layer's kernels once an epoch, in
    ``OUT/tensorboard`` (``tensorboard --logdir runs`` shows every run). Rank 0 only.

    The step scalars are the values the trainer reads anyway at its ``log_every`` cadence: logging adds no
    device read (in a distributed run they are rank 0's share of the epoch so far; the epoch scalars are
    every rank's). A resumed run drops the events logged after its checkpoint (``purge_step``), so a killed
    attempt's steps are not drawn twice.
    """

    def __init__(self, writer) -> None:
        self.writer = writer
        self._last: tuple[float, int] | None = None  # (time, images) at the previous step log

    @classmethod
    def open(cls, run_dir: Path, purge_step: int) -> TensorBoardLog:
        require_tensorboard()
        from torch.utils.tensorboard import SummaryWriter

        return cls(SummaryWriter(str(run_dir / TENSORBOARD_DIR), purge_step=purge_step or None))

    def start_epoch(self, now: float) -> None:
        self._last = (now, 0)

    def step(self, step: int, values: dict[str, float], lrs: list[float], now: float) -> None:
        """``values``: the epoch's running mean loss and top-1 so far, and its image count."""
        add = self.writer.add_scalar
        add("step/train_loss", values["loss"], step)
        add("step/train_acc", values["top1"], step)
        for name, lr in zip(("lr", "lr_backbone"), lrs, strict=False):
            add(f"step/{name}", lr, step)
        if self._last is not None and now > self._last[0]:
            add("step/images_per_sec", (values["count"] - self._last[1]) / (now - self._last[0]), step)
        self._last = (now, values["count"])

    def epoch(self, record: dict[str, Any], model: nn.Module) -> None:
        epoch = record["epoch"]
        for key in ("train_loss", "train_acc", "test_loss", "test_acc", "test_top5", "lr", "lr_backbone",
                    "images_per_sec", "train_time", "eval_time"):
            if key in record:
                self.writer.add_scalar(f"epoch/{key}", record[key], epoch)
        named = first_conv(model)
        if named is not None:
            self.writer.add_image("kernels/first_conv", kernel_grid(named[1].weight), epoch)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


def first_conv(model: nn.Module) -> tuple[str, nn.Conv2d] | None:
    """The first ``nn.Conv2d`` and its name (definition order, the order every zoo net runs), or None."""
    return next(((n, m) for n, m in model.named_modules() if isinstance(m, nn.Conv2d)), None)


def kernel_grid(weight: torch.Tensor, pad: int = 1) -> torch.Tensor:
    """A conv weight (out, in, k, k) as one (3 or 1, H, W) image in [0, 1]: the kernels in a near-square grid,
    each scaled to its own range, in colour for RGB input (the paper's Figure 3) and grey otherwise."""
    w = weight.detach().float().cpu()
    w = w if w.shape[1] in (1, 3) else w.mean(dim=1, keepdim=True)
    low = w.amin(dim=(1, 2, 3), keepdim=True)
    high = w.amax(dim=(1, 2, 3), keepdim=True)
    w = (w - low) / (high - low).clamp_min(1e-12)
    count, channels, kh, kw = w.shape
    cols = int(count ** 0.5 + 0.999)
    rows = -(-count // cols)
    grid = torch.ones(channels, rows * (kh + pad) + pad, cols * (kw + pad) + pad)
    for i in range(count):
        top, left = pad + (i // cols) * (kh + pad), pad + (i % cols) * (kw + pad)
        grid[:, top:top + kh, left:left + kw] = w[i]
    return grid
