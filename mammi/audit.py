"""What a class's output rests on, and which of those concepts may be shortcuts (docs/audit.md): pure
functions of tensors. The ablation statistic (mammi/ablation.py) does the counting: a concept's neurons
are one set, zeroed together, against random sets of as many live neurons.

  concept_neurons   each concept named at a layer, with the live neurons that carry it;
  own_words         a class's own words: its name, the name's words and CLASS_WORDS' entry;
  evidence_for      what pushes a class's logit up: the sum of its channels' positive contributions;
  concept_row       one concept's line for one class: its share of that evidence, z and the flag;
  seen              which images the VLM sees a concept in: the concept among the image's top-scored;
  stratified_auroc  the class's AUROC on its positives with the concept and on those without, each
                    against all its negatives, with a stratified bootstrap interval of each and of the gap.
"""
from __future__ import annotations

import numpy as np
import torch
from scipy.stats import rankdata

from dataset.probe import label_key
from mammi.method import image_concept_scores

# A class's own words besides its name and the words of its name: forms and synonyms radiology reports
# use for the finding itself. A concept among them is the finding, never a shortcut. Kept short on
# purpose: a word listed here can never be flagged for that class.
CLASS_WORDS = {
    "Atelectasis": ["atelectases", "atelectatic", "collapse"],
    "Cardiomegaly": ["heart", "cardiac", "enlargement"],
    "Effusion": ["effusions", "fluid", "pleural"],
    "Infiltration": ["infiltrate", "infiltrates", "infiltrations"],
    "Mass": ["masses", "tumor", "tumour"],
    "Nodule": ["nodules", "nodular"],
    "Pneumonia": ["pneumonias", "infection"],
    "Pneumothorax": ["pneumothoraces"],
    "Consolidation": ["consolidations"],
    "Edema": ["oedema", "edemas"],
    "Emphysema": ["hyperinflation", "bullae"],
    "Fibrosis": ["fibroses", "scarring"],
    "Pleural thickening": ["thickenings"],
    "Hernia": ["hernias"],
}


def concept_neurons(records: list[dict]) -> dict[str, list[int]]:
    """Each concept of a concepts.json's live neurons (status other than dead), with the neurons that carry
    it, in the order the concepts first appear; a neuron with two concepts is in both sets."""
    out: dict[str, list[int]] = {}
    for r in records:
        if r.get("status") == "dead":
            continue
        for c in dict.fromkeys(c["concept"] for c in r["concepts"]):
            out.setdefault(c, []).append(r["neuron"])
    return out


def own_words(cls: str, table: dict[str, list[str]] = CLASS_WORDS) -> set[str]:
    """The class's own words, normalised as labels are (case, spaces, '_' and '-' aside): its name, each
    word of its name, and its entry in the table (looked up by that normalised name)."""
    entry = next((v for k, v in table.items() if label_key(k) == label_key(cls)), [])
    name = label_key(cls)
    return {name, *name.split(), *(label_key(w) for w in entry)}


def concept_row(drop: float, evidence: float, z: float | None, own: bool, share_min: float, z_min: float) -> dict:
    """One concept for one class. drop: the mean fall of the class's logit over its positives when the
    concept's neurons are zeroed; evidence: the evidence the layer gives for the class (evidence_for);
    z: the ablation's z of the concept's neurons (mammi.ablation's finding_stats). share = drop / evidence
    (None when there is none); flagged: not own, share > share_min and z >= z_min."""
    share = drop / evidence if evidence > 0 else None
    flagged = (not own) and share is not None and share > share_min and z is not None and z >= z_min
    return {"share": share, "z": z, "own": own, "flagged": flagged}


def evidence_for(single: torch.Tensor) -> torch.Tensor:
    """[C]: what pushes each class's logit up on its positives, from single [K, C], the mean fall of each
    class's logit when channel k alone is zeroed: the sum of the positive falls. Under a linear head the
    falls are the contributions W[c, k] * mean a_k, so a concept's share of it is bounded by 1 and a
    neuron pulling the logit down cannot make another's share look larger."""
    return single.clamp(min=0).sum(0)


def seen(img: torch.Tensor, text: torch.Tensor, template: torch.Tensor | None, words: list[int],
         top: int) -> torch.Tensor:
    """[N, W] bool: whether each of the concepts `words` (rows of text, the whole concept set) is among the
    `top` concepts the VLM scores highest for each image (the method's score s(x, c), mammi.method)."""
    s = image_concept_scores(img, text, template)
    rank = s.argsort(dim=1, descending=True).argsort(dim=1)  # 0 for an image's best concept
    return rank[:, words] < top


def auroc(pos: np.ndarray, neg: np.ndarray) -> np.ndarray:
    """AUROC of the positives' scores against the negatives', row by row ([B, P] and [B, Q], or 1-d): the
    Mann-Whitney U over P * Q, ties counted half."""
    pos, neg = np.atleast_2d(pos), np.atleast_2d(neg)
    ranks = rankdata(np.concatenate([pos, neg], axis=1), axis=1)
    p = pos.shape[1]
    return (ranks[:, :p].sum(1) - p * (p + 1) / 2) / (p * neg.shape[1])


def stratified_auroc(score: np.ndarray, y: np.ndarray, has: np.ndarray, boot: int, seed: int,
                     level: float = 0.95, min_positives: int = 2) -> dict:
    """Hidden stratification of one class: the AUROC of `score` on its positives (y == 1) that carry the
    concept (has) against all its negatives (y == 0), the same for the positives that do not, and
    gap = with - without. Images with another y (no ground truth) are left out. The interval of each and
    of the gap: percentile bootstrap, the three groups (positives with, positives without, negatives)
    resampled apart, `boot` times from `seed` (0: no intervals); the gap's from the paired resamples.
    A stratum with fewer than min_positives positives, or no negative, has None."""
    score, y, has = np.asarray(score, float), np.asarray(y), np.asarray(has, bool)
    groups = {"with": score[(y == 1) & has], "without": score[(y == 1) & ~has]}
    neg = score[y == 0]
    out = {"n_with": len(groups["with"]), "n_without": len(groups["without"]), "n_negatives": len(neg)}
    rng = np.random.default_rng(seed)
    neg_b = neg[rng.integers(0, len(neg), (boot, len(neg)))] if len(neg) else None
    draws = {}
    for name, pos in groups.items():
        if len(pos) < min_positives or neg_b is None:
            out[f"auroc_{name}"], out[f"ci_{name}"] = None, None
            continue
        out[f"auroc_{name}"] = float(auroc(pos, neg)[0])
        draws[name] = auroc(pos[rng.integers(0, len(pos), (boot, len(pos)))], neg_b)
        out[f"ci_{name}"] = _interval(draws[name], level) if boot else None
    both = len(draws) == 2
    out["gap"] = out["auroc_with"] - out["auroc_without"] if both else None
    out["ci"] = _interval(draws["with"] - draws["without"], level) if both and boot else None
    return out


def _interval(values: np.ndarray, level: float) -> list[float]:
    tail = 100 * (1 - level) / 2
    return [float(np.percentile(values, tail)), float(np.percentile(values, 100 - tail))]
