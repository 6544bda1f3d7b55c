"""Bad state on disk: stale, mixed, unreadable or unwritable outputs, killed runs, caches
that must not collide. Each case ends in exit 0 with a correct result or exit 2 with one line."""
import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import warnings

import filelock
import pytest
import torch

import pipeline.cache as cache
from conftest import REPO, files_stage3, make_probe_set, ok, refused, run_script, stage2, temps, unchangeable
from dataset.nih import class_names
from models.target import build_target, load_target
from pipeline.cli import PipelineError
from pipeline.evaluation import read_thresholds

VLM = "vlm_openclip-tiny-clip-random"


def layer(out):
    return out / "nih14_train" / "densenet121" / "fc"


@pytest.fixture(scope="module")
def base(files, probe_set, tmp_path_factory):
    """Stages 2 and 3 with checkpoint A (written under umask 022)."""
    out = tmp_path_factory.mktemp("base") / "res"
    old = os.umask(0o022)
    try:
        ok(stage2(probe_set, files["a"], out))
        ok(files_stage3(files, out))
    finally:
        os.umask(old)
    return out


def copy(base, tmp_path):
    shutil.copytree(base, tmp_path / "res")
    return tmp_path / "res"


def test_outputs_get_the_permissions_of_open(base):
    """Outputs get the mode any file the user opens gets (the umask's), not a temp file's 0600."""
    outputs = [p for p in base.rglob("*") if p.is_file() and not p.name.startswith(".")]
    names = {p.name for p in outputs}
    assert {"activations.pt", "examples.json", "examples.csv", "image_features.pt", "similarity.pt", "concepts.json",
            "metrics.json", "text_concepts_base.pt"} <= names, names
    for p in outputs:
        assert p.stat().st_mode & 0o777 == 0o644, (p, oct(p.stat().st_mode))


def test_examples_of_another_run_are_refused(files, probe_set, base, tmp_path):
    """Examples selected from activations a later step-2 run replaced (checkpoint A at 80, then B at 93)
    are refused by step 3 at 80, naming both checkpoints, instead of being matched as if they were B's."""
    out = copy(base, tmp_path)
    ok(stage2(probe_set, files["a"], out, "--adaptive_percent", "80"))
    ok(stage2(probe_set, files["b"], out))
    ex80 = layer(out) / "adaptive80" / "examples.json"
    err = refused(files_stage3(files, out, "--adaptive_percent", "80"), ex80, layer(out) / "activations.pt",
                  "example_selection.py", "--adaptive_percent 80", bars=False)
    assert str(files["a"]) in err and str(files["b"]) in err
    assert not list((layer(out) / "adaptive80").glob(f"{VLM}/*/concepts.json"))
    # The examples of the current activations are fine.
    ok(files_stage3(files, out))
    (layer(out) / "activations.pt").unlink()
    refused(files_stage3(files, out), layer(out) / "activations.pt", "gone", "example_selection.py", bars=False)


def test_visualization_refuses_concepts_of_other_examples(base, tmp_path):
    """concepts.json records the examples it was built from; built from others than today's, it is refused."""
    concepts = json.loads(next(base.rglob("concepts.json")).read_text())
    concepts["config"]["layer"] = "penultimate"  # the layer visualization.py explains
    concepts["examples_key"] = "the key of an older selection"
    path = tmp_path / "concepts.json"
    path.write_text(json.dumps(concepts))
    refused(run_script("visualization.py", "--concepts", str(path)), path, concepts["config"]["examples"],
            "concept_matching.py", bars=False)


def test_no_example_and_no_feature_cache(files, probe_set, tmp_path):
    """Every neuron dead (classifier weights zero): no crash, no warning, and no 'reusing' of a feature cache
    never written."""
    obj = torch.load(files["a"], weights_only=True)
    obj["model"]["classifier.weight"].zero_()
    torch.save(obj, tmp_path / "dead.pth")
    out = tmp_path / "res"
    ok(stage2(probe_set, tmp_path / "dead.pth", out))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        log = ok(files_stage3(files, out))
    assert "reusing" not in log and "no neuron has an example" in log
    # nothing to test for significance, so no statistic of an empty pool (torch warns of its std)
    assert not [w for w in caught if w.filename.endswith("evidence.py")], [str(w.message) for w in caught]
    assert not (out / "nih14_train" / VLM / "image_features.pt").exists()
    named = json.loads(next(out.rglob("concepts.json")).read_text())["neurons"]
    assert len(named) == 14 and all(n["status"] == "dead" and not n["concepts"] for n in named)


def test_unwritable_save_root_fails_before_the_forward_pass(probe_set, files, tmp_path):
    """A save_root that cannot be written is refused in one line before the forward pass, not after it."""
    (tmp_path / "a_file").write_text("not a folder")
    proc = stage2(probe_set, files["a"], tmp_path / "a_file" / "sub")
    refused(proc, tmp_path / "a_file" / "sub", "--save_root", bars=False)
    assert "activations (" not in proc.stdout  # refused before the forward pass


def test_full_disk_is_one_line_and_leaves_nothing(probe_set, files, base, tmp_path, monkeypatch):
    """An OSError while writing (disk full) is one line naming the file, and no temp file is left."""
    out = copy(base, tmp_path)

    def full(src, dst):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    monkeypatch.setattr(os, "replace", full)
    err = refused(stage2(probe_set, files["a"], out, "--adaptive_percent", "80"), "examples.csv",
                  "No space left on device", "--save_root", bars=False)
    monkeypatch.undo()
    assert not (layer(out) / "adaptive80" / "examples.csv").exists() and not temps(out), err


def test_full_disk_while_writing_crops(probe_set, files, base, tmp_path, monkeypatch):
    """Example crops are outputs like any other: written atomically, a failed write is one line."""
    out = copy(base, tmp_path)
    real = os.replace

    def full(src, dst):
        if str(dst).endswith(".jpg"):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(src, dst)
    monkeypatch.setattr(os, "replace", full)
    proc = stage2(probe_set, files["a"], out, "--adaptive_percent", "80", "--save_crops", "yes")
    monkeypatch.undo()
    last = proc.stderr.strip().splitlines()[-1]  # below the closed progress bar of the crops
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert last.startswith("error: cannot write ") and ".jpg" in last and "No space left on device" in last, last
    assert not temps(out)


def test_unreadable_upstream_outputs(files, probe_set, base, tmp_path):
    """A truncated or foreign upstream output is one line naming the step to re-run."""
    out = copy(base, tmp_path)
    ex = layer(out) / "adaptive93" / "examples.json"
    good = ex.read_bytes()
    for bad in (good[:len(good) // 2], b"[1, 2, 3]", b'{"key": "k", "activations_key": "a", "config": {}, "neurons": 7}',
                json.dumps({**json.loads(good), "neurons": [{"neuron": 0}]}).encode(), b"\xff\xfe\x00binary"):
        ex.write_bytes(bad)
        refused(files_stage3(files, out), ex, "example_selection.py", bars=False)
    # Stage 2 rebuilds its own truncated examples.json, and says so.
    ex.write_bytes(good[:100])
    log = ok(stage2(probe_set, files["a"], out))
    assert f"{ex} is unreadable" in log and json.loads(ex.read_text())["neurons"]
    act = layer(out) / "activations.pt"
    act.write_bytes(act.read_bytes()[:1000])
    refused(files_stage3(files, out), act, "example_selection.py", bars=False)

    concepts = next(base.rglob("concepts.json"))
    broken = tmp_path / "concepts.json"
    broken.write_text(concepts.read_text()[:-50])
    refused(run_script("visualization.py", "--concepts", str(broken)), broken, "concept_matching.py", bars=False)
    thr = tmp_path / "Threshold.csv"
    for bad in (b"\xff\xfe\x00\x01binary\n", b"label,bestthr\nAtelectasis\x00,0.5\n"):
        thr.write_bytes(bad)
        with pytest.raises(PipelineError, match="target_model_perform.py"):
            read_thresholds(thr, class_names())


def test_second_run_on_a_locked_folder_waits_then_refuses(probe_set, files, tmp_path, monkeypatch):
    """A second stage-2 run on a folder another run holds waits for its lock, then refuses: never mixed outputs."""
    out = tmp_path / "res"
    layer(out).mkdir(parents=True)
    monkeypatch.setattr(cache, "LOCK_TIMEOUT", 0.3, raising=False)
    with filelock.FileLock(cache.lock_path(layer(out))):
        proc = stage2(probe_set, files["b"], out)
    refused(proc, layer(out), "another run", bars=False)
    assert "waiting for the lock" in proc.stdout
    assert not (layer(out) / "activations.pt").exists()  # nothing computed, nothing written


@pytest.mark.parametrize("how", ["a folder", "a file this user may not open"])
def test_a_lock_file_that_cannot_be_opened_is_one_line(probe_set, files, tmp_path, how):
    """Not another run holding the lock (filelock.Timeout) but a .lock no run can open: named, with the fix."""
    out = tmp_path / "res"
    lock = cache.lock_path(layer(out))
    layer(out).mkdir(parents=True)
    if how == "a folder":
        lock.mkdir()
        line = refused(stage2(probe_set, files["a"], out), f"cannot open the lock file {lock} (Is a directory)", bars=False)
    else:
        lock.touch()
        with unchangeable(lock):
            line = refused(stage2(probe_set, files["a"], out), f"cannot open the lock file {lock} (", bars=False)
    assert "remove it if no run is writing in" in line
    assert not (layer(out) / "activations.pt").exists()


def test_temp_files_of_a_killed_run_are_removed(probe_set, files, base, tmp_path):
    """The hidden .NAME.*.tmp files of a run killed mid-write (SIGKILL) are removed by the next run."""
    out = copy(base, tmp_path)
    ex_dir = layer(out) / "adaptive93"
    kill = ("import os, signal, sys; sys.path.insert(0, sys.argv[3]); from pipeline.cache import _atomic\n"
            "def die(tmp):\n    open(tmp, 'w').write('{half')\n    os.kill(os.getpid(), signal.SIGKILL)\n"
            "_atomic(sys.argv[1], lambda tmp: (open(tmp, 'w').write('x'), _atomic(sys.argv[2], die)))")
    proc = subprocess.run([sys.executable, "-c", kill, str(layer(out) / "activations.pt"), str(ex_dir / "examples.json"),
                           str(REPO)], capture_output=True, text=True)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert len(temps(out)) == 2
    ok(stage2(probe_set, files["a"], out))
    assert temps(out) == []
    live = ex_dir / f".examples.csv.{cache._HOST}-{os.getpid()}.abcd1234.tmp"  # a write in progress: kept
    live.write_text("")
    cache.remove_stale_temps(ex_dir)
    assert temps(out) == [live.name]


def test_template_is_part_of_the_output_paths(files, base, tmp_path):
    """Two templates get their own text cache and concepts.json: neither overwrites the other's."""
    out = copy(base, tmp_path)
    default = layer(out) / "adaptive93" / VLM / "concepts_base_adaptive_a95" / "concepts.json"
    before = default.read_bytes()
    ok(files_stage3(files, out, "--template", "A radiograph showing"))
    assert default.read_bytes() == before
    other = [p for p in (layer(out) / "adaptive93" / VLM).glob("concepts_base-t*_adaptive_a95/concepts.json")]
    assert len(other) == 1 and json.loads(other[0].read_text())["config"]["template"] == "A radiograph showing"
    assert len(list((out / VLM).glob("text_concepts_base*.pt"))) == 2


def test_changed_images_are_refused(files, tmp_path):
    """Stage 3 refuses examples whose probing set changed since step 2 (an image replaced)."""
    images = make_probe_set(tmp_path / "probe", n=12)
    out = tmp_path / "res"
    ok(stage2(images, files["a"], out))
    first = sorted(images.iterdir())[0]
    first.write_bytes(sorted(images.iterdir())[1].read_bytes())
    refused(files_stage3(files, out), images, "changed", "example_selection.py", bars=False)


def test_identical_runs_write_identical_bytes(files, base):
    """Identical runs write identical similarity.pt bytes (torch would name its archive after the temp file)."""
    match = layer(base) / "adaptive93" / VLM / "concepts_base_adaptive_a95"
    before = {f: (match / f).read_bytes() for f in ("similarity.pt", "concepts.json")}
    ok(files_stage3(files, base))
    assert {f: (match / f).read_bytes() for f in before} == before


def test_checkpoint_with_unknown_tensors_is_refused(tmp_path, capsys):
    """A checkpoint with extra tensors is refused; only another head and MoCo's extras are ignored."""
    torch.manual_seed(0)
    sd = build_target("densenet121").state_dict()
    torch.save({"model": {**sd, "features.extra.weight": torch.zeros(3), "optimizer_step": torch.tensor(5)}},
               tmp_path / "extra.pth")
    with pytest.raises(PipelineError, match=r"2 tensors that --model densenet121 does not have .*features.extra.weight"):
        load_target("densenet121", tmp_path / "extra.pth", need_head=True)
    moco = {f"module.encoder_q.{k}": v for k, v in sd.items()}
    moco.update({f"module.encoder_k.{k}": v for k, v in sd.items()})
    moco.update({"module.queue": torch.zeros(128, 16), "module.queue_ptr": torch.zeros(1)})
    torch.save({"state_dict": moco}, tmp_path / "moco.pth")
    model, head = load_target("densenet121", tmp_path / "moco.pth", need_head=False)
    assert head and "ignoring MoCo's key encoder and queue" in capsys.readouterr().out
    assert torch.equal(model.features.conv0.weight, sd["features.conv0.weight"])
    assert load_target("densenet121", REPO / "pretrained" / "phantom_densenet121.pth", need_head=True)[1]
