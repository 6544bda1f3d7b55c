"""Shared fixtures: a small generated probing set and random-weight target checkpoints."""
import contextlib
import io
import os
import subprocess
import sys
import traceback
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

os.environ.setdefault("HF_HUB_OFFLINE", "1")
REPO = Path(__file__).resolve().parents[1]
os.environ.setdefault("NLTK_DATA", str(REPO / "dataset" / "nltk_data"))  # the tagger ships in the repo
REAL = REPO / "tests" / "data"  # real radiographs in every format the readers take (tests/data/README.md)
sys.path.insert(0, str(REPO))
from pipeline import cli  # noqa: E402


def make_probe_set(root: Path, n: int = 64, size: int = 72, seed: int = 0) -> Path:
    """n grayscale PNGs with a bright disc of random size and place, and an NIH-style split file
    with random labels. Returns the image folder (its parent holds train_official.txt)."""
    rng = np.random.default_rng(seed)
    images = root / "images"
    images.mkdir(parents=True)
    yy, xx = np.mgrid[:size, :size]
    lines = []
    for i in range(n):
        cx, cy, r = rng.uniform(10, size - 10, 2).tolist() + [rng.uniform(3, 15)]
        img = 40 + 30 * rng.random((size, size)) + 150 * ((xx - cx) ** 2 + (yy - cy) ** 2 < r * r)
        name = f"{i:08d}_000.png"
        Image.fromarray(img.clip(0, 255).astype(np.uint8)).save(images / name)
        lines.append(name + " " + " ".join(str(v) for v in rng.integers(0, 2, 14)))
    for split in ("train", "val", "test"):
        (root / f"{split}_official.txt").write_text("\n".join(lines) + "\n")
    return images


def load_probe_set(split: str, data_root, split_override: str = "", skip_missing: bool = False):
    """Names, labels [N, 14], paths and data key of an NIH-style probing set, as step 2 reads it."""
    from dataset.probe import load_probe
    p = load_probe({"split": split, "data_root": str(data_root), "split_file": split_override,
                    "skip_missing": skip_missing})
    return p.names, p.labels, p.paths, p.data_key


def save_random_target(path: Path, arch: str, seed: int = 0, wrap: str = "model") -> Path:
    from models.target import build_target
    torch.manual_seed(seed)
    sd = build_target(arch).state_dict()
    torch.save({wrap: sd} if wrap else sd, path)
    return path


def model_input(path: Path, c: dict) -> torch.Tensor:
    """The crop step 2 saw, by torchvision's transforms: Resize, CenterCrop, the stored mean and std (c: the
    config examples.json or activations.pt stored)."""
    from torchvision import transforms
    mean, std = ([float(v) for v in str(c[k]).split(",")] * 3 for k in ("mean", "std"))
    t = transforms.Compose([transforms.Resize(c["resize"]), transforms.CenterCrop(c["crop"]), transforms.ToTensor(),
                            transforms.Normalize(mean[:3], std[:3])])
    return t(Image.open(path).convert("RGB"))


def densenet_of(ckpt: Path, reinit_seed: int = -1) -> torch.nn.Module:
    """torchvision's DenseNet-121 with a checkpoint's weights (save_random_target's), in eval mode; with a seed,
    re-initialised by hand: torch's generator seeded, then each module's reset_parameters() in module order."""
    import torchvision
    net = torchvision.models.densenet121(num_classes=14)
    net.load_state_dict(torch.load(ckpt, weights_only=True)["model"])
    if reinit_seed >= 0:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(reinit_seed)
            for m in net.modules():
                if hasattr(m, "reset_parameters"):
                    m.reset_parameters()
    return net.eval()


@contextlib.contextmanager
def unchangeable(path: Path):
    """path as it is for a user who may not change it: for root, whom permissions do not stop, the immutable
    attribute (chattr +i: no file in a folder so marked can be removed or added, a file so marked cannot be
    opened for writing); for anyone else, no write permission. Skips where neither can be set."""
    if os.geteuid() != 0:
        mode = path.stat().st_mode
        path.chmod(mode & ~0o222)
        try:
            yield
        finally:
            path.chmod(mode)
        return
    if subprocess.run(["chattr", "+i", str(path)], capture_output=True).returncode != 0:
        pytest.skip(f"chattr +i is not possible on {path} here (file system, or no such capability)")
    try:
        yield
    finally:
        subprocess.run(["chattr", "-i", str(path)], capture_output=True)


def run_script(script: str, *args: str, subprocess_run: bool = False, cwd=None) -> subprocess.CompletedProcess:
    """Run a script as `python script args...` would, from the repo root (or cwd). In-process by
    default (runpy, same __main__ path, the heavy imports paid once); a real subprocess when asked."""
    if subprocess_run:
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        return subprocess.run([sys.executable, str(REPO / script), *args], cwd=cwd or REPO, env=env,
                              capture_output=True, text=True)
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = cli.run_script(script, *args, cwd=cwd)
        except Exception:
            traceback.print_exc()
            code = 1
    return subprocess.CompletedProcess([script, *args], code, out.getvalue(), err.getvalue())


@pytest.fixture(scope="session")
def probe_set(tmp_path_factory) -> Path:
    return make_probe_set(tmp_path_factory.mktemp("probe"))


@pytest.fixture(scope="session")
def densenet_ckpt(tmp_path_factory) -> Path:
    return save_random_target(tmp_path_factory.mktemp("ckpt") / "densenet121.pth", "densenet121")


@pytest.fixture(scope="session")
def resnet_ckpt(tmp_path_factory) -> Path:
    return save_random_target(tmp_path_factory.mktemp("ckpt") / "resnet50.pth", "resnet50", wrap="state_dict")
