"""`classicnets models [PATTERN]`: the model zoo as a table."""

from __future__ import annotations

import argparse
import json
import sys

from ..zoo_table import zoo_rows, zoo_table_markdown


def add_parser(sub: argparse._SubParsersAction, name: str) -> None:
    parser = sub.add_parser(name, help="list the models: parameters, default input, year, paper")
    parser.add_argument("pattern", nargs="?", default="*",
                        help="shell-style filter, e.g. 'resnet*' (default: all)")
    parser.add_argument("--format", choices=["table", "markdown", "json"], default="table",
                        help="output format (default: table)")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    rows = zoo_rows(args.pattern)
    if args.format == "markdown":
        print(zoo_table_markdown(rows))
    elif args.format == "json":
        print(json.dumps([row.__dict__ for row in rows], indent=2))
    else:
        _print_rich_table(rows)
    return 0


def _print_rich_table(rows) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="classicnets model zoo (parameters at each model's default input and classes)")
    for column, justify in [("name", "left"), ("parameters", "right"), ("default input", "right"),
                            ("classes", "right"), ("year", "right")]:
        table.add_column(column, justify=justify, no_wrap=True)
    table.add_column("paper", overflow="ellipsis", no_wrap=True)
    for row in rows:
        table.add_row(row.name, f"{row.parameters:,}", row.default_input, str(row.num_classes), str(row.year),
                      row.paper)
    # Piped output gets a wide line rather than titles wrapped over five rows.
    console = Console() if sys.stdout.isatty() else Console(width=160)
    console.print(table)
