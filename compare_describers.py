"""MAMMI against the other ways to name a neuron, on the same inputs, in one table (README, "MAMMI
against other describers").

    python compare_describers.py config/nih_densenet121.py --layer fc
    python compare_describers.py config/demo.py --layer penultimate --describers clip_dissect,label_auc

Reads a stage-3 run (its concepts.json, given or derived from the constants of steps 2-3) and, from
what it stored, the layer's activations.pt, the VLM, concept set and prompts. The rivals
(describers.py) score every neuron against every concept from those same inputs:
  clip_dissect  CLIP-Dissect's soft-WPMI over the VLM features of the whole probing set;
  topk_mean     the mean cosine of a neuron's top images with each concept prompt;
  label_auc     the class whose labels its activation separates best (AUROC; needs labels);
  dissection    Network Dissection's IoU of its thresholded maps with each finding's boxes (needs boxes).
The probing set's image features come from step 3's image_features.pt, grown by the images it lacks,
and the prompts from its text cache: nothing is embedded twice and no describer but dissection runs
the target again (its maps are not in step 2's cache: pipeline/dissection.py says why and how).
Each writes describers/{name}/concepts.json in MAMMI's format (its best concept, plus its top_n under
"top") and scores.pt (its score of every neuron and concept; not named similarity.pt, whose alpha cut
readers would look for) beside the run.

The table: fc hit rate, precision, F1 and cosine (fc layer), and on any layer the agreement with what
the probing set says each neuron is (`truth`), each with its standard error; pairwise agreement of
the describers; and the sensitivity of MAMMI's fc hit rate (fc) or agreement (other layers) to its two
constants, from the cached tensors; and each describer's faithfulness, the median over the findings of
the ablation z of the neurons it names (ablation.py, on the held-out split). Writes
describers/describers.json, describers.csv, agreement.csv, describers.png, sensitivity.json,
sensitivity.png, and ablation.json, .csv, .png beside each describer's concepts.json.
"""
import csv
import functools
import io
import math
import shutil
import time
from pathlib import Path

import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import torch

from core.digests import code_digest, digest, file_digest
from dataset.boxes import load_boxes
from dataset.concepts import read_concepts
from dataset.nih import model_input_args, resolve_images
from dataset.probe import MISSING, align_labels, label_key, load_probe
from describers import (NAMES, label_auc, lift_findings, name_neurons, pm, same_name, soft_wpmi, top_images,
                        topk_mean, truth_agreement)
from method import fc_metrics, image_concept_scores, mammi, name_neuron
from models import pick_device
from models.target import load_target
from models.vlm import load_vlm
from pipeline.ablation import NoLabels, ablate, held_out, median_z
from pipeline.cache import cached, save_bytes, save_json, save_png, save_tensors
from pipeline.cli import PipelineError, check_stored, configure, main, print_config
from pipeline.dissection import collect_maps, dissect, layer_maps, map_source
from pipeline.features import image_features, text_features
from pipeline.outputs import (describer_key, describers_dir, find_matching, maps_key, maps_path, class_neurons,
                              read_activations, read_similarity, stored_classes, upstream_constants)
from pipeline.text_metrics import cosine_metrics

# -----------------------------------------------------------------------------
# The run to compare is named by the constants of steps 2-3 (or given); what produced it is taken
# from its concepts.json. The box file is bbox_img.py's box_source and box_file.
mammi_run = ""                  # MAMMI's concepts.json; default: the one steps 2-3 wrote for these constants
describers = "clip_dissect,topk_mean,label_auc,dissection"  # the rivals to run beside MAMMI
top_k: ">= 1" = 100             # images per neuron for clip_dissect (CLIP-Dissect's default) and topk_mean
wpmi_a: "> 0" = 10.0            # CLIP-Dissect: P = softmax(a * cos) over the concepts of each image
wpmi_lambda: ">= 0" = 1.0       # CLIP-Dissect: score = log P(c|k) - lambda * log P(c)
wpmi_p_start: "(0, 1]" = 0.998  # CLIP-Dissect: weight of a neuron's top image ...
wpmi_p_end: "(0, 1]" = 0.97     # ... falling linearly towards this one over its top_k images
dissection_quantile: "(0, 1)" = 0.995  # Network Dissection: T_k, the top 0.5% of a neuron's spatial activations
top_n: ">= 1" = 5               # concepts listed per neuron under "top" in a rival's concepts.json
truth: "lift | label_auc" = "label_auc"  # what the probing set says a neuron is: lift | label_auc (see README)
truth_images: ">= 1" = 20       # truth lift: the top images per neuron whose findings are counted
lift_min: "> 0" = 2.0           # truth lift: a neuron has a finding only at this lift over the base rate or above
sensitivity_percents: "numbers in (0, 100)" = "80,85,90,93,95,97"  # MAMMI's adaptive_percent values to try from the cache ('' = no study)
sensitivity_alphas: "numbers in [0, 100)" = "90,93,95,97,99"  # MAMMI's alpha values to try
batch_size: ">= 1" = 64
num_workers: ">= 0" = 2
device: "auto | cpu | cuda | cuda:N | mps" = "auto"  # auto = CUDA when present
# -----------------------------------------------------------------------------
config = configure(globals(), reads=("example_selection.py", "concept_matching.py", "bbox_img.py", "ablation.py", "target_model_perform.py"))
CODE = code_digest("compare_describers.py")
# What decided the run: refused when given here with another value than the one stored with it.
UPSTREAM = upstream_constants()
# The constants of each rival's formula: its key and its concepts.json record them.
CONSTANTS = {"clip_dissect": ("top_k", "wpmi_a", "wpmi_lambda", "wpmi_p_start", "wpmi_p_end"),
             "topk_mean": ("top_k",), "label_auc": (), "dissection": ("dissection_quantile", "box_source")}
# The constants that decide only the comparison, which every run rewrites (describers.json, its tables and
# figures, sensitivity.*, the "top" lists of a rival's concepts.json), or which run and rivals to compare:
# no cached output depends on them.
COMPARISON_ONLY = ("mammi_run", "describers", "top_n", "truth", "truth_images", "lift_min", "sensitivity_percents",
                   "sensitivity_alphas")
USES_VLM = ("clip_dissect", "topk_mean")  # the others name neurons with findings, not with the concept set
VLM_FIELDS = ("model_clip", "clip_weights", "concept_set", "concept_set_file", "n_concepts", "template_ver", "template")


def run():
    wanted = [d.strip() for d in describers.split(",") if d.strip()]
    unknown = [d for d in wanted if d not in NAMES[1:]]
    if unknown:
        raise PipelineError(f"--describers: unknown {', '.join(unknown)}; choose among {', '.join(NAMES[1:])}")
    percents, alphas = numbers("sensitivity_percents"), numbers("sensitivity_alphas")
    path, run_json, ex_json, ex = read_run()
    print_config("compare_describers", config)
    t0 = time.time()
    stage2, layer = ex["config"], ex["config"]["layer"]
    act = read_activations(ex_json, ex)
    acts, ids = act["activations"], act["image_ids"]
    if [n["neuron"] for n in run_json["neurons"]] != list(range(acts.shape[1])):
        raise PipelineError(f"{path} does not name the {acts.shape[1]} neurons of {ex_json.parent.parent} in order; "
                            f"re-run concept_matching.py")
    classes = stored_classes(stage2)  # fc neuron k is class k
    labels, findings = probe_labels(stage2, ids, classes)
    dead = (acts.max(0).values == acts.min(0).values).tolist()
    out = describers_dir(path)
    dev = pick_device(device)
    inputs = {"activations": ex["activations_key"], "data": stage2["data_key"]}

    # What the VLM rivals and the sensitivity study share: every probing image's features (step 3's cache,
    # grown by the images it lacks) and the concept prompts (its text cache).
    feats = None
    if set(wanted) & set(USES_VLM) or (percents and alphas):
        t = time.time()
        concept_path, concepts = read_concepts(config["concept_set"])
        vlm = functools.cache(lambda: load_vlm(config["model_clip"], config["clip_weights"], dev))
        img, img_key, new = image_features(config, stage2, ids, vlm, batch_size, num_workers)
        text = text_features(config, concept_path, concepts, vlm)
        sim = path.parent / "similarity.pt"
        if sim.is_file() and read_similarity(sim, run_json)["concepts"] != concepts:
            raise PipelineError(f"the concept set {concept_path} changed since {path} was written; re-run "
                                f"concept_matching.py with it, then this step")
        feats = {"images": img, "text": text, "concepts": concepts,
                 "cos": image_concept_scores(img, text["features"], None)}  # [N, C]: cos(image, concept prompt)
        inputs.update(images=img_key, text=text["key"])
        print(f"features of the {len(ids)} probing images ({new} embedded now) and {len(concepts)} prompts "
              f"in {time.time() - t:.1f}s")

    records, scores, skipped = {"mammi": run_json["neurons"]}, {}, {}
    for name in wanted:
        t = time.time()
        consts = {k: config[k] for k in CONSTANTS[name]}
        got = rival(name, consts, {k: v for k, v in inputs.items() if name in USES_VLM or k in ("activations", "data")},
                    out / name, acts, ids, labels, findings, feats, stage2, dev)
        if isinstance(got, str):  # it does not apply to this probing set: say why, leave nothing stale
            print(f"note: {name} skipped: {got}")
            skipped[name] = got
            shutil.rmtree(out / name, ignore_errors=True)
            continue
        S, names, used, key = got
        scores[name] = S
        records[name] = name_neurons(S.double(), names, dead, used, top_n, floor=0.0 if name == "dissection" else None)
        save_json(out / name / "concepts.json", {"key": key, "config": describer_config(run_json, path, name, consts),
                                                 "neurons": records[name]})
        counts = {st: sum(n["status"] == st for n in records[name]) for st in ("ok", "none", "dead")}
        print(f"{name}: {counts['ok']} neurons named, {counts['none']} none, {counts['dead']} dead, "
              f"in {time.time() - t:.1f}s")

    truth_of = neuron_truth(acts, labels, findings, dead, scores.get("label_auc"))
    scored = class_neurons(classes, acts.shape[1]) if layer == "fc" else []
    table = compare(path, layer, records, truth_of, skipped, scored)
    faithfulness(table, path, records, stage2, dev)
    if percents and alphas:
        t = time.time()
        table["sensitivity"] = sensitivity(run_json, acts, feats, truth_of, percents, alphas, out, scored)
        print(f"sensitivity of MAMMI to adaptive_percent x alpha ({len(percents)} x {len(alphas)}) in "
              f"{time.time() - t:.1f}s")
    save_json(out / "describers.json", table)
    write_tables(table, out)
    save_png(out / "describers.png", figure(table))
    print_table(table)
    print(f"compared {len(records)} describers in {time.time() - t0:.1f}s")
    print("outputs:")
    for p in [out / n / "concepts.json" for n in records if n != "mammi"] + \
             [out / f for f in ("describers.json", "describers.csv", "agreement.csv", "describers.png")] + \
             ([out / "sensitivity.png"] if "sensitivity" in table else []):
        print(f"  {p}")


def rival(name, consts, inputs, where, acts, ids, labels, findings, feats, stage2, dev):
    """One rival's scores [K, C] with its concept names, the number of images it used per neuron and
    its key; from where/scores.pt when the key matches. Or why it cannot run here."""
    if name == "dissection":
        boxes, box_path = load_boxes(config["box_source"], config["box_file"])
        inputs = {**inputs, "boxes": file_digest(box_path)}
    key = describer_key(inputs, consts, CODE)
    stored = cached(where / "scores.pt", key)
    if stored is not None:
        print(f"reusing {where / 'scores.pt'}")
        return stored["scores"], stored["concepts"], stored["n_used"], key
    if name == "clip_dissect":
        S = soft_wpmi(feats["cos"], acts, top_k, wpmi_a, wpmi_lambda, wpmi_p_start, wpmi_p_end)
        names, used = feats["concepts"], min(top_k, len(ids))
    elif name == "topk_mean":
        S, names, used = topk_mean(feats["cos"], acts, top_k), feats["concepts"], min(top_k, len(ids))
    elif name == "label_auc":
        if labels is None:
            return "the probing set has no labels (--labels none): nothing to take the AUROC against"
        S, names, used = known_label_auc(acts, labels), findings, len(ids)
    else:
        got = dissection(stage2, ids, labels, boxes, box_path, acts, findings, dev)
        if isinstance(got, str):
            return got
        S, names, used = got
    save_tensors(where / "scores.pt", {"key": key, "scores": S.float(), "concepts": names, "n_used": used,
                                           "neurons": list(range(S.shape[0]))})
    return S, names, used, key


def faithfulness(table: dict, path: Path, records: dict, stage2: dict, dev) -> None:
    """Each describer's median ablation z over the findings (pipeline/ablation.py) into its row, the
    ablation keys into the table's; skipped, with the reason, where the held-out split has no labels."""
    try:
        data = held_out(stage2, config.given, config["ablation_split"], config[f"{config['ablation_split']}_split_file"],
                        batch_size, num_workers, dev)
    except NoLabels as e:
        print(f"note: faithfulness skipped: {e}")
        table["faithfulness_skipped"] = str(e)
        return
    keys = {}
    for name, recs in records.items():
        concepts = path if name == "mammi" else describers_dir(path) / name / "concepts.json"
        result = ablate(concepts, recs, data, config["ablation_draws"], config["ablation_seed"])
        table["rows"][name]["faithfulness"], keys[name] = median_z(result), result["key"]
    table["key"] = digest({"describers": table["key"], "ablation": keys})


def numbers(name: str) -> list[float]:
    try:
        return [float(v) for v in config[name].split(",") if v.strip()]
    except ValueError:
        raise PipelineError(f"--{name} takes comma-separated numbers, got {config[name]!r}") from None


def read_run() -> tuple[Path, dict, Path, dict]:
    """MAMMI's concepts.json and its examples (read_matching), and the constants that produced them
    taken into config."""
    path, data, ex_json, ex = find_matching(mammi_run, config, "mammi_run")
    cfg = data["config"]
    if cfg.get("describer"):
        raise PipelineError(f"{path} was written by the {cfg['describer']} describer; pass MAMMI's concepts.json "
                            f"(concept_matching.py's) as --mammi_run")
    check_stored(config, cfg, UPSTREAM, path)
    config.update({k: cfg[k] for k in UPSTREAM if k in cfg})
    return path, data, ex_json, ex


def probe_labels(stage2: dict, ids: list[str], classes: list[str] | None) -> tuple[np.ndarray | None, list[str]]:
    """The probing images' labels [N, F] (1, 0 or MISSING) in step 2's order, re-read from the probing set
    step 2 read and joined to the classes it stored, and the F findings they name (the lower-cased
    classes that have a name and some ground truth). None and [] when the set has no labels."""
    probe = load_probe(stage2)
    if probe.data_key != stage2["data_key"]:
        raise PipelineError(f"the images or labels under {stage2['data_root']} changed since step 2 read them; re-run "
                            f"example_selection.py and concept_matching.py (same experiment file), then this step")
    labels = align_labels(probe, classes, "stored by step 2")
    if labels is None:
        return None, []
    row = {n: i for i, n in enumerate(probe.names)}
    labels = labels[[row[i] for i in ids]]
    keep = [j for j, c in enumerate(classes) if c and (labels[:, j] != MISSING).any()]
    return labels[:, keep], [classes[j].lower() for j in keep]


def known_label_auc(acts: torch.Tensor, labels: np.ndarray) -> torch.Tensor:
    """label_auc [K, F], each class over the images that have ground truth for it (--uncertain ignore
    leaves some MISSING)."""
    known = labels != MISSING
    full = known.all(0)
    auc = torch.full((acts.shape[1], labels.shape[1]), math.nan, dtype=torch.float64)
    if full.any():
        auc[:, torch.from_numpy(full)] = label_auc(acts, labels[:, full])
    for j in np.flatnonzero(~full):
        has = torch.from_numpy(known[:, j])
        auc[:, j] = label_auc(acts[has], labels[known[:, j]][:, [j]])[:, 0]
    return auc


def dissection(stage2, ids, labels, boxes, box_path, acts, findings, dev):
    """Network Dissection over the probing images whose masks are known: IoU [K, C], its findings and
    the number of images; or why it cannot run."""
    def anns_of(name):
        return boxes.get(name, boxes.get(Path(name).name))
    # An image without boxes has empty masks only when its labels say it has none of the findings.
    rows = [r for r, i in enumerate(ids) if anns_of(i) is not None or (labels is not None and (labels[r] == 0).all())]
    if not any(anns_of(ids[r]) for r in rows):
        return (f"no image of the probing set has a box in {box_path}; dissection needs a probing set with "
                f"boxes or masks (NIH: its bbox.csv images, ChestX-Det: its json)")
    prep = model_input_args(stage2)
    # A box joins the finding of its name as labels join classes (case, spaces, '_' and '-' aside).
    finding_of = {label_key(f): f for f in findings}
    anns = [[{**a, "label": finding_of.get(label_key(a["label"]), a["label"].lower())} for a in anns_of(ids[r]) or []]
            for r in rows]
    names, layer = findings + sorted({a["label"] for x in anns for a in x} - set(findings)), stage2["layer"]
    net = load_target(stage2["model"], stage2["checkpoint"], layer == "fc", stage2.get("num_classes", 0),
                      prep["channels"], len(stored_classes(stage2) or []))[0].to(dev).eval()
    try:
        module = map_source(net, layer)
    except PipelineError as e:  # no block whose maps it could read: this rival does not apply to the model
        return str(e)
    # The maps of the last block serve fc and penultimate alike: one pass per model and probing set.
    path, key = maps_path(stage2, module), maps_key(stage2, module, [ids[r] for r in rows])
    stored = cached(path, key)
    if stored is None:
        _, paths = resolve_images(stage2["data_root"], [ids[r] for r in rows])
        raw, sizes = collect_maps(net, module, paths, stage2["resize"], stage2["crop"], batch_size, num_workers, dev,
                                   **prep)
        save_tensors(path, {"key": key, "maps": raw, "sizes": sizes, "image_ids": [ids[r] for r in rows]})
    else:
        print(f"reusing {path}")
        raw, sizes = stored["maps"], stored["sizes"]
    maps = layer_maps(net.cpu(), layer, raw)
    gap = float((maps.mean((2, 3)) - acts[rows]).abs().max())
    if gap > 1e-3 * float(acts.abs().max()) + 1e-5:
        raise PipelineError(f"the {layer} maps do not average to the activations of step 2 (gap {gap:.3g}): "
                            f"{stage2['checkpoint']} changed since; re-run example_selection.py")
    got = dissect(maps, sizes, anns, names, stage2["resize"], stage2["crop"], dissection_quantile, batch_size)
    n_boxed = sum(bool(anns_of(ids[r])) for r in rows)
    print(f"dissection: {len(rows)} images ({n_boxed} with boxes, the rest without findings), maps "
          f"{maps.shape[2]}x{maps.shape[3]} upsampled to {stage2['crop']}x{stage2['crop']}")
    return got["iou"], names, len(rows)


def describer_config(run_json: dict, path: Path, name: str, consts: dict) -> dict:
    """The run's config less what the rival does not use (left out, not changed: a reader that checks
    an experiment file against it finds no contradiction), with its name, vocabulary and constants."""
    drop = ("alpha", "adaptive") + (() if name in USES_VLM else VLM_FIELDS)
    cfg = {k: v for k, v in run_json["config"].items() if k not in drop}
    vocabulary = "concept_set" if name in USES_VLM else "findings"
    return {**cfg, **consts, "describer": name, "vocabulary": vocabulary, "mammi_run": str(path)}


def neuron_truth(acts, labels, findings, dead, auc) -> dict:
    """What the probing set says each neuron is (`truth`), a finding name or None (all None without labels)."""
    if labels is None:
        idx, rule = [None] * acts.shape[1], "none: the probing set has no labels"
    elif truth == "lift":
        idx = lift_findings(labels, top_images(acts, truth_images).T.tolist(), lift_min, MISSING)
        rule = f"the finding of highest lift (>= {lift_min:g}) among the neuron's top {truth_images} images"
    else:
        auc = known_label_auc(acts, labels) if auc is None else auc
        best = torch.where(torch.isnan(auc), -math.inf, auc).argmax(1).tolist()
        idx = [None if torch.isnan(auc[k]).all() else best[k] for k in range(len(best))]
        rule = "the class whose labels the neuron's activation separates best (highest AUROC)"
    names = [None if dead[k] or i is None else findings[i] for k, i in enumerate(idx)]
    return {"kind": truth, "rule": rule, "neurons": names, "n": sum(n is not None for n in names)}


def words(records: list[dict]) -> list[list[str]]:
    return [[c["concept"] for c in n["concepts"]] for n in records]


def compare(path: Path, layer: str, records: dict, truth_of: dict, skipped: dict, scored: list) -> dict:
    """Per describer: how many neurons it names, the fc metrics (the fc neurons of named classes: scored)
    and the agreement with the truth, each mean +- std/sqrt(n); and the pairwise agreement of their first
    concepts."""
    classes = [c for _, c in scored]
    rows = {}
    for name, recs in records.items():
        w = words(recs)
        row = {"neurons": len(recs), "named": sum(n.get("status") == "ok" for n in recs),
               "truth": truth_agreement(w, truth_of["neurons"])}
        if scored:
            row["fc"] = {**fc_metrics([w[j] for j, _ in scored], classes),
                         "cosine": cosine_metrics([recs[j] for j, _ in scored], classes, config["metric_encoders"],
                                                  config["medclip_weights"])}
        rows[name] = row
    pairwise = {a: {b: same_name(words(records[a]), words(records[b])) for b in records} for a in records}
    rivals = {n: file_digest(describers_dir(path) / n / "concepts.json") for n in records if n != "mammi"}
    return {"key": digest({"run": file_digest(path), "rivals": rivals, "truth": truth_of,
                           "encoders": config["metric_encoders"], "code": CODE}),
            "run": str(path), "layer": layer, "truth": truth_of, "rows": rows, "pairwise": pairwise,
            "skipped": skipped, "config": dict(config)}


def sensitivity(run_json, acts, feats, truth_of, percents, alphas, out, scored) -> dict:
    """MAMMI re-run from the cache over adaptive_percent x alpha (its template and adaptive score as the
    run): the fc hit rate and F1 (fc layer), the agreement with the truth and the mean number of concepts
    per neuron, on a grid. The figure: the headline metric, and beside it what a lower alpha pays for it."""
    cfg = run_json["config"]
    template = feats["text"]["template"] if cfg["adaptive"] else None
    concepts, is_fc = feats["concepts"], bool(scored)
    grids = {k: np.full((len(percents), len(alphas)), np.nan) for k in ("hit_rate", "f1", "truth_any", "n_concepts")}
    for i, p in enumerate(percents):
        got = mammi(acts, feats["images"], feats["text"]["features"], template, concepts, alphas[0], percent=p)
        for j, a in enumerate(alphas):  # the examples and S of p serve every alpha
            named = got["neurons"] if j == 0 else [name_neuron(n, S_k, concepts, a)
                                                   for n, S_k in zip(got["examples"], got["S"])]
            w = words(named)
            grids["truth_any"][i, j] = truth_agreement(w, truth_of["neurons"])["any"]["mean"]
            grids["n_concepts"][i, j] = np.mean([len(x) for x in w])
            if is_fc:
                m = fc_metrics([w[k] for k, _ in scored], [c for _, c in scored])
                grids["hit_rate"][i, j], grids["f1"][i, j] = m["hit_rate"]["mean"], m["f1"]["mean"]
    own = (cfg["adaptive_percent"], cfg["alpha"]) if cfg["selection"] == "adaptive" else None
    panels = ([("fc hit rate", "hit_rate"), ("fc F1 (precision pays for extra concepts)", "f1")] if is_fc else
              [(f"agreement with the truth ({truth_of['kind']})", "truth_any"), ("concepts per neuron", "n_concepts")])
    fig, axes = plt.subplots(1, 2, figsize=(2 * (1.1 * len(alphas) + 2.2), 0.6 * len(percents) + 1.8), dpi=110)
    for ax, (title, k) in zip(axes, panels):
        grid = grids[k]
        top = max(1.0, float(np.nanmax(grid)))
        im = ax.imshow(grid, cmap="viridis", vmin=0, vmax=top, aspect="auto")
        for (r, c), v in np.ndenumerate(grid):
            label = f"{round(v * len(scored))}/{len(scored)}" if k == "hit_rate" else f"{v:.3f}"
            ax.text(c, r, label, ha="center", va="center", color="white" if v < 0.6 * top else "black", fontsize=9,
                    fontweight="bold" if (percents[r], alphas[c]) == own else None)
        ax.set_xticks(range(len(alphas)), [f"{a:g}" for a in alphas])
        ax.set_yticks(range(len(percents)), [f"{p:g}" for p in percents])
        ax.set_xlabel("alpha (concepts above alpha% of the best score)")
        ax.set_ylabel("adaptive_percent p")
        ax.set_title(title, fontsize=10)
        fig.colorbar(im, ax=ax, fraction=0.05)
    fig.suptitle(f"MAMMI's two constants, {cfg['layer']} layer, from the cached tensors " +
                 (f"(bold: the run's p = {own[0]:g}, alpha = {own[1]:g})" if own else "(the run selected its top k)"),
                 fontsize=10)
    fig.tight_layout()
    save_png(out / "sensitivity.png", fig)
    return {"percents": percents, "alphas": alphas, "metric": panels[0][0],
            **{k: (g.tolist() if is_fc or k not in ("hit_rate", "f1") else None) for k, g in grids.items()},
            "figure": str(out / "sensitivity.png")}


def write_tables(table: dict, out: Path) -> None:
    """describers.csv (one row per describer) and agreement.csv (the pairwise matrix)."""
    header = ["describer", "layer", "neurons", "named", "truth", "truth_n", "truth_any", "truth_any_se",
              "truth_top1", "truth_top1_se", "hit_rate", "hit_rate_se", "precision", "precision_se", "f1", "f1_se"]
    enc = [e.strip() for e in config["metric_encoders"].split(",") if e.strip()]
    header += [f"cosine_{e}{s}" for e in enc for s in ("", "_se")] + ["faithfulness_median_z", "faithfulness_findings"]
    rows = []
    for name, r in table["rows"].items():
        t, fc = r["truth"], r.get("fc", {})
        row = [name, table["layer"], r["neurons"], r["named"], table["truth"]["kind"], t["any"]["n"],
               t["any"]["mean"], t["any"]["se"], t["top1"]["mean"], t["top1"]["se"]]
        row += [fc.get(m, {}).get(k, "") for m in ("hit_rate", "precision", "f1") for k in ("mean", "se")]
        row += [fc.get("cosine", {}).get(e, {}).get(k, "") for e in enc for k in ("mean", "se")]
        f = r.get("faithfulness") or {}
        row += [f.get("median_z", ""), f.get("findings", "")]
        rows.append(row)
    save_rows(out / "describers.csv", header, rows)
    names = list(table["pairwise"])
    save_rows(out / "agreement.csv", ["describer"] + names,
              [[a] + [table["pairwise"][a][b]["mean"] for b in names] for a in names])


def save_rows(path: Path, header: list, rows: list) -> None:
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(header)
    w.writerows([[f"{v:.6g}" if isinstance(v, float) else v for v in r] for r in rows])
    save_bytes(path, buf.getvalue().encode())


def figure(table: dict) -> plt.Figure:
    """Left: each describer's headline numbers with standard errors; right: pairwise agreement."""
    names = list(table["rows"])
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(12, 4.2), dpi=110, gridspec_kw={"width_ratios": [1.4, 1]})
    metrics = ([("fc hit rate", lambda r: r["fc"]["hit_rate"]), ("fc F1", lambda r: r["fc"]["f1"])]
               if "fc" in table["rows"]["mammi"] else [])
    metrics += [(f"truth named ({table['truth']['kind']})", lambda r: r["truth"]["any"]),
                ("truth = first concept", lambda r: r["truth"]["top1"])]
    width = 0.8 / len(metrics)
    for m, (label, get) in enumerate(metrics):
        vals = [get(table["rows"][n]) for n in names]
        ax.bar(np.arange(len(names)) + (m - (len(metrics) - 1) / 2) * width, [v["mean"] for v in vals], width,
               yerr=[v["se"] for v in vals], capsize=3, label=label)
    ax.set_xticks(range(len(names)), names)
    ax.set_ylim(0, 1.05)
    ax.set_title(f"{table['layer']} layer: {table['truth']['n']} neurons with a truth (bars: ± 1 standard error)",
                 fontsize=10)
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.08), ncol=len(metrics), frameon=False)
    grid = np.array([[table["pairwise"][a][b]["mean"] for b in names] for a in names])
    bx.imshow(grid, cmap="Blues", vmin=0, vmax=1)
    for (r, c), v in np.ndenumerate(grid):
        bx.text(c, r, "" if np.isnan(v) else f"{v:.2f}", ha="center", va="center", fontsize=8,
                color="white" if v > 0.6 else "black")
    bx.set_xticks(range(len(names)), names, rotation=30, ha="right")
    bx.set_yticks(range(len(names)), names)
    bx.set_title("same first concept (share of neurons both name)", fontsize=10)
    fig.tight_layout()
    return fig


def print_table(table: dict) -> None:
    print(f"\n== Describers on the {table['layer']} layer (mean ± standard error)")
    print(f"truth ({table['truth']['kind']}): {table['truth']['rule']}; {table['truth']['n']} neurons have one")
    fc = "fc" in table["rows"]["mammi"]
    head = f"{'describer':<13} {'named':>6}"
    if fc:
        head += f" {'hit rate':>15} {'precision':>13} {'F1':>13} {'cosine':>13}"
    head += f" {'truth named':>19} {'truth = 1st':>13} {'faithfulness: median z':>23}"
    print(head)
    for name, r in table["rows"].items():
        line = f"{name:<13} {r['named']:>6}"
        if fc:
            m = r["fc"]
            hits = round(m["hit_rate"]["mean"] * m["hit_rate"]["n"])
            cos = next((v for v in m["cosine"].values() if "mean" in v), None)
            line += f" {hits:>3}/{m['hit_rate']['n']} ±{m['hit_rate']['se']:.3f}  {pm(m['precision'])} {pm(m['f1'])}" + \
                    (f" {pm(cos)}" if cos else f" {'n/a':>11}")
        t = r["truth"]
        line += f" {round(t['any']['mean'] * t['any']['n']) if t['any']['n'] else 0:>5}/{t['any']['n']:<4}" \
                f"{pm(t['any'])} {pm(t['top1'])} {faithful(r.get('faithfulness')):>23}"
        print(line)
    for name, why in table["skipped"].items():
        print(f"{name:<13} skipped: {why}")
    if "faithfulness_skipped" in table:
        print(f"faithfulness skipped: {table['faithfulness_skipped']}")
    names = list(table["pairwise"])
    print("pairwise agreement (same first concept): " + "; ".join(
        f"{a}~{b} {table['pairwise'][a][b]['mean']:.2f}" for i, a in enumerate(names) for b in names[i + 1:]))
    if "sensitivity" in table:
        s = table["sensitivity"]
        grid = np.array(s["hit_rate"] if s["hit_rate"] is not None else s["truth_any"])
        best = np.unravel_index(np.nanargmax(grid), grid.shape)
        print(f"sensitivity ({s['metric']}): {np.nanmin(grid):.3f} to {np.nanmax(grid):.3f} over p x alpha; best at "
              f"p = {s['percents'][best[0]]:g}, alpha = {s['alphas'][best[1]]:g}")


def faithful(f: dict | None) -> str:
    """A describer's faithfulness: median z (findings with named neurons / findings)."""
    if not f:
        return "-"
    z = "n/a" if f["median_z"] is None else f"{f['median_z']:.1f}"
    return f"{z} ({f['findings']}/{f['of']})"


if __name__ == "__main__":
    main(run)
