"""mammi/sensitivity.py: each cell of the grid is MAMMI run afresh at that (adaptive_percent, alpha), scored
as the describer table scores a run; grids that do not apply (no fc neurons scored, no truth) stay NaN."""
import numpy as np
import pytest
import torch

from mammi.method import mammi
from mammi.sensitivity import GRIDS, sensitivity_grids


def inputs(K=5, N=30, C=6, D=4):
    g = torch.Generator().manual_seed(1)
    acts, img, text = torch.rand(N, K, generator=g), torch.randn(N, D, generator=g), torch.randn(C, D, generator=g)
    return acts, img, text, [f"c{i}" for i in range(C)]


def test_each_cell_scores_mammi_run_at_its_own_constants():
    acts, img, text, concepts = inputs()
    own = mammi(acts, img, text, None, concepts, 95.0, percent=93.0)["neurons"]
    truth = ["c0", "c1", None, "c2", "c3"]
    scored = [(0, "c0"), (1, "c1"), (2, "c2")]
    percents, alphas = [80.0, 93.0], [50.0, 95.0]
    got = sensitivity_grids(own, acts, img, text, None, concepts, percents, alphas, truth, scored)
    assert set(got) == set(GRIDS) and all(g.shape == (2, 2) for g in got.values())
    for i, p in enumerate(percents):
        for j, a in enumerate(alphas):
            named = [[c["concept"] for c in n["concepts"]] for n in mammi(acts, img, text, None, concepts, a, percent=p)["neurons"]]
            # by a literal loop: the truth among a neuron's concepts, over the neurons that have a truth
            with_truth = [t in w for w, t in zip(named, truth) if t is not None]
            assert got["truth_any"][i, j] == pytest.approx(np.mean(with_truth))
            hits = [c in named[k] for k, c in scored]
            assert got["hit_rate"][i, j] == pytest.approx(np.mean(hits))
            assert got["n_concepts"][i, j] == pytest.approx(np.mean([len(w) for w in named]))
    assert got["overlap"][1, 1] == 1.0  # the run's own cell names what the run named


def test_grids_that_do_not_apply_stay_nan():
    acts, img, text, concepts = inputs()
    own = mammi(acts, img, text, None, concepts, 95.0, percent=93.0)["neurons"]
    got = sensitivity_grids(own, acts, img, text, None, concepts, [93.0], [95.0], None, [])
    for k in ("hit_rate", "hit_rate_se", "f1", "truth_any", "truth_any_se"):
        assert np.isnan(got[k]).all(), k
    assert got["overlap"][0, 0] == 1.0 and np.isfinite(got["n_concepts"]).all()
