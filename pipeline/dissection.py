"""Network Dissection's pass (docs/describers.md; the score itself is mammi/dissection.py): each
neuron's spatial maps over the probing images whose findings have boxes or masks.

Step 2 keeps one number per neuron and image (the spatial mean), so the maps need a forward pass of
their own; it runs only over the images whose masks are known: those the box file annotates (NIH
bbox.csv, ChestX-Det, the phantom world's bbox.csv) and those whose labels say No Finding (nothing to
box, so their masks are empty). It keeps the low-resolution output of the last spatial block (N x K x
h x w: 44 MB for the demo's 1,200 images x 1,024 channels x 3 x 3), from which both the penultimate
maps and the fc class activation maps follow (mammi/maps.py's layer_maps), so one pass serves both
layers (compare_describers.py caches it).
"""
from __future__ import annotations

from pathlib import Path

import torch
from tqdm import tqdm

from mammi.maps import module_maps
from pipeline.forward import probe_loader


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
