"""The target's outputs on a held-out split, for target_model_perform.py, ablation and visualization.py
(the metrics themselves: mammi/metrics.py).

- held_out_split: the one finder of the val or test split and its images and labels;
- stage2_pass: step 2's activations.pt of the split, reused when its key says it was computed from the
  same split, checkpoint bytes and preprocessing (stage2_logits: its logits); else forward_logits, one
  batched pass;
- the thresholds file the visualisation reads to decide which classes count as predicted.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from core.digests import file_digest
from core.errors import PipelineError
from dataset.nih import split_source
from dataset.probe import Probe, load_probe
from pipeline.cache import load_tensors, read_output
from pipeline.forward import probe_loader
from pipeline.outputs import ACTIVATIONS, EVAL_RECORD, activations_key, layer_dir


def read_thresholds(path: str | Path, classes: list[str], target: str | None = None, runs: str = "") -> np.ndarray:
    """Thresholds in class order from Threshold.csv (label, bestthr); NaN = never predicted. Given the
    target they are to serve (target_key; runs: that target in words), they are read only when the
    eval.json beside them, which target_model_perform.py writes after its other outputs, says they were
    fitted to it and holds their digest: thresholds of another checkpoint, of a run that did not finish or
    copied in from elsewhere are refused."""
    path = Path(path)
    if not path.is_file():
        raise PipelineError(f"thresholds {path} not found; run target_model_perform.py first or pass --thresholds PATH")
    table = read_output(path, "target_model_perform.py", {"columns": list, "rows": list},
                        check=lambda t: t["rows"] and {"label", "bestthr"} <= set(t["columns"]))
    if target is not None:
        record = path.parent / EVAL_RECORD
        redo = "re-run target_model_perform.py with the experiment file (and checkpoint) of the concepts"
        if not record.is_file():
            raise PipelineError(f"{path} has no {EVAL_RECORD} beside it, which target_model_perform.py writes after "
                                f"its other outputs to say what the thresholds were fitted to (its run did not "
                                f"finish, or the file comes from elsewhere); {redo}")
        rec = read_output(record, "target_model_perform.py", {"key": str, "target": str, "config": dict, "files": dict})
        if rec["files"].get(path.name) != file_digest(path):
            raise PipelineError(f"{path} is not the file {record} vouches for (written or copied over since); {redo}")
        if rec["target"] != target:
            fitted = rec["config"].get("checkpoint") or rec["config"].get("model")
            seed = rec["config"].get("reinit_seed", -1)
            raise PipelineError(f"{path} was fitted to another target ({fitted}" + (f", re-initialised with seed {seed}"
                                if seed >= 0 else "") + f") than the one it would serve ({runs or 'this run'}); {redo}")
    got = {r["label"]: r["bestthr"] for r in table["rows"]}
    missing = [c for c in classes if c not in got]
    if missing:
        raise PipelineError(f"{path}: no threshold for {', '.join(missing)}; rerun target_model_perform.py")
    try:
        return np.array([float(got[c]) if got[c] not in ("", "nan") else math.nan for c in classes])
    except (ValueError, TypeError):
        raise PipelineError(f"{path}: thresholds must be numbers; rerun target_model_perform.py") from None


def held_out_split(config: dict, split: str, split_file: str, probed: Probe | None = None) -> tuple[dict, Probe]:
    """The one finder of a held-out split (val or test: target_model_perform.py's, ablation's): the constants
    that load it and its probing set. config: step 2's constants; split_file: the --{split}_split_file given.
    NIH split files: split_file, else {data_root}/../{split}_official.txt, else NIH's own (load_probe), said in
    the log. A CSV probing set: the split's own CSV, else the probing CSV itself (a note says it is not held
    out; probed, that CSV already loaded, serves then)."""
    if config["labels"]:
        c = {**config, "labels": split_file or config["labels"]}
        if not split_file:
            print(f"note: {split}: no --{split}_split_file, so the probing CSV {config['labels']} serves: "
                  f"it is not held out")
            if probed is not None:
                return c, probed
    else:
        print(split_source(split, config["data_root"], split_file, f"--{split}_split_file"))
        c = {**config, "split": split, "split_file": split_file}
    return c, load_probe(c)


def stage2_pass(c: dict, checkpoint: str | Path | None, data_key: str, layer: str | None = None,
                names: list[str] | None = None) -> dict | None:
    """Step 2's stored pass over a split, reused instead of a forward pass here, or None. c: step 2's constants
    as this run was given them (step 2 keys its activations.pt by its constants as given, 0 and "" for the
    family's preprocessing) with the split's own (held_out_split). With a layer, that layer's activations.pt
    (its activations are wanted); without, any layer's, as each holds the logits: fc's first, then the smallest
    file. Reused when its key is the one c, the checkpoint's bytes and the images (data_key) give, it holds
    logits, and (names given) its images are these in this order. Returns the stored dict with its "path"."""
    if layer is not None:
        runs = [layer_dir({**c, "layer": layer}) / ACTIVATIONS]
    else:
        runs = sorted(layer_dir({**c, "layer": "fc"}).parent.glob(f"*/{ACTIVATIONS}"),
                      key=lambda p: (p.parent.name != "fc", p.stat().st_size))
    for path in runs:
        if not path.is_file():
            continue
        try:
            stored = load_tensors(path)
            stored_layer = stored["config"]["layer"]
        except Exception:  # unreadable or another format: not ours to reuse
            continue
        if layer is not None and stored_layer != layer:
            continue
        try:
            key = activations_key({**c, "layer": stored_layer}, checkpoint, data_key)
        except PipelineError:  # this run's constants do not even resolve: not step 2's
            return None
        if stored.get("key") == key and stored.get("logits") is not None and \
                (names is None or stored.get("image_ids") == names):
            return {**stored, "path": path}
    return None


def stage2_logits(config: dict, split: str, split_file: str, checkpoint: str | Path | None,
                  data_key: str) -> tuple[torch.Tensor, Path] | None:
    """The logits step 2 stored for this split (stage2_pass, any layer's), as float32, and their file; or None."""
    found = stage2_pass({**config, "split": split, "split_file": split_file}, checkpoint, data_key)
    return None if found is None else (found["logits"].float(), found["path"])


def forward_logits(net: torch.nn.Module, paths: list[Path], resize: int, crop: int, batch_size: int,
                   num_workers: int, device: torch.device, desc: str = "", **norm) -> torch.Tensor:
    """The model's outputs on the images; norm: channels, mean, std (dataset.nih.model_input_args)."""
    loader = probe_loader(paths, resize, crop, batch_size, num_workers, device, **norm)
    out = []
    with torch.inference_mode():
        for x in tqdm(loader, desc=desc, unit="batch"):
            out.append(net(x.to(device, non_blocking=True)).float().cpu())
    return torch.cat(out)
