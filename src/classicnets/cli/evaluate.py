"""`classicnets eval CHECKPOINT`: top-1, top-5, per-class accuracy and the confusion matrix (PNG and JSON)."""

from __future__ import annotations

import argparse
import json

from ..evaluation import TTA_MODES
from .arguments import add_checkpoint_argument, load_for_command


def add_parser(sub: argparse._SubParsersAction, name: str) -> None:
    parser = sub.add_parser(
        name, help="evaluate a checkpoint: top-1, top-5, per-class accuracy, confusion matrix",
        description="Evaluate a checkpoint on its dataset's test split. The dataset and preprocessing come "
                    "from the checkpoint; the options below override them.",
    )
    add_checkpoint_argument(parser)
    parser.add_argument("--dataset", help="evaluate on this dataset instead of the checkpoint's "
                                          "(same classes required)")
    parser.add_argument("--data-dir", help="where the dataset's files are (default: the data layer's "
                        "search); for a run trained on an image folder, the folder holding val/ (or test/) "
                        "when it has moved")
    parser.add_argument("--split", choices=["test", "train"], default="test", help="default: test")
    parser.add_argument("--tta", choices=TTA_MODES, default="none",
                        help="test-time augmentation: average the softmax over the image and its mirror "
                             "(flip) or the paper's 4 corner + centre crops and their mirrors (ten-crop); "
                             "default: none")
    parser.add_argument("--batch-size", type=int, default=500, help="default: 500")
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:1 ... (default: auto)")
    parser.add_argument("--bf16", action="store_true",
                        help="bfloat16 autocast: 2-3x faster on CPUs with AMX and on GPUs (default: float32)")
    parser.add_argument("--no-channels-last", dest="channels_last", action="store_false",
                        help="keep the NCHW memory layout (default: channels_last, faster for convs)")
    parser.add_argument("--limit", type=int, help="evaluate only the first N images")
    parser.add_argument("--out", help="directory for metrics.json and confusion.png "
                                      "(default: RUN_DIR/eval-SPLIT[-TTA])")
    parser.add_argument("--no-download", dest="download", action="store_false",
                        help="fail instead of downloading a missing dataset")
    parser.add_argument("--json", action="store_true", help="print the metrics as JSON instead of tables")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ..inference import evaluate

    loaded = load_for_command(args, quiet=args.json)
    result = evaluate(
        loaded, dataset=args.dataset, data_dir=args.data_dir, split=args.split, tta=args.tta,
        batch_size=args.batch_size, device=args.device, bf16=args.bf16, channels_last=args.channels_last,
        limit=args.limit, out=args.out or "auto", download=args.download,
    )
    if args.json:
        print(json.dumps(result.to_dict(), indent=1))
    else:
        _print_tables(result)
    return 0


def _print_tables(result) -> None:
    from rich.console import Console
    from rich.table import Table

    s = result.settings
    summary = Table(title=f"{s['model']} on {s['dataset']} ({s['split']}, TTA {s['tta']})")
    # top-k of k classes or fewer is always 100%: shown only when it says something
    with_top_k = result.top_k < len(result.classes)
    top_k = [f"top-{result.top_k}"] if with_top_k else []
    for column in ("images", "top-1", *top_k, "seconds", "images/s"):
        summary.add_column(column, justify="right")
    summary.add_row(f"{result.count:,}", f"{result.top1:.2%}", *([f"{result.top5:.2%}"] if top_k else []),
                    f"{result.seconds:.1f}", f"{result.images_per_second:,.0f}")
    per_class = Table(title="per class (rows of the confusion matrix)")
    per_class.add_column("class")
    per_class.add_column("images", justify="right")
    per_class.add_column("accuracy", justify="right")
    per_class.add_column("most confused with")
    for i, name in enumerate(result.classes):
        row = result.confusion[i]
        others = [(count, j) for j, count in enumerate(row) if j != i and count]
        confused = f"{result.classes[max(others)[1]]} ({max(others)[0]})" if others else "-"
        accuracy = result.per_class[name]
        per_class.add_row(name, f"{sum(row):,}", "-" if accuracy is None else f"{accuracy:.2%}", confused)
    console = Console()
    console.print(summary)
    console.print(per_class)
    console.print(f"wrote {result.files['json']}\nand {result.files['png']}")
