"""`classicnets prepare`: decode an image folder once into a store that trains at memory speed.

    classicnets prepare /data/imagenet --out /data/imagenet-256          # train/ and val/ -> a sharded store
    classicnets train --recipe paper --dataset /data/imagenet-256       # train from it

Interrupted? Run the same command again: finished shards are kept.
"""

from __future__ import annotations

import argparse

from ..data.prepare import DEFAULT_SHARD_SIZE, DEFAULT_SIZE


def add_parser(sub: argparse._SubParsersAction, name: str) -> None:
    parser = sub.add_parser(
        name, help="decode an image folder once into a sharded uint8 store (fast training from it)",
        description="Decode every image of FOLDER (train/<class>/*, val/<class>/* or test/) once, the "
                    "paper's way (shorter side to SIZE, centre SIZE x SIZE), into a store of uint8 shards "
                    "at OUT; `classicnets train --dataset OUT` then reads batches straight from "
                    "memory-mapped shards. Unreadable images are reported, skipped and listed in "
                    "OUT/store.json. A stopped run continues where it stopped when run again.",
    )  # fmt: skip
    parser.add_argument("folder", help="image folder: train/ and val/ (or test/), a sub-folder per class")
    parser.add_argument("--out", required=True, help="the store's folder (new, empty, or unfinished)")
    parser.add_argument("--size", type=int, default=DEFAULT_SIZE,
                        help=f"side of the stored images (default {DEFAULT_SIZE}: the paper's, 224 crops)")
    parser.add_argument("--workers", type=int, default=None,
                        help="decoding processes (default: one per CPU; 0: decode in this process)")
    parser.add_argument("--shard-size", type=int, default=DEFAULT_SHARD_SIZE,
                        help=f"images per shard file (default {DEFAULT_SHARD_SIZE}, 0.8 GB at 256 px)")
    parser.add_argument("--max-shards", type=int, default=None,
                        help="write at most N shards, then stop (run again to continue)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar or summary")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ..data.prepare import prepare

    prepare(args.folder, args.out, size=args.size, workers=args.workers, shard_size=args.shard_size,
            max_shards=args.max_shards, progress=not args.quiet)  # fmt: skip
    return 0
