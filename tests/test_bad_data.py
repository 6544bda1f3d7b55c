"""Hostile and careless data : image ids outside the data root, 16-bit and RGBA images,
encodings, duplicates and malformed reports. Each ends in a correct result or one line, exit 2."""
import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import load_probe_set, make_probe_set, refused, run_script, stage2
from dataset.concepts import read_concepts
from dataset.nih import probe_crop, resolve_images
from pipeline.cache import load_tensors
from pipeline.cli import PipelineError

LABELS = " 0 1 0 0 0 0 0 0 0 0 0 0 0 0"


def files_under(root):
    return {p for p in root.rglob("*")}


def split_lines(images):
    return (images.parent / "train_official.txt").read_text().splitlines()


def write_split(images, lines, encoding="utf-8"):
    (images.parent / "train_official.txt").write_bytes(("\n".join(lines) + "\n").encode(encoding))


@pytest.fixture(scope="module")
def stage2_run(tmp_path_factory, densenet_ckpt):
    """One plain stage-2 run: its 8-bit images and its save_root."""
    tmp = tmp_path_factory.mktemp("s2")
    images = make_probe_set(tmp / "p", n=8, size=40)
    out = tmp / "res"
    assert stage2(images, densenet_ckpt, out, size=40).returncode == 0
    return images, out


# 1. Image ids leave the data root; crops leave the save root.

@pytest.mark.parametrize("how", ["dotdot", "absolute"])
def test_image_id_outside_data_root_is_refused(tmp_path, densenet_ckpt, how):
    images = make_probe_set(tmp_path / "p", n=8, size=40)
    secret = tmp_path / "secret"
    secret.mkdir()
    shutil.copy(images / "00000000_000.png", secret / "outside.png")
    bad = "../" * 40 + str(secret / "outside.png").lstrip("/") if how == "dotdot" else str(secret / "outside.png")
    lines = split_lines(images)
    lines[2] = bad + LABELS
    write_split(images, lines)
    out = tmp_path / "res"
    before = files_under(tmp_path)
    # topk 8 of 8 images: every image, the outside one included, would be an example with a crop.
    proc = stage2(images, densenet_ckpt, out, "--selection", "topk", "--topk", "8", "--save_crops", "yes", size=40)
    refused(proc, "train_official.txt", "line 3", "--data_root", bars=False)
    assert {p for p in files_under(tmp_path) - before if out not in p.parents and p != out} == set()
    with pytest.raises(PipelineError, match="outside"):
        resolve_images(images, [bad])
    with pytest.raises(PipelineError, match="outside"):  # refused, not quietly skipped as missing
        resolve_images(images, [bad], skip_missing=True)


def test_crop_names_are_plain_names(tmp_path, densenet_ckpt):
    images = make_probe_set(tmp_path / "p", n=8, size=40)
    (images / "sub").mkdir()
    (images / "00000001_000.png").rename(images / "sub" / "00000001_000.png")
    lines = split_lines(images)
    lines[1] = "sub/" + lines[1]
    write_split(images, lines)
    out = tmp_path / "res"
    proc = stage2(images, densenet_ckpt, out, "--selection", "topk", "--topk", "8", "--save_crops", "yes", size=40)
    assert proc.returncode == 0, proc.stderr[-3000:]
    crops = list(out.rglob("*.jpg"))
    assert crops and all(p.parent.parent.name == "crops" for p in crops)
    assert any(p.name.endswith("sub_00000001_000.jpg") for p in crops)
    assert all(out in p.parents for p in files_under(tmp_path / "p") | files_under(out) if p.suffix == ".jpg")


# 2. 16-bit and RGBA images.

def as_16bit(src, dst):
    """The same pictures as 16-bit PNGs (v * 257 spans the full 16-bit range)."""
    shutil.copytree(src.parent, dst)
    for p in (dst / src.name).glob("*.png"):
        a = np.asarray(Image.open(p)).astype(np.uint16) * 257
        Image.fromarray(a).save(p)
        assert Image.open(p).mode in ("I;16", "I")
    return dst / src.name


def test_16bit_png_reads_as_its_8bit_original(tmp_path, densenet_ckpt, stage2_run):
    images8, out8 = stage2_run
    images16 = as_16bit(images8, tmp_path / "p16")
    for name in ("00000000_000.png", "00000005_000.png"):
        a = np.asarray(probe_crop(images8 / name, 40, 40)).astype(int)
        b = np.asarray(probe_crop(images16 / name, 40, 40)).astype(int)
        assert np.abs(a - b).max() <= 1
    assert stage2(images16, densenet_ckpt, tmp_path / "r16", size=40).returncode == 0
    acts8, acts16 = (load_tensors(next(o.rglob("activations.pt")))["activations"] for o in (out8, tmp_path / "r16"))
    assert torch.allclose(acts8, acts16, atol=1e-5)


def test_16bit_big_endian_and_rgba(tmp_path):
    grey = (np.arange(40 * 40).reshape(40, 40) % 256).astype(np.uint8)
    Image.fromarray(grey).save(tmp_path / "g8.png")
    Image.fromarray((grey.astype(np.uint16) * 257).astype(">u2")).save(tmp_path / "g16b.tiff")
    assert Image.open(tmp_path / "g16b.tiff").mode == "I;16B"
    rgba = np.dstack([grey, grey, grey, np.full_like(grey, 100)])
    Image.fromarray(rgba).save(tmp_path / "rgba.png")
    want = np.asarray(probe_crop(tmp_path / "g8.png", 40, 40)).astype(int)
    for name in ("g16b.tiff", "rgba.png"):  # RGBA: the alpha channel is dropped
        got = probe_crop(tmp_path / name, 40, 40)
        assert got.mode == "RGB" and np.abs(np.asarray(got).astype(int) - want).max() <= 1, name


def test_16bit_boxes_drawn_on_the_real_picture(tmp_path):
    images8 = make_probe_set(tmp_path / "p8", n=2, size=64)
    images16 = as_16bit(images8, tmp_path / "p16")
    box = tmp_path / "bbox.csv"
    box.write_text("image_name,label,bbox_x,bbox_y,bbox_w,bbox_h\n00000000_000.png,Mass,100,100,300,300\n")
    figs = []
    for images, out in ((images8, tmp_path / "r8"), (images16, tmp_path / "r16")):
        proc = run_script("bbox_img.py", "--box_file", str(box), "--data_root", str(images), "--save_root", str(out))
        assert proc.returncode == 0, proc.stderr[-2000:]
        figs.append(np.asarray(Image.open(next(out.rglob("00000000_000_blend.png")))).astype(int))
    assert np.abs(figs[0] - figs[1]).max() <= 1


# 9. Encodings.

def test_latin1_and_binary_split_files(tmp_path, densenet_ckpt):
    images = make_probe_set(tmp_path / "p", n=4, size=40)
    lines = split_lines(images)
    lines[2] = "caf\u00e9.png" + LABELS
    write_split(images, lines, encoding="latin-1")
    refused(stage2(images, densenet_ckpt, tmp_path / "res", size=40), "train_official.txt", "line 3", "UTF-8", bars=False)
    (images.parent / "train_official.txt").write_bytes(bytes(range(256)) * 4)
    refused(stage2(images, densenet_ckpt, tmp_path / "res", size=40), "train_official.txt", "line 1", bars=False)
    (images.parent / "train_official.txt").write_bytes(b"\x00" * 64)
    refused(stage2(images, densenet_ckpt, tmp_path / "res", size=40), "train_official.txt", "line 1", "binary", bars=False)


def test_bom_split_file_finds_its_first_image(tmp_path):
    images = make_probe_set(tmp_path / "p", n=4, size=40)
    write_split(images, split_lines(images), encoding="utf-8-sig")
    names, _, paths, _ = load_probe_set("train", images)
    assert names[0] == "00000000_000.png" and len(paths) == 4


def test_concept_set_encodings(tmp_path, stage2_run):
    stage2_out = stage2_run[1]
    bad = tmp_path / "latin.txt"
    bad.write_bytes("mass\nnodule\nb\u00e9b\u00e9\n".encode("latin-1"))
    refused(run_script("concept_matching.py", "--save_root", str(stage2_out), "--concept_set", str(bad)),
            "latin.txt", "line 3", "UTF-8", bars=False)
    binary = tmp_path / "binary.txt"
    binary.write_bytes(b"mass\n" + bytes(range(256)))
    refused(run_script("concept_matching.py", "--save_root", str(stage2_out), "--concept_set", str(binary)),
            "binary.txt", "line 2", bars=False)
    bom = tmp_path / "bom.txt"
    bom.write_bytes("mass\nnodule\n".encode("utf-8-sig"))
    assert read_concepts(str(bom))[1] == ["mass", "nodule"]


def test_latin1_reports(tmp_path):
    reports = tmp_path / "reports.txt"
    reports.write_bytes("No effusion.\nSmall caf\u00e9 nodule.\n".encode("latin-1"))
    refused(run_script("prepare_mimic_nouns.py", "--reports", str(reports), "--out_dir", str(tmp_path)),
            "reports.txt", "line 2", "UTF-8", bars=False)
    assert not (tmp_path / "mimic_nouns.txt").exists()


# 13. Duplicates.

def test_duplicate_split_lines_are_refused(tmp_path, densenet_ckpt):
    images = make_probe_set(tmp_path / "p", n=6, size=40)
    lines = split_lines(images)
    write_split(images, lines + [lines[1]])
    refused(stage2(images, densenet_ckpt, tmp_path / "res", size=40), "train_official.txt", "00000001_000.png",
            "lines 2 and 7", bars=False)


def test_concepts_differing_in_case_are_folded(tmp_path, capsys):
    path = tmp_path / "c.txt"
    path.write_text("Mass\nnodule\nmass\nMASS\nCT\neffusion\nnodule\n")
    assert read_concepts(str(path))[1] == ["mass", "nodule", "CT", "effusion"]
    note = capsys.readouterr().out
    assert "2 concept(s)" in note and "c.txt" in note


# 14. Malformed R2Gen (and IU) report files.

@pytest.mark.parametrize("data, where", [
    ({"test": [{"id": "a", "report": "No effusion."}, {"id": "b"}]}, "test[1]"),
    ({"test": [{"id": "a", "report": "No effusion."}, {"id": "b", "report": 5}]}, "test[1]"),
    ({"test": [["a", "No effusion."]]}, "test[0]"),
    ({"test": {"id": "a", "report": "No effusion."}}, "'test'"),
    ({"test": "No effusion."}, "'test'"),
    (["No effusion."], "[0]"),
    ([{"findings": "No effusion.", "impression": 3}], "[0]"),
])
def test_malformed_report_entries(tmp_path, data, where):
    path = tmp_path / "annotation.json"
    path.write_text(json.dumps(data))
    refused(run_script("prepare_mimic_nouns.py", "--reports", str(path), "--out_dir", str(tmp_path)),
            "annotation.json", where, bars=False)
