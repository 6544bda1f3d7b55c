"""The other ways to name a neuron on one screen (docs/describers.md states each formula), beside
MAMMI's method.py, and the truths the probing set gives to score them all.

Every describer scores each neuron k of a layer against each concept c from the same inputs as
MAMMI: the activations A [N, K] of step 2 (a channel's spatial mean), the VLM's L2-normalised
features of the probing images and of the concept prompts, the probing set's labels, or its boxes.
A neuron's name is its best-scoring concept. Plain functions on tensors, so that the tests can
check each against a loop written from docs/describers.md.
"""
from __future__ import annotations

import math

import numpy as np
import torch
from scipy.stats import rankdata
from tqdm import tqdm

from dataset.probe import label_key
from mammi.method import mean_se, neuron_concept_scores, ranked

# Describers in the order of every table: MAMMI first, then the mask-free rivals, then those that
# need labels or boxes.
NAMES = ("mammi", "clip_dissect", "topk_mean", "label_auc", "dissection")
# What each one's score of a neuron and a concept is, as the gallery names it: (name, what it is, in
# what unit). MAMMI's is summed over a neuron's examples; the gallery ranks its neurons by the mean.
SCORES = {"mammi": ("S(k, c)", "summed score over the examples"),
          "clip_dissect": ("soft-WPMI", "log P(c | k) − λ log P(c) over the neuron's top k images, in nats"),
          "topk_mean": ("mean cosine", "mean cosine of the neuron's top k images with the concept prompt"),
          "label_auc": ("AUROC", "of the neuron's activation against the finding's labels over the probing set "
                                 "(0.5: chance, 1: it separates them)"),
          "dissection": ("IoU", "of the neuron's thresholded maps with the finding's boxes over the probing set "
                                "(0 to 1)")}


def top_images(acts: torch.Tensor, m: int) -> torch.Tensor:
    """Each neuron's m most activating images [min(m, N), K], descending, ties in probe order."""
    return ranked(acts)[:min(m, acts.shape[0])]


def soft_wpmi(cos: torch.Tensor, acts: torch.Tensor, top_k: int, a: float, lam: float, p_start: float,
              p_end: float, chunk: int = 32) -> torch.Tensor:
    """CLIP-Dissect's soft-WPMI [K, C] from the image-concept cosines cos [N, C] and activations [N, K]:
    P = softmax(a cos) over concepts; log P(c|k) = sum over k's top m images i of
    log(1 + p_i (P[i, c] - 1) + 1e-7), p_i falling linearly from p_start; minus lam * log P(c), the
    log of the mean of P(c|k) over the layer's neurons."""
    P = torch.softmax(a * cos.double(), dim=1)
    top = top_images(acts, top_k)
    m, K = top.shape
    p = p_start - torch.arange(m, dtype=torch.float64) / m * (p_start - p_end)
    log_pck = torch.empty(K, P.shape[1], dtype=torch.float64)
    chunks = range(0, K, chunk)  # [m, chunk, C] at a time: NIH's 1,024 neurons x 100 x 1,361 would need 1 GB
    for j in tqdm(chunks, desc="soft-WPMI", unit="chunk", disable=len(chunks) <= 1):
        log_pck[j:j + chunk] = torch.log(1 + p[:, None, None] * (P[top[:, j:j + chunk]] - 1) + 1e-7).sum(0)
    log_pc = torch.logsumexp(log_pck, dim=0) - math.log(K)
    return log_pck - lam * log_pc


def topk_mean(cos: torch.Tensor, acts: torch.Tensor, k: int) -> torch.Tensor:
    """The plain baseline [K, C]: mean over each neuron's top k images of cos(image, concept prompt)."""
    top = top_images(acts, k)
    return neuron_concept_scores(cos.double(), top.T.tolist()) / top.shape[0]


def label_auc(acts: torch.Tensor, labels) -> torch.Tensor:
    """AUROC [K, F] of each neuron's activation against each class's 0/1 labels [N, F] (INVERT's
    label-based reference): the Mann-Whitney statistic with ties counted half, as roc_auc_score.
    NaN for a class whose labels are all 0 or all 1."""
    lab = torch.as_tensor(np.asarray(labels), dtype=torch.float64)
    ranks = torch.from_numpy(rankdata(acts.double().numpy(), axis=0))  # average ranks for ties, from 1
    n1 = lab.sum(0)
    n0 = lab.shape[0] - n1
    auc = (lab.T @ ranks - (n1 * (n1 + 1) / 2)[:, None]) / (n1 * n0)[:, None]
    auc[(n1 == 0) | (n0 == 0)] = float("nan")
    return auc.T


def name_neurons(scores: torch.Tensor, concepts: list[str], dead: list[bool], n_used, top_n: int,
                 floor: float | None = None) -> list[dict]:
    """concepts.json's neuron records for a describer: the best concept (first on ties), or none when
    every score is NaN or not above `floor`; `top` lists the top_n concepts by score."""
    out = []
    for k, row in enumerate(scores.double()):
        finite = ~torch.isnan(row)
        order = torch.sort(torch.where(finite, row, -math.inf), descending=True, stable=True).indices
        order = order[finite[order]][:top_n].tolist()
        best = order[:1] if order and (floor is None or row[order[0]] > floor) else []
        status = "dead" if dead[k] else ("ok" if best else "none")
        out.append({"neuron": k, "n_examples": n_used[k] if isinstance(n_used, list) else int(n_used),
                    "status": status,
                    "concepts": [] if dead[k] else [{"concept": concepts[c], "score": float(row[c])} for c in best],
                    "top": [{"concept": concepts[c], "score": float(row[c])} for c in order]})
    return out


# ---- what the probing set says a neuron is, and agreement

def lift_findings(labels, rows: list[list[int]], lift_min: float, missing: int = -1) -> list[int | None]:
    """Per neuron, the finding most over-represented among its images (rows of labels [N, F]): the one of
    highest lift over the probing set's base rate, or None below lift_min or without images. A label
    `missing` (no ground truth) counts in neither rate: each rate is over the images labelled for it."""
    labels = np.asarray(labels, dtype=np.float64)
    known = labels != missing
    ones = np.where(known, labels, 0.0)
    base = ones.sum(0) / np.maximum(known.sum(0), 1)
    out = []
    for r in rows:
        n = known[r].sum(0)
        if not r or not n.any():
            out.append(None)
            continue
        lift = np.where(n > 0, ones[r].sum(0) / np.maximum(n, 1) / np.maximum(base, 1e-9), -np.inf)
        k = int(np.argmax(lift))
        out.append(k if lift[k] >= lift_min else None)
    return out


def names_finding(concepts: list[str], finding: str) -> bool:
    """A neuron's concepts name a finding: one of them is the finding, or each of its words is one of
    them ('pleural' and 'thickening' name pleural thickening; 'pleural' alone names neither it nor
    pleural effusion). A concept is compared whole, never searched for a word inside it ('pleural
    effusion' does not name effusion); case, spaces, '_' and '-' aside, as labels join classes."""
    got, whole = {label_key(c) for c in concepts}, label_key(finding)
    return whole in got or bool(whole) and all(w in got for w in whole.split())


def truth_agreement(named: list[list[str]], truth: list[str | None]) -> dict:
    """Over the neurons with a truth: the share whose concepts name it (any of them) and whose first
    concept does (top 1), each mean +- std/sqrt(n)."""
    pairs = [(words, t) for words, t in zip(named, truth) if t is not None]
    return {"any": share([names_finding(w, t) for w, t in pairs]),
            "top1": share([names_finding(w[:1], t) for w, t in pairs])}


def same_name(a: list[list[str]], b: list[list[str]]) -> dict:
    """Pairwise agreement: over the neurons both describers name, the share with the same first concept."""
    return share([x[0] == y[0] for x, y in zip(a, b) if x and y])


def concept_overlap(a: list[list[str]], b: list[list[str]]) -> dict:
    """Over the neurons either names: the mean Jaccard overlap |A & B| / |A | B| of their concept sets
    (what needs no labels: how far two namings of a layer agree in every concept, not the first alone)."""
    return share([len(set(x) & set(y)) / len(set(x) | set(y)) for x, y in zip(a, b) if x or y])


def pm(v: dict) -> str:
    """A mean_se result as 'mean±se'."""
    return f"{v['mean']:.3f}±{v['se']:.3f}"


def share(hits: list[bool]) -> dict:
    """mean +- std/sqrt(n) of per-neuron outcomes (0/1, or shares); NaN with n = 0 when there are none."""
    return mean_se(hits) if hits else {"mean": math.nan, "se": math.nan, "n": 0}


def words(records: list[dict]) -> list[list[str]]:
    """Each neuron's concepts as the describers' scores take them, from its concepts.json records."""
    return [[c["concept"] for c in n["concepts"]] for n in records]
