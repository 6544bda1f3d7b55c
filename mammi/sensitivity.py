"""MAMMI's two constants (adaptive_percent p, alpha) varied over a grid from the cached tensors: what the
names would score at each (p, alpha). A pure function of tensors; pipeline/sensitivity.py draws and
stores it beside the describer table."""
from __future__ import annotations

import numpy as np
import torch
from tqdm import tqdm

from mammi.describers import concept_overlap, truth_agreement, words
from mammi.method import fc_metrics, mammi, name_neuron

# Every grid, in the order describers.json stores them: the fc hit rate (with its standard error) and F1,
# the agreement with the truth (with its standard error), the overlap with the run's own concepts and the
# mean number of concepts per neuron.
GRIDS = ("hit_rate", "hit_rate_se", "f1", "truth_any", "truth_any_se", "overlap", "n_concepts")


def sensitivity_grids(own: list[dict], acts: torch.Tensor, images: torch.Tensor, text: torch.Tensor,
                      template: torch.Tensor | None, concepts: list[str], percents: list[float], alphas: list[float],
                      truth: list[str | None] | None, scored: list[tuple[int, str]]) -> dict[str, np.ndarray]:
    """MAMMI re-run over percents x alphas (its template and adaptive score as the run: template None for
    the plain score): each grid of GRIDS [P, A], NaN where it does not apply (no fc neurons scored: the fc
    grids; no truth: the truth grids). own: the run's neuron records, the overlap's reference."""
    grids = {k: np.full((len(percents), len(alphas)), np.nan) for k in GRIDS}
    own_words = words(own)
    for i, p in enumerate(tqdm(percents, desc="sensitivity", unit="p")):
        got = mammi(acts, images, text, template, concepts, alphas[0], percent=p)
        for j, a in enumerate(alphas):  # the examples and S of p serve every alpha
            named = got["neurons"] if j == 0 else [name_neuron(n, S_k, concepts, a)
                                                   for n, S_k in zip(got["examples"], got["S"])]
            w = words(named)
            if truth is not None:
                t = truth_agreement(w, truth)["any"]
                grids["truth_any"][i, j], grids["truth_any_se"][i, j] = t["mean"], t["se"]
            grids["overlap"][i, j] = concept_overlap(w, own_words)["mean"]
            grids["n_concepts"][i, j] = np.mean([len(x) for x in w])
            if scored:
                m = fc_metrics([w[k] for k, _ in scored], [c for _, c in scored])
                grids["hit_rate"][i, j], grids["f1"][i, j] = m["hit_rate"]["mean"], m["f1"]["mean"]
                grids["hit_rate_se"][i, j] = m["hit_rate"]["se"]
    return grids
