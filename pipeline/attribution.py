"""Which penultimate neurons drive a prediction, where they look, and whether that is inside the box.

Used by visualization.py (step 6) and checked by tests/test_visualization.py:
- Taylor scores: activation x d(class logit)/d(activation) at the pooled penultimate layer, for every
  class at once, by plain autograd through the head; hooks live only inside a `with` block;
- spatial maps: the channels of DenseNet's `features` output (after the last batch norm, before the
  final ReLU) or ResNet's `layer4` output, zeroed below a percentile and resized to the crop;
- the pointing game and the share of map mass inside the ground-truth boxes;
- colour overlays of a map on the image, as plain RGB arrays.
"""
from __future__ import annotations

from contextlib import contextmanager

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from core.errors import PipelineError
from models.layers import channels_last_modules, tap
from models.target import head_name

# Overlay colours of the 1st, 2nd, ... top neuron; red is kept for the overall map.
NEURON_COLOURS = [(0, 229, 255), (118, 255, 3), (255, 234, 0), (213, 0, 249), (41, 121, 255), (255, 145, 0)]
OVERALL_COLOUR = (255, 0, 0)


def map_module(model: nn.Module) -> str:
    """DenseNet: `features` (its last module is norm5, so the output is pre-ReLU); ResNet: `layer4`."""
    names = dict(model.named_children())
    found = next((n for n in ("features", "layer4") if n in names), None)
    if found is None:
        raise PipelineError("heatmaps are taken at the output of a `features` (DenseNet) or `layer4` (ResNet) "
                            "module, and this model has neither; they are not available for this model family")
    return channels_first(model, found)


def channels_first(model: nn.Module, name: str) -> str:
    """name, if its maps are [B, C, H, W]; torchvision's Swin, say, gives [B, H, W, C] (refused)."""
    if name in channels_last_modules(model):
        raise PipelineError(f"the maps of `{name}` are channels-last [B, H, W, C] in this model, and heatmaps and "
                            f"dissection read [B, C, H, W]; they are not available for this model family")
    return name


@contextmanager
def record_output(module: nn.Module):
    """The module's output during forward passes inside the block. Cloned, because DenseNet applies
    its final ReLU in place on exactly this tensor."""
    store: dict[str, torch.Tensor] = {}
    hook = module.register_forward_hook(lambda m, inp, out: store.__setitem__("out", out.detach().clone()))
    try:
        yield store
    finally:
        hook.remove()


def taylor_scores(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """For a batch x: logits [B, C], Taylor scores [B, C, K] of the K pooled penultimate neurons for
    each of the C classes, and the spatial maps [B, K, h, w]. The backbone runs once without a graph;
    the gradient of each class's logit is taken through the head from the pooled activations."""
    modules = dict(model.named_modules())
    with torch.no_grad(), tap(model, "penultimate") as pen, record_output(modules[map_module(model)]) as rec:
        model(x)
    pooled = pen["a"].detach().float().requires_grad_()
    with torch.enable_grad():
        logits = modules[head_name(model)](pooled)
        grads = [torch.autograd.grad(logits[:, c].sum(), pooled, retain_graph=c < logits.shape[1] - 1)[0]
                 for c in range(logits.shape[1])]
    taylor = pooled.detach()[:, None, :] * torch.stack(grads, 1)
    return logits.detach(), taylor, rec["out"].float()


def top_neurons(scores: torch.Tensor, n: int) -> list[int]:
    """The n neurons with the largest Taylor score (ties: lower id first)."""
    return torch.sort(scores, descending=True, stable=True).indices[:n].tolist()


def threshold_map(m: torch.Tensor, percentile: float) -> torch.Tensor:
    """The map with every value at or below its percentile set to zero."""
    cut = np.percentile(m.numpy(), percentile)
    return m * (m > cut)


def resize_map(m: torch.Tensor, size: int) -> np.ndarray:
    """Bilinear, pixel-centre aligned (as cv2.resize), to size x size."""
    return F.interpolate(m[None, None].float(), size=(size, size), mode="bilinear", align_corners=False)[0, 0].numpy()


def neuron_map(m: torch.Tensor, percentile: float, size: int) -> np.ndarray:
    return resize_map(threshold_map(m, percentile), size)


def overall_map(maps: torch.Tensor, scores: torch.Tensor, percentile: float, size: int) -> np.ndarray:
    """Sum of the given neurons' maps [n, h, w], each zeroed below its percentile, weighted by
    their Taylor scores normalised to sum to one in absolute value."""
    w = scores / scores.abs().sum().clamp_min(1e-12)
    return resize_map(sum(wi * threshold_map(mi, percentile) for wi, mi in zip(w, maps)), size)


def box_mask(boxes: list[list[float]], size: int) -> np.ndarray:
    """Pixels of a size x size crop whose centre lies inside any of the boxes [x1, y1, x2, y2]."""
    c = np.arange(size) + 0.5
    mask = np.zeros((size, size), dtype=bool)
    for x1, y1, x2, y2 in boxes:
        mask |= ((c[:, None] >= y1) & (c[:, None] <= y2)) & ((c[None, :] >= x1) & (c[None, :] <= x2))
    return mask


def pointing(heat: np.ndarray, boxes: list[list[float]]) -> dict:
    """Pointing game on one map: is its peak inside a box? And the share of its positive mass inside
    the boxes. A map with no positive value points nowhere (a miss, mass share None)."""
    mask = box_mask(boxes, heat.shape[0])
    pos = np.clip(heat, 0, None)
    if pos.max() <= 0:
        return {"hit": False, "mass_inside": None, "peak": None}
    r, c = np.unravel_index(int(np.argmax(heat)), heat.shape)
    return {"hit": bool(mask[r, c]), "mass_inside": float(pos[mask].sum() / pos.sum()),
            "peak": [float(c + 0.5), float(r + 0.5)]}


def overlay(image: np.ndarray, heat: np.ndarray, colour, max_alpha: float = 0.7) -> np.ndarray:
    """uint8 RGB: the image tinted by `colour` with opacity rising linearly with the map's positive
    values (0 at zero, max_alpha at the map's maximum). Pixels where the map is zero are untouched."""
    pos = np.clip(heat, 0, None)
    a = (max_alpha * pos / pos.max() if pos.max() > 0 else np.zeros_like(pos))[..., None]
    out = image.astype(np.float64) * (1 - a) + np.asarray(colour, dtype=np.float64) * a
    return np.round(out).astype(np.uint8)
