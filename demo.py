"""The whole pipeline on a phantom world whose right answers are known: the README's first command.

    python demo.py                  # about 3 minutes on 2 CPU cores

A fresh world of synthetic radiographs (dataset/phantom.py, a seed the demo models never saw) is
probed with the committed demo target (DenseNet-121) and named with the committed demo VLM
(PhantomCLIP); both were trained by train_demo_models.py. Every stage runs as its script would from
the command line, with the arguments printed, so each step can be re-run by hand. Ends with the
results table: classifier AUROC, the fc hit rate with its ablations, the penultimate agreement with
the phantom labels, and the pointing game. Everything lands in {save_root}/.
"""
import csv
import shlex
import time
from pathlib import Path

import numpy as np

from cache import load_json, save_bytes, save_json
from cli import PipelineError, configure, main, print_config, run_script
from dataset.nih import class_names, read_split, split_file
from outputs import eval_dir, examples_dir, matching_dir, visualization_dir

# -----------------------------------------------------------------------------
world_dir = "demo/world"        # where the phantom world is written (once; reused while its settings hold)
n_probe = 1200                  # probing images (the world's train split)
n_val = 300                     # val split: per-class thresholds
n_test = 600                    # test split: AUROC
world_size = 256                # side of the phantom PNGs
world_seed = 1                  # the demo models were trained on seed 0: this world is unseen
checkpoint = "pretrained/phantom_densenet121.pth"
clip_weights = "pretrained/phantom_clip"
target_res = 96                 # the demo target's input size (Resize and CenterCrop to it)
topk = 20                       # k of the top-k ablation
vis_images = 24                 # images shown by visualization.py
lift_min = 2.0                  # penultimate: a neuron counts as finding-selective above this lift
metric_encoders = "all-minilm-l6-v2"  # fc cosine metric: the offline one (the others download ~1 GB)
num_workers = 2
save_root = "results/demo"
# -----------------------------------------------------------------------------
config = configure(globals())
IMAGES = f"{world_dir}/images"


def step(script: str, **args) -> None:
    argv = [str(a) for k, v in args.items() for a in (f"--{k}", v)]
    print(f"\n$ python {script} {shlex.join(argv)}", flush=True)
    if run_script(script, *argv) != 0:
        raise PipelineError(f"{script} failed (its error is above); the demo stops here")


def world() -> None:
    from dataset.phantom import ensure_world
    t = time.time()
    if ensure_world(world_dir, n_probe, n_val, n_test, world_size, world_seed):
        print(f"wrote {n_probe + n_val + n_test} phantoms to {world_dir} in {time.time() - t:.0f}s")
    else:
        print(f"reusing the phantom world in {world_dir}")


def concept_set() -> str:
    """Phantom-report nouns (stage 1) and the release's MIMIC nouns: real distractors compete."""
    out = Path(save_root) / "concept_set"
    step("prepare_mimic_nouns.py", reports=f"{world_dir}/annotation.json", report_split="all",
         name="phantom_nouns", out_dir=out)
    words = (out / "phantom_nouns.txt").read_text().splitlines()
    words += (Path("dataset/concept_set/mimic_nouns.txt")).read_text().splitlines()
    words = list(dict.fromkeys(w for w in words if w))
    path = out / "demo_concepts.txt"
    save_bytes(path, "\n".join(words).encode())
    print(f"concept set: {len(words)} words in {path}")
    return str(path)


def penultimate_agreement(stage_cfg: dict) -> dict:
    """Per finding-selective neuron: the finding most over-represented among its examples (lift over
    the probing set's base rate) against its concepts. Agreement: the finding's name is a concept."""
    names, labels = read_split(split_file("train", IMAGES))
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
    concepts = concept_set()
    common = dict(dataset="phantom", split="train", num_workers=num_workers, save_root=save_root)
    s2 = dict(**common, data_root=IMAGES, checkpoint=checkpoint, resize=target_res, crop=target_res)
    s3 = dict(**common, model_clip="phantom", clip_weights=clip_weights, concept_set=concepts)

    t = time.time()
    step("example_selection.py", **s2, layer="fc")
    step("example_selection.py", **s2, layer="fc", selection="topk", topk=topk)
    step("example_selection.py", **s2, layer="penultimate")
    times["stage 2"] = time.time() - t
    t = time.time()
    variants = {"MAMMI (adaptive examples, template, adaptive score)": dict(),
                "not adaptive": dict(adaptive="no"),
                "no template": dict(template_ver="no", adaptive="no"),
                f"top-k examples (k = {topk})": dict(selection="topk", topk=topk)}
    for v in variants.values():
        step("concept_matching.py", **s3, layer="fc", metric_encoders=metric_encoders, **v)
    step("concept_matching.py", **s3, layer="penultimate")
    times["stage 3"] = time.time() - t
    t = time.time()
    step("target_model_perform.py", dataset="phantom", data_root=IMAGES, checkpoint=checkpoint,
         resize=target_res, crop=target_res, num_workers=num_workers, save_root=save_root)
    step("bbox_img.py", dataset="phantom", data_root=IMAGES, box_file=f"{world_dir}/bbox.csv", max_images=8,
         save_root=save_root)
    step("visualization.py", dataset="phantom", data_root=IMAGES, box_file=f"{world_dir}/bbox.csv",
         max_images=vis_images, checkpoint=checkpoint, resize=target_res, crop=target_res,
         model_clip="phantom", clip_weights=clip_weights, concept_set=concepts, save_root=save_root)
    times["evaluation"] = time.time() - t
    t = time.time()
    step("gallery.py", save_root=save_root)  # every run above, browsable offline
    times["gallery"] = time.time() - t

    base = {"dataset": "phantom", "split": "train", "model": "densenet121", "layer": "fc", "selection": "adaptive",
            "adaptive_percent": 93.0, "topk": topk, "model_clip": "phantom", "clip_weights": clip_weights,
            "concept_set": concepts, "template_ver": "base", "adaptive": True, "alpha": 95.0, "save_root": save_root}
    rows = {}
    for label, v in variants.items():
        cfg = {**base, **v}
        cfg["adaptive"] = cfg["adaptive"] in (True, "yes")
        rows[label] = load_json(matching_dir(cfg) / "metrics.json")
    pen = penultimate_agreement({**base, "layer": "penultimate"})
    with open(eval_dir(base) / "TestEval.csv", newline="") as f:
        auroc = {r["label"]: float(r["auc"]) for r in csv.DictReader(f)}
    pointing = load_json(visualization_dir({**base, "box_source": "nih"}) / "total_results.json")["pointing_game"]
    summary = {"auroc": auroc, "fc": rows, "penultimate": pen, "pointing_game": pointing, "times_s": times,
               "config": config}
    report(summary)
    save_json(Path(save_root) / "summary.json", summary)
    print(f"\ndemo finished in {time.time() - t0:.0f}s; summary in {Path(save_root) / 'summary.json'}")
    index = Path(save_root) / "gallery" / "index.html"
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
