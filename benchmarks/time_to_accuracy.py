"""End-to-end time to a test accuracy on Fashion-MNIST with `classicnets.train`, recipe by recipe.

What is timed is what a user waits for: ``classicnets.train(...)`` from the call to its return (data set
loading, model building, every epoch's training and evaluation on the full 10,000-image test set,
checkpoints). Per epoch the history gives the training phase alone (loader + steps) and the evaluation.

Full runs (a GPU; the targets of issue 7):

    python benchmarks/time_to_accuracy.py --device cuda --recipes d2l --epochs 10 --subset 0 --target 0.88
    python benchmarks/time_to_accuracy.py --device cuda --recipes fast --subset 0 --target 0.92

On a 2-core CPU one d2l epoch at 224 px takes tens of minutes, so the recorded CPU run is a reduced form
(a class-balanced ``--subset`` of the training images, few ``--epochs``) and says so in its table: it
reports the time per epoch and the accuracy reached, not a time to 0.88.

The comparison with d2l's own pipeline (same images, same steps, same initial weights, accuracy and
throughput per epoch) is vs_d2l.py.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

import classicnets
import common
from classicnets.checkpoint import model_metadata
from classicnets.data import ArrayDataset, build_loaders, load_dataset
from classicnets.evaluation import EvalViews

# classicnets.train() itself: the package classicnets.train shadows the name once it is imported
from classicnets.experiment import train as train_classicnets
from classicnets.models.base import init_xavier
from classicnets.training.config import TrainConfig, resolve_config
from classicnets.training.distributed import init_distributed
from classicnets.training.loop import Trainer, seed_everything
from classicnets.training.speed import resolve_speed


def speed_settings(device: torch.device) -> dict:
    """The speed settings classicnets picks by itself on ``device`` (training/speed.py: bf16 and
    channels_last where the hardware has bf16, torch.compile on CUDA only), spelled out for the results."""
    decided = resolve_speed(TrainConfig(compile=None), device)
    return dict(precision=decided.precision, channels_last=decided.channels_last, compile=decided.compile)


# quick (make demo's CPU recipe, a quarter-width AlexNet at 28 px) is timed to the d2l AlexNet's 0.88
TARGETS = {"d2l": 0.88, "fast": 0.92, "quick": 0.88}


def run_classicnets(
    recipe: str,
    *,
    epochs: int | None,
    subset: int | None,
    device: torch.device,
    speed: dict,
    seed: int,
    out: Path,
) -> dict:
    settings = dict(
        recipe=recipe,
        subset=subset,
        device=str(device),
        seed=seed,
        out=str(out),
        overwrite=True,
        progress=False,
        **speed,
    )
    if epochs:
        settings["epochs"] = epochs
    common.synchronize(device)
    start = time.perf_counter()
    history = train_classicnets(**settings)
    common.synchronize(device)
    wall = time.perf_counter() - start
    return summarize_run(settings, history, wall)


def summarize_run(settings: dict, history: list[dict], wall: float) -> dict:
    images = sum(r["images_per_sec"] * r["train_time"] for r in history)
    train_seconds = sum(r["train_time"] for r in history)
    return {
        "settings": settings,
        "wall_seconds": wall,
        "history": history,
        "train_images_per_s": images / train_seconds,
        "train_seconds": train_seconds,
        "final_test_acc": history[-1]["test_acc"],
    }


def recipe_trainer(config, train: ArrayDataset, test: ArrayDataset, device: torch.device) -> Trainer:
    """The Trainer ``classicnets.train(config)`` would build, on the given train and test arrays.

    The same wiring as classicnets.experiment.run; it exists so a run can be tested on a slice of the test
    set (``classicnets.train`` always tests on the whole split, which takes minutes per epoch on a CPU).
    """
    image_size = config.image_size or classicnets.model_info(config.model).default_input[-1]
    loaders = build_loaders(
        (train, test), image_size=image_size, batch_size=config.batch_size,
        eval_batch_size=config.eval_batch_size or 2 * config.batch_size, augment=config.augment,
        normalize=config.normalize, device=device, channels_last=config.channels_last, seed=config.seed,
        subset=config.subset,
    )  # fmt: skip
    seed_everything(config.seed)
    model = classicnets.create_model(config.model, num_classes=loaders.num_classes,
                                     in_channels=loaders.in_channels, **config.model_options)  # fmt: skip
    if config.init == "xavier":
        init_xavier(model)
    metadata = model_metadata(
        model=config.model, model_options=config.model_options, num_classes=loaders.num_classes,
        in_channels=loaders.in_channels, classes=loaders.classes, image_size=image_size,
        mean=loaders.mean if config.normalize else None, std=loaders.std if config.normalize else None,
        dataset=loaders.dataset,
    )  # fmt: skip
    test = loaders.test_uncropped if config.tta == "ten-crop" else loaders.test
    return Trainer(model, loaders.train, test, config, ctx=init_distributed(str(device)), metadata=metadata,
                   views=EvalViews(config.tta, image_size), print_fn=lambda *_: None)  # fmt: skip


def test_slice(test: ArrayDataset, count: int | None) -> ArrayDataset:
    """The first ``count`` test images (all for None or 0)."""
    if not count:
        return test
    return ArrayDataset(test.images[:count], test.labels[:count], test.classes, test.name, "test")


def run_on_test_slice(
    recipe: str,
    *,
    epochs: int | None,
    subset: int | None,
    test_images: int,
    device: torch.device,
    speed: dict,
    seed: int,
    out: Path,
) -> dict:
    """Like run_classicnets, through recipe_trainer, tested on the first ``test_images`` test images."""
    settings = dict(recipe=recipe, subset=subset, device=str(device), seed=seed, out=str(out), overwrite=True,
                    progress=False, **speed, **({"epochs": epochs} if epochs else {}))  # fmt: skip
    common.synchronize(device)
    start = time.perf_counter()
    config = resolve_config(recipe, overrides=settings)
    train = load_dataset(config.dataset, "train", data_dir=config.data_dir)
    test = test_slice(load_dataset(config.dataset, "test", data_dir=config.data_dir), test_images)
    history = recipe_trainer(config, train, test, device).fit()
    common.synchronize(device)
    return summarize_run(settings | {"test_images": test_images}, history, time.perf_counter() - start)


def time_to_target(
    epochs: list[dict], target: float, seconds_key: str, acc_key: str = "test_acc"
) -> float | None:
    """Seconds (summed over epochs, training and evaluation) until the test accuracy first reaches target."""
    elapsed = 0.0
    for record in epochs:
        elapsed += record[seconds_key]
        if record[acc_key] >= target:
            return elapsed
    return None


def render(payload: dict) -> str:
    machine = payload["machine"]
    parts = [f"Time to accuracy on Fashion-MNIST, {common.device_label(machine)}, {machine['date_utc']}."]
    for name, run in payload["runs"].items():
        s = run["settings"]
        target = payload["targets"][name]
        reached = run["time_to_target_s"]
        scope = (
            "all 60,000 training images"
            if not s.get("subset")
            else f"a balanced subset of {s['subset']:,} training images (a reduced run, not the full recipe)"
        )
        tested = (
            f"tested on the first {s['test_images']:,} test images (the Trainer, wired as classicnets.train)"
            if s.get("test_images")
            else "classicnets.train end to end, tested on all 10,000 test images"
        )
        parts.append(
            f"**{name}** recipe ({len(run['history'])} epochs, {scope}; {tested}; "
            f"speed settings: precision {s['precision']}, channels_last {s['channels_last']}, "
            f"compile {s['compile']}): wall time {run['wall_seconds']:.0f} s from call to return, "
            f"training {common.fmt(run['train_images_per_s'])} img/s incl. loading; "
            + (
                f"test accuracy {target} reached after {reached:.0f} s."
                if reached is not None
                else f"test accuracy {target} not reached in this run (final {run['final_test_acc']:.3f})."
            )
        )
        parts.append(
            common.markdown_table(
                ["epoch", "train loss", "train acc", "test acc", "train img/s", "train s", "eval s"],
                [
                    [
                        r["epoch"],
                        f"{r['train_loss']:.3f}",
                        f"{r['train_acc']:.3f}",
                        f"{r['test_acc']:.3f}",
                        common.fmt(r["images_per_sec"]),
                        common.fmt(r["train_time"]),
                        common.fmt(r["eval_time"]),
                    ]
                    for r in run["history"]
                ],
            )
        )
    return "\n\n".join(parts)


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    p.add_argument("--recipes", nargs="+", default=["d2l"], choices=sorted(TARGETS))
    p.add_argument("--epochs", type=int, default=None, help="default: the recipe's (d2l 10, fast 5, quick 2)")
    p.add_argument(
        "--subset",
        type=int,
        default=4096,
        help="class-balanced training images; 0 = all 60,000 (the full recipe)",
    )
    p.add_argument(
        "--target",
        type=float,
        default=None,
        help="test accuracy to time (default: d2l 0.88, fast 0.92, quick 0.88)",
    )
    p.add_argument(
        "--compile",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="torch.compile the model (default: on for CUDA, off on the CPU)",
    )
    p.add_argument(
        "--test-images",
        type=int,
        default=0,
        help="test on the first N test images only (through the same Trainer); 0 = classicnets.train "
        "end to end on all 10,000",
    )
    p.add_argument("--device", default="auto")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="time_to_accuracy", help="result name under benchmarks/results/")
    return p


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    device = common.resolve_device(args.device)
    speed = speed_settings(device)
    if args.compile is not None:
        speed["compile"] = args.compile
    subset = args.subset or None
    machine = common.machine_info(device)
    payload: dict = {
        "benchmark": "time_to_accuracy",
        "machine": machine,
        "runs": {},
        "targets": {r: args.target or TARGETS[r] for r in args.recipes},
    }
    with tempfile.TemporaryDirectory(prefix="classicnets-bench-") as tmp:
        for recipe in args.recipes:
            print(f"classicnets, recipe {recipe}", flush=True)
            common_args = dict(epochs=args.epochs, subset=subset, device=device, speed=speed, seed=args.seed,
                               out=Path(tmp) / recipe)  # fmt: skip
            if args.test_images:
                run = run_on_test_slice(recipe, test_images=args.test_images, **common_args)
            else:
                run = run_classicnets(recipe, **common_args)
            run["time_to_target_s"] = time_to_target(
                [{"s": r["time"], "test_acc": r["test_acc"]} for r in run["history"]],
                payload["targets"][recipe],
                "s",
            )
            payload["runs"][recipe] = run
    md = render(payload)
    common.publish(args.out, payload, md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
