"""Regenerate the README's generated blocks: `python -m classicnets.tools.readme_tables --write README.md`.

A block sits between `<!-- BEGIN name -->` and `<!-- END name -->`; tests fail when the README
and the generator disagree, so the tables cannot drift from the code.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

from ..zoo_table import zoo_rows, zoo_table_markdown

BENCHMARK_TABLE = Path(__file__).resolve().parents[3] / "benchmarks" / "results" / "README-table.md"
EXPERIMENTS = Path(__file__).resolve().parents[3] / "docs" / "experiments"  # committed reports


def benchmark_tables() -> str:
    """The tables benchmarks/run_all.py wrote from the recorded results, without its header comment."""
    lines = BENCHMARK_TABLE.read_text().splitlines()
    return "\n".join(line for line in lines if not line.startswith("<!--")).strip()


def experiment_verdicts() -> str:
    """Every claim of the committed experiment reports (docs/experiments/*/results.json) with its verdict."""
    import json

    from ..experiments.report import verdict_table

    reports = [(f"docs/experiments/{path.parent.name}/report.md", json.loads(path.read_text()))
               for path in sorted(EXPERIMENTS.glob("*/results.json"))]
    return verdict_table(reports)


GENERATORS = {
    "models": lambda: zoo_table_markdown(zoo_rows()),
    "benchmarks": benchmark_tables,
    "experiments": experiment_verdicts,
}


def render_blocks(text: str) -> str:
    for name, generate in GENERATORS.items():
        if f"<!-- BEGIN {name} -->" not in text:
            continue
        pattern = re.compile(rf"(<!-- BEGIN {name} -->\n).*?(<!-- END {name} -->)", re.S)
        text = pattern.sub(_replacement(generate()), text)
    return text


def _replacement(body: str):
    return lambda match: match.group(1) + body + "\n" + match.group(2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--write", type=Path, required=True, help="the Markdown file to update in place")
    path = parser.parse_args().write
    path.write_text(render_blocks(path.read_text()))


if __name__ == "__main__":
    main()
