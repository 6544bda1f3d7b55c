"""Step 2: each neuron's representative probing images (README, "The method in one screen", 2).

    python example_selection.py config/nih_densenet121.py --layer fc
    torchrun --nproc_per_node 4 example_selection.py config/nih_densenet121.py --layer fc,penultimate

One batched forward pass over the probing set records the chosen layers' activations and the
model's logits; then each neuron keeps the images above its adaptive threshold (or its top k).
Writes, per layer, activations.pt, examples.json, examples.csv (and the example crops when asked);
`--layer list` prints every module with its output shape instead. Steps 3-7 read these constants
from here and what examples.json stored: the class names, the preprocessing, the checkpoint.
"""
import pipeline.guard  # noqa: F401  (first: Ctrl-C and the console's encoding are handled from here on)

# isort: split
import os
import shutil
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from core.digests import digest
from core.text import at_most
from dataset.nih import findings, model_input_args, probe_crop, split_source
from dataset.probe import MISSING, align_labels, load_probe, note_copies, output_names, resolve_classes
from mammi.method import select_examples
from models import pick_device
from models.layers import layer_names, layer_table
from models.target import (
    RANDOM,
    checkpoint_of,
    model_classes,
    parse_model,
    preprocessing,
    target_as_probed,
    warn_untrained,
)
from pipeline import ranks
from pipeline.cache import (
    cached,
    check_finite,
    claim,
    holds_claims,
    load_json,
    save_csv,
    save_jpeg,
    save_json,
    save_tensors,
)
from pipeline.cli import PipelineError, configure, main, print_config
from pipeline.forward import probe_loader, record, use_channels_last
from pipeline.outputs import (
    ACTIVATION_FIELDS,
    ACTIVATIONS,
    EXAMPLES,
    EXAMPLES_CSV,
    activations_key,
    examples_dir,
    examples_key,
    layer_dir,
)

# -----------------------------------------------------------------------------
dataset = "nih14"               # name of the probing set (a tag for the output folder)
split = "train"                 # split file to probe: train | val | test (the release probes train)
data_root = "data/nih14/images" # image folder: flat, or Kaggle layout images_*/images/
split_file = ""                 # explicit split file; default: {data_root}/../{split}_official.txt, else NIH's
labels = ""                     # "" = NIH split files (split, split_file); none = all images under data_root; or a labelled CSV
uncertain: "zero | one | ignore" = "zero"  # CSV -1 and blank: zero: both 0; one: -1 is 1, blank 0; ignore: no truth
classes = ""                    # class names file, one per line in output order; default: the model's, the CSV's, NIH's
max_images: "[0, 10**9]" = 0    # probe a random subset of this many images (0 = all of them)
seed: "[0, 2**63 - 1]" = 0      # random seed of that subset
skip_missing = False            # drop images of the split missing on disk (default: fail)
model = "densenet121"           # densenet121 | resnet50 | torchvision:NAME | timm:NAME | xrv:NAME | file.py:function | model.pt
checkpoint = ""                 # FILE | pretrained (the library's cached weights) | random (untrained); "" = default
num_classes: "[0, 100000]" = 0  # outputs of the head; 0 = the checkpoint's (torchvision, timm), 14 (densenet121, resnet50)
layer = "fc"                    # fc | penultimate | a module name | several, comma-separated (one pass) | list
token_pool: "mean | cls" = "mean"  # tokens [B, T, D]: mean over the patch tokens, or the class token
selection: "adaptive | topk" = "adaptive"  # adaptive: a threshold per neuron; topk: its k largest
adaptive_percent: "(0, 100)" = 93.0  # p of the adaptive threshold; the release suggests 85-95
topk: "[1, 10**9]" = 20         # k when selection = topk
resize: "[0, 4096]" = 0        # preprocessing: Resize(resize), CenterCrop(crop); 0 = the model family's
crop: "[0, 4096]" = 0          # 0 = the family's; never larger than the resize (it would pad with black)
channels: "0 | 1 | 3" = 0       # input channels; 0 = the family's (1 for xrv)
mean: "numbers" = ""            # normalisation mean, one value or one per channel; default: the family's
std: "numbers > 0" = ""        # normalisation std, likewise
precision: "fp32 | bf16" = "fp32"  # bf16: the forward pass under autocast (activations stored as float32)
reinit_seed: "[-1, 2**63 - 1]" = -1  # -1: the trained weights; else every module re-initialised with this seed (sanity_check.py)
batch_size: "[1, 8192]" = 64
num_workers: "[-1, 256]" = -1   # data-loading processes; -1 = one per core (shared by torchrun's ranks)
device: "auto | cpu | cuda | cuda:N | mps" = "auto"  # auto = CUDA when present (torchrun: each rank its own GPU)
channels_last: "auto | yes | no" = "auto"  # NHWC convolutions; auto = on a GPU (a layout: same results up to rounding)
save_crops = False              # also write each neuron's example crops as JPEG files for browsing
save_root = "results"           # all outputs go under here
# -----------------------------------------------------------------------------
config = configure(globals())
CROP_NAME_MAX = 128  # bytes of a crop's file name: a long image name is cut and told apart by a digest


@holds_claims
def run():
    dev = ranks.start(pick_device(device))  # an absent GPU is refused before any work
    print_config("example_selection", config)
    examples_dir(config)  # a --dataset or --split that is not a plain folder name is refused before any work
    wanted = layer_names(layer)
    prep = preprocessing(config)  # before the probing set is read: a bad crop or mean is named without data
    if not labels:  # NIH split files: say which one is read, the probing set's own or NIH's
        print(split_source(split, data_root, split_file, "--split_file"))
    probe = load_probe(config)
    if ranks.is_main():  # (the others print nothing)
        note_copies(probe)
    names, paths = probe.names, probe.paths
    class_list, source = resolve_classes(classes, model_classes(model), probe)
    truth = align_labels(probe, class_list, source)
    ckpt = checkpoint_of(model, checkpoint)
    warn_untrained(model, ckpt == RANDOM)  # here too when the activations are reused and nothing loads it
    print(f"{len(names)} images from the {probe.what}; classes: "
          + (f"{len(class_list)} {source}" if class_list else "none named (pass --classes FILE to name the outputs)"))
    print(f"preprocessing: Resize {prep['resize']}, CenterCrop {prep['crop']}, {prep['channels']} channel(s), "
          f"mean {prep['mean']}, std {prep['std']}")

    def load(need_head):  # the target as every later step rebuilds it from what this one stores
        return target_as_probed({**config, **prep, "checkpoint": ckpt}, need_head, len(class_list or []))
    if wanted == ["list"]:
        net = load(False)[0].to(dev)
        x = next(iter(probe_loader(paths[:2], prep, 2, 0, dev)))
        rows = forward_checked(lambda: layer_table(net, x.to(dev), token_pool), x)
        width = max(len(r[0]) for r in rows)
        print(f"{'layer':<{width}}  {'output shape (2 images)':<26} neurons")
        for r in rows:
            print(f"{r[0]:<{width}}  {r[1]:<26} {r[2]}")
        return

    per = {}  # layer -> its config, activations.pt, key
    for name in wanted:
        c = {**config, "layer": name}
        per[name] = (c, layer_dir(c) / ACTIVATIONS, activations_key(c, ckpt, probe.data_key))
    stored = {name: None for name in wanted}
    if ranks.is_main():  # the one rank that writes claims the folders and decides what is left to do
        # Before the long pass: the folders must be writable, and no other run may write them meanwhile.
        for c, _, _ in per.values():
            claim(layer_dir(c))
            claim(examples_dir(c))
        stored = {name: cached(path, key) for name, (c, path, key) in per.items()}
        for name, s in stored.items():
            if s is not None:
                print(f"reusing {per[name][1]}")
    todo = [name for name, left in zip(wanted, ranks.agree([stored[n] is None for n in wanted])) if left]
    t0 = time.time()
    if todo:
        net, head_ok = load("fc" in todo)
        mine = ranks.share(len(paths), batch_size)  # all of them, outside torchrun
        # Rank 0 holds the whole probing set's rows from the start; the others only their share.
        batches = probe_loader(paths[mine.start:mine.stop], prep["resize"], prep["crop"], batch_size, num_workers, dev,
                               **model_input_args(prep))
        acts, logits = record(net.to(dev), batches, todo, len(paths) if ranks.is_main() else len(mine), dev, token_pool,
                              precision, use_channels_last(channels_last, dev), first=first_batch(class_list, source),
                              desc=f"{model} {','.join(todo)}", show=ranks.is_main())
        acts = {name: ranks.collect(a, len(paths), batch_size) for name, a in acts.items()}
        logits = ranks.collect(logits, len(paths), batch_size) if logits is not None else None
        if not ranks.is_main():
            return
        for name in todo:
            c, path, key = per[name]
            stored[name] = {"key": key, "config": {**{k: c[k] for k in ACTIVATION_FIELDS}, **prep,
                                                   "checkpoint": str(ckpt or ""), "untrained": ckpt == RANDOM,
                                                   "class_names": class_list},
                            "activations": acts[name], "logits": logits if head_ok else None, "image_ids": names}
            check_finite(path, stored[name])  # every layer before any is written: all new, or all untouched
        for name in todo:
            c, path, key = per[name]
            drop_stale(examples_dir(c), key)
            save_tensors(path, stored[name])
    if not ranks.is_main():
        return
    shapes = ", ".join(f"{n} {tuple(stored[n]['activations'].shape)}" for n in wanted)
    print(f"activations of {shapes} in {time.time() - t0:.1f}s")
    for name in wanted:
        c, act_path, act_key = per[name]
        select(c, act_path, act_key, stored[name]["activations"], stored[name]["logits"], names, paths, truth,
               class_list, {**c, **prep, "checkpoint": str(ckpt or ""), "untrained": ckpt == RANDOM,
                            "data_key": probe.data_key,
                            "class_names": class_list})


def first_batch(class_list, source):
    """The first forward pass, checked: it runs on the input, and its outputs are logits that fit the classes."""
    def check(x, forward):
        logit = forward_checked(forward, x)
        check_outputs(logit, class_list, source)
        return logit
    return check


def forward_checked(fn, x):
    """The first forward pass, its failure on the input as one line: the preprocessing does not fit."""
    try:
        return fn()
    except PipelineError:
        raise
    except RuntimeError as e:
        raise PipelineError(f"--model {model} fails on the first batch, inputs of shape {list(x.shape)} "
                            f"({str(e).splitlines()[0][:160]}); check --crop and --channels") from None


def check_outputs(logit, class_list, source):
    if not isinstance(logit, torch.Tensor) or logit.dim() != 2:
        shape = list(logit.shape) if isinstance(logit, torch.Tensor) else type(logit).__name__
        raise PipelineError(f"--model {model} returns {shape}, not logits [batch, classes]; return the logits")
    if class_list and logit.shape[1] != len(class_list):
        raise PipelineError(f"--model {model} has {logit.shape[1]} outputs but there are {len(class_list)} class "
                            f"names {source}; pass --classes FILE with {logit.shape[1]} names in output order"
                            + (" or --num_classes" if parse_model(model).family != "xrv" else ""))


def select(c, act_path, act_key, acts, logits, names, paths, truth, class_list, stored_config):
    """One layer's examples from its activations: examples.json, examples.csv, crops."""
    ex_dir = examples_dir(c)
    ex_key = examples_key(act_key, c)
    ex_json, ex_csv = ex_dir / EXAMPLES, ex_dir / EXAMPLES_CSV
    old = cached(ex_json, ex_key, load_json) if ex_csv.exists() else None
    if old is not None and (not save_crops or (ex_dir / "crops").is_dir()):
        print(f"reusing {ex_json}")
    else:
        neurons = select_examples(acts, selection, adaptive_percent, topk)
        dead = [n["neuron"] for n in neurons if n["dead"]]
        if dead:
            print(f"note: {c['layer']}: {len(dead)} dead neuron(s) (constant over the probing set, no examples): "
                  f"[{at_most(dead, 20)}]")
        for n in neurons:
            n["examples"] = [{"image_id": names[i], "activation": float(acts[i, n["neuron"]]), "index": i}
                             for i in n["examples"]]
        drop_examples(ex_dir)
        if save_crops:
            with tqdm(neurons, desc="crops") as bar:  # closed on an error, which then prints on its own line
                for n in bar:
                    for r, e in enumerate(n["examples"]):
                        out = ex_dir / "crops" / f"neuron_{n['neuron']:04d}" / crop_name(r, e["image_id"])
                        save_jpeg(out, probe_crop(paths[e["index"]], stored_config["resize"], stored_config["crop"]))
        write_tables(neurons, names, truth, logits, ex_dir, class_list)
        # examples.json last: present, it says that examples.csv and the crops beside it are complete
        save_json(ex_json, {"key": ex_key, "activations_key": act_key, "config": stored_config,
                            "neurons": [{**n, "examples": [{k: e[k] for k in ("image_id", "activation")}
                                                           for e in n["examples"]]} for n in neurons]})
    sizes = [len(n["examples"]) for n in load_json(ex_json)["neurons"]]
    print(f"{c['layer']}: examples per neuron: min {min(sizes)}, median {int(np.median(sizes))}, max {max(sizes)}")
    print("outputs:")
    for p in (act_path, ex_json, ex_csv) + ((ex_dir / "crops",) if save_crops else ()):
        print(f"  {p}")


def drop_examples(ex_dir):
    """Remove a selection's outputs, examples.json first (the one a later step reads): a run that fails
    while writing their successors leaves none of them, never an old one beside new activations."""
    for f in (EXAMPLES, EXAMPLES_CSV):
        (ex_dir / f).unlink(missing_ok=True)
    shutil.rmtree(ex_dir / "crops", ignore_errors=True)


def drop_stale(ex_dir, act_key):
    """Remove a selection's outputs when selected from other activations than those about to be written
    (act_key): a run that fails before it selects again leaves none of them beside the new activations."""
    try:
        same = load_json(ex_dir / EXAMPLES).get("activations_key") == act_key
    except (OSError, ValueError, AttributeError):
        same = False
    if not same:
        drop_examples(ex_dir)


def crop_name(rank: int, image_id: str) -> str:
    """A plain file name for an example crop: an id's folders become part of the name, so no crop
    lands anywhere but its neuron's folder (the rank keeps names apart); a long name is cut to
    CROP_NAME_MAX bytes, the id's digest keeping cut names apart."""
    name = Path(f"{rank:03d}_" + image_id.replace("\\", "_").replace("/", "_")).with_suffix(".jpg").name
    if len(os.fsencode(name)) <= CROP_NAME_MAX:
        return name
    stem = Path(name).stem
    while len(os.fsencode(stem)) > CROP_NAME_MAX - 17:  # room for "-", 12 hex digits and ".jpg"
        stem = stem[:-1]
    return f"{stem}-{digest(image_id)[:12]}.jpg"


def write_tables(neurons, names, truth, logits, ex_dir, class_list):
    """examples.csv: one row per neuron x example, with ground truth (blank where there is none) and
    the model's outputs from the same forward pass (the release re-ran the model on each saved crop)."""
    k = logits.shape[1] if logits is not None else len(class_list or [])
    columns = output_names(class_list, k)
    probs = torch.sigmoid(logits).numpy() if logits is not None else np.full((len(names), k), np.nan)
    header = (["neuron", "rank", "image_id", "activation", "findings"] + (columns if truth is not None else [])
              + [f"prob_{c}" for c in columns])
    rows = []
    for n in neurons:
        for r, e in enumerate(n["examples"]):
            i = e["index"]
            gt = [] if truth is None else ["" if v == MISSING else int(v) for v in truth[i]]
            rows.append([n["neuron"], r, e["image_id"], f"{e['activation']:.6g}",
                         "" if truth is None else findings(truth[i], columns)] + gt + [f"{p:.6g}" for p in probs[i]])
    save_csv(ex_dir / EXAMPLES_CSV, header, rows)


if __name__ == "__main__":
    try:
        main(run, torchrun=True)
    finally:
        ranks.finish()
