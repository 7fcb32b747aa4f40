"""Test images beside the training images nearest to them in the last hidden layer: the paper's Fig. 4.

Krizhevsky et al. (2012, section 6.1, Fig. 4, right) show five test images, each with the six training images
whose feature vectors at the last 4096-d hidden layer (fc7) lie closest in Euclidean distance: neighbours
that share the class but not the pixels. Here the feature vector is the input of the net's last Linear layer
(fc7's output in AlexNet and VGG, the pooled features in ResNet and GoogLeNet) or, for a net without one
(NiN), the feature maps averaged over their positions.

The search runs in batches on the device and keeps a running top-k: each training batch's distances to the
queries are merged with the best k so far, so the training features are never all held at once.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from ..errors import ConfigError
from .common import (
    Picture,
    class_name,
    new_figure,
    output_paths,
    show_image,
    subject_of,
    trunk,
    viewable,
    without_ticks,
    write_picture,
)


def embedding(model: nn.Module) -> tuple[Callable[[torch.Tensor], torch.Tensor], list[str]]:
    """A function images -> (N, D) last-hidden-layer features, and which layer gives them (filled in on the
    first call: ``["classifier.fc8 input"]``)."""
    linears = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    described: list[str] = []

    def embed(x: torch.Tensor) -> torch.Tensor:
        if not linears:
            forward = trunk(model)
            if forward is None:
                raise ConfigError(f"{type(model).__name__} has neither a Linear layer nor forward_features; "
                                  "there is no hidden layer to compare images in")
            if not described:
                described.append("forward_features, averaged over positions")
            maps = forward(x)
            return maps.float().mean(dim=(2, 3)) if maps.dim() == 4 else maps.float().flatten(1)
        captured: list[tuple[str, torch.Tensor]] = []
        handles = [m.register_forward_pre_hook(lambda _m, inputs, n=n: captured.append((n, inputs[0])))
                   for n, m in linears]
        try:
            model(x)
        finally:
            for handle in handles:
                handle.remove()
        name, vector = captured[-1]  # the last Linear called is the classifier; its input, the last hidden
        if not described:
            described.append(f"input of {name} ({vector.shape[1]}-d)")
        return vector.float().flatten(1)

    return embed, described


def nearest(embed: Callable[[torch.Tensor], torch.Tensor], queries: torch.Tensor,
            batches: Iterable[tuple[torch.Tensor, torch.Tensor]], k: int
            ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The ``k`` training images nearest to each query in ``embed``'s space, by Euclidean distance.

    ``batches`` yields (images, labels) of the training set in order; the result is, per query, the
    distances (ascending), training-set indices, labels and images of its neighbours. One batch of training
    features exists at a time; the merge is a ``topk`` on the device (no host sync per batch).
    """
    query_features = embed(queries)
    q = len(queries)
    best_d = best_i = best_x = best_y = None
    offset = 0
    for x, y in batches:
        features = embed(x)
        distances = torch.cdist(query_features, features, compute_mode="donot_use_mm_for_euclid_dist")
        indices = torch.arange(offset, offset + len(x), device=distances.device).expand(q, -1)
        if best_d is not None:
            distances = torch.cat([best_d, distances], dim=1)
            indices = torch.cat([best_i, indices], dim=1)
        kept = min(k, distances.shape[1])
        best_d, position = distances.topk(kept, dim=1, largest=False, sorted=True)
        best_i = indices.gather(1, position)
        best_x, best_y = _merge(best_x, best_y, x, y, position)
        offset += len(x)
    if best_d is None:
        raise ConfigError("the training set is empty; there are no neighbours to find")
    return best_d, best_i, best_y, best_x


def _merge(best_x, best_y, x, y, position):
    """The images and labels at the kept positions: position p < k_before is the p-th best so far, the rest
    index the new batch. Gathers k images per query, never a copy of the batch per query."""
    before = 0 if best_x is None else best_x.shape[1]
    from_batch = (position - before).clamp(min=0)
    new_x, new_y = x[from_batch], y[from_batch]
    if best_x is None:
        return new_x, new_y
    old = position.clamp(max=before - 1)
    old_x = best_x.gather(1, old.view(*old.shape, *[1] * (x.dim() - 1)).expand(-1, -1, *x.shape[1:]))
    keep_old = position < before
    mask = keep_old.view(*keep_old.shape, *[1] * (x.dim() - 1))
    return torch.where(mask, old_x, new_x), torch.where(keep_old, best_y.gather(1, old), new_y)


def neighbours(run: str | Path | Any, out: str | Path | None = None, *, k: int = 5, queries: int = 6,
               dataset: str | None = None, data_dir: str | Path | None = None, limit: int | None = None,
               batch_size: int = 256, device: str | torch.device = "auto", download: bool = True) -> Picture:
    """Draw ``queries`` test images (one per class, in class order), each beside its ``k`` nearest training
    images in the last hidden layer. ``limit`` searches only the first N training images.

    Writes ``neighbours.png`` and ``neighbours.json`` (per query: its test index, class, prediction, and
    each neighbour's training index, class and distance).
    """
    from ..inference.evaluate import eval_batches
    from ..runtime import resolve_device

    for name, value in (("k", k), ("queries", queries), ("batch_size", batch_size), ("limit", limit)):
        if value is not None and value < 1:
            raise ConfigError(f"{name} must be >= 1; got {value}")
    subject = subject_of(run)
    if subject.loaded is None:
        raise ConfigError("neighbours needs a run directory or checkpoint: it reads the run's data set")
    loaded = subject.loaded
    dataset = dataset or loaded.metadata.get("dataset")
    if not dataset:
        raise ConfigError(f"{loaded.source} does not name its dataset; pass dataset=")
    run_device = resolve_device(device)
    model = subject.model.to(run_device)

    def split(name: str, limit=None):
        return eval_batches(loaded, dataset, name, data_dir, download, limit, tta="none",
                             batch_size=batch_size, device=run_device, channels_last=False)

    query_x, query_y, query_index = _pick_queries(split("test"), queries)
    embed, layer = embedding(model)
    with torch.inference_mode():
        predicted = model(query_x).argmax(dim=1)
        distances, indices, labels, images = nearest(embed, query_x, split("train", limit), k)
    rows = []
    for i in range(len(query_x)):
        rows.append({
            "test_index": query_index[i], "class": class_name(subject, int(query_y[i])),
            "predicted": class_name(subject, int(predicted[i])),
            "neighbours": [{"train_index": int(t), "class": class_name(subject, int(c)), "distance": float(d)}
                           for t, c, d in zip(indices[i].tolist(), labels[i].tolist(), distances[i].tolist(),
                                              strict=True)],
        })
    same = np.mean([n["class"] == r["class"] for r in rows for n in r["neighbours"]])
    data = {"kind": "neighbours", "model": subject.name, "checkpoint": subject.source, "dataset": dataset,
            "feature_layer": layer[0], "distance": "Euclidean", "k": k,
            "training_images_searched": None if limit is None else limit,
            "share_of_neighbours_in_the_query_class": float(same), "queries": rows}
    png, json_path = output_paths(subject, out, "neighbours.png")
    fig = _draw(subject, query_x.cpu(), images.cpu(), data)
    return write_picture(fig, png, json_path, data, {"distances": distances.cpu().numpy(),
                                                      "indices": indices.cpu().numpy()})


def _pick_queries(batches, count: int) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
    """The first test image of each class, in class order, until ``count`` (then the next images)."""
    seen: dict[int, tuple[torch.Tensor, int]] = {}
    spare: list[tuple[torch.Tensor, int, int]] = []
    offset = 0
    for x, y in batches:
        for i, label in enumerate(y.tolist()):
            if label not in seen:
                seen[label] = (x[i], offset + i)
            elif len(spare) < count:
                spare.append((x[i], label, offset + i))
        offset += len(x)
        if len(seen) >= count or offset >= 5000:
            break
    chosen = [(image, label, index) for label, (image, index) in sorted(seen.items())][:count]
    chosen += spare[:count - len(chosen)]
    if not chosen:
        raise ConfigError("the test split is empty; there are no images to find neighbours for")
    return (torch.stack([c[0] for c in chosen]), torch.tensor([c[1] for c in chosen]),
            [c[2] for c in chosen])


def _draw(subject, queries: torch.Tensor, images: torch.Tensor, data: dict[str, Any]):
    rows, k = images.shape[:2]
    fig = new_figure(1.35 * (k + 1) + 0.4, 1.55 * rows + 0.6)
    axes = np.atleast_2d(fig.subplots(rows, k + 1))
    for r, row in enumerate(data["queries"]):
        show_image(axes[r, 0], viewable(queries[r], subject))
        axes[r, 0].set_title(f"test: {row['class']}\n(predicted {row['predicted']})", fontsize=7,
                             color="black")
        for j, neighbour in enumerate(row["neighbours"]):
            show_image(axes[r, j + 1], viewable(images[r, j], subject))
            colour = "tab:green" if neighbour["class"] == row["class"] else "tab:red"
            axes[r, j + 1].set_title(f"{neighbour['class']}\nd = {neighbour['distance']:.3g}", fontsize=7,
                                     color=colour)
        without_ticks(axes[r, :])
        for spine in axes[r, 0].spines.values():
            spine.set_linewidth(2)
    share = data["share_of_neighbours_in_the_query_class"]
    fig.suptitle(f"{data['model']}: each test image (left) and its {k} nearest training images by Euclidean "
                 f"distance in the last hidden layer\n({data['feature_layer']}; green: same class, "
                 f"{share:.0%} of the neighbours)", fontsize=8)
    return fig


