"""Step 2: each neuron's representative probing images (README, "The method in one screen", 2).

    python example_selection.py config/nih_densenet121.py --layer fc

One batched forward pass over the probing set records the chosen layer's activations and the
model's logits; then each neuron keeps the images above its adaptive threshold (or its top k).
Writes activations.pt, examples.json, examples.csv (and the example crops when asked). Steps 3-6
read these constants from here and what examples.json stored.
"""
import shutil
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from dataset.nih import ProbeSet, class_names, findings, load_probe_set, probe_crop, split_source
from method import select_examples
from models import pick_device
from models.target import default_checkpoint, load_target, require_file, tap
from pipeline.cache import cached, claim, holds_claims, load_json, save_csv, save_json, save_tensors
from pipeline.cli import configure, main, print_config
from pipeline.outputs import ACTIVATION_FIELDS, activations_key, examples_dir, examples_key, layer_dir

# -----------------------------------------------------------------------------
dataset = "nih14"               # name of the probing set (a tag for the output folder)
split = "train"                 # split file to probe: train | val | test (the release probes train)
data_root = "data/nih14/images" # image folder: flat, or Kaggle layout images_*/images/
split_file = ""                 # explicit split file; default: {data_root}/../{split}_official.txt, else NIH's
skip_missing = False            # drop images of the split missing on disk (default: fail)
model: "densenet121 | resnet50" = "densenet121"  # the target classifier
checkpoint = ""                 # target weights; default pretrained/{model}.pth
layer = "fc"                    # fc | penultimate | layer1..layer4 | any module name (spatial mean)
selection: "adaptive | topk" = "adaptive"  # adaptive: a threshold per neuron; topk: its k largest
adaptive_percent: "(0, 100)" = 93.0  # p of the adaptive threshold; the release suggests 85-95
topk: ">= 1" = 20               # k when selection = topk
resize: ">= 1" = 256            # preprocessing: Resize(resize), CenterCrop(crop), as the models were trained
crop: "[1, resize]" = 224       # larger would pad the resized image with black
batch_size: ">= 1" = 64
num_workers: ">= 0" = 2         # data-loading processes
device: "auto | cpu | cuda | cuda:N | mps" = "auto"  # auto = CUDA when present
save_crops = False              # also write each neuron's example crops as JPEG files for browsing
save_root = "results"           # all outputs go under here
# -----------------------------------------------------------------------------
config = configure(globals())


@holds_claims
def run():
    print_config("example_selection", config)
    # Before the long pass: the folders must be writable, and no other run may write them meanwhile.
    claim(layer_dir(config))
    claim(examples_dir(config))
    dev = pick_device(device)
    ckpt = checkpoint or default_checkpoint(model)
    print(split_source(split, data_root, split_file, "--split_file"))
    names, labels, paths, data_key = load_probe_set(split, data_root, split_file, skip_missing)
    act_path = layer_dir(config) / "activations.pt"
    act_config = {k: config[k] for k in ACTIVATION_FIELDS}
    act_key = activations_key(config, require_file(ckpt, model), data_key)

    t0 = time.time()
    stored = cached(act_path, act_key)
    if stored is not None:
        print(f"reusing {act_path}")
        acts, logits = stored["activations"], stored["logits"]
    else:
        net, head_ok = load_target(model, ckpt, need_head=(layer == "fc"))
        net = net.to(dev)
        loader = torch.utils.data.DataLoader(ProbeSet(paths, resize, crop), batch_size=batch_size,
                                             num_workers=num_workers, pin_memory=dev.type == "cuda")
        a_out, l_out = [], []
        with torch.inference_mode(), tap(net, layer) as store:
            for x in tqdm(loader, desc=f"{model} {layer}", unit="batch"):
                logit = net(x.to(dev, non_blocking=True))
                a_out.append(store["a"].float().cpu())
                l_out.append(logit.float().cpu())
        acts = torch.cat(a_out)
        logits = torch.cat(l_out) if head_ok else None
        save_tensors(act_path, {"key": act_key, "config": {**act_config, "checkpoint": ckpt},
                                "activations": acts, "logits": logits, "image_ids": names})
    print(f"activations {tuple(acts.shape)} in {time.time() - t0:.1f}s")

    ex_dir = examples_dir(config)
    ex_key = examples_key(act_key, config)
    ex_json, ex_csv = ex_dir / "examples.json", ex_dir / "examples.csv"
    old = cached(ex_json, ex_key, load_json) if ex_csv.exists() else None
    if old is not None and (not save_crops or (ex_dir / "crops").is_dir()):
        print(f"reusing {ex_json}")
    else:
        neurons = select_examples(acts, selection, adaptive_percent, topk)
        dead = [n["neuron"] for n in neurons if n["dead"]]
        if dead:
            print(f"note: {len(dead)} dead neuron(s) (constant over the probing set, no examples): {dead[:20]}")
        for n in neurons:
            n["examples"] = [{"image_id": names[i], "activation": float(acts[i, n["neuron"]]), "index": i}
                             for i in n["examples"]]
        shutil.rmtree(ex_dir / "crops", ignore_errors=True)  # crops of an older selection must not survive
        write_tables(neurons, names, labels, logits, ex_dir)
        save_json(ex_json, {"key": ex_key, "activations_key": act_key,
                            "config": {**config, "checkpoint": ckpt, "data_key": data_key},
                            "neurons": [{**n, "examples": [{k: e[k] for k in ("image_id", "activation")}
                                                           for e in n["examples"]]} for n in neurons]})
        if save_crops:
            for n in tqdm(neurons, desc="crops"):
                for r, e in enumerate(n["examples"]):
                    out = ex_dir / "crops" / f"neuron_{n['neuron']:04d}" / crop_name(r, e["image_id"])
                    out.parent.mkdir(parents=True, exist_ok=True)
                    probe_crop(paths[e["index"]], resize, crop).save(out, quality=95)
    sizes = [len(n["examples"]) for n in load_json(ex_json)["neurons"]]
    print(f"examples per neuron: min {min(sizes)}, median {int(np.median(sizes))}, max {max(sizes)}")
    print("outputs:")
    for p in (act_path, ex_json, ex_csv) + ((ex_dir / "crops",) if save_crops else ()):
        print(f"  {p}")


def crop_name(rank: int, image_id: str) -> str:
    """A plain file name for an example crop: an id's folders become part of the name, so no crop
    lands anywhere but its neuron's folder (the rank keeps names apart)."""
    return Path(f"{rank:03d}_" + image_id.replace("\\", "_").replace("/", "_")).with_suffix(".jpg").name


def write_tables(neurons, names, labels, logits, ex_dir):
    """examples.csv: one row per neuron x example, with ground truth and the model's outputs
    from the same forward pass (the release re-ran the model on each saved crop instead)."""
    classes = class_names()
    probs = torch.sigmoid(logits).numpy() if logits is not None else np.full((len(names), len(classes)), np.nan)
    header = ["neuron", "rank", "image_id", "activation", "findings"] + classes + [f"prob_{c}" for c in classes]
    rows = []
    for n in neurons:
        for r, e in enumerate(n["examples"]):
            i = e["index"]
            rows.append([n["neuron"], r, e["image_id"], f"{e['activation']:.6g}", findings(labels[i], classes)]
                        + labels[i].tolist() + [f"{p:.6g}" for p in probs[i]])
    save_csv(ex_dir / "examples.csv", header, rows)


if __name__ == "__main__":
    main(run)
