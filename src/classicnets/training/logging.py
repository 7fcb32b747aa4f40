"""What a run records: the per-epoch line the seeds print and the JSONL and CSV logs (the curves are drawn
by :mod:`classicnets.inference.plots`).

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

METRICS_JSONL = "metrics.jsonl"
METRICS_CSV = "metrics.csv"
CONFIG_JSON = "config.json"


def epoch_line(record: dict[str, Any]) -> str:
    """The seeds' line (``epoch 1, loss 0.xxxx, train acc 0.xxx, test acc 0.xxx, time x.x sec``), extended."""
    return (f"epoch {record['epoch']}, loss {record['train_loss']:.4f}, train acc {record['train_acc']:.3f}, "
            f"test acc {record['test_acc']:.3f}, test top5 {record['test_top5']:.3f}, "
            f"lr {record['lr']:.3g}, {record['images_per_sec']:.0f} img/s, time {record['time']:.1f} sec")


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
