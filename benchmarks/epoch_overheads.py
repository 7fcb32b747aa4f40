"""What an epoch costs besides its training steps, before and after the changes that moved it.

- the checkpoint: alexnet_d2l's 187 MB written synchronously (``save_checkpoint``) against the time the
  training thread is held by ``BackgroundSaver.save`` (the snapshot copy; the write lands meanwhile);
- curves.png: one ``plot_curves`` call (the trainer now makes it on the checkpoint thread);
- evaluation: ``classicnets.evaluate`` of an alexnet_d2l checkpoint on Fashion-MNIST test images at 224
  (bf16), with glibc's default allocator against host memory kept between batches: images/s and the
  minor page faults it took. The two alternate, ``--reps`` times each.

    python benchmarks/epoch_overheads.py            # about a minute on 2 cores
"""

from __future__ import annotations

import argparse
import resource
import tempfile
import time
from pathlib import Path

import torch

import classicnets
import common
from classicnets import checkpoint as ckpt
from classicnets import runtime as host_memory
from classicnets.inference.plots import plot_curves

FASHION_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                   "Ankle boot"]  # fmt: skip


def checkpoint_seconds(run_dir: Path, model: torch.nn.Module, reps: int) -> dict:
    metadata = {"model": "alexnet_d2l"}
    direct, blocked, landed = [], [], []
    saver = ckpt.BackgroundSaver()
    for epoch in range(reps):
        state = {"epoch": epoch}
        start = time.perf_counter()
        ckpt.save_checkpoint(run_dir / "direct", model_state=model.state_dict(), metadata=metadata,
                             trainer_state=state, is_best=True)  # fmt: skip
        direct.append(time.perf_counter() - start)
        start = time.perf_counter()
        saver.save(run_dir / "background", model_state=model.state_dict(), metadata=metadata,
                   trainer_state=state, is_best=True)  # fmt: skip
        blocked.append(time.perf_counter() - start)
        saver.wait()
        landed.append(time.perf_counter() - start)
    mb = sum(t.numel() * t.element_size() for t in model.state_dict().values()) / 1e6
    return {"megabytes": mb, "save_checkpoint_s": common.median(direct),
            "background_blocks_s": common.median(blocked), "background_lands_s": common.median(landed)}


def curves_seconds(run_dir: Path, reps: int) -> dict:
    history = [{"epoch": e, "train_loss": 1 / e, "train_acc": 1 - 1 / e, "test_acc": 1 - 1.1 / e,
                "test_loss": 1.1 / e, "lr": 0.01} for e in range(1, 11)]  # fmt: skip
    steps = [(i / 10, 1 / (1 + i / 10), 0.01) for i in range(1, 101)]  # what log_every records, 10 an epoch
    times = []
    for _ in range(reps + 1):
        start = time.perf_counter()
        plot_curves(run_dir, history, title="alexnet_d2l on fashion-mnist", steps=steps)
        times.append(time.perf_counter() - start)
    return {"first_s": times[0], "then_s": common.median(times[1:])}


def eval_rows(run_dir: Path, model: torch.nn.Module, images: int, reps: int) -> list[dict]:
    metadata = ckpt.model_metadata(model="alexnet_d2l", model_options={}, num_classes=10, in_channels=1,
                                   classes=FASHION_CLASSES, image_size=224, mean=None, std=None,
                                   dataset="fashion-mnist")  # fmt: skip
    ckpt.save_checkpoint(run_dir / "eval", model_state=model.state_dict(), metadata=metadata,
                         trainer_state={})
    results: dict[str, dict[str, list[float]]] = {}
    classicnets.evaluate(run_dir / "eval", limit=250, bf16=True, batch_size=250)  # warm-up
    for _ in range(reps):
        for label, keep in (("glibc default", False), ("host memory kept", True)):
            original = host_memory.keep_host_memory
            if not keep:  # what evaluate did before: the allocator left as glibc sets it
                host_memory.keep_host_memory = lambda: False
            try:
                before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
                result = classicnets.evaluate(run_dir / "eval", limit=images, bf16=True, batch_size=250)
                faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
            finally:
                host_memory.keep_host_memory = original
            entry = results.setdefault(label, {"images_per_s": [], "page_faults": []})
            entry["images_per_s"].append(result.images_per_second)
            entry["page_faults"].append(faults)
    return [{"allocator": label, "images": images, "images_per_s": common.median(v["images_per_s"]),
             "page_faults": common.median(v["page_faults"])} for label, v in results.items()]  # fmt: skip


def render(payload: dict) -> str:
    m, c, p = payload["machine"], payload["checkpoint"], payload["curves"]
    landed = f"on disk after {c['background_lands_s']:.3f} s"
    background = f"{c['background_blocks_s']:.3f} s (BackgroundSaver; {landed})"
    rows = [
        [f"checkpoint ({c['megabytes']:.0f} MB, fsynced)", f"{c['save_checkpoint_s']:.3f} s", background],
        ["curves.png", f"{p['then_s']:.3f} s ({p['first_s']:.2f} s the first)", "0 s (checkpoint thread)"],
    ]
    evals = {r["allocator"]: r for r in payload["eval"]}
    old, new = evals["glibc default"], evals["host memory kept"]
    rows.append([f"eval of {old['images']:,} images at 224 (bf16)",
                 f"{old['images_per_s']:.0f} img/s, {old['page_faults']:,.0f} page faults",
                 f"{new['images_per_s']:.0f} img/s, {new['page_faults']:,.0f} page faults"])  # fmt: skip
    return (
        f"Per-epoch costs besides the training steps, alexnet_d2l, {common.device_label(m)}, "
        f"{m['date_utc']}; "
        f"medians of {payload['settings']['reps']} runs, the two evaluations alternating. Seconds are what "
        f"the training thread waits.\n\n" + common.markdown_table(["what", "before", "now"], rows)
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--eval-images", type=int, default=2000)
    p.add_argument("--out", default="epoch_overheads", help="result name under benchmarks/results/")
    args = p.parse_args(argv)
    torch.manual_seed(0)
    model = classicnets.create_model("alexnet_d2l")
    with tempfile.TemporaryDirectory(prefix="classicnets-bench-") as tmp:
        payload = {
            "benchmark": "epoch_overheads",
            "machine": common.machine_info(torch.device("cpu")),
            "settings": {"reps": args.reps, "eval_images": args.eval_images},
            "checkpoint": checkpoint_seconds(Path(tmp), model, args.reps),
            "curves": curves_seconds(Path(tmp), args.reps),
            "eval": eval_rows(Path(tmp), model, args.eval_images, args.reps),
        }
    common.publish(args.out, payload, render(payload))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
