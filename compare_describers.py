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
describers/describers.json, describers.csv, agreement.csv, describers.png, sensitivity.png
(pipeline/sensitivity.py), and ablation.json, .csv, .png beside each describer's concepts.json.
"""
import pipeline.guard  # noqa: F401  (first: Ctrl-C and the console's encoding are handled from here on)

# isort: split
import functools
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
from dataset.probe import MISSING, align_labels, load_probe
from mammi.ablation import median_z, untested
from mammi.describers import (
    NAMES,
    label_auc,
    lift_findings,
    name_neurons,
    pm,
    same_name,
    soft_wpmi,
    top_images,
    topk_mean,
    truth_agreement,
    words,
)
from mammi.method import fc_metrics, image_concept_scores
from models import pick_device
from models.target import warn_untrained
from models.vlm import load_vlm
from phantom.marker import warn_other_world
from pipeline.ablation import NoLabels, ablate, check_draws, discard, held_out
from pipeline.cache import cached, save_csv, save_json, save_png, save_tensors
from pipeline.cli import PipelineError, check_stored, configure, main, print_config
from pipeline.dissect_run import dissection
from pipeline.features import image_features, text_features
from pipeline.outputs import (
    AGREEMENT_CSV,
    CONCEPTS,
    DESCRIBERS,
    DESCRIBERS_CSV,
    DESCRIBERS_PNG,
    RIVAL_SCORES,
    SIMILARITY,
    beside_input,
    class_neurons,
    describer_key,
    describers_dir,
    find_matching,
    read_activations,
    read_similarity,
    stored_classes,
    upstream_constants,
)
from pipeline.sensitivity import sensitivity
from pipeline.text_metrics import cosine_metrics

# -----------------------------------------------------------------------------
# The run to compare is named by the constants of steps 2-3 (or given); what produced it is taken
# from its concepts.json. The box file is bbox_img.py's box_source and box_file.
mammi_run = ""                  # MAMMI's concepts.json; default: the one steps 2-3 wrote for these constants
describers = "clip_dissect,topk_mean,label_auc,dissection"  # the rivals to run beside MAMMI
top_k: "[1, 10**9]" = 100       # images per neuron for clip_dissect (CLIP-Dissect's default) and topk_mean
wpmi_a: "(0, 1000]" = 10.0      # CLIP-Dissect: P = softmax(a * cos) over the concepts of each image
wpmi_lambda: "[0, 1000]" = 1.0  # CLIP-Dissect: score = log P(c|k) - lambda * log P(c)
wpmi_p_start: "(0, 1]" = 0.998  # CLIP-Dissect: weight of a neuron's top image ...
wpmi_p_end: "(0, 1]" = 0.97     # ... falling linearly towards this one over its top_k images
dissection_quantile: "(0, 1)" = 0.995  # Network Dissection: T_k, the top 0.5% of a neuron's spatial activations
top_n: "[1, 1000]" = 5          # concepts listed per neuron under "top" in a rival's concepts.json
truth: "lift | label_auc" = "label_auc"  # what the probing set says a neuron is: lift | label_auc (see README)
truth_images: "[1, 10**9]" = 20  # truth lift: the top images per neuron whose findings are counted
lift_min: "(0, 10**6]" = 2.0    # truth lift: a neuron has a finding only at this lift over the base rate or above
sensitivity_percents: "numbers in (0, 100)" = "80,85,90,93,95,97"  # MAMMI's adaptive_percent values to try from the cache ('' = no study)
sensitivity_alphas: "numbers in [0, 100)" = "90,93,95,97,99"  # MAMMI's alpha values to try
batch_size: "[1, 8192]" = 64
num_workers: "[0, 256]" = 2
device: "auto | cpu | cuda | cuda:N | mps" = "auto"  # auto = CUDA when present
# -----------------------------------------------------------------------------
config = configure(globals(), reads=("example_selection.py", "concept_matching.py", "bbox_img.py", "ablation.py",
                                    "target_model_perform.py"))
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
# Those that need to know which images hold which finding (an image without a box is an empty mask only
# when its labels say it has no finding): left out, as the truth and faithfulness are, without labels.
LABELLED = ("label_auc", "dissection")
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
    warn_untrained(stage2["model"], stage2.get("untrained", False))  # its rivals name an untrained target's neurons
    act = read_activations(ex_json, ex)
    acts, ids = act["activations"], act["image_ids"]
    if [n["neuron"] for n in run_json["neurons"]] != list(range(acts.shape[1])):
        raise PipelineError(f"{path} does not name the {acts.shape[1]} neurons of {ex_json.parent.parent} in order; "
                            f"re-run concept_matching.py")
    classes = stored_classes(stage2)  # fc neuron k is class k
    check_draws(config["ablation_draws"], acts.shape[1], len(classes or []))  # before any rival runs
    labels, findings = probe_labels(stage2, ids, classes)
    unlabeled = None if labels is not None else f"the probing set under {stage2['data_root']} has no labels (--labels none)"
    dead = (acts.max(0).values == acts.min(0).values).tolist()
    out = describers_dir(path)
    dev = pick_device(device)
    inputs = {"activations": ex["activations_key"], "data": stage2["data_key"]}

    # What the VLM rivals and the sensitivity study share: every probing image's features (step 3's cache,
    # grown by the images it lacks) and the concept prompts (its text cache).
    feats = None
    if set(wanted) & set(USES_VLM) or (percents and alphas):
        warn_other_world(config["model_clip"], stage2["data_root"], ids)
        t = time.time()
        concept_path, concepts = read_concepts(config["concept_set"])
        vlm = functools.cache(lambda: load_vlm(config["model_clip"], config["clip_weights"], dev))
        img, img_key, new = image_features(config, stage2, ids, vlm, batch_size, num_workers)
        text = text_features(config, concept_path, concepts, vlm)
        sim = path.parent / SIMILARITY
        if sim.is_file() and read_similarity(sim, run_json)["concepts"] != concepts:
            raise PipelineError(f"the concept set {concept_path} changed since {path} was written; re-run "
                                f"concept_matching.py with it, then this step")
        feats = {"images": img, "text": text, "concepts": concepts,
                 "cos": image_concept_scores(img, text["features"], None)}  # [N, C]: cos(image, concept prompt)
        inputs.update(images=img_key, text=text["key"])
        print(f"features of the {len(ids)} probing images ({new} embedded now) and {len(concepts)} prompts "
              f"in {time.time() - t:.1f}s")

    records, scores, skipped = {"mammi": run_json["neurons"]}, {}, {}
    if unlabeled:  # what is still possible: MAMMI and the VLM rivals, their fc metrics, agreement, sensitivity
        left = [d for d in wanted if d in LABELLED]
        skipped.update({d: unlabeled for d in left})
        wanted = [d for d in wanted if d not in LABELLED]
        print(f"note: {unlabeled}, so no image is known to hold or lack a finding: "
              f"{', '.join(left + ['the agreement with the truth', 'faithfulness'])} left out")
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
        save_json(out / name / CONCEPTS, {"key": key, "examples_key": ex["key"],
                                                 "config": describer_config(run_json, path, name, consts),
                                                 "neurons": records[name]})
        counts = {st: sum(n["status"] == st for n in records[name]) for st in ("ok", "none", "dead")}
        print(f"{name}: {counts['ok']} neurons named, {counts['none']} none, {counts['dead']} dead, "
              f"in {time.time() - t:.1f}s")

    truth_of = neuron_truth(acts, labels, findings, dead, scores.get("label_auc"))
    scored = class_neurons(classes, acts.shape[1]) if layer == "fc" else []
    table = compare(path, layer, records, truth_of, skipped, scored)
    if unlabeled:
        table["faithfulness_skipped"] = unlabeled
    else:
        faithfulness(table, path, records, stage2, dev)
    if percents and alphas:
        t = time.time()
        table["sensitivity"] = sensitivity(run_json, acts, feats, truth_of, percents, alphas, out, scored)
        print(f"sensitivity of MAMMI to adaptive_percent x alpha ({len(percents)} x {len(alphas)}) in "
              f"{time.time() - t:.1f}s")
    save_json(out / DESCRIBERS, table)
    write_tables(table, out)
    fig = figure(table)
    if fig is None:  # nothing to draw (MAMMI alone, without truth or fc metrics): no empty figure, none stale
        (out / DESCRIBERS_PNG).unlink(missing_ok=True)
    else:
        save_png(out / DESCRIBERS_PNG, fig)
    print_table(table)
    print(f"compared {len(records)} describers in {time.time() - t0:.1f}s")
    print("outputs:")
    for p in [out / n / CONCEPTS for n in records if n != "mammi"] + \
             [out / f for f in (DESCRIBERS, DESCRIBERS_CSV, AGREEMENT_CSV)] + \
             ([out / DESCRIBERS_PNG] if fig is not None else []) + \
             ([Path(table["sensitivity"]["figure"])] if table.get("sensitivity", {}).get("figure") else []):
        print(f"  {p}")


def rival(name, consts, inputs, where, acts, ids, labels, findings, feats, stage2, dev):
    """One rival's scores [K, C] with its concept names, the number of images it used per neuron and
    its key; from where/scores.pt when the key matches. Or why it cannot run here."""
    if name == "dissection":
        boxes, box_path = load_boxes(config["box_source"], config["box_file"])
        inputs = {**inputs, "boxes": file_digest(box_path)}
    key = describer_key(inputs, consts, CODE)
    stored = cached(where / RIVAL_SCORES, key)
    if stored is not None:
        print(f"reusing {where / RIVAL_SCORES}")
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
        got = dissection(stage2, ids, labels, boxes, box_path, acts, findings, dev, dissection_quantile, batch_size,
                         num_workers)
        if isinstance(got, str):
            return got
        S, names, used = got
    save_tensors(where / RIVAL_SCORES, {"key": key, "scores": S.float(), "concepts": names, "n_used": used,
                                           "neurons": list(range(S.shape[0]))})
    return S, names, used, key


def faithfulness(table: dict, path: Path, records: dict, stage2: dict, dev) -> None:
    """Each describer's median ablation z over the findings (mammi/ablation.py) into its row, the
    ablation keys into the table's; skipped, with the reason, at a layer where ablation tests nothing
    (fc: an ablation table written there before is removed) or where the held-out split has no labels."""
    concepts = {name: path if name == "mammi" else describers_dir(path) / name / CONCEPTS for name in records}
    why = untested(stage2["layer"])
    if why:  # print_table's last lines say why
        table["faithfulness_skipped"] = why
        for f in concepts.values():
            discard(f)
        return
    try:
        data = held_out(stage2, config.given, config["ablation_split"], config[f"{config['ablation_split']}_split_file"],
                        batch_size, num_workers, dev)
    except NoLabels as e:
        print(f"note: faithfulness skipped: {e}")
        table["faithfulness_skipped"] = str(e)
        return
    keys = {}
    for name, recs in records.items():
        result = ablate(concepts[name], recs, data, config["ablation_draws"], config["ablation_seed"])
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
    beside_input(config, path, ex["config"]["save_root"], "mammi_run")
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


def describer_config(run_json: dict, path: Path, name: str, consts: dict) -> dict:
    """The run's config less what the rival does not use (left out, not changed: a reader that checks
    an experiment file against it finds no contradiction), with its name, vocabulary and constants."""
    drop = ("alpha", "adaptive") + (() if name in USES_VLM else VLM_FIELDS)
    cfg = {k: v for k, v in run_json["config"].items() if k not in drop}
    vocabulary = "concept_set" if name in USES_VLM else "findings"
    return {**cfg, **consts, "describer": name, "vocabulary": vocabulary, "mammi_run": str(path)}


def neuron_truth(acts, labels, findings, dead, auc) -> dict:
    """What the probing set says each neuron is (`truth`), a finding name or None; kind "none" without
    labels. `own`: the describer whose names the truth is (label_auc's agreement is 1 by construction)."""
    if labels is None:
        return {"kind": "none", "rule": "none: the probing set has no labels", "neurons": [None] * acts.shape[1],
                "n": 0, "own": None}
    if truth == "lift":
        idx = lift_findings(labels, top_images(acts, truth_images).T.tolist(), lift_min, MISSING)
        rule = f"the finding of highest lift (>= {lift_min:g}) among the neuron's top {truth_images} images"
    else:
        auc = known_label_auc(acts, labels) if auc is None else auc
        best = torch.where(torch.isnan(auc), -math.inf, auc).argmax(1).tolist()
        idx = [None if torch.isnan(auc[k]).all() else best[k] for k in range(len(best))]
        rule = "the class whose labels the neuron's activation separates best (highest AUROC)"
    names = [None if dead[k] or i is None else findings[i] for k, i in enumerate(idx)]
    return {"kind": truth, "rule": rule, "neurons": names, "n": sum(n is not None for n in names),
            "own": "label_auc" if truth == "label_auc" else None}


def compare(path: Path, layer: str, records: dict, truth_of: dict, skipped: dict, scored: list) -> dict:
    """Per describer: how many neurons it names, the fc metrics (the fc neurons of named classes: scored)
    and the agreement with the truth, each mean +- std/sqrt(n); and the pairwise agreement of their first
    concepts."""
    classes = [c for _, c in scored]
    rows = {}
    for name, recs in records.items():
        w = words(recs)
        row = {"neurons": len(recs), "named": sum(n.get("status") == "ok" for n in recs)}
        if truth_of["kind"] != "none" and name != truth_of["own"]:  # the truth's own describer is not scored by it
            row["truth"] = truth_agreement(w, truth_of["neurons"])
        if scored:
            row["fc"] = {**fc_metrics([w[j] for j, _ in scored], classes),
                         "cosine": cosine_metrics([recs[j] for j, _ in scored], classes, config["metric_encoders"],
                                                  config["medclip_weights"])}
        rows[name] = row
    pairwise = {a: {b: same_name(words(records[a]), words(records[b])) for b in records} for a in records}
    rivals = {n: file_digest(describers_dir(path) / n / CONCEPTS) for n in records if n != "mammi"}
    return {"key": digest({"run": file_digest(path), "rivals": rivals, "truth": truth_of,
                           "encoders": config["metric_encoders"], "code": CODE}),
            "run": str(path), "layer": layer, "truth": truth_of, "rows": rows, "pairwise": pairwise,
            "skipped": skipped, "config": dict(config)}


def write_tables(table: dict, out: Path) -> None:
    """describers.csv (one row per describer) and agreement.csv (the pairwise matrix)."""
    header = ["describer", "layer", "neurons", "named", "truth", "truth_n", "truth_any", "truth_any_se",
              "truth_top1", "truth_top1_se", "hit_rate", "hit_rate_se", "precision", "precision_se", "f1", "f1_se"]
    enc = [e.strip() for e in config["metric_encoders"].split(",") if e.strip()]
    header += [f"cosine_{e}{s}" for e in enc for s in ("", "_se")] + ["faithfulness_median_z", "faithfulness_findings"]
    rows = []
    for name, r in table["rows"].items():
        fc, kind = r.get("fc", {}), table["truth"]["kind"]
        if "truth" in r:
            t = r["truth"]
            row = [name, table["layer"], r["neurons"], r["named"], kind, t["any"]["n"], t["any"]["mean"], t["any"]["se"],
                   t["top1"]["mean"], t["top1"]["se"]]
        else:  # no labels, or the describer the truth is made of: no score
            row = [name, table["layer"], r["neurons"], r["named"], by_construction(table, name) or kind] + [""] * 5
        row += [fc.get(m, {}).get(k, "") for m in ("hit_rate", "precision", "f1") for k in ("mean", "se")]
        row += [fc.get("cosine", {}).get(e, {}).get(k, "") for e in enc for k in ("mean", "se")]
        f = r.get("faithfulness") or {}
        row += [f.get("median_z", ""), f.get("findings", "")]
        rows.append(row)
    save_csv(out / DESCRIBERS_CSV, header, six_digits(rows))
    names = list(table["pairwise"])
    save_csv(out / AGREEMENT_CSV, ["describer"] + names,
             six_digits([[a] + [table["pairwise"][a][b]["mean"] for b in names] for a in names]))


def six_digits(rows: list[list]) -> list[list]:
    """The tables' numbers to six significant digits, as describers.json's readers print them."""
    return [[f"{v:.6g}" if isinstance(v, float) else v for v in r] for r in rows]


def by_construction(table: dict, name: str) -> str:
    """What a describer's truth columns say when it is the truth's own: it agrees by construction."""
    return f"{table['truth']['kind']}: by construction" if name == table["truth"].get("own") else ""


def figure(table: dict) -> plt.Figure | None:
    """One panel per truth, each with its standard errors: the fc metrics (against each fc neuron's class
    name), the agreement with the probing set's truth (its own describer marked, not scored); and the
    pairwise agreement. Panels with nothing to show are left out; None when none is left."""
    names, layer = list(table["rows"]), table["layer"]
    bars = []
    if "fc" in table["rows"]["mammi"]:
        n = table["rows"]["mammi"]["fc"]["hit_rate"]["n"]
        bars.append((f"fc layer: each neuron against its class name ({n} neurons)",
                     f"mean over the {n} fc neurons",
                     [("hit rate", lambda r: r["fc"]["hit_rate"]), ("F1", lambda r: r["fc"]["f1"])], "fc"))
    t = table["truth"]
    if t["kind"] != "none" and any("truth" in r and r["truth"]["any"]["n"] for r in table["rows"].values()):
        bars.append((f"{layer} layer: against the truth ({t['kind']}, {t['n']} neurons have one)",
                     f"share of the {t['n']} neurons with a truth",
                     [("truth among its concepts", lambda r: r["truth"]["any"]),
                      ("truth = first concept", lambda r: r["truth"]["top1"])], "truth"))
    grid = np.array([[table["pairwise"][a][b]["mean"] for b in names] for a in names])
    heat = len(names) > 1 and np.isfinite(grid).any()
    if not bars and not heat:
        return None
    widths = [1.2] * len(bars) + ([1.0] if heat else [])
    fig, axes = plt.subplots(1, len(widths), figsize=(5 * len(widths), 4.4), dpi=110, squeeze=False,
                             gridspec_kw={"width_ratios": widths})
    for ax, (title, ylabel, metrics, part) in zip(axes[0], bars):
        width = 0.8 / len(metrics)
        for m, (label, get) in enumerate(metrics):
            vals = [get(table["rows"][n]) if part in table["rows"][n] else None for n in names]
            x = np.arange(len(names)) + (m - (len(metrics) - 1) / 2) * width
            got = ax.bar(x, [math.nan if v is None else v["mean"] for v in vals], width, capsize=3, label=label,
                         yerr=[math.nan if v is None else v["se"] for v in vals])
            ax.bar_label(got, labels=["" if v is None else f"{v['mean']:.2f}" for v in vals], fontsize=7, padding=2)
        for i, n in enumerate(names):
            if part == "truth" and by_construction(table, n):
                ax.text(i, 0.5, "the truth's own\nnames: 1 by\nconstruction", ha="center", va="center", fontsize=7)
        ax.set_xticks(range(len(names)), names, rotation=20, ha="right")
        ax.set_xlim(-0.5, len(names) - 0.5)  # a describer without bars keeps its place
        ax.set_ylim(0, 1.3)  # room above 1 for the values over the error bars and the legend
        ax.set_yticks(np.linspace(0, 1, 6))
        ax.set_ylabel(ylabel)
        ax.set_xlabel("describer")
        ax.set_title(title, fontsize=9)
        ax.legend(fontsize=8, loc="upper left", ncol=len(metrics), frameon=False)
    if heat:
        bx = axes[0][-1]
        im = bx.imshow(grid, cmap="Blues", vmin=0, vmax=1)
        for (r, c), v in np.ndenumerate(grid):
            bx.text(c, r, "n/a" if np.isnan(v) else f"{v:.2f}", ha="center", va="center", fontsize=8,
                    color="white" if v > 0.6 else "black")
        bx.set_xticks(range(len(names)), names, rotation=30, ha="right")
        bx.set_yticks(range(len(names)), names)
        bx.set_xlabel("describer")
        bx.set_ylabel("describer")
        bx.set_title("same first concept (share of the neurons both name)", fontsize=9)
        fig.colorbar(im, ax=bx, fraction=0.046).set_label("share of neurons", fontsize=8)
    fig.suptitle(f"Describers of the {layer} layer (bars: ± 1 standard error)", fontsize=10)
    fig.tight_layout()
    return fig


def print_table(table: dict) -> None:
    print(f"\n== Describers on the {table['layer']} layer (mean ± standard error)")
    kind, labelled = table["truth"]["kind"], table["truth"]["kind"] != "none"
    faith = labelled and "faithfulness_skipped" not in table  # the line below the table says why not
    if labelled:
        print(f"truth ({kind}): {table['truth']['rule']}; {table['truth']['n']} neurons have one")
    fc = "fc" in table["rows"]["mammi"]
    head = f"{'describer':<13} {'named':>6}"
    if fc:
        head += f" {'hit rate':>15} {'precision':>13} {'F1':>13} {'cosine':>13}"
    if labelled:
        head += f" {'truth named':>19} {'truth = 1st':>13}"
    if faith:
        head += f" {'faithfulness: median z':>23}"
    print(head)
    for name, r in table["rows"].items():
        line = f"{name:<13} {r['named']:>6}"
        if fc:
            m = r["fc"]
            hits = round(m["hit_rate"]["mean"] * m["hit_rate"]["n"])
            cos = next((v for v in m["cosine"].values() if "mean" in v), None)
            line += f" {hits:>3}/{m['hit_rate']['n']} ±{m['hit_rate']['se']:.3f}  {pm(m['precision'])} {pm(m['f1'])}" + \
                    (f" {pm(cos)}" if cos else f" {'n/a':>11}")
        if labelled and "truth" in r:
            t = r["truth"]
            line += f" {round(t['any']['mean'] * t['any']['n']) if t['any']['n'] else 0:>5}/{t['any']['n']:<4}" \
                    f"{pm(t['any'])} {pm(t['top1'])}"
        elif labelled:
            line += f" {by_construction(table, name):>33}"
        if faith:
            line += f" {faithful(r.get('faithfulness')):>23}"
        print(line)
    why = {**table["skipped"], **({"faithfulness": table["faithfulness_skipped"]} if "faithfulness_skipped" in table else {})}
    for reason in dict.fromkeys(why.values()):  # one line per reason
        print(f"{', '.join(n for n in why if why[n] == reason)} skipped: {reason}")
    names = list(table["pairwise"])
    print("pairwise agreement (same first concept): " + "; ".join(
        f"{a}~{b} {table['pairwise'][a][b]['mean']:.2f}" for i, a in enumerate(names) for b in names[i + 1:]))
    s = table.get("sensitivity")
    if s and s[s["headline"]] is not None:
        grid = np.array(s[s["headline"]])
        line = f"sensitivity ({s['metric']}): {np.nanmin(grid):.3f} to {np.nanmax(grid):.3f} over p x alpha"
        if s["headline"] == "overlap":  # measured against the run itself, 1 at its own constants: no setting is better
            line += "; no best without labels (the overlap is 1 at the run's own p and alpha by definition)"
        else:
            best = np.unravel_index(np.nanargmax(grid), grid.shape)
            line += f"; best at p = {s['percents'][best[0]]:g}, alpha = {s['alphas'][best[1]]:g}"
        print(line)


def faithful(f: dict | None) -> str:
    """A describer's faithfulness: median z (findings with named neurons / findings)."""
    if not f:
        return "-"
    z = "n/a" if f["median_z"] is None else f"{f['median_z']:.1f}"
    return f"{z} ({f['findings']}/{f['of']})"


if __name__ == "__main__":
    main(run)
