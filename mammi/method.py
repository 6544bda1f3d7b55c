"""The method on one screen (README, "The method in one screen"): example selection, concept
scores, concept selection and the fc metrics.

Kept apart from the steps so the tests can check each formula against a plain re-implementation.
"""
from __future__ import annotations

import numpy as np
import torch

from dataset.concepts import TEMPLATE  # T, with the concept sets (the steps' output paths need it too)


def adaptive_threshold(a: torch.Tensor, percent: float) -> torch.Tensor:
    """threshold_k = max(a) - (max(a) - min(a)) * (1 - p/100), per column of a [N, K]."""
    hi, lo = a.max(0).values, a.min(0).values
    return hi - (hi - lo) * (1 - percent / 100)


def ranked(acts: torch.Tensor) -> torch.Tensor:
    """Image indices [N, K] of each neuron in descending activation, ties in probe order."""
    # each neuron's column is sorted as one contiguous row: twice as fast as sorting along dim 0
    return torch.sort(acts.T.contiguous(), dim=1, descending=True, stable=True).indices.T


def select_examples(acts: torch.Tensor, selection: str = "adaptive", percent: float = 93.0,
                    topk: int = 20, block: int = 64) -> list[dict]:
    """Per neuron: its threshold, whether it is dead (constant over the probing set) and its example
    indices in descending activation (ties by probe order). Adaptive keeps a_i > threshold; topk the k
    largest. A dead neuron gets no examples. Neurons are taken `block` at a time: the float64 copy and
    the sort of NIH train's 75,312 images x 1,024 neurons would otherwise take 1.8 GB at once."""
    if selection not in ("adaptive", "topk"):
        raise ValueError(f"selection must be adaptive or topk, not {selection!r}")
    out = []
    for lo in range(0, acts.shape[1], block):
        a = acts[:, lo:lo + block].double()
        thr = adaptive_threshold(a, percent)
        dead = (a.max(0).values == a.min(0).values).tolist()
        order = ranked(a)
        above = (a > thr).sum(0).tolist()  # in descending order, the images above come first
        for j in range(a.shape[1]):
            if dead[j]:
                idx = []
            elif selection == "adaptive":
                idx = order[:above[j], j].tolist()
            else:
                idx = order[:topk, j].tolist()
                thr[j] = a[idx[-1], j]
            out.append({"neuron": lo + j, "threshold": float(thr[j]), "dead": bool(dead[j]), "examples": idx})
    return out


def prompts(concepts: list[str], template: str | None = TEMPLATE) -> list[str]:
    """The strings the VLM embeds: template + " " + concept, or the bare concept without a template."""
    return [f"{template} {c}" if template else c for c in concepts]


def image_concept_scores(img: torch.Tensor, text: torch.Tensor, template: torch.Tensor | None) -> torch.Tensor:
    """s(x, c) for every image x [U, D] and concept c [C, D]: cosine, minus cos(x, template) when adaptive."""
    img = torch.nn.functional.normalize(img.double(), dim=-1)
    s = img @ torch.nn.functional.normalize(text.double(), dim=-1).T
    if template is not None:
        s = s - img @ torch.nn.functional.normalize(template.double(), dim=-1)[:, None]
    return s


def neuron_concept_scores(s: torch.Tensor, examples: list[list[int]]) -> torch.Tensor:
    """S(k, c) = sum over the examples x of neuron k of s(x, c); examples index rows of s."""
    members = torch.zeros(len(examples), s.shape[0], dtype=s.dtype)
    for k, idx in enumerate(examples):
        members[k, idx] = 1.0
    return members @ s


def alpha_cut(S_k: torch.Tensor, alpha: float = 95.0) -> torch.Tensor:
    """The score a concept of neuron k must exceed: (alpha/100) * max S."""
    return alpha / 100 * S_k.max()


def select_concepts(S_k: torch.Tensor, alpha: float = 95.0) -> list[int]:
    """Concepts with S above the alpha cut, in descending S. None when max S <= 0."""
    if S_k.max() <= 0:
        return []
    idx = torch.nonzero(S_k > alpha_cut(S_k, alpha)).flatten()
    return idx[torch.sort(S_k[idx], descending=True, stable=True).indices].tolist()


def name_neuron(neuron: dict, S_k: torch.Tensor, concepts: list[str], alpha: float = 95.0) -> dict:
    """A neuron's record in concepts.json: its concepts (with S) and its status, ok, none (no score above
    zero, as for a neuron without examples: its S is 0) or dead (constant over the probing set)."""
    chosen = select_concepts(S_k, alpha)
    status = "dead" if neuron["dead"] else ("ok" if chosen else "none")
    return {"neuron": neuron["neuron"], "n_examples": len(neuron["examples"]), "status": status,
            "concepts": [{"concept": concepts[c], "score": float(S_k[c])} for c in chosen]}


def mammi(neurons: torch.Tensor | list[dict], img: torch.Tensor, text: torch.Tensor, template: torch.Tensor | None,
          concepts: list[str], alpha: float = 95.0, selection: str = "adaptive", percent: float = 93.0,
          topk: int = 20) -> dict:
    """The method end to end. neurons: activations [N, K] over the images img [N, D], or select_examples'
    records with examples as rows of img. Returns the examples, s(x, c) [N, C], S(k, c) [K, C] and each
    neuron's record (name_neuron). S is float32, as similarity.pt stores it and concepts are selected from."""
    ex = select_examples(neurons, selection, percent, topk) if isinstance(neurons, torch.Tensor) else neurons
    s = image_concept_scores(img, text, template)
    S = neuron_concept_scores(s, [n["examples"] for n in ex]).float()
    return {"examples": ex, "s": s, "S": S, "neurons": [name_neuron(n, S_k, concepts, alpha) for n, S_k in zip(ex, S)]}


def fc_metrics(concepts: list[list[str]], class_names: list[str]) -> dict:
    """Hit rate and per-neuron precision/recall/F1 against {lower-cased class name}, mean ± std/sqrt(N)."""
    truth = [c.lower() for c in class_names]
    hit, p, r, f = [], [], [], []
    for got, want in zip(concepts, truth):
        tp = float(want in got)
        prec = tp / len(got) if got else 0.0
        rec = tp
        hit.append(tp)
        p.append(prec)
        r.append(rec)
        f.append(2 * prec * rec / (prec + rec) if prec + rec > 0 else 0.0)
    return {name: mean_se(v) for name, v in (("hit_rate", hit), ("precision", p), ("recall", r), ("f1", f))}


def mean_se(values) -> dict:
    v = np.asarray(values, dtype=float)
    return {"mean": float(v.mean()), "se": float(v.std() / np.sqrt(len(v))), "n": int(len(v))}
