"""The one held-out split finder and the one reuse of step 2's pass (pipeline/evaluation.py), which
target_model_perform.py and ablation both take: which images a split is, and when step 2's stored
activations.pt of it serves instead of a forward pass."""
import shutil

import torch

from conftest import make_probe_set
from pipeline.cache import save_tensors
from pipeline.evaluation import held_out_split, stage2_pass
from pipeline.outputs import activations_key, layer_dir


def step2(tmp_path):
    images = make_probe_set(tmp_path / "probe", n=6, size=24)
    ckpt = tmp_path / "weights.pth"
    ckpt.write_bytes(b"any bytes: only their digest enters the key")
    c = {"dataset": "nih14", "data_root": str(images), "model": "densenet121", "labels": "", "skip_missing": False,
         "resize": 40, "crop": 32, "save_root": str(tmp_path / "results")}
    return c, images, ckpt


def store(c, layer, ckpt, probe, logits=True, key=None):
    """An activations.pt as step 2 writes it for c's split at this layer."""
    c = {**c, "layer": layer}
    path = layer_dir(c) / "activations.pt"
    path.parent.mkdir(parents=True, exist_ok=True)
    n = len(probe.names)
    save_tensors(path, {"key": key or activations_key(c, ckpt, probe.data_key), "config": c,
                        "activations": torch.arange(n * 3.0).reshape(n, 3), "image_ids": probe.names,
                        "logits": torch.ones(n, 14) * (2 if layer == "fc" else 3) if logits else None})
    return path


def test_nih_split_is_its_split_file_or_the_one_beside_the_images(tmp_path, capsys):
    c, images, _ = step2(tmp_path)
    got, probe = held_out_split(c, "val", "")
    assert (got["split"], got["split_file"]) == ("val", "")
    assert len(probe.names) == 6 and f"{images.parent / 'val_official.txt'}" in capsys.readouterr().out
    lines = (images.parent / "test_official.txt").read_text().splitlines()
    (tmp_path / "two.txt").write_text("\n".join(lines[:2]) + "\n")
    got, probe = held_out_split(c, "test", str(tmp_path / "two.txt"))
    assert got["split_file"] == str(tmp_path / "two.txt") and probe.names == [ln.split()[0] for ln in lines[:2]]
    assert probe.labels.shape == (2, 14)


def test_a_csv_probing_set_serves_as_its_own_split_with_a_note(tmp_path, capsys):
    c, images, _ = step2(tmp_path)
    names = sorted(p.name for p in images.iterdir())
    (tmp_path / "all.csv").write_text("Path,Mass\n" + "".join(f"{n},{i % 2}\n" for i, n in enumerate(names)))
    (tmp_path / "val.csv").write_text("Path,Mass\n" + "".join(f"{n},1\n" for n in names[:3]))
    c = {**c, "labels": str(tmp_path / "all.csv"), "uncertain": "zero"}
    got, probe = held_out_split(c, "test", "")
    assert got["labels"] == str(tmp_path / "all.csv") and probe.names == names
    assert "not held out" in capsys.readouterr().out
    already = object()
    assert held_out_split(c, "test", "", already)[1] is already  # the probing CSV loaded once serves
    got, probe = held_out_split(c, "val", str(tmp_path / "val.csv"), already)
    assert got["labels"] == str(tmp_path / "val.csv") and probe.names == names[:3]
    assert probe.labels[:, 0].tolist() == [1, 1, 1]


def test_step_2s_pass_serves_only_with_its_key_logits_and_images(tmp_path):
    c, _, ckpt = step2(tmp_path)
    c, probe = held_out_split(c, "test", "")
    store(c, "penultimate", ckpt, probe)
    got = stage2_pass(c, ckpt, probe.data_key, "penultimate", probe.names)
    assert got is not None and got["path"] == layer_dir({**c, "layer": "penultimate"}) / "activations.pt"
    assert got["activations"].shape == (6, 3) and got["logits"][0, 0] == 3
    # another layer asked: not this file, even copied into that layer's folder
    assert stage2_pass(c, ckpt, probe.data_key, "fc", probe.names) is None
    fc = layer_dir({**c, "layer": "fc"}) / "activations.pt"
    fc.parent.mkdir(parents=True)
    shutil.copy(got["path"], fc)
    assert stage2_pass(c, ckpt, probe.data_key, "fc", probe.names) is None
    fc.unlink()
    # other images in the stored order, other preprocessing, other checkpoint bytes: not step 2's pass
    assert stage2_pass(c, ckpt, probe.data_key, "penultimate", probe.names[::-1]) is None
    assert stage2_pass({**c, "resize": 80}, ckpt, probe.data_key, "penultimate", probe.names) is None
    other = tmp_path / "other.pth"
    other.write_bytes(b"other bytes")
    assert stage2_pass(c, other, probe.data_key, "penultimate", probe.names) is None
    # a run that kept no logits (a head that could not be read) serves nothing
    store(c, "penultimate", ckpt, probe, logits=False)
    assert stage2_pass(c, ckpt, probe.data_key, "penultimate") is None


def test_for_the_logits_any_layer_serves_fc_first(tmp_path):
    c, _, ckpt = step2(tmp_path)
    c, probe = held_out_split(c, "test", "")
    store(c, "penultimate", ckpt, probe)
    store(c, "fc", ckpt, probe)
    assert stage2_pass(c, ckpt, probe.data_key)["logits"][0, 0] == 2  # fc's
    store(c, "fc", ckpt, probe, key="stale")
    got = stage2_pass(c, ckpt, probe.data_key)
    assert got["logits"][0, 0] == 3 and got["path"].parent.name == "penultimate"
