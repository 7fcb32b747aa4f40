"""`classicnets summary MODEL [MODEL ...]`: per-layer shapes, parameters, MACs/FLOPs and memory; or several
models side by side.

    classicnets summary alexnet_d2l --num-classes 10
    classicnets summary alexnet --input 3,227,227 --batch-size 128 --format markdown
    classicnets summary alexnet_d2l --measure --batch-size 32 --repeats 5
    classicnets summary alexnet vgg11 resnet18 --input 3,224,224
    classicnets summary alexnet --plot alexnet.png   # per-layer parameters, FLOPs, memory as bar charts
"""

from __future__ import annotations

import argparse
import sys
from functools import partial

from ..inspect.measure import OPTIMIZERS
from ..inspect.render import FORMATS
from ..inspect.summary import DTYPES
from ..registry import ModelOptionError, parse_model_options


def add_parser(sub: argparse._SubParsersAction, name: str) -> None:
    parser = sub.add_parser(
        name, help="layer-by-layer summary: shapes, parameters, MACs/FLOPs, memory; compare models",
        description="Count one training step of a model (on meta tensors: fast, nothing allocated) and show "
                    "per-layer output shapes, parameters, MACs and FLOPs (FLOPs = 2 x MACs), backward FLOPs, "
                    "activation bytes, and memory totals. Several models: their totals side by side.",
    )
    parser.add_argument("models", nargs="+", metavar="MODEL", help="model name(s), see `classicnets models`")
    parser.add_argument("--input", type=_input_size, metavar="C,H,W",
                        help="input size without the batch (default: each model's default input)")
    parser.add_argument("--batch-size", type=int, default=1, metavar="N", help="batch size (default: 1)")
    parser.add_argument("--depth", type=_depth, default=3, metavar="D",
                        help="fold modules deeper than D into their parent's row; 'all' for every module "
                             "(default: 3)")
    parser.add_argument("--format", choices=FORMATS, default="table", help="output format (default: table)")
    parser.add_argument("--num-classes", type=int, metavar="N",
                        help="number of classes (default: the model's own, see `classicnets models`)")
    parser.add_argument("--in-channels", type=int, metavar="C",
                        help="input channels (default: C of --input, else the model's default)")
    parser.add_argument("--option", action="append", default=[], metavar="KEY=VALUE", type=_option,
                        help="model options, e.g. width_mult=0.5 or width_mult=0.5,towers=1 (repeatable)")
    parser.add_argument("--dtype", default="float32", choices=list(DTYPES),
                        help="dtype of weights and activations; byte counts follow it (default: float32)")
    parser.add_argument("--eval", action="store_true",
                        help="count in eval mode (no dropout, BN running stats; default: training mode)")
    parser.add_argument("--measure", action="store_true",
                        help="also run real steps on --device: measured peak memory and per-layer times")
    parser.add_argument("--device", default="cpu", help="device for --measure (default: cpu)")
    parser.add_argument("--repeats", type=int, default=5, metavar="N",
                        help="timed steps for --measure; medians are reported (default: 5)")
    parser.add_argument("--optimizer", choices=OPTIMIZERS, default="sgd_momentum",
                        help="optimizer of the measured steps (default: sgd_momentum)")
    parser.add_argument("--weights", metavar="FILE",
                        help="load these weights into the model first (one MODEL): a .pth/.pt state_dict, a "
                             ".safetensors file or a run directory; classes and input channels default to "
                             "the file's, and what loaded is listed on stderr")
    parser.add_argument("--plot", metavar="FILE",
                        help="also draw the per-layer parameters, FLOPs and activation memory as bar charts "
                             "into FILE (a PNG; one model)")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ..errors import ConfigError, InputShapeError
    from ..inspect import render_comparison, summarize
    from ..registry import model_info

    if args.weights and len(args.models) > 1:
        raise ConfigError(f"--weights loads one model's weights; name one MODEL, not {len(args.models)}")
    if args.plot and len(args.models) > 1:
        raise ConfigError(f"--plot draws one model; got {len(args.models)} ({', '.join(args.models)}): "
                          "run summary once per model to plot each")
    summaries = []
    for name in args.models:
        model, input_size = _build(name, args)
        count = partial(summarize, model, batch_size=args.batch_size, dtype=args.dtype, device=args.device,
                        depth=args.depth, train=not args.eval, measure=args.measure, repeats=args.repeats,
                        optimizer=args.optimizer, name=name)
        try:
            summaries.append(count(input_size=input_size))
        except InputShapeError as error:
            # A comparison goes on when one model cannot take the shared --input (the paper's
            # alexnet takes 227, not the 224 its text states): that model is counted at its own
            # default size, and the table's header shows which size each column used.
            default = (input_size[0], *model_info(name).default_input[1:])
            if len(args.models) == 1 or default == tuple(input_size):
                raise
            import textwrap

            from ..text_tables import terminal_width

            note = (f"classicnets summary: note: {name} cannot take {_fmt(input_size)}; counting it at its "
                    f"default input {_fmt(default)} ({error})")
            print(textwrap.fill(note, width=terminal_width(), break_long_words=False, break_on_hyphens=False),
                  file=sys.stderr)
            summaries.append(count(input_size=default))
    width = None  # the terminal's width; 80 columns for pipes and files
    if len(summaries) == 1:
        text = summaries[0].render(args.format, width=width)
    else:
        text = render_comparison(summaries, args.format, width=width)
    print(text, end="" if text.endswith("\n") else "\n")
    if args.plot:
        from ..inspect.plot import plot_summary

        print(f"wrote {plot_summary(summaries[0], args.plot)}", file=sys.stderr)
    return 0


def _fmt(size) -> str:
    return "x".join(map(str, size))


def _build(name: str, args: argparse.Namespace):
    """The model and its input size, with --in-channels defaulting from --input, then from the model."""
    import torch

    from ..registry import create_model, model_info

    info = model_info(name)
    kwargs = {key: value for options in args.option for key, value in options.items()}
    if args.weights:
        return _build_with_weights(name, args, kwargs)
    in_channels = args.in_channels or (args.input[0] if args.input else info.default_input[0])
    if args.num_classes is not None:
        kwargs["num_classes"] = args.num_classes
    # Counting needs only shapes: without --measure the model is built on the meta device (no weights
    # allocated or initialised, a second saved for VGG's 138M parameters).
    with torch.device("cpu" if args.measure else "meta"):
        model = create_model(name, in_channels=in_channels, **kwargs)
    input_size = args.input or (in_channels, *info.default_input[1:])
    return model, input_size


def _build_with_weights(name: str, args: argparse.Namespace, options: dict):
    """The model on the CPU with the --weights loaded (a new classifier for another --num-classes)."""
    from ..registry import create_model, model_info
    from ..weights import infer_size, load_weights, read_weights

    file = read_weights(args.weights)
    num_classes, in_channels = infer_size(file, name, options)
    in_channels = args.in_channels or (args.input[0] if args.input else in_channels)
    model = create_model(name, num_classes=args.num_classes or num_classes, in_channels=in_channels,
                         **options)
    print(load_weights(model, file, name=name, options=options), file=sys.stderr)
    return model, args.input or (in_channels, *model_info(name).default_input[1:])


def _input_size(text: str) -> tuple[int, ...]:
    try:
        size = tuple(int(part) for part in text.replace("x", ",").split(","))
    except ValueError:
        size = ()
    if len(size) != 3 or min(size) < 1:
        raise argparse.ArgumentTypeError(f"expected C,H,W as three positive integers, e.g. 3,224,224; "
                                         f"got {text!r}")
    return size


def _depth(text: str) -> int | None:
    if text == "all":
        return None
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"expected a non-negative integer or 'all'; got {text!r}")
    return int(text)


def _option(text: str) -> dict:
    try:
        return parse_model_options(text)
    except ModelOptionError as error:
        raise argparse.ArgumentTypeError(str(error)) from None

