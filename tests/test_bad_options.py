"""Bad options, worker errors, Ctrl-C and misleading messages: each ends in one line on stderr
and the documented exit status, never a traceback."""
import argparse
import json
import os
import re
import signal
import subprocess
import sys
import textwrap

import pytest
import torch

from conftest import REPO, error_lines, make_probe_set, refused, run_script, save_random_target
from pipeline import cli
from pipeline.cli import PipelineError

SMALL = ["--resize", "64", "--crop", "64", "--num_workers", "0"]


def interrupted_run(script, *args):
    """run_script, where a KeyboardInterrupt escaping the step fails the test instead of pytest."""
    try:
        return run_script(script, *args)
    except KeyboardInterrupt:
        pytest.fail(f"KeyboardInterrupt escaped {script}")


@pytest.fixture()
def small_set(tmp_path):
    return make_probe_set(tmp_path / "probe", n=8, size=32)


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return save_random_target(tmp_path_factory.mktemp("ckpt") / "d.pth", "densenet121")


# ---- every constant's range or choices, checked before any work

BAD = [
    ("example_selection.py", "--topk", "0", "in [1, 10**9]"),
    ("example_selection.py", "--topk", "-1", "in [1, 10**9]"),
    ("example_selection.py", "--selection", "foo", "adaptive | topk"),
    ("example_selection.py", "--batch_size", "0", "in [1, 8192]"),
    ("example_selection.py", "--num_workers", "-2", "in [-1, 256]"),
    ("example_selection.py", "--resize", "-1", "[0, 4096]"),  # 0 = the model family's
    ("example_selection.py", "--crop", "-1", "[0, 4096]"),
    ("example_selection.py", "--crop", "300", "exceeds --resize 256"),  # CenterCrop beyond the resized image pads it
    ("example_selection.py", "--channels", "2", "0 | 1 | 3"),
    ("example_selection.py", "--token_pool", "max", "mean | cls"),
    ("example_selection.py", "--adaptive_percent", "0", "(0, 100)"),
    ("example_selection.py", "--adaptive_percent", "100", "(0, 100)"),  # threshold = max: no examples
    ("example_selection.py", "--adaptive_percent", "150", "(0, 100)"),
    ("example_selection.py", "--adaptive_percent", "-5", "(0, 100)"),
    ("example_selection.py", "--adaptive_percent", "nan", "(0, 100)"),
    ("example_selection.py", "--adaptive_percent", "inf", "(0, 100)"),
    ("example_selection.py", "--device", "bogus", "auto | cpu | cuda"),
    ("example_selection.py", "--uncertain", "maybe", "zero | one | ignore"),
    ("example_selection.py", "--max_images", "-1", "in [0, 10**9]"),
    ("example_selection.py", "--model", "vgg16", "torchvision:NAME | timm:NAME"),
    ("concept_matching.py", "--alpha", "-50", "[0, 100)"),
    ("concept_matching.py", "--alpha", "150", "[0, 100)"),
    ("concept_matching.py", "--alpha", "nan", "[0, 100)"),
    ("concept_matching.py", "--template_ver", "foo", "base | no"),
    ("concept_matching.py", "--model_clip", "clip", "open_clip:NAME | phantom"),
    ("concept_matching.py", "--topk", "0", "in [1, 10**9]"),  # an upstream constant is checked downstream too
    ("target_model_perform.py", "--num_workers", "-1", "in [0, 256]"),
    ("bbox_img.py", "--box_source", "foo", "nih | chestx_det"),
    ("bbox_img.py", "--max_drawn", "-1", "in [0, 10**9]"),
    ("visualization.py", "--num_top_neuron", "0", "in [1, 100]"),
    ("visualization.py", "--neuron_percentile", "101", "[0, 100]"),
    ("prepare_mimic_nouns.py", "--report_split", "foo", "train | val | test | all"),
    # seeds within what torch's and numpy's generators take; counts within what a machine can hold
    ("example_selection.py", "--seed", "-1", "in [0, 2**63 - 1]"),
    ("example_selection.py", "--reinit_seed", str(2**64), "in [-1, 2**63 - 1]"),
    ("concept_matching.py", "--null_seed", str(2**64), "in [0, 2**63 - 1]"),
    ("sanity_check.py", "--sanity_seed", str(2**64), "in [0, 2**63 - 1]"),
    ("ablation.py", "--ablation_seed", str(2**64), "in [0, 2**63 - 1]"),
    ("concept_matching.py", "--null_draws", str(10**11), "in [100, 10**7]"),
    ("ablation.py", "--ablation_draws", str(10**10), "in [10, 10**7]"),
    ("gallery.py", "--hist_bins", str(10**9), "in [1, 1000]"),
]


@pytest.mark.parametrize("script,option,value,allowed", BAD, ids=[f"{s[:-3]}{o}={v}" for s, o, v, _ in BAD])
def test_out_of_range_option_is_refused_naming_it(tmp_path, script, option, value, allowed):
    # Where a bad value went unnoticed, the run would stop at the missing inputs instead.
    elsewhere = [a for k in ("data_root", "reports") if k in cli.accepted_names(script)
                 for a in (f"--{k}", str(tmp_path / "nowhere"))]
    save = ["--save_root", str(tmp_path)] if "save_root" in cli.accepted_names(script) else ["--out_dir", str(tmp_path)]
    proc = run_script(script, option, value, *elsewhere, *save)
    refused(proc, f"{option} {value}", allowed)
    assert not any(tmp_path.iterdir())


def test_experiment_file_value_is_checked_and_named(tmp_path):
    exp = tmp_path / "exp.py"
    exp.write_text("adaptive_percent = 100.0\n")
    refused(run_script("example_selection.py", str(exp), "--save_root", str(tmp_path)), str(exp),
            "adaptive_percent = 100.0", "(0, 100)")


SCRIPTS = cli.STEPS[:-1] + ("demo.py", "benchmark.py", "phantom/train.py")


def reads_of(script):
    return {"concept_matching.py": ("example_selection.py",), "target_model_perform.py": ("example_selection.py",),
            "bbox_img.py": ("example_selection.py",),
            "visualization.py": ("bbox_img.py", "concept_matching.py", "example_selection.py"),
            "demo.py": ("example_selection.py", "concept_matching.py", "bbox_img.py")}.get(script, ())


def configure_only(script, *args):
    """The configure step of a script, without running it (demo, benchmark and training would)."""
    scope = {**cli.constants_of(script), "__file__": str(REPO / script)}
    return cli.configure(scope, list(args), reads_of(script))


@pytest.mark.parametrize("script", SCRIPTS)
def test_every_default_is_in_its_declared_range(script):
    config = configure_only(script)
    specs = cli.specs_of(script)
    assert specs, f"{script} declares no range or choices"
    for name in ("batch_size", "num_workers", "device", "resize", "crop", "topk", "alpha", "n_val", "threads"):
        if name in cli.constant_names(script):
            assert name in specs, f"{script}: {name} has no declared range"
    assert config


@pytest.mark.parametrize("script,option,value", [("demo.py", "--n_probe", "0"), ("demo.py", "--vis_images", "-1"),
                                                 ("benchmark.py", "--n_images", "-1"),
                                                 ("phantom/train.py", "--threads", "0"),
                                                 ("phantom/train.py", "--target_lr", "-1"),
                                                 ("phantom/train.py", "--world_seed", "-1")])
def test_long_running_scripts_check_their_options(capsys, script, option, value):
    with pytest.raises(SystemExit) as e:
        configure_only(script, option, value)
    err = capsys.readouterr().err
    assert e.value.code == 2 and len(error_lines(err)) == 1 and f"{option} {value}" in err


def test_help_shows_each_range(tmp_path):
    proc = run_script("example_selection.py", "--help")
    assert proc.returncode == 0
    lines = {line.split()[0]: line for line in proc.stdout.splitlines() if line.startswith("  --")}
    assert "in [1, 10**9]: k when selection = topk" in lines["--topk"] and "adaptive | topk: " in lines["--selection"]
    assert "in (0, 100): p of the adaptive threshold" in lines["--adaptive_percent"]
    proc = run_script("concept_matching.py", "-h")
    lines = {line.split()[0]: line for line in proc.stdout.splitlines() if line.startswith("  --")}
    assert "in [0, 100): keep concepts" in lines["--alpha"] and "in [1, 10**9]" in lines["--topk"]


def test_device_that_is_not_there(tmp_path):
    refused(run_script("example_selection.py", "--device", "cuda:99", "--save_root", str(tmp_path)), "--device cuda:99")
    if not torch.cuda.is_available():
        refused(run_script("example_selection.py", "--device", "cuda", "--save_root", str(tmp_path)), "--device cuda")


def test_more_loader_workers_than_open_files_allow_are_refused_with_the_number_that_fits(small_set, ckpt, tmp_path):
    """Under `ulimit -n 128`, 50 loader processes would run out of open files once started; refused before,
    with the most that fit, and that many then run."""
    import resource

    def low_limit():
        resource.setrlimit(resource.RLIMIT_NOFILE, (128, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))
    out = tmp_path / "res"
    args = ["--data_root", str(small_set), "--checkpoint", str(ckpt), *SMALL[:4], "--batch_size", "1",
            "--device", "cpu", "--save_root", str(out)]
    run = lambda workers: subprocess.run([sys.executable, "example_selection.py", *args, "--num_workers", workers],
                                         cwd=REPO, capture_output=True, text=True, preexec_fn=low_limit)
    line = refused(run("50"), "--num_workers 50: 50 loader processes need about", "ulimit -n")
    fit = int(re.search(r"at most (\d+) fit: pass --num_workers \1 or less", line)[1])
    assert 1 <= fit < 50, line
    assert not [p for p in out.rglob("*") if p.is_file() and p.name != ".lock"]
    proc = run(str(fit))
    assert proc.returncode == 0, proc.stderr[-3000:]


# ---- a loader worker's error is the same one line as without workers

def test_unreadable_image_in_a_worker_is_one_line(small_set, ckpt, tmp_path):
    bad = small_set / "00000003_000.png"
    bad.write_bytes(b"these bytes are no PNG")
    lines = []
    for workers in ("0", "2"):
        proc = run_script("example_selection.py", "--data_root", str(small_set), "--checkpoint", str(ckpt), *SMALL,
                          "--num_workers", workers, "--batch_size", "2", "--save_root", str(tmp_path / "res"))
        lines.append(refused(proc, str(bad), "cannot read the image"))
    assert lines[0] == lines[1] == f"error: {bad}: cannot read the image (UnidentifiedImageError); replace or remove it"
    assert not (tmp_path / "res").exists() or not list((tmp_path / "res").rglob("*.pt"))


# ---- Ctrl-C ends with one line and exit status 130

def no_temp_files(root):
    return not [p for p in root.rglob("*") if p.name.endswith(".tmp")]


def test_ctrl_c_in_the_forward_pass(small_set, ckpt, tmp_path, monkeypatch):
    import dataset.nih

    def interrupt(*a, **k):
        raise KeyboardInterrupt
    monkeypatch.setattr(dataset.nih, "crop_of", interrupt)  # the loader crops each image it reads
    out = tmp_path / "res"
    proc = interrupted_run("example_selection.py", "--data_root", str(small_set), "--checkpoint", str(ckpt), *SMALL,
                           "--save_root", str(out))
    assert refused(proc, code=130) == "interrupted; nothing was written"
    assert not out.exists() or not [p for p in out.rglob("*") if p.is_file() and p.name != ".lock"]  # locks stay


def test_ctrl_c_after_an_output_names_what_was_kept(small_set, ckpt, tmp_path, monkeypatch):
    from mammi import method

    def interrupt(*a, **k):
        raise KeyboardInterrupt
    monkeypatch.setattr(method, "select_examples", interrupt)
    out = tmp_path / "res"
    proc = interrupted_run("example_selection.py", "--data_root", str(small_set), "--checkpoint", str(ckpt), *SMALL,
                           "--save_root", str(out))
    acts = out / "nih14_train" / "densenet121" / "fc" / "activations.pt"
    line = refused(proc, str(acts), code=130)
    assert line.startswith("interrupted;") and acts.is_file() and no_temp_files(out)
    assert not list(out.rglob("examples.json"))


def test_ctrl_c_in_a_step_the_demo_runs_is_said_once(capsys):
    """demo.py runs each step through run_script: the step's main lets the interrupt through, the demo's says it."""
    def step():
        raise KeyboardInterrupt

    try:
        with pytest.raises(SystemExit) as e:
            cli.main(lambda: cli.main(step))
    except KeyboardInterrupt:
        pytest.fail("KeyboardInterrupt escaped main")
    assert e.value.code == 130 and capsys.readouterr().err == "interrupted; nothing was written\n"


# A loader worker sends each batch's file descriptors through multiprocessing's resource sharer; Ctrl-C can end
# the step mid-handshake with it. The sharer's real thread, in a process run under main: peers that drop the
# connection (silent), one with the wrong key (printed) and the main thread's own refused connection (printed).
SHARER_PEERS = textwrap.dedent("""
    import os, socket, sys
    from multiprocessing import resource_sharer
    from multiprocessing.connection import Connection
    from pipeline import cli

    def peer():
        s = socket.socket(socket.AF_UNIX)
        s.connect(resource_sharer._resource_sharer._address)
        return s

    def body():
        r, w = os.pipe()
        served = resource_sharer.DupFd(r)  # starts the sharer's thread, as a worker's first batch does
        for _ in range(3):
            peer().close()  # a step ended mid-handshake: a reset or an end of file in the sharer's thread
        wrong = Connection(peer().detach())
        wrong.recv_bytes()
        wrong.send_bytes(b"not the digest")
        wrong.recv_bytes()  # the sharer's failure message: it raised AuthenticationError
        wrong.close()
        os.close(served.detach())  # a whole handshake: the sharer, one peer at a time, handled those before
        socket.socket(socket.AF_UNIX).bind(sys.argv[1])  # bound, never listening
        resource_sharer._resource_sharer.get_connection((sys.argv[1], 0))

    cli.main(body)
""")


def test_a_peer_dropping_the_resource_sharer_prints_no_traceback(tmp_path):
    """The sharer's thread hands its errors to sys.excepthook: a dropped connection is silent under main; its
    other errors, and a connection error of the main thread (even one raised in resource_sharer.py), are not."""
    proc = subprocess.run([sys.executable, "-c", SHARER_PEERS, str(tmp_path / "sock")], cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    err = proc.stderr
    assert proc.returncode == 1 and err.count("Traceback") == 2, err
    assert "AuthenticationError: digest received was wrong" in err and "ConnectionRefusedError" in err, err
    assert not any(e in err for e in ("EOFError", "BrokenPipeError", "ConnectionResetError")), err


def test_sigint_with_loader_workers(tmp_path, ckpt):
    """A real Ctrl-C (SIGINT to the process group, workers included) during the forward pass. The signal goes
    out when the progress bar has counted a finished batch, and 100 batches cannot all finish in the moment
    that takes: the interrupt lands mid-pass on any machine, however fast or loaded."""
    images = make_probe_set(tmp_path / "probe", n=400, size=48)  # small files; each is resized to 256 anyway
    out = tmp_path / "res"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    args = ["--data_root", str(images), "--checkpoint", str(ckpt), "--resize", "256", "--crop", "224",
            "--batch_size", "4", "--num_workers", "2", "--device", "cpu", "--save_root", str(out)]
    # SIGINT as the default in the step: Python raises KeyboardInterrupt only where SIGINT was not ignored when it
    # started, and a test run in the background of a script (`&`, nohup) would pass its children SIGINT ignored.
    proc = subprocess.Popen([sys.executable, "example_selection.py", *args], cwd=REPO, env=env, start_new_session=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,  # bytes: tqdm's \r kept as is
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    seen, done = b"", None
    try:
        while done is None and proc.poll() is None:  # the bar's counts, as "| 3/100 [": wait for one above 0
            # from the pipe itself, as communicate() reads it below: a buffered read would keep bytes from it
            seen += os.read(proc.stderr.fileno(), 4096)
            counts = re.findall(rb"\| *(\d+)/100 \[", seen)
            done = int(counts[-1]) if counts and int(counts[-1]) > 0 else None
        os.killpg(proc.pid, signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    result = subprocess.CompletedProcess(proc.args, proc.returncode, stdout.decode(), (seen + stderr).decode())
    assert done is not None and done < 100, result.stderr[-2000:]  # interrupted mid-pass, not before or after
    assert refused(result, code=130) == "interrupted; nothing was written"
    assert not out.exists() or not [p for p in out.rglob("*") if p.is_file() and p.name != ".lock"]  # locks stay


@pytest.mark.parametrize("allocate", [lambda: torch.empty(2**50, dtype=torch.uint8),
                                      lambda: __import__("numpy").empty(2**50, dtype="uint8")], ids=["torch", "numpy"])
def test_an_allocator_that_fails_is_one_line(capsys, allocate):
    """What the counts checked against memory up front leave (a model's activations grow with --batch_size):
    torch's allocator (a RuntimeError) or numpy's (a MemoryError) failing for a petabyte ends in one line."""
    with pytest.raises(SystemExit) as e:
        cli.main(allocate)
    lines = error_lines(capsys.readouterr().err)
    assert e.value.code == 2 and len(lines) == 1 and lines[0].startswith("error: out of memory ("), lines
    assert "--batch_size" in lines[0]


STEP_SCRIPTS = [p.relative_to(REPO).as_posix() for p in sorted(REPO.glob("*.py")) + sorted(REPO.glob("*/*.py"))
                if "\nconfig = configure(" in p.read_text()]
# Sends a real SIGINT to the process at the first module a step imports other than the guard (and __future__,
# which must come first): a Ctrl-C landing while the step's imports (torch's take seconds) are under way.
SIGINT_AT_IMPORT = """
import importlib.abc, os, pkgutil, runpy, signal, sys  # pkgutil: what run_path imports itself
class Fire(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name not in ("pipeline", "pipeline.guard", "__future__"):
            sys.meta_path.remove(self)
            os.kill(os.getpid(), signal.SIGINT)
        return None
sys.meta_path.insert(0, Fire())
sys.path.insert(0, os.getcwd())
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


@pytest.mark.parametrize("script", STEP_SCRIPTS)
def test_ctrl_c_while_a_step_imports_is_one_line(script):
    """Imports and configuration run before main: the guard each step imports first catches a Ctrl-C there."""
    assert {"example_selection.py", "gallery.py", "demo.py", "phantom/train.py"} <= set(STEP_SCRIPTS)
    proc = subprocess.run([sys.executable, "-c", SIGINT_AT_IMPORT, script], cwd=REPO, capture_output=True, text=True)
    assert refused(proc, code=130) == "interrupted; nothing was written"


def test_ctrl_c_while_the_experiment_file_is_read(tmp_path):
    exp = tmp_path / "exp.py"
    exp.write_text("import os, signal\nos.kill(os.getpid(), signal.SIGINT)\ntopk = 5\n")
    proc = subprocess.run([sys.executable, "example_selection.py", str(exp), "--save_root", str(tmp_path / "res")],
                          cwd=REPO, capture_output=True, text=True)
    assert refused(proc, code=130) == "interrupted; nothing was written"
    assert not (tmp_path / "res").exists()


@pytest.mark.parametrize("encoding, name", [("ascii", "données"), ("cp1252", "肺")])
def test_a_console_that_cannot_encode_a_path_prints_it_escaped(tmp_path, encoding, name):
    """The constants' printout and the error line show a character the console lacks as an escape."""
    reports = tmp_path / f"{name}.json"
    env = {**os.environ, "PYTHONIOENCODING": encoding}
    proc = subprocess.run([sys.executable, "prepare_mimic_nouns.py", "--reports", str(reports), "--out_dir",
                           str(tmp_path / "out")], cwd=REPO, env=env, capture_output=True, text=True, errors="replace")
    escaped = str(reports).encode("ascii", "backslashreplace").decode()
    assert f"reports = '{escaped}'" in proc.stdout, proc.stdout + proc.stderr
    assert refused(proc, f"reports file {escaped} not found")


# ---- messages that say what is wrong

def test_split_files_are_named(small_set, ckpt, tmp_path):
    (small_set.parent / "test_official.txt").unlink()
    proc = run_script("target_model_perform.py", "--data_root", str(small_set), "--checkpoint", str(ckpt), *SMALL,
                      "--save_root", str(tmp_path / "res"))
    assert proc.returncode == 2
    assert f"val: split file {small_set.parent / 'val_official.txt'}" in proc.stdout
    line = next(line for line in proc.stdout.splitlines() if line.startswith("test: split file"))
    assert "dataset/nih14/test_official.txt" in line and str(small_set.parent / "test_official.txt") in line
    assert "--test_split_file" in line


def test_head_of_another_size_is_named(small_set, tmp_path):
    from models.target import build_target
    ckpt = tmp_path / "d15.pth"
    torch.save({"model": build_target("densenet121", 15).state_dict()}, ckpt)
    proc = run_script("example_selection.py", "--data_root", str(small_set), "--checkpoint", str(ckpt), *SMALL,
                      "--save_root", str(tmp_path / "res"))
    line = refused(proc, str(ckpt), "15-way", "14 classes", "--layer penultimate")
    assert "pretraining" not in line


def test_blocked_pickle_is_not_invited_to_run(tmp_path, small_set):
    from conftest import TINY_CLIP
    from models.vlm import load_vlm
    config = tmp_path / "tiny-clip.json"
    config.write_text(json.dumps(TINY_CLIP))
    evil = tmp_path / "evil.pt"
    torch.save({"state_dict": {}, "args": argparse.Namespace(lr=1)}, evil)
    with pytest.raises(PipelineError) as e:
        load_vlm(f"open_clip:{config}", str(evil))
    msg = str(e.value)
    assert "weights_only" not in msg and "can still be loaded" not in msg and "\x1b" not in msg
    assert str(evil) in msg and "pickle" in msg and "state dict" in msg and "\n" not in msg
    proc = run_script("example_selection.py", "--data_root", str(small_set), "--checkpoint", str(evil), *SMALL,
                      "--save_root", str(tmp_path / "res"))
    line = refused(proc, str(evil), "pickle", "state dict")
    assert "re-download" not in line and "weights_only" not in line


def test_layer_hint_names_nested_modules(small_set, ckpt, tmp_path):
    proc = run_script("example_selection.py", "--data_root", str(small_set), "--checkpoint", str(ckpt), *SMALL,
                      "--layer", "denseblock3", "--save_root", str(tmp_path / "res"))
    refused(proc, "--layer 'denseblock3'", "features.denseblock3", "fc", "penultimate")
