"""Where each step writes, and the key that says what produced it: one place for both.

    {save_root}/{dataset}_{split}/{model}/{layer}/activations.pt                  step 2, one pass
    .../{layer}/{adaptive93|top20}/examples.json, examples.csv, crops/           step 2, selection
    {save_root}/{dataset}_{split}/vlm_{tag}/image_features.pt                    step 3, per VLM
    {save_root}/vlm_{tag}/text_{concept_set}_{prompt}.pt                         step 3, per VLM
    .../{adaptive93|top20}/vlm_{tag}/{concept_set}_{prompt}_{adaptive|plain}_a{alpha}/
        similarity.pt, concepts.json, metrics.json                               step 3, matching
    ({prompt} is template_ver, followed by -t and a digest of --template when it is not the default)
        describers/{describer}/scores.pt, concepts.json                          other describers, same inputs
        describers/describers.json, .csv, agreement.csv, *.png, sensitivity.*    their comparison
        ablation.json, .csv, .png (beside any concepts.json, MAMMI's or a rival's)  ablation.py
    {save_root}/{dataset}_{split}/{model}/maps_{module}.pt                      dissection's maps, per model
    {save_root}/{dataset}_{test}/{model}/eval/                                   step 4 (val + test; eval_split)
    {save_root}/{dataset}_{box_source}/bbox/                                     step 5
    {save_root}/{dataset}_{box_source}/{model}/visualization/                    step 6

{dataset}_{split} is what step 2 read ({dataset}_all: a folder probed whole, --labels none). Every path
is made through inside_root, which proves it lies under save_root; a reader of outputs finds what an
output was built from where it lies (the folders above it), never at a path stored in it.

A key is a digest of everything that produced an output: the constants that decide it, the bytes
of the checkpoint, probing set, concept set and VLM weights, the key of the output it was built
from, and the source of the code that computed it: the modules that compute it and every module of
ours they import, found by reading their imports (core/digests.py), never listed by hand. A step
reuses an output only when its key equals the key it would produce now.
"""
from __future__ import annotations

import re
from pathlib import Path

import torch

from core.digests import code_digest, digest, file_digest
from core.text import at_most
from dataset.concepts import TEMPLATE
from models.target import checkpoint_of, model_tag, preprocessing, target_identity
from pipeline.cache import load_json, read_output, under
from pipeline.cli import CONCEPT_MATCHING, EXAMPLE_SELECTION, PipelineError, constant_names, constants_of

# Every output's file name, here and nowhere else (a test greps the repo): a step makes its paths from
# these, and reads an output through its reader below.
ACTIVATIONS = "activations.pt"        # step 2: one forward pass over the probing set, per layer
EXAMPLES = "examples.json"            # step 2: each neuron's examples ...
EXAMPLES_CSV = "examples.csv"         # ... and each example's labels and class probabilities
IMAGE_FEATURES = "image_features.pt"  # step 3: the VLM's features of the probing images
SIMILARITY = "similarity.pt"          # step 3: S [K, C] with the concept names
CONCEPTS = "concepts.json"            # step 3 (or a rival describer): each neuron's names
METRICS = "metrics.json"              # step 3 at the fc layer: its names against the class names
RIVAL_SCORES = "scores.pt"            # a rival describer's scores [K, C] (not similarity.pt: no alpha cut)
DESCRIBERS = "describers.json"        # compare_describers.py's table, and its views:
DESCRIBERS_CSV = "describers.csv"
AGREEMENT_CSV = "agreement.csv"
DESCRIBERS_PNG = "describers.png"
SENSITIVITY_PNG = "sensitivity.png"   # MAMMI's two constants over a grid (pipeline/sensitivity.py)
ABLATION = "ablation.json"            # ablation.py, beside any concepts.json: its table ...
ABLATION_CSV = "ablation.csv"         # ... as rows ...
ABLATION_PNG = "ablation.png"         # ... and its figure
AUDIT = "audit.json"                  # audit.py, beside any concepts.json: each class's concepts and flags ...
AUDIT_CSV = "audit.csv"               # ... as rows ...
AUDIT_PNG = "audit.png"               # ... and its figure
OVERLAYS = "overlays.pt"              # the gallery's activation maps of a selection's examples
TOTAL_RESULTS = "total_results.json"  # step 6: its panels and the pointing game
SANITY = "sanity.json"                # sanity_check.py: the target against itself re-initialised ...
SANITY_PNG = "sanity.png"             # ... and its figure
SUMMARY = "summary.json"              # demo.py: every number its report prints
GALLERY_INDEX = "index.html"          # gallery.py's page
BOX_FIGURE = "{stem}_{kind}.png"      # step 5: an image with its boxes outlined (kind boxes) or filled (blend)
PANEL = "{image}_{class}.png"         # step 6: one (image, predicted class) panel, under figures/


# The step-2 constants that decide its activations (the selection decides only examples.json): the
# probing set and its labels, the target, the layer and the preprocessing, each as given (0 and ""
# stand for the model family's defaults, which the code and library versions in the key decide).
ACTIVATION_FIELDS = ("dataset", "split", "data_root", "split_file", "skip_missing", "labels", "uncertain", "classes",
                     "max_images", "seed", "model", "num_classes", "layer", "token_pool", "resize", "crop", "channels",
                     "mean", "std", "precision", "reinit_seed")
# Step-2 constants that say how to run, not what comes out: a later step never checks them against
# what step 2 stored (channels_last is a memory layout, its results equal up to rounding); and verbose,
# which every step takes (pipeline/cli.py's EVERY_STEP).
RUN_SETTINGS = ("batch_size", "num_workers", "device", "channels_last", "save_crops", "save_root", "verbose")
# The code of activations.pt: the forward loop, the target and the probing set's reader, and what they
# import (the selection's code, method.py included, decides only examples.json).
ACTIVATIONS_CODE = ("pipeline/forward.py", "models/target.py", "dataset/probe.py")


def upstream_constants() -> list[str]:
    """What decided steps 2 and 3's outputs, for the steps after them: refused when given there with
    another value than the one stored (the images may move: data_root is not among them)."""
    return [k for k in constant_names(EXAMPLE_SELECTION) + constant_names(CONCEPT_MATCHING)
            if k not in RUN_SETTINGS + ("data_root", "examples", "metric_encoders", "medclip_weights")]


def _tag(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip("-")


def plain_name(option: str, value: str) -> str:
    """A constant whose value names a folder under --save_root (--dataset, --split): one plain name, never
    a path, so that no output lands outside save_root ('../../x', '/abs', 'a/b' are refused)."""
    if value in ("", ".", "..") or any(ch in value for ch in "/\\\0"):
        raise PipelineError(f"--{option} {value!r} is not a plain name (it names a folder under --save_root); "
                            f"pass a name without '/', '\\' or '..', such as {_tag(value).strip('.-') or 'nih14'!r}")
    return value


def inside_root(c: dict, path: Path) -> Path:
    """Every output path is made through here: proved to lie under c's save_root, no folder below it
    '..' (pipeline/cache.py's `under`, the rule every write is checked by again)."""
    if not under(c["save_root"], path):
        raise PipelineError(f"{path} is not inside --save_root {c['save_root']}; name the outputs with plain names "
                            f"(--dataset, --split, --model, --layer)")
    return path


def beside_input(config, path: Path, input_root: str | Path, option: str) -> None:
    """A step that writes beside an input it was given by path (--examples, --ablation_concepts, --mammi_run)
    writes under --save_root all the same. Without --save_root the results folder the input lies in
    (input_root) is the save_root; a --save_root that does not hold it is refused before anything is made:
    written elsewhere (a mirrored folder under --save_root), the outputs would lose the examples.json above
    them by which every reader finds what they were made from."""
    if "save_root" not in config.given:
        config["save_root"] = str(input_root)
    elif not under(config["save_root"], path):
        raise PipelineError(f"--{option} {path} lies outside --save_root {config['save_root']}; its outputs go "
                            f"beside it and nothing is written outside --save_root: pass --save_root {input_root} "
                            f"(the results folder holding it), or copy that folder under {config['save_root']}")


def probe_name(c: dict) -> str:
    """The probing set's folder: {dataset}_{split} as step 2 read it; a folder probed whole (--labels
    none) reads no split file: {dataset}_all."""
    if c.get("labels") == "none":
        return f"{plain_name('dataset', c['dataset'])}_all"
    return f"{plain_name('dataset', c['dataset'])}_{plain_name('split', c['split'])}"


def probe_dir(c: dict, name: str | None = None) -> Path:
    """{save_root}/{dataset}_{split} (probe_name), or {dataset}_{name} for an output of another split."""
    part = probe_name(c) if name is None else f"{plain_name('dataset', c['dataset'])}_{plain_name('split', name)}"
    return inside_root(c, Path(c["save_root"]) / part)


def target_tag(c: dict) -> str:
    """The target's folder name: {model}, and -reinit{seed} for a re-initialised one (sanity_check.py), so
    that no output of the re-initialised target lands on the trained one's (activations, step 4's
    thresholds, step 6's panels, dissection's maps)."""
    seed = c.get("reinit_seed", -1)
    return model_tag(c["model"]) + (f"-reinit{seed}" if seed >= 0 else "")


def model_dir(c: dict) -> Path:
    """The target's folder; a re-initialised target (sanity_check.py) has its own beside the trained one's."""
    return inside_root(c, probe_dir(c) / target_tag(c))


def layer_dir(c: dict) -> Path:
    return inside_root(c, model_dir(c) / _tag(c["layer"]))


def selection_tag(c: dict) -> str:
    return f"adaptive{c['adaptive_percent']:g}" if c["selection"] == "adaptive" else f"top{c['topk']}"


def examples_dir(c: dict) -> Path:
    return inside_root(c, layer_dir(c) / selection_tag(c))


def vlm_tag(c: dict) -> str:
    weights = Path(c["clip_weights"]).stem if c.get("clip_weights") else ""
    name = c["model_clip"].replace("open_clip:", "openclip-")
    if name.endswith(".json"):  # a config file: its stem names the model
        name = "openclip-" + Path(name).stem
    return _tag(name + (f"-{weights}" if weights else ""))


def concept_set_name(c: dict) -> str:
    return Path(c["concept_set"]).stem if c["concept_set"].endswith(".txt") else c["concept_set"]


def image_features_path(c: dict) -> Path:
    return inside_root(c, probe_dir(c) / f"vlm_{vlm_tag(c)}" / IMAGE_FEATURES)


def prompt_tag(c: dict) -> str:
    """template_ver, and a digest of the template when it is not the method's: two templates must
    not share (and overwrite) a text cache or a matching folder."""
    template = c.get("template", TEMPLATE)
    return c["template_ver"] + ("" if template == TEMPLATE else f"-t{digest(template)[:8]}")


def text_features_path(c: dict) -> Path:
    return inside_root(c, Path(c["save_root"]) / f"vlm_{vlm_tag(c)}" / f"text_{_tag(concept_set_name(c))}_{prompt_tag(c)}.pt")


def matching_dir(c: dict, examples: str | Path | None = None) -> Path:
    """Beside the examples it names (examples.json's folder, derived from c unless given)."""
    mode = "adaptive" if c["adaptive"] else "plain"
    where = Path(examples).parent if examples else examples_dir(c)
    return inside_root(c, where / f"vlm_{vlm_tag(c)}"
                       / f"{_tag(concept_set_name(c))}_{prompt_tag(c)}_{mode}_a{c['alpha']:g}")


def read_examples(ex_json: str | Path) -> dict:
    """Step 2's examples.json, checked to belong to the activations.pt of its layer folder: a later
    step-2 run (another checkpoint, probing set or preprocessing) rewrites activations.pt but leaves
    the examples.json of other selections, which would then name the neurons of a model not there."""
    ex_json = Path(ex_json)
    ex = read_output(ex_json, "example_selection.py", {"key": str, "activations_key": str, "config": dict,
                                                       "neurons": list}, check=_examples_ok)
    c = ex["config"]
    # The outputs built on these examples go under the save_root they lie in now, never the one stored
    # (the results folder may have moved, or be another's copy): a reader writes nowhere else.
    c["save_root"] = str(results_root(ex_json, c))
    act_path = ex_json.parent.parent / ACTIVATIONS
    rule = f"--adaptive_percent {c['adaptive_percent']:g}" if c["selection"] == "adaptive" else f"--selection topk --topk {c['topk']}"
    redo = (f"re-run example_selection.py with the checkpoint you mean and {rule} (same experiment file and "
            f"--layer {c['layer']}), then this step")
    if not act_path.is_file():
        raise PipelineError(f"{ex_json} was selected from {act_path}, which is gone; {redo}")
    act = read_output(act_path, "example_selection.py", {"key": str, "config": dict}, mmap=True)
    if act["key"] != ex["activations_key"]:
        raise PipelineError(f"{ex_json} (checkpoint {c['checkpoint']}) was not selected from the activations "
                            f"{act_path} holds now (checkpoint {act['config'].get('checkpoint')}, a later run); {redo}")
    return ex


def results_root(ex_json: Path, c: dict) -> Path:
    """The save_root an examples.json lies in, from where it lies (the folders examples_dir puts below a
    save_root for its stored constants), not from the save_root it stored."""
    tail = examples_dir({**c, "save_root": "."}).parts
    parts = Path(ex_json).parent.parts
    if parts[len(parts) - len(tail):] != tail:
        raise PipelineError(f"{ex_json} is not where example_selection.py writes it ({Path(*tail, EXAMPLES)} "
                            f"under a --save_root); keep the results folder whole, or re-run example_selection.py")
    return Path(*parts[:len(parts) - len(tail)]) if len(parts) > len(tail) else Path(".")


def _examples_ok(ex: dict) -> bool:
    needed = ("dataset", "split", "data_root", "model", "checkpoint", "layer", "selection", "adaptive_percent",
              "topk", "resize", "crop", "data_key")
    c = ex["config"]
    return bool(ex["neurons"]) and all(k in c for k in needed) and isinstance(c["adaptive_percent"], (int, float)) \
        and isinstance(c["topk"], int) and all(
        isinstance(n["neuron"], int) and isinstance(n["dead"], bool)
        and all(isinstance(e["image_id"], str) for e in n["examples"]) for n in ex["neurons"])


def read_activations(ex_json: str | Path, ex: dict) -> dict:
    """The activations.pt of the layer folder above examples.json (ex: read_examples'), checked to be
    the one the examples were selected from."""
    path = Path(ex_json).parent.parent / ACTIVATIONS
    act = read_output(path, "example_selection.py", {"key": str, "activations": torch.Tensor, "image_ids": list},
                      check=lambda a: a["activations"].ndim == 2 and len(a["image_ids"]) == a["activations"].shape[0])
    if act["key"] != ex["activations_key"]:
        raise PipelineError(f"{path} was rewritten after {ex_json} was selected from it; re-run example_selection.py "
                            f"with the same constants, then the steps after it")
    return act


def locate_examples(run: Path, cfg: dict) -> Path:
    """The examples.json a concepts.json was computed from: the nearest one above it (two folders up for
    MAMMI's, four for a describer's). The path it stored is named, never followed: it may point into a
    results folder moved since, or another save_root than the one given."""
    for c in (p / EXAMPLES for p in Path(run).parents[:5]):
        if c.is_file():
            return c
    raise PipelineError(f"{run}: its examples.json ({cfg.get('examples') or 'not recorded'}) is not in a folder "
                        f"above it; keep the results folder whole, or rerun example_selection.py and "
                        f"concept_matching.py with the same constants")


def find_matching(given: str, c: dict, option: str) -> tuple[Path, dict, Path, dict]:
    """The concepts.json a later step is given as --option (the file, or a run's folder holding it, as
    gallery.py's --runs takes it), else step 3's for the constants c, read (read_matching): its path,
    content, examples.json and their content."""
    path = concepts_in(Path(given), option) if given else matching_dir(c) / CONCEPTS
    if not path.is_file():
        raise PipelineError(f"{path} not found; run example_selection.py and concept_matching.py with the same "
                            f"experiment file and --layer (or pass --{option} PATH)")
    return (path, *read_matching(path))


def concepts_in(given: Path, option: str) -> Path:
    """A concepts.json given as itself or as a folder: the one directly inside (a MAMMI run's, whose
    describers/ below hold the rivals'), else the only one below it."""
    if not given.is_dir():
        return given
    if (given / CONCEPTS).is_file():
        return given / CONCEPTS
    found = sorted(given.rglob(CONCEPTS))
    if len(found) == 1:
        return found[0]
    raise PipelineError(f"--{option} {given} " + (f"holds {len(found)} concepts.json below it ({at_most(found, 3)}); "
                                                  f"pass the one to use" if found else
                                                  "holds no concepts.json; pass a concepts.json, or the folder of "
                                                  "a concept_matching.py or compare_describers.py run"))


def read_matching(path: str | Path) -> tuple[dict, Path, dict]:
    """A stage-3 concepts.json (concept_matching.py's, or a describer's in its format), its examples.json
    and their content (read_examples: still of the layer's activations). Checked: its records as this code
    reads them, and that it was computed from those examples (their key; a describer's written before it
    stored one: their neurons)."""
    path = Path(path)
    data = read_output(path, "concept_matching.py", {"config": dict, "neurons": list}, check=_matching_ok)
    ex_json = locate_examples(path, data["config"])
    ex = read_examples(ex_json)
    if (not data["config"].get("describer") or "examples_key" in data) and data.get("examples_key") != ex["key"]:
        step = "compare_describers.py" if data["config"].get("describer") else "concept_matching.py"
        raise PipelineError(f"{path} was computed from other examples than {ex_json} holds now (a later "
                            f"example_selection.py run); re-run {step} with the same constants")
    known = {n["neuron"] for n in ex["neurons"]}
    stray = [n["neuron"] for n in data["neurons"] if n["neuron"] not in known]
    if stray:
        raise PipelineError(f"{path} names neurons [{at_most(stray, 5)}] that {ex_json} lacks; re-run the step that "
                            f"wrote it after example_selection.py")
    return data, ex_json, ex


def _matching_ok(data: dict) -> bool:
    return all(isinstance(n["neuron"], int) and n.get("status", "ok") in ("ok", "none", "dead") and all(
        isinstance(c["concept"], str) and isinstance(c["score"], (int, float)) for c in n["concepts"])
        for n in data["neurons"])


def read_similarity(path: str | Path, run: dict) -> dict:
    """similarity.pt beside a concepts.json (run: read_matching's data), checked to be written with it."""
    sim = read_output(path, "concept_matching.py", {"key": str, "similarity": torch.Tensor, "concepts": list,
                                                    "neurons": list},
                      check=lambda s: tuple(s["similarity"].shape) == (len(s["neurons"]), len(s["concepts"])))
    if sim["key"] != run.get("key"):
        raise PipelineError(f"{path} was not written with the concepts.json beside it; re-run concept_matching.py")
    return sim


def read_comparison(path: str | Path) -> dict:
    """compare_describers.py's describers.json, checked to compare the run whose folder holds it."""
    path = Path(path)
    table = read_output(path, "compare_describers.py", {"key": str, "run": str, "layer": str, "truth": dict,
                                                        "rows": dict, "pairwise": dict})
    # by the folders' names: the results folder may have moved since
    if Path(table["run"]).parent.parts[-3:] != path.parent.parent.absolute().parts[-3:]:
        raise PipelineError(f"{path} compares {table['run']}, not the run beside it; re-run compare_describers.py")
    return table


def read_ablation(path: str | Path, concepts: str | Path) -> dict:
    """ablation.py's ablation.json, checked to ablate the concepts.json given (the one beside it) as it is
    now: by the digest of its bytes, stored with the table (the results folder may have moved since, and
    a later step 3 may have rewritten the concepts.json with other names)."""
    path = Path(path)
    result = read_output(path, "ablation.py", {"key": str, "concepts": str, "layer": str, "findings": list},
                         check=lambda r: all(isinstance(f, dict) and "finding" in f and "z" in f for f in r["findings"]))
    if result.get("concepts_digest") != file_digest(concepts):
        raise PipelineError(f"{path} ablates other names than {concepts} holds now (a later concept_matching.py or "
                            f"compare_describers.py run, or a table older than the digest it stores); re-run ablation.py")
    return result


def read_audit(path: str | Path, concepts: str | Path) -> dict:
    """audit.py's audit.json, checked to audit the concepts.json beside it as it is now (its digest)."""
    path = Path(path)
    result = read_output(path, "audit.py", {"key": str, "layer": str, "concepts_digest": str, "classes": list},
                         check=lambda r: all(isinstance(c, dict) and {"class", "concepts", "stratified"} <= set(c)
                                             for c in r["classes"]))
    if result["concepts_digest"] != file_digest(concepts):
        raise PipelineError(f"{path} audits other names than {concepts} holds now (a later concept_matching.py or "
                            f"compare_describers.py run); re-run audit.py")
    return result


def read_metrics(path: str | Path) -> dict:
    """concept_matching.py's metrics.json at the fc layer: its names against the class names (hit rate,
    precision, recall, F1, each a mean with its standard error over n neurons) and the cosine metrics."""
    def ok(m):
        return all(isinstance(m[k], dict) and {"mean", "se", "n"} <= set(m[k]) for k in ("hit_rate", "precision", "f1"))
    return read_output(path, "concept_matching.py", {"key": str, "hit_rate": dict, "precision": dict, "f1": dict,
                                                     "cosine": dict}, check=ok)


def read_auroc(path: str | Path) -> dict[str, float]:
    """target_model_perform.py's TestEval.csv: each class's test AUROC."""
    table = read_output(path, "target_model_perform.py", {"columns": list, "rows": list},
                        check=lambda t: t["rows"] and {"label", "auc"} <= set(t["columns"]))
    try:
        return {r["label"]: float(r["auc"]) for r in table["rows"]}
    except ValueError:
        raise PipelineError(f"{path}: an AUROC that is not a number; re-run target_model_perform.py") from None


def read_total_results(path: str | Path) -> dict:
    """visualization.py's total_results.json: its config, the digest of the concepts.json its panels are
    titled with, the pointing game, and per image its predictions (each with its panel's file, relative to
    the folder of total_results.json). Checked: what every reader takes (the config and the images)."""
    return read_output(path, "visualization.py", {"config": dict, "images": list},
                       check=lambda d: all(isinstance(i, dict) and isinstance(i.get("predictions", []), list)
                                           for i in d["images"]))


def read_sanity(path: str | Path) -> dict:
    """sanity_check.py's sanity.json: per layer each side's (target, reinitialised) counts of names tested
    and significant."""
    sides = ("target", "reinitialised")
    return read_output(path, "sanity_check.py", {"sanity_seed": int, "layers": dict},
                       check=lambda d: all(all(isinstance(r.get(w), dict) and {"significant", "tested", "testable",
                                                                                "share"} <= set(r[w]) for w in sides)
                                           for r in d["layers"].values()))


def read_example_labels(path: str | Path, classes: list[str]) -> tuple[dict, dict]:
    """example_selection.py's examples.csv: each image's findings, and each (neuron, example image)'s
    probability of the neuron's class when the layer is fc (classes: its column names, empty otherwise).
    An absent file gives no labels (the gallery shows its thumbnails without them)."""
    labels, probs = {}, {}
    if not Path(path).is_file():
        print(f"note: {path} not found; the thumbnails carry no labels")
        return labels, probs
    table = read_output(path, "example_selection.py", {"columns": list, "rows": list},
                        check=lambda t: {"image_id", "neuron"} <= set(t["columns"]) or not t["rows"])
    try:
        for row in table["rows"]:
            labels[row["image_id"]] = row.get("findings", "")
            k = int(row["neuron"])
            p = row.get(f"prob_{classes[k]}") if classes else None
            if p not in (None, "", "nan"):
                probs[(k, row["image_id"])] = float(p)
    except (ValueError, IndexError):
        raise PipelineError(f"{path}: a neuron or probability that is not a number, or a neuron the layer lacks; "
                            f"re-run example_selection.py") from None
    return labels, probs


def stored_examples_config(run: str | Path) -> dict:
    """The constants the examples.json above a concepts.json stored, read without checking that they still
    belong to their activations (read_examples does): what a listing of runs sorts by."""
    return load_json(locate_examples(run, load_json(run)["config"]))["config"]


def describers_dir(run: str | Path) -> Path:
    """The other describers of a stage-3 run (its concepts.json) and their comparison, inside its folder:
    they read the same activations, VLM features and concept set."""
    return Path(run).parent / "describers"


def maps_path(c: dict, module: str) -> Path:
    return inside_root(c, probe_dir(c) / target_tag(c) / f"maps_{_tag(module)}.pt")


def eval_split(c: dict) -> str:
    """The split step 4 reports AUROC on (its thresholds come from val), which names its folder: NIH split
    files: test; a CSV probing set is its own test set (the split step 2 probed it as) unless
    test_split_file names another CSV (then that file's name)."""
    if c.get("labels") not in ("", "none", None):
        return _tag(Path(c["test_split_file"]).stem) if c.get("test_split_file") else c["split"]
    return "test"


def eval_dir(c: dict) -> Path:
    return inside_root(c, probe_dir(c, eval_split(c)) / target_tag(c) / "eval")


# Step 4's outputs, and eval.json, which it writes after them: the key of what produced them, the target
# the thresholds were fitted to (target_key) and the digest of each file, checked by read_thresholds.
THRESHOLDS, TEST_EVAL, ROC_CURVES = "Threshold.csv", "TestEval.csv", "roc_curves.png"
PROBS, LABELS = "{split}Probs.csv", "{split}Labels.csv"  # split: Test or Val, each image's scores and labels
EVAL_FILES = (THRESHOLDS, TEST_EVAL, PROBS.format(split="Test"), LABELS.format(split="Test"), PROBS.format(split="Val"),
              LABELS.format(split="Val"), ROC_CURVES)
EVAL_RECORD = "eval.json"


def bbox_dir(c: dict) -> Path:
    return inside_root(c, probe_dir(c, c["box_source"]) / "bbox")


def box_figure(folder: Path, stem: str, kind: str) -> Path:
    """Step 5's drawing of one image in folder (bbox_dir): kind boxes (outlined) or blend (filled); stem "*" is
    the pattern of them all."""
    return folder / BOX_FIGURE.format(stem=stem, kind=kind)


def panel_path(folder: Path, image: str, finding: str) -> Path:
    """Step 6's panel of one (image, predicted class) in folder (visualization_dir), under figures/."""
    return folder / "figures" / PANEL.format_map({"image": image, "class": finding})


def visualization_dir(c: dict) -> Path:
    return inside_root(c, probe_dir(c, c["box_source"]) / target_tag(c) / "visualization")


# ---- keys

def activations_key(c: dict, checkpoint: str | Path | None, data_key: str) -> str:
    """activations.pt: the constants of ACTIVATION_FIELDS (step 2's default for one c lacks), the
    target's files (checkpoint_of's checkpoint, a model's own file), the probing set, its classes file."""
    c = {**constants_of(EXAMPLE_SELECTION), **c}
    return digest({**{k: c[k] for k in ACTIVATION_FIELDS}, "target": target_identity(c["model"], checkpoint),
                   "classes_file": file_digest(c["classes"]) if c["classes"] else None, "data": data_key,
                   "code": code_digest(*ACTIVATIONS_CODE)})


def target_key(c: dict) -> str:
    """The target a step runs, as models.target.target_as_probed builds it from c: the model and the bytes of
    its weights (c's checkpoint, resolved), the head's size, the re-initialisation, and the input it is fed
    (its preprocessing resolved, so that the values step 2 stored and a later step's own agree)."""
    return digest({"target": target_identity(c["model"], checkpoint_of(c["model"], str(c.get("checkpoint") or ""))),
                   "num_classes": c.get("num_classes", 0), "reinit_seed": c.get("reinit_seed", -1), **preprocessing(c)})


def eval_key(target: str, data: dict, classes: list[str]) -> str:
    """Step 4's outputs (eval.json and the files it vouches for): the target (target_key), the val and test
    splits' images and labels (their data keys), the class names they are scored by, and the code."""
    return digest({"target": target, "data": data, "classes": classes, "code": code_digest("target_model_perform.py")})


def stored_classes(stored: dict) -> list[str] | None:
    """The class names step 2 stored with its outputs (None: nothing named them); outputs from before
    it stored them were all NIH's 14."""
    if "class_names" in stored:
        return stored["class_names"]
    from dataset.nih import class_names
    return class_names()


def class_neurons(classes: list[str] | None, k: int) -> list[tuple[int, str]]:
    """The fc neurons scored against their class: neuron j is class j, where every one of the k
    outputs has a class and the class has a name (torchxrayvision leaves some '')."""
    return [(j, c) for j, c in enumerate(classes) if c] if classes and len(classes) == k else []


def examples_key(activations: str, c: dict) -> str:
    """examples.json: the activations it selects from and the selection rule."""
    rule = {"adaptive_percent": c["adaptive_percent"]} if c["selection"] == "adaptive" else {"topk": c["topk"]}
    return digest({"activations": activations, "selection": c["selection"], **rule,
                   "code": code_digest("example_selection.py")})


def vlm_identity(c: dict, weights: str, code: str) -> dict:
    return {"model_clip": c["model_clip"], "weights": weights, "code": code}


def image_features_key(vlm: dict, stage2: dict) -> str:
    """image_features.pt: the VLM, and the probing set with the crop it was seen through."""
    return digest({**vlm, "data": stage2["data_key"], "resize": stage2["resize"], "crop": stage2["crop"]})


def text_features_key(vlm: dict, concept_file: str | Path, c: dict) -> str:
    """text_*.pt: the VLM, the concept file's bytes and the prompt."""
    return digest({**vlm, "concepts": file_digest(concept_file), "template_ver": c["template_ver"],
                   "template": c["template"]})


def matching_key(examples: str, images: str, text: str, c: dict, code: str) -> str:
    """similarity.pt and concepts.json: the examples, both feature caches, the scoring rule and the
    significance test's constants (the pool's images are in the image cache's key)."""
    return digest({"examples": examples, "images": images, "text": text, "adaptive": c["adaptive"],
                   "alpha": c["alpha"], "significance": {k: c[k] for k in ("null_pool", "null_draws", "fdr", "null_seed")},
                   "code": code})


def maps_key(stage2: dict, module: str, image_ids: list[str]) -> str:
    """maps_{module}.pt: the model and preprocessing of step 2 (its layer aside), the images, the module."""
    return digest({**{k: stage2.get(k) for k in ACTIVATION_FIELDS if k != "layer"}, "module": module,
                   "target": target_identity(stage2["model"], stage2["checkpoint"] or None), "data": stage2["data_key"],
                   "images": image_ids,
                   "code": code_digest("pipeline/dissection.py")})


def describer_key(inputs: dict, constants: dict, code: str) -> str:
    """A describer's scores.pt and concepts.json: the keys of what it read (activations, features,
    probing set, box file) and the constants of its formula."""
    return digest({"inputs": inputs, "constants": constants, "code": code})


def metrics_key(matching: str, encoders: str, medclip: str) -> str:
    """metrics.json: the concepts it scores and the text encoders that score them."""
    return digest({"result": matching, "encoders": encoders, "medclip": medclip})


def ablation_key(concepts: str, split_activations: str, split: str, draws: int, seed: int, code: str) -> str:
    """ablation.json: the concepts.json's bytes, the held-out split's images, labels and activations (the
    key step 2 gives them: the target and preprocessing too), the random sets and the code."""
    return digest({"concepts": concepts, "split": split, "activations": split_activations, "draws": draws,
                   "seed": seed, "code": code})


def audit_key(concepts: str | Path, split_activations: str, c: dict, vlm: dict, code: str) -> str:
    """audit.json: the concepts.json's bytes, the held-out split's images, labels and activations (step 2's
    key for them), the audit's constants, the VLM that decides which images show a concept, and the code."""
    constants = {k: c[k] for k in ("audit_split", "audit_share", "audit_z", "audit_draws", "audit_seed",
                                   "audit_stratify", "audit_seen_top", "audit_boot")}
    return digest({"concepts": file_digest(concepts), "activations": split_activations, **constants, "vlm": vlm,
                   "code": code})


def overlays_path(ex_json: str | Path) -> Path:
    """The gallery's activation maps of a selection's examples (pipeline/overlays.py), beside examples.json."""
    return Path(ex_json).parent / OVERLAYS


def overlays_key(activations: str, layer: str, examples: list) -> str:
    """overlays.pt: step 2's key (target, checkpoint, preprocessing, layer, probing set), the layer whose maps
    (and so the module hooked), each neuron's example image ids in order, and the code that draws them."""
    return digest({"activations": activations, "layer": layer, "examples": examples,
                   "code": code_digest("pipeline/overlays.py")})
