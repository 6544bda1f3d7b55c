"""A target's AUROC for one class on the images that carry an object and on those that do not.

Within each stratum the object is the same on every image, so there the AUROC measures what the target
reads besides the object: a target that learnt a shortcut ranks the stratum's images by the object less
and by the finding less well. (The audit's hidden stratification, mammi/audit.py, sets the positives with
and without a concept against all negatives instead; this one follows the world's known objects.)
"""
from __future__ import annotations

import math

import numpy as np
from sklearn.metrics import roc_auc_score

N_BOOT = 1000  # bootstrap resamples of each stratum for the confidence intervals
CI_LEVEL = 0.95  # the intervals' coverage


def auroc_with_without(y, score, has, n_boot: int = N_BOOT, seed: int = 0, level: float = CI_LEVEL) -> dict:
    """The AUROC of `score` for the 0/1 labels y on the images that carry the object (has) and on those that do not,
    the gap (without minus with), and percentile bootstrap intervals of each and of the gap (each stratum
    resampled apart). NaN where a stratum lacks positives or negatives."""
    y, score, has = np.asarray(y).astype(int), np.asarray(score, float), np.asarray(has).astype(bool)
    rng = np.random.default_rng(seed)
    out: dict = {}
    boots = {}
    for key, mask in (("with", has), ("without", ~has)):
        yy, ss = y[mask], score[mask]
        out[f"n_pos_{key}"], out[f"n_neg_{key}"] = int(yy.sum()), int(len(yy) - yy.sum())
        out[f"auroc_{key}"] = _auroc(yy, ss)
        b = np.full(n_boot, np.nan)
        if np.isfinite(out[f"auroc_{key}"]):
            for i in range(n_boot):
                idx = rng.integers(0, len(yy), len(yy))
                b[i] = _auroc(yy[idx], ss[idx])
        boots[key] = b
    out["gap"] = out["auroc_without"] - out["auroc_with"]
    boots["gap"] = boots["without"] - boots["with"]
    tail = 100 * (1 - level) / 2
    for key, b in boots.items():
        ok = b[np.isfinite(b)]
        ci = [float(np.percentile(ok, tail)), float(np.percentile(ok, 100 - tail))] if len(ok) else [math.nan, math.nan]
        out[f"ci_{key}" if key != "gap" else "ci"] = ci
    return out


def _auroc(y: np.ndarray, s: np.ndarray) -> float:
    return float(roc_auc_score(y, s)) if 0 < y.sum() < len(y) else float("nan")
