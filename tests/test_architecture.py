"""The import rules of docs/architecture.md, checked by reading every module's imports with ``ast``.

Imports inside functions count too: a lazy import is still a dependency.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "classicnets"


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, source: str | None = None) -> set[str]:
    """Every module ``path`` (or ``source`` as if it were that file) imports, relative imports resolved."""
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text() if source is None else source, str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package.split(".")
            if node.level:
                base = base[: len(base) - node.level + 1]
                module = ".".join([*base, node.module] if node.module else base)
            else:
                module = node.module
            found.add(module)
            found.update(f"{module}.{alias.name}" for alias in node.names)  # `from . import x` names a module
    return found


MODULES = {_module_name(p): _imports(p) for p in sorted(PACKAGE.rglob("*.py"))}


def _under(module: str, *prefixes: str) -> bool:
    return any(module == f"classicnets.{p}" or module.startswith(f"classicnets.{p}.") for p in prefixes)


def _violations(importers, imported) -> list[str]:
    return sorted(f"{m} imports {i}" for m, found in MODULES.items() if importers(m)
                  for i in found if imported(i))


def test_the_package_was_read():
    assert {"classicnets.registry", "classicnets.models.alexnet", "classicnets.training.loop"} <= set(MODULES)


def test_checkpoint_evaluation_inspect_data_and_inference_never_import_training():
    bad = _violations(lambda m: _under(m, "checkpoint", "evaluation", "inspect", "data", "inference"),
                      lambda i: _under(i, "training"))
    assert not bad, bad


def test_errors_registry_and_runtime_import_only_torch_numpy_and_the_standard_library():
    allowed = set(sys.stdlib_module_names) | {"torch", "numpy", "__future__"}

    def outside(module: str) -> bool:
        if module.startswith("classicnets"):
            return not _under(module, "errors")  # the error types are the one thing below them
        return module.partition(".")[0] not in allowed

    bad = _violations(lambda m: _under(m, "errors", "registry", "runtime"), outside)
    assert not bad, bad


def test_training_never_imports_models():
    bad = _violations(lambda m: _under(m, "training"), lambda i: _under(i, "models"))
    assert not bad, bad


def test_nothing_imports_the_cli():
    # tools/ are maintainer scripts (`make pictures`) that run the public commands as a user types them
    bad = _violations(lambda m: not _under(m, "cli", "tools") and m != "classicnets.__main__",
                      lambda i: _under(i, "cli"))
    assert not bad, bad


@pytest.mark.parametrize("source", ["from ..training import loop", "import classicnets.training.config"])
def test_the_checker_sees_relative_and_absolute_imports(source):
    imported = _imports(PACKAGE / "data" / "loaders.py", source)  # as if written in classicnets.data.loaders
    assert any(_under(i, "training") for i in imported)
