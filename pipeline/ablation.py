"""Ablation of the neurons a describer names for a finding (docs/ablation.md): does zeroing them
lower the finding's logit more than zeroing as many neurons of the layer drawn at random?

The statistic, as plain functions of tensors (checked against a literal loop in tests/test_ablation.py):
  named_neurons   N_f: the live neurons whose concepts name the finding (mammi.describers.names_finding);
  random_sets     R sets of |N_f| live neurons, drawn with a fixed seed;
  linear_drops    the mean drop of each class's logit over its positive images when a set is zeroed,
                  for a layer that reaches the logits through a linear map (penultimate under a
                  linear head, W its weight; fc itself, W the identity): exactly sum_k A[x, k] W[c, k];
  hook_drops      the same for any layer, by forward passes with a hook that zeroes the channels;
  finding_stats   effect, random mean and SD, z and the drop of the other classes, in logit SDs.
Then what ablation.py and compare_describers.py share: the held-out split's images, labels, logits
and layer activations (`held_out`), one concepts.json ablated and written (`ablate`), and the layers
where the test says nothing (`untested`: fc, whose neurons are the logits themselves).
"""
from __future__ import annotations

import functools
from contextlib import contextmanager
from pathlib import Path

import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import torch
from torch import nn

from dataset.probe import align_labels, label_key, load_probe
from mammi.describers import names_finding
from models.layers import channel_axis, channels_last_modules, hook_layer
from models.target import head_name, preprocessing, target_as_probed
from core.digests import code_digest, file_digest
from pipeline.cache import cached, load_json, may_write, save_csv, save_json, save_png
from core.errors import PipelineError
from pipeline.cli import constants_of
from pipeline.forward import probe_loader, record
from pipeline.limits import check_memory
from pipeline.outputs import ablation_key, activations_key, layer_dir, stored_classes

FIELDS = ("finding", "n_neurons", "effect", "random_mean", "random_sd", "z", "other_classes")
OUTPUTS = ("ablation.json", "ablation.csv", "ablation.png")  # what ablate writes beside a concepts.json


class NoLabels(PipelineError):
    """The held-out split has no labels: no image is known to be positive for a finding."""


def code() -> str:
    """The code part of ablation.json's key, the same from ablation.py and compare_describers.py."""
    return code_digest("pipeline/ablation.py")


# ---- the statistic

def finding_words(finding: str) -> list[str]:
    """The words of a finding: its name lower-cased, split at spaces, '_' and '-' (as labels join
    classes): 'Pleural_Thickening' -> ['pleural', 'thickening']."""
    return label_key(finding).split()


def named_neurons(records: list[dict], finding: str) -> list[int]:
    """N_f: the live neurons (status other than dead) of a concepts.json whose concepts name the finding."""
    return [r["neuron"] for r in records
            if r.get("status") != "dead" and names_finding([c["concept"] for c in r["concepts"]], finding)]


def live_neurons(records: list[dict]) -> list[int]:
    return [r["neuron"] for r in records if r.get("status") != "dead"]


def random_sets(live: list[int], size: int, draws: int, seed: int) -> torch.Tensor:
    """[draws, size] neuron ids: each row a uniform random subset of `live` (without replacement), the
    first `size` of a seeded random order; the same seed gives the same orders for every finding."""
    g = torch.Generator().manual_seed(seed)
    order = torch.rand(draws, len(live), generator=g, dtype=torch.float64).argsort(dim=1)
    return torch.as_tensor(live, dtype=torch.long)[order[:, :size]]


def draw_bytes(n_neurons: int, n_classes: int) -> int:
    """Bytes one random set takes at the peak of a finding's ablation, for a layer of n_neurons: random_sets'
    keys and order (float64, int64) or the set as a list of Python ints, its row of linear_drops' membership
    (float64), and its drop of each class (float64)."""
    return 8 * (7 * n_neurons + n_classes)


def check_draws(draws: int, n_neurons: int, n_classes: int) -> None:
    """Refuse --ablation_draws beyond what memory holds, before the held-out split's forward pass."""
    check_memory("ablation_draws", draws, draw_bytes(n_neurons, n_classes),
                 f"{draws} random sets of up to {n_neurons} neurons")


def positives(labels: np.ndarray) -> torch.Tensor:
    """[N, C] float64: 1 where the image is labelled positive for the class (0 and MISSING: 0)."""
    return torch.as_tensor(np.asarray(labels) == 1, dtype=torch.float64)


def linear_drops(acts: torch.Tensor, weight: torch.Tensor, pos: torch.Tensor, sets: list[list[int]]) -> torch.Tensor:
    """[S, C]: for each set s and class c, the mean over the images x positive for c of
    sum_{k in s} acts[x, k] * weight[c, k], the drop of logit c when the layer's channels s are zeroed
    and the logits are weight @ acts + bias. NaN for a class without positives."""
    mean_act = (pos.T @ acts.double()) / pos.sum(0)[:, None]  # [C, K]: mean activation over c's positives
    member = torch.zeros(len(sets), acts.shape[1], dtype=torch.float64)
    for i, s in enumerate(sets):
        member[i, list(s)] = 1.0
    return member @ (weight.double() * mean_act).T


@contextmanager
def zeroing(net: nn.Module, layer: str):
    """A forward hook on the layer (fc: the outputs; penultimate: the head's input; else a module's
    output) that zeroes the channels in the returned list; empty: the network as it is. A module that runs
    several times in a pass is zeroed at its last call only, the one a probe reads, as counted by a pass
    before (hook_drops' first pass is the network as it is)."""
    channels: list[int] = []
    last = layer not in ("fc", "penultimate") and layer in channels_last_modules(net)

    def zero(t):
        if not channels:
            return t
        idx = torch.as_tensor(channels, dtype=torch.long, device=t.device)
        return t.index_fill(channel_axis(t, last), idx, 0)

    def on_output(out):
        if isinstance(out, (tuple, list)):  # attention blocks return (output, weights): the first tensor
            i = next(j for j, o in enumerate(out) if isinstance(o, torch.Tensor))
            return type(out)([zero(o) if j == i else o for j, o in enumerate(out)])
        return zero(out)

    hook = hook_layer(net, layer, on_output, only_last=True)
    try:
        yield channels
    finally:
        hook.remove()


def hook_drops(net: nn.Module, layer: str, batches, pos: torch.Tensor, sets: list[list[int]],
               dev: torch.device) -> torch.Tensor:
    """[S, C] as linear_drops, for any layer: per batch of images (in the order of pos's rows) one pass
    as the network is and one per set with its channels zeroed; the drop is the difference of logits."""
    total = torch.zeros(len(sets), pos.shape[1], dtype=torch.float64)
    at = 0
    with torch.no_grad(), zeroing(net, layer) as channels:
        for x in batches:
            x = x.to(dev)
            p = pos[at:at + len(x)]
            channels.clear()
            base = net(x).double().cpu()
            for i, s in enumerate(sets):
                channels[:] = list(s)
                total[i] += ((base - net(x).double().cpu()) * p).sum(0)
            at += len(x)
    return total / pos.sum(0)


def finding_stats(effects: torch.Tensor, f: int, others: list[int]) -> dict:
    """From effects [1 + R, C] (row 0: the named set N_f, then the R random sets; each a mean drop in
    units of the class's logit SD): the effect on class f, the random sets' mean and SD (n - 1) on it,
    z = (effect - mean) / SD (None when the SD is 0), and the named set's mean effect over `others`."""
    effect, rand = float(effects[0, f]), effects[1:, f]
    mean, sd = float(rand.mean()), float(rand.std(correction=1))
    z = (effect - mean) / sd if sd > 0 else None
    other = float(effects[0, others].mean()) if others else None
    return {"effect": effect, "random_mean": mean, "random_sd": sd, "z": z, "other_classes": other}


def untested(layer: str) -> str | None:
    """Why ablation tests nothing at this layer, or None where it does. At fc each neuron is a class's
    logit: zeroing the neurons named for a finding and reading the finding's logit only asks whether the
    finding's own neuron is among them (z near sqrt(K - 1) if so, near 0 if not), which the hit rate says."""
    if layer == "fc":
        return ("at the fc layer each neuron is a class's logit, so zeroing the neurons named for a finding and "
                "reading that finding's logit only asks whether its own neuron is among them (the hit rate says "
                "that); the penultimate layer is where ablation tests the names")
    return None


def discard(concepts_path: Path) -> None:
    """An ablation written beside a concepts.json before its layer was left untested: no reader shows it."""
    for name in OUTPUTS:
        (Path(concepts_path).parent / name).unlink(missing_ok=True)


# ---- the held-out split and one concepts.json

def held_out(stage2: dict, given: dict, split: str, split_file: str, batch_size: int, num_workers: int,
             dev: torch.device) -> dict:
    """What ablation needs of the split step 4 evaluates on (val or test): the labels of the classes
    step 2 stored, the findings (classes with a name and a positive image), the logits and, where a
    linear map leads from the layer to the logits, the layer's activations and that map. Step 2's
    activations.pt of the split is reused when its key matches; else one forward pass here. Step 2 keys
    it by its constants as given (0 and "" for the family's preprocessing) and stores them resolved, so
    the key is asked with the preprocessing this run was given (`given`: an experiment file's and the
    command line's values, Config.given), where it resolves as step 2's."""
    if stage2["labels"] == "none":
        raise NoLabels(f"the probing set under {stage2['data_root']} has no labels (--labels none), so no "
                       f"image is known to be positive for a finding; ablation needs labelled images: probe "
                       f"a labelled set (--labels FILE.csv or NIH split files)")
    if stage2["labels"]:  # a CSV probing set: the split's own CSV, or the probing CSV itself
        c = {**stage2, "labels": split_file or stage2["labels"]}
        if not split_file:
            print(f"note: no --{split}_split_file, so the probing CSV {stage2['labels']} serves: it is not held out")
    else:
        c = {**stage2, "split": split, "split_file": split_file}
    probe = load_probe(c)
    classes = stored_classes(stage2)
    labels = align_labels(probe, classes, "stored by step 2")
    if labels is None:
        raise NoLabels(f"the {probe.what} has no labels for the {split} split; pass --{split}_split_file with "
                       f"a labelled split, or --ablation_split with one that has labels")
    layer, ckpt = stage2["layer"], stage2["checkpoint"] or None
    path, key = layer_dir(c) / "activations.pt", activations_key(c, ckpt, probe.data_key)
    prep = ("resize", "crop", "channels", "mean", "std")
    as_given = {**c, **{k: given.get(k, constants_of("example_selection.py")[k]) for k in prep}}
    try:
        step2_key = activations_key(as_given, ckpt, probe.data_key) \
            if preprocessing(as_given) == {k: stage2[k] for k in prep} else None
    except PipelineError:  # this run's preprocessing constants do not even resolve: not step 2's
        step2_key = None
    keep = [j for j, name in enumerate(classes or []) if name and (labels[:, j] == 1).any()]
    missing = [classes[j] for j, name in enumerate(classes or []) if name and j not in keep]
    if missing:
        print(f"note: no image of the {split} split is positive for {', '.join(missing)}: not ablated")

    @functools.cache
    def tensors() -> dict:
        """The network, logits, activations and linear map: only when an ablation is not reused."""
        net = target_as_probed(stage2, True, len(classes or []))[0].to(dev)
        stored = cached(path, step2_key) if step2_key else None
        if stored is not None and stored.get("logits") is not None and stored["image_ids"] == probe.names:
            print(f"reusing {path}")
            acts, logits = stored["activations"], stored["logits"]
        else:
            print(f"{split}: one pass over the {len(probe.names)} images of the {probe.what} (example_selection.py "
                  f"--split {split} --layer {layer} would keep its activations for the next run)")
            got, logits = record(net, probe_loader(probe.paths, stage2, batch_size, num_workers, dev), [layer],
                                 len(probe.names), dev, stage2.get("token_pool", "mean"),
                                 stage2.get("precision", "fp32"), desc=f"{split} {layer}")
            acts = got[layer]
        return {"net": net, "acts": acts, "logits": logits.double(), "weight": linear_map(net, layer, acts, logits)}

    return {"split": split, "what": probe.what, "activations_key": key, "paths": probe.paths, "classes": classes,
            "findings": keep, "labels": labels, "layer": layer, "stage2": stage2, "tensors": tensors,
            "batch_size": batch_size, "num_workers": num_workers, "dev": dev}


def linear_map(net: nn.Module, layer: str, acts: torch.Tensor, logits: torch.Tensor) -> torch.Tensor | None:
    """W [C, K] with logits = acts @ W.T + b on every image of the split, where the layer reaches the
    logits linearly: fc (W = I) or the input of an nn.Linear head; checked on the logits themselves
    (a model may scale or combine its head's output). None: ablate by hooks."""
    if layer == "fc":
        return torch.eye(logits.shape[1], dtype=torch.float64)
    if layer != "penultimate":
        return None
    head = net.get_submodule(head_name(net))
    if not isinstance(head, nn.Linear) or acts.shape[1] != head.in_features:
        return None
    w = head.weight.detach().double().cpu()
    b = head.bias.detach().double().cpu() if head.bias is not None else 0.0
    gap = (acts.double() @ w.T + b - logits.double()).abs().max()
    return w if gap <= 1e-4 * (1 + logits.abs().max()) else None


def ablate(concepts_path: Path, records: list[dict], data: dict, draws: int, seed: int) -> dict:
    """Each finding's ablation row for the neurons a concepts.json names, written beside it as
    ablation.json, ablation.csv and ablation.png (reused when its key matches)."""
    out = Path(concepts_path).parent
    names = file_digest(concepts_path)  # the names ablated: stored, for readers to check against the file beside
    key = ablation_key(names, data["activations_key"], data["split"], draws, seed, code())
    stored = cached(out / "ablation.json", key, loader=load_json)
    if stored is not None:
        print(f"reusing {out / 'ablation.json'}")
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
                loader = probe_loader(data["paths"], data["stage2"], data["batch_size"], data["num_workers"], data["dev"])
                drops = hook_drops(t["net"], data["layer"], loader, pos, sets, data["dev"])
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
    may_write(out / "ablation.json").unlink(missing_ok=True)
    save_csv(out / "ablation.csv", list(FIELDS) + ["n_images"],
             [[r[k] if not isinstance(r[k], float) else f"{r[k]:.6g}" for k in FIELDS + ("n_images",)] for r in rows])
    save_png(out / "ablation.png", figure(result, bands))
    save_json(out / "ablation.json", result)
    return result


def median_z(result: dict) -> dict:
    """A describer's faithfulness: the median z over the findings with named neurons, and how many."""
    z = [r["z"] for r in result["findings"] if r["z"] is not None]
    return {"median_z": float(np.median(z)) if z else None, "findings": len(z), "of": len(result["findings"])}


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
