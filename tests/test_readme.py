"""The README's generated tables must equal what the code generates (`make models-table` rewrites them)."""

from pathlib import Path

from classicnets.tools.readme_tables import render_blocks

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_generated_blocks_are_current():
    text = README.read_text()
    assert "<!-- BEGIN models -->" in text and "<!-- BEGIN benchmarks -->" in text
    assert render_blocks(text) == text, "README tables are stale: run `make models-table`"


def test_readme_names_the_two_commands():
    text = README.read_text()
    assert "make demo" in text and "make test" in text
