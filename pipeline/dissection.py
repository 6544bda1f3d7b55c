"""Network Dissection's pass (docs/describers.md): each neuron's spatial maps over
the probing images whose findings have boxes or masks, and its IoU with each finding.

Step 2 keeps one number per neuron and image (the spatial mean), so the maps need a forward pass of
their own; it runs only over the images whose masks are known: those the box file annotates (NIH
bbox.csv, ChestX-Det, the phantom world's bbox.csv) and those whose labels say No Finding (nothing to
box, so their masks are empty). It keeps the low-resolution output of the last spatial block (N x K x
h x w: 44 MB for the demo's 1,200 images x 1,024 channels x 3 x 3), from which both the penultimate
maps and the fc class activation maps follow, so one pass serves both layers (compare_describers.py
caches it). Each neuron's T_k is its top quantile over all those maps; each map is then upsampled to
the probe crop, thresholded at T_k and counted against the finding masks drawn on the same crop
(Resize + CenterCrop, as visualization.py maps boxes).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw
from tqdm import tqdm

from dataset.boxes import scale_to, to_probe_crop
from mammi.describers import dissection_counts, iou, top_quantile
from models.target import head_name
from pipeline.attribution import box_mask, channels_first, map_module, record_output
from pipeline.forward import probe_loader
from core.errors import PipelineError


def map_source(model: torch.nn.Module, layer: str) -> str:
    """The module whose output holds a layer's maps: fc and penultimate both come from the last spatial
    block (DenseNet's features, ResNet's layer4), so one pass serves both."""
    name = map_module(model) if layer in ("fc", "penultimate") else layer
    if name not in dict(model.named_modules()) or not name:
        raise PipelineError(f"--layer {layer!r} is not a module of this model; try fc, penultimate or a block name")
    return channels_first(model, name)


def module_maps(model: torch.nn.Module, name: str, x: torch.Tensor) -> torch.Tensor:
    """The output [B, K, h, w] of module `name` for a batch."""
    with torch.inference_mode(), record_output(dict(model.named_modules())[name]) as rec:
        model(x)
    maps = rec["out"].float()
    if maps.dim() != 4:
        raise PipelineError(f"{name} has no spatial maps ({tuple(maps.shape)}); dissection needs a convolutional "
                            f"layer, fc or penultimate")
    return maps


def layer_maps(model: torch.nn.Module, layer: str, maps: torch.Tensor) -> torch.Tensor:
    """From map_source's output, the layer's maps, whose spatial means are step 2's activations:
    `penultimate`, what the head pools (DenseNet's features after its last ReLU; ResNet's layer4 ends in
    one); `fc`, the head applied at each position (the class activation map: its mean is the logit)."""
    if layer not in ("fc", "penultimate"):
        return maps
    maps = F.relu(maps)
    if layer == "fc":
        head = dict(model.named_modules())[head_name(model)]
        with torch.no_grad():
            maps = torch.einsum("ck,bkhw->bchw", head.weight.float(), maps) + head.bias.float()[None, :, None, None]
    return maps


def collect_maps(model: torch.nn.Module, name: str, paths: list[Path], resize: int, crop: int, batch_size: int,
                 num_workers: int, device: torch.device, **norm) -> tuple[torch.Tensor, torch.Tensor]:
    """One pass over the images: module `name`'s maps [N, K, h, w] and each image's size [N, 2]; norm:
    the model's input channels, mean and std (dataset.nih.model_input_args)."""
    loader = probe_loader(paths, resize, crop, batch_size, num_workers, device, sizes=True, **norm)
    maps, sizes = [], []
    for x, size in tqdm(loader, desc=f"maps of {name}", unit="batch"):
        maps.append(module_maps(model, name, x.to(device)).cpu())
        sizes.append(size)
    return torch.cat(maps), torch.cat(sizes)


def finding_masks(anns: list[dict], findings: list[str], size: int, out: torch.Tensor | None = None) -> torch.Tensor:
    """L_c [C, size, size] on the probe crop (into `out` when given, all False): each finding's boxes
    (pixel centres inside) or, where an annotation has one, its polygon filled. A finding not annotated
    on the image has an empty mask."""
    out = torch.zeros(len(findings), size, size, dtype=torch.bool) if out is None else out
    row = {f: j for j, f in enumerate(findings)}
    for a in anns:
        j = row[a["label"].lower()]
        if a["polygon"] and len(a["polygon"]) > 2:
            canvas = Image.new("L", (size, size), 0)
            ImageDraw.Draw(canvas).polygon([tuple(p) for p in a["polygon"]], fill=1)
            out[j] |= torch.from_numpy(np.asarray(canvas, dtype=bool))
        else:
            out[j] |= torch.from_numpy(box_mask([a["box"]], size))
    return out


def dissect(maps: torch.Tensor, sizes: torch.Tensor, anns: list[list[dict]], findings: list[str], resize: int,
           crop: int, quantile: float, batch_size: int) -> dict:
    """IoU [K, C] of every neuron's thresholded maps [N, K, h, w] with every finding's masks over the
    images (their sizes [N, 2] and annotations in the 1024-px frame), with T_k and the summed counts."""
    K = maps.shape[1]
    T = top_quantile(maps.transpose(0, 1).reshape(K, -1), quantile)
    inter = torch.zeros(K, len(findings), dtype=torch.float64)
    map_area = torch.zeros(K, dtype=torch.float64)
    mask_area = torch.zeros(len(findings), dtype=torch.float64)
    for b in tqdm(range(0, len(maps), batch_size), desc="IoU", unit="batch"):
        masks = torch.zeros(min(batch_size, len(maps) - b), len(findings), crop, crop, dtype=torch.bool)
        for m, a, s in zip(masks, anns[b:b + batch_size], sizes[b:b + batch_size].tolist()):
            finding_masks(to_probe_crop(scale_to(a, tuple(s)), tuple(s), resize, crop), findings, crop, m)
        counts = dissection_counts(maps[b:b + batch_size], T, masks)
        inter += counts[0]
        map_area += counts[1]
        mask_area += counts[2]
    return {"iou": iou(inter, map_area, mask_area), "thresholds": T, "intersection": inter, "map_area": map_area,
            "mask_area": mask_area}
