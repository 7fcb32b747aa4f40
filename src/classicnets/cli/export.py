"""`classicnets export CHECKPOINT --format onnx|torchscript`: a deployable file, checked against PyTorch."""

from __future__ import annotations

import argparse

from ..inference import EXPORT_FORMATS
from .arguments import add_checkpoint_argument, load_for_command


def add_parser(sub: argparse._SubParsersAction, name: str) -> None:
    parser = sub.add_parser(
        name, help="export a checkpoint to ONNX or TorchScript, verified against PyTorch",
        description="Export the model for float (N, C, S, S) input prepared as in training (the checkpoint's "
                    "classes, mean/std and image size are stored in the file), with a dynamic batch size. "
                    "The file is reloaded (onnxruntime / torch.jit.load) and compared with PyTorch; a larger "
                    "difference than --tolerance fails.",
    )
    add_checkpoint_argument(parser)
    parser.add_argument("--format", choices=EXPORT_FORMATS, required=True,
                        help="onnx needs: pip install 'classicnets[export]'")
    parser.add_argument("--out", help="output file "
                                      "(default: RUN_DIR/MODEL.onnx or RUN_DIR/MODEL.torchscript.pt)")
    parser.add_argument("--tolerance", type=float, default=1e-4,
                        help="largest max abs difference of the logits accepted, times the largest "
                             "logit when that exceeds 1 (default: 1e-4)")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    import textwrap

    from ..inference import export
    from ..text_tables import terminal_width

    result = export(load_for_command(args), args.format, args.out, tolerance=args.tolerance)
    allowed = f"{result.tolerance:g}" + (f" x {result.logit_scale:.3g}" if result.logit_scale > 1 else "")
    for line in (f"wrote {result.path} ({result.bytes / 1e6:.1f} MB, {result.format}, input "
                 f"{'x'.join(str(d) for d in result.input_shape[1:])} with a dynamic batch size)",
                 f"max abs difference of the logits vs PyTorch: {result.max_abs_diff:.3g} with logits up to "
                 f"{result.logit_scale:.3g} (tolerance {allowed}): ok"):
        print(textwrap.fill(line, width=terminal_width(), subsequent_indent="  ", break_long_words=False,
                            break_on_hyphens=False))
    return 0
