"""Arguments shared by several commands, so each reads and documents them the same way."""

from __future__ import annotations

import argparse
import sys

CHECKPOINT_HELP = ("run directory (uses best/, then last/), checkpoint directory or model.safetensors; "
                   "with --weights, a model name (`classicnets models`)")
WEIGHTS_HELP = ("start from these weights: a torchvision/timm-style .pth/.pt state_dict (read without "
                "running code), a .safetensors file or a classicnets run directory; CHECKPOINT is then the "
                "model name")


def add_checkpoint_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", metavar="CHECKPOINT", help=CHECKPOINT_HELP)
    parser.add_argument("--weights", metavar="FILE", help=WEIGHTS_HELP)


def load_for_command(args: argparse.Namespace, quiet: bool = False):
    """The checkpoint (or the model and --weights) a command names, with the weights' load report printed
    (on stderr when ``quiet``: the command's stdout is JSON)."""
    from ..checkpoint import load_model

    loaded = load_model(args.checkpoint, weights=args.weights)
    if loaded.report is not None:
        print(loaded.report, file=sys.stderr if quiet else sys.stdout)
    return loaded
