"""Real files load through the real loaders; each bad input gets its one-line error."""
import shutil

import numpy as np
import pytest

from conftest import REAL, load_probe_set, make_probe_set, refused, run_script
from dataset.nih import class_names, probe_crop, read_split, resolve_images, split_file, to_model_input
from pipeline.cli import PipelineError


def test_real_split_files():
    counts = {s: len(read_split(split_file(s, "/nowhere/images"))[0]) for s in ("train", "val", "test")}
    assert counts == {"train": 75312, "val": 11212, "test": 25596}
    names, labels = read_split(split_file("train", "/nowhere/images"))
    assert labels.shape == (75312, 14) and set(np.unique(labels)) == {0, 1}
    assert names[0] == "00000001_000.png" and labels[0].tolist() == [0, 1] + [0] * 12
    assert class_names()[1] == "Cardiomegaly" and len(class_names()) == 14


def test_real_nih_images_through_the_loader(tmp_path):
    (tmp_path / "images").mkdir()
    for name in ("00000001_000.png", "00027426_000.png"):
        shutil.copy(REAL / name, tmp_path / "images" / name)
    (tmp_path / "train_official.txt").write_text(
        "00000001_000.png 0 1 0 0 0 0 0 0 0 0 0 0 0 0\n00027426_000.png " + "0 " * 13 + "0\n")
    names, labels, paths, key = load_probe_set("train", tmp_path / "images")
    assert names == ["00000001_000.png", "00027426_000.png"] and labels[0, 1] == 1
    crop = probe_crop(paths[0])
    assert crop.size == (224, 224) and crop.mode == "RGB"
    x = to_model_input(crop)
    assert x.shape == (3, 224, 224) and abs(float(x.mean())) < 3
    # A real image of another size and format goes through the same preprocessing.
    assert probe_crop(REAL / "16747_3_1.jpg").size == (224, 224)


def test_kaggle_layout_and_missing_images(tmp_path):
    images = make_probe_set(tmp_path, n=6, size=32)
    sub = images / "images_001" / "images"
    sub.mkdir(parents=True)
    for p in sorted(images.glob("*.png"))[:3]:
        p.rename(sub / p.name)
    names = [f"{i:08d}_000.png" for i in range(6)]
    kept, paths = resolve_images(images, names)
    assert kept == names and paths[0].parent == sub
    with pytest.raises(PipelineError, match=r"2 of 8 images missing .*first: a.png, b.png"):
        resolve_images(images, names + ["a.png", "b.png"])
    kept, _ = resolve_images(images, names + ["a.png"], skip_missing=True)
    assert kept == names
    with pytest.raises(PipelineError, match="image folder .* not found"):
        resolve_images(tmp_path / "nope", names)


def test_bad_split_file(tmp_path):
    (tmp_path / "s.txt").write_text("a.png 0 1\n")
    with pytest.raises(PipelineError, match=r"s.txt, line 1: expected an image name and 14 labels"):
        read_split(tmp_path / "s.txt")


def test_bad_inputs_from_the_command_line(tmp_path, densenet_ckpt):
    images = make_probe_set(tmp_path / "p", n=8, size=40)
    out = tmp_path / "res"
    common = ["--resize", "40", "--crop", "40", "--num_workers", "0", "--save_root", str(out)]
    refused(run_script("example_selection.py", "--data_root", str(tmp_path / "missing"),
                              "--checkpoint", str(densenet_ckpt), *common), "missing", "--data_root", alone=False)
    refused(run_script("example_selection.py", "--data_root", str(images),
                              "--checkpoint", str(tmp_path / "none.pth"), *common), "none.pth", "not found", alone=False)
    (images / "00000003_000.png").write_bytes(b"\x89PNG broken")
    refused(run_script("example_selection.py", "--data_root", str(images),
                              "--checkpoint", str(densenet_ckpt), *common), "00000003_000.png", "cannot read", alone=False)
    assert not out.exists() or not list(out.rglob("*.pt"))  # nothing half-written
    refused(run_script("example_selection.py", "--bogus", "1", subprocess_run=True), "unknown option --bogus", alone=False)
    refused(run_script("example_selection.py", "--adaptive_percent", "lots"), "--adaptive_percent", alone=False)
    refused(run_script("concept_matching.py", "--save_root", str(out)), "examples.json", "example_selection.py", alone=False)


def test_stage3_bad_inputs(tmp_path, probe_set, densenet_ckpt):
    out = tmp_path / "res"
    assert run_script("example_selection.py", "--data_root", str(probe_set), "--checkpoint", str(densenet_ckpt),
                      "--resize", "40", "--crop", "40", "--num_workers", "0", "--save_root", str(out)).returncode == 0
    (tmp_path / "empty.txt").write_text("\n \n")
    refused(run_script("concept_matching.py", "--save_root", str(out), "--concept_set", str(tmp_path / "empty.txt")),
            "empty.txt", "empty", alone=False)
    refused(run_script("concept_matching.py", "--save_root", str(out), "--clip_weights", str(tmp_path / "nowt")),
            "MedCLIP", "pretrained/medclip-vit", alone=False)
    refused(run_script("concept_matching.py", "--save_root", str(out), "--template_ver", "no"), "--adaptive no", alone=False)
    refused(run_script("concept_matching.py", "--save_root", str(out), "--model_clip", "open_clip:ViT-B-16"),
            "--clip_weights", alone=False)
