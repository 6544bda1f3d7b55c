"""Writes that go wrong: non-finite numbers, file names that are not UTF-8 or too long, a full disk.
Each ends in exit 0 with a correct result or exit 2 with one line, never a traceback, never mixed
or stale outputs (an examples.json beside activations it was not selected from)."""
import errno
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import pipeline.cache as cache
from conftest import REPO, disk_full_at, files_stage3, ok, refused, stage2, temps
from pipeline.cli import PipelineError


def strict_json(path):
    """JSON as the standard has it: a NaN or Infinity token fails."""
    def bad(token):
        raise ValueError(f"{path} holds {token}")
    return json.loads(Path(path).read_text(), parse_constant=bad)


def consistent(out):
    """Every examples.json names the activations.pt of its layer folder as it is now."""
    for ex in out.rglob("examples.json"):
        act = torch.load(ex.parent.parent / "activations.pt", weights_only=True)
        assert strict_json(ex)["activations_key"] == act["key"], ex


@pytest.fixture(scope="module")
def overflow(files, tmp_path_factory):
    """Finite weights whose fc outputs overflow to infinity (and NaN): what a broken checkpoint gives."""
    obj = torch.load(files["a"], weights_only=True)
    obj["model"]["classifier.weight"].fill_(3e38)
    path = tmp_path_factory.mktemp("overflow") / "overflow.pth"
    torch.save(obj, path)
    return path


def test_non_finite_activations_are_refused_and_nothing_is_written(probe_set, overflow, tmp_path):
    """Activations with NaN or infinity: exit 2 naming activations.pt and the checkpoint as the likely cause;
    neither activations.pt nor examples.json exists."""
    out = tmp_path / "res"
    refused(stage2(probe_set, overflow, out), "NaN or infinite", alone=False)  # the forward pass's check, or the write's
    assert not list(out.rglob("*.pt")) and not list(out.rglob("examples.*")) and not temps(out)


def test_a_non_finite_run_leaves_the_previous_outputs_whole(files, probe_set, overflow, tmp_path):
    """Over a good run, a non-finite one changes nothing: every layer is checked before any is written."""
    out = tmp_path / "res"
    ok(stage2(probe_set, files["a"], out, "--layer", "penultimate,fc"))
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file() and p.name != ".lock"}
    refused(stage2(probe_set, overflow, out, "--layer", "penultimate,fc"), "NaN or infinite", alone=False)
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file() and p.name != ".lock"} == before
    consistent(out)


def test_non_finite_values_read_back_are_refused(files, probe_set, tmp_path):
    """activations.pt holding a NaN (its key intact): step 3 refuses it naming the file; step 2 computes
    its own cache again, with a note, and the result is finite."""
    out = tmp_path / "res"
    ok(stage2(probe_set, files["a"], out))
    act_path = out / "nih14_train" / "densenet121" / "fc" / "activations.pt"
    act = torch.load(act_path, weights_only=True)
    act["activations"][3, 5] = float("nan")
    torch.save(act, act_path)
    refused(files_stage3(files, out), act_path, "NaN or infinite", "example_selection.py", alone=False)
    log = ok(stage2(probe_set, files["a"], out))
    assert f"note: {act_path} holds NaN or infinite values: computing it again" in log
    assert torch.isfinite(torch.load(act_path, weights_only=True)["activations"]).all()
    consistent(out)


def test_a_non_finite_tensor_is_not_written(tmp_path):
    """save_tensors refuses NaN or infinity naming the file, the field and the likely cause; a no-value
    field (a describer's scores) keeps its NaN."""
    for value in (float("nan"), float("inf")):
        with pytest.raises(PipelineError, match=r"a\.pt: its activations hold 1 NaN or infinite value\(s\) of 6.*checkpoint"):
            cache.save_tensors(tmp_path / "a.pt", {"key": "k", "activations": torch.tensor([[1.0, 2, value], [0, 0, 0]])})
    assert not list(tmp_path.iterdir())
    cache.save_tensors(tmp_path / "s.pt", {"scores": torch.tensor([1.0, float("nan")])})
    assert torch.isnan(cache.load_tensors(tmp_path / "s.pt")["scores"][1])


def test_json_holds_no_nan_token(tmp_path):
    """A no-value field's NaN or infinity is stored as null; any other is refused naming the field,
    and nothing is left behind."""
    nan, inf = float("nan"), float("inf")
    path = tmp_path / "ok.json"
    cache.save_json(path, {"neurons": [{"z": -inf, "p": 0.5}], "truth": {"any": {"mean": nan,
                    "se": nan, "n": 0}}, "scores": [1.0, nan]})
    assert strict_json(path) == {"neurons": [{"z": None, "p": 0.5}],
                                 "truth": {"any": {"mean": None, "se": None, "n": 0}}, "scores": [1.0, None]}
    bad = tmp_path / "bad.json"
    for value in (nan, inf, -inf):
        with pytest.raises(PipelineError, match=r"bad\.json: neurons\[1\]\.examples\[0\]\.activation is"):
            cache.save_json(bad, {"neurons": [{"examples": []}, {"examples": [{"activation": value}]}]})
    assert not bad.exists() and not temps(tmp_path)


def folder_probe(probe_set, root, names):
    """A folder of the first len(names) probing images, renamed (names: bytes, as the file system holds them)."""
    root.mkdir()
    for i, name in enumerate(names):
        shutil.copy(probe_set / f"{i:08d}_000.png", os.path.join(os.fsencode(root), name))
    return root


def test_a_file_name_that_is_not_utf8_round_trips(files, probe_set, tmp_path):
    """A file name with the Latin-1 byte 0xE9: step 2 (a real process, crops asked) writes examples.csv with
    the name's own bytes, which read back as the id examples.json and activations.pt hold; step 3 reads it."""
    names = [b"caf\xe9_000.png"] + [f"{i:08d}_000.png".encode() for i in range(1, 8)]
    images = folder_probe(probe_set, tmp_path / "images", names)
    out = tmp_path / "res"
    proc = subprocess.run([sys.executable, str(REPO / "example_selection.py"), "--data_root", str(images), "--labels",
                           "none", "--checkpoint", str(files["a"]), "--resize", "64", "--crop", "64", "--num_workers",
                           "0", "--selection", "topk", "--topk", "8", "--save_crops", "yes", "--save_root", str(out)],
                          cwd=REPO, capture_output=True, text=True, env={**os.environ, "PYTHONIOENCODING": "utf-8"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    ex_dir = out / "nih14_all" / "densenet121" / "fc" / "top8"
    assert b"caf\xe9_000.png" in (ex_dir / "examples.csv").read_bytes()
    latin = os.fsdecode(b"caf\xe9_000.png")
    csv_ids = {r["image_id"] for r in cache.read_output(ex_dir / "examples.csv", "example_selection.py", {})["rows"]}
    json_ids = {e["image_id"] for n in strict_json(ex_dir / "examples.json")["neurons"] for e in n["examples"]}
    assert latin in csv_ids and csv_ids == json_ids == set(map(os.fsdecode, names))
    assert latin in torch.load(ex_dir.parent / "activations.pt", weights_only=True)["image_ids"]
    assert any(b"caf\xe9" in os.fsencode(p.name) for p in (ex_dir / "crops").rglob("*.jpg"))
    ok(files_stage3(files, out, "--labels", "none", "--selection", "topk", "--topk", "8"))


def test_a_failed_step_leaves_no_examples_beside_new_activations(files, probe_set, tmp_path, monkeypatch):
    """Checkpoint B over A's outputs, the disk full at the second layer's activations.pt: the first layer's
    activations are B's and its examples.json is gone (not A's, which step 3 would blame on the checkpoint);
    the rerun completes."""
    out = tmp_path / "res"
    ok(stage2(probe_set, files["a"], out, "--layer", "penultimate,fc"))
    seen = disk_full_at(monkeypatch, "activations.pt", 2)
    refused(stage2(probe_set, files["b"], out, "--layer", "penultimate,fc"), "No space left on device", alone=False)
    monkeypatch.undo()
    assert len(seen) == 2
    consistent(out)
    first = Path(seen[0]).parent
    assert not (first / "adaptive93" / "examples.json").exists() and not (first / "adaptive93" / "examples.csv").exists()
    refused(files_stage3(files, out, "--layer", first.name), "examples.json", "not found", "example_selection.py", alone=False)
    ok(stage2(probe_set, files["b"], out, "--layer", "penultimate,fc"))
    consistent(out)


def test_a_failed_examples_csv_leaves_no_examples(files, probe_set, tmp_path, monkeypatch):
    """The disk full at examples.csv: the selection's outputs are gone, none of the previous run's left."""
    out = tmp_path / "res"
    ok(stage2(probe_set, files["a"], out))
    disk_full_at(monkeypatch, "examples.csv")
    refused(stage2(probe_set, files["b"], out), "examples.csv", "No space left on device", alone=False)
    monkeypatch.undo()
    assert not list(out.rglob("examples.*")) and not temps(out)


def test_a_long_file_name_gets_short_crops(files, probe_set, tmp_path, monkeypatch):
    """A 246-character image name: every example gets its crop, named within 128 bytes; a crop
    write that fails leaves no examples.json claiming the crops complete, and the rerun writes them all."""
    long = ("x" * 242 + ".png").encode()
    images = folder_probe(probe_set, tmp_path / "images", [long] + [f"{i:08d}_000.png".encode() for i in range(1, 6)])
    out = tmp_path / "res"
    args = ("--labels", "none", "--selection", "topk", "--topk", "6", "--save_crops", "yes")
    ok(stage2(images, files["a"], out, *args))
    ex_dir = out / "nih14_all" / "densenet121" / "fc" / "top6"

    def crops_complete():
        neurons = strict_json(ex_dir / "examples.json")["neurons"]
        crops = sorted((ex_dir / "crops").rglob("*.jpg"))
        assert len(crops) == sum(len(n["examples"]) for n in neurons) == 14 * 6
        assert all(len(os.fsencode(p.name)) <= 128 for p in crops)
        assert sum(p.name.startswith("00") and "xxxx" in p.name for p in crops) == 14  # one per neuron
    crops_complete()
    assert "reusing" in ok(stage2(images, files["a"], out, *args))

    disk_full_at(monkeypatch, ".jpg", 20)
    # a rerun that must write its crops again (the crops folder removed by hand), failing mid-way
    shutil.rmtree(ex_dir / "crops")
    proc = stage2(images, files["a"], out, *args)
    monkeypatch.undo()
    assert proc.returncode == 2 and proc.stderr.strip().splitlines()[-1].startswith("error: cannot write ")
    assert not (ex_dir / "examples.json").exists()
    log = ok(stage2(images, files["a"], out, *args))
    assert f"reusing {ex_dir / 'examples.json'}" not in log
    crops_complete()


FULL_DISK = """
import resource, runpy, signal, sys
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit then fails with EFBIG, as on a full disk
resource.setrlimit(resource.RLIMIT_FSIZE, (int(sys.argv[1]), int(sys.argv[1])))
sys.argv = sys.argv[2:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def test_a_full_disk_during_torch_save_is_one_line(files, probe_set, tmp_path):
    """Real writes that fail (a file-size limit: EFBIG) inside torch.save: one line naming activations.pt,
    exit 2, no traceback (torch's own error while closing its archive is not shown), no temp file."""
    out = tmp_path / "res"
    proc = subprocess.run([sys.executable, "-c", FULL_DISK, "4096", str(REPO / "example_selection.py"), "--data_root",
                           str(probe_set), "--checkpoint", str(files["a"]), "--resize", "64", "--crop", "64",
                           "--num_workers", "0", "--layer", "penultimate", "--save_root", str(out)],
                          cwd=REPO, capture_output=True, text=True, env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"})
    err = refused(proc, "activations.pt", "File too large", alone=False)
    assert err.startswith("error: cannot write ")
    assert not temps(out) and not list(out.rglob("activations.pt"))


def test_an_error_while_cleaning_up_is_not_shown(tmp_path, monkeypatch):
    """A write that fails and whose temp file cannot be removed either: the first error, in one line."""
    def full(src, dst):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def stuck(path):
        raise PermissionError(errno.EACCES, "Permission denied")
    monkeypatch.setattr(os, "replace", full)
    monkeypatch.setattr(os, "unlink", stuck)
    with pytest.raises(PipelineError, match=r"cannot write .*a\.pt \(No space left on device\)") as e:
        cache.save_tensors(tmp_path / "a.pt", {"x": torch.zeros(3)})
    assert e.value.__context__ is None or e.value.__suppress_context__


def test_a_long_output_name_is_written(tmp_path):
    """An output whose name takes most of the file system's 255 bytes (a long concept-set name) is written:
    its temp file carries a cut name."""
    path = tmp_path / ("text_" + "é" * 120 + "_base.pt")  # 250 bytes in UTF-8
    cache.save_bytes(path, b"x")
    assert path.read_bytes() == b"x" and not temps(tmp_path)
