"""The demo world: deterministic, written in the real formats, each finding visible in its box;
the trainer runs end to end on a tiny world; the phantom VLM's text embeddings ignore batching."""
from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from phantom import world as phantom  # noqa: E402


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    out = tmp_path_factory.mktemp("world")
    meta = phantom.write_world(out, 40, 10, 10, size=128, seed=3)
    return out, meta


def test_classes_match_nih_labels():
    assert phantom.CLASSES == (ROOT / "dataset" / "nih14" / "nih_labels.txt").read_text().split("\n")[:14]


def test_deterministic(tmp_path, world):
    out, _ = world
    again = tmp_path / "again"
    phantom.write_world(again, 40, 10, 10, size=128, seed=3)
    for f in ("train_official.txt", "test_official.txt", "bbox.csv", "annotation.json", "world.json"):
        assert (out / f).read_bytes() == (again / f).read_bytes(), f
    for name in ("p00000_000.png", "p00055_000.png"):
        assert (out / "images" / name).read_bytes() == (again / "images" / name).read_bytes()
    other = phantom.make_case(4, 0)
    assert other != phantom.make_case(3, 0)


def test_formats_readable(world):
    out, meta = world
    counts = {}
    for split, n in (("train", 40), ("val", 10), ("test", 10)):
        lines = (out / f"{split}_official.txt").read_text().splitlines()
        assert len(lines) == n
        for line in lines:
            name, *labels = line.split()
            assert len(labels) == 14 and set(labels) <= {"0", "1"}
            assert (out / "images" / name).is_file()
            counts[name] = labels
    with Image.open(out / "images" / "p00000_000.png") as im:
        assert im.mode == "L" and im.size == (128, 128)
    ann = json.loads((out / "annotation.json").read_text())
    assert set(ann) == {"train", "val", "test"}
    for split, items in ann.items():
        for e in items:
            assert set(e) >= {"id", "report", "image_path", "split"} and e["split"] == split
            assert isinstance(e["image_path"], list) and e["report"]
    with open(out / "bbox.csv") as fh:
        rows = list(csv.reader(fh))
    assert rows[0] == ["image_name", "label", "bbox_x", "bbox_y", "bbox_w", "bbox_h"]
    for name, label, *box in rows[1:]:
        x, y, w, h = map(float, box)
        assert 0 <= x and 0 <= y and w > 0 and h > 0 and x + w <= 1024.01 and y + h <= 1024.01
        assert counts[name][phantom.CLASSES.index(label)] == "1"  # the box is on a finding the labels carry
    n_normal = sum(1 for v in counts.values() if "1" not in v)
    assert 0.2 < n_normal / len(counts) < 0.8


def test_every_finding_changes_pixels_in_its_box():
    """Render one anatomy with and without each finding: the difference lies inside the finding's box."""
    size = 256
    for k, label in enumerate(phantom.CLASSES):
        rng = np.random.default_rng([11, k])
        a = phantom.sample_anatomy(rng)
        f = phantom.sample_finding(rng, a, label)
        with_ = phantom.render(dict(anatomy=a, findings=[f]), size).astype(float)
        without = phantom.render(dict(anatomy=a, findings=[]), size).astype(float)
        d = np.abs(with_ - without)
        x, y, w, h = [int(round(v * size)) for v in f["box"]]
        inside = np.zeros_like(d, bool)
        inside[max(0, y - 2):y + h + 2, max(0, x - 2):x + w + 2] = True
        assert d[inside].mean() > 3, (label, d[inside].mean())
        assert d[inside].sum() > 0.6 * d.sum(), (label, d[inside].sum() / d.sum())


def test_all_findings_occur_and_reports_name_them():
    seen = set()
    for i in range(400):
        case, report = phantom.make_case(0, i)
        labels = [f["label"] for f in case["findings"]]
        seen |= set(labels)
        low = report.lower()
        for lab in labels:
            assert lab.lower() in low, (lab, report)
        if not labels:
            assert not any(w in low for w in phantom.WORDS if w not in ("effusion", "pneumothorax")), report
        for f in case["findings"]:
            assert f["severity"] in phantom.SEVERITIES and f["location"]
    assert seen == set(phantom.CLASSES)


def test_trainer_smoke(tmp_path):
    """A few steps of both trainings on a tiny world; the weights load through the real loaders."""
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    cmd = [sys.executable, "-m", "phantom.train", "--world_dir", str(tmp_path / "w"),
           "--out_dir", str(tmp_path / "out"), "--n_train", "16", "--n_val", "8", "--n_test", "8",
           "--world_size", "96", "--target_res", "64", "--clip_res", "64", "--clip_width", "8",
           "--target_batch", "4", "--clip_batch", "8", "--max_steps", "2", "--method_check", "no"]
    r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    out = tmp_path / "out"
    from models.target import load_target
    from models.vlm import load_vlm
    model, head = load_target("densenet121", out / "phantom_densenet121.pth", need_head=True)
    assert head and model(torch.zeros(1, 3, 64, 64)).shape == (1, 14)
    vlm = load_vlm("phantom", str(out / "phantom_clip"))
    ims = [Image.open(p) for p in sorted((tmp_path / "w" / "images").glob("*.png"))[:3]]
    e = vlm.encode_images(ims)
    assert e.shape == (3, vlm.config["dim"]) and torch.allclose(e.norm(dim=1), torch.ones(3), atol=1e-4)
    report = json.loads((out / "demo_training.json").read_text())
    assert report["stage2"]["resize"] == 64 and len(report["target"]["test_auroc"]) == 14
    assert set(report["object_prevalence"]["test"]) == set(phantom.OBJECTS)
    assert set(report["target"]["test_auroc_by_object"]) == set(phantom.OBJECTS)
    assert set(report["vlm"]["object_zero_shot_auroc"]) == set(phantom.OBJECTS)
    # a second target on a shortcut world, beside the first, on the VLM the first run trained
    clip_before = (out / "phantom_clip" / "phantom_clip.pt").read_bytes()
    r = subprocess.run(cmd[:cmd.index("--world_dir")] + [
        "--world_dir", str(tmp_path / "w2"), "--out_dir", str(out), "--shortcut", "chest tube:Nodule:1",
        "--target_file", "shortcut.pth", "--record_file", "shortcut.json", "--train_vlm", "no"]
        + cmd[cmd.index("--n_train"):], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    assert (out / "phantom_clip" / "phantom_clip.pt").read_bytes() == clip_before
    assert load_target("densenet121", out / "shortcut.pth", need_head=True)[1]
    second = json.loads((out / "shortcut.json").read_text())
    assert second["shortcut"] == "chest tube:Nodule:1" and second["vlm"]["trained"] is False
    assert json.loads((tmp_path / "w2" / "world.json").read_text())["shortcut"] == "chest tube:Nodule:1"
    assert json.loads((out / "demo_training.json").read_text()) == report  # the first record is left alone


def test_missing_weights_is_one_line(tmp_path):
    from models.phantom_clip import PhantomCLIP
    from pipeline.cli import PipelineError
    with pytest.raises(PipelineError, match="phantom.train"):
        PhantomCLIP.from_dir(tmp_path / "nowhere")


def test_text_embeddings_ignore_batching():
    from models.phantom_clip import PhantomCLIP
    torch.manual_seed(0)
    vlm = PhantomCLIP(dim=32, input_size=32, width=4).eval()
    texts = ["A chest x-ray image of a", "A chest x-ray image of a nodule",
             "A chest x-ray image of a pleural thickening",
             "There is a moderate pleural effusion at the right costophrenic angle with adjacent atelectasis."]
    together = vlm.encode_texts(texts)
    alone = torch.cat([vlm.encode_texts([t]) for t in texts])
    assert torch.allclose(together, alone, atol=1e-5), (together - alone).abs().max()
    assert vlm.pads_change_text is False
