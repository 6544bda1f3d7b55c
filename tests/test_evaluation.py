"""target_model_perform.py and evaluation.py: metrics against scikit-learn, stage-2 logits reuse."""
import csv

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.metrics import average_precision_score, f1_score, roc_auc_score

from conftest import load_probe_set, make_probe_set, run_inline, save_random_target
from dataset.boxes import disease_colour
from dataset.nih import class_names
from mammi.metrics import auroc_auprc, best_thresholds
from models.target import load_target
from pipeline.cli import PipelineError
from pipeline.evaluation import forward_logits, read_thresholds, stage2_logits

SMALL = ["--resize", "40", "--crop", "32", "--num_workers", "0"]


def fixed_arrays():
    rng = np.random.default_rng(7)
    labels = rng.integers(0, 2, (40, 14))
    probs = np.clip(0.35 * labels + rng.random((40, 14)) * 0.8, 0, 1).round(2)  # ties included
    labels[:, 13] = 0  # a class without positives
    return labels, probs


def test_auroc_auprc_match_sklearn():
    labels, probs = fixed_arrays()
    auc, ap = auroc_auprc(labels, probs)
    for j in range(13):
        assert auc[j] == pytest.approx(roc_auc_score(labels[:, j], probs[:, j]), abs=1e-12)
        assert ap[j] == pytest.approx(average_precision_score(labels[:, j], probs[:, j]), abs=1e-12)
    assert np.isnan(auc[13]) and np.isnan(ap[13])
    assert 0.6 < np.nanmean(auc) < 1  # the positives were given higher scores


def test_thresholds_maximise_f1():
    # By hand: t = 0.35 gives P = 2/3, R = 1, F1 = 0.8, better than any other cut.
    y = np.array([[0], [0], [1], [1]])
    p = np.array([[0.1], [0.4], [0.35], [0.8]])
    assert best_thresholds(y, p)[0] == pytest.approx(0.35)
    labels, probs = fixed_arrays()
    thr = best_thresholds(labels, probs)
    for j in range(13):
        cands = np.unique(probs[:, j])
        f1 = np.array([f1_score(labels[:, j], probs[:, j] >= t) for t in cands])
        best = cands[np.isclose(f1, f1.max())]
        assert thr[j] == pytest.approx(best.min())  # the best F1, and the lowest cut reaching it
    assert np.isnan(thr[13])


def test_read_thresholds(tmp_path):
    classes = class_names()
    path = tmp_path / "Threshold.csv"
    path.write_text("label,bestthr\n" + "".join(f"{c},{i / 20}\n" for i, c in enumerate(reversed(classes))))
    got = read_thresholds(path, classes)
    assert got[0] == pytest.approx(13 / 20) and got[13] == 0  # by name, not by row order
    path.write_text("label,bestthr\nAtelectasis,0.5\n")
    with pytest.raises(PipelineError, match="no threshold for Cardiomegaly"):
        read_thresholds(path, classes)
    with pytest.raises(PipelineError, match="run target_model_perform.py"):
        read_thresholds(tmp_path / "absent.csv", classes)


def test_cache_reuse_and_fresh_pass_agree(densenet_ckpt, tmp_path, monkeypatch, capsys):
    probe_set = make_probe_set(tmp_path / "probe", n=24, size=48)
    root = tmp_path / "results"
    common = ["--data_root", str(probe_set), "--checkpoint", str(densenet_ckpt), "--save_root", str(root)] + SMALL
    run_inline(monkeypatch, "example_selection.py", "--split", "test", "--layer", "fc", *common)

    cfg = {"dataset": "nih14", "data_root": str(probe_set), "skip_missing": False, "model": "densenet121",
           "resize": 40, "crop": 32, "save_root": str(root)}
    names, labels, paths, data_key = load_probe_set("test", str(probe_set))
    found = stage2_logits(cfg, "test", "", str(densenet_ckpt), data_key)
    assert found is not None and found[1].parent.name == "fc"
    net = load_target("densenet121", densenet_ckpt, need_head=True)[0]
    fresh = forward_logits(net, paths, 40, 32, 16, 0, torch.device("cpu"))
    assert torch.allclose(found[0], fresh, atol=1e-5)
    # Another preprocessing or other checkpoint bytes: no reuse.
    assert stage2_logits({**cfg, "resize": 80}, "test", "", str(densenet_ckpt), data_key) is None
    other = save_random_target(tmp_path / "other.pth", "densenet121", seed=1)
    assert stage2_logits(cfg, "test", "", str(other), data_key) is None

    # The script: test reuses stage 2's logits, val (the same images here) takes a fresh pass.
    capsys.readouterr()
    run_inline(monkeypatch, "target_model_perform.py", *common)
    stdout = capsys.readouterr().out
    assert "test: reusing the logits of" in stdout and "val: reusing" not in stdout
    out = root / "nih14_test" / "densenet121" / "eval"
    test_p, val_p = read_table(out / "TestProbs.csv"), read_table(out / "ValProbs.csv")
    assert np.allclose(test_p, val_p, atol=1e-5)
    assert np.allclose(test_p, torch.sigmoid(fresh).numpy(), atol=1e-5)
    y = read_table(out / "TestLabels.csv")
    assert (y == labels).all()
    auc, ap = auroc_auprc(y.astype(int), test_p)
    with open(out / "TestEval.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["label"] for r in rows] == class_names()
    assert np.allclose([float(r["auc"]) for r in rows], auc, atol=1e-5, equal_nan=True)
    assert np.allclose([float(r["auprc"]) for r in rows], ap, atol=1e-5, equal_nan=True)
    assert np.allclose(read_thresholds(out / "Threshold.csv", class_names()), best_thresholds(y.astype(int), val_p),
                       atol=1e-5, equal_nan=True)
    assert f"mean AUROC {np.nanmean(auc):.4f}" in stdout

    # The ROC figure: every class's curve is drawn in its colour (more pixels than a legend swatch).
    rgb = np.asarray(Image.open(out / "roc_curves.png").convert("RGB")).astype(int)
    for c in class_names():
        near = (np.abs(rgb - np.array(disease_colour(c))).max(-1) <= 10).sum()
        assert near > 150, (c, near)


def read_table(path):
    with open(path) as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["image_id"] + class_names()
    return np.array([[float(v) for v in r[1:]] for r in rows[1:]])
