"""What a class's output rests on, and which of those concepts may be shortcuts: pure functions of tensors.

At a layer under a linear head (logit_k = sum_j W[k, j] a_j + b_k), neuron j's contribution to class k's
logit on an image is W[k, j] a_j, so the contributions of all neurons sum to the logit minus the bias.
Averaged over the held-out positives of k and summed over the neurons that carry a concept, they give the
concept's part of the logit; its share is that part over the sum of all neurons' parts. A concept that is
not one of the class's own words, has a share above a threshold and whose neurons, ablated together, move
the logit at least `z_min` standard deviations more than random sets of as many neurons do, is flagged as
a possible shortcut. Hidden stratification is then measured: the class AUROC on images with the concept
against those without it, each with a bootstrap confidence interval.
"""
from __future__ import annotations

import numpy as np
import torch
from sklearn.metrics import roc_auc_score

N_BOOT = 1000  # bootstrap resamples of each stratum for the AUROC's confidence interval
CI_LEVEL = 0.95  # the interval's coverage


def contributions(acts: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """acts [N, J] (the layer's activations on N images), weight [K, J] (the linear head): each neuron's
    contribution to each class's logit on each image, [N, K, J] = W[k, j] * a[n, j]; summed over j it is
    the logit minus the bias."""
    return acts[:, None, :] * weight[None, :, :]


def mean_contribution(acts: torch.Tensor, weight: torch.Tensor, positives: torch.Tensor) -> torch.Tensor:
    """[K, J]: neuron j's mean contribution to class k's logit over the images positive for k
    (positives [N, K] 0/1). A class without positives gets NaN."""
    pos = positives.to(acts.dtype)
    n = pos.sum(0)  # [K]
    # sum_n pos[n, k] * a[n, j], without the [N, K, J] tensor
    mean_act = (pos.T @ acts) / n[:, None]
    return weight * mean_act


def concept_parts(contrib: torch.Tensor, neuron_concepts: list[list[str]]) -> dict[str, torch.Tensor]:
    """contrib [K, J] (mean_contribution); neuron_concepts[j]: the concepts neuron j carries. Per concept,
    the sum of its neurons' contributions, [K]; a neuron that carries two concepts counts in both."""
    parts: dict[str, torch.Tensor] = {}
    for j, names in enumerate(neuron_concepts):
        for c in dict.fromkeys(names):
            parts[c] = parts.get(c, torch.zeros(contrib.shape[0], dtype=contrib.dtype)) + contrib[:, j]
    return parts


def shares(contrib: torch.Tensor, neuron_concepts: list[list[str]]) -> dict[str, torch.Tensor]:
    """Each concept's part of each class's logit over the whole (minus the bias): concept_parts / sum_j contrib."""
    total = contrib.sum(1)  # [K]
    return {c: part / total for c, part in concept_parts(contrib, neuron_concepts).items()}


def is_flagged(own: bool, share: float, z: float, share_min: float, z_min: float = 2.0) -> bool:
    """The flag rule: not one of the class's own words, a share above share_min and z >= z_min."""
    return (not own) and share > share_min and z >= z_min


def stratified_auroc(y, score, has, n_boot: int = N_BOOT, seed: int = 0, level: float = CI_LEVEL) -> dict:
    """The AUROC of `score` for the 0/1 labels y on the images with the concept (has) and on those without,
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
        out[f"ci_{key}" if key != "gap" else "ci"] = ([float(np.percentile(ok, tail)), float(np.percentile(ok, 100 - tail))]
                                                      if len(ok) else [float("nan"), float("nan")])
    return out


def _auroc(y: np.ndarray, s: np.ndarray) -> float:
    return float(roc_auc_score(y, s)) if 0 < y.sum() < len(y) else float("nan")
