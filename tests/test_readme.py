"""The README's generated tables must equal what the code generates (`make models-table` rewrites them)."""

import re
from pathlib import Path

from classicnets.tools.readme_tables import render_blocks

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_generated_blocks_are_current():
    text = README.read_text()
    for block in ("models", "benchmarks", "demo", "vs-d2l"):  # numbers in prose come from the records too
        assert f"<!-- BEGIN {block} -->" in text, block
    assert render_blocks(text) == text, "README tables are stale: run `make models-table`"


def test_readme_commands_are_makefile_targets():
    """Each `make TARGET` the README tells a reader to type is a Makefile target, the two commands first."""
    named = re.findall(r"^make ([\w-]+)", README.read_text(), flags=re.MULTILINE)
    targets = set(re.findall(r"^([\w-]+):", (README.parent / "Makefile").read_text(), flags=re.MULTILINE))
    assert named[:2] == ["demo", "test"]
    assert set(named) <= targets, f"README names make targets the Makefile lacks: {set(named) - targets}"
