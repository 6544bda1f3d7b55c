"""A classifier's metrics per class, from its probabilities and 0/1 labels (MISSING: no ground truth,
left out): AUROC and AUPRC (average precision) from scikit-learn, and the threshold that maximises F1
on scikit-learn's precision-recall curve. target_model_perform.py scores the target with them.
"""
from __future__ import annotations

import numpy as np
from sklearn.metrics import average_precision_score, precision_recall_curve, roc_auc_score


def known(labels: np.ndarray, probs: np.ndarray, j: int) -> tuple[np.ndarray, np.ndarray]:
    """Class j's labels and probabilities on the images that have ground truth for it (label 0 or 1,
    not MISSING)."""
    has = labels[:, j] >= 0
    return labels[has, j], probs[has, j]


def auroc_auprc(labels: np.ndarray, probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per class AUROC and AUPRC (average precision); NaN for a class with one outcome only."""
    auc, ap = np.full(labels.shape[1], np.nan), np.full(labels.shape[1], np.nan)
    for j in range(labels.shape[1]):
        y, p = known(labels, probs, j)
        if 0 < y.sum() < len(y):
            auc[j] = roc_auc_score(y, p)
            ap[j] = average_precision_score(y, p)
    return auc, ap


def best_thresholds(labels: np.ndarray, probs: np.ndarray) -> np.ndarray:
    """Per class the threshold t maximising F1 of (prob >= t) on the precision-recall curve.
    NaN for a class without positives (no F1 to maximise); ties go to the lowest threshold."""
    out = np.full(labels.shape[1], np.nan)
    for j in range(labels.shape[1]):
        y, prob = known(labels, probs, j)
        if y.sum() == 0:
            continue
        p, r, t = precision_recall_curve(y, prob)
        # The curve's last point (p = 1, r = 0) has no threshold.
        p, r = p[:-1], r[:-1]
        with np.errstate(invalid="ignore", divide="ignore"):
            f1 = np.where(p + r > 0, 2 * p * r / (p + r), 0.0)
        out[j] = t[int(np.argmax(f1))]
    return out
