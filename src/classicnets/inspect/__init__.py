"""The model inspector: shapes, parameters, MACs and FLOPs (forward and backward), activation memory and
training-memory estimates per layer, optionally measured on a device; rendered as a table, Markdown,
JSON or CSV.

    >>> import classicnets
    >>> model = classicnets.create_model("alexnet_d2l", num_classes=10, in_channels=1)
    >>> summary = classicnets.summarize(model, input_size=(1, 224, 224), batch_size=128)
    >>> summary.totals.flops, summary.totals.most_flops_layer
    (240165421056, 'features.conv2')
    >>> text = summary.render("markdown")  # or "table", "json", "csv"

It imports only torch and the standard library (rich, for the terminal table, is imported when rendering).
"""

from .costs import CONVENTION
from .render import render_comparison, render_summary
from .summary import LayerRow, Summary, Totals, summarize

__all__ = ["CONVENTION", "LayerRow", "Summary", "Totals", "render_comparison", "render_summary", "summarize"]
