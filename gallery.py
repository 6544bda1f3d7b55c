"""Step 7: a gallery of every named neuron, one web page that works offline from a plain file.

Reads stage-3 runs (concepts.json of any layer or describer, with similarity.pt beside it when there
is one) and finds everything else through the paths the outputs store: concepts.json names its
examples.json; examples.json's folder holds examples.csv (each example's labels) and its parent, the
layer folder, holds activations.pt (the histograms); examples.json's config names the image folder
and the crop the model saw. visualization.py's total_results.json adds the panels in which a neuron
is the top one. Writes {gallery_dir}/index.html and {gallery_dir}/thumbs/, one JPEG per distinct image,
named by a digest of the image file (path, size, mtime), the crop and the thumbnail size, so each is
made once and reused, and a changed image or crop gets a new one.

The page embeds one compact JSON block and renders the list lazily (a chunk of cards at a time, the
next when the list's end scrolls near): 2,048 neurons open as fast as 20. Figures are SVG drawn
in the page from that JSON, not matplotlib PNGs: a PNG per neuron and figure would be 4,096 files
and minutes of matplotlib for a penultimate layer, most never looked at, while the SVG of one
neuron costs a millisecond when its view opens, stays sharp at any zoom, and needs no library.
Every string from a file reaches the page through JSON.parse and textContent, never as markup.
"""
import csv
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

from dataset.nih import probe_crop, resolve_images
from dataset.probe import output_names
from method import alpha_cut
from pipeline.cache import code_version, digest, file_digest, load_json, save_bytes
from pipeline.cli import PipelineError, configure, main, print_config
from pipeline.outputs import read_activations, read_matching, read_similarity, stored_classes

# -----------------------------------------------------------------------------
runs = ""                       # comma-separated concepts.json files of stage 3 (any layer, any describer); default: every concepts.json under save_root
visualization = ""              # comma-separated total_results.json of visualization.py whose panels to link; default: every one under save_root
# save_root is example_selection.py's; its data_root, when given, replaces the image folder stored in
# examples.json (for images that have moved since).
top_concepts: ">= 1" = 20       # concept scores in a neuron's bar chart
hist_bins: ">= 1" = 40          # bins of a neuron's activation histogram over the probing set
thumb_size: ">= 8" = 112        # side of the example thumbnails in pixels (never upscaled past the crop)
max_examples: ">= 0" = 100      # example thumbnails kept per neuron (its example count is always the full one)
card_thumbs: ">= 0" = 4         # thumbnails on a neuron's card in the list
gallery_dir = ""                # gallery folder; default {save_root}/gallery
# -----------------------------------------------------------------------------
config = configure(globals(), reads=("example_selection.py",))
save_root = config["save_root"]
data_root = config.given.get("data_root", "")
CODE = code_version("gallery.py")


def run():
    print_config("gallery", config)
    t0 = time.time()
    root = Path(save_root)
    gdir = Path(gallery_dir) if gallery_dir else root / "gallery"
    files = listed(runs, root, "concepts.json", "concept_matching.py")
    if not files:
        raise PipelineError(f"no concepts.json under {root}; run concept_matching.py first, "
                            f"or pass --runs PATH[,PATH...] (or --save_root where the outputs are)")
    page = {"title": f"Neuron gallery: {root}", "runs": [], "neurons": [], "images": [], "vocab": [], "panels": []}
    images, vocab, keys = {}, {}, []
    for path in files:
        try:
            keys.append(load_run(path, page, images, vocab))
        except (KeyError, TypeError, ValueError, IndexError) as e:  # a field missing or of the wrong kind
            raise PipelineError(f"{path} or the examples it names has unexpected content ({type(e).__name__}: {e}); "
                                f"rerun example_selection.py and concept_matching.py") from None
    label_runs(page["runs"], root)
    keys += link_panels(page, listed(visualization, root, "total_results.json", "visualization.py"), gdir)

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
    for old in thumbs.glob("*.jpg"):  # thumbnails of images no run shows any more
        if old.name not in used and re.fullmatch(r"[0-9a-f]{24}\.jpg", old.name):
            old.unlink()

    page["key"] = digest({"inputs": keys, "config": {k: v for k, v in config.items() if k != "gallery_dir"},
                          "code": CODE})
    index = gdir / "index.html"
    save_bytes(index, render(page).encode())
    shareable(index)
    n = len(page["neurons"])
    counts = {s: sum(x["s"] == s for x in page["neurons"]) for s in ("ok", "none", "dead")}
    print(f"{n} neurons in {len(page['runs'])} run(s) ({counts['ok']} ok, {counts['none']} none, {counts['dead']} dead); "
          f"{len(used)} thumbnails ({made} new), {len(page['panels'])} panels linked, in {time.time() - t0:.1f}s")
    print("outputs:")
    print(f"  {index}")
    print(f"  {thumbs}/")
    print(f"open it: {index.resolve().as_uri()}")
    return index


def listed(value: str, root: Path, name: str, script: str) -> list[Path]:
    """The files given as a comma-separated list (each must exist), else every `name` under root."""
    if value:
        out = []
        for item in filter(None, (v.strip() for v in value.split(","))):
            if not Path(item).is_file():
                raise PipelineError(f"{item} not found; pass the {name} written by {script}")
            out.append(Path(item))
    else:
        out = sorted(root.rglob(name)) if root.is_dir() else []
    seen = {}
    for p in out:
        seen.setdefault(p.resolve(), p)
    return list(seen.values())


def load_run(path: Path, page: dict, images: dict, vocab: dict) -> dict:
    """Add one stage-3 run's neurons to the page; returns what identifies its inputs (for the page key)."""
    data, ex_path, ex = read_matching(path)  # refused unless its examples and their activations are still there
    cfg, ex_cfg = data["config"], ex["config"]
    by_id = {n["neuron"]: n for n in ex["neurons"]}
    layer = str(cfg.get("layer") or ex_cfg.get("layer") or "?")
    folder = data_root or ex_cfg.get("data_root", "")
    resize, crop = int(ex_cfg.get("resize", 256)), int(ex_cfg.get("crop", 224))
    named = stored_classes(ex_cfg)  # the class names step 2 stored: fc neuron k is class k
    is_fc = layer == "fc" and len(data["neurons"]) == len(named or [])
    classes = output_names(named, len(named)) if is_fc else []
    labels, probs = example_labels(ex_path.parent / "examples.csv", classes)
    hist = histograms(ex_path, ex)
    bars, cuts, alpha = similarity_bars(path.parent / "similarity.pt", data)
    r = len(page["runs"])
    p = ex_cfg.get("adaptive_percent")
    selection = (f"top {ex_cfg.get('topk')}" if ex_cfg.get("selection") == "topk"
                 else f"adaptive, p = {p:g}%" if isinstance(p, (int, float)) else "adaptive")
    page["runs"].append({"path": str(path), "layer": layer, "model": str(cfg.get("model") or ex_cfg.get("model", "")),
                         "describer": str(cfg.get("describer") or "MAMMI"), "vlm": str(cfg.get("model_clip") or ""),
                         "concept_set": str(cfg.get("concept_set", "")), "selection": selection,
                         "alpha": alpha, "n_images": hist["n"] if hist else None, "fc": is_fc})
    for n in data["neurons"]:
        k = n["neuron"]
        e = by_id[k]
        chosen = [[str(c["concept"]), sig(c["score"])] for c in n.get("concepts", [])]
        status = n.get("status") or ("dead" if e.get("dead") else ("ok" if chosen else "none"))
        shown = []
        for rank, x in enumerate(e["examples"][:max_examples]):
            key = (folder, resize, crop, x["image_id"])
            if key not in images:
                images[key] = len(page["images"])
                page["images"].append([x["image_id"], None, labels.get(x["image_id"], "")])
            shown.append([images[key], sig(x["activation"])] + ([sig(probs[(k, rank)])] if (k, rank) in probs else []))
        rec = {"r": r, "n": k, "s": status, "c": chosen, "e": int(n.get("n_examples", len(e["examples"]))),
               "x": shown, "t": sig(e.get("threshold")), "p": []}
        if hist:
            rec.update(h=hist["counts"][k], lo=hist["lo"][k], hi=hist["hi"][k])
        row = bars.get(k)
        if row is None:  # a describer without similarity.pt: its own scores are the chart
            row = [(c, s) for c, s in chosen[:top_concepts]]
        else:
            rec["cut"] = cuts[k]
        rec["b"] = [[vocab.setdefault(c, len(vocab)), s] for c, s in row]
        if is_fc:
            rec["cls"] = classes[k]
            rec["hit"] = classes[k].lower() in {c for c, _ in chosen}
        page["neurons"].append(rec)
    page["vocab"] = list(vocab)
    stat = lambda p: [str(p), p.stat().st_size, p.stat().st_mtime_ns] if p.is_file() else [str(p), None]
    return {"concepts": file_digest(path), "examples": file_digest(ex_path), "data_root": folder,
            "files": [stat(ex_path.parent / "examples.csv"), stat(ex_path.parent.parent / "activations.pt"),
                      stat(path.parent / "similarity.pt")]}


def sig(v, digits: int = 4):
    """A float rounded to a few significant digits: the page shows no more and stays small."""
    if v is None or not np.isfinite(float(v)):
        return None
    return float(f"{float(v):.{digits}g}")


def example_labels(path: Path, classes: list[str]) -> tuple[dict, dict]:
    """examples.csv: each image's findings, and each (neuron, rank)'s probability of the neuron's class
    when the layer is fc (classes: its column names, empty otherwise). Absent file: no labels shown."""
    labels, probs = {}, {}
    if not path.is_file():
        print(f"note: {path} not found; the thumbnails carry no labels")
        return labels, probs
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            labels[row["image_id"]] = row.get("findings", "")
            k = int(row["neuron"])
            p = row.get(f"prob_{classes[k]}") if classes else None
            if p not in (None, "", "nan"):
                probs[(k, int(row["rank"]))] = float(p)
    return labels, probs


_histograms: dict = {}


def histograms(ex_path: Path, ex: dict) -> dict:
    """Per neuron: counts of its activation over the whole probing set in hist_bins equal bins
    between its min and max. Computed once per activations.pt (several describers share one layer)."""
    memo = (str(ex_path.parent.parent.resolve()), ex["activations_key"])
    if memo not in _histograms:
        _histograms[memo] = _histograms_of(read_activations(ex_path, ex)["activations"], len(ex["neurons"]),
                                           ex_path.parent.parent / "activations.pt")
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
    the model, a single VLM): what is left tells the runs apart."""
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
    whose concepts.json the panels were titled with."""
    runs = {Path(r["path"]).resolve(): i for i, r in enumerate(page["runs"])}
    where = {(x["r"], x["n"]): x for x in page["neurons"]}
    keys = []
    for f in files:
        try:
            data = load_json(f)
            cfg, images = data["config"], data["images"]
        except (OSError, json.JSONDecodeError, KeyError, TypeError) as e:
            raise PipelineError(f"{f}: not a total_results.json of visualization.py ({type(e).__name__}); "
                                f"rerun visualization.py") from None
        r = runs.get(Path(cfg.get("concepts", "")).resolve())
        if r is None:
            print(f"note: {f} names its neurons with {cfg.get('concepts')}, not one of the gallery's runs; "
                  f"its panels are not linked")
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
    if not folder or not Path(folder).is_dir():
        raise PipelineError(f"image folder {folder or '(none recorded)'} of the examples is not found; run gallery.py "
                            f"from the folder the stages ran in, or pass --data_root FOLDER")
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
    settings = json.dumps({"cardThumbs": card_thumbs})
    return (PAGE.replace("__TITLE__", html.escape(page["title"]))
                .replace("__SETTINGS__", settings).replace("__DATA__", data))


PAGE = r"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>__TITLE__</title>
<style>
:root { --fg: #1d232b; --muted: #5d6875; --line: #d8dde3; --bg: #f5f6f8; --card: #fff; --accent: #2f6db5;
        --ok: #1f7a3d; --none: #8a6d00; --dead: #8c2f2f; --sel: #2f6db5; --unsel: #b9c2cc; --thr: #c0392b; }
* { box-sizing: border-box; }
body { margin: 0; font: 14px/1.4 system-ui, -apple-system, "Segoe UI", sans-serif; color: var(--fg); background: var(--bg); }
header { position: sticky; top: 0; z-index: 5; background: var(--card); border-bottom: 1px solid var(--line); padding: 10px 16px; }
h1 { font-size: 17px; margin: 0 0 8px; }
.controls { display: flex; flex-wrap: wrap; gap: 8px 14px; align-items: center; }
.controls input[type=search] { width: 300px; padding: 6px 8px; font-size: 14px; border: 1px solid var(--line); border-radius: 4px; }
.controls select { padding: 5px; font-size: 13px; max-width: 340px; }
.controls label { color: var(--muted); font-size: 13px; }
#count { color: var(--muted); font-size: 13px; margin-top: 6px; }
#list { display: grid; grid-template-columns: repeat(auto-fill, minmax(330px, 1fr)); gap: 10px; padding: 12px 16px; }
.card { background: var(--card); border: 1px solid var(--line); border-radius: 6px; padding: 9px 11px; cursor: pointer; }
.card:hover, .card:focus { border-color: var(--accent); outline: none; }
.head { display: flex; gap: 8px; align-items: baseline; flex-wrap: wrap; }
.nid { font-weight: 600; font-size: 15px; }
.layer { color: var(--muted); font-size: 12px; }
.badge { font-size: 11px; padding: 1px 6px; border-radius: 9px; color: #fff; }
.s-ok { background: var(--ok); } .s-none { background: var(--none); } .s-dead { background: var(--dead); }
.hit { background: var(--ok); } .miss { background: var(--dead); }
.meta { color: var(--muted); font-size: 12px; margin: 3px 0; overflow-wrap: anywhere; }
.chips { display: flex; flex-wrap: wrap; gap: 4px; margin: 4px 0; }
.chip { background: #e8eef7; border-radius: 3px; padding: 1px 6px; font-size: 13px; }
.chip small { color: var(--muted); margin-left: 4px; }
.mini { display: flex; gap: 3px; margin-top: 5px; }
.mini img { width: 56px; height: 56px; object-fit: cover; border-radius: 2px; background: #ddd; }
#more { grid-column: 1 / -1; text-align: center; color: var(--muted); padding: 12px; }
#view { position: fixed; inset: 0; z-index: 10; background: rgba(20, 24, 30, .55); overflow-y: auto; display: none; }
#view.open { display: block; }
#panel { background: var(--card); max-width: 1180px; margin: 24px auto; border-radius: 8px; padding: 16px 20px 24px; }
#panel h2 { margin: 0; font-size: 20px; display: inline; }
.nav { float: right; display: flex; gap: 8px; }
.nav a, .nav button { font-size: 13px; padding: 4px 10px; border: 1px solid var(--line); border-radius: 4px; background: #fff; color: var(--fg); text-decoration: none; cursor: pointer; }
.nav a.off { visibility: hidden; }
.figs { display: flex; flex-wrap: wrap; gap: 18px; margin: 12px 0; }
.fig h3, #panel h3 { font-size: 14px; margin: 12px 0 4px; }
.fig p { color: var(--muted); font-size: 12px; margin: 2px 0; max-width: 520px; }
svg text { font: 11px system-ui, sans-serif; fill: var(--fg); }
.thumbs { display: grid; grid-template-columns: repeat(auto-fill, minmax(120px, 1fr)); gap: 8px; }
.thumbs figure { margin: 0; font-size: 12px; }
.thumbs img { width: 100%; max-width: 160px; height: auto; aspect-ratio: 1; object-fit: contain; background: #000; display: block; }
.thumbs figcaption { color: var(--muted); overflow-wrap: anywhere; }
.thumbs figcaption b { color: var(--fg); }
.panels figure { margin: 8px 0; }
.panels img { max-width: 100%; border: 1px solid var(--line); }
</style>
</head>
<body>
<header>
<h1 id="title"></h1>
<div class="controls">
<input id="q" type="search" placeholder="search concepts (#775 for a neuron)" autocomplete="off" aria-label="search concepts">
<label>status <select id="status"><option value="">all</option><option value="ok">ok</option><option value="none">none</option><option value="dead">dead</option></select></label>
<label>layer <select id="layer"><option value="">all</option></select></label>
<label id="runbox">run <select id="run"><option value="">all</option></select></label>
<label id="hitbox">fc class <select id="hitsel"><option value="">all</option><option value="hit">hit</option><option value="miss">miss</option></select></label>
<label>sort <select id="sort"><option value="id">neuron id</option><option value="ex">most examples</option><option value="exa">fewest examples</option><option value="top">top score</option></select></label>
</div>
<div id="count"></div>
</header>
<main id="list"></main>
<div id="view"><div id="panel"></div></div>
<script type="application/json" id="settings">__SETTINGS__</script>
<script type="application/json" id="data">__DATA__</script>
<script>
"use strict";
const T0 = performance.now();
const D = JSON.parse(document.getElementById("data").textContent);
const CFG = JSON.parse(document.getElementById("settings").textContent);
const CHUNK = 60;
const $ = (id) => document.getElementById(id);
const SVGNS = "http://www.w3.org/2000/svg";

// Every node is built here; data only ever becomes text (textContent) or an attribute value.
function el(tag, attrs, text, ns) {
  const e = ns ? document.createElementNS(ns, tag) : document.createElement(tag);
  for (const k in attrs || {}) e.setAttribute(k, attrs[k]);
  if (text !== undefined && text !== null) e.textContent = String(text);
  return e;
}
const sv = (tag, attrs, text) => el(tag, attrs, text, SVGNS);
const fmt = (v) => (v === null || v === undefined) ? "–" : (Math.abs(v) >= 1e4 || (v !== 0 && Math.abs(v) < 1e-3) ? v.toExponential(2) : +v.toPrecision(4) + "");
const key = (n) => n.r + "-" + n.n;

const N = D.neurons, RUNS = D.runs;
const byKey = new Map();
N.forEach((n, i) => {
  n.i = i;
  n.q = n.c.map((c) => c[0].toLowerCase());
  n.top = n.b.length ? n.b[0][1] : (n.c.length ? n.c[0][1] : -Infinity);
  if (n.s === "dead") n.top = -Infinity;
  byKey.set(key(n), n);
});

$("title").textContent = D.title;
document.title = D.title;
const layers = [...new Set(RUNS.map((r) => r.layer))];
layers.forEach((l) => $("layer").appendChild(el("option", {value: l}, l)));
RUNS.forEach((r, i) => $("run").appendChild(el("option", {value: String(i)}, r.label || r.folder)));
if (RUNS.length < 2) $("runbox").style.display = "none";
if (!RUNS.some((r) => r.fc)) $("hitbox").style.display = "none";

let shown = [], rendered = 0;
const list = $("list");
const more = el("div", {id: "more"});
const observer = new IntersectionObserver((es) => { if (es.some((e) => e.isIntersecting)) fill(); }, {rootMargin: "800px"});

function apply() {
  const q = $("q").value.trim().toLowerCase(), st = $("status").value, ly = $("layer").value,
        run = $("run").value, hs = $("hitsel").value, sort = $("sort").value;
  const idq = /^#\d+$/.test(q) ? +q.slice(1) : null;
  shown = N.filter((n) => (!st || n.s === st) && (!ly || RUNS[n.r].layer === ly) && (!run || n.r === +run)
    && (!hs || (n.cls !== undefined && (hs === "hit") === n.hit))
    && (!q || (idq !== null ? n.n === idq : n.q.some((c) => c.includes(q)))));
  const by = {id: (a, b) => a.r - b.r || a.n - b.n, ex: (a, b) => b.e - a.e || a.i - b.i,
              exa: (a, b) => a.e - b.e || a.i - b.i, top: (a, b) => b.top - a.top || a.i - b.i}[sort];
  shown.sort(by);
  list.textContent = "";
  rendered = 0;
  list.appendChild(more);
  fill();
  const c = {ok: 0, none: 0, dead: 0};
  shown.forEach((n) => c[n.s]++);
  $("count").textContent = `${shown.length} of ${N.length} neurons shown · ${c.ok} ok · ${c.none} none · ${c.dead} dead`;
}

function fill() {
  // Render one chunk, and more while the list's end is still within reach of the viewport.
  do {
    const frag = document.createDocumentFragment();
    const end = Math.min(rendered + CHUNK, shown.length);
    for (; rendered < end; rendered++) frag.appendChild(card(shown[rendered]));
    list.insertBefore(frag, more);
  } while (rendered < shown.length && more.getBoundingClientRect().top < innerHeight + 800);
  more.textContent = rendered < shown.length ? `showing ${rendered} of ${shown.length}; scroll for more` :
    (shown.length ? "" : "no neuron matches");
  observer.disconnect();
  if (rendered < shown.length) observer.observe(more);
}

function statusBadge(s) { return el("span", {class: "badge s-" + s}, s); }

function card(n) {
  const run = RUNS[n.r];
  const c = el("div", {class: "card", tabindex: "0", "data-key": key(n), "data-neuron": String(n.n)});
  const h = el("div", {class: "head"});
  h.append(el("span", {class: "nid"}, "neuron " + n.n), el("span", {class: "layer"}, run.layer), statusBadge(n.s));
  if (n.cls !== undefined) h.append(el("span", {class: "layer"}, n.cls), el("span", {class: "badge " + (n.hit ? "hit" : "miss")}, n.hit ? "hit" : "miss"));
  c.appendChild(h);
  if (RUNS.length > 1) c.appendChild(el("div", {class: "meta"}, run.label));
  c.appendChild(el("div", {class: "meta"}, `${n.e} example${n.e === 1 ? "" : "s"} · top score ${fmt(n.top === -Infinity ? null : n.top)}`));
  const chips = el("div", {class: "chips"});
  if (!n.c.length) chips.appendChild(el("span", {class: "meta"}, n.s === "dead" ? "dead: constant over the probing set" : "no concept above the cut"));
  n.c.slice(0, 8).forEach(([w, s]) => { const ch = el("span", {class: "chip"}, w); ch.appendChild(el("small", {}, fmt(s))); chips.appendChild(ch); });
  if (n.c.length > 8) chips.appendChild(el("span", {class: "meta"}, `+${n.c.length - 8} more`));
  c.appendChild(chips);
  const mini = el("div", {class: "mini"});
  n.x.slice(0, CFG.cardThumbs).forEach(([im]) => { const img = D.images[im]; if (img[1]) mini.appendChild(el("img", {src: img[1], loading: "lazy", alt: img[0], title: img[0]})); });
  if (mini.childNodes.length) c.appendChild(mini);
  return c;
}

list.addEventListener("click", (ev) => { const c = ev.target.closest(".card"); if (c) location.hash = "n" + c.dataset.key; });
list.addEventListener("keydown", (ev) => { const c = ev.target.closest(".card"); if (c && ev.key === "Enter") location.hash = "n" + c.dataset.key; });
["q", "status", "layer", "run", "hitsel", "sort"].forEach((id) => $(id).addEventListener(id === "q" ? "input" : "change", apply));

// ---- a neuron's view --------------------------------------------------------------------------
function neighbours(n) {
  let seq = shown.includes(n) ? shown : N.filter((m) => m.r === n.r);
  const i = seq.indexOf(n);
  return [seq[i - 1], seq[i + 1]];
}

function histogram(n) {
  const W = 480, H = 210, L = 44, R = 12, Tp = 24, B = 34, pw = W - L - R, ph = H - Tp - B;
  const s = sv("svg", {width: W, height: H, viewBox: `0 0 ${W} ${H}`, class: "hist", role: "img"});
  const lo = n.lo, hi = n.hi, span = hi > lo ? hi - lo : 1, nb = n.h.length;
  const maxc = Math.max(...n.h, 1), ly = (c) => Math.log1p(c) / Math.log1p(maxc);
  const X = (v) => L + (v - lo) / span * pw;
  n.h.forEach((c, j) => {
    if (!c) return;
    const x0 = L + j / nb * pw, x1 = L + (j + 1) / nb * pw, y = ly(c) * ph;
    const above = n.t !== null && lo + (j + 1) / nb * span > n.t;
    const r = sv("rect", {x: x0 + 0.5, y: Tp + ph - y, width: Math.max(x1 - x0 - 1, 1), height: y, fill: above ? "#2f6db5" : "#aab4bf"});
    r.appendChild(sv("title", {}, `${c} image${c === 1 ? "" : "s"} in [${fmt(lo + j / nb * span)}, ${fmt(lo + (j + 1) / nb * span)}]`));
    s.appendChild(r);
  });
  s.appendChild(sv("line", {x1: L, x2: L + pw, y1: Tp + ph, y2: Tp + ph, stroke: "#555"}));
  s.appendChild(sv("text", {x: L, y: H - 18, "text-anchor": "start"}, fmt(lo)));
  s.appendChild(sv("text", {x: L + pw, y: H - 18, "text-anchor": "end"}, fmt(hi)));
  s.appendChild(sv("text", {x: L + pw / 2, y: H - 4, "text-anchor": "middle"}, "activation"));
  s.appendChild(sv("text", {x: 12, y: Tp + ph / 2, transform: `rotate(-90 12 ${Tp + ph / 2})`, "text-anchor": "middle"}, "images (log scale)"));
  s.appendChild(sv("text", {x: L - 4, y: Tp + 4, "text-anchor": "end"}, String(maxc)));
  if (n.t !== null && hi > lo) {
    const x = X(Math.min(Math.max(n.t, lo), hi));
    s.appendChild(sv("line", {x1: x, x2: x, y1: Tp - 6, y2: Tp + ph, stroke: "#c0392b", "stroke-width": 2, "stroke-dasharray": "5 3"}));
    s.appendChild(sv("text", {x: x, y: Tp - 9, "text-anchor": x > L + pw * 0.7 ? "end" : "start", fill: "#c0392b"}, "threshold " + fmt(n.t)));
  }
  return s;
}

function bars(n) {
  const rows = n.b, W = 520, L = 170, R = 60, Tp = 26, rh = 17, H = Tp + rows.length * rh + 22, pw = W - L - R;
  const s = sv("svg", {width: W, height: H, viewBox: `0 0 ${W} ${H}`, class: "bars", role: "img"});
  const vals = rows.map((r) => r[1]).concat([0], n.cut === undefined ? [] : [n.cut]);
  const lo = Math.min(...vals), hi = Math.max(...vals), span = hi > lo ? hi - lo : 1, X = (v) => L + (v - lo) / span * pw;
  const chosen = new Set(n.c.map((c) => c[0]));
  rows.forEach(([ci, v], j) => {
    const y = Tp + j * rh, name = D.vocab[ci], x0 = X(Math.min(0, v)), x1 = X(Math.max(0, v));
    const label = sv("text", {x: L - 6, y: y + 12, "text-anchor": "end"}, name.length > 26 ? name.slice(0, 25) + "…" : name);
    label.appendChild(sv("title", {}, name));
    s.appendChild(label);
    s.appendChild(sv("rect", {x: x0, y: y + 2, width: Math.max(x1 - x0, 1), height: rh - 5, fill: chosen.has(name) ? "#2f6db5" : "#b9c2cc"}));
    s.appendChild(sv("text", {x: Math.max(x1, X(0)) + 4, y: y + 12}, fmt(v)));
  });
  s.appendChild(sv("line", {x1: X(0), x2: X(0), y1: Tp - 2, y2: Tp + rows.length * rh, stroke: "#555"}));
  if (n.cut !== undefined) {
    const x = X(n.cut), a = RUNS[n.r].alpha;
    s.appendChild(sv("line", {x1: x, x2: x, y1: Tp - 8, y2: Tp + rows.length * rh + 4, stroke: "#c0392b", "stroke-width": 2, "stroke-dasharray": "5 3"}));
    s.appendChild(sv("text", {x: x, y: Tp - 11, "text-anchor": x > L + pw * 0.6 ? "end" : "start", fill: "#c0392b"}, `alpha cut ${fmt(n.cut)} (${a}% of max)`));
  }
  s.appendChild(sv("text", {x: L + pw / 2, y: H - 4, "text-anchor": "middle"}, "S(k, c): summed score over the examples"));
  return s;
}

function openView(n) {
  const run = RUNS[n.r], p = $("panel");
  p.textContent = "";
  const [prev, next] = neighbours(n);
  const nav = el("div", {class: "nav"});
  const link = (m, text, id) => m ? el("a", {href: "#n" + key(m), id: id, title: "neuron " + m.n}, text) : el("a", {class: "off", id: id}, text);
  nav.append(link(prev, "← previous", "prev"), link(next, "next →", "next"), el("button", {id: "close", type: "button"}, "close ✕"));
  nav.lastChild.addEventListener("click", closeView);
  p.appendChild(nav);
  const h = el("div", {class: "head"});
  h.append(el("h2", {id: "vtitle"}, "neuron " + n.n), el("span", {class: "layer"}, `${run.layer} · ${run.model}`), statusBadge(n.s));
  if (n.cls !== undefined) h.append(el("span", {class: "layer"}, "class " + n.cls), el("span", {class: "badge " + (n.hit ? "hit" : "miss")}, n.hit ? "hit" : "miss"));
  p.appendChild(h);
  p.appendChild(el("div", {class: "meta"}, run.folder));
  p.appendChild(el("div", {class: "meta"}, `${n.e} example${n.e === 1 ? "" : "s"} (${run.selection})` +
    (run.n_images ? ` of ${run.n_images} probing images` : "") + ` · named by ${run.describer}` + (run.vlm ? ` with VLM ${run.vlm}` : "") +
    (run.concept_set ? ` · concept set ${run.concept_set}` : "")));
  const chips = el("div", {class: "chips"});
  if (!n.c.length) chips.appendChild(el("span", {class: "meta"}, n.s === "dead" ? "dead: its activation is constant over the probing set, so it has no examples" : "none: no concept scored above zero"));
  n.c.forEach(([w, v]) => { const ch = el("span", {class: "chip"}, w); ch.appendChild(el("small", {}, fmt(v))); chips.appendChild(ch); });
  p.appendChild(chips);

  const figs = el("div", {class: "figs"});
  if (n.h) {
    const f = el("div", {class: "fig"});
    f.append(el("h3", {}, "activation over the probing set"), histogram(n),
      el("p", {}, "Blue bins reach above the selection threshold (red): the examples. Counts on a log scale, so the few examples stay visible."));
    figs.appendChild(f);
  }
  if (n.b.length) {
    const f = el("div", {class: "fig"});
    f.append(el("h3", {}, `top ${n.b.length} concept scores`), bars(n),
      el("p", {}, n.cut !== undefined ? "Blue: the neuron's concepts, those above the alpha cut (red)." : "Scores as the describer reported them."));
    figs.appendChild(f);
  }
  p.appendChild(figs);

  p.appendChild(el("h3", {}, n.x.length < n.e ? `examples, in order (first ${n.x.length} of ${n.e})` : "examples, in order"));
  const th = el("div", {class: "thumbs"});
  n.x.forEach(([im, a, pr], r) => {
    const img = D.images[im], fig = el("figure");
    if (img[1]) fig.appendChild(el("img", {src: img[1], alt: img[0], title: img[0], width: "160", height: "160"}));
    else fig.appendChild(el("div", {class: "meta"}, "(image not found)"));
    const cap = el("figcaption");
    cap.append(el("b", {}, `#${r + 1} ${fmt(a)}`), document.createTextNode(" " + img[0]), el("br"),
               document.createTextNode((img[2] || "").split("|").join(", ")));
    if (pr !== undefined) cap.append(el("br"), document.createTextNode(`p(${n.cls}) = ${fmt(pr)}`));
    fig.appendChild(cap);
    th.appendChild(fig);
  });
  if (!n.x.length) th.appendChild(el("div", {class: "meta"}, "no examples"));
  p.appendChild(th);

  if (n.p.length) {
    p.appendChild(el("h3", {}, `visualization panels where it is the top neuron (${n.p.length})`));
    const pl = el("div", {class: "panels"});
    n.p.forEach((j) => {
      const P = D.panels[j], fig = el("figure"), a = el("a", {href: P.f, target: "_blank"});
      a.appendChild(el("img", {src: P.f, loading: "lazy", alt: P.i + " " + P.c}));
      fig.append(a, el("figcaption", {}, `${P.i}: ${P.c}` + (P.pr !== null ? ` (p = ${fmt(P.pr)})` : "")));
      pl.appendChild(fig);
    });
    p.appendChild(pl);
  }
  $("view").classList.add("open");
  $("view").scrollTop = 0;
  document.body.style.overflow = "hidden";
}

function closeView() {
  if (location.hash) history.pushState("", document.title, location.pathname + location.search);
  route();
}

function route() {
  const m = /^#n(\d+-\d+)$/.exec(location.hash), n = m && byKey.get(m[1]);
  if (n) openView(n);
  else { $("view").classList.remove("open"); document.body.style.overflow = ""; }
}

$("view").addEventListener("click", (ev) => { if (ev.target.id === "view") closeView(); });
document.addEventListener("keydown", (ev) => {
  if (!$("view").classList.contains("open")) return;
  if (ev.key === "Escape") closeView();
  const a = ev.key === "ArrowLeft" ? $("prev") : ev.key === "ArrowRight" ? $("next") : null;
  if (a && a.getAttribute("href")) location.hash = a.getAttribute("href");
});
window.addEventListener("hashchange", route);

apply();
route();
window.galleryTiming = {script_ms: performance.now() - T0, first_cards_ms: performance.now()};
</script>
</body>
</html>
"""


if __name__ == "__main__":
    main(run)
