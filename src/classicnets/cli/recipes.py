"""`classicnets recipes [NAME]`: the training recipes, and the settings one resolves to, without training.

    classicnets recipes            # one line per recipe
    classicnets recipes quick      # what --recipe quick sets (differences from the defaults)
    classicnets recipes d2l --all  # every setting, with where it comes from
"""

from __future__ import annotations

import argparse

from ..training.config import RECIPE_NOTES, RECIPES


def add_parser(sub: argparse._SubParsersAction, name: str) -> None:
    parser = sub.add_parser(name, help="list the training recipes, or show one's settings",
                            description="The recipes `classicnets train --recipe NAME` applies. With a NAME: "
                                        "the settings it resolves to, each with its source.")
    parser.add_argument("name", nargs="?", choices=list(RECIPES), metavar="NAME",
                        help=f"a recipe: {', '.join(RECIPES)}")
    parser.add_argument("--all", action="store_true", help="every setting, not only those the recipe changes")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ..training.config import format_config, resolve_config

    if args.name is None:
        _print_table()
        return 0
    config = resolve_config(args.name)
    print(f"recipe {args.name}: {RECIPE_NOTES.get(args.name, '')}")
    print(f"settings{'' if args.all else ' that differ from the defaults'}:")
    print(format_config(config, full=args.all))
    print(f"train with: classicnets train --recipe {args.name}   (writes {config.out})")
    print("flags override any setting, e.g. --epochs 1")
    return 0


def _print_table() -> None:
    from rich import box
    from rich.console import Console
    from rich.table import Table

    from ..training.config import resolve_config

    table = Table(title="training recipes (`classicnets recipes NAME` shows one's settings)",
                  title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False)
    for column in ("recipe", "model", "epochs", "batch", "lr"):
        justify = "right" if column in ("epochs", "batch", "lr") else "left"
        table.add_column(column, no_wrap=True, justify=justify)
    table.add_column("what it is for", ratio=1)
    for name in RECIPES:
        c = resolve_config(name)
        table.add_row(name, c.model, str(c.epochs), str(c.batch_size), f"{c.lr:g}",
                      RECIPE_NOTES.get(name, ""))
    Console().print(table)
