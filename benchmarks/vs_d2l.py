"""classicnets against d2l's own pipeline: training throughput and test accuracy, epoch by epoch, same run.

Both train alexnet_d2l at 224 px with the d2l recipe's hyperparameters (SGD lr 0.01, batch 128, xavier
init) on the same class-balanced subset of Fashion-MNIST, from the same initial weights, for the same number
of steps, and are tested on the same slice of the test set after every epoch:

- d2l (d2l_baseline.py): a DataLoader of PIL images resized per sample by 4 worker processes, fp32, a host
  sync per step (d2l's Accumulator);
- classicnets: the device-resident loader resizing whole batches, the Trainer's step with bf16 autocast and
  channels_last, no host syncs; each epoch is one call that resumes the run from its checkpoint.

The epochs alternate (d2l epoch 1, classicnets epoch 1, d2l epoch 2, ...), so load from other processes
hits both alike. Throughput = training images / seconds of the training phase, loading included (d2l's
loader starts its workers every epoch; epoch 1 includes both pipelines' warm-up). The speed-up is the
median of the per-epoch ratios; the accuracy columns show it is bought at equal accuracy per epoch.

    python benchmarks/vs_d2l.py                                   # 5 epochs x 2048 images, ~8 min on 2 cores
    python benchmarks/vs_d2l.py --device cuda --subset 0 --epochs 10 --test-images 0   # d2l's full run
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch

import common
import d2l_baseline
from classicnets.data import ArrayDataset, load_dataset
from classicnets.runtime import release_host_memory
from classicnets.training.config import resolve_config
from time_to_accuracy import recipe_trainer, speed_settings, test_slice


class ClassicnetsRun:
    """The d2l recipe through classicnets' loaders and Trainer, one epoch per ``epoch()`` call: the first
    starts the run in ``out``, the next ones resume it from its checkpoint (as ``--resume`` does)."""

    def __init__(self, train: ArrayDataset, test: ArrayDataset, *, subset: int | None, device: torch.device,
                 speed: dict, seed: int, out: Path):  # fmt: skip
        self.train, self.test, self.subset, self.device = train, test, subset, device
        self.speed, self.seed, self.out = speed, seed, out
        self.history: list[dict] = []

    def epoch(self) -> dict:
        done = len(self.history)
        run = dict(epochs=done + 1, resume=done > 0, overwrite=done == 0, out=str(self.out), progress=False)
        config = resolve_config("d2l", overrides=dict(
            **run, subset=self.subset, device=str(self.device), seed=self.seed, **self.speed))  # fmt: skip
        record = recipe_trainer(config, self.train, self.test, self.device).fit()[-1]
        self.history.append(record)
        self.settings = config.to_dict()
        print(f"  classicnets epoch {record['epoch']}: loss {record['train_loss']:.3f}, train acc "
              f"{record['train_acc']:.3f}, test acc {record['test_acc']:.3f}, "
              f"{record['images_per_sec']:.1f} img/s incl. loading", flush=True)  # fmt: skip
        return record


def render(payload: dict) -> str:
    m, s, summary = payload["machine"], payload["settings"], payload["summary"]
    rows = [
        [
            e["epoch"],
            f"{e['d2l_test_acc']:.3f}",
            f"{e['classicnets_test_acc']:.3f}",
            f"{e['d2l_train_loss']:.3f}",
            f"{e['classicnets_train_loss']:.3f}",
            common.fmt(e["d2l_images_per_s"]),
            common.fmt(e["classicnets_images_per_s"]),
            f"{e['speedup']:.2f}x",
        ]
        for e in payload["epochs"]
    ]
    rows.append(
        [
            "median",
            "",
            "",
            "",
            "",
            f"**{common.fmt(summary['d2l_images_per_s'])}**",
            f"**{common.fmt(summary['classicnets_images_per_s'])}**",
            f"**{summary['speedup']:.2f}x**",
        ]
    )
    train_images = f"{s['train_images']:,}" if s["train_images"] else "all 60,000"
    reuse = ", freed host memory kept for the next step" if m["device"] == "cpu" else ""
    test_images = f"the first {s['test_images']:,}" if s["test_images"] else "all 10,000"
    return (
        f"alexnet_d2l at 224 px, d2l recipe (SGD lr 0.01, batch 128), {len(payload['epochs'])} "
        f"epochs over the same {train_images} training images ({s['steps_per_epoch']} steps per epoch), "
        f"tested on {test_images} test images, epochs alternating between the pipelines, on "
        f"{common.device_label(m)}, {m['date_utc']}. d2l: PIL Resize + ToTensor per image in a DataLoader "
        f"with {s['d2l_workers']} workers, fp32, a host sync per step. classicnets: device-resident loader, "
        f"Trainer step, precision {s['speed']['precision']}, channels_last {s['speed']['channels_last']}, "
        f"compile {s['speed']['compile']}{reuse}. Images/s of the training phase, loading included.\n\n"
        + common.markdown_table(
            [
                "epoch",
                "d2l test acc",
                "classicnets test acc",
                "d2l train loss",
                "classicnets train loss",
                "d2l img/s",
                "classicnets img/s",
                "speed-up",
            ],
            rows,
        )
    )


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    p.add_argument("--subset", type=int, default=2048, help="training images (a multiple of 128); 0 = all")
    p.add_argument("--epochs", type=int, default=5, help="more epochs, more ratios to take the median of")
    p.add_argument("--test-images", type=int, default=1000, help="the first N test images; 0 = all")
    p.add_argument("--d2l-workers", type=int, default=d2l_baseline.D2L_WORKERS)
    p.add_argument("--data-dir", type=Path, default=common.FASHION_MNIST_DIR,
                   help="the Fashion-MNIST files (both pipelines read them from here)")
    p.add_argument("--device", default="auto")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="vs_d2l", help="result name under benchmarks/results/")
    return p


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    device = common.resolve_device(args.device)
    speed = speed_settings(device)
    subset = args.subset or None
    train = load_dataset("fashion-mnist", "train", data_dir=args.data_dir)
    test = load_dataset("fashion-mnist", "test", data_dir=args.data_dir)
    test = test_slice(test, args.test_images)
    d2l = d2l_baseline.prepare_baseline(
        train_subset=subset,
        test_subset=args.test_images or None,
        workers=args.d2l_workers,
        device=device,
        seed=args.seed,
        data_dir=args.data_dir,
    )
    # The Trainer keeps freed host memory for reuse while it runs and settles glibc's thresholds when it
    # returns; settle them before the first d2l epoch too, so every d2l epoch runs with the same allocator.
    release_host_memory()
    epochs = []
    with tempfile.TemporaryDirectory(prefix="classicnets-bench-") as tmp:
        ours = ClassicnetsRun(
            train, test, subset=subset, device=device, speed=speed, seed=args.seed, out=Path(tmp) / "run"
        )
        for _ in range(args.epochs):
            base, mine = d2l.epoch(), ours.epoch()
            epochs.append(
                {
                    "epoch": base["epoch"],
                    "d2l_test_acc": base["test_acc"],
                    "classicnets_test_acc": mine["test_acc"],
                    "d2l_train_loss": base["train_loss"],
                    "classicnets_train_loss": mine["train_loss"],
                    "d2l_train_acc": base["train_acc"],
                    "classicnets_train_acc": mine["train_acc"],
                    "d2l_images_per_s": base["images_per_s"],
                    "classicnets_images_per_s": mine["images_per_sec"],
                    "speedup": mine["images_per_sec"] / base["images_per_s"],
                }
            )
    summary = {
        "d2l_images_per_s": common.median([e["d2l_images_per_s"] for e in epochs]),
        "classicnets_images_per_s": common.median([e["classicnets_images_per_s"] for e in epochs]),
        "speedup": common.median([e["speedup"] for e in epochs]),
        "d2l_final_test_acc": epochs[-1]["d2l_test_acc"],
        "classicnets_final_test_acc": epochs[-1]["classicnets_test_acc"],
        "d2l_printed_examples_per_s": d2l.summary()["d2l_printed_examples_per_s"],
    }
    settings = {
        "train_images": subset,
        "steps_per_epoch": len(d2l.train_iter),
        "epochs": args.epochs,
        "test_images": args.test_images or None,
        "d2l_workers": args.d2l_workers,
        "seed": args.seed,
        "speed": speed,
        "image_size": 224,
        "batch_size": 128,
        "classicnets_config": ours.settings,
        "d2l": d2l.settings,
    }
    payload = {
        "benchmark": "vs_d2l",
        "machine": common.machine_info(device),
        "settings": settings,
        "summary": summary,
        "epochs": epochs,
    }
    md = render(payload)
    common.publish(args.out, payload, md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
