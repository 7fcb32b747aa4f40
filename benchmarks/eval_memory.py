"""Peak host memory of a ten-crop evaluation: the ten views one at a time against all ten stacked.

The paper's test averages the softmax over ten crops (four corners, the centre and their mirrors).
classicnets.evaluation yields the views one at a time as slices of the batch; the earlier code (the
Trainer's evaluation through data.augment.ten_crop) stacked all ten into one tensor first, ten times the
batch. Each case runs in a fresh interpreter on the paper's AlexNet (227 px crops out of 259 px images,
10 classes) and reports the growth of the process's peak resident memory (``ru_maxrss``) over the
evaluation.

    python benchmarks/eval_memory.py --batch-sizes 8 32      # about a minute on 2 CPU cores
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import common

CASE = """
import resource, sys, torch
import classicnets
from classicnets.data.augment import pre_crop_size
from classicnets.evaluation import EvalViews, evaluate_batches, tta_views
torch.manual_seed(0)
batch, stacked, size = int(sys.argv[1]), sys.argv[2] == "stacked", 227
model = classicnets.create_model("alexnet", num_classes=10).eval()
side = pre_crop_size(size)
batches = [(torch.rand(batch, 3, side, side), torch.randint(0, 10, (batch,))) for _ in range(2)]
if stacked:  # all ten views as one new tensor, then the model over each: the earlier code's way
    def evaluate():
        with torch.no_grad():
            for x, _ in batches:
                views = torch.stack(list(tta_views(x, "ten-crop", size)))
                torch.stack([model(v).softmax(1) for v in views]).mean(0)
else:
    def evaluate():
        evaluate_batches(model, batches, device=torch.device("cpu"), views=EvalViews("ten-crop", size))
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
evaluate()
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print((after - before) * 1024)  # ru_maxrss is in KiB on Linux
"""


def measure(batch: int, how: str, src: Path) -> int:
    done = subprocess.run([sys.executable, "-c", CASE, str(batch), how], capture_output=True, text=True,
                          check=True, env={"PYTHONPATH": str(src), "PATH": ""})
    return int(done.stdout.split()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[8, 32])
    args = parser.parse_args()
    import torch

    src = common.REPO_ROOT / "src"
    rows = []
    for batch in args.batch_sizes:
        stacked, lazy = measure(batch, "stacked", src), measure(batch, "lazy", src)
        rows.append({"batch_size": batch, "stacked_bytes": stacked, "lazy_bytes": lazy})
    payload = {"benchmark": "eval_memory", "machine": common.machine_info(torch.device("cpu")),
               "settings": {"model": "alexnet", "image_size": 227, "tta": "ten-crop", "batches": 2},
               "rows": rows}
    table = common.markdown_table(
        ["batch", "ten views stacked: peak RSS growth", "views one at a time", "saved"],
        [[r["batch_size"], f"{r['stacked_bytes'] / 2**20:,.0f} MiB", f"{r['lazy_bytes'] / 2**20:,.0f} MiB",
          f"{(r['stacked_bytes'] - r['lazy_bytes']) / 2**20:,.0f} MiB"] for r in rows])
    markdown = (f"Ten-crop evaluation of the paper's AlexNet (227 px crops of 259 px images, CPU, "
                f"{common.device_label(payload['machine'])}): growth of the peak resident memory over two "
                f"batches.\n\n{table}\n")
    common.publish("eval_memory", payload, markdown)


if __name__ == "__main__":
    main()
