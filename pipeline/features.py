"""VLM features of probing images and concept prompts, each embedded once and cached (README, "Caches").

Used by concept_matching.py (the example images of one layer) and compare_describers.py (the whole
probing set): both read and grow the same caches, so no image or prompt is embedded twice.

    image_features.pt   per probing set and VLM: {key, features [U, D], image_ids}; grown with new ids
    text_*.pt           per VLM, concept set and prompt: {key, features [C, D], template [D], concepts}

The VLM is loaded only when something is missing: `vlm` is a function that returns it.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import torch
from tqdm import tqdm

from core.digests import code_digest
from dataset.nih import resolve_images
from mammi.method import prompts
from models.vlm import VLM, weights_identity
from pipeline import ranks
from pipeline.cache import cached, locked, save_tensors
from pipeline.forward import probe_loader
from pipeline.outputs import (
    image_features_key,
    image_features_path,
    text_features_key,
    text_features_path,
    vlm_identity,
)


def embed(model: VLM, paths: list[Path], resize: int, crop: int, batch_size: int, num_workers: int,
          show: bool = True) -> torch.Tensor:
    """VLM features [len(paths), D] of the probe crops, in order (loader workers decode and preprocess)."""
    loader = probe_loader(paths, resize, crop, batch_size, num_workers, model.device, preprocess=model.preprocess)
    out = [model.encode_pixels(x) for x in tqdm(loader, desc="images", unit="batch", disable=not show)]
    return torch.cat(out) if out else torch.zeros(0, 0)


def vlm_id(c: dict) -> dict:
    """What identifies the embeddings of the VLM that c's model_clip and clip_weights name."""
    # the code's digest is taken now, not at import: a process that runs several steps sees edits
    return vlm_identity(c, weights_identity(c["model_clip"], c["clip_weights"]), code_digest("pipeline/features.py"))


def image_features(c: dict, stage2: dict, ids: list[str], vlm: Callable[[], VLM], batch_size: int,
                   num_workers: int) -> tuple[torch.Tensor, str, int]:
    """Features [len(ids), D] of the named probing images, seen through stage 2's crop (stage2: the
    config examples.json stored), from image_features.pt; the ids it lacks are embedded and added.
    Returns the features, the cache's key and how many images were embedded now. Under torchrun the
    ranks share the embedding, and only rank 0 gets (and stores) features; the others get None."""
    path = image_features_path(c)
    key = image_features_key(vlm_id(c), stage2)
    store = cached(path, key) or {"key": key, "features": torch.zeros(0, 0), "image_ids": []}
    have = {i: r for r, i in enumerate(store["image_ids"])}
    unique = list(dict.fromkeys(ids))
    # Under torchrun rank 0, which writes, decides what is missing: another run may grow the file meanwhile.
    todo = [i for i, missing in zip(unique, ranks.agree([i not in have for i in unique])) if missing]
    if todo:
        model = vlm()
        _, paths = resolve_images(stage2["data_root"], todo)
        mine = ranks.share(len(paths), batch_size)  # under torchrun, each rank embeds its share
        new = ranks.collect(embed(model, paths[mine.start:mine.stop], stage2["resize"], stage2["crop"], batch_size,
                                  num_workers, show=ranks.is_main()), len(paths), batch_size)
        if not ranks.is_main():
            return None, key, len(todo)
        with locked(path.parent):  # another run may have grown the store meanwhile: add to what is there now
            store = cached(path, key) or store
            known = set(store["image_ids"])
            keep = [r for r, i in enumerate(todo) if i not in known]
            feats = torch.cat([store["features"], new[keep]]) if store["image_ids"] else new
            store = {"key": key, "features": feats, "image_ids": store["image_ids"] + [todo[r] for r in keep]}
            save_tensors(path, store)
        have = {i: r for r, i in enumerate(store["image_ids"])}
    elif store["image_ids"]:
        print(f"reusing {path}")
    else:
        print("no neuron has an example: no image to embed")
    return store["features"][[have[i] for i in ids]], key, len(todo)


def text_features(c: dict, concept_path: str | Path, concepts: list[str], vlm: Callable[[], VLM]) -> dict:
    """{key, features [C, D], template [D], concepts}: each concept as one prompt (c's template_ver and
    template), and the template alone, from the text cache or embedded now."""
    path = text_features_path(c)
    key = text_features_key(vlm_id(c), concept_path, c)
    text = cached(path, key)
    if text is None:
        template = c["template"]
        emb = vlm().encode_texts(prompts(concepts, template if c["template_ver"] == "base" else None) + [template],
                                 batch_size=256)
        text = {"key": key, "features": emb[:-1], "template": emb[-1], "concepts": concepts}
        with locked(path.parent):
            save_tensors(path, text)
    else:
        print(f"reusing {path}")
    return text
