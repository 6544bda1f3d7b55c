"""Each example image's activation map, for the gallery's neuron view (Network Dissection's pages show
each unit's top images with its map over them).

Step 2 keeps one number per neuron and image, so the maps need the target again, run on the example
images alone (examples.json's, the first `limit` of each neuron), as step 2 saw them (its model,
checkpoint, re-initialisation and preprocessing, stored in examples.json's config). Per layer kind:
- a module whose output is spatial ([B, C, H, W], or [B, H, W, C] where the model says so): the
  neuron's channel on that image;
- fc: the class activation map, the head's weights of that class times the last spatial block's maps
  (DenseNet's ReLU'd `features`, ResNet's `layer4`) plus its bias: its mean is the logit;
- penultimate: the channel of that block the head pools;
- transformer tokens [B, T, D]: the neuron's value on each patch token, on the patch grid;
- anything else ([B, D] outputs of other modules, penultimate of a model without such a block): none,
  and the reason says so.
Each map averages to the neuron's step-2 activation on that image (token maps when the tokens were
mean-pooled), and that is checked: a checkpoint changed since step 2 is refused, not drawn. The maps
themselves are mammi/maps.py's; this module runs the pass over the examples and caches it.
"""
from __future__ import annotations

from pathlib import Path

import torch

from core.errors import PipelineError
from dataset.nih import model_input_args, resolve_images
from mammi.maps import batch_maps, layer_kind
from models.target import target_as_probed
from pipeline.cache import cached, may_write, save_tensors
from pipeline.forward import probe_loader
from pipeline.outputs import overlays_key, overlays_path, stored_classes

# What a layer's map is, in the words the neuron view shows.
KINDS = {"fc": "class activation map (the class's head weights times the last block's maps)",
         "penultimate": "map of its channel in the last block, before pooling",
         "spatial": "map of its channel at this layer",
         "tokens": "value on each patch token, on the patch grid"}


def example_maps(model: torch.nn.Module, layer: str, examples: list[tuple[int, list[str]]], paths: dict[str, Path],
                 resize: int, crop: int, batch_size: int, num_workers: int, device: torch.device,
                 **norm) -> dict:
    """For each (neuron, its example image ids): the neuron's map on each of its examples, stacked
    [E, h, w] in that order; one forward pass over the distinct images, keeping only the maps asked for
    (a penultimate layer's every channel on every image would not fit for NIH). norm: the model's input
    channels, mean and std."""
    ids = list(dict.fromkeys(i for _, xs in examples for i in xs))
    row = {i: r for r, i in enumerate(ids)}
    img = torch.tensor([row[i] for _, xs in examples for i in xs], dtype=torch.long)
    neuron = torch.tensor([k for k, xs in examples for _ in xs], dtype=torch.long)
    loader = probe_loader([paths[i] for i in ids], resize, crop, batch_size, num_workers, device, **norm)
    out, module, kind, at = None, "", "", 0
    for x in loader:
        x = x.to(device)
        if out is None:
            module, kind = layer_kind(model, layer, x[:1])
        maps = batch_maps(model, layer, module, kind, x).cpu()
        if out is None:
            out = torch.zeros(len(img), *maps.shape[2:])
        here = ((img >= at) & (img < at + len(x))).nonzero()[:, 0]
        out[here] = maps[img[here] - at, neuron[here]]
        at += len(x)
    return {"maps": out if out is not None else torch.zeros(0, 1, 1), "module": module, "kind": kind}


def example_overlays(ex_json: Path, ex: dict, data_root: str, limit: int, batch_size: int, num_workers: int,
                     device: torch.device) -> dict:
    """The maps of each neuron's first `limit` examples (examples.json, read by read_examples), cached
    beside it: {"maps" [E, h, w], "neurons", "counts" (its examples per neuron, in order), "kind",
    "module", "key"}. data_root replaces the stored image folder when given."""
    c = ex["config"]
    examples = [(n["neuron"], [e["image_id"] for e in n["examples"][:limit]]) for n in ex["neurons"]]
    examples = [(k, xs) for k, xs in examples if xs]
    if not examples:
        raise PipelineError(f"{ex_json} has no example images to draw maps on (every neuron dead, or none shown)")
    path = overlays_path(ex_json)
    # The module is in the key through the layer and step 2's key: the same model gives the same one.
    key = overlays_key(ex["activations_key"], c["layer"], examples)
    stored = cached(path, key)
    if stored is not None:
        print(f"reusing {path}")
        return stored
    may_write(path)  # before the pass: a selection outside --save_root gets no maps (the gallery says so)
    prep = model_input_args(c)
    net = target_as_probed(c, c["layer"] == "fc", len(stored_classes(c) or []))[0].to(device)
    folder = data_root or c["data_root"]
    names, found = resolve_images(folder, list(dict.fromkeys(i for _, xs in examples for i in xs)))
    got = example_maps(net, c["layer"], examples, dict(zip(names, found)), int(c["resize"]), int(c["crop"]),
                       batch_size, num_workers, device, **prep)
    _check(got, ex, examples, c, limit, ex_json)
    payload = {"key": key, "maps": got["maps"], "neurons": [k for k, _ in examples],
               "counts": [len(xs) for _, xs in examples], "kind": got["kind"], "module": got["module"]}
    save_tensors(path, payload)
    return payload


def _check(got: dict, ex: dict, examples: list, c: dict, limit: int, ex_json: Path) -> None:
    """Each map's mean is the activation step 2 stored for its example (token maps: when step 2
    mean-pooled the tokens), up to rounding: anything else is another model than step 2's."""
    if got["kind"] == "tokens" and c.get("token_pool", "mean") != "mean":
        return
    by_id = {n["neuron"]: n for n in ex["neurons"]}
    stored = torch.tensor([e["activation"] for k, _ in examples for e in by_id[k]["examples"][:limit]])
    gap = float((got["maps"].mean((1, 2)) - stored).abs().max()) if len(stored) else 0.0
    rel = 2e-2 if c.get("precision") == "bf16" else 1e-3
    if gap > rel * float(stored.abs().max()) + 1e-5:
        raise PipelineError(f"the {c['layer']} maps do not average to the activations {ex_json} holds (gap "
                            f"{gap:.3g}): {c.get('checkpoint') or 'the model'} changed since step 2 (re-run "
                            f"example_selection.py), or the model's outputs are not its head on the pooled maps")
