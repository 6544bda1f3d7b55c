"""visualization.py and attribution.py: Taylor scores, maps, pointing game, panels, total_results.json."""
import io
import json
import runpy
import sys

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from captum.attr import LayerGradientXActivation
from matplotlib.collections import QuadMesh
from PIL import Image

from conftest import REPO
from core.digests import file_digest
from dataset.boxes import disease_colour
from dataset.nih import class_names
from mammi.attribution import taylor_scores, top_neurons
from mammi.maps import NEURON_COLOURS, OVERALL_COLOUR, neuron_map, overall_map, overlay
from mammi.pointing import pointing
from models.layers import map_module
from models.target import build_target
from pipeline.outputs import eval_dir, examples_dir, matching_dir, target_key

SIZE, CELL, NEURON, CLASS = 56, 8, 5, 3     # 56-px input, 8-px cells (a 7x7 map), the built neuron and class
SQUARE = [32, 8, 48, 24]                      # x1, y1, x2, y2 of the bright square: cells rows 1-2, cols 4-5


class Tiny(nn.Module):
    """DenseNet-shaped (features -> ReLU -> mean -> classifier). Channel NEURON is the mean brightness of
    each 8x8 cell minus 0.5: positive on the bright square only. The other channels are a constant 0.1.
    Class CLASS weighs NEURON 4 and the rest 0.5, so NEURON has the largest Taylor score for it."""

    def __init__(self):
        super().__init__()
        self.features = nn.Conv2d(3, 8, kernel_size=CELL, stride=CELL)
        self.classifier = nn.Linear(8, 14)
        with torch.no_grad():
            self.features.weight.zero_()
            self.features.bias.fill_(0.1)
            self.features.weight[NEURON] = 1 / (3 * CELL * CELL)
            self.features.bias[NEURON] = -0.5
            self.classifier.weight.fill_(0.5)
            self.classifier.weight[CLASS, NEURON] = 4.0
            self.classifier.bias.zero_()

    def forward(self, x):
        return self.classifier(F.relu(self.features(x)).mean((2, 3)))


def square_image(x1, y1, x2, y2):
    img = torch.full((3, SIZE, SIZE), 0.1)
    img[:, y1:y2, x1:x2] = 1.0
    return img


def no_hooks(model):
    return all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())


def test_built_neuron_is_found_and_points_into_its_box():
    model = Tiny().eval()
    x = torch.stack([square_image(*SQUARE), square_image(0, 40, 16, 56)])  # the square, then moved away
    logits, taylor, maps = taylor_scores(model, x)
    assert torch.allclose(logits, model(x), atol=1e-6)
    assert taylor.shape == (2, 14, 8) and maps.shape == (2, 8, 7, 7)
    assert no_hooks(model)
    # Plain autograd agrees with captum's activation x gradient at the head's input.
    ref = LayerGradientXActivation(model, model.classifier).attribute(x, target=CLASS, attribute_to_layer_input=True)
    assert torch.allclose(taylor[:, CLASS], ref, atol=1e-6)
    # One image at a time gives the same scores as the batch.
    assert torch.allclose(taylor_scores(model, x[:1])[1], taylor[:1], atol=1e-6)

    top = top_neurons(taylor[0, CLASS], 2)
    assert top[0] == NEURON
    heat = overall_map(maps[0, top], taylor[0, CLASS, top], 90, SIZE)
    r, c = np.unravel_index(np.argmax(heat), heat.shape)
    assert SQUARE[0] <= c < SQUARE[2] and SQUARE[1] <= r < SQUARE[3]
    hit = pointing(heat, [SQUARE])
    assert hit["hit"] and hit["mass_inside"] > 0.5
    # The neuron's own map (70th percentile) is nonzero on the square and zero far from it.
    m = neuron_map(maps[0, NEURON], 70, SIZE)
    assert m[12:20, 36:44].min() > 0 and m[40:, :16].max() == 0

    # The square moved elsewhere, the box left in place: the map follows the square, a miss.
    top = top_neurons(taylor[1, CLASS], 1)
    assert top == [NEURON]
    moved = pointing(overall_map(maps[1, top], taylor[1, CLASS, top], 90, SIZE), [SQUARE])
    assert not moved["hit"] and moved["mass_inside"] < 0.05
    # A map with nothing positive points nowhere.
    assert pointing(np.zeros((SIZE, SIZE)), [SQUARE]) == {"hit": False, "mass_inside": None, "peak": None}


def test_hooks_are_removed_when_the_forward_fails():
    model = Tiny()
    with pytest.raises(RuntimeError):
        taylor_scores(model, torch.zeros(1, 1, SIZE, SIZE))  # one channel: the conv refuses
    assert no_hooks(model)


@pytest.mark.parametrize("arch, relu", [("densenet121", True), ("resnet50", False)])
def test_spatial_map_is_the_layer_the_head_pools(arch, relu):
    # DenseNet: `features` ends with norm5, its ReLU comes after (so the map is pre-ReLU); ResNet: layer4.
    torch.manual_seed(0)
    model = build_target(arch).eval()
    x = torch.randn(2, 3, 64, 64)
    logits, taylor, maps = taylor_scores(model, x)
    assert map_module(model) == ("features" if relu else "layer4")
    assert maps.shape[:2] == (2, 1024 if relu else 2048)
    assert torch.allclose(logits, model(x), atol=1e-4)
    pooled = (F.relu(maps) if relu else maps).mean((2, 3))
    head = model.classifier if relu else model.fc
    assert torch.allclose(taylor[:, CLASS], pooled * head.weight[CLASS], atol=1e-5)
    assert (maps < 0).any() == relu
    assert no_hooks(model)


@pytest.fixture
def vis(monkeypatch):
    """visualization.py's functions, its constants at their defaults."""
    monkeypatch.setattr(sys, "argv", ["visualization.py"])
    return runpy.run_path(str(REPO / "visualization.py"), run_name="visualization_under_test")


def sample_axes(png, fig, ax, n):
    """The figure's pixels at the centres of the n x n image shown in ax."""
    bb = ax.get_window_extent()
    centres = (np.arange(n) + 0.5) / n
    cols = np.round(bb.x0 + centres * bb.width - 0.5).astype(int)
    rows = np.round(png.shape[0] - (bb.y1 - centres * bb.height) - 0.5).astype(int)
    return png[rows[:, None], cols[None, :]]


def test_panel_shows_what_it_claims(vis):
    model = Tiny().eval()
    x = square_image(*SQUARE)[None]
    _, taylor, maps = taylor_scores(model, x)
    img = np.full((SIZE, SIZE, 3), 100, np.uint8)
    top = top_neurons(taylor[0, CLASS], 1)
    shown = [neuron_map(maps[0, k], 70, SIZE) for k in top]
    heat = overall_map(maps[0, top], taylor[0, CLASS, top], 90, SIZE)
    gt = [{"label": "Mass", "box": SQUARE}, {"label": "Effusion", "box": [2, 30, 20, 50]}]
    neurons = [{"neuron": k, "taylor": float(taylor[0, CLASS, k]), "concepts": ["nodule", "mass"]} for k in top]
    pg = pointing(heat, [SQUARE])
    fig = vis["panel"]("x.png", "Mass", 0.9, 0.5, img, gt, neurons, shown, heat, [SQUARE], pg)
    fig.canvas.draw()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=fig.dpi)
    png = np.asarray(Image.open(buf).convert("RGB")).astype(int)
    ax_gt, ax_n, ax_all = fig.axes[:3]

    # Each overlay panel is the composite it was given: the colour on the square, the bare image elsewhere.
    on = np.zeros((SIZE, SIZE), bool)
    on[SQUARE[1]:SQUARE[3], SQUARE[0]:SQUARE[2]] = True
    # The overall panel also carries the class's box outline and a marker at the peak: compared apart from them.
    yy, xx = np.mgrid[:SIZE, :SIZE] + 0.5
    x1, y1, x2, y2 = SQUARE
    edge = ((np.abs(xx - x1) < 2) | (np.abs(xx - x2) < 2)) & (yy > y1 - 2) & (yy < y2 + 2)
    edge |= ((np.abs(yy - y1) < 2) | (np.abs(yy - y2) < 2)) & (xx > x1 - 2) & (xx < x2 + 2)
    edge |= (np.abs(xx - pg["peak"][0]) < 4) & (np.abs(yy - pg["peak"][1]) < 4)
    frame = np.ones((SIZE, SIZE), bool)
    frame[1:-1, 1:-1] = False  # the outermost cells touch the axes frame
    for ax, m, colour, skip in ((ax_n, shown[0], NEURON_COLOURS[0], frame), (ax_all, heat, OVERALL_COLOUR, frame | edge)):
        got, want = sample_axes(png, fig, ax, SIZE), overlay(img, m, colour).astype(int)
        assert np.abs(got - want)[~skip].max() <= 3
        tint = got[on & ~skip].mean(0) - 100
        assert np.dot(tint, np.array(colour) - 100) > 0 and np.abs(tint).max() > 40
        assert (np.abs(got[28:-1, 1:20] - 100) <= 3).all()
    # Ground truth: each box outlined in its disease's colour, inside the image panel.
    bb = ax_gt.get_window_extent()
    region = png[int(png.shape[0] - bb.y1):int(png.shape[0] - bb.y0), int(bb.x0):int(bb.x1)]
    for label in ("Mass", "Effusion"):
        assert (np.abs(region - np.array(disease_colour(label))).max(-1) <= 20).sum() > 100, label
    assert f"neuron {NEURON}" in ax_n.get_title() and "nodule, mass" in ax_n.get_title()
    assert f"Taylor score {neurons[0]['taylor']:.3g}" in ax_n.get_title()
    assert "pointing: hit" in ax_all.get_title() and "overall map (top 1 neuron)" in ax_all.get_title()
    assert "x.png: Mass" in fig._suptitle.get_text()
    # Under each overlay the scale of its tint: from 0 to the map's largest value, in the map's colour at the top.
    bars = [ax for ax in fig.axes if ax.get_label() == "<colorbar>"]
    assert len(bars) == 2
    for bar, m, colour, what in ((bars[0], shown[0], NEURON_COLOURS[0], f"neuron {NEURON}'s activation"),
                                 (bars[1], heat, OVERALL_COLOUR, "Taylor-weighted activation")):
        assert bar.get_xlim() == pytest.approx((0, m.max()))
        cmap = next(c for c in bar.collections if isinstance(c, QuadMesh)).cmap  # the bar's colours
        top = np.array(cmap(1.0)[:3]) * 255  # mid-grey tinted at opacity 0.7 (overlay's maximum)
        assert top == pytest.approx(0.3 * 128 + 0.7 * np.array(colour), abs=1)
        assert np.array(cmap(0.0)[:3]) * 255 == pytest.approx([128, 128, 128], abs=1)
        assert bar.get_xlabel() == what
    # ... and a caption that says what the score and the maps are, with the percentiles used.
    caption = " ".join(" ".join(t.get_text().split()) for t in fig.texts)
    assert "Taylor score: the neuron's pooled activation times the gradient of the Mass logit" in caption
    assert "zeroed below its 70th percentile" in caption and "zeroed below its 90th percentile" in caption


def vouch_for_thresholds(folder, target):
    """The eval.json target_model_perform.py writes after a hand-made Threshold.csv's run: fitted to target."""
    (folder / "eval.json").write_text(json.dumps({"key": "by-hand", "target": target_key(target), "config": target,
                                                  "files": {"Threshold.csv": file_digest(folder / "Threshold.csv")}}))


def test_script_end_to_end(densenet_ckpt, tmp_path, monkeypatch, capsys):
    images = tmp_path / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    for name in ("a.png", "b.png"):
        Image.fromarray(rng.integers(0, 255, (96, 96), dtype=np.uint8)).save(images / name)
    boxes = tmp_path / "bbox.csv"
    boxes.write_text("image_name,label,bbox_x,bbox_y,bbox_w,bbox_h\na.png,Cardiomegaly,200,300,600,500\n"
                     "a.png,Effusion,0,600,300,300\nb.png,Mass,500,100,300,300\nc.png,Mass,1,1,9,9\n")
    classes = class_names()
    root = tmp_path / "results"
    cfg = {"save_root": str(root), "dataset": "nih14", "split": "train", "model": "densenet121", "layer": "penultimate",
           "selection": "adaptive", "adaptive_percent": 93.0, "topk": 20, "model_clip": "medclip", "clip_weights": "",
           "concept_set": "mimic_nouns", "template_ver": "base", "adaptive": True, "alpha": 95.0}
    # Cardiomegaly and Mass always predicted, Hernia without a threshold, the rest never.
    thr = {"Cardiomegaly": "0", "Mass": "0", "Hernia": "nan"}
    (eval_dir(cfg)).mkdir(parents=True)
    (eval_dir(cfg) / "Threshold.csv").write_text("label,bestthr\n" + "".join(f"{c},{thr.get(c, '1.5')}\n" for c in classes))
    vouch_for_thresholds(eval_dir(cfg), {"model": "densenet121", "checkpoint": str(densenet_ckpt), "resize": 72,
                                         "crop": 64})
    concepts = matching_dir(cfg) / "concepts.json"
    concepts.parent.mkdir(parents=True)
    # the examples it names, of the activations beside them: the reader checks both keys
    ex_json = examples_dir(cfg) / "examples.json"
    torch.save({"key": "acts", "config": {}, "activations": torch.zeros(2, 1024), "image_ids": ["a.png", "b.png"]},
               ex_json.parent.parent / "activations.pt")
    ex_json.write_text(json.dumps({"key": "ex", "activations_key": "acts", "config": {
        **cfg, "data_root": str(images), "checkpoint": str(densenet_ckpt), "resize": 72, "crop": 64, "data_key": "d"},
        "neurons": [{"neuron": k, "dead": False, "examples": [{"image_id": "a.png", "activation": 1.0}]}
                    for k in range(1024)]}))
    concepts.write_text(json.dumps({"examples_key": "ex", "config": {
        "model": "densenet121", "layer": "penultimate", "examples": str(ex_json)}, "neurons": [
        {"neuron": k, "n_examples": 3, "status": "ok", "concepts": [{"concept": f"c{k}", "score": 1.0}]}
        for k in range(1024)]}))
    args = ["--data_root", str(images), "--box_file", str(boxes), "--checkpoint", str(densenet_ckpt),
            "--resize", "72", "--crop", "64", "--num_top_neuron", "2", "--save_root", str(root)]
    monkeypatch.setattr(sys, "argv", ["visualization.py", *args])
    runpy.run_path(str(REPO / "visualization.py"), run_name="__main__")
    out = capsys.readouterr().out
    assert "1 missing" in out and "Hernia" in out

    vdir = root / "nih14_nih" / "densenet121" / "visualization"
    res = json.loads((vdir / "total_results.json").read_text())
    assert [r["image"] for r in res["images"]] == ["a.png", "b.png"]
    a = res["images"][0]
    assert a["ground_truth"] == ["Cardiomegaly", "Effusion"]
    assert set(a["probabilities"]) == set(classes)
    preds = [p for r in res["images"] for p in r["predictions"]]
    assert [p["class"] for p in preds] == ["Cardiomegaly", "Mass"] * 2
    for p in preds:
        assert len(p["neurons"]) == 2 and p["neurons"][0]["taylor"] >= p["neurons"][1]["taylor"]
        assert all(n["concepts"] == [f"c{n['neuron']}"] for n in p["neurons"])
        fig = np.asarray(Image.open(vdir / p["figure"]).convert("RGB")).astype(int)
        for colour in NEURON_COLOURS[:2]:  # both neurons' overlays are drawn
            assert (np.abs(fig - np.array(colour)).max(-1) <= 60).sum() > 50
    # Pointing: only (a, Cardiomegaly) and (b, Mass) have a box of their class.
    assert preds[0]["pointing"] is not None and preds[1]["pointing"] is None and preds[3]["pointing"] is not None
    pg = res["pointing_game"]
    assert pg["overall"]["n"] == 2 and set(pg["per_class"]) == {"Cardiomegaly", "Mass"}
    assert pg["pairs_without_boxes"] == 2
    assert "pointing game" in out and "overall" in out.split("pointing game")[1]

    # concepts.json of another layer size: one line naming the file and the fix.
    concepts.write_text(json.dumps({"examples_key": "ex", "config": {
        "model": "densenet121", "layer": "penultimate", "examples": str(ex_json)}, "neurons": [
        {"neuron": k, "n_examples": 1, "concepts": []} for k in range(14)]}))
    with pytest.raises(SystemExit) as e:
        runpy.run_path(str(REPO / "visualization.py"), run_name="__main__")
    err = capsys.readouterr().err
    assert e.value.code == 2 and "names 14 neurons" in err and "concept_matching.py" in err
