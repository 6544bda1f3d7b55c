"""Scale: torchrun's ranks give exactly one process's outputs, the bf16 path runs under
CPU autocast, the recording loop writes rows in place, and benchmark.py's quick mode prints every
ratio. Speed itself is measured by benchmark.py, never asserted here."""
import json
import os
import subprocess
import sys

import pytest
import torch

from conftest import REAL, REPO, make_probe_set, ok, run_script, save_random_target
from pipeline import ranks
from pipeline.forward import record

SIZE = 32
CONCEPTS = "effusion\ncardiomegaly\nmass\nheart\nlung\nrib\nnodule\n"


def launch(script, *args, procs=1):
    """A step as its own process, or as torchrun's `procs` processes (gloo on the CPU). One intra-op
    thread each, as torchrun sets by default: the comparison is of the sharding, not of threads."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    head = [sys.executable] if procs == 1 else [sys.executable, "-m", "torch.distributed.run", "--standalone",
                                                "--nproc_per_node", str(procs)]
    return subprocess.run(head + [str(REPO / script), *map(str, args)], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=600)


@pytest.fixture(scope="module")
def probe(tmp_path_factory):
    root = tmp_path_factory.mktemp("scale")
    images = make_probe_set(root / "probe", n=13, size=SIZE, seed=5)  # 13 images in batches of 4: 4+4 | 4+1
    ckpt = save_random_target(root / "target.pth", "densenet121", seed=2)
    (root / "concepts.txt").write_text(CONCEPTS)
    return root, images, ckpt


def test_torchrun_two_processes_write_what_one_writes(probe, tmp_path):
    root, images, ckpt = probe
    common = ["--data_root", images, "--checkpoint", ckpt, "--resize", SIZE, "--crop", SIZE, "--num_workers", 0,
              "--batch_size", 4, "--layer", "fc,penultimate"]
    step3 = ["--model_clip", "phantom", "--concept_set", root / "concepts.txt", "--metric_encoders", "",
             "--batch_size", 3, "--device", "cpu"]
    outs = {}
    for procs in (1, 2):
        out = tmp_path / f"procs{procs}"
        log = ok(launch("example_selection.py", *common, "--save_root", out, procs=procs))
        assert log.count("activations of fc") == 1  # one log: rank 1 prints nothing
        ok(launch("concept_matching.py", *common, *step3, "--save_root", out, procs=procs))
        outs[procs] = out
    one, two = outs[1], outs[2]
    layers = one / "nih14_train" / "densenet121"
    for layer in ("fc", "penultimate"):
        rel = (layers / layer).relative_to(one)
        a, b = (torch.load(o / rel / "activations.pt", weights_only=True) for o in (one, two))
        assert a["activations"].shape == (13, 14 if layer == "fc" else 1024)
        assert torch.equal(a["activations"], b["activations"]), layer  # bit for bit
        assert torch.equal(a["logits"], b["logits"]) and a["image_ids"] == b["image_ids"] and a["key"] == b["key"]
        ex = [json.loads((o / rel / "adaptive93" / "examples.json").read_text()) for o in (one, two)]
        assert ex[0]["neurons"] == ex[1]["neurons"] and ex[0]["key"] == ex[1]["key"]  # (save_root differs)
        assert (one / rel / "adaptive93" / "examples.csv").read_bytes() == \
            (two / rel / "adaptive93" / "examples.csv").read_bytes()
    feats = [torch.load(next(o.rglob("image_features.pt")), weights_only=True) for o in (one, two)]
    assert len(feats[0]["image_ids"]) > 3  # more than one batch of 3 to share between the ranks
    assert feats[0]["image_ids"] == feats[1]["image_ids"] and torch.equal(feats[0]["features"], feats[1]["features"])
    named = [sorted(p.relative_to(o) for p in o.rglob("concepts.json")) for o in (one, two)]
    assert named[0] == named[1] and len(named[0]) == 2
    for rel in named[0]:
        assert json.loads((one / rel).read_text())["neurons"] == json.loads((two / rel).read_text())["neurons"]


def test_shares_are_whole_batches_without_duplicates(monkeypatch):
    for size in (1, 2, 3, 5):
        monkeypatch.setenv("WORLD_SIZE", str(size))
        for n, b in ((0, 4), (1, 4), (13, 4), (16, 4), (7, 1), (100, 64)):
            parts = [ranks.share(n, b, r) for r in range(size)]
            assert [i for p in parts for i in p] == list(range(n))  # every image once, in order
            assert all(p.start % b == 0 for p in parts if len(p))  # each starts on a batch boundary
            assert all(len(p) % b == 0 for p in parts if p.stop < n)  # and only the last is ragged
            if n:
                assert len(parts[0]) > 0  # rank 0, which writes, always has a share


def test_bf16_runs_under_cpu_autocast_and_stays_close(probe):
    root, images, ckpt = probe
    from dataset.nih import ProbeSet
    from models.target import load_target
    net, _ = load_target("densenet121", ckpt, True)
    x = torch.stack([ProbeSet(sorted(images.iterdir()), SIZE, SIZE)[i] for i in range(6)])
    dev = torch.device("cpu")
    full, l32 = record(net, [x[:4], x[4:]], ["fc", "penultimate"], 6, dev, show=False)
    half, l16 = record(net, [x[:4], x[4:]], ["fc", "penultimate"], 6, dev, precision="bf16", show=False)
    assert half["penultimate"].dtype == torch.float32 and half["penultimate"].shape == (6, 1024)
    assert not torch.equal(half["penultimate"], full["penultimate"])  # autocast did run in bf16
    assert torch.allclose(half["penultimate"], full["penultimate"], rtol=0.05, atol=0.05)
    assert torch.equal(full["fc"], l32)  # fc is the logits
    # In place, in order: the plain forward pass of each image alone gives the same rows.
    with torch.inference_mode():
        assert torch.allclose(full["fc"], torch.cat([net(x[i:i + 1]) for i in range(6)]), atol=1e-5)
    # channels_last is a memory layout: same values up to rounding
    nhwc, _ = record(net, [x[:4], x[4:]], ["penultimate"], 6, dev, channels_last=True, show=False)
    assert torch.allclose(nhwc["penultimate"], full["penultimate"], atol=1e-5)


def test_precision_is_in_the_key_and_channels_last_is_not(probe, tmp_path):
    root, images, ckpt = probe
    args = ["--data_root", str(images), "--checkpoint", str(ckpt), "--resize", str(SIZE), "--crop", str(SIZE),
            "--num_workers", "0", "--save_root", str(tmp_path)]
    path = tmp_path / "nih14_train" / "densenet121" / "fc" / "activations.pt"
    ok(run_script("example_selection.py", *args))
    fp32 = torch.load(path, weights_only=True)
    assert f"reusing {path}" in ok(run_script("example_selection.py", *args, "--channels_last", "yes"))
    assert f"reusing {path}" not in ok(run_script("example_selection.py", *args, "--precision", "bf16"))
    bf16 = torch.load(path, weights_only=True)
    assert bf16["key"] != fp32["key"] and bf16["config"]["precision"] == "bf16"
    assert not torch.equal(bf16["activations"], fp32["activations"])


def test_benchmark_quick_prints_every_ratio(tmp_path):
    log = ok(run_script("benchmark.py", "--quick", "yes", "--folder", str(tmp_path / "bench"), "--device", "cpu",
                        subprocess_run=True))
    rows = [line for line in log.splitlines() if "x floor" in line]
    assert {r.split()[0] for r in rows} >= {"stage2", "stage3-images", "stage3-text"}, log
    for r in rows:
        ratio = float(r.split("x floor")[0].split()[-1])
        assert 0 < ratio < 100, r
    assert "peak" in log  # the memory of the selection at NIH train's size, scaled down in quick mode


def test_grey_crops_resized_on_one_channel_equal_the_rgb_path(tmp_path):
    """probe_crop resizes a grey image before making it RGB: the pixels must be those of resizing RGB."""
    import numpy as np
    from PIL import Image
    from torchvision import transforms

    from conftest import REAL_DICOM, REAL_JPEG
    from dataset.files import read_image
    from dataset.nih import probe_crop
    rng = np.random.default_rng(1)
    Image.fromarray(rng.integers(0, 255, (300, 260), dtype=np.uint8)).save(tmp_path / "grey.png")
    Image.fromarray(rng.integers(0, 65535, (300, 260)).astype(np.uint16)).save(tmp_path / "wide.png")
    Image.fromarray(rng.integers(0, 255, (300, 260, 4), dtype=np.uint8), "RGBA").save(tmp_path / "rgba.png")
    nih = REAL / "00000001_000.png"  # a real NIH radiograph
    for path in (nih, REAL_DICOM, REAL_JPEG, tmp_path / "grey.png", tmp_path / "wide.png", tmp_path / "rgba.png"):
        for resize, crop in ((256, 224), (97, 64)):
            rgb_first = transforms.CenterCrop(crop)(transforms.Resize(resize)(read_image(path)))
            got = probe_crop(path, resize, crop)
            assert got.mode == "RGB" and np.array_equal(np.asarray(got), np.asarray(rgb_first)), (path, resize)


def test_steps_that_do_not_share_their_work_refuse_torchrun(tmp_path):
    env = {**os.environ, "WORLD_SIZE": "2", "RANK": "1"}  # as torchrun sets them
    proc = subprocess.run([sys.executable, str(REPO / "gallery.py"), "--save_root", str(tmp_path)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and proc.stderr.strip().splitlines() == [
        "error: gallery.py runs as one process; under torchrun only example_selection.py and concept_matching.py "
        "share their work: run it with python"], proc.stderr
    assert not any(tmp_path.iterdir())
