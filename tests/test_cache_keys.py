"""Cache invalidation at the same output path: each input a key claims to cover is changed in turn,
and the stage must recompute; with nothing changed it must reuse; a stored output whose key is
wrong must never be used.

Each test walks one probing set through a chain of changes (a fresh world per change would cost a
forward pass each). Recompute is read from the log ("reusing PATH" absent) and from the file
(a new key, new content); reuse from the log and an unchanged file.
"""
import argparse
import json
import os
import shutil
from pathlib import Path

import pytest
import torch

import core.digests as digests
from conftest import REPO, make_probe_set, ok, run_script, stage2
from core.digests import digest, file_digest
from pipeline.cache import save_json
from stubs import write_vlm_weights

SIZE = 32


def stored_key(path: Path) -> str:
    if path.suffix == ".json":
        return json.loads(path.read_text())["key"]
    return torch.load(path, weights_only=True)["key"]


class Outputs:
    """Stamps (key, mtime) of a stage's cache files, to tell a recompute from a reuse."""

    def __init__(self, **paths: Path):
        self.paths = paths
        self.stamps = {}
        self.snap()

    def snap(self):
        self.stamps = {n: (stored_key(p), p.stat().st_mtime_ns) for n, p in self.paths.items()}

    def check(self, log: str, recomputed: set[str], why: str):
        """The named outputs were recomputed under a new key, the others reused untouched."""
        for name, path in self.paths.items():
            key, mtime = self.stamps[name]
            if name in recomputed:
                assert f"reusing {path}" not in log, f"{why}: {name} was reused"
                assert stored_key(path) != key, f"{why}: {name} kept its old key"
            else:
                assert f"reusing {path}" in log, f"{why}: {name} was not reused"
                assert (stored_key(path), path.stat().st_mtime_ns) == (key, mtime), f"{why}: {name} was rewritten"
        self.snap()


def rewrite(path: Path, data: bytes):
    """New bytes at the same path, with a later modification time even on a coarse clock."""
    st = path.stat()
    path.write_bytes(data)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 2_000_000_000))


def copy_sources(dest: Path) -> Path:
    """The project's Python sources under dest, at the same relative paths: a tree whose code digest
    equals the project's until a file in it is edited."""
    for src in REPO.rglob("*.py"):
        rel = src.relative_to(REPO)
        if rel.parts[0] in ("tests", "results", "demo", "mutants") or rel.parts[0].startswith("."):
            continue
        (dest / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, dest / rel)
    return dest


@pytest.fixture
def world(tmp_path, densenet_ckpt):
    images = make_probe_set(tmp_path / "probe", n=24, size=SIZE, seed=3)
    ckpt = tmp_path / "target.pth"
    shutil.copy(densenet_ckpt, ckpt)
    return images, ckpt, tmp_path / "res"


def world_stage2(world, *extra):
    """Step 2 on the world fixture, which must finish."""
    return ok(stage2(*world, *extra, size=SIZE))


def test_stage2_keys(world, tmp_path, monkeypatch):
    images, ckpt, out = world
    world_stage2(world)
    layer = out / "nih14_train" / "densenet121" / "fc"
    outs = Outputs(activations=layer / "activations.pt", examples=layer / "adaptive93" / "examples.json")
    first = torch.load(outs.paths["activations"], weights_only=True)["activations"]

    outs.check(world_stage2(world), set(), "nothing changed")

    sd = torch.load(ckpt, weights_only=True)
    sd["model"]["classifier.bias"] += 1.0
    torch.save(sd, ckpt)
    outs.check(world_stage2(world), {"activations", "examples"}, "checkpoint bytes changed")
    acts = torch.load(outs.paths["activations"], weights_only=True)["activations"]
    assert torch.allclose(acts, first + 1.0, atol=1e-4)  # the new head's outputs, not the old ones

    one = sorted(images.iterdir())[5]
    rewrite(one, (images / "00000000_000.png").read_bytes())  # another image's pixels under this name
    outs.check(world_stage2(world), {"activations", "examples"}, "one image rewritten")
    acts = torch.load(outs.paths["activations"], weights_only=True)["activations"]
    assert torch.allclose(acts[5], acts[0], atol=1e-5) and not torch.allclose(acts[5], first[5] + 1.0, atol=1e-3)

    split = images.parent / "train_official.txt"
    lines = split.read_text().splitlines()
    lines[2] = lines[2][:-1] + ("1" if lines[2].endswith("0") else "0")
    rewrite(split, ("\n".join(lines) + "\n").encode())
    outs.check(world_stage2(world), {"activations", "examples"}, "split file changed")

    # 93.00001 still writes to adaptive93/: the key, not the folder, must tell the selections apart
    outs.check(world_stage2(world, "--adaptive_percent", "93.00001"), {"examples"}, "adaptive_percent changed")
    outs.check(world_stage2(world), {"examples"}, "adaptive_percent changed back")
    # top-k's k does not enter the adaptive selection's key: changing it reuses
    outs.check(world_stage2(world, "--topk", "7"), set(), "topk changed under adaptive selection")

    src = copy_sources(tmp_path / "src")
    with monkeypatch.context() as m:
        m.setattr(digests, "ROOT", src)
        outs.check(world_stage2(world), set(), "an identical copy of the code")
        target = src / "models" / "target.py"  # a comment and a docstring cannot change a result: reused
        text = target.read_text()
        target.write_text(text.replace('"""', '"""An edited docstring. ', 1) + "\n# a comment\n")
        outs.check(world_stage2(world), set(), "a comment and the module docstring of models/target.py edited")
        with open(src / "mammi" / "method.py", "a") as f:
            f.write("\n_EDITED = 1\n")
        outs.check(world_stage2(world), {"examples"}, "mammi/method.py edited")
        with open(src / "models" / "target.py", "a") as f:
            f.write("\n_EDITED = 1\n")
        outs.check(world_stage2(world), {"activations", "examples"}, "models/target.py edited")
        with open(src / "pipeline" / "forward.py", "a") as f:  # the loop that records the activations
            f.write("\n_EDITED = 1\n")
        outs.check(world_stage2(world), {"activations", "examples"}, "pipeline/forward.py edited")

        # Stored outputs under a wrong key, at the right paths, with contents that would show if used
        # (still on the edited copy of the code, to spare a forward pass going back to the original).
        real = torch.load(outs.paths["activations"], weights_only=True)
        torch.save({**real, "key": "0" * 64, "activations": torch.zeros_like(real["activations"])},
                   outs.paths["activations"])
        outs.snap()
        # recomputed under the key the examples were selected with, so they stay reused
        outs.check(world_stage2(world), {"activations"}, "activations.pt with a wrong key")
        assert torch.allclose(torch.load(outs.paths["activations"], weights_only=True)["activations"],
                              real["activations"], atol=1e-6)
        ex = json.loads(outs.paths["examples"].read_text())
        outs.paths["examples"].write_text(json.dumps({**ex, "key": "0" * 64, "neurons": []}))
        outs.snap()
        outs.check(world_stage2(world), {"examples"}, "examples.json with a wrong key")
        assert json.loads(outs.paths["examples"].read_text())["neurons"] == ex["neurons"]

        # The right key, but a pickled object that only a full unpickler builds: caches are read with
        # weights_only=True, so such a file is not loaded (a cache file cannot run code) and is replaced.
        real = torch.load(outs.paths["activations"], weights_only=True)
        torch.save({**real, "note": argparse.Namespace(made_by="someone else")}, outs.paths["activations"])
        log = world_stage2(world)
        assert f"reusing {outs.paths['activations']}" not in log
        assert "note" not in torch.load(outs.paths["activations"], weights_only=True)


TEXTS = {"A chest x-ray image of a": [1, 0, 0], "A chest x-ray image of a mass": [0, 1, 0],
         "A chest x-ray image of a nodule": [0, 0, 1]}


def test_stage3_keys(world, tmp_path, monkeypatch, recording_vlm):
    images, ckpt, out = world
    world_stage2(world)
    concepts = tmp_path / "words.txt"
    concepts.write_text("mass\nnodule\n")
    weights = write_vlm_weights(tmp_path / "vlm.json", TEXTS, [1, 1, 2])

    def stage3(*extra):
        return ok(run_script("concept_matching.py", "--model_clip", "open_clip:recording", "--clip_weights", str(weights),
                             "--concept_set", str(concepts), "--metric_encoders", "", "--num_workers", "0",
                             "--save_root", str(out), *extra))

    stage3()
    match = next(out.rglob("words_base_adaptive_a95"))
    tag = "vlm_openclip-recording-vlm"
    outs = Outputs(images=out / "nih14_train" / tag / "image_features.pt",
                   text=out / tag / "text_words_base.pt", metrics=match / "metrics.json")
    n_images = len(torch.load(outs.paths["images"], weights_only=True)["image_ids"])
    loads = len(recording_vlm)

    outs.check(stage3(), set(), "nothing changed")
    assert len(recording_vlm) == loads  # nothing to embed: the VLM is not even loaded

    rewrite(concepts, b"mass\nnodule\neffusion\n")
    outs.check(stage3(), {"text", "metrics"}, "concept file changed")
    assert recording_vlm[-1].text_calls[-1][2] == "A chest x-ray image of a effusion"
    assert torch.load(match / "similarity.pt", weights_only=True)["similarity"].shape[1] == 3

    # Another template gets caches of its own (the template is in their paths and keys); the
    # default template's outputs are neither read nor rewritten, and are reused when it comes back.
    log = stage3("--template", "A radiograph of a")
    assert recording_vlm[-1].text_calls[-1] == ["A radiograph of a mass", "A radiograph of a nodule",
                                                "A radiograph of a effusion", "A radiograph of a"]
    own = list((out / tag).glob("text_words_base-t*.pt"))
    assert len(own) == 1 and stored_key(own[0]) != outs.stamps["text"][0] and f"reusing {own[0]}" not in log
    for name in ("text", "metrics"):
        assert (stored_key(outs.paths[name]), outs.paths[name].stat().st_mtime_ns) == outs.stamps[name]
    outs.check(stage3(), set(), "template changed back")
    assert torch.equal(torch.load(outs.paths["text"], weights_only=True)["template"], torch.tensor([1.0, 0, 0]))

    rewrite(weights, json.dumps({"texts": TEXTS, "image": [2, 1, 1]}).encode())
    outs.check(stage3(), {"images", "text", "metrics"}, "VLM weights changed")
    feats = torch.load(outs.paths["images"], weights_only=True)["features"]
    assert torch.allclose(feats, torch.tensor([2.0, 1, 1]) / 6 ** 0.5, atol=1e-6)  # the new weights' image

    # alpha 95.00001 still writes to ..._a95/
    outs.check(stage3("--alpha", "95.00001"), {"metrics"}, "alpha changed")
    outs.check(stage3(), {"metrics"}, "alpha changed back")

    one = sorted(images.iterdir())[7]
    rewrite(one, (images / "00000001_000.png").read_bytes())
    world_stage2(world)
    log = stage3()
    outs.check(log, {"images", "metrics"}, "one image rewritten")
    n_now = len(torch.load(outs.paths["images"], weights_only=True)["image_ids"])
    assert f"({n_now} new)" in log  # every example image embedded again, not only new names

    src = copy_sources(tmp_path / "src")
    with monkeypatch.context() as m:
        m.setattr(digests, "ROOT", src)
        outs.check(stage3(), set(), "an identical copy of the code")
        with open(src / "models" / "vlm.py", "a") as f:
            f.write("\n_EDITED = 1\n")
        outs.check(stage3(), {"images", "text", "metrics"}, "models/vlm.py edited")
        with open(src / "dataset" / "nih.py", "a") as f:  # the crop the VLM sees
            f.write("\n_EDITED = 1\n")
        outs.check(stage3(), {"images", "text", "metrics"}, "dataset/nih.py edited")
    outs.check(stage3(), {"images", "text", "metrics"}, "the code as it is")

    # Stored outputs under a wrong key, at the right paths, with contents that would show if used.
    for name in ("images", "text"):
        path = outs.paths[name]
        real = torch.load(path, weights_only=True)
        torch.save({**real, "key": "0" * 64, "features": torch.zeros_like(real["features"])}, path)
        outs.snap()
        outs.check(stage3(), {name}, f"{path.name} with a wrong key")
        assert torch.equal(torch.load(path, weights_only=True)["features"], real["features"])
    m = json.loads(outs.paths["metrics"].read_text())
    outs.paths["metrics"].write_text(json.dumps({**m, "key": "0" * 64, "hit_rate": {"mean": 1.0, "se": 0, "n": 14}}))
    outs.snap()
    outs.check(stage3(), {"metrics"}, "metrics.json with a wrong key")
    assert json.loads(outs.paths["metrics"].read_text())["hit_rate"] == m["hit_rate"]
    assert n_images > 0


def test_file_digest_reads_bytes_not_only_size_and_time(tmp_path):
    """Two files of one size and one modification time, different bytes (a checkpoint swapped by a
    copy that keeps times): their digests differ, within one process too."""
    a, b = tmp_path / "a.pth", tmp_path / "b.pth"
    a.write_bytes(b"weights one")
    b.write_bytes(b"weights two")
    os.utime(b, ns=(a.stat().st_atime_ns, a.stat().st_mtime_ns))
    assert file_digest(a) != file_digest(b)


def test_digest_ignores_dict_order():
    assert digest({"layer": "fc", "crop": 224, "data": "x"}) == digest({"data": "x", "crop": 224, "layer": "fc"})
    assert digest({"layer": "fc", "crop": 224}) != digest({"layer": "fc", "crop": 225})


def test_failed_write_leaves_nothing_behind(tmp_path):
    """A write that fails half-way leaves neither the output nor its temporary file, and the error
    is the writer's own."""
    target = tmp_path / "out" / "concepts.json"
    with pytest.raises(TypeError, match="not JSON serializable"):
        save_json(target, {"key": "k", "neurons": [object()]})
    assert list((tmp_path / "out").iterdir()) == []
