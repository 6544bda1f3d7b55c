"""Step 6: which named neurons drive each prediction, and where they look.

    python visualization.py config/nih_densenet121.py
    python visualization.py config/demo.py --max_drawn 24 --num_top_neuron 3

For each image of the box file found under data_root and each class predicted at or above its
threshold (Threshold.csv of target_model_perform.py), the penultimate neurons are ranked by their
first-order Taylor score for that class; the top `num_top_neuron` are shown, each as its spatial
map (zeroed below the 70th percentile) in its own colour, titled with its stage-3 concepts, beside
the image with its ground-truth boxes and the overall Taylor-weighted map (each map zeroed below
the 90th percentile). Beyond the release: where the image has boxes of the predicted class, the
pointing game (is the overall map's peak inside one?) and the share of its mass inside them.
Writes figures/{image}_{class}.png and total_results.json.
"""
import pipeline.guard  # noqa: F401  (first: Ctrl-C and the console's encoding are handled from here on)

# isort: split
import textwrap
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch
from matplotlib.cm import ScalarMappable
from matplotlib.colors import ListedColormap, Normalize
from matplotlib.patches import Patch, Rectangle
from tqdm import tqdm

from core.digests import file_digest
from dataset.boxes import disease_colour, load_boxes, scale_to, to_probe_crop
from dataset.files import read_image
from dataset.nih import model_input_args, probe_crop, resolve_images, to_model_input
from dataset.probe import label_key, output_names
from mammi.attribution import taylor_scores, top_neurons
from mammi.maps import NEURON_COLOURS, OVERALL_COLOUR, neuron_map, overall_map, overlay
from mammi.pointing import pointing
from models import pick_device
from models.target import checkpoint_of, preprocessing, target_as_probed
from pipeline.cache import claim, holds_claims, save_json, save_png
from pipeline.cli import PipelineError, check_stored, configure, main, print_config
from pipeline.evaluation import read_thresholds
from pipeline.outputs import (
    CONCEPTS,
    THRESHOLDS,
    TOTAL_RESULTS,
    eval_dir,
    matching_dir,
    panel_path,
    read_matching,
    stored_classes,
    target_key,
    upstream_constants,
    visualization_dir,
)

# -----------------------------------------------------------------------------
# The boxes and images to show are bbox_img.py's constants; the concepts.json to explain is named by
# concept_matching.py's and example_selection.py's, or given. The target, its checkpoint and
# preprocessing are those that produced the concepts (stored with them).
concepts = ""                   # the penultimate layer's concepts.json; default: the one steps 2-3 wrote for these constants
thresholds = ""                 # Threshold.csv (with the eval.json step 4 writes beside it); default: step 4's eval folder
num_top_neuron: "[1, 100]" = 1  # neurons shown per (image, predicted class)
neuron_percentile: "[0, 100]" = 70.0  # each shown neuron's map is zeroed below this percentile
overall_percentile: "[0, 100]" = 90.0  # ... and below this one inside the overall map
batch_size: "[1, 8192]" = 16
device: "auto | cpu | cuda | cuda:N | mps" = "auto"  # auto = CUDA when present
# -----------------------------------------------------------------------------
config = configure(globals(), reads=("bbox_img.py", "concept_matching.py", "example_selection.py"))
LAYER = "penultimate"           # Taylor scores are taken where the head reads its input
# What decided the concepts: refused when given here with another value than the one stored with them.
UPSTREAM = upstream_constants()


@holds_claims
def run():
    named, concepts_path, stored = neuron_concepts()
    print_config("visualization", config)
    out_dir = claim(visualization_dir(config))
    prep = preprocessing(config)  # as stored with the concepts; the family's where an older output lacks it
    model, resize, crop = config["model"], prep["resize"], prep["crop"]
    classes = stored_classes(stored)
    classes = output_names(classes, len(classes or []))
    thr_path = Path(thresholds) if thresholds else eval_dir(config) / THRESHOLDS
    target = {**config, **prep}  # the target that made the concepts' activations, re-initialised or not
    seed = config.get("reinit_seed", -1)
    thr = read_thresholds(thr_path, classes, target_key(target), f"{config['checkpoint'] or model}"
                          + (f", re-initialised with seed {seed}" if seed >= 0 else ""))
    if np.isnan(thr).any():
        unset = ", ".join(c for c, t in zip(classes, thr) if np.isnan(t))
        print(f"note: {thr_path} has no threshold for {unset}: never predicted")
    ckpt = checkpoint_of(model, config["checkpoint"])
    boxes, box_path = load_boxes(config["box_source"], config["box_file"])
    names, paths = resolve_images(config["data_root"], list(boxes), skip_missing=True)
    print(f"{box_path}: {len(boxes)} images, {len(names)} found under {config['data_root']}, "
          f"{len(boxes) - len(names)} missing")
    if config["max_drawn"]:
        names, paths = names[:config["max_drawn"]], paths[:config["max_drawn"]]

    dev = pick_device(device)
    norm = model_input_args(prep)
    net = target_as_probed(target, True, len(classes))[0].to(dev)
    # total_results.json, the one the gallery reads, is removed before the panels are redrawn: a run failing
    # midway leaves none listing panels drawn since
    (out_dir / TOTAL_RESULTS).unlink(missing_ok=True)
    results, t0 = [], time.time()
    for b in tqdm(range(0, len(names), batch_size), desc="images", unit="batch"):
        crops = [probe_crop(p, resize, crop) for p in paths[b:b + batch_size]]
        logits, taylor, maps = taylor_scores(net, torch.stack([to_model_input(c, **norm) for c in crops]).to(dev))
        if maps.shape[1] != len(named):
            raise PipelineError(f"{concepts_path} names {len(named)} neurons but the {model} penultimate layer has "
                                f"{maps.shape[1]}; run concept_matching.py --model {model} --layer penultimate")
        probs, taylor, maps = torch.sigmoid(logits).cpu().numpy(), taylor.cpu(), maps.cpu()
        for i, (name, path, img) in enumerate(zip(names[b:b + batch_size], paths[b:b + batch_size], crops)):
            results.append(explain(name, boxes[name], path, np.asarray(img), probs[i], taylor[i], maps[i],
                                   thr, named, classes, out_dir, resize, crop))
    print(f"{len(results)} images, {sum(len(r['predictions']) for r in results)} panels in {time.time() - t0:.1f}s")

    summary = pointing_summary(results, classes)
    save_json(out_dir / TOTAL_RESULTS, {
        "config": {**config, "layer": LAYER, "checkpoint": str(ckpt or ""), "thresholds": str(thr_path),
                   "concepts": str(concepts_path), "box_file": str(box_path)},
        "concepts_digest": file_digest(concepts_path),  # the names the panels are titled with: the gallery's link
        "pointing_game": summary, "images": results})
    print_pointing(summary)
    print("outputs:")
    print(f"  {panel_path(out_dir, '{image}', '{class}')}")
    print(f"  {out_dir / TOTAL_RESULTS}")


def neuron_concepts():
    """Each penultimate neuron's concept names from step 3 (with a word when it has none); the
    constants that produced them are taken from concepts.json and its examples.json."""
    path = Path(concepts) if concepts else matching_dir({**config, "layer": LAYER}) / CONCEPTS
    if not path.is_file():
        raise PipelineError(f"{path} not found; run example_selection.py and concept_matching.py with --layer {LAYER} "
                            f"and the same experiment file, or pass --concepts PATH")
    data, ex_json, ex = read_matching(path)
    if not data["neurons"]:
        raise PipelineError(f"{path} lists no neurons; rerun concept_matching.py --layer {LAYER}")
    stored = data["config"]
    if stored.get("layer") != LAYER:
        raise PipelineError(f"{path} names the {stored.get('layer')} layer, not the {LAYER} one; "
                            f"pass the concepts.json of concept_matching.py --layer {LAYER}")
    check_stored(config, stored, UPSTREAM, path)
    check_stored(config, ex["config"], UPSTREAM, ex_json)
    config.update({k: stored[k] for k in UPSTREAM if k in stored})
    # and what step 2 stored of the target it ran (checkpoint, re-initialisation, preprocessing): rebuilt as it was
    config.update({k: v for k, v in ex["config"].items() if k in UPSTREAM})
    named = {}
    for n in data["neurons"]:
        words = [c["concept"] for c in n["concepts"]]
        named[n["neuron"]] = words or [f"({n.get('status', 'none')})"]
    return [named.get(k, ["(absent)"]) for k in range(max(named) + 1)], path, stored


def explain(name, anns, path, img, probs, taylor, maps, thr, named, classes, out_dir, resize, crop):
    """One image: ground truth in crop coordinates, and for each predicted class its top neurons,
    maps, pointing result and panel."""
    size = read_image(path).size
    gt = to_probe_crop(scale_to(anns, size), size, resize, crop)
    preds = []
    for j in np.flatnonzero(probs >= np.nan_to_num(thr, nan=np.inf)):
        top = top_neurons(taylor[j], num_top_neuron)
        scores = taylor[j, top]
        shown = [neuron_map(maps[k], neuron_percentile, crop) for k in top]
        overall = overall_map(maps[top], scores, overall_percentile, crop)
        cls_boxes = [g["box"] for g in gt if label_key(g["label"]) == label_key(classes[j])]  # as labels join classes
        pg = pointing(overall, cls_boxes) if cls_boxes else None
        fig_path = panel_path(out_dir, Path(name).stem, classes[j].replace(' ', '_'))
        neurons = [{"neuron": k, "taylor": float(s), "concepts": named[k]} for k, s in zip(top, scores.tolist())]
        save_png(fig_path, panel(name, classes[j], float(probs[j]), float(thr[j]), img, gt, neurons,
                                 shown, overall, cls_boxes, pg))
        preds.append({"class": classes[j], "probability": float(probs[j]), "threshold": float(thr[j]),
                      "neurons": neurons, "pointing": pg, "figure": str(fig_path.relative_to(out_dir))})
    return {"image": name, "ground_truth": sorted({a["label"] for a in anns}),
            "boxes": [{"label": g["label"], "box_crop": [round(v, 2) for v in g["box"]]} for g in gt],
            "probabilities": {c: float(p) for c, p in zip(classes, probs)}, "predictions": preds}


def panel(name, cls, prob, t, img, gt, neurons, shown, overall, cls_boxes, pg) -> plt.Figure:
    """Image with boxes | one overlay per top neuron | overall overlay; under each overlay the scale of
    its tint, and a caption saying what the Taylor score and the maps are."""
    n = len(neurons)
    fig, axes = plt.subplots(1, n + 2, figsize=(3.3 * (n + 2), 5.3), dpi=100)
    axes[0].imshow(img)
    draw_rects(axes[0], gt)
    axes[0].set_title("ground truth\n" + wrap(", ".join(sorted({g["label"] for g in gt})) or "no boxes"), fontsize=10)
    labels = sorted({g["label"] for g in gt})
    if labels:
        axes[0].legend(handles=[Patch(facecolor="none", edgecolor=np.array(disease_colour(l)) / 255, lw=2, label=l)
                                for l in labels], loc="upper center", bbox_to_anchor=(0.5, -0.02), fontsize=8,
                       frameon=False, ncol=2)
    for r, (ax, nr, m) in enumerate(zip(axes[1:], neurons, shown)):
        colour = NEURON_COLOURS[r % len(NEURON_COLOURS)]
        ax.imshow(overlay(img, m, colour))
        ax.set_title(f"neuron {nr['neuron']}  (Taylor score {nr['taylor']:.3g})\n" + wrap(", ".join(nr["concepts"])),
                     fontsize=10, color=np.array(colour) / 255 * 0.6)
        tint_scale(fig, ax, m, colour, f"neuron {nr['neuron']}'s activation")
    ax = axes[-1]
    ax.imshow(overlay(img, overall, OVERALL_COLOUR))
    draw_rects(ax, [{"label": cls, "box": b} for b in cls_boxes])
    title = f"overall map (top {n} neuron{'s' if n > 1 else ''})"
    if pg is not None:
        title += f"\npointing: {'hit' if pg['hit'] else 'miss'}"
        if pg["mass_inside"] is not None:
            title += f", {100 * pg['mass_inside']:.0f}% of mass in box"
        if pg["peak"]:
            ax.plot(*pg["peak"], marker="x", color="white", ms=10, mew=2.5)
    ax.set_title(title, fontsize=10)
    tint_scale(fig, ax, overall, OVERALL_COLOUR, "Taylor-weighted activation")
    for a in axes:
        a.set_xticks([])
        a.set_yticks([])
    fig.suptitle(f"{name}: {cls}  p = {prob:.3f} (threshold {t:.3f})", fontsize=12)
    fig.text(0.01, 0.01, caption(n, cls), fontsize=8, va="bottom", ha="left", wrap=True)
    fig.subplots_adjust(bottom=0.2, top=0.86)
    return fig


def caption(n: int, cls: str) -> str:
    """What the panel's numbers and maps are, in the terms of mammi/attribution.py and mammi/maps.py."""
    return textwrap.fill(
        f"Taylor score: the neuron's pooled activation times the gradient of the {cls} logit with respect to it, "
        f"its first-order contribution to that logit (exact under a linear head); shown: the {n} neuron"
        f"{'s' if n > 1 else ''} of highest score. "
        f"Neuron map: its activation over the image, zeroed below its {neuron_percentile:g}th percentile. "
        f"Overall map: the shown neurons' maps, each zeroed below its {overall_percentile:g}th percentile, summed "
        f"with their Taylor scores as weights (scaled to sum to 1 in absolute value). Tint: opacity rises with the "
        f"map's value, from none at 0 to full at its maximum (colour bars; negative values untinted). "
        f"Pointing: hit when the overall map's peak (x) lies inside a box of the predicted class.", 57 * (n + 2))


def tint_scale(fig, ax, heat: np.ndarray, colour, what: str) -> None:
    """A colour bar under an overlay: the tint a mid-grey pixel takes at each value of the map, 0 to its maximum."""
    top = float(np.clip(heat, 0, None).max())
    ramp = np.linspace(0, 1, 256)[None]
    tints = overlay(np.full((1, 256, 3), 128, np.uint8), ramp, colour)[0] / 255  # overlay scales to the ramp's max
    bar = ScalarMappable(Normalize(0, top if top > 0 else 1), ListedColormap(tints))
    cb = fig.colorbar(bar, ax=ax, orientation="horizontal", fraction=0.05, pad=0.03)
    cb.set_label(what + ("" if top > 0 else " (no positive value: untinted)"), fontsize=8)
    cb.ax.tick_params(labelsize=7)


def draw_rects(ax, anns):
    for a in anns:
        x1, y1, x2, y2 = a["box"]
        ax.add_patch(Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, lw=2,
                               edgecolor=np.array(disease_colour(a["label"])) / 255))


def wrap(text: str, width: int = 32, lines: int = 3) -> str:
    return textwrap.fill(text, width, max_lines=lines, placeholder=" ...")


def pointing_summary(results, classes) -> dict:
    """Pointing-game accuracy and mean mass share inside the boxes, per class and over all
    (image, predicted class) pairs that have boxes of that class."""
    rows = [(p["class"], p["pointing"]) for r in results for p in r["predictions"] if p["pointing"] is not None]

    def stats(items):
        hits = [pg["hit"] for pg in items]
        mass = [pg["mass_inside"] for pg in items if pg["mass_inside"] is not None]
        return {"n": len(items), "hits": int(sum(hits)), "accuracy": float(np.mean(hits)) if hits else None,
                "mass_inside_mean": float(np.mean(mass)) if mass else None}

    per = {c: stats([pg for k, pg in rows if k == c]) for c in classes}
    return {"per_class": {c: s for c, s in per.items() if s["n"]}, "overall": stats([pg for _, pg in rows]),
            "pairs_without_boxes": sum(p["pointing"] is None for r in results for p in r["predictions"])}


def print_pointing(summary):
    rows = {**summary["per_class"], "overall": summary["overall"]}
    if not summary["overall"]["n"]:
        print("pointing game: no predicted class has a ground-truth box on its image")
        return
    table = pd.DataFrame.from_dict(rows, orient="index")[["n", "hits", "accuracy", "mass_inside_mean"]]
    table = table.astype({"n": int, "hits": int, "accuracy": float, "mass_inside_mean": float})
    print("pointing game (overall map's peak inside a box of the predicted class):")
    print(table.to_string(float_format=lambda v: f"{v:.3f}"))


if __name__ == "__main__":
    main(run)
