"""Ablation of the neurons a describer names for a finding (docs/ablation.md), the plumbing around the
statistic (mammi/ablation.py): what ablation.py and compare_describers.py share: the held-out split's
images, labels, logits and layer activations (`held_out`), one concepts.json ablated and written with
its figure (`ablate`), and the memory its random sets take (`check_draws`).
"""
from __future__ import annotations

import functools
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import torch

from core.digests import code_digest, file_digest
from core.errors import PipelineError
from dataset.nih import model_input_args
from dataset.probe import align_labels
from mammi.ablation import (
    finding_stats,
    hook_drops,
    linear_drops,
    linear_map,
    live_neurons,
    named_neurons,
    positives,
    random_sets,
)
from models.target import target_as_probed
from pipeline.cache import cached, load_json, may_write, save_csv, save_json, save_png
from pipeline.cli import EXAMPLE_SELECTION, constants_of
from pipeline.evaluation import held_out_split, stage2_pass
from pipeline.forward import probe_loader, record
from pipeline.limits import check_memory
from pipeline.outputs import ABLATION, ABLATION_CSV, ABLATION_PNG, ablation_key, activations_key, stored_classes

FIELDS = ("finding", "n_neurons", "effect", "random_mean", "random_sd", "z", "other_classes")
OUTPUTS = (ABLATION, ABLATION_CSV, ABLATION_PNG)  # what ablate writes beside a concepts.json


class NoLabels(PipelineError):
    """The held-out split has no labels: no image is known to be positive for a finding."""


def code() -> str:
    """The code part of ablation.json's key, the same from ablation.py and compare_describers.py (the
    statistic in mammi/ablation.py with it, as this module imports it)."""
    return code_digest("pipeline/ablation.py")


def draw_bytes(n_neurons: int, n_classes: int) -> int:
    """Bytes one random set takes at the peak of a finding's ablation, for a layer of n_neurons: random_sets'
    keys and order (float64, int64) or the set as a list of Python ints, its row of linear_drops' membership
    (float64), and its drop of each class (float64)."""
    return 8 * (7 * n_neurons + n_classes)


def check_draws(draws: int, n_neurons: int, n_classes: int) -> None:
    """Refuse --ablation_draws beyond what memory holds, before the held-out split's forward pass."""
    check_memory("ablation_draws", draws, draw_bytes(n_neurons, n_classes),
                 f"{draws} random sets of up to {n_neurons} neurons")


def discard(concepts_path: Path) -> None:
    """An ablation written beside a concepts.json before its layer was left untested: no reader shows it."""
    for name in OUTPUTS:
        (Path(concepts_path).parent / name).unlink(missing_ok=True)


def held_out(stage2: dict, given: dict, split: str, split_file: str, batch_size: int, num_workers: int,
             dev: torch.device) -> dict:
    """What ablation needs of the split step 4 evaluates on (val or test, held_out_split): the labels of the
    classes step 2 stored, the findings (classes with a name and a positive image), the logits and, where a
    linear map leads from the layer to the logits, the layer's activations and that map. Step 2's
    activations.pt of the split is reused when its key matches (stage2_pass); else one forward pass here.
    Step 2 keys it by its constants as given (0 and "" for the family's preprocessing) and stores them
    resolved, so the key is asked with the preprocessing this run was given (`given`: an experiment file's
    and the command line's values, Config.given)."""
    if stage2["labels"] == "none":
        raise NoLabels(f"the probing set under {stage2['data_root']} has no labels (--labels none), so no "
                       f"image is known to be positive for a finding; ablation needs labelled images: probe "
                       f"a labelled set (--labels FILE.csv or NIH split files)")
    c, probe = held_out_split(stage2, split, split_file)
    classes = stored_classes(stage2)
    labels = align_labels(probe, classes, "stored by step 2")
    if labels is None:
        raise NoLabels(f"the {probe.what} has no labels for the {split} split; pass --{split}_split_file with "
                       f"a labelled split, or --ablation_split with one that has labels")
    layer, ckpt = stage2["layer"], stage2["checkpoint"] or None
    key = activations_key(c, ckpt, probe.data_key)
    prep = ("resize", "crop", "channels", "mean", "std")
    as_given = {**c, **{k: given.get(k, constants_of(EXAMPLE_SELECTION)[k]) for k in prep}}
    keep = [j for j, name in enumerate(classes or []) if name and (labels[:, j] == 1).any()]
    missing = [classes[j] for j, name in enumerate(classes or []) if name and j not in keep]
    if missing:
        print(f"note: no image of the {split} split is positive for {', '.join(missing)}: not ablated")

    def loader():
        return probe_loader(probe.paths, stage2["resize"], stage2["crop"], batch_size, num_workers, dev,
                            **model_input_args(stage2))

    @functools.cache
    def tensors() -> dict:
        """The network, logits, activations and linear map: only when an ablation is not reused."""
        net = target_as_probed(stage2, True, len(classes or []))[0].to(dev)
        stored = stage2_pass(as_given, ckpt, probe.data_key, layer, probe.names)
        if stored is not None:
            print(f"reusing {stored['path']}")
            acts, logits = stored["activations"], stored["logits"]
        else:
            print(f"{split}: one pass over the {len(probe.names)} images of the {probe.what} (example_selection.py "
                  f"--split {split} --layer {layer} would keep its activations for the next run)")
            got, logits = record(net, loader(), [layer], len(probe.names), dev, stage2.get("token_pool", "mean"),
                                 stage2.get("precision", "fp32"), desc=f"{split} {layer}")
            acts = got[layer]
        return {"net": net, "acts": acts, "logits": logits.double(), "weight": linear_map(net, layer, acts, logits)}

    return {"split": split, "what": probe.what, "activations_key": key, "classes": classes, "findings": keep,
            "labels": labels, "layer": layer, "tensors": tensors, "loader": loader, "dev": dev,
            "config": {**c, "data_key": probe.data_key}, "image_ids": probe.names}


def ablate(concepts_path: Path, records: list[dict], data: dict, draws: int, seed: int) -> dict:
    """Each finding's ablation row for the neurons a concepts.json names, written beside it as
    ablation.json, ablation.csv and ablation.png (reused when its key matches)."""
    out = Path(concepts_path).parent
    names = file_digest(concepts_path)  # the names ablated: stored, for readers to check against the file beside
    key = ablation_key(names, data["activations_key"], data["split"], draws, seed, code())
    stored = cached(out / ABLATION, key, loader=load_json)
    if stored is not None:
        print(f"reusing {out / ABLATION}")
        return stored
    classes, findings, t = data["classes"], data["findings"], data["tensors"]()
    live = live_neurons(records)
    pos = positives(data["labels"])
    sd = t["logits"].std(0, correction=1)
    usable = [j for j in findings if sd[j] > 0]
    rows, bands = [], {}
    for f in findings:
        named = named_neurons(records, classes[f])
        row = {"finding": classes[f].lower(), "n_neurons": len(named), "neurons": named,
               "n_images": int(pos[:, f].sum())}
        if named and f in usable:
            sets = [named] + random_sets(live, len(named), draws, seed).tolist()
            if t["weight"] is not None:
                drops = linear_drops(t["acts"], t["weight"], pos, sets)
            else:
                drops = hook_drops(t["net"], data["layer"], data["loader"](), pos, sets, data["dev"])
            effects = drops / sd
            row.update(finding_stats(effects, f, [c for c in usable if c != f]))
            bands[row["finding"]] = effects[1:, f].tolist()
        else:
            row.update({k: None for k in FIELDS[2:]})
        rows.append({k: row[k] for k in FIELDS + ("neurons", "n_images")})
    result = {"key": key, "concepts": str(concepts_path), "concepts_digest": names, "layer": data["layer"],
              "split": data["split"], "images": data["what"], "method": "linear" if t["weight"] is not None else "hook",
              "draws": draws, "seed": seed, "findings": rows}
    if not any(r["n_neurons"] for r in rows):
        result["note"] = (f"no live neuron of the {data['layer']} layer is named for any of the "
                          f"{len(findings)} findings; nothing to ablate")
    # ablation.json, the one a reader takes, is removed first and written last: a write failing between
    # leaves no table beside a figure of other numbers
    may_write(out / ABLATION).unlink(missing_ok=True)
    save_csv(out / ABLATION_CSV, list(FIELDS) + ["n_images"],
             [[r[k] if not isinstance(r[k], float) else f"{r[k]:.6g}" for k in FIELDS + ("n_images",)] for r in rows])
    save_png(out / ABLATION_PNG, figure(result, bands))
    save_json(out / ABLATION, result)
    return result


def figure(result: dict, bands: dict) -> plt.Figure:
    """Per finding: the random sets' effects (grey dots, their mean +- 2 SD as a bar) and the named
    neurons' effect (red), in logit SDs, with z."""
    rows = result["findings"]
    fig, ax = plt.subplots(figsize=(8, 0.42 * len(rows) + 1.6), dpi=110)
    for i, r in enumerate(rows):
        if r["effect"] is None:
            ax.text(0, i, "no named neuron", va="center", fontsize=8, color="0.4")
            continue
        rand = np.asarray(bands[r["finding"]])
        ax.plot([r["random_mean"] - 2 * r["random_sd"], r["random_mean"] + 2 * r["random_sd"]], [i, i], color="0.75",
                lw=6, solid_capstyle="butt")
        ax.scatter(rand, np.full(len(rand), i), s=4, color="0.45", zorder=2)
        ax.scatter([r["effect"]], [i], s=36, color="tab:red", zorder=3)
        z = "n/a" if r["z"] is None else f"{r['z']:.1f}"
        ax.annotate(f"z {z} ({r['n_neurons']})", (r["effect"], i), xytext=(6, 0), textcoords="offset points",
                    va="center", fontsize=8)
    ax.axvline(0, color="0.6", lw=0.8)
    ax.set_yticks(range(len(rows)), [r["finding"] for r in rows])
    ax.invert_yaxis()
    ax.set_xlabel("mean drop of the finding's logit on its positive images (logit SDs)")
    ax.set_ylabel("finding")
    ax.set_title(f"{result['layer']}: named neurons (red, their number in brackets) against {result['draws']} random "
                 f"sets (grey; bar: mean ± 2 SD)", fontsize=9)
    fig.tight_layout()
    return fig
