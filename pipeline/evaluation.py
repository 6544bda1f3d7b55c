"""Classifier outputs and their metrics, shared by target_model_perform.py and visualization.py.

- per-class AUROC / AUPRC and the F1-maximising threshold, all from scikit-learn's curves;
- the thresholds file the visualisation reads to decide which classes count as predicted;
- the logits of a split: reused from step 2's activations.pt when its key says it was computed
  from the same split, checkpoint bytes and preprocessing, else one batched pass.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from sklearn.metrics import average_precision_score, precision_recall_curve, roc_auc_score
from tqdm import tqdm

from core.digests import file_digest
from dataset.nih import ProbeSet
from pipeline.cache import load_tensors, read_output
from pipeline.forward import workers
from core.errors import PipelineError
from pipeline.outputs import ACTIVATIONS, EVAL_RECORD, activations_key, layer_dir


def known(labels: np.ndarray, probs: np.ndarray, j: int) -> tuple[np.ndarray, np.ndarray]:
    """Class j's labels and probabilities on the images that have ground truth for it (label 0 or 1,
    not MISSING)."""
    has = labels[:, j] >= 0
    return labels[has, j], probs[has, j]


def auroc_auprc(labels: np.ndarray, probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per class AUROC and AUPRC (average precision); NaN for a class with one outcome only."""
    auc, ap = np.full(labels.shape[1], np.nan), np.full(labels.shape[1], np.nan)
    for j in range(labels.shape[1]):
        y, p = known(labels, probs, j)
        if 0 < y.sum() < len(y):
            auc[j] = roc_auc_score(y, p)
            ap[j] = average_precision_score(y, p)
    return auc, ap


def best_thresholds(labels: np.ndarray, probs: np.ndarray) -> np.ndarray:
    """Per class the threshold t maximising F1 of (prob >= t) on the precision-recall curve.
    NaN for a class without positives (no F1 to maximise); ties go to the lowest threshold."""
    out = np.full(labels.shape[1], np.nan)
    for j in range(labels.shape[1]):
        y, prob = known(labels, probs, j)
        if y.sum() == 0:
            continue
        p, r, t = precision_recall_curve(y, prob)
        # The curve's last point (p = 1, r = 0) has no threshold.
        p, r = p[:-1], r[:-1]
        with np.errstate(invalid="ignore", divide="ignore"):
            f1 = np.where(p + r > 0, 2 * p * r / (p + r), 0.0)
        out[j] = t[int(np.argmax(f1))]
    return out


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


def stage2_logits(config: dict, split: str, split_file: str, checkpoint: str | Path | None,
                  data_key: str) -> tuple[torch.Tensor, Path] | None:
    """Logits stage 2 cached for this split, target files and preprocessing (any layer's run holds
    them), or None. The fc run is tried first, as it is the smallest file."""
    c = {**config, "split": split, "split_file": split_file}
    runs = sorted(layer_dir({**c, "layer": "fc"}).parent.glob(f"*/{ACTIVATIONS}"),
                  key=lambda p: (p.parent.name != "fc", p.stat().st_size))
    for path in runs:
        try:
            stored = load_tensors(path)
            layer = stored["config"]["layer"]
        except Exception:  # unreadable or another format: not ours to reuse
            continue
        key = activations_key({**c, "layer": layer}, checkpoint, data_key)
        if stored.get("key") == key and stored.get("logits") is not None:
            return stored["logits"].float(), path
    return None


def forward_logits(net: torch.nn.Module, paths: list[Path], resize: int, crop: int, batch_size: int,
                   num_workers: int, device: torch.device, desc: str = "", **norm) -> torch.Tensor:
    """The model's outputs on the images; norm: channels, mean, std (dataset.nih.model_input_args)."""
    loader = torch.utils.data.DataLoader(ProbeSet(paths, resize, crop, **norm), batch_size=batch_size,
                                         num_workers=workers(num_workers), pin_memory=device.type == "cuda")
    out = []
    with torch.inference_mode():
        for x in tqdm(loader, desc=desc, unit="batch"):
            out.append(net(x.to(device, non_blocking=True)).float().cpu())
    return torch.cat(out)
