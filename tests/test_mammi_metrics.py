"""mammi/metrics.py against plain implementations: AUROC as the share of positive-negative pairs ranked
right (ties half), AUPRC as the mean precision at each positive, the threshold as the best F1 over every
cut tried by hand; images without ground truth (-1) left out of each class."""
import numpy as np
import pytest

from mammi.metrics import auroc_auprc, best_thresholds


def pair_auroc(y, p):
    pos, neg = p[y == 1], p[y == 0]
    return np.mean([1.0 if a > b else 0.5 if a == b else 0.0 for a in pos for b in neg])


def mean_precision_at_positives(y, p):
    """Average precision: for each positive, the precision of the cut at its score (ties taken together)."""
    return np.mean([(y[p >= t] == 1).mean() for t in p[y == 1]])


def f1_at(y, p, t):
    tp, fp, fn = ((p >= t) & (y == 1)).sum(), ((p >= t) & (y == 0)).sum(), ((p < t) & (y == 1)).sum()
    return 2 * tp / (2 * tp + fp + fn)


def random_case(seed):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, (30, 5))
    labels[rng.random((30, 5)) < 0.2] = -1  # no ground truth
    probs = np.clip(0.3 * (labels == 1) + rng.random((30, 5)) * 0.7, 0, 1).round(1)  # ties
    labels[:, 4] = np.where(labels[:, 4] == -1, -1, 0)  # a class without positives
    return labels, probs


@pytest.mark.parametrize("seed", range(3))
def test_auroc_and_auprc_equal_pair_counts_and_mean_precision(seed):
    labels, probs = random_case(seed)
    auc, ap = auroc_auprc(labels, probs)
    for j in range(4):
        has = labels[:, j] >= 0
        y, p = labels[has, j], probs[has, j]
        assert auc[j] == pytest.approx(pair_auroc(y, p), abs=1e-12)
        assert ap[j] == pytest.approx(mean_precision_at_positives(y, p), abs=1e-12)
    assert np.isnan(auc[4]) and np.isnan(ap[4])


@pytest.mark.parametrize("seed", range(3))
def test_threshold_is_the_lowest_cut_with_the_best_f1(seed):
    labels, probs = random_case(seed)
    thr = best_thresholds(labels, probs)
    for j in range(4):
        has = labels[:, j] >= 0
        y, p = labels[has, j], probs[has, j]
        cuts = sorted(set(p))
        f1 = [f1_at(y, p, t) for t in cuts]
        assert thr[j] == pytest.approx(cuts[int(np.argmax(np.isclose(f1, max(f1))))])
    assert np.isnan(thr[4])
    # by hand, a tie: cut 0.9 (P 1, R 1/2) and cut 0.2 (P 1/2, R 1) both give F1 2/3; the lower is taken
    assert best_thresholds(np.array([[1], [0], [0], [1]]), np.array([[0.9], [0.7], [0.5], [0.2]]))[0] == 0.2


def test_missing_labels_are_left_out():
    # by hand: class 0's known images are (1, 0.9), (0, 0.2), (1, 0.4): AUROC 1; the unknown one scores 0.95
    labels = np.array([[1], [0], [-1], [1]])
    probs = np.array([[0.9], [0.2], [0.95], [0.4]])
    auc, ap = auroc_auprc(labels, probs)
    assert auc[0] == 1.0 and ap[0] == 1.0
    assert best_thresholds(labels, probs)[0] == pytest.approx(0.4)
