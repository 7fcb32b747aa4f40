"""`classicnets models [PATTERN]`: the model zoo as a table."""

from __future__ import annotations

import argparse
import json


def add_parser(sub: argparse._SubParsersAction, name: str) -> None:
    parser = sub.add_parser(name, help="list the models: parameters, default input, year, paper")
    parser.add_argument("pattern", nargs="?", default="*",
                        help="shell-style filter, e.g. 'resnet*' (default: all)")
    parser.add_argument("--format", choices=["table", "markdown", "json"], default="table",
                        help="output format (default: table)")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ..zoo_table import zoo_rows, zoo_table_markdown  # imports torch: only when the command runs

    rows = zoo_rows(args.pattern)
    if args.format == "markdown":
        print(zoo_table_markdown(rows))
    elif args.format == "json":
        print(json.dumps([row.__dict__ for row in rows], indent=2))
    else:
        _print_rich_table(rows)
    return 0


def _print_rich_table(rows) -> None:
    from ..text_tables import fitted_table

    header = ["name", "parameters", "input", "classes", "year", "paper"]
    # the title after "Authors: " is what tells the papers apart in a narrow column
    cells = [[r.name, f"{r.parameters:,}", r.default_input, str(r.num_classes), str(r.year),
              r.paper.split(": ", 1)[-1]] for r in rows]
    # the paper is cut to the room left (the whole title: --format markdown or json); narrow terminals lose
    # year, then classes, never the name
    title = ("the model zoo: parameters at each model's default input and classes "
             "(papers in full: --format markdown)")
    print(fitted_table(header, cells, title=title, drop_order=["year", "classes", "paper"],
                       flexible={"paper": "ellipsis"}, right=["parameters", "classes", "year"]), end="")
