"""Boundary rules of the method ("The method in one screen": 2. Examples, 3. Matching, 4. fc evaluation),
on inputs small enough that every expected value below is worked out by hand and written as a literal.

The random-input comparisons in test_method.py almost never put an activation exactly on a
threshold or two scores exactly level, so the rules for those cases are pinned here.
"""
import pytest
import torch

from mammi.method import adaptive_threshold, fc_metrics, neuron_concept_scores, select_concepts, select_examples


def examples_of(column, percent=93.0, selection="adaptive", topk=20):
    acts = torch.tensor(column, dtype=torch.float32)[:, None]
    (n,) = select_examples(acts, selection, percent, topk)
    return n


def test_threshold_formula_by_hand():
    # max 8, min 0: p = 75 -> 8 - 8 * 0.25 = 6; p = 50 -> 4; per column, each with its own range
    acts = torch.tensor([[0.0, -2.0], [8.0, 2.0], [3.0, 0.0]])
    assert adaptive_threshold(acts, 75.0).tolist() == [6.0, 1.0]
    assert adaptive_threshold(acts, 50.0).tolist() == [4.0, 0.0]


def test_activation_equal_to_threshold_is_not_an_example():
    # max 4, min 0, p = 75: threshold exactly 3.0 (every number here is exact in binary)
    n = examples_of([0.0, 4.0, 3.0, 1.0, 3.0, 3.5], percent=75.0)
    assert n["threshold"] == 3.0
    assert n["examples"] == [1, 5]  # the two 3.0s sit on the threshold and are left out
    n = examples_of([0.0, 4.0, 2.0, 2.0, 1.0], percent=50.0)
    assert n["threshold"] == 2.0 and n["examples"] == [1]


def test_tied_activations_keep_probe_order():
    # four images tie at 5, all above the threshold 6 - 6 * 0.625 = 2.25: descending, ties in probe order
    n = examples_of([5.0, 1.0, 5.0, 0.0, 6.0, 5.0, 5.0], percent=37.5)
    assert n["threshold"] == 2.25
    assert n["examples"] == [4, 0, 2, 5, 6]
    # top-k cuts inside a tie: the earliest tied images win
    n = examples_of([5.0, 1.0, 5.0, 0.0, 6.0, 5.0, 5.0], selection="topk", topk=3)
    assert n["examples"] == [4, 0, 2] and n["threshold"] == 5.0


def test_p_100_selects_nothing_and_p_0_all_but_the_minimum():
    col = [0.3, 2.0, -1.0, 2.0, 0.5]
    n = examples_of(col, percent=100.0)
    # the threshold is the maximum itself and examples must lie strictly above it
    assert n["threshold"] == 2.0 and n["examples"] == [] and not n["dead"]
    n = examples_of(col, percent=0.0)
    assert n["threshold"] == -1.0 and n["examples"] == [1, 3, 4, 0]


def test_defaults_are_the_releases():
    # p = 93: the threshold of a 0..100 column is 93, so 93.5 is an example and 92.5 is not
    acts = torch.tensor([[0.0], [100.0], [93.5], [92.5]])
    (n,) = select_examples(acts)
    assert n["examples"] == [1, 2]
    (n,) = select_examples(torch.arange(30.0)[:, None], "topk")
    assert n["examples"] == list(range(29, 9, -1))  # k = 20
    # alpha = 95: 1.91 clears 0.95 * 2 = 1.9 (it would not clear 0.96 * 2)
    assert select_concepts(torch.tensor([2.0, 1.91], dtype=torch.float64)) == [0, 1]
    with pytest.raises(ValueError, match="adaptive or topk"):
        select_examples(acts, "top-k")


def test_dead_neuron_has_no_examples_in_either_mode():
    for sel in ("adaptive", "topk"):
        n = examples_of([0.7] * 6, selection=sel, topk=2)
        assert n["dead"] and n["examples"] == []


def test_alpha_boundaries():
    S = torch.tensor([0.5, 2.0, 1.9, 2.0, -1.0], dtype=torch.float64)
    assert select_concepts(S, 100.0) == []  # S > max S never holds
    # 0.95 * 2 = 1.9: the 1.9 sits on the bar and is left out; level scores keep concept order
    assert select_concepts(S, 95.0) == [1, 3]
    assert select_concepts(S, 90.0) == [1, 3, 2]
    assert select_concepts(S, 0.0) == [1, 3, 2, 0]  # positive scores only
    assert select_concepts(torch.tensor([0.0, -3.0]), 50.0) == []
    # many level scores (torch's unstable sort reorders ties from about 100 elements on)
    assert select_concepts(torch.ones(300, dtype=torch.float64)) == list(range(300))


def test_neuron_scores_are_sums_over_examples():
    s = torch.tensor([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0], [-1.0, 0.5]], dtype=torch.float64)
    S = neuron_concept_scores(s, [[0, 2], [1], [], [3, 0, 1]])
    assert S.tolist() == [[6.0, 8.0], [3.0, 4.0], [0.0, 0.0], [3.0, 6.5]]


def test_fc_metrics_by_hand():
    names = ["Atelectasis", "Nodule", "Mass", "Edema", "Pleural thickening"]
    got = [["atelectasis"], ["mass", "nodule", "lesion"], [], ["opacity", "edema"], ["pleural", "thickening"]]
    m = fc_metrics(got, names)
    # precision 1, 1/3, 0, 1/2, 0; recall 1, 1, 0, 1, 0; F1 1, 1/2, 0, 2/3, 0
    assert m["hit_rate"]["mean"] == pytest.approx(0.6) and m["hit_rate"]["n"] == 5
    assert m["recall"]["mean"] == pytest.approx(0.6)
    assert m["precision"]["mean"] == pytest.approx(0.3666667, abs=1e-6)     # (1 + 1/3 + 1/2) / 5
    assert m["f1"]["mean"] == pytest.approx(0.4333333, abs=1e-6)            # (1 + 1/2 + 2/3) / 5
    # population std over the 5 neurons / sqrt(5): precision std 0.3711843 -> se 0.1659987
    assert m["precision"]["se"] == pytest.approx(0.1659987, abs=1e-6)
    assert m["hit_rate"]["se"] == pytest.approx(0.2190890, abs=1e-6)        # sqrt(0.24 / 5)
