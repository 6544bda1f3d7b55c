"""Derived outputs (step 4's thresholds, step 6's panels, ablation tables, the gallery's links): each made
with the target exactly as step 2 ran it (a re-initialised one too), keyed by what it was made from and
checked by its reader, found where it lies, written only under --save_root, and never left half old,
half new by a failing write."""
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision

from conftest import (
    disk_full_at,
    load_probe_set,
    ok,
    page_data,
    refused,
    run_script,
    save_random_target,
    snapshot,
    stage2,
    write_synthetic,
)
from dataset.nih import class_names
from pipeline.cache import under
from pipeline.cli import PipelineError
from pipeline.evaluation import read_thresholds
from pipeline.outputs import target_key

SMALL = ["--resize", "64", "--crop", "64", "--num_workers", "0"]
EFFUSION = class_names().index("Effusion")


def hand_concepts(ex: Path, names: dict, tag: str) -> Path:
    """A concepts.json of these very examples (their key) in the format every describer writes, two folders
    below examples.json where readers look: neuron k named names[k], every other neuron 'rib'."""
    path = ex.parent / "by-hand" / tag / "concepts.json"
    path.parent.mkdir(parents=True)
    key = json.loads(ex.read_text())["key"]
    path.write_text(json.dumps({"key": f"hand-{tag}", "examples_key": key, "config": {
        "layer": "penultimate", "examples": str(ex)}, "neurons": [
        {"neuron": k, "n_examples": 1, "status": "ok", "concepts": [{"concept": c, "score": 1.0}
                                                                     for c in names.get(k, ["rib"])]}
        for k in range(1024)]}))
    return path


def boxes(tmp_path: Path) -> Path:
    """An NIH bbox.csv with an Effusion box on the first two probing images (72-px originals)."""
    path = tmp_path / "bbox.csv"
    path.write_text("image_name,label,bbox_x,bbox_y,bbox_w,bbox_h\n00000000_000.png,Effusion,10,10,30,30\n"
                    "00000001_000.png,Effusion,30,20,30,40\n")
    return path


def step4(probe_set, ckpt, out, *extra):
    return run_script("target_model_perform.py", "--data_root", str(probe_set), "--checkpoint", str(ckpt),
                      "--save_root", str(out), *SMALL, *extra)


def visualization(probe_set, concepts, bbox, out, *extra):
    return run_script("visualization.py", "--concepts", str(concepts), "--data_root", str(probe_set), "--box_file",
                      str(bbox), "--max_drawn", "2", "--save_root", str(out), *extra)


@pytest.fixture(scope="module")
def reinit(probe_set, densenet_ckpt, tmp_path_factory):
    """sanity_check.py's re-initialised run: step 2 of the target re-initialised with seed 0 (on the test split,
    so that ablation reuses its activations), in {model}-reinit0/."""
    out = tmp_path_factory.mktemp("reinit") / "res"
    ok(stage2(probe_set, densenet_ckpt, out, "--reinit_seed", "0", "--split", "test", "--layer", "penultimate"))
    ex = out / "nih14_test" / "densenet121-reinit0" / "penultimate" / "adaptive93" / "examples.json"
    assert ex.is_file()
    return out, ex


def reinitialised_head(ckpt: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """The classifier of the re-initialised target, built by hand: torchvision's DenseNet-121 with the
    checkpoint, then every module's own reset_parameters() in module order from torch's seed 0."""
    net = torchvision.models.densenet121(num_classes=14)
    net.load_state_dict(torch.load(ckpt, weights_only=True)["model"])
    torch.manual_seed(0)
    for m in net.modules():
        if hasattr(m, "reset_parameters"):
            m.reset_parameters()
    return net.classifier.weight.detach().double(), net.classifier.bias.detach().double()


# ---- every later step runs the target step 2 ran

def test_ablation_of_the_re_initialised_run_zeroes_the_re_initialised_network(reinit, densenet_ckpt, probe_set):
    """ablation.py on the re-initialised run: the effect of zeroing neurons 3 and 7 for effusion is the drop
    through the re-initialised head (weights built by hand) of the activations step 2 stored, over the
    images labelled effusion, in SDs of that logit: a literal loop."""
    out, ex = reinit
    concepts = hand_concepts(ex, {3: ["effusion"], 7: ["effusion"]}, "ablate")
    ok(run_script("ablation.py", "--ablation_concepts", str(concepts), "--ablation_draws", "20", *SMALL))
    got = {r["finding"]: r for r in json.loads((concepts.parent / "ablation.json").read_text())["findings"]}
    w, b = reinitialised_head(densenet_ckpt)
    act = torch.load(ex.parents[1] / "activations.pt", weights_only=True)
    a, logits = act["activations"].double(), act["logits"].double()
    assert torch.allclose(a @ w.T + b, logits, atol=1e-4)  # the stored activations are this network's
    labels = load_probe_set("test", probe_set)[1]
    pos = [i for i in range(len(a)) if labels[i][EFFUSION] == 1]
    drop = sum(float(a[i, k] * w[EFFUSION, k]) for i in pos for k in (3, 7)) / len(pos)
    sd = float(np.std(logits[:, EFFUSION].numpy(), ddof=1))
    assert got["effusion"]["n_neurons"] == 2
    assert got["effusion"]["effect"] == pytest.approx(drop / sd, rel=1e-4)


def test_visualization_of_the_re_initialised_run_explains_that_network_in_its_own_folder(reinit, probe_set,
                                                                                           densenet_ckpt, tmp_path):
    """visualization.py on the re-initialised run predicts with the re-initialised network (its probabilities
    are the sigmoid of the logits step 2 stored), with thresholds fitted to it, and writes beside the trained
    target's folder, never into it."""
    out, ex = reinit
    concepts = hand_concepts(ex, {3: ["effusion"]}, "panels")
    ok(step4(probe_set, densenet_ckpt, out, "--reinit_seed", "0"))
    assert (out / "nih14_test" / "densenet121-reinit0" / "eval" / "eval.json").is_file()
    ok(visualization(probe_set, concepts, boxes(tmp_path), out))
    assert not (out / "nih14_nih" / "densenet121").exists()
    res = json.loads((out / "nih14_nih" / "densenet121-reinit0" / "visualization" / "total_results.json").read_text())
    act = torch.load(ex.parents[1] / "activations.pt", weights_only=True)
    row = {name: i for i, name in enumerate(act["image_ids"])}
    for img in res["images"]:
        want = torch.sigmoid(act["logits"][row[img["image"]]]).tolist()
        assert [img["probabilities"][c] for c in class_names()] == pytest.approx(want, abs=1e-4)


def test_dissection_of_the_re_initialised_run_reads_maps_of_that_network(reinit, tmp_path):
    """compare_describers.py's dissection on the re-initialised run: its maps average to the activations step 2
    stored (checked by the step itself, which refused them when it ran the trained network), cached in the
    re-initialised target's folder."""
    out, ex = reinit
    concepts = hand_concepts(ex, {3: ["effusion"]}, "dissect")
    ok(run_script("compare_describers.py", "--mammi_run", str(concepts), "--describers", "dissection",
                  "--sensitivity_percents", "", "--metric_encoders", "", "--box_file", str(boxes(tmp_path)),
                  "--ablation_draws", "10", *SMALL))
    assert (concepts.parent / "describers" / "dissection" / "scores.pt").is_file()
    assert list((out / "nih14_test" / "densenet121-reinit0").glob("maps_*.pt"))
    assert not list((out / "nih14_test" / "densenet121").glob("maps_*.pt"))


# ---- step 4's thresholds: keyed, checked, never mixed

@pytest.fixture(scope="module")
def trained(probe_set, densenet_ckpt, tmp_path_factory):
    """Steps 2 and 4 with checkpoint A."""
    out = tmp_path_factory.mktemp("trained") / "res"
    ok(stage2(probe_set, densenet_ckpt, out, "--split", "test", "--layer", "penultimate"))
    ok(step4(probe_set, densenet_ckpt, out))
    return out


def test_thresholds_of_another_checkpoint_are_refused(trained, probe_set, densenet_ckpt, tmp_path):
    """Steps 2-3 re-run with checkpoint B after step 4 ran with A: visualization.py refuses A's thresholds in
    one line naming Threshold.csv and the step to re-run, and draws nothing; re-run, it draws."""
    out = tmp_path / "res"
    shutil.copytree(trained, out)
    ex = out / "nih14_test" / "densenet121" / "penultimate" / "adaptive93" / "examples.json"
    bbox = boxes(tmp_path)
    ok(visualization(probe_set, hand_concepts(ex, {}, "a"), bbox, out))  # A's concepts, A's thresholds
    vis = out / "nih14_nih" / "densenet121" / "visualization"
    shutil.rmtree(vis)
    other = save_random_target(tmp_path / "b.pth", "densenet121", seed=1)
    ok(stage2(probe_set, other, out, "--split", "test", "--layer", "penultimate"))
    concepts = hand_concepts(ex, {}, "b")
    thr = out / "nih14_test" / "densenet121" / "eval" / "Threshold.csv"
    refused(visualization(probe_set, concepts, bbox, out), str(thr), str(densenet_ckpt), str(other),
            "target_model_perform.py", alone=False)
    assert not list(vis.rglob("*.png")) and not (vis / "total_results.json").exists()
    ok(step4(probe_set, other, out))
    ok(visualization(probe_set, concepts, bbox, out))


def test_read_thresholds_checks_the_record_written_after_them(trained, densenet_ckpt):
    """Threshold.csv is read for a target only when eval.json beside it names that target and holds the
    file's digest: absent, of another target, or vouching for other bytes, it is refused."""
    d = trained / "nih14_test" / "densenet121" / "eval"
    thr, classes = d / "Threshold.csv", class_names()
    mine = target_key({"model": "densenet121", "checkpoint": str(densenet_ckpt), "resize": 64, "crop": 64})
    assert len(read_thresholds(thr, classes, mine)) == 14
    with pytest.raises(PipelineError, match="another target"):
        read_thresholds(thr, classes, target_key({"model": "densenet121", "checkpoint": str(densenet_ckpt),
                                                  "resize": 64, "crop": 64, "reinit_seed": 0}))
    copy = trained.parent / "copy"
    shutil.copytree(d, copy)
    copy.joinpath("Threshold.csv").write_text(thr.read_text().replace("Atelectasis,", "Atelectasis,0"))
    with pytest.raises(PipelineError, match="not the file"):
        read_thresholds(copy / "Threshold.csv", classes, mine)
    (copy / "eval.json").unlink()
    with pytest.raises(PipelineError, match="no eval.json beside it"):
        read_thresholds(copy / "Threshold.csv", classes, mine)


def test_a_write_failing_midway_through_step_4_leaves_nothing_of_the_run_before(trained, probe_set, densenet_ckpt,
                                                                               tmp_path, monkeypatch):
    """A full disk at step 4's third file: exit 2 in one line; the eval folder holds only the two files this
    run completed (no probabilities, labels or ROC figure of the run before beside them, no eval.json), and
    its thresholds are refused as unfinished."""
    out = tmp_path / "res"
    shutil.copytree(trained, out)
    d = out / "nih14_test" / "densenet121" / "eval"
    assert sorted(p.name for p in d.iterdir() if not p.name.startswith(".")) == sorted(
        ["Threshold.csv", "TestEval.csv", "TestProbs.csv", "TestLabels.csv", "ValProbs.csv", "ValLabels.csv",
         "roc_curves.png", "eval.json"])
    disk_full_at(monkeypatch, "Probs.csv")
    refused(step4(probe_set, densenet_ckpt, out), "ValProbs.csv", "No space left on device", alone=False)
    assert sorted(p.name for p in d.iterdir() if not p.name.startswith(".")) == ["TestEval.csv", "Threshold.csv"]
    with pytest.raises(PipelineError, match="no eval.json"):
        read_thresholds(d / "Threshold.csv", class_names(),
                        target_key({"model": "densenet121", "checkpoint": str(densenet_ckpt), "resize": 64, "crop": 64}))


def test_a_write_failing_midway_through_ablation_leaves_no_table_of_the_run_before(reinit, tmp_path, monkeypatch):
    """ablation.json, the table the gallery reads, is not left beside a figure of other numbers: a full disk
    at ablation.png removes it."""
    _, ex = reinit
    concepts = hand_concepts(ex, {3: ["effusion"]}, "full")
    ok(run_script("ablation.py", "--ablation_concepts", str(concepts), "--ablation_draws", "10", *SMALL))
    disk_full_at(monkeypatch, "ablation.png")
    refused(run_script("ablation.py", "--ablation_concepts", str(concepts), "--ablation_draws", "11", *SMALL),
            "ablation.png", "No space left on device", alone=False)
    assert not (concepts.parent / "ablation.json").exists()


# ---- the gallery links what chains to the names it shows, wherever the folder lies

def gallery(res: Path, *extra) -> tuple[str, dict]:
    log = ok(run_script("gallery.py", "--save_root", str(res), "--overlays", "no", *extra))
    return log, page_data(res / "gallery" / "index.html")[2]


def test_the_gallery_links_no_panel_or_ablation_table_of_earlier_names(tmp_path):
    """Step 3 re-run in the same folder with other names (the concept set edited): the panels titled with
    the old names and the ablation table of the old names are no longer shown beside the new ones."""
    res = write_synthetic(tmp_path, n_neurons=8, n_images=12)
    log, data = gallery(res)
    assert "1 panels linked" in log and data["runs"][0]["ablation"]
    concepts = next(res.rglob("concepts.json"))
    named = json.loads(concepts.read_text())
    named["neurons"][3]["concepts"] = [{"concept": "catheter", "score": 9.0}]
    concepts.write_text(json.dumps(named))
    log, data = gallery(res)
    assert "0 panels linked" in log and data["runs"][0]["ablation"] is None and data["panels"] == []
    assert "its panels are not linked" in log and "its ablation table is not shown" in log


def test_a_moved_results_folder_keeps_its_panels_and_ablation(tmp_path):
    """The results folder moved whole: the gallery links visualization.py's panels and ablation.py's table of
    the concepts.json where it lies now, not at the path total_results.json stored."""
    res = write_synthetic(tmp_path / "a", n_neurons=8, n_images=12)
    moved = tmp_path / "b" / "res"
    moved.parent.mkdir()
    shutil.move(res, moved)
    log, data = gallery(moved)
    assert "1 panels linked" in log and data["runs"][0]["ablation"]
    assert [data["panels"][i]["i"] for n in data["neurons"] if n["n"] == 3 for i in n["p"]] == ["s00001.png"]


# ---- every write under --save_root

@pytest.mark.parametrize("script, option", [("ablation.py", "--ablation_concepts"), ("concept_matching.py", "--examples"),
                                            ("compare_describers.py", "--mammi_run")])
def test_an_input_outside_save_root_is_refused_before_anything_is_written(reinit, tmp_path, script, option):
    """A step that writes beside an input given by path, given one outside --save_root: exit 2 in one line
    naming the option, the file and the --save_root to pass; nothing written beside the input or anywhere."""
    out, ex = reinit
    other = tmp_path / "other"
    shutil.copytree(out, other)
    ex = other / ex.relative_to(out)
    given = ex if option == "--examples" else hand_concepts(ex, {3: ["effusion"]}, "outside")
    before, mine = snapshot(other), tmp_path / "mine"
    refused(run_script(script, option, str(given), "--save_root", str(mine), *SMALL), option, str(given),
            f"--save_root {other}", alone=False)
    assert snapshot(other) == before and not mine.exists()


def test_every_write_is_checked_against_save_root(tmp_path):
    """The check every write goes through: a gallery folder outside --save_root is refused in one line and
    nothing is written there."""
    res = write_synthetic(tmp_path, n_neurons=8, n_images=12)
    elsewhere = tmp_path / "elsewhere"
    refused(run_script("gallery.py", "--save_root", str(res), "--gallery_dir", str(elsewhere), "--overlays", "no"),
            str(elsewhere), f"--save_root {res}", alone=False)
    assert not elsewhere.exists()


def test_under_reads_the_text_then_the_absolute_paths():
    """A path is under a root below it, never the root itself, never through '..': on the paths' text, and
    on their absolute forms (an absolute input under a relative --save_root)."""
    assert under("results", Path("results") / "a")
    assert under("results", Path("results").absolute() / "a")
    assert under(Path("results").absolute(), Path("results") / "a")
    assert under(".", Path("x") / "y")
    for bad in (Path("results"), Path("results") / ".." / "x", Path("results") / "a" / ".." / ".." / "x",
                Path("results2") / "a", Path("/elsewhere/results/a")):
        assert not under("results", bad), bad
