"""Images per second from a prepared store (`classicnets prepare`) against the JPEG folder it was made from.

The folder: real photos (scikit-image's sample photos, randomly cropped, mirrored, brightened and rescaled to
500x375 or 375x500, ImageNet's typical size; ``classicnets.data.samples``), saved as JPEG, a few classes.
Both paths deliver the paper's training batches: 224 crops of the 256 decode, flips, PCA colour,
normalisation (``augment="paper"``), at the same batch size on the same device. Rows:

- ``folder``: the streaming loader (DataLoader workers decode with Pillow, the device transforms);
- ``store``: the store loader (a thread gathers batches from the memory-mapped shards, the device transforms);
- ``host side only``: the part of each path that stays on the host when the device is a GPU (decoded uint8
  batches from the DataLoader; gathered uint8 batches from the store), the rate a GPU's step can be fed at;
- ``prepare``: the one-time decode into the store.

The rate to feed, for scale: TensorFlow's benchmarks (May 2017, tensorflow/docs_src/performance/benchmarks.md)
trained AlexNet on one P100 at 2,987 img/s (batch 512, synthetic data; 2,890 with real ImageNet data). No
public A100/H100 AlexNet training figure was found; a current GPU is several times a P100.

    python benchmarks/store_throughput.py                    # writes results/store_throughput.{json,md}
    python benchmarks/store_throughput.py --images 2048 --device cuda
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

import common
from classicnets.data import StoreLoader, build_loaders, open_store, prepare
from classicnets.data.samples import sample_photo_folder

P100_ALEXNET = {"images_per_s": 2987, "batch": 512, "data": "synthetic", "real_data_images_per_s": 2890,
                "source": "TensorFlow benchmarks, May 2017 (tensorflow/docs_src/performance/benchmarks.md), "
                          "1x P100 in a DGX-1"}  # fmt: skip


def timed(batches, count: int, device: torch.device) -> dict:
    """Images/s over ``count`` images from the iterator factory ``batches`` (called again at each epoch's
    end), after one whole epoch timed apart: worker start-up, the files' first reads into the page cache
    and the store's first page faults happen once per run, not once per epoch."""
    start = time.perf_counter()
    for _ in batches():
        pass
    common.synchronize(device)
    first = time.perf_counter() - start
    iterator = batches()
    seen, start = 0, time.perf_counter()
    while seen < count:
        for x, _ in iterator:
            seen += len(x)
            if seen >= count:
                break
        else:
            iterator = batches()
    common.synchronize(device)
    seconds = time.perf_counter() - start
    return {"images_per_s": seen / seconds, "images": seen, "seconds": seconds, "first_epoch_s": first}


def untransformed(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """The store loader's transform for its host-side row: the gathered bytes as they are."""
    return images


def decoded_batches(loader):
    """The folder's host side alone: the DataLoader's decoded uint8 batches, before the device transform."""
    for images, labels, _ in loader.loader:
        yield images, labels


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="auto", help="cpu, cuda, or auto (CUDA when present; default)")
    parser.add_argument("--images", type=int, default=512, help="training JPEGs in the generated folder")
    parser.add_argument("--classes", type=int, default=4, help="photos (classes) to draw them from")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--timed-images", type=int, default=1024, help="images timed per row (default 1024)")
    parser.add_argument("--num-workers", type=int, default=2, help="DataLoader workers, and prepare's")
    parser.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=True,
                        help="batches in channels_last, as the trainer makes them with bf16 (default: on)")
    parser.add_argument("--out-name", default="store_throughput", help="results/<name>.json and .md")
    args = parser.parse_args(argv)

    device = common.resolve_device(args.device)
    info = common.machine_info(device)
    settings = vars(args) | {"image_size": 224, "stored_size": 256, "augment": "paper"}
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        per_class = args.images // args.classes
        folder = sample_photo_folder(Path(tmp) / "photos", classes=args.classes, size=(500, 375),
                                     train_per_class=per_class, val_per_class=8)  # fmt: skip
        jpeg_bytes = sum(p.stat().st_size for p in folder.rglob("*.jpg"))
        start = time.perf_counter()
        manifest = prepare(folder, Path(tmp) / "store", workers=args.num_workers, progress=False)
        prepare_s = time.perf_counter() - start
        decoded = sum(s["count"] for entry in manifest["splits"].values() for s in entry["shards"])
        store_bytes = sum(s["bytes"] for entry in manifest["splits"].values() for s in entry["shards"])
        rows.append({"what": f"prepare: decode {decoded} JPEGs into the store, {args.num_workers} workers",
                     "images_per_s": decoded / prepare_s, "seconds": prepare_s})  # fmt: skip
        print(f"prepare: {decoded / prepare_s:,.0f} img/s", flush=True)
        options = dict(image_size=224, batch_size=args.batch_size, augment="paper", normalize=True,
                       device=device, channels_last=args.channels_last)  # fmt: skip
        host_side = StoreLoader(open_store(Path(tmp) / "store", "train"), batch_size=args.batch_size,
                                transform=untransformed, device=device)  # fmt: skip
        loaders = {
            "folder": build_loaders(str(folder), num_workers=args.num_workers, **options),
            "store": build_loaders(str(Path(tmp) / "store"), **options),
        }
        plans = [
            ("folder", f"folder: JPEG decode ({args.num_workers} workers) + paper transform on {device.type}",
             lambda: iter(loaders["folder"].train)),
            ("store", f"store: memmap gather + paper transform on {device.type}",
             lambda: iter(loaders["store"].train)),
            ("folder host", f"folder, host side only: decoded uint8 batches ({args.num_workers} workers)",
             lambda: decoded_batches(loaders["folder"].train)),
            ("store host", "store, host side only: gathered uint8 batches (2 threads)",
             lambda: iter(host_side)),
        ]  # fmt: skip
        for key, label, batches in plans:
            result = timed(batches, args.timed_images, device)
            rows.append({"what": label, "key": key, **result})
            print(f"{label}: {result['images_per_s']:,.0f} img/s", flush=True)
    rate = {r["key"]: r["images_per_s"] for r in rows if "key" in r}
    summary = {
        "store_vs_folder": rate["store"] / rate["folder"],
        "host_side_store_vs_folder": rate["store host"] / rate["folder host"],
        "store_host_side_vs_p100_alexnet": rate["store host"] / P100_ALEXNET["images_per_s"],
        "jpeg_mb": jpeg_bytes / 1e6,
        "store_mb": store_bytes / 1e6,
    }
    payload = {"machine": info, "settings": settings, "rows": rows, "summary": summary,
               "compare_with": P100_ALEXNET}  # fmt: skip
    common.publish(args.out_name, payload, markdown(info, settings, rows, summary))
    return 0


def markdown(info: dict, settings: dict, rows: list[dict], summary: dict) -> str:
    table = common.markdown_table(
        ["what", "img/s", "first epoch s"],
        [[r["what"], common.fmt(r["images_per_s"], 0), common.fmt(r.get("first_epoch_s"), 2)] for r in rows],
    )
    layout = ", channels_last" if settings["channels_last"] else ""
    return (
        f"Image store against its JPEG folder: the paper's training batches (224 crops of 256, flips, PCA "
        f"colour{layout}), batch {settings['batch_size']}, {settings['images']} training photos at "
        f"500x375, on {common.device_label(info)}, {info['date_utc']} (1-min load average "
        f"{info['load_average_1m']:.1f}: the machine is shared; rates vary from run to run).\n\n{table}\n\n"
        f"Store / folder: **{summary['store_vs_folder']:.1f}x** with the transform on this device, "
        f"**{summary['host_side_store_vs_folder']:.0f}x** on the host side alone (what a GPU run waits "
        f"for). The store's host side is {summary['store_host_side_vs_p100_alexnet']:.1f}x the 2,987 img/s "
        f"at which one P100 trained AlexNet in TensorFlow's 2017 benchmarks. JPEGs "
        f"{summary['jpeg_mb']:.0f} MB, store {summary['store_mb']:.0f} MB (uint8 256x256x3 per image).\n"
    )


if __name__ == "__main__":
    raise SystemExit(main())
