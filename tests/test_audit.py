"""The shortcut audit: its formulas (mammi/audit.py) against plain loops and scikit-learn, and the step
(audit.py) on a hand-made model whose Effusion output reads one channel."""
import csv
import json

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from conftest import ok, refused, run_script, save_random_target, stage2
from mammi.ablation import linear_drops, positives
from mammi.audit import (
    CLASS_WORDS,
    auroc,
    concept_neurons,
    concept_row,
    evidence_for,
    own_words,
    seen,
    stratified_auroc,
)
from mammi.method import image_concept_scores


def rec(k, concepts, status="ok"):
    return {"neuron": k, "status": status, "concepts": [{"concept": c, "score": 1.0} for c in concepts]}


# ---- the formulas

def test_contributions_sum_to_the_logit_minus_the_bias_on_the_linear_path():
    """Zeroing every channel of a layer under a linear head lowers each logit by the logit minus the bias;
    the channels one at a time add up to the same; the evidence is the positive part of those."""
    g = torch.Generator().manual_seed(0)
    acts = torch.rand(30, 6, generator=g, dtype=torch.float64)
    w, b = torch.randn(3, 6, generator=g, dtype=torch.float64), torch.randn(3, generator=g, dtype=torch.float64)
    labels = (torch.rand(30, 3, generator=g) > 0.5).numpy().astype(int)
    pos = positives(labels)
    logits = acts @ w.T + b
    total = linear_drops(acts, w, pos, [list(range(6))])[0]
    for c in range(3):
        on = labels[:, c] == 1
        assert float(total[c]) == pytest.approx(float((logits[on, c] - b[c]).mean()), abs=1e-12)
    single = linear_drops(acts, w, pos, [[k] for k in range(6)])
    assert torch.allclose(single.sum(0), total)
    for c in range(3):  # a literal loop over channels and images
        want = 0.0
        for k in range(6):
            part = sum(float(acts[i, k] * w[c, k]) for i in range(30) if labels[i, c] == 1) / labels[:, c].sum()
            want += max(part, 0.0)
        assert float(evidence_for(single)[c]) == pytest.approx(want, abs=1e-12)


def test_concepts_gather_their_live_neurons():
    records = [rec(0, ["tube", "rib"]), rec(1, ["rib"]), rec(2, ["tube"], "dead"), rec(3, ["Tube", "tube"]), rec(4, [])]
    assert concept_neurons(records) == {"tube": [0, 3], "rib": [0, 1], "Tube": [3]}


def test_a_class_owns_its_name_its_words_and_its_table_entry():
    assert own_words("Pleural_Thickening") == {"pleural thickening", "pleural", "thickening", "thickenings"}
    assert own_words("Effusion") == {"effusion", "effusions", "fluid", "pleural"}
    assert own_words("Unknown finding") == {"unknown finding", "unknown", "finding"}
    assert own_words("Effusion", {}) == {"effusion"}
    assert set(CLASS_WORDS) == {"Atelectasis", "Cardiomegaly", "Effusion", "Infiltration", "Mass", "Nodule",
                                "Pneumonia", "Pneumothorax", "Consolidation", "Edema", "Emphysema", "Fibrosis",
                                "Pleural thickening", "Hernia"}


@pytest.mark.parametrize("drop, evidence, z, own, flagged", [
    (0.3, 1.0, 2.0, False, True),     # share 0.3 > 0.1 and z at the bound: flagged
    (0.3, 1.0, 1.99, False, False),   # z below 2
    (0.3, 1.0, None, False, False),   # no z (random sets all alike)
    (0.1, 1.0, 5.0, False, False),    # share at the bound is not above it
    (0.3, 1.0, 5.0, True, False),     # the class's own word
    (-0.5, 1.0, 5.0, False, False),   # a concept that pulls the logit down
    (0.3, 0.0, 5.0, False, False),    # no evidence for the class: no share
])
def test_the_flag_rule(drop, evidence, z, own, flagged):
    row = concept_row(drop, evidence, z, own, 0.1, 2.0)
    assert row["flagged"] is flagged
    assert row["share"] == (None if evidence == 0 else pytest.approx(drop / evidence))


def test_seen_is_a_rank_among_the_concept_set():
    g = torch.Generator().manual_seed(1)
    img, text, tmpl = torch.randn(7, 5, generator=g), torch.randn(9, 5, generator=g), torch.randn(5, generator=g)
    s = image_concept_scores(img, text, tmpl)
    got = seen(img, text, tmpl, [2, 8], 3)
    for x in range(7):
        order = sorted(range(9), key=lambda c: -float(s[x, c]))
        assert got[x].tolist() == [2 in order[:3], 8 in order[:3]]


def test_auroc_is_sklearns():
    rng = np.random.default_rng(0)
    for _ in range(5):
        pos, neg = rng.integers(0, 5, 7).astype(float), rng.integers(0, 5, 11).astype(float)  # with ties
        want = roc_auc_score([1] * 7 + [0] * 11, np.concatenate([pos, neg]))
        assert float(auroc(pos, neg)[0]) == pytest.approx(want, abs=1e-12)


def test_stratified_auroc_sets_each_positive_stratum_against_all_negatives():
    rng = np.random.default_rng(2)
    n = 200
    y = rng.integers(0, 2, n)
    y[:5] = -1  # no ground truth: left out
    has = rng.random(n) < 0.4
    score = rng.normal(size=n) + 1.5 * (y == 1) * has + 0.3 * (y == 1)
    got = stratified_auroc(score, y, has, boot=300, seed=0)
    for name, keep in (("with", has), ("without", ~has)):
        rows = ((y == 1) & keep) | (y == 0)
        assert got[f"auroc_{name}"] == pytest.approx(roc_auc_score(y[rows], score[rows]), abs=1e-12)
        lo, hi = got[f"ci_{name}"]
        assert lo <= got[f"auroc_{name}"] <= hi
    assert got["gap"] == pytest.approx(got["auroc_with"] - got["auroc_without"])
    assert got["ci"][0] <= got["gap"] <= got["ci"][1] and got["gap"] > 0
    assert (got["n_with"], got["n_without"], got["n_negatives"]) == (
        int(((y == 1) & has).sum()), int(((y == 1) & ~has).sum()), int((y == 0).sum()))
    assert stratified_auroc(score, y, has, boot=300, seed=0) == got  # seeded
    none = stratified_auroc(score, y, np.zeros(n, bool), boot=100, seed=0)
    assert none["auroc_with"] is None and none["gap"] is None and none["ci"] is None
    bare = stratified_auroc(score, y, has, boot=0, seed=0)  # the point values alone, as the trainer records them
    assert bare["auroc_with"] == got["auroc_with"] and bare["gap"] == got["gap"]
    assert bare["ci_with"] is None and bare["ci"] is None


# ---- the step, on a model whose Effusion logit reads channel 3

EFFUSION = 2  # its row among NIH's 14 outputs


@pytest.fixture(scope="module")
def shortcut_run(probe_set, tmp_path_factory):
    """A DenseNet-121 whose Effusion logit is 5 x channel 3 of the penultimate layer plus small weights on
    the rest, step 2 of it, and a concepts.json that names channel 3 'tube' and every other 'rib' or 'lung'."""
    root = tmp_path_factory.mktemp("audit")
    ckpt = save_random_target(root / "densenet121.pth", "densenet121")
    sd = torch.load(ckpt, weights_only=True)["model"]
    w = sd["classifier.weight"]
    w[EFFUSION] = 0.01 * torch.randn(w.shape[1], generator=torch.Generator().manual_seed(0))
    w[EFFUSION, 3] = 5.0
    torch.save({"model": sd}, ckpt)
    out = root / "res"
    ok(run_script("example_selection.py", "--data_root", str(probe_set), "--checkpoint", str(ckpt), "--resize", "64",
                  "--crop", "64", "--num_workers", "0", "--layer", "penultimate", "--save_root", str(out)))
    ex = out / "nih14_train" / "densenet121" / "penultimate" / "adaptive93" / "examples.json"
    folder = ex.parent / "by-hand" / "run"
    folder.mkdir(parents=True)
    concepts = folder / "concepts.json"
    neurons = [rec(k, ["tube"] if k == 3 else ["rib" if k % 2 else "lung"]) for k in range(1024)]
    concepts.write_text(json.dumps({"key": "hand-made", "examples_key": json.loads(ex.read_text())["key"],
                                    "config": {"examples": str(ex)}, "neurons": neurons}))
    words = root / "words.txt"
    words.write_text("tube\nrib\nlung\neffusion\nheart\n")
    return concepts, words


def audit(concepts, *extra, clip=None, words=None):
    args = ["--audit_concepts", str(concepts), "--num_workers", "0", "--audit_draws", "50", "--audit_boot", "200"]
    if clip:
        args += ["--model_clip", f"open_clip:{clip}", "--clip_weights", "random", "--concept_set", str(words)]
    return run_script("audit.py", *args, *extra)


def test_the_channel_a_class_reads_is_flagged_for_it(shortcut_run, tiny_clip):
    concepts, words = shortcut_run
    log = ok(audit(concepts, "--audit_seen_top", "2", clip=tiny_clip, words=words))
    got = json.loads((concepts.parent / "audit.json").read_text())
    assert got["method"] == "linear" and got["layer"] == "penultimate" and got["split"] == "test"
    rows = {r["class"]: r for r in got["classes"]}
    eff = rows["Effusion"]["concepts"]
    assert eff[0]["concept"] == "tube" and eff[0]["n_neurons"] == 1 and eff[0]["flagged"]
    assert eff[0]["share"] > 0.5 and eff[0]["z"] >= 2 and not eff[0]["own"]
    assert [c["concept"] for c in eff if c["flagged"]] == ["tube"]
    # its hidden stratification is measured, with the counts the VLM's eyes give
    strat = {s["concept"]: s for s in rows["Effusion"]["stratified"]}
    assert set(strat) == {"tube"}
    assert strat["tube"]["n_with"] + strat["tube"]["n_without"] == rows["Effusion"]["n_positives"]
    assert "flagged for Effusion: tube" in log
    with open(concepts.parent / "audit.csv", newline="") as f:
        table = list(csv.DictReader(f))
    assert {r["concept"] for r in table if r["class"] == "Effusion" and r["flagged"] == "True"} == {"tube"}
    assert (concepts.parent / "audit.png").stat().st_size > 5000
    again = ok(audit(concepts, "--audit_seen_top", "2", clip=tiny_clip, words=words))
    assert f"reusing {concepts.parent / 'audit.json'}" in again
    # a word no neuron carries is stratified for every class when asked: the VLM sees it or not
    ok(audit(concepts, "--audit_seen_top", "2", "--audit_stratify", "heart", clip=tiny_clip, words=words))
    got = json.loads((concepts.parent / "audit.json").read_text())
    assert all(r["stratified"][0]["concept"] == "heart" for r in got["classes"])
    eff = next(r for r in got["classes"] if r["class"] == "Effusion")
    assert [s["concept"] for s in eff["stratified"]] == ["heart", "tube"]


def test_a_higher_share_threshold_flags_nothing(shortcut_run):
    concepts, _ = shortcut_run
    ok(audit(concepts, "--audit_share", "1"))
    got = json.loads((concepts.parent / "audit.json").read_text())
    assert not [c for r in got["classes"] for c in r["concepts"] if c["flagged"]]
    assert all(r["stratified"] == [] for r in got["classes"])


def test_bad_audits_are_one_line(shortcut_run, tiny_clip, tmp_path):
    concepts, words = shortcut_run
    refused(audit(concepts, "--audit_stratify", "pacemaker", clip=tiny_clip, words=words), "--audit_stratify",
            "pacemaker", str(words))
    refused(audit(concepts, "--audit_share", "1.5"), "audit_share")
    dead = concepts.parent.parent / "dead" / "concepts.json"
    dead.parent.mkdir(exist_ok=True)
    data = json.loads(concepts.read_text())
    data["neurons"] = [{**n, "concepts": []} for n in data["neurons"]]
    dead.write_text(json.dumps(data))
    refused(audit(dead), "no live neuron", "named")
    assert not (dead.parent / "audit.json").exists()


def test_an_unlabelled_probing_set_is_one_line(probe_set, densenet_ckpt, tmp_path):
    """No labels, no positives: nothing to audit, said in one line naming the fix."""
    out = tmp_path / "res"
    ok(stage2(probe_set, densenet_ckpt, out, "--layer", "penultimate", labels="none"))
    ex = next(out.rglob("examples.json"))
    concepts = ex.parent / "by-hand" / "run" / "concepts.json"
    concepts.parent.mkdir(parents=True)
    concepts.write_text(json.dumps({"key": "hand-made", "examples_key": json.loads(ex.read_text())["key"],
                                    "config": {"examples": str(ex)},
                                    "neurons": [rec(k, ["tube"]) for k in range(1024)]}))
    refused(audit(concepts, "--labels", "none"), "no labels", "labelled")
    assert not (concepts.parent / "audit.json").exists()
