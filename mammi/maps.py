"""A neuron's spatial map, from the maps models/layers.py's read_maps returns (neurons on dim 1):
- which maps a layer has (layer_kind) and all its neurons' maps on a batch (batch_maps): a spatial
  module's channels; penultimate, the last spatial block's channels after the ReLU the head pools
  them through; fc, the class activation map (the head's weights of a class times those channels, plus
  its bias: its mean is the logit); transformer tokens, each neuron's value on the patch grid;
- step 6's maps: a map zeroed below a percentile and resized to the crop, the Taylor-weighted sum of
  several, and a map drawn over an image as a colour tint.
Pure functions of tensors and a model: no file is read.
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from core.errors import PipelineError
from models.layers import map_source, read_maps, token_layout
from models.target import head_name

# Overlay colours of the 1st, 2nd, ... top neuron; red is kept for the overall map.
NEURON_COLOURS = [(0, 229, 255), (118, 255, 3), (255, 234, 0), (213, 0, 249), (41, 121, 255), (255, 145, 0)]
OVERALL_COLOUR = (255, 0, 0)


# ---- a layer's maps

def layer_maps(model: nn.Module, layer: str, maps: torch.Tensor) -> torch.Tensor:
    """From map_source's maps [B, K, h, w], the layer's, whose spatial means are step 2's activations:
    `penultimate`, what the head pools (DenseNet's features after its last ReLU; ResNet's layer4 ends in
    one); `fc`, the class activation map (class_activation_maps of the head); any other layer as is."""
    if layer not in ("fc", "penultimate"):
        return maps
    maps = F.relu(maps)
    if layer == "fc":
        head = model.get_submodule(head_name(model))
        with torch.no_grad():
            maps = class_activation_maps(head.weight, head.bias, maps)
    return maps


def class_activation_maps(weight: torch.Tensor, bias: torch.Tensor, maps: torch.Tensor) -> torch.Tensor:
    """The head applied at each position: CAM[b, c] = sum_k weight[c, k] maps[b, k] + bias[c], [B, C, h, w]."""
    return torch.einsum("ck,bkhw->bchw", weight.float(), maps) + bias.float()[None, :, None, None]


def token_grid(model: nn.Module, n_tokens: int) -> tuple[int, int] | None:
    """How many prefix tokens lead a sequence of n_tokens and the square side of the patch grid after
    them, as reduce_output reads tokens (a sequence of patches alone has no prefix); None when not square."""
    prefix, patches = token_layout(model)
    if patches is not None and n_tokens == patches:
        prefix = 0
    side = math.isqrt(n_tokens - prefix)
    return (prefix, side) if side * side == n_tokens - prefix and side > 0 else None


def tokens_on_grid(maps: torch.Tensor, prefix: int, side: int) -> torch.Tensor:
    """Tokens [B, D, T] (read_maps' layout) as maps [B, D, side, side]: the patch tokens after the prefix."""
    return maps[:, :, prefix:].reshape(maps.shape[0], maps.shape[1], side, side)


def module_maps(model: nn.Module, name: str, x: torch.Tensor, spatial: bool = True) -> torch.Tensor:
    """The output of module `name` for a batch, as read_maps reads it (neurons on dim 1); spatial: refused
    unless it is maps [B, K, h, w] (dissection and the fc and penultimate maps need them)."""
    with torch.inference_mode(), read_maps(model, name) as rec:
        model(x)
    maps = rec["maps"]
    if spatial and maps.dim() != 4:
        raise PipelineError(f"{name} has no spatial maps ({tuple(_as_output(maps).shape)}); dissection needs a "
                            f"convolutional layer, fc or penultimate")
    return maps


def _as_output(maps: torch.Tensor) -> torch.Tensor:
    """read_maps' tokens [B, D, T] back in the layer's own layout [B, T, D], for messages."""
    return maps.movedim(1, -1) if maps.dim() == 3 else maps


def layer_kind(model: nn.Module, layer: str, x: torch.Tensor) -> tuple[str, str]:
    """The module to read for a layer's maps and the kind of map (fc, penultimate, spatial or tokens),
    from one forward pass on x; refused, with the reason, for a layer with no spatial extent."""
    if layer in ("fc", "penultimate"):
        module = map_source(model, layer)
        width, channels = model.get_submodule(head_name(model)).weight.shape[1], module_maps(model, module, x).shape[1]
        if width != channels:  # a head of several layers (MobileNet's): the block is not what it pools
            raise PipelineError(f"--layer {layer}: the head reads {width} values, not the {channels} channels of "
                                f"`{module}`; fc and penultimate maps are drawn where the head weighs that block's "
                                f"pooled channels directly (DenseNet, ResNet)")
        return module, layer
    out = module_maps(model, layer, x, spatial=False)
    if out.dim() == 4:
        return layer, "spatial"
    if out.dim() == 3 and token_grid(model, out.shape[2]) is not None:
        return layer, "tokens"
    raise PipelineError(f"--layer {layer}: its output {list(_as_output(out).shape)} has no spatial extent (no map per "
                        f"image to draw); maps are drawn for spatial layers, tokens on a square grid, fc and "
                        f"penultimate")


def batch_maps(model: nn.Module, layer: str, module: str, kind: str, x: torch.Tensor) -> torch.Tensor:
    """The maps [B, K, h, w] of all the layer's K neurons on a batch (layer_kind's module and kind)."""
    maps = module_maps(model, module, x, spatial=kind in ("fc", "penultimate"))
    if kind in ("fc", "penultimate"):
        return layer_maps(model, layer, maps)
    if kind == "spatial":
        return maps
    return tokens_on_grid(maps, *token_grid(model, maps.shape[2]))


# ---- step 6's maps

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


def overlay(image: np.ndarray, heat: np.ndarray, colour, max_alpha: float = 0.7) -> np.ndarray:
    """uint8 RGB: the image tinted by `colour` with opacity rising linearly with the map's positive
    values (0 at zero, max_alpha at the map's maximum). Pixels where the map is zero are untouched."""
    pos = np.clip(heat, 0, None)
    a = (max_alpha * pos / pos.max() if pos.max() > 0 else np.zeros_like(pos))[..., None]
    out = image.astype(np.float64) * (1 - a) + np.asarray(colour, dtype=np.float64) * a
    return np.round(out).astype(np.uint8)
