"""Arguments shared by several commands, so each reads and documents them the same way."""

from __future__ import annotations

import argparse

CHECKPOINT_HELP = "run directory (uses best/, then last/), checkpoint directory or model.safetensors"


def add_checkpoint_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", help=CHECKPOINT_HELP)
