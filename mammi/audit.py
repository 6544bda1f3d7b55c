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


# A class's own words besides its name and the name's words: forms and synonyms the reports and the
# concept sets use for the finding itself. A concept among them is the finding, never a shortcut.
CLASS_WORDS = {
    "Atelectasis": ["atelectases", "collapse"],
    "Cardiomegaly": ["cardiomegalies", "enlargement"],
    "Effusion": ["effusions", "fluid"],
    "Infiltration": ["infiltrate", "infiltrates", "infiltrations"],
    "Mass": ["masses", "tumor", "tumour"],
    "Nodule": ["nodules", "nodularity"],
    "Pneumonia": ["pneumonias"],
    "Pneumothorax": ["pneumothoraces"],
    "Consolidation": ["consolidations"],
    "Edema": ["oedema", "edemas"],
    "Emphysema": ["emphysemas", "hyperinflation", "bullae"],
    "Fibrosis": ["fibroses", "scarring"],
    "Pleural thickening": ["thickenings"],
    "Hernia": ["hernias"],
}


def own_words(cls: str, table: dict[str, list[str]] | None = None) -> set[str]:
    """The class's own words (lower case): its name, each word of its name, and its entry in the table."""
    table = CLASS_WORDS if table is None else table
    name = cls.lower()
    return {name, *name.split(), *(w.lower() for w in table.get(cls, []))}


def is_flagged(own: bool, share: float, z: float | None, share_min: float, z_min: float = 2.0) -> bool:
    """The flag rule: not one of the class's own words, a share above share_min and z >= z_min (no z: no flag)."""
    return (not own) and share > share_min and z is not None and z >= z_min


def random_sets(n_neurons: int, size: int, draws: int, seed: int = 0) -> list[list[int]]:
    """`draws` random sets of `size` distinct neurons among n_neurons, reproducible from the seed."""
    g = torch.Generator().manual_seed(seed)
    return [torch.randperm(n_neurons, generator=g)[:size].tolist() for _ in range(draws)]


def linear_z(contrib: torch.Tensor, members: list[int], sets: list[list[int]]) -> float | None:
    """On the linear path the drop of a class's logit when neurons are zeroed is the sum of their
    contributions (contrib [J], mean_contribution's row): z = (drop of `members` - mean drop of the random
    `sets`) / their SD (n - 1). None when the random drops do not vary."""
    drops = torch.stack([contrib[list(s)].sum() for s in sets]).double()
    sd = float(drops.std(correction=1)) if len(sets) > 1 else 0.0
    return (float(contrib[members].sum()) - float(drops.mean())) / sd if sd > 0 else None


def audit_class(contrib: torch.Tensor, neuron_concepts: list[list[str]], own: set[str], share_min: float,
                z_min: float = 2.0, draws: int = 200, seed: int = 0) -> list[dict]:
    """One class's concepts ranked by share of its logit: contrib [J] (mean_contribution's row for the class),
    neuron_concepts[j] the concepts neuron j carries, own the class's own words. Each concept's neurons are
    set against `draws` random sets of as many neurons (linear_z); the flag rule decides."""
    total = contrib.sum()
    members: dict[str, list[int]] = {}
    for j, names in enumerate(neuron_concepts):
        for c in dict.fromkeys(names):
            members.setdefault(c, []).append(j)
    rows = []
    for c, js in members.items():
        share = float(contrib[js].sum() / total)
        z = linear_z(contrib, js, random_sets(len(contrib), len(js), draws, seed))
        is_own = c.lower() in own
        rows.append(dict(concept=c, n_neurons=len(js), share=share, z=z, own=is_own,
                         flagged=is_flagged(is_own, share, z, share_min, z_min)))
    return sorted(rows, key=lambda r: -r["share"])


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
