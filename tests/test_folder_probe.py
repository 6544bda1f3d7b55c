"""A folder of images as a probing set: symbolic links to folders followed with loop protection,
names that are not UTF-8 or very long listed and opened, one image under several names (the same bytes)
noted, and a folder given without `--labels none` answered with a message that says to pass it."""
import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

import dataset.files
from conftest import REPO, make_probe_set, run_script, unlabeled_stage2
from dataset.files import HEAD_BYTES, identical_files, read_image
from dataset.nih import ProbeSet, data_digest, resolve_images
from dataset.probe import list_images, load_probe, note_copies
from pipeline.cli import PipelineError


def png(path, value=100, size=8):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((size, size), value, np.uint8)).save(path)
    return path


# ---- symbolic links

def test_a_linked_folder_is_followed_like_a_linked_file(tmp_path):
    root, elsewhere = tmp_path / "root", tmp_path / "elsewhere"
    png(root / "a.png")
    png(elsewhere / "scans" / "b.png")
    png(elsewhere / "c.png")
    (root / "more").symlink_to(elsewhere, target_is_directory=True)
    (root / "one.png").symlink_to(elsewhere / "c.png")
    assert list_images(root) == ["a.png", "more/c.png", "more/scans/b.png", "one.png"]


def test_links_into_the_folder_above_it_or_to_a_folder_reached_already_are_skipped_and_counted(tmp_path, capsys):
    root, outside = tmp_path / "root", tmp_path / "outside"
    png(root / "a" / "x.png")
    png(outside / "y.png")
    (root / "a" / "loop").symlink_to(root, target_is_directory=True)        # a loop
    (root / "up").symlink_to(tmp_path, target_is_directory=True)            # above root: a loop too
    (root / "alias").symlink_to(root / "a", target_is_directory=True)       # a second name inside
    png(root / "zz" / "w.png")
    (root / "0zz").symlink_to(root / "zz", target_is_directory=True)        # met before its target
    (root / "l1").symlink_to(outside, target_is_directory=True)
    (root / "l2").symlink_to(outside, target_is_directory=True)             # reached already through l1
    (outside / "self").symlink_to(outside, target_is_directory=True)        # a loop outside root
    names = list_images(root)
    assert names == ["a/x.png", "l1/y.png", "zz/w.png"]  # each image once, by its own path or the first link's
    out = capsys.readouterr().out
    assert f"note: {root}: 6 link(s) to folders not followed" in out
    assert out.rstrip().endswith("already: 0zz, alias, l2 … (and 3 more)")  # the first three, in the order met


def test_a_loop_alone_still_lists_the_folder(tmp_path, capsys):
    root = tmp_path / "root"
    png(root / "sub" / "x.png")
    (root / "sub" / "again").symlink_to(root / "sub", target_is_directory=True)
    assert load_probe({"labels": "none", "data_root": str(root)}).names == ["sub/x.png"]
    assert "1 link(s) to folders not followed" in capsys.readouterr().out


def test_order_is_that_of_the_paths(tmp_path):
    root = tmp_path / "root"
    for name in ("b.png", "a/z.png", "a/b/y.jpg", "a.png", "A.png"):
        png(root / name)
    assert list_images(root) == ["A.png", "a/b/y.jpg", "a/z.png", "a.png", "b.png"]


# ---- names that are not UTF-8, or long

def test_latin1_and_long_names_are_listed_and_read(tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    raw = {b"caf\xe9.png": 60, b"d\xe9j\xe0/vu.png": 120, b"x" * 240 + b".png": 200}
    for name, value in raw.items():
        path = os.path.join(os.fsencode(root), name)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        Image.fromarray(np.full((6, 6), value, np.uint8)).save(open(path, "wb"), format="PNG")
    probe = load_probe({"labels": "none", "data_root": str(root)})
    want = sorted(os.fsdecode(n) for n in raw)  # the str os.listdir gives: each bad byte a surrogate escape
    assert probe.names == want and "caf\udce9.png" in want
    assert [os.fsencode(n) for n in probe.names] == sorted(raw)
    for name, path in zip(probe.names, probe.paths):
        assert np.asarray(read_image(path))[0, 0, 0] == raw[os.fsencode(name)]
    assert ProbeSet(probe.paths, 6, 6)[0].shape == (3, 6, 6)
    assert probe.data_key == data_digest(None, probe.names, probe.paths)
    kept, paths = resolve_images(root, probe.names)  # as later steps look them up again
    assert kept == probe.names and paths == probe.paths


def test_a_latin1_name_in_the_note_prints_on_a_strict_stdout(tmp_path):
    root = tmp_path / "root"
    png(root / "x.png")
    os.symlink(os.fsencode(root), os.path.join(os.fsencode(root), b"boucl\xe9"))
    code = ("import sys; sys.stdout.reconfigure(errors='strict'); from dataset.probe import list_images; "
            f"print(list_images({str(root)!r}))")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                          env={**os.environ, "PYTHONIOENCODING": "utf-8"})
    assert proc.returncode == 0, proc.stderr
    assert "boucl\\udce9" in proc.stdout and "['x.png']" in proc.stdout


# ---- one image under several names

def test_copies_are_found_by_their_bytes_reading_whole_only_files_equal_in_size_and_head(tmp_path, monkeypatch):
    root = tmp_path / "root"
    (root / "a").mkdir(parents=True)
    (root / "b").mkdir()
    body = bytes(np.random.default_rng(0).integers(0, 256, HEAD_BYTES + 5000, dtype=np.uint8))
    (root / "a" / "x.png").write_bytes(body)
    (root / "b" / "x.png").write_bytes(body)                                   # a copy
    (root / "c.png").write_bytes(body[:-1] + bytes([body[-1] ^ 1]))              # size and head alike, not the end
    (root / "d.png").write_bytes(bytes([body[0] ^ 1]) + body[1:])                # size alike, not the head
    (root / "e.png").write_bytes(body + b"\0")                                   # another size
    (root / "f.png").symlink_to(root / "a" / "x.png")                           # a second name for the file
    read_whole = []
    monkeypatch.setattr(dataset.files, "file_digest", lambda p: read_whole.append(p.name) or p.read_bytes())
    paths = [root / n for n in ("a/x.png", "b/x.png", "c.png", "d.png", "e.png", "f.png")]
    assert identical_files(paths) == [[0, 1, 5]]
    assert sorted(read_whole) == ["c.png", "f.png", "x.png", "x.png"]


def test_a_folder_with_copies_is_noted_in_one_line(tmp_path, capsys):
    root = tmp_path / "root"
    for names, value in ((("a/x", "b/x"), 10), (("c/y", "d/y", "e/y"), 20), (("f/w", "g/w"), 40),
                         (("h/v", "i/v"), 50), (("z",), 30)):
        for n in names:
            png(root / f"{n}.png", value)
    note_copies(load_probe({"labels": "none", "data_root": str(root)}))
    assert capsys.readouterr().out.splitlines() == [
        f"note: the folder {root} holds 4 image(s) under more than one name (9 names, the same bytes); each name "
        f"is probed, so one image can be a neuron's example once per name: a/x.png = b/x.png; "
        f"c/y.png = d/y.png = e/y.png; f/w.png = g/w.png … (and 1 more)"]
    png(root / "b/x.png", 15)
    png(root / "i/v.png", 60)
    png(root / "d/y.png", 70)
    png(root / "e/y.png", 80)
    png(root / "g/w.png", 90)
    note_copies(load_probe({"labels": "none", "data_root": str(root)}))
    assert capsys.readouterr().out == ""  # each image under one name now


def test_step_2_notes_copies_in_its_folder(tmp_path):
    root = tmp_path / "root"
    for n, value in (("one/scan.png", 10), ("two/scan.png", 10), ("other.png", 20)):
        png(root / n, value, size=40)
    proc = unlabeled_stage2(root, tmp_path / "res", "torchvision:mobilenet_v3_small", "--checkpoint", "random", "--classes", "")
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    notes = [line for line in proc.stdout.splitlines() if "under more than one name" in line]
    assert notes == [f"note: the folder {root} holds 1 image(s) under more than one name (2 names, the same "
                     f"bytes); each name is probed, so one image can be a neuron's example once per name: "
                     f"one/scan.png = two/scan.png"]


# ---- a folder of images given as if it had a split file

@pytest.fixture()
def bare_folder(tmp_path):
    """A folder of images with no split file beside it (so NIH's own split is read)."""
    images = make_probe_set(tmp_path / "set", n=4, size=24)
    for split in ("train", "val", "test"):
        (images.parent / f"{split}_official.txt").unlink()
    for p in images.iterdir():  # names of its own, none of them NIH's
        p.rename(images / f"scan_{p.name}")
    return images


@pytest.mark.parametrize("skip", [False, True])
def test_a_folder_without_its_split_file_is_told_to_pass_labels_none(bare_folder, skip):
    with pytest.raises(PipelineError) as e:
        load_probe({"split": "train", "data_root": str(bare_folder), "skip_missing": skip})
    msg = str(e.value)
    assert "none of the 75312 images the split file" in msg and "pass --labels none" in msg
    assert str(bare_folder) in msg and re.search(r"other images \(scan_\d{8}_000\.png, …\)", msg)
    assert "--skip_missing" not in msg
    # and that advice works
    assert len(load_probe({"labels": "none", "data_root": str(bare_folder)}).names) == 4


def test_the_step_says_so_in_one_line(bare_folder, tmp_path):
    for extra in ([], ["--skip_missing", "yes"]):
        proc = run_script("example_selection.py", "--data_root", str(bare_folder), "--save_root", str(tmp_path / "r"),
                          *extra)
        assert proc.returncode == 2 and "Traceback" not in proc.stdout + proc.stderr, proc.stderr[-2000:]
        lines = [x for x in proc.stderr.splitlines() if x.strip()]
        assert len(lines) == 1 and "pass --labels none" in lines[0] and "75312 images" in lines[0], lines


def test_a_csv_none_of_whose_images_is_there_names_labels_none_and_the_csv(bare_folder, tmp_path):
    csv = tmp_path / "labels.csv"
    csv.write_text("Path,Edema\nelsewhere/1.png,1\nelsewhere/2.png,0\n")
    with pytest.raises(PipelineError, match=r"none of the 2 images the CSV .*labels.csv lists .*--labels none.*"
                                            r"--labels FILE.csv"):
        load_probe({"labels": str(csv), "data_root": str(bare_folder), "uncertain": "zero"})


def test_an_empty_folder_is_not_told_to_skip_missing_images(bare_folder, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    shutil.copy(bare_folder / "scan_00000000_000.png", tmp_path / "not_under.png")
    with pytest.raises(PipelineError) as e:
        load_probe({"split": "train", "data_root": str(empty)})
    assert "75312 of 75312 images missing" in str(e.value) and "fix --data_root (or" in str(e.value)
    assert "--skip_missing" not in str(e.value)
    with pytest.raises(PipelineError, match="no images of the split found .*; fix --data_root$"):
        load_probe({"split": "train", "data_root": str(empty), "skip_missing": True})


def test_some_images_missing_still_offers_skip_missing(tmp_path, capsys):
    images = make_probe_set(tmp_path / "set", n=4, size=24)
    (images / "00000001_000.png").unlink()
    with pytest.raises(PipelineError, match="1 of 4 images missing .*set --skip_missing yes .*--labels none"):
        load_probe({"split": "train", "data_root": str(images)})
    with pytest.raises(PipelineError, match="1 of 4 images missing .*set --skip_missing yes$"):
        resolve_images(images, load_probe({"labels": "none", "data_root": str(images)}).names + ["gone.png"])
    assert len(load_probe({"split": "train", "data_root": str(images), "skip_missing": True}).names) == 3
