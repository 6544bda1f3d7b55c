"""Step 7: a gallery of every named neuron, one web page that works offline from a plain file.

    python gallery.py config/nih_densenet121.py
    python gallery.py config/demo.py --max_examples 12

Reads stage-3 runs: every concepts.json under --save_root (of any layer or describer, with similarity.pt
beside it when there is one), or those given as --runs. Everything else is found from where that file
lies, never from a path an output stored (so a results folder can be moved whole): its examples.json is
the nearest one in a folder above it (pipeline/outputs.py, locate_examples), examples.csv (each
example's labels) lies beside that, and activations.pt (the histograms) in the layer folder above. The
images come from --data_root, else from the image folder examples.json names, and are re-read and
compared with the data key examples.json stored, so thumbnails are made only of the images step 2 read.
visualization.py's total_results.json (every one under --save_root, or --visualization) adds the panels
in which a neuron is the top one, linked by the digest of the concepts.json they name. A rival
describer's neurons show the images it scored (CLIP-Dissect's and top-k mean's top top_k by activation,
re-taken from activations.pt; a label-based one's: none), never MAMMI's examples. Runs are shown only
while their keys chain (concepts.json stores the key of its examples.json). An experiment file (or
--dataset, --model) limits the default runs to its own. Writes only under --save_root:
{gallery_dir}/index.html and {gallery_dir}/thumbs/, one JPEG per distinct image, named by a digest of
the image file (path, size, mtime), the crop and the thumbnail size, so each is made once and reused,
and images moved elsewhere or another crop get new ones.

The page embeds one compact JSON block and renders the list lazily (a chunk of cards at a time, the
next when the list's end scrolls near): 2,048 neurons open as fast as 20. Figures are SVG drawn
in the page from that JSON, not matplotlib PNGs: a PNG per neuron and figure would be 4,096 files
and minutes of matplotlib for a penultimate layer, most never looked at, while the SVG of one
neuron costs a millisecond when its view opens, stays sharp at any zoom, and needs no library.
Every string from a file reaches the page through JSON.parse and textContent, never as markup.
The page itself is gallery.html, gallery.css and gallery.js beside this file; the style and the script
are written into index.html, which so stays one file.
"""
import pipeline.guard  # noqa: F401  (first: Ctrl-C and the console's encoding are handled from here on)

# isort: split
import base64
import html
import io
import json
import os
import re
import time
from pathlib import Path
from urllib.parse import quote

import numpy as np
import torch

from core.digests import code_digest, digest, file_digest
from dataset.nih import probe_crop, resolve_images
from dataset.probe import load_probe, output_names
from mammi.ablation import untested
from mammi.describers import SCORES
from mammi.method import alpha_cut, select_examples
from models import pick_device
from models.target import warn_untrained
from pipeline.cache import save_bytes
from pipeline.cli import PipelineError, configure, main, print_config
from pipeline.outputs import (
    ABLATION,
    ACTIVATIONS,
    CONCEPTS,
    EXAMPLES_CSV,
    GALLERY_INDEX,
    SIMILARITY,
    TOTAL_RESULTS,
    concept_set_name,
    model_dir,
    read_ablation,
    read_activations,
    read_example_labels,
    read_matching,
    read_similarity,
    read_total_results,
    stored_classes,
    stored_examples_config,
)
from pipeline.overlays import KINDS, example_overlays

# -----------------------------------------------------------------------------
runs = ""                       # comma-separated concepts.json files of stage 3 (any layer, any describer) or folders holding them; default: every concepts.json under save_root (of the given dataset and model, when an experiment file or an option names them)
visualization = ""              # comma-separated total_results.json of visualization.py (or folders holding them) whose panels to link; default: every one under save_root
# save_root is example_selection.py's; its data_root, when given, replaces the image folder stored in
# examples.json (for images that have moved since).
top_concepts: "[1, 1000]" = 20  # concept scores in a neuron's bar chart
hist_bins: "[1, 1000]" = 40     # bins of a neuron's activation histogram over the probing set
thumb_size: "[8, 4096]" = 112   # side of the example thumbnails in pixels (never upscaled past the crop)
max_examples: "[0, 10**9]" = 100  # example thumbnails kept per neuron (its example count is always the full one)
card_thumbs: "[0, 1000]" = 4    # thumbnails on a neuron's card in the list
overlays = True                 # each example's activation map over its thumbnail in a neuron's view (runs the target once per selection; cached)
gallery_dir = ""                # gallery folder, under save_root; default {save_root}/gallery
# -----------------------------------------------------------------------------
config = configure(globals(), reads=("example_selection.py",))
save_root = config["save_root"]
data_root = config.given.get("data_root", "")
CODE = code_digest("gallery.py")
HERE = Path(__file__).resolve().parent
PAGE_FILES = ("gallery.html", "gallery.css", "gallery.js")  # the page: the markup, with the style and the script it inlines
# The step-2 constants that say which images the probing set is (load_probe's), re-read to check the images
# the thumbnails are made of against the data key step 2 stored.
PROBE_FIELDS = ("labels", "split", "split_file", "skip_missing", "uncertain", "max_images", "seed")
# What an experiment file (or an option) names that picks its runs out of everything under save_root.
EXPERIMENT_FIELDS = ("dataset", "model")
# The layer's significance test as concepts.json's "evidence" states it (README, "How far to trust a name").
EVIDENCE = ("testable", "tested", "significant", "fdr", "draws", "pool", "p_min", "pool_needed")


def run():
    print_config("gallery", config)
    t0 = time.time()
    root = Path(save_root)
    gdir = Path(gallery_dir) if gallery_dir else root / "gallery"
    files = listed(runs, root, CONCEPTS, "concept_matching.py", "runs")
    if not files:
        raise PipelineError(f"no concepts.json under {root}; run concept_matching.py first, "
                            f"or pass --runs PATH[,PATH...] (or --save_root where the outputs are)")
    picked = {k: config[k] for k in EXPERIMENT_FIELDS if k in config.given}
    if picked and not runs:
        files = [f for f in files if of_experiment(f, picked)]
        if not files:
            raise PipelineError(f"no concepts.json under {root} of {', '.join(f'{k} {v}' for k, v in picked.items())}; "
                                f"run concept_matching.py with that experiment file first, or pass --runs PATH[,PATH...]")
    page = {"title": f"Neuron gallery: {root}", "runs": [], "neurons": [], "images": [], "vocab": [], "panels": [],
            "tops": []}
    images, vocab, keys = {}, {}, []
    for path in files:
        try:
            keys.append(load_run(path, page, images, vocab))
        except (KeyError, TypeError, ValueError, IndexError) as e:  # a field missing or of the wrong kind
            raise PipelineError(f"{path} or the examples it names has unexpected content ({type(e).__name__}: {e}); "
                                f"rerun example_selection.py and concept_matching.py") from None
    label_runs(page["runs"], root)
    keys += link_panels(page, listed(visualization, root, TOTAL_RESULTS, "visualization.py", "visualization"), gdir)
    keys += attach_maps(page)

    # Thumbnails: one per distinct image over all runs (runs of one probing set share them).
    thumbs = gdir / "thumbs"
    made = 0
    for (folder, resize, crop), names in group_images(images).items():
        kept, paths = find_images(folder, names)
        for name, p in zip(kept, paths):
            entry = images[(folder, resize, crop, name)]
            fname, new = thumbnail(p, resize, crop, thumbs)
            page["images"][entry][1] = f"thumbs/{fname}"
            made += new
    used = {Path(img[1]).name for img in page["images"] if img[1]}
    stuck = []
    for old in thumbs.glob("*.jpg"):  # thumbnails of images no run shows any more
        if old.name not in used and re.fullmatch(r"[0-9a-f]{24}\.jpg", old.name):
            try:
                old.unlink()
            except OSError as e:  # a folder this user may not change: the page does not show them either way
                stuck.append(e.strerror or type(e).__name__)
    if stuck:
        print(f"note: {len(stuck)} thumbnail(s) in {thumbs} that no run shows any more stay there: cannot remove "
              f"them ({stuck[0]}); the page does not show them")

    page["key"] = digest({"inputs": keys, "config": {k: v for k, v in config.items() if k != "gallery_dir"},
                          "code": CODE, "page": {name: file_digest(HERE / name) for name in PAGE_FILES}})
    index = gdir / GALLERY_INDEX
    save_bytes(index, render(page).encode())
    shareable(index)
    n = len(page["neurons"])
    counts = {s: sum(x["s"] == s for x in page["neurons"]) for s in ("ok", "none", "dead")}
    print(f"{n} neurons in {len(page['runs'])} run(s) ({counts['ok']} named, {counts['none']} none, {counts['dead']} dead); "
          f"{len(used)} thumbnails ({made} new), {len(page['panels'])} panels linked, in {time.time() - t0:.1f}s")
    print("outputs:")
    print(f"  {index}")
    print(f"  {thumbs}/")
    print(f"open it: {index.resolve().as_uri()}")
    return index


def listed(value: str, root: Path, name: str, script: str, option: str) -> list[Path]:
    """The files given as a comma-separated list (each a `name`, or a folder holding some), else every
    `name` under root. Another output given by mistake (an examples.json for a concepts.json) is
    refused: read as a run, it would show every neuron as named by nothing."""
    if value:
        out = []
        for item in filter(None, (v.strip() for v in value.split(","))):
            p = Path(item)
            found = sorted(p.rglob(name)) if p.is_dir() else [p] if p.is_file() and p.name == name else []
            if not found:
                what = "not found" if not p.exists() else (f"holds no {name}" if p.is_dir() else f"is not a {name}")
                raise PipelineError(f"--{option} {item} {what}; pass the {name} written by {script} "
                                    f"(or a folder holding one)")
            out += found
    else:
        out = sorted(root.rglob(name)) if root.is_dir() else []
    seen = {}
    for p in out:
        seen.setdefault(p.resolve(), p)
    return list(seen.values())


def of_experiment(path: Path, picked: dict) -> bool:
    """Whether a concepts.json names the neurons of the dataset and model given (picked), by what its
    examples.json stored; one that cannot be read is kept, for load_run to say what is wrong with it."""
    try:
        stored = stored_examples_config(path)
    except (PipelineError, OSError, ValueError, KeyError, TypeError):
        return True
    return all(stored.get(k) == v for k, v in picked.items())


def load_run(path: Path, page: dict, images: dict, vocab: dict) -> dict:
    """Add one stage-3 run's neurons to the page; returns what identifies its inputs (for the page key)."""
    data, ex_path, ex = read_matching(path)  # refused unless its examples and their activations are still there
    cfg, ex_cfg = data["config"], ex["config"]
    warn_untrained(str(ex_cfg.get("model", "")), bool(ex_cfg.get("untrained", False)))  # said once per target
    if cfg.get("describer") and "examples_key" not in data:  # read_matching checks the key where there is one
        raise PipelineError(f"{path} does not say which examples it was computed from (an older compare_describers.py "
                            f"wrote it), so it may be stale; re-run compare_describers.py")
    by_id = {n["neuron"]: n for n in ex["neurons"]}
    layer = str(cfg.get("layer") or ex_cfg.get("layer") or "?")
    folder = data_root or ex_cfg.get("data_root", "")
    check_images(folder, ex_path, ex_cfg)
    resize, crop = int(ex_cfg.get("resize", 256)), int(ex_cfg.get("crop", 224))
    named = stored_classes(ex_cfg)  # the class names step 2 stored: fc neuron k is class k
    is_fc = layer == "fc" and len(data["neurons"]) == len(named or [])
    classes = output_names(named, len(named)) if is_fc else []
    labels, probs = read_example_labels(ex_path.parent / EXAMPLES_CSV, classes)
    hist = histograms(ex_path, ex)
    bars, cuts, alpha = similarity_bars(path.parent / SIMILARITY, data)
    r = len(page["runs"])
    describer = str(cfg.get("describer") or "MAMMI")
    kind, own = examples_of(cfg, ex_path, ex)
    tops = None
    if kind == "topk":  # rivals of one selection with the same k show the same images: stored once, in page["tops"]
        memo = (str(ex_path.resolve()), cfg["top_k"])
        if memo not in _tops_at:
            _tops_at[memo] = len(page["tops"])
            page["tops"].append({"x": {}, "t": {}, "mp": {}})
        tops = page["tops"][_tops_at[memo]]
    p = ex_cfg.get("adaptive_percent")
    selection = {"mammi": f"top {ex_cfg.get('topk')}" if ex_cfg.get("selection") == "topk"
                 else f"adaptive, p = {p:g}%" if isinstance(p, (int, float)) else "adaptive",
                 "topk": f"its top {cfg.get('top_k')} by activation"}.get(kind, "")
    # What tells runs of one describer, layer and model apart, each as it reads on a label.
    settings = {"selection": selection, "scoring": {True: "adaptive scores", False: "plain scores"}.get(cfg.get("adaptive")),
                "prompt": cfg.get("template_ver") and f"prompt {cfg['template_ver']}",
                "alpha": cfg.get("alpha") is not None and f"alpha {cfg['alpha']:g}",
                "concepts": cfg.get("concept_set") and concept_set_name(cfg), "vlm": cfg.get("model_clip")}
    score = SCORES.get(describer.lower() if kind == "mammi" else describer, ("score", "as the describer reported it"))
    why_not = untested(str(ex_cfg.get("layer") or layer))
    evidence = data.get("evidence") if isinstance(data.get("evidence"), dict) else None
    page["runs"].append({"path": str(path), "layer": layer, "model": model_dir({"save_root": "", **ex_cfg}).name,
                         "describer": describer, "vlm": str(cfg.get("model_clip") or ""),
                         "selects": cfg.get("vocabulary") != "findings",  # a label-based describer uses no examples
                         "examples": kind, "top_k": cfg.get("top_k") if kind == "topk" else None,
                         **({"tops": _tops_at[memo]} if tops is not None else {}),
                         "untrained": bool(ex_cfg.get("untrained", False)) or ex_cfg.get("reinit_seed", -1) >= 0,
                         "settings": {k: str(v) for k, v in settings.items() if v},
                         "concept_set": str(cfg.get("concept_set", "")), "selection": selection,
                         "score": list(score), "per_example": kind == "mammi",
                         "alpha": alpha, "n_images": hist["n"] if hist else None, "fc": is_fc,
                         "fdr": cfg.get("fdr"), "evidence": evidence and {k: evidence.get(k) for k in EVIDENCE},
                         "ablation": None if why_not else ablation_rows(path.parent / ABLATION, path),
                         "ablation_note": why_not})
    for n in data["neurons"]:
        k = n["neuron"]
        e = by_id[k]
        chosen = [[str(c["concept"]), sig(c["score"])] for c in n.get("concepts", [])]
        status = n.get("status") or ("dead" if e.get("dead") else ("ok" if chosen else "none"))
        mine = e if own is None else own.get(k, {"examples": [], "threshold": None})
        shown = []
        for x in mine["examples"][:max_examples] if tops is None or str(k) not in tops["x"] else []:
            key = (folder, resize, crop, x["image_id"])
            if key not in images:
                images[key] = len(page["images"])
                page["images"].append([x["image_id"], None, labels.get(x["image_id"], "")])
            pr = probs.get((k, x["image_id"]))
            shown.append([images[key], sig(x["activation"])] + ([sig(pr)] if pr is not None else []))
        # The examples its score was summed or averaged over (a dead neuron has none; a label-based describer
        # scores every probing image and selects none).
        count = 0 if status == "dead" or kind == "none" else n.get("n_examples", len(mine["examples"]))
        rec = {"r": r, "n": k, "s": status, "c": chosen, "e": int(count), "p": []}
        if tops is None:
            rec.update(x=shown, t=sig(mine["threshold"] if own is not None else e.get("threshold")))
        elif str(k) not in tops["x"]:
            # Step 2's maps are of examples.json's examples, in the same order of activation as a rival's top k:
            # the images the two lists begin with (mp of them) have their maps.
            step2 = [x["image_id"] for x in e["examples"][:max_examples]]
            ids = [x["image_id"] for x in mine["examples"][:max_examples]]
            tops["x"][str(k)], tops["t"][str(k)] = shown, sig(mine["threshold"])
            tops["mp"][str(k)] = next((j for j, i in enumerate(ids) if j >= len(step2) or step2[j] != i), len(ids))
        if n.get("significant") is not None:  # step 3's significance test (README, "How far to trust a name")
            rec["ev"] = {"tested": n.get("tested"), "m": sig(n.get("m")), "p": sig(n["p"]), "q": sig(n["q"]),
                         "sig": bool(n["significant"]), "p95": sig(n.get("null_p95"))}
        if hist:
            rec.update(h=hist["counts"][k], lo=hist["lo"][k], hi=hist["hi"][k])
        row = bars.get(k)
        if row is None:  # a describer without similarity.pt: its own scores (its top few, where it lists them)
            row = [(str(c["concept"]), sig(c["score"])) for c in n.get("top") or []] or chosen
            row = row[:top_concepts]
        else:
            rec["cut"] = cuts[k]
        rec["b"] = [[vocab.setdefault(c, len(vocab)), s] for c, s in row]
        best = row[0][1] if row and status != "dead" else None  # each row is in descending order of score
        # The card's score, which ranks the neuron in its run: MAMMI's S(k, c) is a sum over the examples, so
        # the mean per example; a rival's score as it is.
        rec["v"] = (sig(best / count) if count else None) if kind == "mammi" and best is not None else best
        if is_fc:
            rec["cls"] = classes[k]
            rec["hit"] = classes[k].lower() in {c for c, _ in chosen}
        page["neurons"].append(rec)
    page["vocab"] = list(vocab)
    stat = lambda p: [str(p), p.stat().st_size, p.stat().st_mtime_ns] if p.is_file() else [str(p), None]
    return {"concepts": file_digest(path), "examples": file_digest(ex_path), "data_root": folder,
            "files": [stat(ex_path.parent / EXAMPLES_CSV), stat(ex_path.parent.parent / ACTIVATIONS),
                      stat(path.parent / SIMILARITY), stat(path.parent / ABLATION)]}


def examples_of(cfg: dict, ex_path: Path, ex: dict) -> tuple[str, dict | None]:
    """Which images a run's describer scored a neuron on, as the neuron view shows them: "mammi", the
    examples of examples.json (None: read there); "topk", a rival's top_k images by activation, each neuron's
    {"threshold" (its k-th activation), "examples"} as describers.top_images takes them; "none", a
    label-based describer, which scores the whole probing set and selects none; "unrecorded", a describer
    that does not store how it picked its images. The last two show no examples ({})."""
    if not cfg.get("describer"):
        return "mammi", None
    if cfg.get("vocabulary") == "findings":
        return "none", {}
    k = cfg.get("top_k")
    if not isinstance(k, int) or isinstance(k, bool) or k < 1:
        return "unrecorded", {}
    memo = (str(ex_path.parent.parent.resolve()), ex["activations_key"], k)
    if memo not in _top:
        act = activations(ex_path, ex)
        acts, ids = act["activations"], act["image_ids"]
        picked = {}
        for n in select_examples(acts, "topk", topk=k):  # the order of top_images: descending, ties in probe order
            col = n["neuron"]
            picked[col] = {"threshold": None if n["dead"] else n["threshold"],
                           "examples": [] if n["dead"] else [{"image_id": ids[i], "activation": float(acts[i, col])}
                                                             for i in n["examples"][:max_examples]]}
        _top[memo] = picked
    return "topk", _top[memo]


_top: dict = {}
_tops_at: dict = {}  # (examples.json, k) -> its entry of page["tops"]
_acts: dict = {}


def activations(ex_path: Path, ex: dict) -> dict:
    """The layer's activations.pt, kept for the next run of the same layer (several describers share one)."""
    memo = (str(ex_path.parent.parent.resolve()), ex["activations_key"])
    if memo not in _acts:
        _acts.clear()  # one layer at a time: NIH's 75,312 x 2,048 hold 600 MB
        _acts[memo] = read_activations(ex_path, ex)
    return _acts[memo]


_probed: dict = {}


def check_images(folder: str, ex_path: Path, ex_cfg: dict) -> None:
    """The images under folder are the probing set step 2 read (examples.json's data key: each image's
    name, size and modification time): another folder holding other images under the same names would
    put wrong pictures beside the neurons. Checked once per folder and probing set."""
    probe = {**{k: ex_cfg.get(k) for k in PROBE_FIELDS}, "data_root": folder}
    memo = digest(probe)
    if memo not in _probed:
        if not folder or not Path(folder).is_dir():
            raise PipelineError(f"image folder {folder or '(none recorded)'} of {ex_path} is not found; run gallery.py "
                                f"from the folder the stages ran in, or pass --data_root FOLDER")
        try:
            _probed[memo] = load_probe(probe).data_key
        except PipelineError as e:
            raise PipelineError(f"cannot re-read the probing set of {ex_path} under {folder} ({e}); pass --data_root "
                                f"with the images step 2 read") from None
    if _probed[memo] != ex_cfg.get("data_key"):
        raise PipelineError(f"the images under {folder} are not those {ex_path} was selected from (names, sizes or "
                            f"modification times differ from what step 2 stored); pass --data_root with the images "
                            f"step 2 read, or re-run example_selection.py and the steps after it")


def ablation_rows(path: Path, concepts: Path) -> list[list] | None:
    """The layer's ablation table, when ablation.py ran for this concepts.json as it is now (read_ablation:
    the digest it stored; a table of earlier names is left out, with a note): per finding, how many
    neurons it names, their effect against random sets of as many (mean, SD), z, the other classes' drop
    and the named neurons themselves."""
    if not path.is_file():
        return None
    try:
        result = read_ablation(path, concepts)
    except PipelineError as e:
        print(f"note: its ablation table is not shown: {e}")
        return None
    return [[str(f["finding"]), int(f["n_neurons"])] + [sig(f[k]) for k in ("effect", "random_mean", "random_sd", "z",
                                                                             "other_classes")]
            + [[int(k) for k in f.get("neurons", [])]] for f in result["findings"]]


def sig(v, digits: int = 4):
    """A float rounded to a few significant digits: the page shows no more and stays small."""
    if v is None or not np.isfinite(float(v)):
        return None
    return float(f"{float(v):.{digits}g}")


_histograms: dict = {}


def histograms(ex_path: Path, ex: dict) -> dict:
    """Per neuron: counts of its activation over the whole probing set in hist_bins equal bins
    between its min and max. Computed once per activations.pt (several describers share one layer)."""
    memo = (str(ex_path.parent.parent.resolve()), ex["activations_key"])
    if memo not in _histograms:
        _histograms[memo] = _histograms_of(activations(ex_path, ex)["activations"], len(ex["neurons"]),
                                           ex_path.parent.parent / ACTIVATIONS)
    return _histograms[memo]


def _histograms_of(acts: torch.Tensor, k_expected: int, path: Path) -> dict:
    if acts.shape[1] != k_expected:
        raise PipelineError(f"{path} holds activations of shape {tuple(acts.shape)}, not [N, {k_expected}]; "
                            f"rerun example_selection.py")
    lo_all, hi_all, counts = [], [], []
    for j in range(0, acts.shape[1], 256):  # a few columns at a time: NIH's 75,312 x 2,048 would need 1.2 GB at once
        a = acts[:, j:j + 256].double().numpy()
        lo, hi = a.min(0), a.max(0)
        width = np.where(hi > lo, hi - lo, 1.0)
        b = np.clip(((a - lo) / width * hist_bins).astype(np.int64), 0, hist_bins - 1)
        flat = b + np.arange(a.shape[1]) * hist_bins
        counts.append(np.bincount(flat.ravel(), minlength=a.shape[1] * hist_bins).reshape(a.shape[1], hist_bins))
        lo_all += lo.tolist()
        hi_all += hi.tolist()
    counts = np.concatenate(counts).tolist()
    return {"n": int(acts.shape[0]), "counts": counts, "lo": [sig(v, 6) for v in lo_all], "hi": [sig(v, 6) for v in hi_all]}


def similarity_bars(path: Path, run: dict) -> tuple[dict, dict, float | None]:
    """From similarity.pt: each neuron's top_concepts (concept, S) and its alpha cut, at the alpha
    concepts.json stored (none without it: a describer's own scores)."""
    alpha = run["config"].get("alpha")
    if not path.is_file():
        return {}, {}, alpha
    sim = read_similarity(path, run)
    S, names, ids = sim["similarity"].double(), sim["concepts"], sim["neurons"]
    val, idx = torch.topk(S, min(top_concepts, S.shape[1]), dim=1)
    bars, cuts = {}, {}
    for k, row, v, i in zip(ids, S, val.tolist(), idx.tolist()):
        bars[k] = [(names[c], sig(s)) for c, s in zip(i, v)]
        if alpha is not None:
            cuts[k] = sig(alpha_cut(row, alpha))
    return bars, cuts, alpha


def label_runs(runs: list[dict], root: Path) -> None:
    """Name each run by its folder under save_root, less the folders all runs share (the probing set,
    the model, a single VLM): what is left tells the runs apart. And, for the cards, the settings in
    which runs of the same describer, layer and model differ (variant: "top 20", "plain scores · prompt no")."""
    groups: dict = {}
    for r in runs:
        groups.setdefault((r["describer"], r["layer"], r["model"]), []).append(r)
    for group in groups.values():
        differ = [k for k in group[0]["settings"] if len({r["settings"].get(k) for r in group}) > 1]
        for r in group:
            r["variant"] = " · ".join(r["settings"][k] for k in differ if k in r["settings"])
    for r in runs:
        del r["settings"]
    parts = []
    for r in runs:
        d = Path(r["path"]).parent.resolve()
        try:
            parts.append(d.relative_to(root.resolve()).parts)
        except ValueError:
            parts.append(d.parts[-4:])
    common = 0
    if len(parts) > 1:
        while all(len(p) > common + 1 and p[common] == parts[0][common] for p in parts):
            common += 1
    rest = [p[common:] for p in parts]
    keep = [range(len(p)) for p in rest]
    if len(rest) > 1 and len({len(p) for p in rest}) == 1:
        keep = [[j for j in range(len(rest[0])) if len({p[j] for p in rest}) > 1]] * len(rest)
    for r, p, q, k in zip(runs, parts, rest, keep):
        r["label"] = "/".join(q[j] for j in k)
        r["folder"] = "/".join(p)


def link_panels(page: dict, files: list[Path], gdir: Path) -> list:
    """The visualization.py panels in which a neuron is the top one, linked from that neuron of the run
    whose concepts.json the panels were titled with: the one whose bytes have the digest total_results.json
    stored (wherever the results folder lies now; panels of names step 3 has since replaced link nowhere)."""
    runs = {}
    for i, r in enumerate(page["runs"]):
        runs.setdefault(file_digest(r["path"]), i)
    where = {(x["r"], x["n"]): x for x in page["neurons"]}
    keys = []
    for f in files:
        data = read_total_results(f)
        cfg, images = data["config"], data["images"]
        r = runs.get(data.get("concepts_digest"))
        if r is None:
            print(f"note: {f} titles its panels with the names of {cfg.get('concepts')} as they were then, not "
                  f"those of one of the gallery's runs now (rerun visualization.py); its panels are not linked")
            continue
        keys.append({"visualization": file_digest(f)})
        missing = 0
        for img in images:
            for p in img.get("predictions", []):
                if not p.get("neurons"):
                    continue
                fig = f.parent / p["figure"]
                rec = where.get((r, p["neurons"][0]["neuron"]))
                if not fig.is_file():
                    missing += 1
                    continue
                if rec is None:
                    continue
                rec["p"].append(len(page["panels"]))
                page["panels"].append({"f": quote(os.path.relpath(fig.resolve(), gdir.resolve()).replace(os.sep, "/")),
                                       "i": str(img.get("image", "")), "c": str(p.get("class", "")),
                                       "pr": sig(p.get("probability"))})
        if missing:
            print(f"note: {missing} panel(s) listed in {f} are not on disk; rerun visualization.py")
    return keys


def group_images(images: dict) -> dict:
    groups: dict = {}
    for folder, resize, crop, name in images:
        groups.setdefault((folder, resize, crop), []).append(name)
    return groups


def find_images(folder: str, names: list[str]):
    """The example images' paths (the folder is the probing set's: check_images)."""
    try:
        return resolve_images(folder, names, skip_missing=True)
    except PipelineError as e:
        raise PipelineError(f"{e}; pass --data_root with the probing images") from None


def thumbnail(path: Path, resize: int, crop: int, out: Path) -> tuple[str, bool]:
    """The crop the model saw, as a JPEG; made only when no thumbnail of this exact file and crop exists."""
    st = path.stat()
    side = min(thumb_size, crop)
    name = digest({"image": str(path.resolve()), "size": st.st_size, "mtime": st.st_mtime_ns,
                   "resize": resize, "crop": crop, "side": side})[:24] + ".jpg"
    if (out / name).is_file():
        return name, False
    im = probe_crop(path, resize, crop)
    if im.size != (side, side):
        im = im.resize((side, side), resample=3)  # bicubic
    buf = io.BytesIO()
    im.save(buf, format="JPEG", quality=88)
    save_bytes(out / name, buf.getvalue())
    shareable(out / name)
    return name, True


def shareable(path: Path) -> None:
    """Atomic writes keep their temporary file's 0600 mode; a page meant to be shared (a group server,
    a web folder) gets the mode a plain open() would give: 0666 less the umask."""
    mask = os.umask(0)
    os.umask(mask)
    os.chmod(path, 0o666 & ~mask)


def render(page: dict) -> str:
    """The page: data as JSON in which '<', '>' and '&' are escaped, so no file-derived string can end
    the script element or open a tag; the code reads it with JSON.parse and writes only text nodes."""
    data = json.dumps(page, separators=(",", ":"), allow_nan=False)
    data = data.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
    text = {name: (HERE / name).read_text(encoding="utf-8") for name in PAGE_FILES}
    # gallery.html with gallery.css and gallery.js written into it (one file that opens without a server),
    # and the data: every placeholder replaced in one pass over the template, so no inserted text (a
    # save_root holding "__DATA__") is ever searched for another placeholder.
    fill = {"__CSS__\n": text["gallery.css"], "__JS__\n": text["gallery.js"], "__TITLE__": html.escape(page["title"]),
            "__SETTINGS__": json.dumps({"cardThumbs": card_thumbs}), "__DATA__": data}
    return re.sub("|".join(map(re.escape, fill)), lambda m: fill[m.group(0)], text["gallery.html"])


# ---- activation maps over a neuron's examples (pipeline/overlays.py) -------------------------------------
def attach_maps(page: dict) -> list:
    """Each run's maps of its neurons' shown examples: one set per selection (examples.json), shared by
    the runs that name its neurons (MAMMI and the rival describers), as page["maps"][g] = {"h", "w",
    "kind", "m": {neuron: [lo, hi, base64 of its examples' h x w maps in 8 bits over lo..hi]}}; a run
    without maps says why (run["maps_note"]). Returns the caches' keys (for the page key)."""
    page["maps"] = []
    groups, keys = {}, []
    dev = pick_device(config["device"]) if overlays else None
    for run_rec in page["runs"]:
        if not overlays:
            run_rec["maps_note"] = "not drawn (gallery.py --overlays False)"
            continue
        _, ex_json, ex = read_matching(Path(run_rec["path"]))
        g = groups.get(ex_json.resolve())
        if g is None:
            try:
                got = example_overlays(ex_json, ex, data_root, max_examples, config["batch_size"],
                                       config["num_workers"], dev)
                g = len(page["maps"])
                page["maps"].append(encode_maps(got))
                keys.append({"maps": got["key"]})
            except PipelineError as e:  # no map for this layer or target: the view says why
                g = str(e)
                print(f"note: no activation maps for {ex_json}: {e}")
            groups[ex_json.resolve()] = g
        if isinstance(g, int):
            run_rec["maps"] = g
        else:
            run_rec["maps_note"] = g
    return keys


def encode_maps(got: dict) -> dict:
    """overlays.pt's maps for the page: per neuron its range and its maps quantised to 256 levels over it."""
    maps, h, w = got["maps"], got["maps"].shape[1], got["maps"].shape[2]
    m, at = {}, 0
    for k, count in zip(got["neurons"], got["counts"]):
        mine = maps[at:at + count].double()
        at += count
        lo, hi = float(mine.min()), float(mine.max())
        q = ((mine - lo) / (hi - lo) * 255).round() if hi > lo else torch.zeros_like(mine)
        m[str(k)] = [sig(lo), sig(hi), base64.b64encode(q.to(torch.uint8).numpy().tobytes()).decode()]
    return {"h": h, "w": w, "kind": KINDS[got["kind"]], "m": m}


if __name__ == "__main__":
    main(run)
