"""Ground-truth boxes: NIH `bbox.csv` and ChestX-Det json, one colour per disease, drawing, crop mapping.

Both sources become {image name: [annotation, ...]}, each annotation a dict
    {'label': canonical disease name, 'box': [x1, y1, x2, y2], 'polygon': [[x, y], ...] or None}
in the 1024x1024 pixel frame both sources were drawn in (NIH states it; ChestX-Det images are
1024x1024 NIH images). `scale_to` moves them onto an image's real size, `to_probe_crop` onto the
Resize + CenterCrop the target model sees.
"""
from __future__ import annotations

import csv
import io
import json
import math
from functools import lru_cache
from pathlib import Path

import matplotlib
import numpy as np
from PIL import Image, ImageDraw, ImageFont

from core.errors import PipelineError
from dataset.files import read_text
from dataset.nih import HERE, class_names

SOURCES = ("nih", "chestx_det")
DEFAULT_FILES = {"nih": HERE / "nih14" / "bbox.csv", "chestx_det": HERE / "chestx_det" / "ChestX_Det_test.json"}
REFERENCE = 1024  # both sources annotate in 1024-pixel coordinates
# Box labels that name an NIH class differently (bbox.csv says 'Infiltrate'); case is ignored anyway.
ALIASES = {"infiltrate": "Infiltration"}
# ChestX-Det findings that are not NIH classes still get their own colour.
EXTRA_DISEASES = ["Fracture", "Calcification", "Diffuse Nodule"]
BLEND_ALPHA = 0.3


def canonical(label: str) -> str:
    low = label.strip().lower()
    if low in ALIASES:
        return ALIASES[low]
    for name in class_names():
        if name.lower() == low:
            return name
    return label.strip()


@lru_cache(maxsize=None)
def _palette() -> list[tuple[int, int, int]]:
    # tab20's strong hues first, then its light ones, greys left out: 18 colours for 17 diseases.
    tab = matplotlib.colormaps["tab20"].colors
    order = [i for i in range(0, 20, 2) if i != 14] + [i for i in range(1, 20, 2) if i != 15]
    return [tuple(int(round(255 * v)) for v in tab[i]) for i in order]


def disease_colour(label: str) -> tuple[int, int, int]:
    """One fixed RGB colour per disease, the same in every figure of the project."""
    known = class_names() + EXTRA_DISEASES
    name = canonical(label)
    i = known.index(name) if name in known else len(known) + sum(map(ord, name))
    pal = _palette()
    return pal[i % len(pal)]


def finite(path: Path, where: str, values: list[float]) -> list[float]:
    """The coordinates of one box or polygon, refused unless every one is a finite number: a NaN box
    masks nothing and an infinite one would be drawn and masked over an unbounded area."""
    if not all(math.isfinite(v) for v in values):
        raise PipelineError(f"{path}, {where}: box coordinates must be finite numbers, got "
                            f"{', '.join(f'{v:g}' for v in values)}; fix or remove that box")
    return values


def read_nih(path: str | Path) -> dict[str, list[dict]]:
    path = Path(path)
    out: dict[str, list[dict]] = {}
    reader = csv.DictReader(io.StringIO(read_text(path), newline=""))
    need = {"image_name", "label", "bbox_x", "bbox_y", "bbox_w", "bbox_h"}
    if not need <= set(reader.fieldnames or []):
        raise PipelineError(f"{path}: expected the NIH bbox.csv columns {sorted(need)}; "
                            f"pass --box_source chestx_det for a ChestX-Det json")
    for i, row in enumerate(reader, 2):
        try:
            x, y, w, h = (float(row[k]) for k in ("bbox_x", "bbox_y", "bbox_w", "bbox_h"))
        except (TypeError, ValueError):
            raise PipelineError(f"{path}, line {i}: box x, y, w, h must be numbers") from None
        finite(path, f"line {i}", [x, y, w, h])
        out.setdefault(row["image_name"], []).append(
            {"label": canonical(row["label"]), "box": [x, y, x + w, y + h], "polygon": None})
    return out


def read_chestx_det(path: str | Path) -> dict[str, list[dict]]:
    """Every image of the json, those without findings too (an empty list)."""
    path = Path(path)
    try:
        items = json.loads(read_text(path))
    except json.JSONDecodeError:
        raise PipelineError(f"{path}: not a json file; pass the ChestX_Det_{{train,test}}.json") from None
    out: dict[str, list[dict]] = {}
    for n, item in enumerate(items):
        if not isinstance(item, dict) or not {"file_name", "syms", "boxes"} <= set(item):
            raise PipelineError(f"{path}: expected a list of {{file_name, syms, boxes, polygons}} (ChestX-Det); "
                                f"pass --box_source nih for bbox.csv")
        polys = item.get("polygons") or [None] * len(item["boxes"])
        where = f"item {n} ({item['file_name']})"
        out[item["file_name"]] = [{"label": canonical(s), "box": finite(path, where, [float(v) for v in b]),
                                   "polygon": [finite(path, where, [float(x), float(y)]) for x, y in p] if p else None}
                                  for s, b, p in zip(item["syms"], item["boxes"], polys)]
    return out


def load_boxes(source: str, path: str | Path = "") -> tuple[dict[str, list[dict]], Path]:
    if source not in SOURCES:
        raise PipelineError(f"unknown --box_source {source!r}; choose one of {', '.join(SOURCES)}")
    path = Path(path) if path else DEFAULT_FILES[source]
    if not path.is_file():
        raise PipelineError(f"box file {path} not found; pass --box_file PATH")
    return (read_nih(path) if source == "nih" else read_chestx_det(path)), path


def _map(ann: dict, sx: float, sy: float, dx: float = 0.0, dy: float = 0.0) -> dict:
    x1, y1, x2, y2 = ann["box"]
    poly = [[x * sx - dx, y * sy - dy] for x, y in ann["polygon"]] if ann["polygon"] else None
    return {**ann, "box": [x1 * sx - dx, y1 * sy - dy, x2 * sx - dx, y2 * sy - dy], "polygon": poly}


def scale_to(anns: list[dict], size: tuple[int, int]) -> list[dict]:
    """From the 1024-pixel frame to an image of size (width, height)."""
    w, h = size
    return [_map(a, w / REFERENCE, h / REFERENCE) for a in anns]


def to_probe_crop(anns: list[dict], size: tuple[int, int], resize: int, crop: int) -> list[dict]:
    """From image pixels (size = width, height) to the probe crop: torchvision's Resize(resize) on the
    shorter side, then CenterCrop(crop). Boxes are clipped to the crop; those left empty are dropped."""
    w, h = size
    if w <= h:
        nw, nh = resize, int(resize * h / w)
    else:
        nw, nh = int(resize * w / h), resize
    left, top = int(round((nw - crop) / 2.0)), int(round((nh - crop) / 2.0))
    out = []
    for a in anns:
        m = _map(a, nw / w, nh / h, left, top)
        x1, y1, x2, y2 = (float(np.clip(v, 0, crop)) for v in m["box"])
        if x2 > x1 and y2 > y1:
            out.append({**m, "box": [x1, y1, x2, y2]})
    return out


@lru_cache(maxsize=None)
def _font(size: int) -> ImageFont.FreeTypeFont:
    from matplotlib import font_manager
    return ImageFont.truetype(font_manager.findfont("DejaVu Sans"), size)


def draw_boxes(image: Image.Image, anns: list[dict], alpha: float = BLEND_ALPHA) -> tuple[np.ndarray, np.ndarray]:
    """(outlined, blend), both uint8 [H, W, 3] of the image's size. `outlined`: every box and polygon
    as an opaque outline in its disease's colour. `blend`: the boxes filled in their colour and mixed
    in at `alpha` (image * (1 - alpha) + colour * alpha inside a box, the image untouched outside),
    polygons outlined on top. Where boxes overlap, the later one wins."""
    rgb = image.convert("RGB")
    width = max(2, round(max(rgb.size) / 256))
    outlined, filled = rgb.copy(), rgb.copy()
    d_out, d_fill = ImageDraw.Draw(outlined), ImageDraw.Draw(filled)
    for a in anns:
        colour = disease_colour(a["label"])
        d_out.rectangle(a["box"], outline=colour, width=width)
        d_fill.rectangle(a["box"], fill=colour)
    base = np.asarray(rgb, dtype=np.float64)
    mixed = base * (1 - alpha) + np.asarray(filled, dtype=np.float64) * alpha
    blend = Image.fromarray(np.round(mixed).astype(np.uint8))
    d_blend = ImageDraw.Draw(blend)
    for a in anns:
        if a["polygon"] and len(a["polygon"]) > 1:
            pts = [tuple(p) for p in a["polygon"]] + [tuple(a["polygon"][0])]
            d_out.line(pts, fill=disease_colour(a["label"]), width=width)
            d_blend.line(pts, fill=disease_colour(a["label"]), width=width)
    return np.asarray(outlined), np.asarray(blend)


def add_legend(pixels: np.ndarray, anns: list[dict]) -> Image.Image:
    """The image with a white strip below it: one colour swatch and name per disease present
    (with its box count). The image keeps its pixels and coordinates at the top."""
    h, w = pixels.shape[:2]
    counts: dict[str, int] = {}
    for a in anns:
        counts[a["label"]] = counts.get(a["label"], 0) + 1
    size = max(14, w // 32)
    font = _font(size)
    entries = [f"{name} ({n})" for name, n in counts.items()] or ["no boxes"]
    pad, sw = size // 2, size
    # Lay entries out in rows that fit the width, so nothing is clipped at the right edge.
    rows, row, x = [], [], pad
    for (name, text) in zip(list(counts) or [None], entries):
        tw = font.getlength(text) + sw + 2 * pad
        if row and x + tw > w:
            rows.append(row)
            row, x = [], pad
        row.append((name, text, x))
        x += tw
    rows.append(row)
    strip = len(rows) * (size + pad) + pad
    out = Image.new("RGB", (w, h + strip), "white")
    out.paste(Image.fromarray(pixels), (0, 0))
    draw = ImageDraw.Draw(out)
    for r, row in enumerate(rows):
        y = h + pad + r * (size + pad)
        for name, text, x in row:
            if name is not None:
                draw.rectangle([x, y, x + sw, y + size], fill=disease_colour(name), outline="black")
            draw.text((x + sw + pad // 2, y - size // 8), text, fill="black", font=font)
    return out
