"""The `classicnets` command: argument parsing and wiring only; each command is a thin call into the API.

Every command lives in its own module here with two functions, ``add_parser(subparsers)`` and
``run(args) -> int``. User errors (:class:`classicnets.errors.ClassicnetsError`) print one clear
message on stderr and exit 2, with no traceback; `--traceback` shows it when debugging.
"""

from __future__ import annotations

import argparse
import sys
from importlib import import_module

from .. import __version__
from ..errors import ClassicnetsError, ClassicnetsWarning

# subcommand -> module in this package, in the order `--help` lists them
COMMANDS = {
    "models": "models",
    "summary": "summary",
    "train": "train",
    "eval": "evaluate",
    "predict": "predict",
    "export": "export",
    "recipes": "recipes",
    "reproduce": "reproduce",
    "show": "show",
    "prepare": "prepare",
}


class _Parser(argparse.ArgumentParser):
    """argparse without prefix matching: ``--epoch 3`` would silently mean ``--epochs 3``, and a prefix
    that is unique today becomes ambiguous the day another flag is added. Every command's parser is one."""

    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="classicnets",
        description="AlexNet and the classic CNNs: inspect, train, evaluate, predict, export.",
    )
    parser.add_argument("--traceback", action="store_true", help="show the full traceback of an error")
    parser.add_argument("--version", action="version", version=f"classicnets {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True, parser_class=_Parser)
    for command, module_name in COMMANDS.items():
        module = _command_module(module_name)
        if module is not None:
            module.add_parser(sub, command)
    return parser


def _command_module(module_name: str):
    try:
        return import_module(f".{module_name}", __name__)
    except ModuleNotFoundError as error:
        if error.name == f"{__name__}.{module_name}":
            return None  # a command not built yet
        raise


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _print_warnings_as_lines(args.command)
    try:
        return int(args.run(args) or 0)
    except ClassicnetsError as error:
        if args.traceback:
            raise
        print(f"classicnets {args.command}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"classicnets {args.command}: interrupted", file=sys.stderr)
        return 130


def _print_warnings_as_lines(command: str) -> None:
    """classicnets' own warnings as ``classicnets CMD: warning: ...``, without Python's file and line."""
    import warnings

    show = warnings.showwarning

    def showwarning(message, category, filename, lineno, file=None, line=None):
        if issubclass(category, ClassicnetsWarning):
            print(f"classicnets {command}: warning: {message}", file=sys.stderr)
        else:
            show(message, category, filename, lineno, file, line)

    warnings.showwarning = showwarning
