"""The model zoo as rows: what `classicnets models` prints and the README's model table is generated from."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.overrides import TorchFunctionMode

from .registry import create_model, list_models, model_defaults, model_info


@dataclass(frozen=True)
class ZooRow:
    name: str
    parameters: int
    default_input: str
    num_classes: int
    year: int
    paper: str


def zoo_rows(pattern: str = "*") -> list[ZooRow]:
    return [_row(name) for name in list_models(pattern)]


def _row(name: str) -> ZooRow:
    info = model_info(name)
    # Built on the meta device: shapes without memory or init, so the whole zoo takes a second.
    with torch.device("meta"), _SkipFillsOnMeta():
        model = create_model(name)
    parameters = sum(p.numel() for p in model.parameters())
    classes = model_defaults(name)["num_classes"]
    return ZooRow(name, parameters, "x".join(map(str, info.default_input)), classes, info.year, info.paper)


class _SkipFillsOnMeta(TorchFunctionMode):
    """Weight init on meta tensors does nothing, yet its first call imports torch's decompositions (about a
    second, most of `classicnets models`); the counts need shapes only, so the fills are skipped."""

    FILLS = frozenset({"normal_", "uniform_", "trunc_normal_", "xavier_uniform_", "xavier_normal_",
                       "kaiming_uniform_", "kaiming_normal_", "constant_", "zeros_", "ones_", "fill_",
                       "zero_", "orthogonal_"})

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        target = args[0] if args else kwargs.get("tensor")  # nn.init passes it by name
        if getattr(func, "__name__", "") in self.FILLS and getattr(target, "is_meta", False):
            return target
        return func(*args, **kwargs)


def zoo_table_markdown(rows: list[ZooRow]) -> str:
    lines = ["| model | parameters | default input | classes | year | paper |",
             "|---|---:|---:|---:|---:|---|"]
    lines += [
        f"| `{r.name}` | {r.parameters:,} | {r.default_input} | {r.num_classes} | {r.year} | {r.paper} |"
        for r in rows
    ]
    return "\n".join(lines)
