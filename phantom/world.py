"""A synthetic chest X-ray world whose ground truth is known: phantoms, their findings and reports.

Each image is a frontal radiograph phantom (patient's right on the image's left, as in NIH
ChestX-ray14): body outline, lungs, heart, mediastinum, diaphragm, ribs, clavicles and spine, with
anatomy, exposure and noise varying per image. Each of the 14 NIH findings has its own look, a box,
a location and a severity. About half the images are normal. A short report in radiology wording
names the findings with the lower-case class names ('nodule', 'pleural thickening', ...).
Objects that are not findings (OBJECTS: a chest tube, a pacemaker with its leads, ECG leads and
electrodes, a laterality marker) lie on some images, each with its own look and box, and the reports
name them first ('Left chest tube in place.'), always with the object's word ('tube', 'pacemaker',
'electrodes', 'marker'). Each object is on a share of the images (its base rate) whatever their
findings, unless a tie ('chest tube:Pneumothorax:0.9', parse_shortcut) plants a shortcut: then, in
the training split only, that share of the class's images carry the object; val and test keep the
base rate, so there the object says nothing of the labels.

`write_world(out_dir, n_train, n_val, n_test, size, seed)` writes the world in the real formats, so
the NIH and R2Gen loaders read it unchanged:

    images/p00000_000.png            8-bit grayscale PNGs, size x size
    {train,val,test}_official.txt    image name then 14 space-separated 0/1 labels
    bbox.csv                         image_name,label,bbox_x,bbox_y,bbox_w,bbox_h (1024-px coordinates)
    annotation.json                  R2Gen: {"train": [{"id", "report", "image_path", "split"}], ...}
    world.json                       per image: findings with label, box [x, y, w, h] in image pixels,
                                     location, severity; objects with object, box, location; the report;
                                     and the world's shortcut ('' for none) and the objects' base rates

phantom/marker.py tells a world's images from any other by the world.json beside their folder.

Geometry is in normalised units (0..1 of the image side), so any size renders the same world.
Every image has its own random stream, seeded by (seed, index): a world is the same for a seed,
whatever the order or number of images drawn.
"""
from __future__ import annotations

import csv
import json
import math
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import NamedTuple

import numpy as np
from PIL import Image
from scipy.ndimage import gaussian_filter

from core.errors import PipelineError
from dataset.nih import class_names
from phantom.marker import WORLD_FILE

CLASSES = class_names()  # the NIH findings, in the order of the split files' label columns
WORDS = [c.lower() for c in CLASSES]  # the words the reports use, and the concepts the method must find
VERSION = 3  # bump when a change to the generator changes pixels: a stored world of another version is rewritten

NORMAL_FRACTION = 0.5  # NIH: a bit over half the images have 'No Finding'
N_FINDINGS_P = [0.55, 0.30, 0.12, 0.03]  # an abnormal image carries 1, 2, 3 or 4 findings
# Relative frequencies of the findings (Hernia is rare, as in NIH), and pairs that tend to co-occur.
FREQ = {"Atelectasis": 1.2, "Cardiomegaly": 1.0, "Effusion": 1.3, "Infiltration": 1.3, "Mass": 0.9, "Nodule": 1.0,
        "Pneumonia": 0.8, "Pneumothorax": 0.9, "Consolidation": 0.9, "Edema": 0.8, "Emphysema": 0.8,
        "Fibrosis": 0.8, "Pleural thickening": 0.9, "Hernia": 0.5}
AFFINITY = [("Effusion", "Cardiomegaly"), ("Effusion", "Edema"), ("Cardiomegaly", "Edema"),
            ("Pneumonia", "Consolidation"), ("Pneumonia", "Infiltration"), ("Atelectasis", "Effusion"),
            ("Emphysema", "Pneumothorax"), ("Fibrosis", "Pleural thickening"), ("Mass", "Nodule")]
SEVERITIES = ["mild", "moderate", "severe"]
SEV_SCALE = {"mild": 0.75, "moderate": 0.9, "severe": 1.05}


# ----------------------------------------------------------------------------------------------
# sampling: a case is a JSON-serialisable description (anatomy + findings); rendering is separate,
# so a test can render the same case with and without a finding.

def _u(rng, lo, hi) -> float:
    return float(rng.uniform(lo, hi))


def sample_anatomy(rng: np.random.Generator) -> dict:
    cw = _u(rng, 0.35, 0.41)  # half-width of the thorax
    dia = _u(rng, 0.70, 0.77)  # level of the costophrenic angles
    return dict(
        cx=0.5 + float(rng.normal(0, 0.012)), cw=cw, top=_u(rng, 0.13, 0.18), dia=dia,
        dome=_u(rng, 0.045, 0.075), dome_right=_u(rng, 0.005, 0.03),  # the right hemidiaphragm sits higher
        ctr=_u(rng, 0.40, 0.47),  # cardiothoracic ratio: heart width / thoracic width
        heart_h=_u(rng, 0.11, 0.14), heart_shift=_u(rng, 0.02, 0.045), heart_up=_u(rng, 0.05, 0.08),
        soft=_u(rng, 0.55, 0.66), air=_u(rng, 0.33, 0.40), rib_gap=_u(rng, 0.052, 0.064),
        rib_curve=_u(rng, 0.9, 1.4), rib_phase=_u(rng, 0, 1), clav=_u(rng, 0.17, 0.21),
        gamma=_u(rng, 0.8, 1.25), contrast=_u(rng, 0.85, 1.15), bright=_u(rng, -0.05, 0.05),
        noise=_u(rng, 0.008, 0.025), bubble=_u(rng, 0.0, 1.0), seed=int(rng.integers(2**31)),
    )


def lung_geometry(a: dict, side: int) -> dict:
    """side -1: image left = patient's right lung; +1: patient's left lung."""
    med = a["cx"] + side * 0.045
    lat = a["cx"] + side * a["cw"] * 0.94
    base = a["dia"] - (a["dome_right"] if side < 0 else 0.0)
    return dict(lcx=(med + lat) / 2, lhw=abs(lat - med) / 2, base=base, top=a["top"] + (0.01 if side < 0 else 0.0),
                x0=min(med, lat), x1=max(med, lat))


def _side_word(side: int) -> str:
    return "right" if side < 0 else "left"


def _zone_point(rng, a: dict, side: int, zone: str, margin: float) -> tuple[float, float]:
    """A point well inside the lung of `side` in the upper, mid or lower zone."""
    g = lung_geometry(a, side)
    h = g["base"] - g["top"]
    fy = {"upper": (0.22, 0.38), "mid": (0.42, 0.58), "lower": (0.62, 0.76)}[zone]
    y = g["top"] + h * _u(rng, *fy)
    # half-width of the lung at this height (superellipse outline, see render)
    t = (g["base"] - y) / h
    half = g["lhw"] * max(0.0, 1 - t ** 2) ** (1 / 2.5)
    span = max(0.0, half - margin)
    # keep lower-zone findings of the left lung clear of the heart, on its lateral side
    lo, hi = -span * 0.7, span * 0.8
    if side > 0 and zone == "lower":
        lo = 0.0
    x = g["lcx"] + side * _u(rng, lo, hi) if span > 0 else g["lcx"]
    return x, y


def _box(x0, y0, x1, y1) -> list[float]:
    x0, y0 = max(0.0, x0), max(0.0, y0)
    x1, y1 = min(1.0, x1), min(1.0, y1)
    return [x0, y0, x1 - x0, y1 - y0]


def sample_finding(rng: np.random.Generator, a: dict, label: str) -> dict:
    """A finding of `label` on anatomy a: its severity and side, then what its entry in FINDINGS draws
    (its geometry, box and location)."""
    if label not in FINDINGS:
        raise ValueError(label)
    sev = SEVERITIES[int(rng.integers(3))]
    s = SEV_SCALE[sev]
    side = int(rng.choice([-1, 1]))
    f: dict = dict(label=label, severity=sev, side=side)
    FINDINGS[label].sample(rng, a, f, s, side)
    return f


def _heart(a: dict, findings: list[dict]) -> dict:
    ctr = next((f["ctr"] for f in findings if f["label"] == "Cardiomegaly"), a["ctr"])
    hw = ctr * a["cw"]
    cy = a["dia"] - a["heart_up"]
    cx = a["cx"] + a["heart_shift"] + (hw - a["ctr"] * a["cw"]) * 0.35  # an enlarged heart grows mostly to the left
    return dict(cx=cx, cy=cy, hw=hw, hh=a["heart_h"] * (1 + 0.6 * (ctr - a["ctr"])))


def sample_case(rng: np.random.Generator) -> dict:
    a = sample_anatomy(rng)
    labels: list[str] = []
    if rng.random() >= NORMAL_FRACTION:
        n = int(rng.choice(len(N_FINDINGS_P), p=N_FINDINGS_P)) + 1
        w = np.array([FREQ[c] for c in CLASSES])
        for _ in range(n):
            p = w.copy()
            for i, c in enumerate(CLASSES):
                if c in labels:
                    p[i] = 0
                elif any((c, l) in AFFINITY or (l, c) in AFFINITY for l in labels):
                    p[i] *= 3
            labels.append(CLASSES[int(rng.choice(len(CLASSES), p=p / p.sum()))])
    findings = [sample_finding(rng, a, l) for l in sorted(labels, key=CLASSES.index)]
    return dict(anatomy=a, findings=findings)


# ----------------------------------------------------------------------------------------------
# rendering: densities (higher = whiter) added on a grid; everything in normalised coordinates.

def _soft(d: np.ndarray, w: float) -> np.ndarray:
    """Smooth step: 0 for d << 0, 1 for d >> 0, over a width w."""
    return 0.5 * (1 + np.tanh(d / w))


def render(case: dict, size: int) -> np.ndarray:
    """The case as an 8-bit grayscale image [size, size]."""
    a = case["anatomy"]
    fs = case["findings"]
    rng = np.random.default_rng(a["seed"])  # noise and textures: same case, same pixels
    px = 1.0 / size
    edge = 1.5 * px
    c = (np.arange(size, dtype=np.float32) + 0.5) / size
    X, Y = np.meshgrid(c, c)
    emph = next((f for f in fs if f["label"] == "Emphysema"), None)
    drop = emph["drop"] if emph else 0.0
    flat = 0.35 if emph else 1.0

    # body: a rounded torso, neck and shoulders, on the dark background of air
    body = _soft(1 - (np.abs(X - a["cx"]) / (a["cw"] + 0.08)) ** 4 - (np.abs(Y - 0.62) / 0.6) ** 4, 0.02)
    neck = _soft(0.075 - np.abs(X - a["cx"]), edge) * _soft(0.2 - Y, 0.02)
    body = np.maximum(body * _soft(Y - 0.1, 0.03), neck)
    D = 0.04 + body * a["soft"]

    # lungs: superellipse outlines cut by the diaphragm domes; air lowers the density
    lungs, qs, geos = {}, {}, {}
    for side in (-1, 1):
        g = lung_geometry(a, side)
        base = g["base"] + drop
        h = base - g["top"]
        q = (np.abs(X - g["lcx"]) / g["lhw"]) ** 2.5 + (np.maximum(base - Y, 0) / h) ** 2
        dome = base - a["dome"] * flat * np.clip(1 - ((X - g["lcx"]) / g["lhw"]) ** 2, 0, 1)
        lungs[side] = _soft(1 - q, 0.04) * _soft(dome - Y, edge)
        qs[side], geos[side] = q, dict(g, base=base, h=h)
    lung = np.clip(lungs[-1] + lungs[1], 0, 1)
    heart = _heart(a, fs)
    hq = ((X - heart["cx"]) / heart["hw"]) ** 2 + ((Y - heart["cy"]) / heart["hh"]) ** 2
    heartm = _soft(1 - hq, 0.05) * _soft(a["dia"] + drop - Y + 0.03, 0.01)
    air = a["air"] * (1 + (emph["lucency"] if emph else 0.0))
    D -= air * lung * (1 - 0.75 * heartm)

    # lung markings: band-passed noise, strongest near the hila; a pneumothorax has none
    n = rng.standard_normal((size, size)).astype(np.float32)
    mark = gaussian_filter(n, 0.8 * size / 256) - gaussian_filter(n, 3.0 * size / 256)
    mark /= mark.std() + 1e-6
    hila = np.exp(-((np.abs(X - a["cx"]) - 0.1) ** 2 + (Y - 0.45) ** 2) / 0.03)
    mark_amp = (0.018 + 0.03 * hila) * (0.45 if emph else 1.0)
    mark_mult = np.ones_like(X)

    # mediastinum, heart, spine with vertebrae, clavicles, ribs
    D += 0.12 * _soft(0.05 - np.abs(X - a["cx"]), edge) * _soft(Y - 0.1, 0.02) * body
    D += 0.10 * heartm
    spine = _soft(0.028 - np.abs(X - a["cx"]), edge)
    vert = 0.5 + 0.5 * np.cos(2 * math.pi * Y / 0.05)
    D += spine * (0.04 + 0.04 * vert) * body
    for side in (-1, 1):
        xs = X - a["cx"]
        curve = a["clav"] + 0.25 * (np.abs(xs) - 0.18) ** 2 * 3 - 0.02 * (np.abs(xs) / 0.3)
        D += 0.17 * _soft(0.011 - np.abs(Y - curve), edge) * _soft(np.abs(xs) - 0.03, edge) * \
            _soft(a["cw"] + 0.05 - np.abs(xs), edge) * (np.sign(xs) == side)
    across = (np.abs(X - a["cx"]) / (a["cw"] + 0.02)) ** 2
    down = ((Y - (a["dia"] + drop)) / (a["dia"] - a["top"] + 0.06)) ** 2
    thorax = _soft(1 - across - down, 0.01)
    thorax *= _soft(a["dia"] + drop + 0.02 - Y, 0.01)
    bend = a["rib_curve"] * (X - a["cx"]) ** 2 * (1 - 0.5 * np.abs(X - a["cx"]) / a["cw"])
    phase = (Y - bend) / a["rib_gap"] + a["rib_phase"]
    rib = _soft(0.32 - np.abs(phase - np.floor(phase) - 0.5), 0.06)
    D += 0.07 * rib * thorax * _soft(np.abs(X - a["cx"]) - 0.05, edge)

    # a gastric bubble under the left hemidiaphragm, in most people
    if a["bubble"] > 0.3:
        gx, gy = a["cx"] + 0.17, a["dia"] + drop + 0.045
        D -= 0.18 * _soft(1 - ((X - gx) / 0.05) ** 2 - ((Y - gy) / 0.028) ** 2, 0.1)

    # findings: each drawn by its entry in FINDINGS, into D and mark_mult in place
    canvas = SimpleNamespace(X=X, Y=Y, px=px, size=size, a=a, lungs=lungs, lung=lung, qs=qs, geos=geos, air=air,
                             D=D, mark_mult=mark_mult)
    for j, f in enumerate(fs):
        draw = FINDINGS[f["label"]].draw
        if draw:
            frng = np.random.default_rng([a["seed"], j + 1])  # a finding's texture leaves the image's noise alone
            draw(f, f.get("side", 0), canvas, frng)

    D += mark_amp * mark * lung * mark_mult * (1 - heartm)
    # objects that are not findings (devices, marks): metal and lead lie on top of everything; they draw
    # from no stream, so an image without them has the pixels of a world without objects
    for o in case.get("objects", []):
        OBJECTS[o["object"]].draw(o, canvas)
    # exposure and detector: contrast, brightness, gamma, noise
    D = (D - 0.35) * a["contrast"] + 0.35 + a["bright"]
    D = np.clip(D, 0, 1) ** a["gamma"]
    D += a["noise"] * rng.standard_normal((size, size)).astype(np.float32)
    return (np.clip(D, 0, 1) * 255 + 0.5).astype(np.uint8)


# ----------------------------------------------------------------------------------------------
# the findings: for each, how it is sampled (sample: geometry, box and location into f, from the case's
# stream) and how it is drawn (draw: densities added to canvas.D, lung markings removed through
# canvas.mark_mult, its textures from its own stream frng). s is the severity's scale when sampled and
# the finding's side (-1, 0 or 1) when drawn.

def _sample_atelectasis(rng, a: dict, f: dict, s: float, side: int) -> None:
    x, y = _zone_point(rng, a, side, "lower", 0.07)
    f.update(x=x, y=y, length=_u(rng, 0.10, 0.15) * s, thick=_u(rng, 0.014, 0.02) * s,
             angle=_u(rng, -0.35, 0.35), density=0.30 * s, location=f"{_side_word(side)} lower zone")
    r = f["length"] / 2 + 0.03
    f["box"] = _box(x - r, y - r * 0.6, x + r, y + r * 0.6)


def _draw_atelectasis(f: dict, s: int, c: SimpleNamespace, frng) -> None:
    X, Y, px, D = c.X, c.Y, c.px, c.D
    ca, sa = math.cos(f["angle"]), math.sin(f["angle"])
    along = (X - f["x"]) * ca + (Y - f["y"]) * sa
    across = -(X - f["x"]) * sa + (Y - f["y"]) * ca
    band = _soft(f["length"] / 2 - np.abs(along), 2 * px) * _soft(f["thick"] / 2 - np.abs(across), px)
    haze = np.exp(-(along ** 2 / (f["length"] / 2) ** 2 + (across - 0.02) ** 2 / 0.025 ** 2))
    D += (f["density"] * band + 0.08 * haze) * c.lungs[s]


def _sample_cardiomegaly(rng, a: dict, f: dict, s: float, side: int) -> None:
    # drawn as the heart itself (_heart reads ctr), so it has no draw of its own
    f.update(ctr={"mild": _u(rng, 0.55, 0.58), "moderate": _u(rng, 0.58, 0.62),
                  "severe": _u(rng, 0.62, 0.67)}[f["severity"]],
             side=0, location="cardiac silhouette")
    h = _heart(a, [f])
    f["box"] = _box(h["cx"] - h["hw"] - 0.01, h["cy"] - h["hh"] - 0.01,
                    h["cx"] + h["hw"] + 0.01, h["cy"] + h["hh"] + 0.01)


def _sample_effusion(rng, a: dict, f: dict, s: float, side: int) -> None:
    g = lung_geometry(a, side)
    f.update(height=_u(rng, 0.06, 0.10) * s * s, location=f"{_side_word(side)} costophrenic angle")
    f["box"] = _box(g["x0"] - 0.01, g["base"] - f["height"] - 0.035, g["x1"] + 0.01, g["base"] + 0.02)


def _draw_effusion(f: dict, s: int, c: SimpleNamespace, frng) -> None:
    X, Y, D, mark_mult, qs = c.X, c.Y, c.D, c.mark_mult, c.qs
    g = c.geos[s]
    t = np.clip(s * (X - g["lcx"]) / g["lhw"], -1, 1)  # -1 medial .. 1 lateral
    level = g["base"] - f["height"] * (0.55 + 0.45 * (t + 1) / 2) ** 1.5 * 1.4
    fluid = _soft(Y - level, 0.008) * _soft(1.15 - qs[s], 0.05) * _soft(g["base"] + 0.02 - Y, 0.01)
    D += (c.air * 0.95 + 0.04) * fluid * np.maximum(c.lungs[s], _soft(Y - level, 0.01) * 0.7)
    mark_mult *= 1 - fluid


def _sample_infiltration(rng, a: dict, f: dict, s: float, side: int) -> None:
    zone = str(rng.choice(["mid", "lower", "upper"]))
    x, y = _zone_point(rng, a, side, zone, 0.07)
    n = int(rng.integers(5, 9))
    blobs = [[x + _u(rng, -0.06, 0.06), y + _u(rng, -0.06, 0.06), _u(rng, 0.012, 0.022)] for _ in range(n)]
    f.update(blobs=blobs, density=0.16 * s, location=f"{_side_word(side)} {zone} zone")
    f["box"] = _box(min(b[0] for b in blobs) - 0.04, min(b[1] for b in blobs) - 0.04,
                    max(b[0] for b in blobs) + 0.04, max(b[1] for b in blobs) + 0.04)


def _cloud(f: dict, c: SimpleNamespace) -> np.ndarray:
    """Infiltration and pneumonia: the sum of their gaussian blobs."""
    X, Y = c.X, c.Y
    cloud = np.zeros_like(X)
    for bx, by, r in f["blobs"]:
        cloud += np.exp(-((X - bx) ** 2 + (Y - by) ** 2) / (2 * r * r))
    return cloud


def _draw_infiltration(f: dict, s: int, c: SimpleNamespace, frng) -> None:
    cloud, size, D = _cloud(f, c), c.size, c.D
    tex = gaussian_filter(frng.standard_normal((size, size)).astype(np.float32), 1.2 * size / 256)
    tex = 0.55 + 0.45 * np.clip(tex / (tex.std() + 1e-6), -1, 1)
    D += f["density"] * np.clip(cloud, 0, 1.3) * tex * c.lung


def _sample_round(rng, a: dict, f: dict, side: int, radius: Callable, lobes: Callable, density: float) -> None:
    """Mass and nodule: a round opacity of radius(rng) in a zone, lobulated by lobes(rng)."""
    zone = str(rng.choice(["upper", "mid", "lower"]))
    r = radius(rng)
    x, y = _zone_point(rng, a, side, zone, r + 0.01)
    f.update(x=x, y=y, r=r, lobes=lobes(rng), phase=_u(rng, 0, 6.3), density=density,
             location=f"{_side_word(side)} {zone} zone", mm=int(round(r * 2 * 350)))  # a 35 cm wide film
    f["box"] = _box(x - r * 1.2, y - r * 1.2, x + r * 1.2, y + r * 1.2)


def _sample_mass(rng, a: dict, f: dict, s: float, side: int) -> None:
    _sample_round(rng, a, f, side, lambda rng: _u(rng, 0.055, 0.075) * s, lambda rng: _u(rng, 0.0, 0.12), 0.34 * s)


def _sample_nodule(rng, a: dict, f: dict, s: float, side: int) -> None:
    # its size does not grow with severity: a nodule stays visible at 96 px
    _sample_round(rng, a, f, side, lambda rng: _u(rng, 0.02, 0.027), lambda rng: 0.0, 0.42 * s)


def _draw_round(f: dict, s: int, c: SimpleNamespace, frng) -> None:
    X, Y, D = c.X, c.Y, c.D
    ang = np.arctan2(Y - f["y"], X - f["x"])
    r = f["r"] * (1 + f["lobes"] * np.sin(3 * ang + f["phase"]))
    dist = np.sqrt((X - f["x"]) ** 2 + (Y - f["y"]) ** 2)
    dome_ = np.sqrt(np.clip(1 - (dist / r) ** 2, 0, 1))
    D += f["density"] * _soft(r - dist, c.px) * (0.6 + 0.4 * dome_)


def _sample_pneumonia(rng, a: dict, f: dict, s: float, side: int) -> None:
    zone = str(rng.choice(["lower", "mid"]))
    x, y = _zone_point(rng, a, side, zone, 0.07)
    blobs = [[x + _u(rng, -0.035, 0.035), y + _u(rng, -0.035, 0.035), _u(rng, 0.03, 0.045)] for _ in range(4)]
    f.update(blobs=blobs, density=0.30 * s, location=f"{_side_word(side)} {zone} zone")
    f["box"] = _box(x - 0.1, y - 0.1, x + 0.1, y + 0.1)


def _draw_pneumonia(f: dict, s: int, c: SimpleNamespace, frng) -> None:
    cloud, size, D = _cloud(f, c), c.size, c.D
    tex = gaussian_filter(frng.standard_normal((size, size)).astype(np.float32), 2.5 * size / 256)
    tex = 0.8 + 0.2 * np.clip(tex / (tex.std() + 1e-6), -1, 1)
    D += f["density"] * (1 - np.exp(-2.0 * cloud)) * tex * c.lung


def _sample_consolidation(rng, a: dict, f: dict, s: float, side: int) -> None:
    zone = str(rng.choice(["upper", "lower"]))
    g = lung_geometry(a, side)
    h = g["base"] - g["top"]
    fissure = g["top"] + h * _u(rng, 0.42, 0.55)
    y0, y1 = (g["top"] + 0.03, fissure) if zone == "upper" else (fissure, g["base"] - 0.02)
    if side > 0 and zone == "lower":
        y1 = min(y1, a["dia"] - a["heart_up"] - a["heart_h"] * 0.6)
        y1 = max(y1, y0 + 0.08)
    xc = g["lcx"] + side * g["lhw"] * _u(rng, 0.0, 0.25)
    hw = g["lhw"] * _u(rng, 0.5, 0.7) * s
    f.update(zone=zone, x=xc, hw=hw, y0=y0, y1=y1, density=0.36 * s, seedb=int(rng.integers(2**31)),
             location=f"{_side_word(side)} {zone} lobe")
    f["box"] = _box(xc - hw - 0.01, y0 - 0.01, xc + hw + 0.01, y1 + 0.01)


def _draw_consolidation(f: dict, s: int, c: SimpleNamespace, frng) -> None:
    X, Y, px, a, D, mark_mult = c.X, c.Y, c.px, c.a, c.D, c.mark_mult
    sharp = (_soft(Y - f["y0"], px) if f["zone"] == "lower" else _soft(f["y1"] - Y, px))  # the fissure
    other = (_soft(f["y1"] - Y, 0.02) if f["zone"] == "lower" else _soft(Y - f["y0"], 0.02))
    region = sharp * other * _soft(f["hw"] - np.abs(X - f["x"]), 0.015) * c.lungs[s]
    # air bronchograms: dark branching tubes inside the opacity
    rb = np.random.default_rng(f["seedb"])
    bron = np.zeros_like(X)
    hx, hy = a["cx"] + s * 0.07, (f["y0"] + f["y1"]) / 2
    for _ in range(4):
        ang = rb.uniform(-0.7, 0.7) + (0 if s > 0 else math.pi)
        ca, sa = math.cos(ang), math.sin(ang)
        along = (X - hx) * ca + (Y - hy) * sa
        across = -(X - hx) * sa + (Y - hy) * ca
        bron = np.maximum(bron, _soft(0.005 - np.abs(across), px) * _soft(along, px))
    D += f["density"] * region * (1 - 0.45 * bron)
    mark_mult *= 1 - region


def _sample_pneumothorax(rng, a: dict, f: dict, s: float, side: int) -> None:
    g = lung_geometry(a, side)
    f.update(rim=_u(rng, 0.035, 0.05) * s * s, location=f"{_side_word(side)} apex")
    h = g["base"] - g["top"]
    f["box"] = _box(g["x0"] - 0.01, g["top"] - 0.01, g["x1"] + 0.01, g["top"] + h * 0.7)


def _draw_pneumothorax(f: dict, s: int, c: SimpleNamespace, frng) -> None:
    Y, D, mark_mult, qs, lungs = c.Y, c.D, c.mark_mult, c.qs, c.lungs
    g = c.geos[s]
    inner = (1 - f["rim"] / g["lhw"]) ** 2.5
    rim = _soft(qs[s] - inner, 0.01) * lungs[s] * _soft(g["top"] + g["h"] * 0.7 - Y, 0.03)
    pleura = np.exp(-((qs[s] - inner) / 0.03) ** 2) * lungs[s] * _soft(g["top"] + g["h"] * 0.68 - Y, 0.03)
    D += -0.08 * rim + 0.10 * pleura * (1 - rim)
    mark_mult *= 1 - rim


def _sample_edema(rng, a: dict, f: dict, s: float, side: int) -> None:
    gl, gr = lung_geometry(a, -1), lung_geometry(a, 1)
    f.update(side=0, density=0.22 * s, lines=int(rng.integers(4, 7)), location="bilateral perihilar",
             seedb=int(rng.integers(2**31)))
    f["box"] = _box(gl["x0"], a["top"] + 0.15, gr["x1"], a["dia"])


def _draw_edema(f: dict, s: int, c: SimpleNamespace, frng) -> None:
    X, Y, px, a, D = c.X, c.Y, c.px, c.a, c.D
    bat = sum(np.exp(-((X - (a["cx"] + sd * 0.11)) ** 2 / (2 * 0.06 ** 2) + (Y - 0.5) ** 2 / (2 * 0.1 ** 2)))
              for sd in (-1, 1))
    kerley = np.zeros_like(X)
    rb = np.random.default_rng(f["seedb"])
    for sd in (-1, 1):
        g = c.geos[sd]
        for _ in range(f["lines"]):
            ky = g["base"] - rb.uniform(0.04, 0.14)
            kx = g["lcx"] + sd * g["lhw"] * rb.uniform(0.55, 0.8)
            kerley += _soft(0.004 - np.abs(Y - ky), px) * _soft(0.03 - np.abs(X - kx), px)
    D += (f["density"] * bat + 0.12 * np.clip(kerley, 0, 1)) * c.lung


def _sample_emphysema(rng, a: dict, f: dict, s: float, side: int) -> None:
    # besides its bullae, render() lowers and flattens the diaphragm (drop), darkens the lungs (lucency)
    # and thins their markings
    gl, gr = lung_geometry(a, -1), lung_geometry(a, 1)
    bullae = []
    for _ in range(int(rng.integers(1, 4))):
        sd = int(rng.choice([-1, 1]))
        bx, by = _zone_point(rng, a, sd, "upper", 0.05)
        bullae.append([bx, by, _u(rng, 0.025, 0.04)])
    f.update(side=0, drop=_u(rng, 0.035, 0.055) * s, lucency=0.22 * s, bullae=bullae, location="both lungs")
    f["box"] = _box(gl["x0"] - 0.01, a["top"] - 0.01, gr["x1"] + 0.01, a["dia"] + f["drop"] + 0.02)


def _draw_emphysema(f: dict, s: int, c: SimpleNamespace, frng) -> None:
    X, Y, px, D, mark_mult, lung = c.X, c.Y, c.px, c.D, c.mark_mult, c.lung
    for bx, by, r in f["bullae"]:
        dist = np.sqrt((X - bx) ** 2 + (Y - by) ** 2)
        D += (-0.08 * _soft(r - dist, px) + 0.06 * np.exp(-((dist - r) / (1.5 * px)) ** 2)) * lung
        mark_mult *= 1 - _soft(r - dist, px)


def _sample_fibrosis(rng, a: dict, f: dict, s: float, side: int) -> None:
    bilateral = bool(rng.random() < 0.5)
    f.update(side=0 if bilateral else side, density=0.17 * s, seedb=int(rng.integers(2**31)),
             location="bilateral lower zones" if bilateral else f"{_side_word(side)} lower zone")
    gl, gr = lung_geometry(a, -1), lung_geometry(a, 1)
    x0 = gl["x0"] if (bilateral or side < 0) else gr["x0"]
    x1 = gr["x1"] if (bilateral or side > 0) else gl["x1"]
    f["box"] = _box(x0 - 0.01, a["top"] + (a["dia"] - a["top"]) * 0.45, x1 + 0.01, a["dia"])


def _draw_fibrosis(f: dict, s: int, c: SimpleNamespace, frng) -> None:
    Y, size, a, D = c.Y, c.size, c.a, c.D
    rb = np.random.default_rng(f["seedb"])
    nz = rb.standard_normal((size, size)).astype(np.float32)
    bp = gaussian_filter(nz, 1.5 * size / 256) - gaussian_filter(nz, 4.0 * size / 256)
    net = np.exp(-(bp / (0.3 * bp.std() + 1e-6)) ** 2)  # zero crossings: a reticular network
    lower = _soft(Y - (a["top"] + (a["dia"] - a["top"]) * 0.5), 0.04)
    where = c.lung if s == 0 else c.lungs[s]
    D += f["density"] * net * lower * where + 0.04 * lower * where


def _sample_pleural_thickening(rng, a: dict, f: dict, s: float, side: int) -> None:
    g = lung_geometry(a, side)
    apical = bool(rng.random() < 0.4)
    f.update(apical=apical, thick=_u(rng, 0.02, 0.03) * s, density=0.36 * s,
             location=f"{_side_word(side)} apex" if apical else f"{_side_word(side)} lateral chest wall")
    h = g["base"] - g["top"]
    if apical:
        f["box"] = _box(g["x0"] - 0.01, g["top"] - 0.02, g["x1"] + 0.01, g["top"] + h * 0.3)
    else:
        f.update(y0=g["top"] + h * _u(rng, 0.25, 0.35), y1=g["top"] + h * _u(rng, 0.7, 0.85))
        xl = g["lcx"] + side * g["lhw"]
        f["box"] = _box(min(xl, g["lcx"] + side * g["lhw"] * 0.45) - 0.02, f["y0"] - 0.02,
                        max(xl, g["lcx"] + side * g["lhw"] * 0.45) + 0.02, f["y1"] + 0.02)


def _draw_pleural_thickening(f: dict, s: int, c: SimpleNamespace, frng) -> None:
    X, Y, D, mark_mult, qs, lungs = c.X, c.Y, c.D, c.mark_mult, c.qs, c.lungs
    g = c.geos[s]
    inner = (1 - f["thick"] / g["lhw"]) ** 2.5
    band = _soft(qs[s] - inner, 0.02) * lungs[s]
    if f["apical"]:
        band *= _soft(g["top"] + g["h"] * 0.22 - Y, 0.01)
    else:
        band *= _soft(Y - f["y0"], 0.01) * _soft(f["y1"] - Y, 0.01) * _soft(s * (X - g["lcx"]), 0.01)
    D += f["density"] * band
    mark_mult *= 1 - band


def _sample_hernia(rng, a: dict, f: dict, s: float, side: int) -> None:
    r = _u(rng, 0.045, 0.06) * s
    x = a["cx"] + _u(rng, -0.01, 0.03)
    y = a["dia"] - a["heart_up"] + _u(rng, -0.02, 0.01)
    f.update(side=0, x=x, y=y, r=r, level=_u(rng, -0.25, 0.15), location="retrocardiac region")
    f["box"] = _box(x - r * 1.2, y - r * 1.2, x + r * 1.2, y + r * 1.2)


def _draw_hernia(f: dict, s: int, c: SimpleNamespace, frng) -> None:
    X, Y, px, D = c.X, c.Y, c.px, c.D
    dist = np.sqrt((X - f["x"]) ** 2 + (Y - f["y"]) ** 2)
    inside = _soft(f["r"] - dist, px)
    gas = inside * _soft(f["y"] + f["level"] * f["r"] - Y, px)
    wall = np.exp(-((dist - f["r"]) / (1.5 * px)) ** 2)
    D += 0.08 * inside - 0.30 * gas + 0.10 * wall


class Finding(NamedTuple):
    sample: Callable  # (rng, anatomy, f, severity scale, side): fills in f
    draw: Callable | None  # (f, side, canvas, frng): adds to canvas.D and canvas.mark_mult in place


FINDINGS = {
    "Atelectasis": Finding(_sample_atelectasis, _draw_atelectasis),
    "Cardiomegaly": Finding(_sample_cardiomegaly, None),
    "Effusion": Finding(_sample_effusion, _draw_effusion),
    "Infiltration": Finding(_sample_infiltration, _draw_infiltration),
    "Mass": Finding(_sample_mass, _draw_round),
    "Nodule": Finding(_sample_nodule, _draw_round),
    "Pneumonia": Finding(_sample_pneumonia, _draw_pneumonia),
    "Pneumothorax": Finding(_sample_pneumothorax, _draw_pneumothorax),
    "Consolidation": Finding(_sample_consolidation, _draw_consolidation),
    "Edema": Finding(_sample_edema, _draw_edema),
    "Emphysema": Finding(_sample_emphysema, _draw_emphysema),
    "Fibrosis": Finding(_sample_fibrosis, _draw_fibrosis),
    "Pleural thickening": Finding(_sample_pleural_thickening, _draw_pleural_thickening),
    "Hernia": Finding(_sample_hernia, _draw_hernia),
}


# ----------------------------------------------------------------------------------------------
# objects that are not findings: support devices and marks. Each image draws them from streams of
# their own (seeded by seed, index and the object), so the findings, labels, boxes and the report's
# finding sentences of an image are those of a world without objects. An object's geometry is drawn
# whether or not the image carries it, so a tie (below) changes which images carry it, never how it looks.

OBJECT_STREAM = 28  # the first entry after (seed, index) of the objects' streams: apart from every other stream
LATERALITY_BITMAPS = {"L": ["1....", "1....", "1....", "1....", "11111"],
                      "R": ["1111.", "1...1", "1111.", "1..1.", "1...1"]}


def _curve(p0, p1, p2, n: int = 24) -> np.ndarray:
    """A quadratic Bezier from p0 to p2 pulled towards p1, as n points [n, 2]."""
    t = np.linspace(0, 1, n)[:, None]
    return (1 - t) ** 2 * np.array(p0) + 2 * (1 - t) * t * np.array(p1) + t ** 2 * np.array(p2)


def _dist_to_path(X, Y, pts: np.ndarray, reach: float = 0.02) -> np.ndarray:
    """Distance of each grid point to the polyline through pts, computed within `reach` of the path's
    bounding box only (inf beyond: every object is drawn within less of its path)."""
    d = np.full_like(X, np.inf)
    xs, ys = X[0], Y[:, 0]
    c0, c1 = np.searchsorted(xs, pts[:, 0].min() - reach), np.searchsorted(xs, pts[:, 0].max() + reach)
    r0, r1 = np.searchsorted(ys, pts[:, 1].min() - reach), np.searchsorted(ys, pts[:, 1].max() + reach)
    Xw, Yw = X[r0:r1, c0:c1], Y[r0:r1, c0:c1]
    dw = np.full_like(Xw, np.inf)
    for (x0, y0), (x1, y1) in zip(pts[:-1], pts[1:]):
        vx, vy = x1 - x0, y1 - y0
        t = np.clip(((Xw - x0) * vx + (Yw - y0) * vy) / max(vx * vx + vy * vy, 1e-12), 0, 1)
        dw = np.minimum(dw, np.hypot(Xw - x0 - t * vx, Yw - y0 - t * vy))
    d[r0:r1, c0:c1] = dw
    return d


def _path_box(paths: list, pad: float) -> list[float]:
    pts = np.concatenate([np.asarray(p, float).reshape(-1, 2) for p in paths])
    return _box(pts[:, 0].min() - pad, pts[:, 1].min() - pad, pts[:, 0].max() + pad, pts[:, 1].max() + pad)


def _sample_chest_tube(rng, a: dict, findings: list[dict], o: dict) -> None:
    side = int(rng.choice([-1, 1]))
    g = lung_geometry(a, side)
    h = g["base"] - g["top"]
    ye = g["top"] + h * _u(rng, 0.55, 0.75)
    wall = (a["cx"] + side * (a["cw"] + 0.05), ye)
    outside = (float(np.clip(a["cx"] + side * (a["cw"] + 0.14), 0.01, 0.99)), ye + _u(rng, 0.03, 0.08))
    inside = _curve(wall, (g["lcx"] + side * g["lhw"] * 0.85, g["top"] + h * _u(rng, 0.3, 0.45)),
                    (g["lcx"] + side * g["lhw"] * _u(rng, -0.2, 0.2), g["top"] + h * _u(rng, 0.08, 0.18)))
    path = np.concatenate([np.array([outside]), inside])
    o.update(side=side, path=path.round(5).tolist(), location=f"{_side_word(side)} hemithorax")
    o["box"] = _path_box([path], 0.015)


def _draw_chest_tube(o: dict, c: SimpleNamespace) -> None:
    d = _dist_to_path(c.X, c.Y, np.array(o["path"]))
    # a plastic tube with its radiopaque stripe
    c.D += 0.30 * _soft(0.008 - d, c.px) + 0.30 * _soft(0.003 - d, c.px)


def _sample_pacemaker(rng, a: dict, findings: list[dict], o: dict) -> None:
    side = 1 if rng.random() < 0.8 else -1  # most sit below the patient's left clavicle
    gx, gy = a["cx"] + side * _u(rng, 0.2, 0.26), a["clav"] + _u(rng, 0.04, 0.07)
    hw, hh = _u(rng, 0.035, 0.045), _u(rng, 0.025, 0.032)
    heart = _heart(a, findings)
    ends = [(heart["cx"] + 0.35 * heart["hw"], heart["cy"] + 0.45 * heart["hh"]),  # right ventricular apex
            (heart["cx"] - 0.55 * heart["hw"], heart["cy"] - 0.55 * heart["hh"])]  # right atrium
    n = 1 if rng.random() < 0.4 else 2
    bend = (a["cx"] - 0.04 + _u(rng, -0.02, 0.02), gy + _u(rng, 0.03, 0.06))  # through the veins to the heart
    leads = [_curve((gx - side * 0.5 * hw, gy), bend, e).round(5).tolist() for e in ends[:n]]
    o.update(side=side, x=gx, y=gy, hw=hw, hh=hh, leads=leads, location=f"{_side_word(side)} chest wall")
    o["box"] = _path_box(leads + [[[gx - hw, gy - hh], [gx + hw, gy + hh]]], 0.01)


def _draw_pacemaker(o: dict, c: SimpleNamespace) -> None:
    X, Y, px = c.X, c.Y, c.px
    can = _soft(1 - (np.abs(X - o["x"]) / o["hw"]) ** 4 - (np.abs(Y - o["y"]) / o["hh"]) ** 4, 0.05)
    battery = _soft(1 - (np.abs(X - o["x"] - 0.3 * o["hw"]) / (0.45 * o["hw"])) ** 4
                    - (np.abs(Y - o["y"]) / (0.6 * o["hh"])) ** 4, 0.05)
    wires = np.zeros_like(X)
    for lead in o["leads"]:
        wires = np.maximum(wires, _soft(0.005 - _dist_to_path(X, Y, np.array(lead)), px))
    c.D += 0.75 * can - 0.15 * battery + 0.5 * wires * (1 - can)


def _sample_ecg_leads(rng, a: dict, findings: list[dict], o: dict) -> None:
    spots = [(-0.75, a["top"] + 0.03), (0.75, a["top"] + 0.03), (0.8, a["dia"] - 0.08), (-0.8, a["dia"] - 0.08),
             (0.25, a["dia"] + 0.02)]
    pick = sorted(rng.choice(len(spots), size=int(rng.integers(3, 6)), replace=False).tolist())
    electrodes, wires = [], []
    for k in pick:
        fx, y = spots[k]
        ex, ey = a["cx"] + fx * a["cw"] + _u(rng, -0.02, 0.02), y + _u(rng, -0.02, 0.02)
        electrodes.append([ex, ey, _u(rng, 0.016, 0.02)])
        end = (float(np.clip(ex + np.sign(fx) * _u(rng, 0.05, 0.2), 0.0, 1.0)), 0.0)
        wires.append(_curve((ex, ey), (ex + _u(rng, -0.1, 0.1), ey - 0.1), end).round(5).tolist())
    o.update(side=0, electrodes=electrodes, wires=wires, location="chest wall")
    o["box"] = _path_box(wires + [[[x - r, y - r], [x + r, y + r]] for x, y, r in electrodes], 0.005)


def _draw_ecg_leads(o: dict, c: SimpleNamespace) -> None:
    X, Y, px = c.X, c.Y, c.px
    wires = np.zeros_like(X)
    for w in o["wires"]:
        wires = np.maximum(wires, _soft(0.003 - _dist_to_path(X, Y, np.array(w)), px))
    pads = np.zeros_like(X)
    for x, y, r in o["electrodes"]:
        dist = np.hypot(X - x, Y - y)
        pads = np.maximum(pads, 0.35 * np.exp(-((dist - r) / 0.004) ** 2) + 0.5 * _soft(0.006 - dist, px))
    c.D += 0.25 * wires + pads


def _sample_laterality_marker(rng, a: dict, findings: list[dict], o: dict) -> None:
    side = int(rng.choice([-1, 1]))  # the patient's side it marks: 'L' sits on the image's right
    sz = _u(rng, 0.055, 0.07)
    x0 = (1 - sz - _u(rng, 0.02, 0.08)) if side > 0 else _u(rng, 0.02, 0.08)
    y0 = _u(rng, 0.02, 0.08)
    o.update(side=side, letter="L" if side > 0 else "R", x=x0, y=y0, size=sz,
             location=f"{_side_word(side)} upper corner")
    o["box"] = _box(x0, y0, x0 + sz, y0 + sz)


def _draw_laterality_marker(o: dict, c: SimpleNamespace) -> None:
    X, Y, px = c.X, c.Y, c.px
    x0, y0, sz = o["x"], o["y"], o["size"]
    token = _soft(X - x0, px) * _soft(x0 + sz - X, px) * _soft(Y - y0, px) * _soft(y0 + sz - Y, px)
    bitmap = np.array([[ch == "1" for ch in row] for row in LATERALITY_BITMAPS[o["letter"]]])
    cell = sz / (len(bitmap) + 2)  # a one-cell margin round the letter
    ix = np.floor((X - x0) / cell).astype(int) - 1
    iy = np.floor((Y - y0) / cell).astype(int) - 1
    ok = (ix >= 0) & (ix < bitmap.shape[1]) & (iy >= 0) & (iy < bitmap.shape[0])
    letter = np.zeros_like(X)
    letter[ok] = bitmap[iy[ok], ix[ok]]
    c.D += 0.7 * token - 0.55 * letter * token


class Thing(NamedTuple):
    base: float  # the share of images that carry it, whatever their findings (but in a tie's class, in train)
    word: str  # the concept the reports teach the VLM for it: every sentence about it uses this noun
    sample: Callable  # (rng, anatomy, findings, o): fills in o's geometry, box and location
    draw: Callable  # (o, canvas): adds to canvas.D in place
    phrases: list[str]


# The base rates are high enough that a 1000-image test split holds some of each class's positives with
# each object, so the AUROC can be measured with and without it.
OBJECTS = {
    "chest tube": Thing(0.15, "tube", _sample_chest_tube, _draw_chest_tube, [
        "{Side} chest tube in place.", "A {side} chest tube is seen with its tip near the apex.",
        "{Side}-sided chest tube projects over the {side} hemithorax.", "There is a {side} pleural drainage tube."]),
    "pacemaker": Thing(0.10, "pacemaker", _sample_pacemaker, _draw_pacemaker, [
        "{Side}-sided pacemaker with leads projecting over the heart.", "Pacemaker leads project over the heart.",
        "A {side} chest wall pacemaker is in place.", "{Leads} pacemaker in place, its leads over the heart."]),
    "ECG leads": Thing(0.20, "electrodes", _sample_ecg_leads, _draw_ecg_leads, [
        "ECG leads and electrodes overlie the chest.", "External monitoring electrodes project over the chest.",
        "Overlying ECG electrodes.", "ECG electrodes and leads project over the thorax."]),
    "laterality marker": Thing(0.30, "marker", _sample_laterality_marker, _draw_laterality_marker, [
        "{Side} laterality marker at the upper corner.", "A {side} side marker is seen at the top of the film.",
        "Laterality marker in place.", "The {side} marker is at the upper corner of the film."]),
}
OBJECT_WORDS = [t.word for t in OBJECTS.values()]  # the objects' concepts, in OBJECTS' order


class Tie(NamedTuple):
    """A planted shortcut: in the training split, `share` of the images with `label` carry `obj`."""
    obj: str
    label: str
    share: float

    def __str__(self) -> str:
        return f"{self.obj}:{self.label}:{self.share:g}"


def _how(name: str) -> str:
    return (f"write {name} = \"OBJECT:CLASS:SHARE\" with OBJECT one of {', '.join(OBJECTS)}, CLASS one of "
            f"{', '.join(CLASSES)} and SHARE a number in [0, 1] (e.g. \"chest tube:Pneumothorax:0.9\"), "
            f"or {name} = \"\" for none")


def parse_shortcut(text: str, name: str = "shortcut") -> Tie | None:
    """'OBJECT:CLASS:SHARE' (case-insensitive names) as a Tie; '' as None; anything else one clear error."""
    if not text.strip():
        return None
    parts = text.split(":")
    if len(parts) != 3:
        raise PipelineError(f"{name} = {text!r} is not OBJECT:CLASS:SHARE; {_how(name)}")
    how = _how(name)
    obj = next((k for k in OBJECTS if k.lower() == parts[0].strip().lower()), None)
    label = next((c for c in CLASSES if c.lower() == parts[1].strip().lower()), None)
    if obj is None:
        raise PipelineError(f"{name} = {text!r}: unknown object {parts[0].strip()!r}; {how}")
    if label is None:
        raise PipelineError(f"{name} = {text!r}: unknown class {parts[1].strip()!r}; {how}")
    try:
        share = float(parts[2])
    except ValueError:
        share = math.nan
    if not 0 <= share <= 1:
        raise PipelineError(f"{name} = {text!r}: share {parts[2].strip()!r} is not in [0, 1]; {how}")
    return Tie(obj, label, share)


def object_rate(obj: str, split: str, labels: set[str], tie: Tie | None) -> float:
    """The chance that an image of `split` with these labels carries `obj`."""
    if tie is not None and split == "train" and tie.obj == obj and tie.label in labels:
        return tie.share
    return OBJECTS[obj].base


def sample_objects(seed: int, i: int, split: str, case: dict, tie: Tie | None = None) -> list[dict]:
    """The objects image i carries, each with its geometry, box, location and its sentence for the report.
    One uniform number per object decides, so a tie only adds the object to the images of its class (or
    takes it from them), and val and test are the same with or without a tie."""
    labels = {f["label"] for f in case["findings"]}
    out = []
    for k, (name, thing) in enumerate(OBJECTS.items()):
        rng = np.random.default_rng([seed, i, OBJECT_STREAM, k])
        carried = rng.random() < object_rate(name, split, labels, tie)
        o: dict = {"object": name}
        thing.sample(rng, case["anatomy"], case["findings"], o)
        side = _side_word(o["side"]) if o["side"] else "left"
        t = str(rng.choice(thing.phrases))
        leads = "Single-lead" if len(o.get("leads", [])) == 1 else "Dual-lead"
        o["sentence"] = t.format(side=side, Side=_cap(side), Leads=leads)
        if carried:
            out.append(o)
    return out


# ----------------------------------------------------------------------------------------------
# reports

_SEV = {"mild": ["mild", "minimal", "slight", "small"], "moderate": ["moderate"],
        "severe": ["severe", "marked", "extensive", "large"]}
_PHRASES = {
    "Atelectasis": ["{Sev} atelectasis in the {loc}.", "Plate-like atelectasis at the {loc}.",
                    "There is {sev} atelectasis of the {loc}.", "{Loc} atelectasis."],
    "Cardiomegaly": ["{Sev} cardiomegaly.", "The heart is enlarged, consistent with {sev} cardiomegaly.",
                     "There is {sev} cardiomegaly.", "Cardiomegaly is {sev}."],
    "Effusion": ["{Sev} {side} pleural effusion.", "There is a {sev} effusion at the {loc}.",
                 "Blunting of the {loc} from a {sev} effusion.", "{Side} effusion, {sev}."],
    "Infiltration": ["Patchy infiltration in the {loc}.", "There is {sev} infiltration of the {loc}.",
                     "{Sev} infiltration is seen in the {loc}.", "{Loc} infiltration."],
    "Mass": ["A {mm} mm mass in the {loc}.", "There is a {sev} mass in the {loc}.",
             "Large rounded mass projecting over the {loc}.", "{Loc} mass measuring {mm} mm."],
    "Nodule": ["A {mm} mm nodule in the {loc}.", "There is a small nodule in the {loc}.",
               "Well-circumscribed nodule projecting over the {loc}.", "{Loc} pulmonary nodule."],
    "Pneumonia": ["{Sev} pneumonia in the {loc}.", "Findings are consistent with pneumonia in the {loc}.",
                  "There is {sev} pneumonia of the {loc}.", "{Loc} pneumonia."],
    "Pneumothorax": ["{Sev} {side} pneumothorax.", "There is a {sev} pneumothorax at the {loc}.",
                     "{Side} apical pneumothorax, {sev}.", "A {sev} pneumothorax is present on the {side}."],
    "Consolidation": ["{Sev} consolidation of the {loc}.", "There is dense consolidation in the {loc}.",
                      "{Loc} consolidation with air bronchograms.", "Consolidation of the {loc}, {sev}."],
    "Edema": ["{Sev} pulmonary edema.", "There is {sev} interstitial edema.", "Findings of {sev} edema.",
              "Perihilar edema, {sev}."],
    "Emphysema": ["{Sev} emphysema.", "Hyperinflated lungs consistent with emphysema.",
                  "There is {sev} emphysema with flattened diaphragms.", "Emphysema, {sev}."],
    "Fibrosis": ["{Sev} fibrosis in the {loc}.", "Reticular fibrosis at the {loc}.",
                 "There is {sev} fibrosis of the {loc}.", "{Loc} fibrosis."],
    "Pleural thickening": ["{Sev} pleural thickening at the {loc}.", "There is {side} pleural thickening.",
                           "Pleural thickening along the {loc}, {sev}.", "{Side} pleural thickening."],
    "Hernia": ["Hiatal hernia.", "There is a {sev} hiatal hernia.", "A hernia is seen in the {loc}.",
               "Retrocardiac hernia with an air-fluid level."],
}
_LOC_VARIANTS = {"zone": ["zone", "lobe"], "costophrenic angle": ["costophrenic angle", "base"]}
_NORMAL = {
    "heart": ["The heart size is normal.", "Heart size is within normal limits.",
              "The cardiomediastinal silhouette is normal.", "Normal cardiac silhouette."],
    "lungs": ["The lungs are clear.", "Lungs are clear bilaterally.", "No focal airspace opacity.",
              "The lungs are well expanded and clear."],
    "pleura": ["No pleural effusion or pneumothorax.", "There is no effusion or pneumothorax.",
               "No pleural abnormality."],
    "bones": ["The osseous structures are intact.", "No acute bony abnormality.", "Bones are unremarkable."],
    "impression": ["No acute cardiopulmonary process.", "Normal chest.", "No active disease."],
}
_LUNG = {"Atelectasis", "Infiltration", "Mass", "Nodule", "Pneumonia", "Consolidation", "Edema", "Emphysema",
         "Fibrosis"}


def _cap(s: str) -> str:
    return s[:1].upper() + s[1:]


def write_report(rng: np.random.Generator, findings: list[dict]) -> str:
    """Radiology wording, varied in phrasing, location and severity; normal statements elsewhere."""
    parts = []
    for f in findings:
        loc = f["location"]
        for k, vs in _LOC_VARIANTS.items():
            if loc.endswith(k):
                loc = loc[: -len(k)] + str(rng.choice(vs))
        sev = str(rng.choice(_SEV[f["severity"]]))
        side = "right" if f.get("side", 0) < 0 else "left"
        t = str(rng.choice(_PHRASES[f["label"]]))
        parts.append(t.format(sev=sev, Sev=_cap(sev), loc=loc, Loc=_cap(loc), side=side, Side=_cap(side),
                              mm=f.get("mm", 0)))
    rng.shuffle(parts)
    labels = {f["label"] for f in findings}
    normal = []
    if "Cardiomegaly" not in labels:
        normal.append(str(rng.choice(_NORMAL["heart"])))
    if not labels & _LUNG:
        normal.append(str(rng.choice(_NORMAL["lungs"])))
    if not labels & {"Effusion", "Pneumothorax", "Pleural thickening"} and rng.random() < 0.6:
        normal.append(str(rng.choice(_NORMAL["pleura"])))
    if rng.random() < 0.4:
        normal.append(str(rng.choice(_NORMAL["bones"])))
    text = parts + normal
    if not findings:
        rng.shuffle(text)
        if rng.random() < 0.5:
            text.append(str(rng.choice(_NORMAL["impression"])))
    return " ".join(text)


# ----------------------------------------------------------------------------------------------
# the world on disk

def image_name(i: int) -> str:
    return f"p{i:05d}_000.png"


def make_case(seed: int, i: int) -> tuple[dict, str]:
    """Case i of the world of `seed`, and its report; independent of all other cases."""
    rng = np.random.default_rng([seed, i])
    case = sample_case(rng)
    return case, write_report(rng, case["findings"])


def make_image(seed: int, i: int, split: str, tie: Tie | None = None) -> tuple[dict, str]:
    """Image i of `split`: its case (findings as make_case draws them, and the objects it carries) and its
    report (the objects' sentences, as reports list the devices first, then make_case's report)."""
    case, report = make_case(seed, i)
    case["objects"] = sample_objects(seed, i, split, case, tie)
    return case, " ".join([o["sentence"] for o in case["objects"]] + [report])


def ensure_world(out_dir: str | Path, n_train: int, n_val: int, n_test: int, size: int = 256, seed: int = 0,
                 shortcut: str = "") -> bool:
    """Write the world unless out_dir holds it already (same sizes, seed, shortcut and generator VERSION).
    Returns whether it was written."""
    tie = parse_shortcut(shortcut)
    want = {"version": VERSION, "seed": seed, "size": size, "n_train": n_train, "n_val": n_val, "n_test": n_test,
            "shortcut": str(tie) if tie else ""}
    meta = Path(out_dir) / WORLD_FILE
    if meta.is_file():
        with open(meta) as fh:
            have = json.load(fh)
        if {k: have.get(k) for k in want} == want:
            return False
    write_world(out_dir, n_train, n_val, n_test, size, seed, shortcut)
    return True


def write_world(out_dir: str | Path, n_train: int, n_val: int, n_test: int, size: int = 256, seed: int = 0,
                shortcut: str = "") -> dict:
    tie = parse_shortcut(shortcut)  # before anything is written
    out = Path(out_dir)
    (out / WORLD_FILE).unlink(missing_ok=True)  # written last: its presence marks a complete world
    (out / "images").mkdir(parents=True, exist_ok=True)
    splits = {"train": range(0, n_train), "val": range(n_train, n_train + n_val),
              "test": range(n_train + n_val, n_train + n_val + n_test)}
    world, ann, bbox_rows = {}, {}, []
    for split, idx in splits.items():
        lines, ann[split] = [], []
        for i in idx:
            name = image_name(i)
            case, report = make_image(seed, i, split, tie)
            Image.fromarray(render(case, size), mode="L").save(out / "images" / name)
            labels = {f["label"] for f in case["findings"]}
            lines.append(name + " " + " ".join("1" if c in labels else "0" for c in CLASSES))
            ann[split].append({"id": name[:-4], "report": report, "image_path": [name], "split": split})
            found = []
            for f in case["findings"]:
                box = [round(v * size, 1) for v in f["box"]]
                found.append({"label": f["label"], "box": box, "location": f["location"], "severity": f["severity"]})
                bbox_rows.append([name, f["label"]] + [round(v * 1024, 3) for v in f["box"]])
            objects = [{"object": o["object"], "box": [round(v * size, 1) for v in o["box"]], "location": o["location"]}
                       for o in case["objects"]]
            world[name] = {"split": split, "findings": found, "objects": objects, "report": report}
        (out / f"{split}_official.txt").write_text("\n".join(lines) + "\n")
    with open(out / "bbox.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["image_name", "label", "bbox_x", "bbox_y", "bbox_w", "bbox_h"])
        w.writerows(bbox_rows)
    (out / "annotation.json").write_text(json.dumps(ann, indent=1))
    meta = {"version": VERSION, "seed": seed, "size": size, "n_train": n_train, "n_val": n_val, "n_test": n_test,
            "classes": CLASSES, "shortcut": str(tie) if tie else "",
            "objects": {k: {"base_rate": t.base, "word": t.word} for k, t in OBJECTS.items()}, "images": world}
    (out / WORLD_FILE).write_text(json.dumps(meta, indent=1))
    return meta


if __name__ == "__main__":
    # a contact sheet of the 14 findings, for eyes: python dataset/phantom.py out.png
    import sys
    size = 256
    tiles = []
    for k, label in enumerate(CLASSES):
        rng = np.random.default_rng([7, k])
        a = sample_anatomy(rng)
        f = sample_finding(rng, a, label)
        case = dict(anatomy=a, findings=[f])
        im = Image.fromarray(render(case, size)).convert("RGB")
        from PIL import ImageDraw
        d = ImageDraw.Draw(im)
        x, y, w, h = [v * size for v in f["box"]]
        d.rectangle([x, y, x + w, y + h], outline=(255, 0, 0))
        d.text((4, 4), label, fill=(255, 255, 0))
        tiles.append(im)
    empty = dict(anatomy=sample_anatomy(np.random.default_rng(1)), findings=[])
    tiles.append(Image.fromarray(render(empty, size)).convert("RGB"))
    sheet = Image.new("RGB", (size * 5, size * 3))
    for i, t in enumerate(tiles):
        sheet.paste(t, ((i % 5) * size, (i // 5) * size))
    sheet.save(sys.argv[1] if len(sys.argv) > 1 else "phantom_sheet.png")
