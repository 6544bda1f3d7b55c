"""Network Dissection's score (docs/describers.md): each neuron's IoU with each finding, from its spatial
maps over the probing images whose findings have boxes or masks. T_k is the neuron's top quantile over
all those maps; each map is upsampled to the probe crop, thresholded at T_k and counted against the
finding masks drawn on the same crop (Resize + CenterCrop, as visualization.py maps boxes). Pure
functions of tensors; pipeline/dissection.py runs the pass that collects the maps.
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw
from tqdm import tqdm

from dataset.boxes import scale_to, to_probe_crop
from mammi.pointing import box_mask


def top_quantile(values: torch.Tensor, q: float) -> torch.Tensor:
    """Network Dissection's T_k: the q quantile (linear interpolation) of each row of values [K, M],
    every spatial activation of neuron k over the probing images."""
    rows = max(1, (1 << 24) // max(1, values.shape[1]))  # torch.quantile takes at most 2**24 values at once
    return torch.cat([torch.quantile(values[j:j + rows].double(), q, dim=1) for j in range(0, len(values), rows)])


def dissection_counts(maps: torch.Tensor, T: torch.Tensor,
                      masks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """For a batch of images: each neuron's map [B, K, h, w] upsampled (bilinear) to the masks' size and
    thresholded at T_k, M_k(x); the finding masks L_c(x) [B, C, H, W]. Returns the sums over the batch
    of |M_k(x) & L_c(x)| [K, C], |M_k(x)| [K] and |L_c(x)| [C], as float64 counts."""
    B, K, C = masks.shape[0], maps.shape[1], masks.shape[1]
    counts = torch.zeros(K, C + 1, dtype=torch.float64)
    maps = maps.float()
    # float32 x > T exactly when x > T rounded down to float32.
    t = T.float()
    t = torch.where(t.double() > T.double(), torch.nextafter(t, torch.tensor(-math.inf)), t)
    # A row of ones below the masks: one product gives |M & L_c| and |M|.
    L = torch.ones(B, C + 1, masks[0, 0].numel())
    L[:, :C] = masks.flatten(2)
    # A bilinear value is a convex combination of neighbouring cells, so a map with no cell above T_k
    # has an empty M_k: only the others are upsampled (T_k is the top 0.5%: a few percent of them).
    active = maps.flatten(2).amax(2) > t[None]
    for b, ks in enumerate(active):
        ks = ks.nonzero().flatten()
        if len(ks):
            up = F.interpolate(maps[b, ks][None], size=masks.shape[-2:], mode="bilinear", align_corners=False)[0]
            M = (up > t[ks, None, None]).flatten(1).float()
            counts[ks] += (M @ L[b].T).double()  # 0/1 products: exact in float32 below 2**24 pixels
    return counts[:, :C], counts[:, C], L[:, :C].sum((0, 2)).double()


def iou(inter: torch.Tensor, map_area: torch.Tensor, mask_area: torch.Tensor) -> torch.Tensor:
    """IoU(k, c) = sum_x |M_k & L_c| / sum_x |M_k | L_c| from the summed counts; 0 where both are empty."""
    union = map_area[:, None] + mask_area[None, :] - inter
    return torch.where(union > 0, inter / union.clamp_min(1), torch.zeros_like(inter))


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
