"""The whole pipeline on a phantom world whose right answers are known: the README's first command.

    python demo.py                  # about 3 minutes on 2 CPU cores

A fresh world of synthetic radiographs (phantom/world.py, a seed the demo models never saw) is
probed with the committed demo target (DenseNet-121) and named with the committed demo VLM
(PhantomCLIP); both were trained by `python -m phantom.train`. Every step runs as it would from the
command line with the experiment file config/demo.py, the command printed, so each can be re-run
by hand. Ends with the results table: classifier AUROC, the fc hit rate with its ablations, the
penultimate agreement with the phantom labels, and the pointing game. Everything lands in the
experiment's save_root.
"""
import csv
import shlex
import sys
import time
from pathlib import Path

import numpy as np

from dataset.nih import class_names, read_split, split_file
from pipeline.cache import load_json, save_bytes, save_json
from pipeline.cli import PipelineError, accepted_names, configure, main, print_config, read_experiment, run_script
from pipeline.outputs import eval_dir, examples_dir, matching_dir, visualization_dir

# -----------------------------------------------------------------------------
# The target, VLM, folders and method constants come from config/demo.py (and may be overridden here).
n_probe: ">= 1" = 1200          # probing images (the world's train split)
n_val: ">= 1" = 300             # val split: per-class thresholds
n_test: ">= 1" = 600            # test split: AUROC
world_size: ">= 1" = 256        # side of the phantom PNGs
world_seed: ">= 0" = 1          # the demo models were trained on seed 0: this world is unseen
vis_images: ">= 0" = 24         # images shown by visualization.py
lift_min: "> 0" = 2.0           # penultimate: a neuron counts as finding-selective above this lift
num_workers: ">= 0" = 2
# -----------------------------------------------------------------------------
EXPERIMENT = "config/demo.py"
config = configure(globals(), argv=[EXPERIMENT, *sys.argv[1:]],
                   reads=("example_selection.py", "concept_matching.py", "bbox_img.py"))
WORLD = Path(config["data_root"]).parent  # the world writes images/, its split files and bbox.csv here
BOX_FILE = str(WORLD / "bbox.csv")
CONCEPTS = str(Path(config["save_root"]) / "concept_set" / "demo_concepts.txt")
# Passed to every step after the experiment file: the step constants overridden on the demo's own
# command line, and what the demo itself writes.
_EXP = read_experiment(EXPERIMENT)
FORWARD = {**{k: v for k, v in config.given.items() if k not in config.own and _EXP.get(k, _EXP) != v},
           "num_workers": num_workers, "box_file": BOX_FILE, "concept_set": CONCEPTS}


def step(script: str, **args) -> None:
    known = accepted_names(script)
    argv = [EXPERIMENT] + [str(a) for k, v in {**FORWARD, **args}.items() if k in known for a in (f"--{k}", v)]
    print(f"\n$ python {script} {shlex.join(argv)}", flush=True)
    if run_script(script, *argv) != 0:
        raise PipelineError(f"{script} failed (its error is above); the demo stops here")


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
    print(f"\n$ python prepare_mimic_nouns.py --reports {WORLD}/annotation.json --report_split all "
          f"--name phantom_nouns --out_dir {out}", flush=True)
    if run_script("prepare_mimic_nouns.py", "--reports", f"{WORLD}/annotation.json", "--report_split", "all",
                  "--name", "phantom_nouns", "--out_dir", str(out)) != 0:
        raise PipelineError("prepare_mimic_nouns.py failed (its error is above); the demo stops here")
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
    base = labels.mean(0)
    ex = load_json(examples_dir(stage_cfg) / "examples.json")["neurons"]
    named = {n["neuron"]: [c["concept"] for c in n["concepts"]]
             for n in load_json(matching_dir(stage_cfg) / "concepts.json")["neurons"]}
    classes = [c.lower() for c in class_names()]
    agree, selective, per_class = 0, 0, {c: [0, 0] for c in classes}
    for n in ex:
        if not n["examples"]:
            continue
        lab = labels[[row[e["image_id"]] for e in n["examples"]]]
        lift = lab.mean(0) / np.maximum(base, 1e-9)
        k = int(np.argmax(lift))
        if lift[k] < lift_min:
            continue
        selective += 1
        hit = classes[k] in named[n["neuron"]] or all(w in named[n["neuron"]] for w in classes[k].split())
        agree += hit
        per_class[classes[k]][0] += hit
        per_class[classes[k]][1] += 1
    return {"neurons": len(ex), "selective": selective, "agree": agree,
            "share": agree / selective if selective else float("nan"), "per_class": per_class}


def run():
    print_config("demo", config)
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
    summary = {"auroc": auroc, "fc": rows, "penultimate": pen, "pointing_game": pointing, "times_s": times,
               "config": config}
    report(summary)
    save_json(Path(config["save_root"]) / "summary.json", summary)
    print(f"\ndemo finished in {time.time() - t0:.0f}s; summary in {Path(config['save_root']) / 'summary.json'}")
    index = Path(config["save_root"]) / "gallery" / "index.html"
    print(f"neuron gallery: {index} (open it in a browser: {index.resolve().as_uri()})")


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
    print(f"\npenultimate layer: {p['agree']} of {p['selective']} finding-selective neurons (lift >= {lift_min:g}; "
          f"{p['neurons']} in all) have that finding among their concepts: {p['share']:.1%}")
    g = summary["pointing_game"]["overall"]
    print(f"pointing game: the overall Taylor map peaks inside a box of the predicted class in {g['hits']} of "
          f"{g['n']} (image, class) pairs; mean share of map mass inside the boxes {g['mass_inside_mean']:.2f}")
    print("times: " + ", ".join(f"{k} {v:.0f}s" for k, v in summary["times_s"].items()))


if __name__ == "__main__":
    main(run)
