"""The README's generated tables must equal what the code generates (`make models-table` rewrites them)."""

import re
from pathlib import Path

import pytest

from classicnets.tools.readme_tables import render_blocks

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_generated_blocks_are_current():
    text = README.read_text()
    for block in ("models", "benchmarks", "demo", "vs-d2l"):  # numbers in prose come from the records too
        assert f"<!-- BEGIN {block} -->" in text, block
    assert render_blocks(text) == text, "README tables are stale: run `make models-table`"


def test_docs_generated_blocks_are_current():
    performance = README.parent / "docs" / "performance.md"
    text = performance.read_text()
    assert "<!-- BEGIN revisions -->" in text
    assert render_blocks(text) == text, "docs/performance.md is stale: run `make models-table`"


def test_readme_commands_are_makefile_targets():
    """Each `make TARGET` the README tells a reader to type is a Makefile target, the two commands first."""
    text = README.read_text()
    named = re.findall(r"^make ([\w-]+)", text, flags=re.MULTILINE)
    targets = set(re.findall(r"^([\w-]+):", (README.parent / "Makefile").read_text(), flags=re.MULTILINE))
    assert named[:2] == ["demo", "test"]
    named += re.findall(r"`make ([\w-]+)`", text)  # the targets named in prose too
    assert {"bench", "pictures"} <= set(named)
    assert set(named) <= targets, f"README names make targets the Makefile lacks: {set(named) - targets}"


# ------------------------------------------------------------------------------------------------
# The README's commands, typed in order


def readme_commands() -> list[tuple[list[str], bool]]:
    """Every `classicnets ...` line of the README's shell blocks, in order, with whether it is skipped here:
    GPU-sized (a CPU would take hours) or run on the reader's own files (its comment says which)."""
    import re
    import shlex

    commands = []
    for block in re.findall(r"```sh\n(.*?)```", README.read_text(), flags=re.DOTALL):
        for line in block.replace("\\\n", " ").splitlines():  # a continued line is one command
            command, _, comment = line.partition("#")
            if command.strip().startswith("classicnets "):
                skipped = "GPU-sized" in comment or "your files" in comment
                commands.append((shlex.split(command)[1:], skipped))
    return commands


# What makes each command small enough for a test: the same command on less data.
SHRINK = {"train": ["--subset", "2048", "--epochs", "1"], "eval": ["--limit", "500"],
          "show neighbours": ["--limit", "2000"], "reproduce": ["--scale", "smoke"]}


@pytest.mark.slow
def test_the_readme_commands_work_in_order_in_a_fresh_folder(tmp_path, monkeypatch, fashion_mnist_dir,
                                                             capsys):
    from classicnets.cli import main

    commands = readme_commands()
    assert sum(not gpu for _, gpu in commands) >= 8 and any(gpu for _, gpu in commands)
    assert any(args[:2] == ["train", "--resume"] for args, _ in commands)
    (tmp_path / "docs").symlink_to(README.parent / "docs")  # the README's own files, as in a clone
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("COLUMNS", "80")
    for args, gpu_sized in commands:
        if gpu_sized:
            continue
        shrink = SHRINK.get(" ".join(args[:2]), SHRINK.get(args[0], []))
        shrink = [] if "--resume" in args else shrink  # a resumed run keeps its settings
        code = main([*args, *shrink])
        captured = capsys.readouterr()
        assert code == 0, f"`classicnets {' '.join(args)}` failed: {captured.err}"
        wide = [line for line in captured.out.splitlines() if len(line) > 80]
        assert not wide, f"`classicnets {' '.join(args)}` printed lines wider than 80 columns: {wide}"
        if args[0] == "train" and "--resume" not in args:
            assert (tmp_path / "runs" / "quick" / "config.json").is_file()  # where the next lines look
        if args[0] == "eval":
            assert "warning" not in captured.err  # the README's examples are ones TTA does not hurt
        if args[0] == "predict":
            assert "brighter" not in captured.out  # --invert made the photo-like image look like the data


def test_every_readme_command_that_needs_a_gpu_says_so():
    for args, gpu_sized in readme_commands():
        recipe = args[args.index("--recipe") + 1] if "--recipe" in args else None
        if recipe in ("d2l", "fast", "paper") or "--nproc" in args:
            assert gpu_sized, f"`classicnets {' '.join(args)}` takes hours on a CPU: mark it GPU-sized"


def test_every_test_docs_reliability_names_exists():
    """docs/reliability.md says which test guards each guarantee: each must exist, or the page lies."""
    import re

    page = (README.parent / "docs" / "reliability.md").read_text()
    cited = re.findall(r"`(tests/test_\w+\.py)::(test_\w+)", page)
    assert len(cited) >= 30
    missing = [f"{path}::{name}" for path, name in cited
               if not re.search(rf"^def {name}\(", (README.parent / path).read_text(), flags=re.M)]
    assert not missing, f"docs/reliability.md cites tests that do not exist: {missing}"
