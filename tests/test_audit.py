"""The audit's science (mammi/audit.py) against plain loops on small random inputs, and on a hand-made
model whose class output reads one channel."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn
from sklearn.metrics import roc_auc_score

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mammi import audit  # noqa: E402


def test_contributions_sum_to_the_logit_minus_the_bias():
    torch.manual_seed(0)
    head = nn.Linear(12, 3).double()
    acts = torch.rand(7, 12, dtype=torch.float64)
    c = audit.contributions(acts, head.weight.detach())
    assert c.shape == (7, 3, 12)
    with torch.no_grad():
        assert torch.allclose(c.sum(-1), head(acts) - head.bias, atol=1e-12)
    for n in range(7):
        for k in range(3):
            for j in range(12):
                assert float(c[n, k, j]) == pytest.approx(float(head.weight[k, j].detach() * acts[n, j]))


def test_mean_contribution_and_shares_match_loops():
    g = torch.Generator().manual_seed(1)
    N, K, J = 30, 3, 8
    acts = torch.rand(N, J, generator=g, dtype=torch.float64)
    w = torch.randn(K, J, generator=g, dtype=torch.float64)
    pos = (torch.rand(N, K, generator=g) < 0.4).double()
    pos[0] = 1  # every class has a positive
    m = audit.mean_contribution(acts, w, pos)
    for k in range(K):
        rows = [n for n in range(N) if pos[n, k] == 1]
        for j in range(J):
            want = sum(float(w[k, j] * acts[n, j]) for n in rows) / len(rows)
            assert float(m[k, j]) == pytest.approx(want, rel=1e-12)
    concepts = [["tube"], ["tube", "heart"], [], ["heart"], ["marker"], [], ["tube"], ["heart", "heart"]]
    sh = audit.shares(m, concepts)
    for k in range(K):
        total = sum(float(m[k, j]) for j in range(J))
        for c in ("tube", "heart", "marker"):
            part = sum(float(m[k, j]) for j in range(J) if c in concepts[j])
            assert float(sh[c][k]) == pytest.approx(part / total, rel=1e-12)
    assert set(sh) == {"tube", "heart", "marker"}


def test_flag_rule():
    assert audit.is_flagged(False, 0.3, 2.0, share_min=0.1)
    assert not audit.is_flagged(True, 0.3, 5.0, share_min=0.1)  # the class's own word
    assert not audit.is_flagged(False, 0.1, 5.0, share_min=0.1)  # share not above the threshold
    assert not audit.is_flagged(False, 0.3, 1.99, share_min=0.1)  # z below 2
    assert not audit.is_flagged(False, 0.3, None, share_min=0.1)  # no z
    assert audit.own_words("Pleural thickening") >= {"pleural thickening", "pleural", "thickening", "thickenings"}


def test_linear_z_by_hand():
    # contributions 3, 0, 0, 0: every single neuron as the random sets gives drops 3, 0, 0, 0
    contrib = torch.tensor([3.0, 0.0, 0.0, 0.0])
    sets = [[0], [1], [2], [3]]
    mean, sd = 0.75, float(np.std([3, 0, 0, 0], ddof=1))
    assert audit.linear_z(contrib, [0], sets) == pytest.approx((3 - mean) / sd)
    assert audit.linear_z(contrib, [1], sets) == pytest.approx((0 - mean) / sd)
    assert audit.linear_z(contrib, [0], [[1], [2]]) is None  # the random drops do not vary
    # two neurons: the drop is their sum; all six pairs of 3, 1, 0, 0 drop 4, 3, 3, 1, 1, 0
    contrib = torch.tensor([3.0, 1.0, 0.0, 0.0])
    pairs = [[0, 1], [0, 2], [0, 3], [1, 2], [1, 3], [2, 3]]
    assert audit.linear_z(contrib, [0, 1], pairs) == pytest.approx((4 - 2) / float(np.std([4, 3, 3, 1, 1, 0], ddof=1)))
    for s in audit.random_sets(10, 3, 50, seed=4):
        assert len(set(s)) == 3 and all(0 <= j < 10 for j in s)
    assert audit.random_sets(10, 3, 5, seed=4) == audit.random_sets(10, 3, 5, seed=4)


def test_stratified_auroc_matches_sklearn_per_stratum():
    rng = np.random.default_rng(2)
    n = 300
    y = rng.random(n) < 0.3
    has = rng.random(n) < 0.4
    score = y * 1.0 + rng.normal(0, 1, n) + 0.8 * has
    r = audit.stratified_auroc(y, score, has, n_boot=200, seed=0)
    want_with = roc_auc_score(y[has], score[has])
    want_without = roc_auc_score(y[~has], score[~has])
    assert r["auroc_with"] == pytest.approx(want_with) and r["auroc_without"] == pytest.approx(want_without)
    assert r["gap"] == pytest.approx(want_without - want_with)
    assert r["n_pos_with"] == int((y & has).sum()) and r["n_neg_without"] == int((~y & ~has).sum())
    assert r["ci_with"][0] < want_with < r["ci_with"][1] and r["ci_without"][0] < want_without < r["ci_without"][1]
    assert r["ci"][0] < r["gap"] < r["ci"][1] and r["ci"][1] - r["ci"][0] < 0.5
    # a stratum without positives has no AUROC
    r = audit.stratified_auroc([0, 0, 0, 1], [0.1, 0.2, 0.3, 0.4], [True, True, False, False], n_boot=10)
    assert np.isnan(r["auroc_with"]) and r["auroc_without"] == 1.0 and np.isnan(r["gap"])


class OneChannel(nn.Module):
    """Features: ReLU of a 1x1 convolution (8 channels), pooled; the head's class 0 reads channel 5 alone,
    class 1 reads all channels a little."""

    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(3)
        self.conv = nn.Conv2d(3, 8, 1)
        with torch.no_grad():
            self.conv.weight.copy_(torch.rand(8, 3, 1, 1, generator=g))
            self.conv.bias.zero_()
        self.head = nn.Linear(8, 2)
        with torch.no_grad():
            self.head.weight.zero_()
            self.head.weight[0, 5] = 2.0
            self.head.weight[1] = 0.1
            self.head.bias.copy_(torch.tensor([-1.0, 0.5]))

    def features(self, x):
        return torch.relu(self.conv(x)).mean((2, 3))

    def forward(self, x):
        return self.head(self.features(x))


def test_a_class_reading_one_channel_flags_that_channels_concept():
    model = OneChannel()
    x = torch.rand(40, 3, 6, 6, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        acts = model.features(x)
        logits = model(x)
    pos = torch.zeros(40, 2)
    pos[:20, 0] = 1
    pos[10:30, 1] = 1
    m = audit.mean_contribution(acts, model.head.weight.detach(), pos)
    want = (logits - model.head.bias.detach())[:20, 0].mean()
    assert float(m[0].sum()) == pytest.approx(float(want), rel=1e-5)  # the parts make the logit, minus the bias
    concepts = [["rib"], ["heart"], ["spine"], ["lung"], ["clavicle"], ["tube"], ["diaphragm"], ["infiltration"]]
    rows = audit.audit_class(m[0], concepts, audit.own_words("Infiltration"), share_min=0.2)
    assert rows[0]["concept"] == "tube" and rows[0]["share"] == pytest.approx(1.0) and rows[0]["z"] >= 2
    assert [r["concept"] for r in rows if r["flagged"]] == ["tube"]
    # the same channel named with the class's own word is no shortcut
    own = [c if c != ["tube"] else ["infiltrate"] for c in concepts]
    rows = audit.audit_class(m[0], own, audit.own_words("Infiltration"), share_min=0.2)
    assert rows[0]["concept"] == "infiltrate" and rows[0]["own"] and not any(r["flagged"] for r in rows)
    # class 1 reads every channel alike: no concept stands out
    rows = audit.audit_class(m[1], concepts, audit.own_words("Effusion"), share_min=0.2)
    assert not any(r["flagged"] for r in rows)
