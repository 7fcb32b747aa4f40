"""Grad-CAM (Selvaraju et al. 2017): where in the image a layer's maps carry the evidence for a class.

The class score's gradient, averaged over each map of the layer, weighs that map; the weighted sum through a
ReLU, upsampled to the input, is the class activation map. Captum's ``LayerGradCam`` computes it (an optional
dependency: ``pip install 'classicnets[show]'``); pytorch-grad-cam would need torchvision.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from ..errors import MissingDependencyError
from ..inference.predict import source_name
from .common import (
    Picture,
    class_index,
    class_name,
    image_stem,
    last_conv_output,
    model_input,
    new_figure,
    output_paths,
    pick_layers,
    run_recording,
    show_image,
    subject_of,
    viewable,
    without_ticks,
    write_picture,
)


def _captum():
    try:
        from captum.attr import LayerAttribution, LayerGradCam
    except ImportError:
        raise MissingDependencyError("`show cam` computes Grad-CAM with Captum, which is not installed; "
                                     "install it with: pip install 'classicnets[show]'") from None
    return LayerGradCam, LayerAttribution


def grad_cam(model: nn.Module, x: torch.Tensor, target: int, layer: str | None = None
             ) -> tuple[torch.Tensor, torch.Tensor, str]:
    """The Grad-CAM of class ``target`` for input ``x`` (1, C, H, W) at ``layer`` (default: the last conv
    block's output before its pooling): the map at the layer's resolution, the map upsampled (bilinear)
    to H x W, and the layer's name."""
    LayerGradCam, LayerAttribution = _captum()
    calls = run_recording(model, x)
    chosen = pick_layers(calls, [layer])[0] if layer else last_conv_output(calls)
    x = x.detach().clone().requires_grad_(True)
    with torch.enable_grad():
        attribution = LayerGradCam(model, chosen.module).attribute(x, target=target, relu_attributions=True)
    attribution = attribution.detach().float()
    upsampled = LayerAttribution.interpolate(attribution, tuple(x.shape[-2:]), interpolate_mode="bilinear")
    return attribution[0, 0], upsampled[0, 0].clamp(min=0), chosen.name


def cam(run: str | Path | nn.Module | Any, image: str | Path | Any, out: str | Path | None = None, *,
        target: int | str | None = None, layer: str | None = None, invert: bool = False) -> Picture:
    """Draw the Grad-CAM of ``image`` for class ``target`` (a name or index; default: the predicted class).

    ``layer`` is a module name (default: the last conv block's output before its pooling). Writes
    ``cam-IMAGE.png`` (input, map, overlay) and ``.json`` (class, probabilities, the map at the layer's
    resolution).
    """
    subject = subject_of(run)
    model = subject.model
    x = model_input(subject, image, invert)
    with torch.no_grad():
        probabilities = model(x).float().softmax(dim=1)[0]
    predicted = int(probabilities.argmax())
    chosen = predicted if target is None else class_index(subject, target, len(probabilities))
    coarse, upsampled, layer_name = grad_cam(model, x, chosen, layer)
    top = probabilities.topk(min(5, len(probabilities)))
    data = {
        "kind": "cam", "model": subject.name, "checkpoint": subject.source, "image": source_name(image),
        "class": class_name(subject, chosen), "class_index": chosen,
        "probability": float(probabilities[chosen]),
        "predicted": class_name(subject, predicted), "predicted_probability": float(probabilities[predicted]),
        "top": [{"class": class_name(subject, i), "probability": p}
                for i, p in zip(top.indices.tolist(), top.values.tolist(), strict=True)],
        "layer": layer_name, "layer_map_shape": list(coarse.shape), "cam_max": float(coarse.max()),
        "cam": coarse.tolist(),
        "method": "Grad-CAM (Captum LayerGradCam, ReLU), upsampled bilinearly to the input",
    }
    png, json_path = output_paths(subject, out, f"cam-{image_stem(image)}.png")
    fig = _draw(viewable(x[0], subject), upsampled.numpy(), data)
    return write_picture(fig, png, json_path, data, {"cam": coarse.numpy(), "upsampled": upsampled.numpy()})


def _draw(shown: np.ndarray, heat: np.ndarray, data: dict[str, Any]):
    fig = new_figure(11, 4)
    axes = fig.subplots(1, 3)
    show_image(axes[0], shown)
    axes[0].set_title(f"input as the model sees it\npredicted {data['predicted']} "
                      f"({data['predicted_probability']:.0%})", fontsize=9)
    peak = heat.max() if heat.max() > 0 else 1.0
    image = axes[1].imshow(heat / peak, cmap="jet", vmin=0, vmax=1)
    fig.colorbar(image, ax=axes[1], fraction=0.046, pad=0.02, label="share of the map's peak")
    h, w = data["layer_map_shape"]
    axes[1].set_title(f"Grad-CAM at {data['layer']} ({h} x {w})", fontsize=9)
    show_image(axes[2], shown)
    axes[2].imshow(heat / peak, cmap="jet", alpha=0.45, vmin=0, vmax=1)
    axes[2].set_title("overlay", fontsize=9)
    without_ticks(axes)
    fig.suptitle(f"{data['model']}: where the evidence for '{data['class']}' "
                 f"(p = {data['probability']:.2f}) lies", fontsize=10)
    return fig
