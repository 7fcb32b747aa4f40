"""The baseline every speed-up is a ratio to: Dive into Deep Learning's AlexNet training, written out as is.

What d2l does (chapter 8.1, ``d2l.load_data_fashion_mnist(batch_size=128, resize=224)`` then
``d2l.train_ch6(net, train_iter, test_iter, num_epochs=10, lr=0.01, device)``), reproduced here without
torchvision (not installable on these machines):

- torchvision's ``FashionMNIST`` keeps the images as one uint8 tensor and, per sample, makes a PIL image
  (``Image.fromarray(img.numpy(), mode="L")``) and applies the transforms;
- ``transforms.Resize(224)``: PIL bilinear resize of the shorter side to 224 (28x28 -> 224x224);
- ``transforms.ToTensor()``: uint8 HWC -> float32 CHW divided by 255;
- ``DataLoader(..., batch_size, shuffle=True, num_workers=4)`` (``d2l.get_dataloader_workers()`` is 4);
- ``train_ch6``: xavier-uniform init of every Linear and Conv2d, plain SGD (no momentum, no weight decay),
  CrossEntropyLoss, fp32, and after every batch ``metric.add(l * X.shape[0], d2l.accuracy(y_hat, y),
  X.shape[0])`` where ``Accumulator.add`` calls ``float()`` on each: two host syncs per step;
  ``evaluate_accuracy_gpu`` on the test set after every epoch, again with a ``float()`` per batch.

Only d2l's Animator (the live plot) is left out. d2l's printed "examples/sec" times the step only (its Timer
starts after the batch has been loaded); this script records that figure and the honest wall time with
data loading, which is what a user waits for.

    python benchmarks/d2l_baseline.py --train-subset 2048 --test-subset 1000 --epochs 1
"""

from __future__ import annotations

import argparse
import gzip
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
from PIL import Image
from torch.utils.data import DataLoader, Dataset

import classicnets
import common
from classicnets.data.loaders import balanced_subset
from classicnets.training.loop import seed_everything

D2L_WORKERS = 4  # d2l.get_dataloader_workers()


# --------------------------------------------------------------------------- torchvision, by hand


def read_idx(path: Path) -> np.ndarray:
    """An IDX file (gzipped or not) as an array; what torchvision's ``read_sn3_pascalvincent_tensor`` does."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        data = f.read()
    magic = int.from_bytes(data[0:4], "big")
    ndim = magic % 256
    shape = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


def fashion_mnist_arrays(root: Path, train: bool) -> tuple[torch.Tensor, torch.Tensor]:
    prefix = "train" if train else "t10k"
    candidates = [root / f"{prefix}-images-idx3-ubyte.gz", root / f"{prefix}-images-idx3-ubyte"]
    images_path = next((p for p in candidates if p.exists()), None)
    if images_path is None:
        raise SystemExit(f"error: no Fashion-MNIST {prefix} images under {root}; pass --data-dir")
    labels_path = images_path.with_name(images_path.name.replace("images-idx3", "labels-idx1"))
    images = torch.from_numpy(read_idx(images_path).copy())
    labels = torch.from_numpy(read_idx(labels_path).astype(np.int64))
    return images, labels


class Resize:
    """torchvision ``Resize(size)`` on a PIL image: shorter side to ``size``, PIL bilinear (antialiased)."""

    def __init__(self, size: int):
        self.size = size

    def __call__(self, img: Image.Image) -> Image.Image:
        w, h = img.size
        short, long = (w, h) if w <= h else (h, w)
        new_short, new_long = self.size, int(self.size * long / short)
        new_w, new_h = (new_short, new_long) if w <= h else (new_long, new_short)
        return img.resize((new_w, new_h), Image.BILINEAR)


class ToTensor:
    """torchvision ``ToTensor()``: PIL uint8 HWC -> float32 CHW in [0, 1], a fresh copy every call."""

    def __call__(self, img: Image.Image) -> torch.Tensor:
        array = torch.from_numpy(np.array(img, np.uint8, copy=True))
        array = array.view(img.size[1], img.size[0], len(img.getbands()))
        return array.permute(2, 0, 1).contiguous().to(dtype=torch.float32).div(255)


class Compose:
    def __init__(self, transforms: list):
        self.transforms = transforms

    def __call__(self, img):
        for t in self.transforms:
            img = t(img)
        return img


class FashionMNISTPIL(Dataset):
    """torchvision's ``FashionMNIST``: uint8 tensor in memory, a PIL image and the transforms per sample."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, transform):
        self.data, self.targets, self.transform = images, labels, transform

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, index: int):
        img, target = self.data[index], int(self.targets[index])
        img = Image.fromarray(img.numpy(), mode="L")
        return self.transform(img), target


def train_subset_indices(labels: torch.Tensor, count: int | None, seed: int) -> torch.Tensor | None:
    """The same class-balanced subset that ``classicnets.train(subset=count, seed=seed)`` trains on,
    so both pipelines see the same images; None for the whole set."""
    if not count or count >= len(labels):
        return None
    return balanced_subset(labels, count, seed)


def load_data_fashion_mnist(
    batch_size: int,
    resize: int | None,
    root: Path = common.FASHION_MNIST_DIR,
    train_subset: int | None = None,
    test_subset: int | None = None,
    workers: int = D2L_WORKERS,
    seed: int = 0,
) -> tuple[DataLoader, DataLoader]:
    """d2l's ``load_data_fashion_mnist``; the optional subsets are the benchmark's, not d2l's."""
    trans = [ToTensor()]
    if resize:
        trans.insert(0, Resize(resize))
    trans = Compose(trans)
    loaders = []
    for train in (True, False):
        images, labels = fashion_mnist_arrays(root, train)
        if train and (keep := train_subset_indices(labels, train_subset, seed)) is not None:
            images, labels = images[keep], labels[keep]
        if not train and test_subset:  # the first test_subset images (classicnets.train uses all)
            images, labels = images[:test_subset], labels[:test_subset]
        generator = torch.Generator().manual_seed(seed)
        loaders.append(
            DataLoader(
                FashionMNISTPIL(images, labels, trans),
                batch_size,
                shuffle=train,
                num_workers=workers,
                generator=generator,
            )
        )
    return loaders[0], loaders[1]


# --------------------------------------------------------------------------- d2l's training code


class Accumulator:
    """d2l.Accumulator: sums over n variables, each added through ``float()`` (a host sync per tensor)."""

    def __init__(self, n: int):
        self.data = [0.0] * n

    def add(self, *args):
        self.data = [a + float(b) for a, b in zip(self.data, args, strict=True)]

    def __getitem__(self, idx: int) -> float:
        return self.data[idx]


def accuracy(y_hat: torch.Tensor, y: torch.Tensor) -> float:
    """d2l.accuracy: the number of correct predictions, as a Python float."""
    if len(y_hat.shape) > 1 and y_hat.shape[1] > 1:
        y_hat = y_hat.argmax(axis=1)
    cmp = y_hat.type(y.dtype) == y
    return float(cmp.type(y.dtype).sum())


def evaluate_accuracy_gpu(net: nn.Module, data_iter, device: torch.device) -> float:
    net.eval()
    metric = Accumulator(2)
    with torch.no_grad():
        for X, y in data_iter:
            X, y = X.to(device), y.to(device)
            metric.add(accuracy(net(X), y), y.numel())
    return metric[0] / metric[1]


def init_weights(m: nn.Module) -> None:
    if type(m) is nn.Linear or type(m) is nn.Conv2d:
        nn.init.xavier_uniform_(m.weight)


class TrainCh6:
    """d2l.train_ch6 cut at its epoch boundary, so another pipeline's epoch can run in between.

    ``__init__`` is train_ch6's preamble, ``epoch()`` one pass of its epoch loop (same work, same host
    syncs); d2l's Animator is replaced by a record per epoch.
    """

    def __init__(self, net: nn.Module, train_iter, test_iter, lr: float, device: torch.device):
        net.apply(init_weights)
        net.to(device)
        self.net, self.train_iter, self.test_iter, self.device = net, train_iter, test_iter, device
        self.optimizer = torch.optim.SGD(net.parameters(), lr=lr)
        self.loss = nn.CrossEntropyLoss()
        self.step_seconds = 0.0  # d2l's Timer: the step only, loading excluded
        self.epochs: list[dict] = []

    def epoch(self) -> dict:
        net, optimizer, loss, device = self.net, self.optimizer, self.loss, self.device
        metric = Accumulator(3)
        net.train()
        epoch_start = time.perf_counter()
        for X, y in self.train_iter:
            step_start = time.perf_counter()
            optimizer.zero_grad()
            X, y = X.to(device), y.to(device)
            y_hat = net(X)
            l = loss(y_hat, y)  # noqa: E741  (d2l's name)
            l.backward()
            optimizer.step()
            with torch.no_grad():
                metric.add(l * X.shape[0], accuracy(y_hat, y), X.shape[0])
            self.step_seconds += time.perf_counter() - step_start
        common.synchronize(device)
        train_seconds = time.perf_counter() - epoch_start
        eval_start = time.perf_counter()
        test_acc = evaluate_accuracy_gpu(net, self.test_iter, device)
        record = {
            "epoch": len(self.epochs) + 1,
            "train_loss": metric[0] / metric[2],
            "train_acc": metric[1] / metric[2],
            "test_acc": test_acc,
            "train_seconds": train_seconds,  # wall time including the loader
            "eval_seconds": time.perf_counter() - eval_start,
            "examples": int(metric[2]),
            "images_per_s": metric[2] / train_seconds,
        }
        self.epochs.append(record)
        print(
            f"  d2l epoch {record['epoch']}: loss {record['train_loss']:.3f}, "
            f"train acc {record['train_acc']:.3f}, test acc {test_acc:.3f}, "
            f"{record['images_per_s']:.1f} img/s incl. loading",
            flush=True,
        )
        return record

    def summary(self) -> dict:
        examples = sum(e["examples"] for e in self.epochs)
        train_seconds = sum(e["train_seconds"] for e in self.epochs)
        return {
            "epochs": self.epochs,
            "train_images_per_s": examples / train_seconds,
            "d2l_printed_examples_per_s": examples / self.step_seconds,  # what train_ch6 prints
            "train_seconds": train_seconds,
            "total_seconds": train_seconds + sum(e["eval_seconds"] for e in self.epochs),
            "final_test_acc": self.epochs[-1]["test_acc"],
        }


def train_ch6(
    net: nn.Module, train_iter, test_iter, num_epochs: int, lr: float, device: torch.device
) -> dict:
    """d2l.train_ch6: init, then ``num_epochs`` epochs each followed by a test pass."""
    run = TrainCh6(net, train_iter, test_iter, lr, device)
    for _ in range(num_epochs):
        run.epoch()
    return run.summary()


def baseline_settings(
    epochs: int, batch_size: int, lr: float, resize: int, train_iter, test_iter, workers: int, seed: int
) -> dict:
    return {
        "model": "alexnet_d2l",
        "epochs": epochs,
        "batch_size": batch_size,
        "lr": lr,
        "resize": resize,
        "train_images": len(train_iter.dataset),
        "test_images": len(test_iter.dataset),
        "workers": workers,
        "seed": seed,
        "precision": "fp32",
        "optimizer": "SGD (no momentum, no weight decay)",
    }


def prepare_baseline(
    batch_size: int = 128,
    lr: float = 0.01,
    resize: int = 224,
    train_subset: int | None = None,
    test_subset: int | None = None,
    workers: int = D2L_WORKERS,
    device: torch.device | None = None,
    seed: int = 0,
    data_dir: Path = common.FASHION_MNIST_DIR,
) -> TrainCh6:
    """d2l's AlexNet (the zoo's ``alexnet_d2l``) and its loaders, ready to train epoch by epoch."""
    device = device or common.resolve_device("auto")
    seed_everything(seed)  # as classicnets.train does before building the model: the same initial weights
    net = classicnets.create_model("alexnet_d2l", num_classes=10, in_channels=1)
    train_iter, test_iter = load_data_fashion_mnist(
        batch_size, resize, data_dir, train_subset, test_subset, workers, seed
    )
    run = TrainCh6(net, train_iter, test_iter, lr, device)
    run.settings = baseline_settings(0, batch_size, lr, resize, train_iter, test_iter, workers, seed)
    return run


def run_baseline(epochs: int = 1, **options) -> dict:
    """Train d2l's way for ``epochs`` (options: those of :func:`prepare_baseline`); the summary."""
    run = prepare_baseline(**options)
    for _ in range(epochs):
        run.epoch()
    result = run.summary()
    result["settings"] = {**run.settings, "epochs": epochs}
    return result


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    p.add_argument(
        "--epochs", type=int, default=1, help="d2l trains 10; one epoch of 60k takes ~1 h on 2 cores"
    )
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=0.01)
    p.add_argument("--resize", type=int, default=224)
    p.add_argument(
        "--train-subset",
        type=int,
        default=2048,
        help="class-balanced, as classicnets' --subset; 0 = all 60,000",
    )
    p.add_argument("--test-subset", type=int, default=1000, help="the first N; 0 = all 10,000")
    p.add_argument("--workers", type=int, default=D2L_WORKERS)
    p.add_argument("--device", default="auto")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data-dir", type=Path, default=common.FASHION_MNIST_DIR)
    return p


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    device = common.resolve_device(args.device)
    result = run_baseline(
        args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        resize=args.resize,
        train_subset=args.train_subset or None,
        test_subset=args.test_subset or None,
        workers=args.workers,
        device=device,
        seed=args.seed,
        data_dir=args.data_dir,
    )
    payload = {"benchmark": "d2l_baseline", "machine": common.machine_info(device), **result}
    s = result["settings"]
    rows = [
        [
            e["epoch"],
            f"{e['train_loss']:.3f}",
            f"{e['train_acc']:.3f}",
            f"{e['test_acc']:.3f}",
            common.fmt(e["examples"] / e["train_seconds"]),
        ]
        for e in result["epochs"]
    ]
    md = (
        f"d2l baseline (alexnet_d2l, {s['resize']} px, fp32, batch {s['batch_size']}, "
        f"{s['train_images']} train / {s['test_images']} test images) on "
        f"{common.device_label(payload['machine'])}\n\n"
        + common.markdown_table(["epoch", "train loss", "train acc", "test acc", "img/s incl. loading"], rows)
    )
    common.publish("d2l_baseline", payload, md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
