"""Network Dissection as compare_describers.py runs it on a probing set: the images whose masks are
known, the target's maps of the layer's block (cached per model and probing set in maps_{module}.pt),
checked against step 2's activations, and their IoU with each finding's boxes (pipeline/dissection.py)."""
from __future__ import annotations

from pathlib import Path

from dataset.nih import model_input_args, resolve_images
from dataset.probe import label_key
from mammi.dissection import dissect
from mammi.maps import layer_maps
from models.layers import map_source
from models.target import target_as_probed
from pipeline.cache import cached, save_tensors
from pipeline.cli import PipelineError
from pipeline.dissection import collect_maps
from pipeline.outputs import maps_key, maps_path, stored_classes


def dissection(stage2, ids, labels, boxes, box_path, acts, findings, dev, quantile: float, batch_size: int,
               num_workers: int):
    """Network Dissection over the probing images whose masks are known: IoU [K, C], its findings and
    the number of images; or why it cannot run. quantile: the top share of a neuron's spatial activations
    its masks keep (T_k)."""
    def anns_of(name):
        return boxes.get(name, boxes.get(Path(name).name))
    # An image without boxes has empty masks only when its labels say it has none of the findings.
    rows = [r for r, i in enumerate(ids) if anns_of(i) is not None or (labels is not None and (labels[r] == 0).all())]
    if not any(anns_of(ids[r]) for r in rows):
        return (f"no image of the probing set has a box in {box_path}; dissection needs a probing set with "
                f"boxes or masks (NIH: its bbox.csv images, ChestX-Det: its json)")
    prep = model_input_args(stage2)
    # A box joins the finding of its name as labels join classes (case, spaces, '_' and '-' aside).
    finding_of = {label_key(f): f for f in findings}
    anns = [[{**a, "label": finding_of.get(label_key(a["label"]), a["label"].lower())} for a in anns_of(ids[r]) or []]
            for r in rows]
    names, layer = findings + sorted({a["label"] for x in anns for a in x} - set(findings)), stage2["layer"]
    net = target_as_probed(stage2, layer == "fc", len(stored_classes(stage2) or []))[0].to(dev)
    try:
        module = map_source(net, layer)
    except PipelineError as e:  # no block whose maps it could read: this rival does not apply to the model
        return str(e)
    # The maps of the last block serve fc and penultimate alike: one pass per model and probing set.
    path, key = maps_path(stage2, module), maps_key(stage2, module, [ids[r] for r in rows])
    stored = cached(path, key)
    if stored is None:
        _, paths = resolve_images(stage2["data_root"], [ids[r] for r in rows])
        raw, sizes = collect_maps(net, module, paths, stage2["resize"], stage2["crop"], batch_size, num_workers, dev,
                                   **prep)
        save_tensors(path, {"key": key, "maps": raw, "sizes": sizes, "image_ids": [ids[r] for r in rows]})
    else:
        print(f"reusing {path}")
        raw, sizes = stored["maps"], stored["sizes"]
    maps = layer_maps(net.cpu(), layer, raw)
    gap = float((maps.mean((2, 3)) - acts[rows]).abs().max())
    if gap > 1e-3 * float(acts.abs().max()) + 1e-5:
        raise PipelineError(f"the {layer} maps do not average to the activations of step 2 (gap {gap:.3g}): "
                            f"{stage2['checkpoint']} changed since; re-run example_selection.py")
    got = dissect(maps, sizes, anns, names, stage2["resize"], stage2["crop"], quantile, batch_size)
    n_boxed = sum(bool(anns_of(ids[r])) for r in rows)
    print(f"dissection: {len(rows)} images ({n_boxed} with boxes, the rest without findings), maps "
          f"{maps.shape[2]}x{maps.shape[3]} upsampled to {stage2['crop']}x{stage2['crop']}")
    return got["iou"], names, len(rows)
