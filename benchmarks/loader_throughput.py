"""How fast the data layer feeds a model: Fashion-MNIST load time, then 224x224 batches per second from the
device loader (each augmentation), the streaming image-folder loader, d2l's PIL pipeline, and the model.

The baseline is d2l's ``load_data_fashion_mnist(batch_size=128, resize=224)`` written out by hand (torchvision
is not installable here): per sample a PIL image, a bilinear ``Resize(224)``, ``ToTensor`` (float CHW / 255),
in ``DataLoader(batch_size=128, shuffle=True, num_workers=2)``. The device loader gives the same batches
(bilinear 28 -> 224, [0, 1]) with ``augment="none", normalize=False``.

The model's rate is one d2l AlexNet training step (SGD, cross-entropy) at 224 on the same device, in fp32 and
in bf16 autocast + channels_last: the loader is fast enough when it is many times faster than that.

    python benchmarks/loader_throughput.py                  # CPU, writes results/loader_throughput.{json,md}
    python benchmarks/loader_throughput.py --device cuda --batches 50
"""

from __future__ import annotations

import argparse
import itertools
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import DataLoader, Dataset

import classicnets
import common
from classicnets.data import build_loaders, load_dataset
from classicnets.runtime import reused_host_memory


class D2LFashionMNIST(Dataset):
    """torchvision's FashionMNIST item with d2l's transforms, by hand: PIL image, Resize(224), ToTensor."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, size: int):
        self.images, self.labels, self.size = images[:, 0], labels, size  # uint8 N x 28 x 28, as torchvision

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int):
        image = Image.fromarray(self.images[index].numpy())  # mode "L"
        image = image.resize((self.size, self.size), Image.Resampling.BILINEAR)  # Resize(224) of a square
        pixels = torch.from_numpy(np.array(image, np.uint8, copy=True)).view(self.size, self.size, 1)
        return pixels.permute(2, 0, 1).contiguous().float().div(255), int(self.labels[index])  # ToTensor


def batches_per_second(loader, batches: int, device: torch.device) -> dict:
    """Images/s over ``batches`` batches after the first (worker start-up and warm-up timed apart)."""
    iterator = iter(loader)
    start = time.perf_counter()
    x, _ = next(iterator)
    x = x.to(device)
    common.synchronize(device)
    first = time.perf_counter() - start
    count = 0
    start = time.perf_counter()
    for x, _ in itertools.islice(iterator, batches):
        x = x.to(device, non_blocking=True)
        count += x.shape[0]
    common.synchronize(device)
    elapsed = time.perf_counter() - start
    return {"images_per_s": count / elapsed, "first_batch_s": first, "images": count, "seconds": elapsed}


def fashion_load_times(data_dir: Path) -> dict:
    """Seconds from the .gz files to uint8 tensors: with an empty parsed-array cache, then with it warm."""
    with tempfile.TemporaryDirectory() as cache:
        times = {}
        for label in ("first", "cached"):
            start = time.perf_counter()
            for split in ("train", "test"):
                load_dataset("fashion-mnist", split, data_dir=data_dir, cache_dir=cache)
            times[label] = time.perf_counter() - start
    return times


def device_loader_rows(args, device: torch.device) -> list[dict]:
    configs = [
        ("none (d2l's batches)", dict(augment="none", normalize=False)),
        ("none, bf16 + channels_last", dict(augment="none", dtype=torch.bfloat16, channels_last=True)),
        ("flip", dict(augment="flip")),
        ("crop-flip", dict(augment="crop-flip")),
        ("resized-crop-flip", dict(augment="resized-crop-flip")),
        ("paper (crop 224/256, flip, PCA colour)", dict(augment="paper")),
    ]
    rows = []
    default_threads = torch.get_num_threads()
    for label, options in configs:
        loaders = build_loaders(
            "fashion-mnist", data_dir=args.data_dir, image_size=args.image_size, batch_size=args.batch_size,
            device=device, **options,
        )  # fmt: skip
        for threads in args.loader_threads or [default_threads]:
            torch.set_num_threads(threads)
            result = batches_per_second(loaders.train, args.batches, device)
            rows.append({"loader": f"device loader: {label}", "threads": threads, **result})
    torch.set_num_threads(default_threads)
    return rows


def baseline_row(args, device: torch.device) -> dict:
    train = load_dataset("fashion-mnist", "train", data_dir=args.data_dir)
    loader = DataLoader(
        D2LFashionMNIST(train.images, train.labels, args.image_size),
        batch_size=args.batch_size, shuffle=True, num_workers=args.num_workers,
    )  # fmt: skip
    result = batches_per_second(loader, args.batches, device)
    label = f"d2l: PIL Resize + ToTensor, DataLoader({args.num_workers} workers)"
    return {"loader": label, "threads": f"{args.num_workers} procs x 1", **result}


def folder_row(args, device: torch.device, root: Path) -> dict:
    """The streaming loader on a folder of photo-sized JPEGs (500x375, ImageNet's typical size)."""
    rng = np.random.default_rng(0)
    for split, count in (("train", args.folder_images), ("val", 4)):
        for c in range(4):
            folder = root / split / f"class{c}"
            folder.mkdir(parents=True)
            for i in range(count // 4):
                smooth = rng.integers(0, 256, (24, 32, 3), dtype=np.uint8)
                Image.fromarray(smooth).resize((500, 375), Image.Resampling.BICUBIC).save(folder / f"{i}.jpg")
    loaders = build_loaders(
        "imagefolder", data_dir=root, image_size=args.image_size, batch_size=args.batch_size, augment="paper",
        device=device, num_workers=args.num_workers,
    )  # fmt: skip
    if len(loaders.train) < 2:
        raise SystemExit(f"--folder-images {args.folder_images} gives under 2 batches of {args.batch_size}")
    batches = min(args.batches, len(loaders.train) - 1)
    result = batches_per_second(loaders.train, batches, device)
    label = f"streaming image folder: 500x375 JPEG, paper pipeline, {args.num_workers} workers"
    return {"loader": label, "threads": f"{args.num_workers} procs + {torch.get_num_threads()}", **result}


def model_rows(args, device: torch.device) -> list[dict]:
    """d2l AlexNet training steps at 224: the rate the loader has to keep up with."""
    rows = []
    fast = "bf16 autocast + channels_last" + (", host memory reused" if device.type == "cpu" else "")
    for label, bf16 in (("fp32", False), (fast, True)):
        torch.manual_seed(0)
        model = classicnets.create_model("alexnet_d2l", num_classes=10, in_channels=1).to(device)
        memory_format = torch.channels_last if bf16 else torch.contiguous_format
        model = model.to(memory_format=memory_format)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
        x = torch.rand(args.model_batch, 1, args.image_size, args.image_size, device=device)
        x = x.contiguous(memory_format=memory_format)
        y = torch.randint(0, 10, (args.model_batch,), device=device)

        def step(model=model, optimizer=optimizer, x=x, y=y, bf16=bf16):
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                loss = F.cross_entropy(model(x), y)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

        with reused_host_memory(enabled=bf16 and device.type == "cpu"):
            step()  # warm-up
            seconds = common.median([common.time_call(step, device) for _ in range(args.model_steps)])
        rows.append({
            "model": f"alexnet_d2l train step, {label}", "batch": args.model_batch,
            "threads": torch.get_num_threads(), "images_per_s": args.model_batch / seconds,
        })  # fmt: skip
    return rows


def markdown(info: dict, settings: dict, load: dict, loaders: list[dict], models: list[dict]) -> str:
    fastest_model = max(m["images_per_s"] for m in models) if models else None
    baseline = next(r["images_per_s"] for r in loaders if r["loader"].startswith("d2l"))
    rows = []
    for r in loaders:
        vs_model = f"{r['images_per_s'] / fastest_model:,.0f}x" if fastest_model else "-"
        rows.append([r["loader"], r["threads"], common.fmt(r["images_per_s"], 0),
                     f"{r['images_per_s'] / baseline:.1f}x",
                     vs_model, common.fmt(r["first_batch_s"], 2)])  # fmt: skip
    for m in models:
        rows.append([f"{m['model']} (batch {m['batch']})", m["threads"], common.fmt(m["images_per_s"], 1),
                     "", "", ""])  # fmt: skip
    headers = ["what", "threads", "img/s", "x d2l PIL", "x fastest model step", "first batch s"]
    size = settings["image_size"]
    return (
        f"Loader throughput at {size}x{size}, batch {settings['batch_size']}, "
        f"on {common.device_label(info)}, {info['date_utc']} (1-min load average "
        f"{info['load_average_1m']:.1f}; `threads`: torch intra-op threads of the process that transforms). "
        f"Fashion-MNIST .gz -> uint8 tensors (train + test): {load['first']:.2f} s first, "
        f"{load['cached']:.2f} s with the parsed-array cache.\n\n" + common.markdown_table(headers, rows)
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="auto", help="cpu, cuda, or auto (CUDA when present; default)")
    parser.add_argument("--data-dir", type=Path, default=common.FASHION_MNIST_DIR, help="Fashion-MNIST files")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--batches", type=int, default=20, help="timed batches per loader (default 20)")
    parser.add_argument("--num-workers", type=int, default=2, help="DataLoader workers (default 2)")
    parser.add_argument("--folder-images", type=int, default=1024, help="JPEGs in the generated folder")
    parser.add_argument("--model-batch", type=int, default=128, help="batch of the timed model step (d2l's)")
    parser.add_argument("--model-steps", type=int, default=3, help="timed model steps (median)")
    parser.add_argument("--skip-model", action="store_true", help="leave out the model step timing")
    parser.add_argument("--out-name", default="loader_throughput", help="results/<name>.json and .md")
    parser.add_argument(
        "--loader-threads", type=lambda text: [int(t) for t in text.split(",")],
        help="torch threads to time the device loader with, e.g. 2,1 (default: torch's choice)",
    )  # fmt: skip
    args = parser.parse_args(argv)

    device = common.resolve_device(args.device)
    info = common.machine_info(device)
    settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    load = fashion_load_times(args.data_dir)
    print(f"Fashion-MNIST load: first {load['first']:.2f} s, cached {load['cached']:.2f} s", flush=True)
    loaders = device_loader_rows(args, device) + [baseline_row(args, device)]
    with tempfile.TemporaryDirectory() as root:
        loaders.append(folder_row(args, device, Path(root)))
    for row in loaders:
        print(f"{row['loader']}: {row['images_per_s']:,.0f} img/s", flush=True)
    models = [] if args.skip_model else model_rows(args, device)
    for row in models:
        print(f"{row['model']}: {row['images_per_s']:,.1f} img/s", flush=True)
    payload = {"machine": info, "settings": settings, "fashion_mnist_load_s": load, "loaders": loaders,
               "model_steps": models}  # fmt: skip
    common.publish(args.out_name, payload, markdown(info, settings, load, loaders, models), show=False)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
