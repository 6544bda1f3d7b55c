"""The whole pipeline on a phantom world whose right answers are known: the README's first command.

    python demo.py                  # about 3 minutes on 2 CPU cores

A fresh world of synthetic radiographs (phantom/world.py, a seed the demo models never saw) is
probed with the committed demo target (DenseNet-121) and named with the committed demo VLM
(PhantomCLIP); both were trained by `python -m phantom.train`. Every step runs as it would from the
command line with the experiment file config/demo.py: the command is printed, so each can be re-run
by hand, and what the step prints goes to its own log ({save_root}/logs/). Ends with the results
table: classifier AUROC, the fc hit rate with its ablations, the penultimate agreement with the
phantom labels, the share of significant names for the trained and a re-initialised target, MAMMI
against the other describers, the ablation of the neurons each finding names (z per finding), and
the pointing game. Everything lands in the experiment's save_root.
"""
import contextlib
import csv
import itertools
import math
import shlex
import sys
import time
from pathlib import Path

import numpy as np

from dataset.nih import class_names, read_split, split_file
from describers import lift_findings, names_finding, pm
from pipeline.cache import load_json, save_bytes, save_json
from pipeline.cli import PipelineError, accepted_names, configure, main, print_config, read_experiment, run_script
from pipeline.outputs import (describers_dir, eval_dir, matching_dir, model_dir, read_ablation,
                              read_comparison, read_matching, visualization_dir)

# -----------------------------------------------------------------------------
# The target, VLM, folders and method constants come from config/demo.py (and may be overridden here).
n_probe: ">= 1" = 1200          # probing images (the world's train split)
n_val: ">= 1" = 300             # val split: per-class thresholds
n_test: ">= 1" = 600            # test split: AUROC
world_size: ">= 1" = 256        # side of the phantom PNGs
world_seed: ">= 0" = 1          # the demo models were trained on seed 0: this world is unseen
vis_images: ">= 0" = 24         # images shown by visualization.py
num_workers: ">= 0" = 2
# -----------------------------------------------------------------------------
EXPERIMENT = "config/demo.py"
config = configure(globals(), argv=[EXPERIMENT, *sys.argv[1:]],
                   reads=("example_selection.py", "concept_matching.py", "bbox_img.py", "compare_describers.py",
                          "sanity_check.py"))
WORLD = Path(config["data_root"]).parent  # the world writes images/, its split files and bbox.csv here
BOX_FILE = str(WORLD / "bbox.csv")
CONCEPTS = str(Path(config["save_root"]) / "concept_set" / "demo_concepts.txt")
# Passed to every step after the experiment file: the step constants overridden on the demo's own
# command line, and what the demo itself writes.
_EXP = read_experiment(EXPERIMENT)
FORWARD = {**{k: v for k, v in config.given.items() if k not in config.own and _EXP.get(k, _EXP) != v},
           "num_workers": num_workers, "box_file": BOX_FILE, "concept_set": CONCEPTS}
LOGS = Path(config["save_root"]) / "logs"  # what each step printed, one file per step in order
_order = itertools.count(1)


def step(script: str, **args) -> None:
    known = accepted_names(script)
    argv = [EXPERIMENT] + [str(a) for k, v in {**FORWARD, **args}.items() if k in known for a in (f"--{k}", v)]
    print(f"$ python {script} {shlex.join(argv)}", flush=True)
    log = (LOGS / f"{next(_order):02d}_{Path(script).stem}.log").resolve()  # (run_script runs it from the repo root)
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "w") as f, contextlib.redirect_stdout(f), contextlib.redirect_stderr(f):
        status = run_script(script, *argv)
    if status != 0:
        said = log.read_text().splitlines()
        print("\n".join([line for line in said if line.startswith("error:")] or said[-5:]), file=sys.stderr)
        raise PipelineError(f"{script} failed (its error is above, all it printed in {log}); the demo stops here")


def world() -> None:
    from phantom.world import ensure_world
    t = time.time()
    if ensure_world(WORLD, n_probe, n_val, n_test, world_size, world_seed):
        print(f"wrote {n_probe + n_val + n_test} phantoms to {WORLD} in {time.time() - t:.0f}s")
    else:
        print(f"reusing the phantom world in {WORLD}")


def concept_set() -> None:
    """Phantom-report nouns (step 1) and the release's MIMIC nouns: real distractors compete."""
    out = Path(CONCEPTS).parent
    step("prepare_mimic_nouns.py", reports=f"{WORLD}/annotation.json", report_split="all", name="phantom_nouns",
         out_dir=out)
    words = (out / "phantom_nouns.txt").read_text().splitlines()
    words += (Path("dataset/concept_set/mimic_nouns.txt")).read_text().splitlines()
    words = list(dict.fromkeys(w for w in words if w))
    save_bytes(CONCEPTS, "\n".join(words).encode())
    print(f"concept set: {len(words)} words in {CONCEPTS}")


def penultimate_agreement(stage_cfg: dict) -> dict:
    """Per finding-selective neuron: the finding most over-represented among its examples (lift over
    the probing set's base rate) against its concepts. Agreement: the finding's name is a concept."""
    names, labels = read_split(split_file(stage_cfg["split"], stage_cfg["data_root"], stage_cfg["split_file"]))
    row = {n: i for i, n in enumerate(names)}
    run, _, ex = read_matching(matching_dir(stage_cfg) / "concepts.json")
    ex = ex["neurons"]
    named = {n["neuron"]: [c["concept"] for c in n["concepts"]] for n in run["neurons"]}
    classes = [c.lower() for c in class_names()]
    agree, selective, per_class = 0, 0, {c: [0, 0] for c in classes}
    top = lift_findings(labels, [[row[e["image_id"]] for e in n["examples"]] for n in ex], config["lift_min"])
    for n, k in zip(ex, top):
        if k is None:
            continue
        selective += 1
        hit = names_finding(named[n["neuron"]], classes[k])
        agree += hit
        per_class[classes[k]][0] += hit
        per_class[classes[k]][1] += 1
    return {"neurons": len(ex), "selective": selective, "agree": agree,
            "share": agree / selective if selective else float("nan"), "per_class": per_class}


def run():
    print_config("demo", config)
    print(f"each step's output: {LOGS}/")
    t0 = time.time()
    times = {}
    world()
    times["world"] = time.time() - t0
    concept_set()
    topk = config["topk"]
    t = time.time()
    step("example_selection.py", layer="fc")
    step("example_selection.py", layer="fc", selection="topk")
    step("example_selection.py", layer="penultimate")
    # the held-out split that step 4 scores and ablation zeroes neurons on: one pass for both
    step("example_selection.py", layer="fc,penultimate", split="test")
    times["stage 2"] = time.time() - t
    t = time.time()
    variants = {"MAMMI (adaptive examples, template, adaptive score)": dict(),
                "not adaptive": dict(adaptive=False),
                "no template": dict(template_ver="no", adaptive=False),
                f"top-k examples (k = {topk})": dict(selection="topk")}
    for v in variants.values():
        step("concept_matching.py", layer="fc", **{k: ("yes" if x else "no") if isinstance(x, bool) else x
                                                   for k, x in v.items()})
    step("concept_matching.py", layer="penultimate")
    times["stage 3"] = time.time() - t
    t = time.time()
    step("sanity_check.py", layer="fc,penultimate")  # steps 2-3 again on a re-initialised target
    times["sanity check"] = time.time() - t
    t = time.time()
    for layer in ("fc", "penultimate"):  # the other ways to name a neuron, on the inputs of MAMMI's run
        step("compare_describers.py", layer=layer)
    times["describers"] = time.time() - t
    pen_run = matching_dir({**config, "layer": "penultimate", "concept_set": CONCEPTS}) / "concepts.json"
    skipped = read_comparison(describers_dir(pen_run) / "describers.json").get("faithfulness_skipped")
    if skipped:
        print(f"\nablation skipped: {skipped}")
    else:
        step("ablation.py", layer="penultimate")  # compare_describers.py wrote it: read back, and printed
    t = time.time()
    step("target_model_perform.py")
    step("bbox_img.py", max_drawn=8)
    step("visualization.py", max_drawn=vis_images)
    times["evaluation"] = time.time() - t
    t = time.time()
    step("gallery.py")  # every run above, browsable offline
    times["gallery"] = time.time() - t

    base = {**config, "layer": "fc", "concept_set": CONCEPTS}
    rows = {label: load_json(matching_dir({**base, **v}) / "metrics.json") for label, v in variants.items()}
    pen = penultimate_agreement({**base, "layer": "penultimate"})
    with open(eval_dir(base) / "TestEval.csv", newline="") as f:
        auroc = {r["label"]: float(r["auc"]) for r in csv.DictReader(f)}
    pointing = load_json(visualization_dir(base) / "total_results.json")["pointing_game"]
    rivals = {layer: read_comparison(describers_dir(matching_dir({**base, "layer": layer}) / "concepts.json")
                                     / "describers.json") for layer in ("fc", "penultimate")}
    sanity = load_json(model_dir({**base, "reinit_seed": config["sanity_seed"]}) / "sanity.json")["layers"]
    significance = {layer: {w: {k: r[w][k] for k in ("significant", "live", "share")} for w in ("trained", "randomised")}
                    for layer, r in sanity.items()}
    ablation = pen_run.parent / "ablation.json"
    summary = {"auroc": auroc, "fc": rows, "penultimate": pen, "significance": significance, "describers": rivals,
               "ablation": {"penultimate": read_ablation(ablation, pen_run) if ablation.is_file() and not skipped else None},
               "pointing_game": pointing, "times_s": times, "config": config}
    save_json(Path(config["save_root"]) / "summary.json", summary)
    print(f"\ndemo finished in {time.time() - t0:.0f}s; summary in {Path(config['save_root']) / 'summary.json'}")
    index = Path(config["save_root"]) / "gallery" / "index.html"
    print(f"neuron gallery: {index} (open it in a browser: {index.resolve().as_uri()})")
    report(summary)


def report(summary: dict) -> None:
    print("\n== Results on the phantom world")
    auroc = summary["auroc"]
    print("target AUROC on held-out phantoms: " + ", ".join(f"{k} {v:.3f}" for k, v in auroc.items()))
    print(f"mean AUROC {np.nanmean(list(auroc.values())):.3f}\n")
    print(f"{'fc layer (14 class neurons)':<52} {'hit rate':>9} {'precision':>10} {'F1':>6}")
    for label, m in summary["fc"].items():
        hits = round(m["hit_rate"]["mean"] * m["hit_rate"]["n"])
        print(f"{label:<52} {hits:>6}/14 {m['precision']['mean']:>10.3f} {m['f1']['mean']:>6.3f}")
    p = summary["penultimate"]
    print(f"\npenultimate layer: {p['agree']} of {p['selective']} finding-selective neurons (lift >= "
          f"{config['lift_min']:g}; {p['neurons']} in all) have that finding among their concepts: {p['share']:.1%}")
    print(f"\nsignificant names (q <= {config['fdr']:g}), trained target against the same DenseNet-121 re-initialised:")
    for layer, r in summary["significance"].items():
        t, z = r["trained"], r["randomised"]
        print(f"  {layer:<12} trained {t['significant']:>4} of {t['live']:<4} ({t['share']:.0%})   "
              f"randomised {z['significant']:>4} of {z['live']:<4} ({z['share']:.0%})")
    describer_table(summary["describers"])
    ablation_lines(summary["ablation"]["penultimate"])
    g = summary["pointing_game"]["overall"]
    print(f"pointing game: the overall Taylor map peaks inside a box of the predicted class in {g['hits']} of "
          f"{g['n']} (image, class) pairs; mean share of map mass inside the boxes {g['mass_inside_mean']:.2f}")
    print("times: " + ", ".join(f"{k} {v:.0f}s" for k, v in summary["times_s"].items()))


def describer_table(rivals: dict) -> None:
    """MAMMI and its rivals side by side: the fc metrics and the penultimate agreement with the truth."""
    fc, pen = rivals["fc"], rivals["penultimate"]
    print(f"\nMAMMI against other describers (mean ± standard error; fc: 14 neurons, so one neuron is 0.071; "
          f"penultimate truth: {pen['truth']['rule']}, {pen['truth']['n']} neurons)")
    print(f"{'describer':<13} {'fc hit rate':>16} {'precision':>13} {'F1':>13} {'cosine':>13} "
          f"{'penultimate: named':>24} {'first concept':>14} {'faithfulness (median z)':>24}")
    none = {"mean": math.nan, "se": math.nan, "n": 0}
    for name, r in fc["rows"].items():
        m, p = r["fc"], pen["rows"].get(name, {}).get("truth", {"any": none, "top1": none})
        cos = next((v for v in m["cosine"].values() if "mean" in v), none)
        hits = round(m["hit_rate"]["mean"] * m["hit_rate"]["n"])
        agree = round(p["any"]["mean"] * p["any"]["n"]) if p["any"]["n"] else 0
        f = pen["rows"].get(name, {}).get("faithfulness")
        faithful = "-" if not f or f["median_z"] is None else f"{f['median_z']:.1f} ({f['findings']}/{f['of']})"
        print(f"{name:<13} {hits:>4}/14 {pm(m['hit_rate'])} {pm(m['precision'])} {pm(m['f1'])} {pm(cos)} "
              f"{agree:>5}/{p['any']['n']:<4} {pm(p['any'])} {pm(p['top1'])} {faithful:>24}")
    for layer, t in rivals.items():
        for name, why in t["skipped"].items():
            print(f"{name} ({layer}) skipped: {why}")
        s = t.get("sensitivity")
        if s:
            grid = np.array(s["hit_rate"] if s["hit_rate"] is not None else s["truth_any"])
            print(f"sensitivity of MAMMI ({layer}: {s['metric']}) over adaptive_percent x alpha: "
                  f"{np.nanmin(grid):.3f} to {np.nanmax(grid):.3f}; {s['figure']}")


def ablation_lines(result: dict | None) -> None:
    """MAMMI's penultimate neurons of each finding zeroed on the test split, against random sets."""
    if result is None:
        return
    z = {r["finding"]: r["z"] for r in result["findings"] if r["z"] is not None}
    print(f"\nablation of MAMMI's penultimate neurons per finding ({result['split']} split, {result['draws']} random "
          f"sets of as many neurons): z " + ", ".join(f"{f} {v:.1f}" for f, v in z.items()))
    others = [r["other_classes"] for r in result["findings"] if r["other_classes"] is not None]
    if z:
        print(f"z >= 2 in {sum(v >= 2 for v in z.values())} of {len(z)} findings with named neurons; the other "
              f"classes' logits drop by {min(others):.2f} to {max(others):.2f} SD")


if __name__ == "__main__":
    main(run)
