"""Summaries as text: a terminal table (rich, imported only here and only when asked), Markdown, JSON, CSV.

JSON and CSV hold exact integers (counts, bytes); the table and Markdown round them for reading.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import fields

from .summary import LayerRow, Summary, as_plain

FORMATS = ("table", "markdown", "json", "csv")
_CSV_FIELDS = [f.name for f in fields(LayerRow)]


def render_summary(summary: Summary, fmt: str = "table", width: int | None = None) -> str:
    """One model's rows and totals as ``table``, ``markdown``, ``json`` or ``csv``."""
    _check_format(fmt)
    if fmt == "json":
        return json.dumps(summary_dict(summary), indent=2)
    if fmt == "csv":
        return _rows_csv(summary)
    if fmt == "markdown":
        return _summary_markdown(summary)
    return _summary_table(summary, width)


def render_comparison(summaries: list[Summary], fmt: str = "table", width: int | None = None) -> str:
    """Several models side by side: their totals, one column (table, Markdown) or record (JSON, CSV) each."""
    _check_format(fmt)
    if fmt == "json":
        return json.dumps([_header_dict(s) | {"totals": as_plain(s.totals)} for s in summaries], indent=2)
    if fmt == "csv":
        return _comparison_csv(summaries)
    header = ["", *(f"{s.model} {_input_text(s)}" for s in summaries)]
    compared = _COMPARED + (_COMPARED_MEASURED if any(s.measurement for s in summaries) else [])
    body = [[label, *(value(s) for s in summaries)] for label, value in compared]
    note = f"FLOPs = 2 x MACs; {summaries[0].convention.split('. ', 1)[0]}."
    if fmt == "markdown":
        return _markdown_table(header, body) + "\n\n" + note + "\n"
    import textwrap

    from ..text_tables import terminal_width

    width = width or terminal_width()
    table = _rich_text(header, body, title="model comparison", width=width, justify_first="left")
    return table + textwrap.fill(note, width=width) + "\n"


def summary_dict(summary: Summary) -> dict:
    result = _header_dict(summary) | {"convention": summary.convention}
    result["rows"] = [as_plain(row) | {"params": row.params} for row in summary.rows]
    result["totals"] = as_plain(summary.totals) | {"params": summary.totals.params}
    result["measurement"] = as_plain(summary.measurement) if summary.measurement is not None else None
    return result


def _header_dict(summary: Summary) -> dict:
    return {"model": summary.model, "input_size": list(summary.input_size), "batch_size": summary.batch_size,
            "dtype": summary.dtype, "training": summary.training, "depth": summary.depth}


def _check_format(fmt: str) -> None:
    if fmt not in FORMATS:
        from ..errors import ConfigError

        raise ConfigError(f"format must be one of {', '.join(FORMATS)}; got {fmt!r}")


# ------------------------------------------------------------------------------------------------
# Human-readable numbers


def count_text(n: float) -> str:
    """1234567 -> '1.23M' (K, M, G, T: powers of 1000)."""
    for unit, scale in (("T", 1e12), ("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.2f}{unit}"
    return f"{n:g}"


def bytes_text(n: float) -> str:
    """1048576 -> '1.00 MiB' (powers of 1024)."""
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if abs(n) >= scale:
            return f"{n / scale:.2f} {unit}"
    return f"{int(n)} B"


def _input_text(summary: Summary) -> str:
    return f"{summary.batch_size}x{'x'.join(map(str, summary.input_size))} {summary.dtype}"


def _shape_text(shape: list) -> str:
    if not shape:
        return "-"
    if all(isinstance(s, int) for s in shape):
        return "x".join(map(str, shape))
    return ", ".join(_shape_text(s) for s in shape)


def _ms_text(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


# ------------------------------------------------------------------------------------------------
# One model


def _row_cells(row: LayerRow, with_frozen: bool, measured: bool, totals=None) -> list[str]:
    label = "  " * row.depth + (row.name.rsplit(".", 1)[-1] if row.name else row.type)
    label += " (+)" if row.folded else ""
    if row.part_params is not None and totals is not None:
        # a part's own row: its whole subtree in [brackets] (its own work is nil: the rows below hold it)
        return _part_cells(row, label, with_frozen, measured, totals)
    cells = [label, row.type, _shape_text(row.output_shape), f"{row.params:,}"]
    cells += [f"{row.params_frozen:,}"] if with_frozen else []
    cells += [f"{row.params_share:.1%}", count_text(row.macs), count_text(row.flops),
              f"{row.flops_share:.1%}", count_text(row.backward_flops), count_text(row.other_ops),
              bytes_text(row.activation_bytes)]
    cells += [_ms_text(row.forward_ms), _ms_text(row.backward_ms)] if measured else []
    return cells


def _part_cells(row: LayerRow, label: str, with_frozen: bool, measured: bool, totals) -> list[str]:
    params_share = row.part_params / totals.params if totals.params else 0.0
    flops_share = row.part_flops / totals.flops if totals.flops else 0.0
    cells = [label, row.type, _shape_text(row.output_shape), f"[{row.part_params:,}]"]
    cells += [""] if with_frozen else []
    cells += [f"[{params_share:.1%}]", f"[{count_text(row.part_flops // 2)}]",
              f"[{count_text(row.part_flops)}]", f"[{flops_share:.1%}]", "", "",
              f"[{bytes_text(row.part_activation_bytes)}]"]
    return cells + (["", ""] if measured else [])


def _row_header(with_frozen: bool, measured: bool) -> list[str]:
    header = ["layer", "type", "output", "params"] + (["frozen"] if with_frozen else [])
    header += ["% params", "MACs", "FLOPs", "% FLOPs", "bwd FLOPs", "other ops", "saved act."]
    return header + (["fwd ms", "bwd ms"] if measured else [])


def _total_lines(summary: Summary) -> list[tuple[str, str]]:
    t = summary.totals
    step_flops = t.flops + t.backward_flops
    lines = [
        ("parameters", f"{t.params:,} ({t.params_trainable:,} trainable, {t.params_frozen:,} frozen), "
                       f"{bytes_text(t.param_bytes)}; buffers {bytes_text(t.buffer_bytes)}"),
        ("forward", f"{count_text(t.macs)} MACs = {count_text(t.flops)} FLOPs; "
                    f"other ops {count_text(t.other_ops)}"),
        ("backward", f"{count_text(t.backward_flops)} FLOPs (training step {count_text(step_flops)})"),
        ("activations kept for backward",
         f"{bytes_text(t.activation_bytes)} (input batch {bytes_text(t.input_bytes)})"),
        ("gradients", bytes_text(t.gradient_bytes)),
        ("optimizer state", _per_optimizer(t.optimizer_state_bytes)),
        ("peak training memory (estimate)", _per_optimizer(t.peak_train_bytes)),
        ("most parameters", _share_text(summary, t.most_params_layer, "params")),
        ("most compute", _share_text(summary, t.most_flops_layer, "flops")),
    ]
    return lines + _measurement_lines(summary)


def _per_optimizer(values: dict[str, int]) -> str:
    return ", ".join(f"{name} {bytes_text(n)}" for name, n in values.items())


def _share_text(summary: Summary, name: str, what: str) -> str:
    module = next((m for m in summary.modules if m.name == name), None)
    if module is None:
        return "-"
    if what == "params":
        n = module.params_trainable + module.params_frozen
        return f"{name} ({module.type}): {n:,} ({n / summary.totals.params:.1%})"
    share = module.flops / summary.totals.flops
    return f"{name} ({module.type}): {count_text(module.flops)} FLOPs ({share:.1%})"


def _measurement_lines(summary: Summary) -> list[tuple[str, str]]:
    m = summary.measurement
    if m is None:
        return []
    estimate = summary.totals.peak_train_bytes.get(m.optimizer)
    return [
        ("measured peak memory", f"{bytes_text(m.peak_bytes)} with {m.optimizer} on {m.device} "
                                 f"(estimate {bytes_text(estimate)}); {m.peak_method}"),
        ("measured step time", f"forward {m.forward_ms:.2f} ms, backward {m.backward_ms:.2f} ms "
                               f"(median of {m.repeats})"),
    ]


def _title(summary: Summary) -> str:
    mode = "training" if summary.training else "eval"
    depth = "every module" if summary.depth is None else f"depth {summary.depth}"
    return f"{summary.model}: input {_input_text(summary)}, {mode} mode, {depth}"


# Left out first to last when the terminal is narrow; the layer, its parameters and FLOPs always stay.
# Measured times (--measure) stay longest: they were asked for.
_DROP_ORDER = ["type", "other ops", "MACs", "bwd FLOPs", "frozen", "saved act.", "output", "% FLOPs",
               "% params", "bwd ms", "fwd ms"]


def _footnotes(summary: Summary, rows: list[LayerRow], markdown: bool = False) -> str:
    notes = []
    if any(r.folded for r in rows):
        notes.append("(+) holds its submodules.")
    if any(r.part_params is not None for r in rows):
        notes.append("[n]: the part's total, the sum of the rows under it.")
    return " ".join([*notes, summary.convention])


def _summary_table(summary: Summary, width: int | None) -> str:
    import textwrap

    from ..text_tables import fitted_table, terminal_width

    width = width or terminal_width()
    with_frozen, measured = summary.totals.params_frozen > 0, summary.measurement is not None
    layer_rows = summary.rows
    rows = [_row_cells(r, with_frozen, measured, summary.totals) for r in layer_rows]
    header = _row_header(with_frozen, measured)
    text = fitted_table(header, rows, width=width, title=_title(summary), drop_order=_DROP_ORDER,
                        right=header[3:])
    totals = fitted_table(["total", ""], [list(line) for line in _total_lines(summary)], width=width,
                          flexible={"": "wrap"})
    notes = textwrap.fill(_footnotes(summary, layer_rows), width=width)
    return f"{text}\n{totals}\n{notes}\n"


def _summary_markdown(summary: Summary) -> str:
    with_frozen, measured = summary.totals.params_frozen > 0, summary.measurement is not None
    layer_rows = summary.rows
    rows = [_row_cells(r, with_frozen, measured, summary.totals) for r in layer_rows]
    for cells, row in zip(rows, layer_rows, strict=True):
        cells[0] = f"`{row.name or row.type}`" + (" (+)" if row.folded else "")
    parts = [f"### {_title(summary)}", "", _markdown_table(_row_header(with_frozen, measured), rows), "",
             _markdown_table(["total", ""], [list(line) for line in _total_lines(summary)]), "",
             _footnotes(summary, layer_rows)]
    return "\n".join(parts) + "\n"


def _markdown_table(header: list[str], rows: list[list[str]]) -> str:
    def line(cells):
        return "| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |"

    return "\n".join([line(header), "|" + "|".join("---" for _ in header) + "|", *map(line, rows)])


def _rich_text(header: list[str], rows: list[list[str]], title: str | None, width: int | None,
               justify_first: str = "left", left_columns: int = 1) -> str:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title, title_justify="left")
    for i, column in enumerate(header):
        table.add_column(column, justify="left" if i < left_columns else "right", overflow="fold")
    for row in rows:
        table.add_row(*row)
    buffer = io.StringIO()
    Console(file=buffer, width=width or 200, force_terminal=False, color_system=None).print(table)
    return buffer.getvalue()


# ------------------------------------------------------------------------------------------------
# CSV


def _rows_csv(summary: Summary) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=[*_CSV_FIELDS, "params"], lineterminator="\n")
    writer.writeheader()
    for row in summary.rows:
        plain = as_plain(row) | {"params": row.params}
        plain["output_shape"] = _shape_text(row.output_shape)
        writer.writerow({k: "" if v is None else v for k, v in plain.items()})
    return buffer.getvalue()


def _comparison_csv(summaries: list[Summary]) -> str:
    records = [_flat_totals(s) for s in summaries]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(records[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(records)
    return buffer.getvalue()


def _flat_totals(summary: Summary) -> dict:
    record = _header_dict(summary) | {"input_size": "x".join(map(str, summary.input_size)),
                                      "params": summary.totals.params,
                                      "convention": "macs: multiply-accumulates; flops = 2 x macs"}
    for key, value in as_plain(summary.totals).items():
        if isinstance(value, dict):
            record |= {f"{key}_{sub}": v for sub, v in value.items()}
        else:
            record[key] = value
    return record


_COMPARED = [
    ("parameters", lambda s: f"{s.totals.params:,}"),
    ("parameter memory", lambda s: bytes_text(s.totals.param_bytes)),
    ("forward MACs", lambda s: count_text(s.totals.macs)),
    ("forward FLOPs", lambda s: count_text(s.totals.flops)),
    ("backward FLOPs", lambda s: count_text(s.totals.backward_flops)),
    ("other ops", lambda s: count_text(s.totals.other_ops)),
    ("activations kept", lambda s: bytes_text(s.totals.activation_bytes)),
    ("peak train memory, SGD momentum", lambda s: bytes_text(s.totals.peak_train_bytes["sgd_momentum"])),
    ("peak train memory, Adam", lambda s: bytes_text(s.totals.peak_train_bytes["adam"])),
    ("most parameters", lambda s: s.totals.most_params_layer or "-"),
    ("most compute", lambda s: s.totals.most_flops_layer or "-"),
]
_COMPARED_MEASURED = [
    ("measured peak", lambda s: bytes_text(s.measurement.peak_bytes) if s.measurement else "-"),
    ("measured fwd+bwd ms", lambda s: f"{s.measurement.forward_ms + s.measurement.backward_ms:.1f}"
                                      if s.measurement else "-"),
]
