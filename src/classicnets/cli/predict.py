"""`classicnets predict CHECKPOINT IMAGE...`: the most probable classes of each image."""

from __future__ import annotations

import argparse
import json

from ..evaluation import TTA_MODES
from .arguments import add_checkpoint_argument, load_for_command


def add_parser(sub: argparse._SubParsersAction, name: str) -> None:
    parser = sub.add_parser(
        name, help="classify image files with a checkpoint: top-5 classes with probabilities",
        description="Classify images of any size, grey or colour: each is converted to the model's channels, "
                    "centre-cropped to a square, resized and normalised as in training.",
    )
    add_checkpoint_argument(parser)
    parser.add_argument("images", nargs="+", metavar="IMAGE", help="PNG, JPEG, BMP, GIF or TIFF files")
    parser.add_argument("--top-k", type=int, default=5, help="how many classes to show (default: 5)")
    parser.add_argument("--tta", choices=TTA_MODES, default="none", help="default: none")
    parser.add_argument("--invert", action="store_true",
                        help="invert the images first: Fashion-MNIST and MNIST draw light items on black, "
                             "photos are usually dark on light")
    parser.add_argument("--device", default="auto", help="cpu, cuda ... (default: auto)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of tables")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ..errors import ConfigError
    from ..inference import predict

    if args.top_k < 1:
        raise ConfigError(f"--top-k must be >= 1; got {args.top_k}")
    loaded = load_for_command(args, quiet=args.json)
    predictions = predict(loaded, args.images, top_k=args.top_k, tta=args.tta, invert=args.invert,
                          device=args.device)
    if args.json:
        print(json.dumps([{"image": p.source, "top": [{"class": c, "probability": q} for c, q in p.top],
                           "entropy": p.entropy, "note": p.note} for p in predictions], indent=1))
        return 0
    import textwrap

    from ..text_tables import terminal_width

    width = terminal_width()
    for prediction in predictions:
        # the file name on a line of its own: a table title would break it at the table's width
        print(prediction.source)
        name_width = max(len(name) for name, _ in prediction.top)
        for name, probability in prediction.top:
            print(f"  {name:<{name_width}}  {probability:7.2%}")
        print(f"  entropy {prediction.entropy:.2f} (0: one certain class, 1: a uniform guess)")
        if prediction.note:
            print(textwrap.fill(f"note: {prediction.note}", width=width, initial_indent="  ",
                                subsequent_indent="    ", break_on_hyphens=False))
    return 0
