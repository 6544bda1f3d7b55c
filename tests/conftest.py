"""What the tests share: a small generated probing set and random-weight target checkpoints, the steps run
small from the command line, how a finished or refused run is checked, DICOM files, a full disk, and the
gallery's page parsed. Test modules import these from here (never from one another: a test checks that)."""
import contextlib
import errno
import io
import json
import os
import runpy
import shutil
import subprocess
import sys
import traceback
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

os.environ.setdefault("HF_HUB_OFFLINE", "1")
REPO = Path(__file__).resolve().parents[1]
os.environ.setdefault("NLTK_DATA", str(REPO / "dataset" / "nltk_data"))  # the tagger ships in the repo
REAL = REPO / "tests" / "data"  # real radiographs in every format the readers take (tests/data/README.md)
REAL_DICOM = REAL / "1.2.276.0.7230010.3.1.4.8323329.6904.1517875201.850819.dcm"
REAL_JPEG = REAL / "16747_3_1.jpg"
# an open_clip model small enough to build with random weights in a second (its vision tower takes 64 px)
TINY_CLIP = {"embed_dim": 32,
             "vision_cfg": {"image_size": 64, "layers": 2, "width": 64, "patch_size": 16, "head_width": 32},
             "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2}}
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


def run_inline(monkeypatch, script, *args):
    """Run a script in this process (saves the seconds a fresh interpreter spends importing torch)."""
    monkeypatch.setattr(sys, "argv", [script, *args])
    runpy.run_path(str(REPO / script), run_name="__main__")


def snapshot(root: Path, only_files: bool = False) -> dict:
    """Size and modification time of everything under root (only_files: of each file but the lock file): equal
    snapshots before and after, nothing there was written."""
    return {p: (p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*")
            if not only_files or (p.is_file() and p.name != ".lock")}


@pytest.fixture(scope="session")
def probe_set(tmp_path_factory) -> Path:
    return make_probe_set(tmp_path_factory.mktemp("probe"))


@pytest.fixture(scope="session")
def densenet_ckpt(tmp_path_factory) -> Path:
    return save_random_target(tmp_path_factory.mktemp("ckpt") / "densenet121.pth", "densenet121")


@pytest.fixture(scope="session")
def resnet_ckpt(tmp_path_factory) -> Path:
    return save_random_target(tmp_path_factory.mktemp("ckpt") / "resnet50.pth", "resnet50", wrap="state_dict")


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
    path = tmp_path_factory.mktemp("clip") / "tiny-clip.json"
    path.write_text(json.dumps(TINY_CLIP))
    return path


@pytest.fixture(scope="module")
def one_thread():
    """The models here are tiny: a second intra-op thread gains nothing, and on cores shared with other
    jobs its spin-waits made each forward pass 30 times slower. A module asks for it with
    `pytestmark = pytest.mark.usefixtures("one_thread")`."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def recording_vlm(monkeypatch):
    """Stage 3 with --model_clip open_clip:recording loads a RecordingVLM from --clip_weights; the fixture's
    list holds every instance loaded, in order."""
    import models.vlm
    from stubs import RecordingVLM
    loaded = []
    real = models.vlm.load_vlm

    def load_vlm(model_clip, weights="", device="cpu"):
        if model_clip != "open_clip:recording":  # a name the declared choices accept
            return real(model_clip, weights, device)
        loaded.append(RecordingVLM(weights))
        return loaded[-1]

    monkeypatch.setattr(models.vlm, "load_vlm", load_vlm)
    return loaded


# ---- how a run ended ---------------------------------------------------------------------------
def ok(proc) -> str:
    """A run that finished (exit 0); its stdout."""
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout


def error_lines(stderr: str) -> list[str]:
    """stderr without tqdm's progress bars (each drawn after a carriage return)."""
    return [line for line in stderr.split("\n") if line.strip() and not line.startswith("\r")]


def refused(proc, *words, code=2, bars=True, alone=True) -> str:
    """The line a refused run ends with: exit status code, no traceback and no usage anywhere, and on stderr one
    line that names each of words (exit 2: a line that begins "error: "). bars False: no progress bar either
    (stderr is that one line); alone False: lines may stand above it, none of which says "error". """
    out = proc.stdout + proc.stderr
    assert proc.returncode == code, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert "Traceback" not in out and "usage:" not in out, out[-3000:]
    lines = error_lines(proc.stderr) if bars else proc.stderr.strip().splitlines()
    assert lines and (len(lines) == 1 if alone else not any("error" in line for line in lines[:-1])), proc.stderr
    assert code != 2 or lines[-1].startswith("error: "), proc.stderr
    for w in words:
        assert str(w) in lines[-1], (w, lines[-1])
    return lines[-1]


# ---- steps 2 and 3, small and in-process ---------------------------------------------------------
def stage2(data, ckpt, out, *extra, model=None, size=64, dataset=None, labels=None, batch=None):
    """Step 2 on the probing set at data with the checkpoint ckpt (None: none passed), model (None: the default),
    crops of size px (None: the default), no loader workers, writing under out. The arguments keep the order users
    write them in (a user's model file that parses sys.argv names the first it does not know)."""
    args = (["--dataset", dataset] if dataset else []) + ["--data_root", str(data)]
    args += (["--labels", labels] if labels else []) + (["--checkpoint", str(ckpt)] if ckpt is not None else [])
    args += (["--model", model] if model else []) + (["--resize", str(size), "--crop", str(size)] if size else [])
    args += ["--num_workers", "0"] + (["--batch_size", str(batch)] if batch else [])
    return run_script("example_selection.py", *args, "--save_root", str(out), *extra)


def unlabeled_stage2(images, out, model, *extra, dataset="mine", size=32, batch=3):
    """Step 2 on a folder of images without labels, named dataset, in batches of batch."""
    return stage2(images, None, out, *extra, model=model, size=size, dataset=dataset, labels="none", batch=batch)


def stage3(out, clip, *extra, model=None, concepts=None, weights="random", encoders="medclip,all-minilm-l6-v2"):
    """Step 3 over step 2's outputs under out, with the open_clip model clip (a config file) and weights, the concept
    set concepts (None: the default) and the metric encoders encoders."""
    args = (["--model", model] if model else []) + ["--model_clip", f"open_clip:{clip}", "--clip_weights", str(weights)]
    args += ["--concept_set", str(concepts)] if concepts is not None else []
    return run_script("concept_matching.py", *args, "--num_workers", "0", "--save_root", str(out),
                      "--metric_encoders", encoders, *extra)


def compare(out, clip, *extra, encoders="all-minilm-l6-v2"):
    """compare_describers.py over step 2's outputs under out, with the open_clip model clip (random weights)."""
    return run_script("compare_describers.py", "--model_clip", f"open_clip:{clip}", "--clip_weights", "random",
                      "--num_workers", "0", "--save_root", str(out), "--metric_encoders", encoders, *extra)


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """Six random 40-px grey images in a folder: a probing set without labels."""
    root = tmp_path_factory.mktemp("imgs")
    rng = np.random.default_rng(0)
    for i in range(6):
        Image.fromarray(rng.integers(0, 255, (40, 40), dtype=np.uint8)).save(root / f"p{i}.png")
    return root


# ---- stages 2 and 3 over two DenseNet checkpoints, for the bad-state tests ---------------------------------
@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A tiny CLIP config, a six-word concept set and two random DenseNet-121 checkpoints (a: seed 0, b: seed 1)."""
    root = tmp_path_factory.mktemp("state")
    (root / "tiny-clip.json").write_text(json.dumps(TINY_CLIP))
    (root / "concepts.txt").write_text("mass\nnodule\neffusion\nheart\nlung\npneumonia\n")
    return {"clip": root / "tiny-clip.json", "concepts": root / "concepts.txt",
            "a": save_random_target(root / "a.pth", "densenet121", seed=0),
            "b": save_random_target(root / "b.pth", "densenet121", seed=1)}


def files_stage3(files, out, *extra):
    """Step 3 with the files fixture's CLIP and concept set, MedCLIP's metric encoder only."""
    return stage3(out, files["clip"], *extra, concepts=files["concepts"], encoders="medclip")


def temps(folder):
    """The temporary files an atomic write left under folder."""
    return sorted(p.name for p in folder.rglob(".*.tmp"))


# ---- files of other kinds, and a full disk -------------------------------------------------------------------
def write_dicom(path, pixels: np.ndarray, photometric="MONOCHROME2", pixel_data=True, **tags):
    """An uncompressed DICOM file of 16-bit grey pixels, with whatever tags are given."""
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID, ds.Modality = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID, "DX"
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, photometric
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    for k, v in tags.items():
        setattr(ds, k, v)
    if pixel_data:
        ds.PixelData = pixels.astype(np.uint16).tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path


def disk_full_at(monkeypatch, suffix: str, nth: int = 1) -> list:
    """os.replace fails as on a full disk at the nth file renamed into place whose name ends with suffix
    (and after); returns the list of those renamed, the failing one included."""
    real, seen = os.replace, []

    def full(src, dst):
        if str(dst).endswith(suffix):
            seen.append(dst)
            if len(seen) >= nth:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(src, dst)
    monkeypatch.setattr(os, "replace", full)
    return seen


# ---- the gallery's page, parsed, and a real browser ------------------------------------------------------------
HOSTILE = "<img src=x onerror=alert(1)>"
WORDS = ["effusion", "mass", "nodule", "pneumothorax", "edema", "heart", "lung", "rib", "spine", "clavicle",
         "diaphragm", "opacity", "catheter", "tube", "fracture", "hernia", "fibrosis", "emphysema", "line"]

# ablation.py's rows for the synthetic layer: one finding named by neuron 3's hostile concept, one named by none
ABLATION = [{"finding": HOSTILE, "n_neurons": 1, "effect": 1.5, "random_mean": 0.1, "random_sd": 0.2, "z": 7.0,
             "other_classes": 0.05, "neurons": [3], "n_images": 12},
            {"finding": "mass", "n_neurons": 0, "effect": None, "random_mean": None, "random_sd": None, "z": None,
             "other_classes": None, "neurons": [], "n_images": 9}]


def write_synthetic(root: Path, n_neurons: int = 2048, n_images: int = 96, seed: int = 0, testable: bool = True) -> Path:
    """A penultimate layer of n_neurons in the stage-2/3 output formats, with a dead neuron (5), a neuron
    whose best score is negative (7: none), the hostile concept as neuron 3's name, and a visualization
    panel whose top neuron is 3. Its significance test, in concepts.json's fields: every third named neuron
    significant; or, testable False, a layer where no name can be tested. Returns the save_root."""
    import csv

    from core.digests import file_digest
    from dataset.nih import class_names
    from dataset.probe import load_probe
    from mammi.method import select_concepts, select_examples
    rng = np.random.default_rng(seed)
    images = root / "world" / "images"
    images.mkdir(parents=True)
    names = []
    for i in range(n_images):
        name = f"s{i:05d}.png"
        Image.fromarray(rng.integers(0, 255, (48, 48), dtype=np.uint8)).save(images / name)
        names.append(name)
    labels = rng.integers(0, 2, (n_images, 14))
    res = root / "res"
    layer = res / "synth_all" / "resnet50" / "penultimate"
    acts = torch.from_numpy(rng.gamma(2.0, 1.0, (n_images, n_neurons))).float()
    acts[:, 5] = 0.25
    layer.mkdir(parents=True)
    torch.save({"key": "synthetic-activations", "config": {}, "activations": acts, "logits": None, "image_ids": names},
               layer / "activations.pt")
    neurons = select_examples(acts, "adaptive", 93.0)
    ex_dir = layer / "adaptive93"
    ex_dir.mkdir()
    ex_json = ex_dir / "examples.json"
    ex_json.write_text(json.dumps({"key": "synthetic-examples", "activations_key": "synthetic-activations", "config": {
        "data_root": str(images), "resize": 48, "crop": 48, "model": "resnet50", "layer": "penultimate",
        "dataset": "synth", "split": "train", "selection": "adaptive", "adaptive_percent": 93.0, "topk": 20,
        "checkpoint": "", "labels": "none", "data_key": load_probe({"labels": "none", "data_root": str(images)}).data_key},
        "neurons": [{**n, "examples": [{"image_id": names[i], "activation": float(acts[i, n["neuron"]])}
                                       for i in n["examples"]]} for n in neurons]}))
    classes = class_names()
    with open(ex_dir / "examples.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["neuron", "rank", "image_id", "activation", "findings"] + classes + [f"prob_{c}" for c in classes])
        for n in neurons:
            for r, i in enumerate(n["examples"]):
                found = "|".join(c for c, v in zip(classes, labels[i]) if v) or "No Finding"
                w.writerow([n["neuron"], r, names[i], float(acts[i, n["neuron"]]), found] + labels[i].tolist() + [""] * 14)
    vocab = WORDS + [HOSTILE] + [f"word{j}" for j in range(40)]
    S = torch.from_numpy(rng.normal(0.0, 1.0, (n_neurons, len(vocab)))).float()
    S[3, vocab.index(HOSTILE)] = 10.0
    S[7] = -S[7].abs() - 0.1
    match = ex_dir / "vlm_synth" / "words_base_adaptive_a95"
    match.mkdir(parents=True)
    named = []
    for n, row in zip(neurons, S):
        chosen = select_concepts(row, 95.0) if n["examples"] else []
        k, tested = n["neuron"], testable and bool(chosen)  # step 3 tests the named neurons' names
        named.append({"neuron": k, "n_examples": len(n["examples"]),
                      "status": "dead" if n["dead"] else ("ok" if chosen else "none"),
                      "concepts": [{"concept": vocab[c], "score": float(row[c]), "p": 0.5 if tested else None}
                                   for c in chosen],
                      "tested": vocab[chosen[0]] if tested else None,
                      "m": float(row[chosen[0]]) / len(n["examples"]) if tested else None,
                      "p": 0.001 * (1 + k % 50) if tested else None,
                      "q": (0.01 if k % 3 == 0 else 0.2) if tested else None,
                      "significant": k % 3 == 0 if tested else None, "null_p95": 3.25 if tested else None})
    torch.save({"key": "synthetic", "similarity": S, "concepts": vocab, "neurons": list(range(n_neurons))},
               match / "similarity.pt")
    (match / "concepts.json").write_text(json.dumps({"key": "synthetic", "examples_key": "synthetic-examples", "config": {
        "layer": "penultimate", "model": "resnet50", "alpha": 95.0, "examples": str(ex_json),
        "model_clip": "synthetic", "concept_set": "words", "fdr": 0.05}, "neurons": named,
        "evidence": {"testable": testable, "tested": sum(n["significant"] is not None for n in named),
                     "significant": sum(bool(n["significant"]) for n in named), "fdr": 0.05, "draws": 1000,
                     "pool": n_images, "p_min": 1 / 1001 if testable else 0.2, "pool_needed": None if testable else 500}}))
    names = file_digest(match / "concepts.json")  # what ablation.py and visualization.py store of the names they used
    (match / "ablation.json").write_text(json.dumps({"key": "synthetic-ablation", "concepts": str(match / "concepts.json"),
                                                     "concepts_digest": names, "layer": "penultimate",
                                                     "findings": ABLATION}))
    vis = res / "synth_nih" / "resnet50" / "visualization"
    (vis / "figures").mkdir(parents=True)
    Image.new("RGB", (90, 40), "white").save(vis / "figures" / "s00001_000_Mass.png")
    (vis / "total_results.json").write_text(json.dumps({
        "config": {"layer": "penultimate", "concepts": str(match / "concepts.json")}, "concepts_digest": names,
        "images": [{"image": "s00001.png", "predictions": [
            {"class": "Mass", "probability": 0.9, "figure": "figures/s00001_000_Mass.png",
             "neurons": [{"neuron": 3, "taylor": 1.0, "concepts": [HOSTILE]}]}]}]}))
    return res


class Page(HTMLParser):
    def __init__(self, text):
        super().__init__()
        self.tags, self.scripts, self._in = [], {}, None
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))
        if tag == "script":
            self._in = dict(attrs).get("id", "code")
            self.scripts[self._in] = ""

    def handle_endtag(self, tag):
        if tag == "script":
            self._in = None

    def handle_data(self, data):
        if self._in:
            self.scripts[self._in] += data


def page_data(index: Path) -> tuple[str, Page, dict]:
    text = index.read_text()
    page = Page(text)
    return text, page, json.loads(page.scripts["data"])


def find_browser():
    chrome = next((shutil.which(b) for b in ("chromium", "chromium-browser", "google-chrome") if shutil.which(b)), None)
    driver = shutil.which("chromedriver") or ("/usr/bin/chromedriver" if Path("/usr/bin/chromedriver").is_file() else None)
    return chrome, driver


@pytest.fixture(scope="module")
def browser():
    chrome, driver_bin = find_browser()
    if not (chrome and driver_bin):
        reason = ("no Chromium browser and chromedriver found (Debian: apt-get install chromium chromium-driver, "
                  "as .ci/run does); the browser tests are skipped")
        print(reason)
        pytest.skip(reason)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    opts = webdriver.ChromeOptions()
    opts.binary_location = chrome
    for a in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
              "--allow-file-access-from-files", "--window-size=1400,1000"):
        opts.add_argument(a)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    drv = webdriver.Chrome(service=Service(driver_bin), options=opts)
    drv.set_page_load_timeout(60)
    yield drv
    drv.quit()


def no_errors(drv):
    from selenium.common.exceptions import NoAlertPresentException
    with pytest.raises(NoAlertPresentException):
        drv.switch_to.alert.text
    severe = [e for e in drv.get_log("browser") if e["level"] == "SEVERE"]
    assert severe == []
