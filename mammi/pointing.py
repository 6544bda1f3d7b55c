"""Whether a map looks inside the ground-truth boxes (visualization.py, step 6): the pointing game and
the share of the map's positive mass inside the boxes, on the probe crop's pixel grid."""
from __future__ import annotations

import numpy as np


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
