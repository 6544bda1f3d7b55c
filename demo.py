"""The whole pipeline on a phantom world whose right answers are known: the README's first command.

    python demo.py                  # about 5 minutes on 2 CPU cores

A fresh world of synthetic radiographs (phantom/world.py, a seed the demo models never saw) is
probed with the committed demo target (DenseNet-121) and named with the committed demo VLM
(PhantomCLIP); both were trained by `python -m phantom.train`. Every step runs as it would from the
command line with the experiment file config/demo.py: the command is printed, so each can be re-run
by hand, and what the step prints goes to its own log ({save_root}/logs/). Ends with the results,
each number with a line saying what it counts and over what: classifier AUROC, the fc hit rate with
its ablations, the penultimate agreement with the phantom labels, the share of significant names for
the trained target and the same one re-initialised, MAMMI against the other describers, the
ablation of the neurons each finding names (z per finding), the shortcut audit of the demo target and of
a second one trained with an object tied to a class (--shortcut_record: its flagged concepts per class,
the tied class's AUROC with and without the object) and the pointing game; then every figure written,
one line each saying what it shows. Everything lands in the experiment's save_root.
"""
import pipeline.guard  # noqa: F401  (first: Ctrl-C and the console's encoding are handled from here on)

# isort: split
import itertools
import math
import sys
import time
from pathlib import Path

import numpy as np

from dataset.nih import class_names, read_split, split_file
from mammi.describers import lift_findings, names_finding, pm
from pipeline.audit import stratum_words
from pipeline.cache import read_output, save_bytes, save_json
from pipeline.cli import PipelineError, configure, main, print_config, run_step
from pipeline.outputs import (
    ABLATION,
    ABLATION_PNG,
    AUDIT,
    AUDIT_PNG,
    DESCRIBERS,
    DESCRIBERS_PNG,
    GALLERY_INDEX,
    METRICS,
    ROC_CURVES,
    SANITY,
    SANITY_PNG,
    SUMMARY,
    TEST_EVAL,
    TOTAL_RESULTS,
    bbox_dir,
    box_figure,
    describers_dir,
    eval_dir,
    matching_dir,
    model_dir,
    read_ablation,
    read_audit,
    read_auroc,
    read_comparison,
    read_matching,
    read_metrics,
    read_sanity,
    read_total_results,
    visualization_dir,
)
from pipeline.outputs import CONCEPTS as CONCEPTS_JSON

# -----------------------------------------------------------------------------
# The target, VLM, folders and method constants come from config/demo.py (and may be overridden here).
n_probe: "[1, 100000]" = 1200   # probing images (the world's train split)
n_val: "[1, 100000]" = 300      # val split: per-class thresholds
n_test: "[1, 100000]" = 600     # test split: AUROC
world_size: "[1, 4096]" = 256   # side of the phantom PNGs
world_seed: "[0, 2**63 - 1]" = 1  # the demo models were trained on seed 0: this world is unseen
vis_images: "[0, 100000]" = 24  # images shown by visualization.py
# a second target, trained on a world whose training split ties an object to a class (phantom.train --shortcut):
# its training record names its checkpoint and the tie; both targets are audited for it ("" audits the first alone)
shortcut_record = "pretrained/demo_training_shortcut.json"
num_workers: "[0, 256]" = 2
# -----------------------------------------------------------------------------
EXPERIMENT = "config/demo.py"
config = configure(globals(), argv=[EXPERIMENT, *sys.argv[1:]],
                   reads=("example_selection.py", "concept_matching.py", "bbox_img.py", "compare_describers.py",
                          "sanity_check.py"))
WORLD = Path(config["data_root"]).parent  # the world writes images/, its split files and bbox.csv here
BOX_FILE = str(WORLD / "bbox.csv")
CONCEPTS = str(Path(config["save_root"]) / "concept_set" / "demo_concepts.txt")
# Passed to every step that takes them, after the experiment file and the step constants set on the demo's
# own command line: what the demo itself writes.
SHARED = {"num_workers": num_workers, "box_file": BOX_FILE, "concept_set": CONCEPTS}
LOGS = Path(config["save_root"]) / "logs"  # what each step printed, one file per step in order
# The fc rows of the results table: MAMMI and its ablations, each as step 3's constants.
VARIANTS = {"MAMMI (adaptive examples, template, adaptive score)": dict(),
            "not adaptive": dict(adaptive=False),
            "no template": dict(template_ver="no", adaptive=False),
            f"top-k examples (k = {config['topk']})": dict(selection="topk")}
# The run whose neurons ablation.py zeroes: MAMMI's on the penultimate layer.
PEN_RUN = matching_dir({**config, "layer": "penultimate", "concept_set": CONCEPTS}) / CONCEPTS_JSON
_order = itertools.count(1)


def shortcut_tie() -> dict | None:
    """The second target as its training record has it: checkpoint, the tie (object, class, share) and the
    object's word; its outputs go under a save_root of its own, {save_root}/targets/{checkpoint's stem} (steps
    key their folders by the model's name, which both targets share; and the gallery, which lists the runs
    by path, still opens on the first target's)."""
    if not shortcut_record:
        return None
    from phantom.world import OBJECTS, parse_shortcut
    trainer = "python -m phantom.train --shortcut OBJECT:CLASS:SHARE (pretrained/README.md)"
    record = read_output(shortcut_record, trainer, {"shortcut": str, "target": dict},
                         check=lambda r: isinstance(r["target"]["checkpoint"], str))
    tie = parse_shortcut(record["shortcut"], f"{shortcut_record}: shortcut")
    if tie is None:
        raise PipelineError(f"{shortcut_record} records a target trained without a shortcut; pass the record of "
                            f"one trained with {trainer}, or --shortcut_record \"\" to audit the first target alone")
    checkpoint = record["target"]["checkpoint"]
    return {"record": shortcut_record, "checkpoint": checkpoint, "object": tie.obj, "class": tie.label,
            "share": tie.share, "word": OBJECTS[tie.obj].word,
            "save_root": str(Path(config["save_root"]) / "targets" / Path(checkpoint).stem)}


def step(script: str, **constants) -> None:
    """One step, its output in its own log, numbered in the order run."""
    run_step(script, config, log=LOGS / f"{next(_order):02d}_{Path(script).stem}.log", shared=SHARED, **constants)


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
    run, _, ex = read_matching(matching_dir(stage_cfg) / CONCEPTS_JSON)
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
    tie = shortcut_tie()  # a bad record stops the demo before anything is written
    print(f"each step's output: {LOGS}/")
    t0 = time.time()
    times = {}
    world()
    times["world"] = time.time() - t0
    concept_set()
    t = time.time()
    step("example_selection.py", layer="fc")
    step("example_selection.py", layer="fc", selection="topk")
    step("example_selection.py", layer="penultimate")
    # the held-out split that step 4 scores and ablation zeroes neurons on: one pass for both
    step("example_selection.py", layer="fc,penultimate", split="test")
    times["stage 2"] = time.time() - t
    t = time.time()
    for v in VARIANTS.values():
        step("concept_matching.py", layer="fc", **v)
    step("concept_matching.py", layer="penultimate")
    times["stage 3"] = time.time() - t
    t = time.time()
    step("sanity_check.py", layer="fc,penultimate")  # steps 2-3 again on a re-initialised target
    times["sanity check"] = time.time() - t
    t = time.time()
    for layer in ("fc", "penultimate"):  # the other ways to name a neuron, on the inputs of MAMMI's run
        step("compare_describers.py", layer=layer)
    times["describers"] = time.time() - t
    skipped = read_comparison(describers_dir(PEN_RUN) / DESCRIBERS).get("faithfulness_skipped")
    if skipped:
        print(f"\nablation skipped: {skipped}")
    else:
        step("ablation.py", layer="penultimate")  # compare_describers.py wrote it: read back, and printed
    t = time.time()
    audits(tie)
    times["audit"] = time.time() - t
    t = time.time()
    step("target_model_perform.py")
    step("bbox_img.py", max_drawn=8)
    step("visualization.py", max_drawn=vis_images)
    times["evaluation"] = time.time() - t
    t = time.time()
    step("gallery.py")  # every run above, browsable offline
    times["gallery"] = time.time() - t
    summary = summarise(times, skipped, tie)
    save_json(Path(config["save_root"]) / SUMMARY, summary)
    print(f"\ndemo finished in {time.time() - t0:.0f}s; summary in {Path(config['save_root']) / SUMMARY}")
    index = Path(config["save_root"]) / "gallery" / GALLERY_INDEX
    print(f"neuron gallery: {index} (open it in a browser: {index.resolve().as_uri()})")
    report(summary)


def audits(tie: dict | None) -> None:
    """The shortcut audit of the penultimate layer for the first target and, named and stratified by the tied
    object's word, the second target (steps 2 and 3 of it first)."""
    word = {"audit_stratify": tie["word"]} if tie else {}
    step("audit.py", layer="penultimate", **word)
    if tie:
        other = {"checkpoint": tie["checkpoint"], "save_root": tie["save_root"], "layer": "penultimate"}
        step("example_selection.py", **other)
        step("concept_matching.py", **other)
        step("audit.py", **other, **word)


def audit_results(base: dict, tie: dict | None) -> dict:
    """Each audited target's audit.json, as audits() ran them."""
    targets = {"clean": base} | ({"shortcut": {**base, "checkpoint": tie["checkpoint"],
                                               "save_root": tie["save_root"]}} if tie else {})
    out, runs = {}, {}
    for name, c in targets.items():
        runs[name] = matching_dir({**c, "layer": "penultimate"})
        out[name] = read_audit(runs[name] / AUDIT, runs[name] / CONCEPTS_JSON)
    return {"tie": tie, "targets": out, "figures": {name: str(run / AUDIT_PNG) for name, run in runs.items()}}


def summarise(times: dict, skipped: str | None, tie: dict | None) -> dict:
    """summary.json: what the steps above wrote, read back from their outputs."""
    base = {**config, "layer": "fc", "concept_set": CONCEPTS}
    rows = {label: read_metrics(matching_dir({**base, **v}) / METRICS) for label, v in VARIANTS.items()}
    pen = penultimate_agreement({**base, "layer": "penultimate"})
    auroc = read_auroc(eval_dir(base) / TEST_EVAL)
    shown = read_total_results(visualization_dir(base) / TOTAL_RESULTS)
    rivals = {layer: read_comparison(describers_dir(matching_dir({**base, "layer": layer}) / CONCEPTS_JSON)
                                     / DESCRIBERS) for layer in ("fc", "penultimate")}
    sanity_dir = model_dir({**base, "reinit_seed": config["sanity_seed"]})
    sanity = read_sanity(sanity_dir / SANITY)["layers"]
    significance = {layer: {w: {k: r[w][k] for k in ("significant", "tested", "testable", "share")}
                            for w in ("target", "reinitialised")}
                    for layer, r in sanity.items()}
    ablation = PEN_RUN.parent / ABLATION
    ablated = read_ablation(ablation, PEN_RUN) if ablation.is_file() and not skipped else None
    audit = audit_results(base, tie)
    return {"auroc": auroc, "fc": rows, "penultimate": pen, "significance": significance, "describers": rivals,
            "ablation": {"penultimate": ablated}, "audit": audit, "pointing_game": shown["pointing_game"],
            "visualization": {"images": len(shown["images"]), "num_top_neuron": shown["config"]["num_top_neuron"]},
            "figures": figures(base, shown, rivals, sanity_dir, audit["figures"]), "times_s": times, "config": config}


def figures(base: dict, shown: dict, rivals: dict, sanity_dir: Path, audits: dict[str, str]) -> list[dict]:
    """Every figure the steps above wrote, one entry per kind: where (a path, or a pattern for several), its
    files and what it shows."""
    vis, boxes = visualization_dir(base) / "figures", bbox_dir(base)
    drawn = {kind: box_figure(boxes, "*", kind) for kind in ("boxes", "blend")}  # the patterns of step 5's files
    out = [(eval_dir(base) / ROC_CURVES, None,
            f"the classifier's ROC curve per class on the {base['n_test']} test phantoms, AUROC in the legend"),
           (drawn["boxes"], sorted(boxes.glob(drawn["boxes"].name)),
            "the drawn images, each with its ground-truth boxes outlined in their finding's colour"),
           (drawn["blend"], sorted(boxes.glob(drawn["blend"].name)),
            "the same images, their boxes filled at alpha 0.3"),
           (vis / "*.png", [vis.parent / p["figure"] for r in shown["images"] for p in r["predictions"]],
            "one panel per (image, predicted class): the image with its boxes, the top neuron's map with its Taylor "
            "score and concepts, the overall Taylor map with its peak (x); colour bars and a caption say what they "
            "are"),
           (sanity_dir / SANITY_PNG, None,
            "per layer the share of significant names, the target against it re-initialised, and both targets' "
            "most frequent first concepts")]
    for layer, table in rivals.items():
        run, own = Path(table["run"]), describers_dir(table["run"])
        what = [w for w, has in (("hit rate and F1 against the class names", "fc" in table["rows"]["mammi"]),
                                 ("agreement with the truth (named, first concept)", table["truth"]["n"] > 0)) if has]
        out.append((own / DESCRIBERS_PNG, None, f"{layer}: each describer's {' and '.join(what) or 'names'} (± 1 "
                                                  f"standard error), and how often two give a neuron the same first "
                                                  f"concept"))
        s = table.get("sensitivity") or {}
        if s.get("figure"):
            beside = "F1" if layer == "fc" else "concepts per neuron"
            out.append((Path(s["figure"]), None, f"{layer}: MAMMI's {s['metric']} and {beside} over adaptive_percent x "
                                                 f"alpha, on fixed scales (values in the cells, the run's own bold)"))
        out.append(([run.parent / ABLATION_PNG, own / "*" / ABLATION_PNG],
                    [run.parent / ABLATION_PNG] + [own / n / ABLATION_PNG for n in table["rows"] if n != "mammi"],
                    f"{layer}: per finding, the drop of its logit when the neurons a describer names for it are "
                    f"zeroed, against random sets of as many (MAMMI's, then each rival's)"))
    out += [(Path(f), None, f"the shortcut audit of the {name} target: per class its top concepts by share of the "
                            f"evidence for it, z beside each, flagged concepts orange, the class's own words blue")
            for name, f in audits.items()]
    listed = [([str(w) for w in (where if isinstance(where, list) else [where])],
               [str(f) for f in (files if files is not None else [where]) if Path(f).is_file()], shows)
              for where, files, shows in out]
    return [{"where": where, "files": files, "shows": shows} for where, files, shows in listed if files]


def report(summary: dict) -> None:
    """The results, each number with what it counts and over what."""
    cfg = summary["config"]
    print("\n== Results on the phantom world (each number with what it counts; the figures written are listed last)")
    auroc = summary["auroc"]
    print(f"classifier AUROC on the {cfg['n_test']} held-out test phantoms (area under the ROC curve of a class's "
          f"probability against its label: 0.5 is chance, 1 perfect):")
    print("  " + ", ".join(f"{k} {v:.3f}" for k, v in auroc.items()) +
          f"; mean over the {len(auroc)} classes {np.nanmean(list(auroc.values())):.3f}")
    fc = summary["fc"]
    first = next(iter(fc.values()))
    n = first["hit_rate"]["n"]
    print(f"\nfc layer: its {n} neurons are the class logits; each named from the "
          f"{first['config']['n_concepts']:,}-word concept set and checked against its class name")
    print(f"{'variant':<52} {'hit rate':>9} {'precision':>10} {'F1':>6}")
    for label, m in fc.items():
        hits = round(m["hit_rate"]["mean"] * m["hit_rate"]["n"])
        print(f"{label:<52} {hits:>6}/{n:<2} {m['precision']['mean']:>10.3f} {m['f1']['mean']:>6.3f}")
    print(f"  hit rate: neurons one of whose concepts is their class name, of {n} (one neuron moves it by {1 / n:.3f})")
    print(f"  precision: per neuron 1 / (its number of concepts) on a hit, else 0; mean over the {n}")
    print(f"  F1: per neuron 2 x precision / (precision + 1) on a hit, else 0; mean over the {n}")
    penultimate_lines(summary)
    significance_lines(summary["significance"], cfg)
    describer_table(summary["describers"], summary["penultimate"])
    ablation_lines(summary["ablation"]["penultimate"])
    audit_lines(summary["audit"], cfg)
    pointing_line(summary)
    root = Path(cfg["save_root"])
    print(f"\nfigures written (under {root}/):")
    for f in summary["figures"]:
        where = ", ".join(str(Path(w).relative_to(root)) if Path(w).is_relative_to(root) else w for w in f["where"])
        count = f" ({len(f['files'])} files)" if len(f["files"]) > 1 else ""
        print(f"  {where}{count}: {f['shows']}")
    print("times: " + ", ".join(f"{k} {v:.0f}s" for k, v in summary["times_s"].items()))


def penultimate_lines(summary: dict) -> None:
    """The penultimate agreement with the findings of MAMMI's own examples, and why the describer table's differs."""
    p, cfg, truth = summary["penultimate"], summary["config"], summary["describers"]["penultimate"]["truth"]
    mammi = summary["describers"]["penultimate"]["rows"]["mammi"]["truth"]["any"]
    print(f"\npenultimate layer ({p['neurons']} neurons): {p['agree']} of {p['selective']} ({p['share']:.1%}) have "
          f"among their MAMMI concepts the finding their examples are rich in")
    print(f"  {p['selective']}: neurons whose MAMMI examples (the images MAMMI chose for each) hold some finding at "
          f"least {cfg['lift_min']:g}x as often as the {cfg['n_probe']} probing images do (lift); {p['agree']}: those "
          f"whose concepts include it")
    print(f"  the describer table below takes each neuron's top {cfg['truth_images']} images instead, the same for "
          f"every describer: {round(mammi['mean'] * mammi['n'])} of {truth['n']} for MAMMI; other images, so other "
          f"neurons and findings qualify")


def significance_lines(significance: dict, cfg: dict) -> None:
    print(f"\nsignificant names: named neurons whose examples score higher on their name than as many random probing "
          f"images score on the best name the method would give them (Benjamini-Hochberg q <= {cfg['fdr']:g}):")
    for layer, r in significance.items():
        print(f"  {layer:<12} target {names_counted(r['target'])}   re-initialised {names_counted(r['reinitialised'])}")
    print(f"  target: {cfg['checkpoint']}; re-initialised: the same {cfg['model']} with fresh random weights (seed "
          f"{cfg['sanity_seed']}); names that survive that describe the images, not the model")


def names_counted(r: dict) -> str:
    """'492 of 1024 (48%)'; '-' for the share of none; a layer step 3 could not test says so."""
    if not r["testable"] and r["tested"] == 0 and r["significant"] == 0 and r["share"] is None:
        return "not testable"
    share = "-" if r["share"] is None else f"{r['share']:.0%}"
    return f"{r['significant']:>4} of {r['tested']:<4} ({share})"


def describer_table(rivals: dict, own: dict) -> None:
    """MAMMI and its rivals side by side: the fc metrics and the penultimate agreement with the truth."""
    fc, pen = rivals["fc"], rivals["penultimate"]
    t = pen["truth"]
    print("\nMAMMI against other describers, from the same inputs (mean±standard error, the error std/sqrt(n))")
    print(f"{'describer':<13} {'fc hit rate':>16} {'precision':>13} {'F1':>13} {'cosine':>13} "
          f"{'penultimate: named':>24} {'first concept':>14} {'faithfulness (median z)':>24}")
    none = {"mean": math.nan, "se": math.nan, "n": 0}
    n_fc, encoder = None, None
    for name, r in fc["rows"].items():
        m, p = r["fc"], pen["rows"].get(name, {}).get("truth", {"any": none, "top1": none})
        encoder, cos = next(((e, v) for e, v in m["cosine"].items() if "mean" in v), (encoder, none))
        n_fc = m["hit_rate"]["n"]
        hits = round(m["hit_rate"]["mean"] * n_fc)
        agree = round(p["any"]["mean"] * p["any"]["n"]) if p["any"]["n"] else 0
        f = pen["rows"].get(name, {}).get("faithfulness")
        faithful = "-" if not f or f["median_z"] is None else f"{f['median_z']:.1f} ({f['findings']}/{f['of']})"
        print(f"{name:<13} {hits:>4}/{n_fc:<2} {pm(m['hit_rate'])} {pm(m['precision'])} {pm(m['f1'])} {pm(cos)} "
              f"{agree:>5}/{p['any']['n']:<4} {pm(p['any'])} {pm(p['top1'])} {faithful:>24}")
    print(f"  fc hit rate, precision, F1: as above, over the {n_fc} fc neurons; cosine: mean cosine similarity "
          f"({encoder}) of each fc neuron's concepts with its class name")
    print(f"  penultimate truth: {t['rule']}, for the {t['n']} neurons that have one; named: those whose concepts "
          f"include it (MAMMI's own examples instead: {own['agree']} of {own['selective']}, above)")
    print(f"  first concept: of the same {t['n']}, those whose first (best-scoring) concept is it")
    print("  faithfulness: median over the findings of the ablation z (below) of the neurons the describer names "
          "for each (findings with named neurons / all)")
    for layer, tb in rivals.items():
        for name, why in tb["skipped"].items():
            print(f"  {name} ({layer}) skipped: {why}")
    sensitivity_lines(rivals)


def sensitivity_lines(rivals: dict) -> None:
    """The range of MAMMI's headline metric over its two constants, the run's own cell and the noise of a cell."""
    said = False
    for layer, t in rivals.items():
        s = t.get("sensitivity")
        if not s or s[s["headline"]] is None:
            continue
        if not said:
            print(f"sensitivity: MAMMI re-run from the cached tensors over adaptive_percent "
                  f"{', '.join(f'{v:g}' for v in s['percents'])} x alpha {', '.join(f'{v:g}' for v in s['alphas'])}:")
            said = True
        grid, se = np.array(s[s["headline"]]), s.get(f"{s['headline']}_se")
        cfg = t["config"]
        own = (s["percents"].index(cfg["adaptive_percent"]), s["alphas"].index(cfg["alpha"])) \
            if cfg["adaptive_percent"] in s["percents"] and cfg["alpha"] in s["alphas"] else None
        n = t["rows"]["mammi"]["fc"]["hit_rate"]["n"] if s["headline"] == "hit_rate" else None
        show = (lambda v: f"{round(v * n)}/{n}") if n else (lambda v: f"{v:.3f}")  # the hit rate as neurons
        noise = f"; standard error of a cell {np.nanmin(se):.3f}-{np.nanmax(se):.3f}" if se is not None else ""
        mine = (f" (the run's p = {cfg['adaptive_percent']:g}, alpha = {cfg['alpha']:g}: {show(grid[own])})"
                if own else "")
        what = s["metric"] if s["metric"].startswith(layer) else f"{layer}: {s['metric']}"
        print(f"  {what} {show(np.nanmin(grid))} to {show(np.nanmax(grid))}{mine}{noise}")


def ablation_lines(result: dict | None) -> None:
    """MAMMI's penultimate neurons of each finding zeroed on the test split, against random sets."""
    if result is None:
        return
    z = {r["finding"]: r["z"] for r in result["findings"] if r["z"] is not None}
    print(f"\nablation of MAMMI's penultimate neurons, z per finding ({result['split']} split):")
    print("  " + ", ".join(f"{f} {v:.1f}" for f, v in z.items()))
    print(f"  z: (effect of zeroing the neurons named for the finding - the mean effect of {result['draws']} random "
          f"sets of as many neurons) / their SD; effect: the mean drop of the finding's logit over the images labelled "
          f"with it, in SDs of that logit")
    others = [r["other_classes"] for r in result["findings"] if r["other_classes"] is not None]
    if z:
        print(f"  z >= 2 in {sum(v >= 2 for v in z.values())} of {len(z)} findings with named neurons; zeroing them "
              f"lowers the other findings' logits by {min(others):.2f} to {max(others):.2f} SD on average (0: they "
              f"serve their own finding alone)")


def audit_lines(audit: dict, cfg: dict) -> None:
    """Per class, each target's flagged concepts side by side; for the tied class, its AUROC with and without the
    object's word."""
    tie, targets = audit["tie"], audit["targets"]
    clean = targets["clean"]
    print(f"\nshortcut audit of the penultimate layer on the {clean['split']} split: per class and target, the "
          f"concepts flagged as possible shortcuts (not the class's own words, share of the evidence for the class > "
          f"{clean['share_min']:g}, z >= {clean['z_min']:g}), each as 'concept #rank share z' (rank by share among "
          f"the class's concepts)")
    print(f"  clean target: {cfg['checkpoint']}" + (f"; shortcut target: {tie['checkpoint']}, in whose training split "
                                                    f"the {tie['object']} was on {tie['share']:.0%} of the "
                                                    f"{tie['class']} images" if tie else ""))
    flags = {name: {r["class"]: ", ".join(f"{c['concept']} #{i + 1} {c['share']:.2f} z {c['z']:.1f}"
                                          for i, c in enumerate(r["concepts"]) if c["flagged"])
                    for r in a["classes"]}
             for name, a in targets.items()}
    classes = [r["class"] for r in clean["classes"]]
    print(f"  {'class':<19} " + " ".join(f"{name + ' target':<58}" for name in targets).rstrip())
    for cls in classes:
        if any(flags[name].get(cls) for name in targets):
            print(f"  {cls:<19} " + " ".join(f"{flags[name].get(cls) or 'none':<58}" for name in targets).rstrip())
    calm = [cls for cls in classes if not any(flags[name].get(cls) for name in targets)]
    if calm:
        print(f"  none flagged by {'either target' if tie else 'the target'}: {', '.join(calm)}")
    if not tie:
        return
    print(f"  hidden stratification of {tie['class']} by '{tie['word']}' (the {tie['object']}): the VLM sees "
          f"'{tie['word']}' in an image when it is among the image's {clean['seen_top']} best-scored concepts; "
          f"gap = with - without")
    for name, a in targets.items():
        s = next(s for r in a["classes"] if r["class"] == tie["class"] for s in r["stratified"]
                 if s["concept"] == tie["word"])
        print(f"    {name} target: {stratum_words(s)}")


def pointing_line(summary: dict) -> None:
    g, pg, vis = summary["pointing_game"]["overall"], summary["pointing_game"], summary["visualization"]
    k = vis["num_top_neuron"]
    print(f"\npointing game on {vis['images']} images with boxes: of the {g['n'] + pg['pairs_without_boxes']} (image, "
          f"predicted class) pairs, {g['n']} have a box of that class, and in {g['hits']} of them the overall map ("
          f"{'the top neuron' + chr(39) + 's map' if k == 1 else f'the top {k} neurons' + chr(39) + ' maps'} weighted "
          f"by Taylor score) peaks inside it; mean share of the map's positive mass inside those boxes "
          f"{g['mass_inside_mean']:.2f}")


if __name__ == "__main__":
    main(run)
