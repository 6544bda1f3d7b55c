"""Every formula of the method (README, "The method in one screen") against a plain, independent implementation on random inputs."""
import math
import random

import numpy as np
import pytest
import torch

from mammi.method import (
    fc_metrics,
    image_concept_scores,
    mammi,
    neuron_concept_scores,
    select_concepts,
    select_examples,
)


def plain_adaptive(col, p):
    hi, lo = max(col), min(col)
    if hi == lo:
        return []
    thr = hi - (hi - lo) * (1 - p / 100)
    keep = [i for i in range(len(col)) if col[i] > thr]
    return sorted(keep, key=lambda i: (-col[i], i))


def plain_topk(col, k):
    if max(col) == min(col):
        return []
    return sorted(range(len(col)), key=lambda i: (-col[i], i))[:k]


def cos(u, v):
    return sum(a * b for a, b in zip(u, v)) / math.sqrt(sum(a * a for a in u) * sum(b * b for b in v))


def plain_concepts(img, examples, text, template, alpha):
    """S(k, c) by loops, then the alpha rule: list of concept indices in descending S."""
    out = []
    for ex in examples:
        S = [sum(cos(img[x], t) - (cos(img[x], template) if template is not None else 0.0) for x in ex)
             for t in text]
        top = max(S)
        chosen = [c for c in range(len(S)) if top > 0 and S[c] > alpha / 100 * top]
        out.append(sorted(chosen, key=lambda c: (-S[c], c)))
    return out


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("p", [85.0, 93.0, 99.0])
@pytest.mark.parametrize("block", [5, 64])  # neurons are selected a block at a time: 12 = 5 + 5 + 2
def test_adaptive_selection_matches_plain(seed, p, block):
    g = torch.Generator().manual_seed(seed)
    acts = torch.randn(200, 12, generator=g) ** 3
    acts[:, 3] = 1.5  # a dead neuron
    got = select_examples(acts, "adaptive", p, block=block)
    cols = acts.double().T.tolist()
    assert [n["neuron"] for n in got] == list(range(12))
    for k, n in enumerate(got):
        assert n["examples"] == plain_adaptive(cols[k], p)
        assert n["dead"] == (k == 3)
    assert got[3]["examples"] == []


@pytest.mark.parametrize("k", [1, 5, 20])
def test_topk_selection_matches_plain(k):
    acts = torch.randn(100, 7, generator=torch.Generator().manual_seed(k))
    acts[:10, 2] = 7.0  # ties: kept in probe order
    got = select_examples(acts, "topk", topk=k, block=3)
    assert [n["neuron"] for n in got] == list(range(7))
    for j, n in enumerate(got):
        assert n["examples"] == plain_topk(acts.double()[:, j].tolist(), k)


@pytest.mark.parametrize("adaptive", [True, False])
@pytest.mark.parametrize("alpha", [80.0, 95.0])
@pytest.mark.parametrize("seed", range(4))
def test_concepts_match_plain(seed, alpha, adaptive):
    rng = random.Random(seed)
    U, C, D, K = 30, 25, 16, 8
    g = torch.Generator().manual_seed(seed)
    img, text, tmpl = torch.randn(U, D, generator=g), torch.randn(C, D, generator=g), torch.randn(D, generator=g)
    examples = [rng.sample(range(U), rng.randint(1, 10)) for _ in range(K)]
    s = image_concept_scores(img, text, tmpl if adaptive else None)
    S = neuron_concept_scores(s, examples)
    got = [select_concepts(S_k, alpha) for S_k in S]
    want = plain_concepts(img.double().tolist(), examples, text.double().tolist(),
                          tmpl.double().tolist() if adaptive else None, alpha)
    assert got == want
    assert any(len(w) > 1 for w in want) or alpha == 95.0  # the rule can pick several


def plain_S(img, examples, text, template):
    return [[sum(cos(img[x], t) - (cos(img[x], template) if template is not None else 0.0) for x in ex) for t in text]
            for ex in examples]


@pytest.mark.parametrize("adaptive", [True, False])
@pytest.mark.parametrize("alpha", [70.0, 95.0])
@pytest.mark.parametrize("seed", range(3))
def test_mammi_from_activations_matches_plain_composition(seed, alpha, adaptive):
    """The whole chain, activations -> examples -> s -> S -> concepts and status, against loops."""
    g = torch.Generator().manual_seed(seed)
    N, K, C, D, p = 80, 10, 14, 8, 88.0
    acts = torch.randn(N, K, generator=g) ** 3
    acts[:, 6] = -0.25  # a dead neuron
    img, text, tmpl = torch.randn(N, D, generator=g), torch.randn(C, D, generator=g), torch.randn(D, generator=g)
    names = [f"concept {c}" for c in range(C)]
    got = mammi(acts, img, text, tmpl if adaptive else None, names, alpha, percent=p)
    cols = acts.double().T.tolist()
    examples = [plain_adaptive(col, p) for col in cols]
    template = tmpl.double().tolist() if adaptive else None
    want = plain_concepts(img.double().tolist(), examples, text.double().tolist(), template, alpha)
    S = plain_S(img.double().tolist(), examples, text.double().tolist(), template)
    assert [n["examples"] for n in got["examples"]] == examples
    assert [n["neuron"] for n in got["neurons"]] == list(range(K))
    for k, n in enumerate(got["neurons"]):
        assert n["n_examples"] == len(examples[k])
        assert [c["concept"] for c in n["concepts"]] == [names[c] for c in want[k]]  # order included
        assert [c["score"] for c in n["concepts"]] == pytest.approx([S[k][c] for c in want[k]], rel=1e-5)
        assert n["status"] == ("dead" if max(cols[k]) == min(cols[k]) else "ok" if want[k] else "none")
    assert got["neurons"][6]["status"] == "dead"
    assert got["S"].dtype == torch.float32  # what similarity.pt stores and step 3 selects from
    assert got["S"].flatten().tolist() == pytest.approx(np.ravel(S), rel=1e-5, abs=1e-5)
    x = [cos(img[i].double().tolist(), t) - (cos(img[i].double().tolist(), template) if adaptive else 0.0)
         for i in range(N) for t in text.double().tolist()]
    assert got["s"].flatten().tolist() == pytest.approx(x, rel=1e-9, abs=1e-12)
    assert any(len(w) > 1 for w in want) or alpha == 95.0  # the rule can pick several


def test_mammi_from_stored_examples_names_each_status():
    """Examples given as rows of the image features: a neuron whose every score is below zero is none,
    one without examples is none, a dead one is dead, whatever its scores."""
    g = torch.Generator().manual_seed(7)
    img, text = torch.randn(6, 5, generator=g), torch.randn(4, 5, generator=g)
    tmpl = img[2].clone()  # cos(x2, c) - cos(x2, T) = cos(x2, c) - 1 < 0 for every concept
    neurons = [{"neuron": 10, "dead": False, "examples": [0, 3, 1]},
               {"neuron": 11, "dead": False, "examples": [2]},
               {"neuron": 12, "dead": False, "examples": []},
               {"neuron": 13, "dead": True, "examples": []}]
    names = ["a", "b", "c", "d"]
    got = mammi(neurons, img, text, tmpl, names, 60.0)
    examples = [n["examples"] for n in neurons]
    want = plain_concepts(img.double().tolist(), examples, text.double().tolist(), tmpl.double().tolist(), 60.0)
    assert [n["neuron"] for n in got["neurons"]] == [10, 11, 12, 13]
    assert [[c["concept"] for c in n["concepts"]] for n in got["neurons"]] == [[names[c] for c in w] for w in want]
    assert want[0] and not want[1]
    assert [n["status"] for n in got["neurons"]] == ["ok", "none", "none", "dead"]
    assert [n["n_examples"] for n in got["neurons"]] == [3, 1, 0, 0]
    assert got["examples"] is neurons and got["S"].shape == (4, 4) and got["s"].shape == (6, 4)


def test_no_positive_score_selects_nothing():
    assert select_concepts(torch.tensor([-0.2, -0.1, -0.5])) == []
    assert select_concepts(torch.tensor([0.0, 0.0])) == []
    assert select_concepts(torch.tensor([1.0, 0.96, 0.94, 0.5]), 95.0) == [0, 1]


def test_fc_metrics_plain():
    names = ["Atelectasis", "Nodule", "Pleural thickening", "Mass"]
    got = [["atelectasis"], ["mass", "nodule", "lesion"], [], ["opacity"]]
    m = fc_metrics(got, names)
    prec = [1.0, 1 / 3, 0.0, 0.0]
    rec = [1.0, 1.0, 0.0, 0.0]
    f1 = [2 * p * r / (p + r) if p + r else 0.0 for p, r in zip(prec, rec)]
    assert m["hit_rate"]["mean"] == pytest.approx(0.5)
    assert m["precision"]["mean"] == pytest.approx(np.mean(prec))
    assert m["precision"]["se"] == pytest.approx(np.std(prec) / 2)
    assert m["f1"]["mean"] == pytest.approx(np.mean(f1))
    assert m["recall"]["mean"] == pytest.approx(0.5)
