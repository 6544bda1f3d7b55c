"""compare_describers.py on a probing set without labels: what is still possible (MAMMI against
CLIP-Dissect and top-k: fc metrics, their agreement, the sensitivity study) is produced, what labels
would give is left out with one note, and no figure is drawn from nothing. With labels, label_auc is
not scored against the truth it defines."""
import csv
import json

import numpy as np
import pytest

from conftest import compare, make_probe_set, ok, stage2, stage3


def first(recs):
    return [n["concepts"][0]["concept"] if n["concepts"] else None for n in recs]


@pytest.fixture(scope="module")
def unlabeled(tmp_path_factory, tiny_clip):
    """Steps 2-3 on 24 generated images probed with --labels none, fc and penultimate."""
    from conftest import save_random_target
    root = tmp_path_factory.mktemp("unlabeled")
    images = make_probe_set(root / "probe", n=24, seed=3)
    ckpt = save_random_target(root / "d.pth", "densenet121", seed=1)
    out = root / "res"
    ok(stage2(images, ckpt, out, "--labels", "none", "--layer", "fc,penultimate"))
    ok(stage3(out, tiny_clip, "--labels", "none", "--layer", "fc,penultimate", "--metric_encoders", ""))
    return out


@pytest.mark.parametrize("layer", ["penultimate", "fc"])
def test_unlabeled_set_compares_what_needs_no_labels(unlabeled, tiny_clip, layer):
    proc = compare(unlabeled, tiny_clip, "--labels", "none", "--layer", layer, encoders="")
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert "Warning" not in proc.stderr and "NaN" not in proc.stderr, proc.stderr[-2000:]
    notes = [line for line in proc.stdout.splitlines() if line.startswith("note:")]
    assert len(notes) == 1, notes
    assert "has no labels (--labels none)" in notes[0] and \
        "label_auc, dissection, the agreement with the truth, faithfulness left out" in notes[0]
    run = next(unlabeled.rglob(f"{layer}/adaptive93/*/*/concepts.json"))
    root = run.parent / "describers"
    table = json.loads((root / "describers.json").read_text())
    assert list(table["rows"]) == ["mammi", "clip_dissect", "topk_mean"]
    assert set(table["skipped"]) == {"label_auc", "dissection"} and "has no labels" in table["faithfulness_skipped"]
    assert table["truth"]["kind"] == "none" and all("truth" not in r for r in table["rows"].values())
    assert not (root / "label_auc").exists() and not (root / "dissection").exists()
    # the pairwise agreement, from the concepts.json files by a plain loop
    names = {"mammi": first(json.loads(run.read_text())["neurons"])}
    for d in ("clip_dissect", "topk_mean"):
        names[d] = first(json.loads((root / d / "concepts.json").read_text())["neurons"])
    for a in names:
        for b in names:
            both = [(x, y) for x, y in zip(names[a], names[b]) if x and y]
            assert table["pairwise"][a][b]["mean"] == pytest.approx(sum(x == y for x, y in both) / len(both))
    with open(root / "describers.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["describer"] for r in rows] == ["mammi", "clip_dissect", "topk_mean"]
    assert all(r["truth"] == "none" and r["truth_any"] == "" and r["faithfulness_median_z"] == "" for r in rows)
    s = table["sensitivity"]
    assert s["truth_any"] is None and s["figure"] and (root / "sensitivity.png").is_file()
    own = s["percents"].index(93.0), s["alphas"].index(95.0)
    said = next(line for line in proc.stdout.splitlines() if line.startswith("sensitivity ("))
    if layer == "fc":
        assert s["headline"] == "hit_rate" and np.isfinite(s["hit_rate"]).all()
        assert all("hit_rate" in r["fc"] for r in table["rows"].values())
        assert "best at p = " in said  # the hit rate is against the class names: no labels needed
    else:
        assert s["headline"] == "overlap" and "fc" not in table["rows"]["mammi"]
        assert s["overlap"][own[0]][own[1]] == 1.0  # the run's own constants give the run's own concepts
        # ... so the overlap's best is the run itself, by definition: none is given
        assert "best" in said and "best at" not in said and "no best without labels" in said
        mammi = json.loads(run.read_text())["neurons"]
        assert s["n_concepts"][own[0]][own[1]] == pytest.approx(np.mean([len(n["concepts"]) for n in mammi]))
    assert (root / "describers.png").is_file()
    assert "sensitivity (" in proc.stdout and "truth named" not in proc.stdout


def test_unlabeled_mammi_alone_draws_no_figure(unlabeled, tiny_clip):
    """Only label describers asked for: MAMMI alone is left, with nothing to draw on the penultimate
    layer: no describers.png (an earlier one removed), the run still ends well."""
    run = next(unlabeled.rglob("penultimate/adaptive93/*/*/concepts.json"))
    png = run.parent / "describers" / "describers.png"
    png.parent.mkdir(exist_ok=True)
    png.write_bytes(b"stale")
    proc = compare(unlabeled, tiny_clip, "--labels", "none", "--layer", "penultimate", "--describers", "label_auc",
                   "--sensitivity_percents", "", encoders="")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert not png.exists() and "describers.png" not in proc.stdout
    table = json.loads((png.parent / "describers.json").read_text())
    assert list(table["rows"]) == ["mammi"] and "sensitivity" not in table


def test_label_auc_is_not_scored_against_its_own_truth(probe_set, densenet_ckpt, tiny_clip, tmp_path):
    out = tmp_path / "res"
    ok(stage2(probe_set, densenet_ckpt, out, "--layer", "fc"))
    ok(stage3(out, tiny_clip, "--layer", "fc", "--metric_encoders", ""))
    args = ("--layer", "fc", "--describers", "topk_mean,label_auc", "--sensitivity_percents", "")
    log = ok(compare(out, tiny_clip, *args, encoders=""))
    root = next(out.rglob("describers/describers.json")).parent
    table = json.loads((root / "describers.json").read_text())
    assert table["truth"]["kind"] == "label_auc" and table["truth"]["own"] == "label_auc"
    assert "truth" not in table["rows"]["label_auc"] and "truth" in table["rows"]["topk_mean"]
    assert "fc" in table["rows"]["label_auc"]  # its fc metrics (against the class names) stay
    with open(root / "describers.csv", newline="") as f:
        row = {r["describer"]: r for r in csv.DictReader(f)}
    assert row["label_auc"]["truth"] == "label_auc: by construction" and row["label_auc"]["truth_any"] == ""
    assert row["topk_mean"]["truth_any"] != ""
    line = next(s for s in log.splitlines() if s.startswith("label_auc "))
    assert "by construction" in line
    # another truth is not label_auc's own: then it is scored like every describer
    ok(compare(out, tiny_clip, *args, "--truth", "lift", encoders=""))
    table = json.loads((root / "describers.json").read_text())
    assert table["truth"]["own"] is None and "truth" in table["rows"]["label_auc"]
