"""Any classifier on any collection: each target family through steps 2 and 3 with random
weights built here, `--layer list`, a ViT's tokens, several layers in one pass equal to separate
passes, the README's three worked commands as written, and each bad input as one line, exit 2, with
the caches untouched."""
import json
import re
import shlex
import shutil

import numpy as np
import pytest
import timm
import torch
import torch.nn as nn
import torchvision
import torchxrayvision as xrv
from PIL import Image

from conftest import (
    REAL_DICOM,
    REAL_JPEG,
    REPO,
    TINY_CLIP,
    make_probe_set,
    ok,
    refused,
    run_script,
    snapshot,
    stage3,
    unlabeled_stage2,
    write_dicom,
)
from models.layers import reduce_output, taps, token_layout
from pipeline.cache import load_tensors

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: one intra-op thread

CLASSES = ["Effusion", "Cardiomegaly", "Mass"]
CONCEPTS = "effusion\ncardiomegaly\nmass\nheart\nlung\nrib\n"
USER_MODEL = '''import torch.nn as nn


def build():
    return nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 16, 3, stride=2), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 3))
'''


def tiny_user_model() -> nn.Module:
    scope = {}
    exec(USER_MODEL, scope)
    return scope["build"]()


def mixed_folder(root):
    """The formats a hospital export mixes: the real DICOM (and a copy without suffix) and JPEG,
    a 16-bit PNG, an RGBA PNG and 8-bit PNGs, in sub-folders."""
    rng = np.random.default_rng(0)
    (root / "ct" / "a").mkdir(parents=True)
    shutil.copy(REAL_DICOM, root / "ct" / "a" / "IM0001")
    shutil.copy(REAL_DICOM, root / "ct" / "scan.dcm")
    shutil.copy(REAL_JPEG, root / "photo.jpg")
    Image.fromarray(rng.integers(0, 65535, (80, 80)).astype(np.uint16)).save(root / "wide16.png")
    rgba = rng.integers(0, 255, (80, 80, 4), dtype=np.uint8)
    Image.fromarray(rgba, "RGBA").save(root / "ct" / "rgba.png")
    for i in range(3):
        Image.fromarray(rng.integers(0, 255, (70, 90), dtype=np.uint8)).save(root / f"p{i}.png")
    return root


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Images, a class list, a concept set, a tiny VLM and one checkpoint (or file) per family."""
    root = tmp_path_factory.mktemp("families")
    w = {"root": root, "images": mixed_folder(root / "export"), "classes": root / "classes.txt",
         "concepts": root / "concepts.txt", "clip": root / "tiny-clip.json"}
    w["classes"].write_text("\n".join(CLASSES) + "\n")
    w["concepts"].write_text(CONCEPTS)
    w["clip"].write_text(json.dumps(TINY_CLIP))
    torch.manual_seed(0)
    torch.save(torchvision.models.mobilenet_v3_small(num_classes=3).state_dict(), root / "mobilenet.pth")
    torch.save(timm.create_model("test_vit", num_classes=3).state_dict(), root / "vit.pth")
    torch.save(xrv.models.DenseNet(weights=None), root / "xrv_densenet.pt")  # a whole pickled model, as xrv ships
    (root / "mine.py").write_text(USER_MODEL)
    torch.jit.save(torch.jit.script(tiny_user_model()), root / "scripted.pt")
    return w


def families(w):
    """(--model, its extra step-2 arguments, a second layer, the number of outputs)."""
    small = ["--resize", "56", "--crop", "48"]
    return {
        "torchvision": (["--model", "torchvision:mobilenet_v3_small", "--checkpoint", str(w["root"] / "mobilenet.pth"),
                         "--classes", str(w["classes"]), *small], "features.8", 3),
        "timm-vit": (["--model", "timm:test_vit", "--checkpoint", str(w["root"] / "vit.pth"),
                      "--classes", str(w["classes"])], "blocks.2", 3),  # its own 160 px input
        "xrv": (["--model", "xrv:densenet121-res224-all", "--checkpoint", str(w["root"] / "xrv_densenet.pt"),
                 "--resize", "32", "--crop", "32"], "features.denseblock2", 18),
        "file": (["--model", f"{w['root'] / 'mine.py'}:build", "--classes", str(w["classes"]), *small], "2", 3),
        "torchscript": (["--model", str(w["root"] / "scripted.pt"), "--classes", str(w["classes"]), *small], None, 3),
    }


def export_stage2(w, out, *args):
    """Step 2 on the world's unlabeled images, as the "export" collection, in batches of 4."""
    return unlabeled_stage2(w["images"], out, None, *args, dataset="export", size=None, batch=4)


def export_stage3(w, out, model, *args):
    """Step 3 over export_stage2's outputs, with the world's tiny CLIP and concept set, no metric encoder."""
    return stage3(out, w["clip"], "--dataset", "export", "--labels", "none", *args, model=model,
                  concepts=w["concepts"], encoders="")


@pytest.mark.parametrize("family", ["torchvision", "timm-vit", "xrv", "file", "torchscript"])
def test_family_through_steps_2_and_3(world, tmp_path, family):
    args, second, k = families(world)[family]
    model = args[1]
    layers = "fc" + (f",{second}" if second else "")
    out = tmp_path / "res"
    log = ok(export_stage2(world, out, *args, "--layer", layers))
    assert "8 images from the folder" in log
    layer_dirs = list((out / "export_all").glob("*/fc"))
    assert len(layer_dirs) == 1
    fc = load_tensors(layer_dirs[0] / "activations.pt")
    assert fc["activations"].shape == (8, k) and torch.equal(fc["activations"], fc["logits"])
    names = CLASSES if k == 3 else xrv.models.model_urls["all"]["labels"]
    assert fc["config"]["class_names"] == names
    header = (layer_dirs[0] / "adaptive93" / "examples.csv").read_text().splitlines()[0].split(",")
    assert header[:5] == ["neuron", "rank", "image_id", "activation", "findings"]
    assert header[5:] == [f"prob_{c}" for c in names]  # no label columns: the folder has no labels
    if second:
        other = load_tensors(layer_dirs[0].parent / second / "activations.pt")
        assert other["activations"].shape[0] == 8 and torch.equal(other["logits"], fc["logits"])
    log = ok(export_stage3(world, out, model, "--layer", "fc"))
    assert "hit rate" in log
    match = next(layer_dirs[0].glob("adaptive93/vlm_*/*"))
    concepts = json.loads((match / "concepts.json").read_text())
    assert len(concepts["neurons"]) == k and concepts["config"]["class_names"] == names
    metrics = json.loads((match / "metrics.json").read_text())
    assert metrics["hit_rate"]["n"] == k
    # --layer list works for every family and writes nothing
    before = sorted(out.rglob("*"))
    log = ok(export_stage2(world, out, *args, "--layer", "list"))
    table = {line.split()[0]: line.split()[1:] for line in log.splitlines()[log.splitlines().index(
        next(x for x in log.splitlines() if x.startswith("layer "))) + 1:]}
    assert table["fc"] == ["[2,", f"{k}]", str(k)]
    if second:
        assert second in table and "penultimate" in table
    assert sorted(out.rglob("*")) == before


def test_vit_tokens_mean_over_patches_or_class_token():
    torch.manual_seed(0)
    vit = timm.create_model("test_vit", num_classes=3).eval()
    assert token_layout(vit) == (1, 100)
    x = torch.randn(2, 3, 160, 160)
    raw = {}
    grab = vit.blocks[2].register_forward_hook(lambda m, i, o: raw.__setitem__("out", o))
    with torch.no_grad():
        with taps(vit, ["blocks.2", "penultimate"]) as mean:
            vit(x)
        with taps(vit, ["blocks.2"], token_pool="cls") as cls:
            vit(x)
    grab.remove()
    assert raw["out"].shape == (2, 101, 64)
    assert torch.allclose(mean["blocks.2"], raw["out"][:, 1:].mean(1))  # the class token left out
    assert torch.allclose(cls["blocks.2"], raw["out"][:, 0])
    assert mean["penultimate"].shape == (2, 64)
    # a sequence of patches alone (before the class token joins) has no prefix to leave out
    patches = torch.randn(2, 100, 64)
    assert torch.allclose(reduce_output(patches, (1, 100), "mean"), patches.mean(1))
    with torch.device("meta"):
        tv = torchvision.models.vit_b_16(num_classes=3)
    assert token_layout(tv) == (1, 196)


def test_several_layers_in_one_pass_equal_separate_passes(tmp_path, densenet_ckpt):
    """DenseNet's `features` output is what its final in-place ReLU overwrites: read in the same pass
    as `penultimate`, it must still be the value a pass of its own reads."""
    images = make_probe_set(tmp_path / "p", n=6, size=40)
    common = ["--data_root", str(images), "--checkpoint", str(densenet_ckpt), "--resize", "32", "--crop", "32",
              "--num_workers", "0", "--batch_size", "4"]
    layers = ["fc", "penultimate", "features"]
    one = tmp_path / "one"
    log = ok(run_script("example_selection.py", *common, "--save_root", str(one), "--layer", ",".join(layers)))
    assert "activations of fc (6, 14), penultimate (6, 1024), features (6, 1024)" in log
    apart = tmp_path / "apart"
    for layer in layers:
        ok(run_script("example_selection.py", *common, "--save_root", str(apart), "--layer", layer))
    for layer in layers:
        a = load_tensors(one / "nih14_train" / "densenet121" / layer / "activations.pt")
        b = load_tensors(apart / "nih14_train" / "densenet121" / layer / "activations.pt")
        assert a["key"] == b["key"] and torch.equal(a["activations"], b["activations"])
        assert torch.equal(a["logits"], b["logits"]) and a["image_ids"] == b["image_ids"]
        ex_a = one / "nih14_train" / "densenet121" / layer / "adaptive93"
        ex_b = apart / "nih14_train" / "densenet121" / layer / "adaptive93"
        ja, jb = json.loads((ex_a / "examples.json").read_text()), json.loads((ex_b / "examples.json").read_text())
        assert ja["key"] == jb["key"] and ja["neurons"] == jb["neurons"]
        assert (ex_a / "examples.csv").read_bytes() == (ex_b / "examples.csv").read_bytes()
    pen = load_tensors(one / "nih14_train" / "densenet121" / "penultimate" / "activations.pt")["activations"]
    feats = load_tensors(one / "nih14_train" / "densenet121" / "features" / "activations.pt")["activations"]
    assert (feats < 0).any() and not torch.equal(feats, pen)  # before the ReLU, as a pass of its own
    # a second multi-layer run reuses all three
    log = ok(run_script("example_selection.py", *common, "--save_root", str(one), "--layer", ",".join(layers)))
    assert log.count("reusing") == 6


# ---- the README's worked commands, as written, on the files they name

def readme_commands():
    """The bash commands and the my_model.py of README's "Your own model and data", in order."""
    text = (REPO / "README.md").read_text()
    section = text.split("## Your own model and data")[1].split("\n## ")[0]
    blocks = re.findall(r"```(bash|python)\n(.*?)```", section, re.S)
    commands = [shlex.split(line) for kind, body in blocks if kind == "bash" for line in body.splitlines()
                if line.startswith("python ")]
    user_file = next(body for kind, body in blocks if kind == "python")
    return commands, user_file


@pytest.fixture(scope="module")
def user_folder(tmp_path_factory):
    """A working folder with every file the README's three examples name, and a home whose
    torchxrayvision cache holds the DenseNet weights (random, pickled as torchxrayvision ships them)."""
    cwd = tmp_path_factory.mktemp("user")
    commands, user_file = readme_commands()
    # 1. an unlabeled export: DICOM (one without a suffix), JPEG and PNG, and a fine-tuned timm model
    mixed_folder(cwd / "hospital_export")
    (cwd / "classes.txt").write_text("Effusion\nCardiomegaly\nMass\nNo Finding\n")
    torch.manual_seed(1)
    torch.save(timm.create_model("resnet10t", num_classes=4).state_dict(), cwd / "resnet10t_cxr.pth")
    # 2. a CheXpert-style CSV: Path relative to data/, metadata columns, 1 / 0 / -1 / blank
    chex = cwd / "data" / "CheXpert-v1.0-small"
    rows = []
    for i, (cardio, edema, effusion) in enumerate([("1.0", "", "-1.0"), ("0.0", "-1.0", ""), ("", "1.0", "1.0"),
                                                   ("-1.0", "0.0", "0.0"), ("1.0", "", "0.0")]):
        p = chex / "valid" / f"patient{i:05d}" / "study1" / "view1_frontal.jpg"
        p.parent.mkdir(parents=True)
        Image.open(REAL_JPEG).convert("L").resize((96, 80)).rotate(7 * i).save(p)
        rows.append(f"{p.relative_to(cwd / 'data')},Female,{60 + i},Frontal,AP,,{cardio},{edema},{effusion}")
    (chex / "valid.csv").write_text("Path,Sex,Age,Frontal/Lateral,AP/PA,No Finding,Cardiomegaly,Edema,"
                                    "Pleural Effusion\n" + "\n".join(rows) + "\n")
    home = cwd / "home"
    weights = home / ".torchxrayvision" / "models_data" / xrv.models.model_urls["all"]["weights_url"].split("/")[-1]
    weights.parent.mkdir(parents=True)
    torch.save(xrv.models.DenseNet(weights=None), weights)
    # 3. the user's own model file, its weights and NIH-style split files at the default paths
    (cwd / "my_model.py").write_text(user_file)
    scope = {}
    exec(user_file, scope)
    torch.save(scope["build"]().state_dict(), cwd / "my_model.pt")
    make_probe_set(cwd / "data" / "nih14", n=6, size=64)
    return cwd, home, commands


def run_readme(cwd, home, monkeypatch, command, clip):
    monkeypatch.setenv("HOME", str(home))
    args = command[2:]
    if command[1] == "concept_matching.py":  # the one difference: a tiny random VLM instead of MedCLIP
        args += ["--model_clip", f"open_clip:{clip}", "--clip_weights", "random", "--metric_encoders", "",
                 "--concept_set", CONCEPTS_FILE]
    return ok(run_script(command[1], *args, "--num_workers", "0", cwd=cwd))


CONCEPTS_FILE = "concepts.txt"


def test_readme_commands_run_as_written(user_folder, monkeypatch):
    cwd, home, commands = user_folder
    assert [c[1] for c in commands] == ["example_selection.py", "concept_matching.py", "example_selection.py",
                                        "concept_matching.py", "target_model_perform.py", "example_selection.py",
                                        "concept_matching.py"]
    (cwd / "tiny-clip.json").write_text(json.dumps(TINY_CLIP))
    (cwd / CONCEPTS_FILE).write_text(CONCEPTS + "edema\npleural effusion\n")
    logs = [run_readme(cwd, home, monkeypatch, c, "tiny-clip.json") for c in commands]
    res = cwd / "results"

    # 1. the unlabeled export with timm: 8 images of four formats, no label columns, named outputs
    assert "8 images from the folder hospital_export" in logs[0]
    fc = res / "hospital_all" / "timm-resnet10t" / "fc"
    assert load_tensors(fc / "activations.pt")["activations"].shape == (8, 4)
    assert load_tensors(fc.parent / "layer3" / "activations.pt")["activations"].shape == (8, 256)
    rows = (fc / "adaptive93" / "examples.csv").read_text().splitlines()
    assert rows[0].split(",")[5:] == ["prob_Effusion", "prob_Cardiomegaly", "prob_Mass", "prob_No Finding"]
    assert "ct/a/IM0001" in load_tensors(fc / "activations.pt")["image_ids"]
    assert "hit rate" in logs[1] and (next(fc.glob("adaptive93/vlm_*/*")) / "metrics.json").is_file()

    # 2. CheXpert CSV with xrv from its cache: 18 named outputs, ground truth where a column names one
    xdir = res / "chexpert_valid" / "xrv-densenet121-res224-all"
    ex = json.loads((xdir / "fc" / "adaptive93" / "examples.json").read_text())
    assert ex["config"]["class_names"] == xrv.models.model_urls["all"]["labels"]
    assert ex["config"]["channels"] == 1 and ex["config"]["resize"] == 224 and ex["config"]["mean"] == "0.5"
    table = [r.split(",") for r in (xdir / "fc" / "adaptive93" / "examples.csv").read_text().splitlines()]
    header = table[0]
    # uncertain = zero (the default): -1 and blank are 0; Atelectasis has no column, so no ground truth
    want = {"patient00000": "1", "patient00001": "0", "patient00002": "0", "patient00003": "0", "patient00004": "1"}
    assert len(table) > 1
    for r in table[1:]:
        assert r[header.index("Cardiomegaly")] == want[r[2].split("/")[2]]
        assert r[header.index("Atelectasis")] == ""
    assert "no class for No Finding, Pleural Effusion" in logs[2]
    ev = res / "chexpert_valid" / "xrv-densenet121-res224-all" / "eval"
    thresholds = (ev / "Threshold.csv").read_text().splitlines()
    assert thresholds[0] == "label,bestthr" and len(thresholds) == 19 and thresholds[1] == "Atelectasis,nan"
    labels = [r.split(",") for r in (ev / "TestLabels.csv").read_text().splitlines()]
    assert labels[0][1:] == xrv.models.model_urls["all"]["labels"]
    assert [r[labels[0].index("Cardiomegaly")] for r in labels[1:]] == ["1", "0", "0", "0", "1"]
    assert "Cardiomegaly" in logs[4] and "mean AUROC" in logs[4]

    # 3. the user's own model at two layers, one pass, on the default NIH-style split
    udir = res / "nih14_train" / "my_model-build"
    assert load_tensors(udir / "features.6" / "activations.pt")["activations"].shape == (6, 192)
    assert load_tensors(udir / "penultimate" / "activations.pt")["activations"].shape == (6, 1280)
    assert "activations of features.6 (6, 192), penultimate (6, 1280)" in logs[5]  # one pass
    for layer in ("features.6", "penultimate"):
        assert (next((udir / layer / "adaptive93").glob("vlm_*/*")) / "concepts.json").is_file()


# ---- bad input: one line, exit 2, nothing cached changes


def test_bad_inputs_are_one_line_and_leave_caches_alone(world, tmp_path, monkeypatch):
    out = tmp_path / "res"
    tv = families(world)["torchvision"][0]
    ok(export_stage2(world, out, *tv, "--layer", "fc"))
    before = snapshot(out, only_files=True)
    assert before

    def refused_untouched(proc, *words):
        line = refused(proc, *words)
        assert snapshot(out, only_files=True) == before, line
        return line

    refused_untouched(export_stage2(world, out, "--model", "efficientnet"), "unknown --model efficientnet:", "timm:NAME",
                      "path/file.py:function", "TorchScript")
    refused_untouched(export_stage2(world, out, "--model", "timm:resnet1t"), "timm:resnet1t", "resnet10t")
    refused_untouched(export_stage2(world, out, *tv, "--layer", "features.99"), "--layer 'features.99'", "not a module")
    refused_untouched(export_stage2(world, out, *tv, "--num_classes", "5"), "--num_classes 5", "3-way head", "mobilenet.pth")
    two = tmp_path / "two.txt"
    two.write_text("Effusion\nMass\n")
    refused_untouched(export_stage2(world, out, *tv[:4], "--classes", str(two), "--resize", "56", "--crop", "48"), "3 outputs",
                      "2 class names", str(two))
    refused_untouched(export_stage2(world, out, *tv, "--crop", "64"), "--crop 64 exceeds --resize 56")
    refused_untouched(export_stage2(world, out, "--model", f"{world['root'] / 'mine.py'}:make"), "mine.py defines no function 'make'",
                      "build")
    scripted = ["--model", str(world["root"] / "scripted.pt"), "--checkpoint", str(world["root"] / "vit.pth")]
    refused_untouched(export_stage2(world, out, *scripted), "TorchScript", "drop --checkpoint")
    # an xrv model whose weights are neither given nor in torchxrayvision's cache: what to download, and where
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    line = refused_untouched(export_stage2(world, out, "--model", "xrv:densenet121-res224-all"), "not in torchxrayvision's cache",
                             "https://", str(tmp_path / "home" / ".torchxrayvision"))
    assert "--checkpoint" in line
    # a DICOM without pixel data among the images (a structured report in the export)
    bad = tmp_path / "with_report"
    shutil.copytree(world["images"], bad)
    write_dicom(bad / "ct" / "report.dcm", np.zeros((4, 4)), pixel_data=False)
    refused_untouched(export_stage2(world, out, *tv, "--data_root", str(bad)), "report.dcm", "without pixel data")
    # a folder without images
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    refused_untouched(export_stage2(world, out, *tv, "--data_root", str(tmp_path / "empty")), "no images", "empty")
    # a CSV without a path column, and one whose labels name none of the classes
    csv = tmp_path / "labels.csv"
    csv.write_text("Image File,Effusion\nphoto.jpg,1\n")
    refused_untouched(export_stage2(world, out, *tv, "--labels", str(csv)), "labels.csv", "no path column", "Path")
    csv.write_text("Path,Pneumonia,Edema\nphoto.jpg,1,0\np0.png,0,-1\n")
    refused_untouched(export_stage2(world, out, *tv, "--labels", str(csv)), "labels.csv", "match none of the 3 classes",
                      "classes.txt")
