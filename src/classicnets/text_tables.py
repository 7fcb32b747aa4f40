"""Tables that fit the terminal: whole columns are left out, least useful first, rather than every cell
cut to a few letters (rich's own answer to a narrow terminal). Light to import: the CLI's listings use it.
"""

from __future__ import annotations

import io
import os
import shutil
import sys
from collections.abc import Mapping, Sequence

MIN_WIDTH = 40
FLEX_MIN = 16  # a wrapping or cut column keeps at least this many characters
GAP = 3  # between columns: padding, separator, padding


def terminal_width(default: int = 80) -> int:
    """The terminal's columns; COLUMNS when set; ``default`` for pipes and files (logs are read at 80 too)."""
    if os.environ.get("COLUMNS", "").isdigit():
        return max(int(os.environ["COLUMNS"]), MIN_WIDTH)
    if sys.stdout.isatty():
        return max(shutil.get_terminal_size((default, 24)).columns, MIN_WIDTH)
    return default


def fitted_table(header: Sequence[str], rows: Sequence[Sequence[str]], *, width: int | None = None,
                 title: str | None = None, drop_order: Sequence[str] = (),
                 flexible: Mapping[str, str] | None = None, right: Sequence[str] = ()) -> str:
    """The table as text no wider than ``width``.

    Columns named in ``drop_order`` are left out, first to last, until the rest fits without cutting a cell.
    ``flexible`` names the columns that may be narrower than their text: "wrap" folds it over lines,
    "ellipsis" cuts it with an ellipsis. Every other column is shown whole or not at all.
    """
    width = width or terminal_width()
    flexible = dict(flexible or {})
    keep = list(header)
    for name in drop_order:
        if _minimum(header, rows, keep, flexible) <= width:
            break
        if name in keep:
            keep.remove(name)
    return _render(header, rows, keep, width, title, flexible, right)


def _minimum(header, rows, keep, flexible) -> int:
    total = 0
    for name in keep:
        i = header.index(name)
        natural = max([len(name), *(len(str(row[i])) for row in rows)])
        total += min(natural, FLEX_MIN) if name in flexible else natural
    return total + GAP * (len(keep) - 1)


def _render(header, rows, keep, width, title, flexible, right) -> str:
    from rich import box
    from rich.console import Console
    from rich.table import Table

    index = [header.index(name) for name in keep]
    table = Table(title=title, title_justify="left", box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False)
    naturals = {name: max([len(name), *(len(str(row[i])) for row in rows)])
                for name, i in zip(keep, index, strict=True)}
    fixed_total = sum(n for name, n in naturals.items() if name not in flexible) + GAP * (len(keep) - 1)
    flex = [name for name in keep if name in flexible]
    room = max(FLEX_MIN, (width - fixed_total) // max(len(flex), 1))
    for name in keep:
        # rich would squeeze every column a little; here a fixed column keeps its text and a flexible one
        # gets the room that is left
        size = naturals[name] if name not in flexible else min(naturals[name], room)
        table.add_column(name, justify="right" if name in right else "left", width=size,
                         no_wrap=flexible.get(name) != "wrap", overflow=flexible.get(name, "fold"))
    for row in rows:
        table.add_row(*(str(row[i]) for i in index))
    console = Console(file=io.StringIO(), width=width, force_terminal=False, color_system=None)
    console.print(table)
    return "\n".join(line.rstrip() for line in console.file.getvalue().splitlines()) + "\n"
