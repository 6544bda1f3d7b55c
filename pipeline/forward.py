"""Stage 2's one forward pass over the probing set (README, "Scale"): the loader (the one factory of
every DataLoader over probe crops) and the loop that records several layers and the logits.
example_selection.py runs it; benchmark.py times it, and times its two parts alone (the loader without
the model, the model on batches in memory).
"""
from __future__ import annotations

import os
from contextlib import nullcontext
from typing import Callable, Iterable

import torch
from tqdm import tqdm

from core.errors import PipelineError
from dataset.nih import ProbeSet
from models.layers import first_nonfinite, taps
from pipeline.limits import check_workers, workers_that_fit
from pipeline.ranks import world

PREFETCH = 4  # batches each loader process of the forward pass keeps ready (torch's default: 2)


def workers(num_workers: int, prefetch: int = 2) -> int:
    """The loader processes of every DataLoader, each with `prefetch` batches in flight: -1, one per core this
    process may use, shared among torchrun's ranks, as many as the open-file limit allows; a number given
    beyond that limit is refused before any starts."""
    if num_workers >= 0:
        check_workers("num_workers", num_workers, prefetch)
        return num_workers
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    n, fit = max(1, cores // world()[1]), workers_that_fit(prefetch)
    return n if fit is None else min(n, fit)


def probe_loader(paths, resize: int, crop: int, batch_size: int, num_workers: int, dev: torch.device,
                 preprocess=None, sizes: bool = False, **norm) -> torch.utils.data.DataLoader:
    """The one DataLoader over probe crops (dataset.nih.ProbeSet), in probe order, for every pass: the target's
    input (norm: its channels, mean and std, model_input_args) or a VLM's (preprocess); with sizes, each
    image's size too. Its loader processes are `workers`, capped by the open-file limit for PREFETCH batches
    each; pinned host memory on a GPU (dev: where the batches go) lets a copy overlap the next batch."""
    n = workers(num_workers, PREFETCH)
    return torch.utils.data.DataLoader(
        ProbeSet(paths, resize, crop, preprocess=preprocess, sizes=sizes, **norm), batch_size=batch_size,
        num_workers=n, pin_memory=dev.type == "cuda", prefetch_factor=PREFETCH if n else None)


def use_channels_last(setting: str, dev: torch.device) -> bool:
    """auto: on a GPU, where cuDNN's convolutions are fastest in NHWC; the CPU gains nothing measurable."""
    return setting == "yes" or (setting == "auto" and dev.type == "cuda")


def record(net: torch.nn.Module, batches: Iterable[torch.Tensor], layers: list[str], rows: int, dev: torch.device,
           token_pool: str = "mean", precision: str = "fp32", channels_last: bool = False,
           first: Callable | None = None, desc: str = "", show: bool = True):
    """Activations {layer: [rows, neurons] float32} and logits [rows, K] float32 of images given in
    batches, written in place into arrays of `rows` rows sized at the first batch (no list of batches
    to concatenate: one copy of the result in memory; torchrun's rank 0 sizes them for every rank's
    rows, its own share first). first(x, forward) runs the first batch's forward pass, so a caller can check it;
    bf16 runs the model under autocast, its outputs stored as float32."""
    if channels_last:
        net = net.to(memory_format=torch.channels_last)
    cast = torch.autocast(dev.type, dtype=torch.bfloat16) if precision == "bf16" else nullcontext()
    acts: dict[str, torch.Tensor] = {}
    logits = None
    at = 0
    # The bar is closed (its line ended) before an error on a batch is printed below it. Not inference_mode:
    # its tensors could not take the rows the other ranks send.
    with torch.no_grad(), cast, taps(net, layers, token_pool) as store, \
            tqdm(batches, desc=desc, unit="batch", disable=not show) as bar:
        for b, x in enumerate(bar):
            x = x.to(dev, non_blocking=True)
            if channels_last and x.dim() == 4:
                x = x.contiguous(memory_format=torch.channels_last)
            out = first(x, lambda: net(x)) if b == 0 and first else net(x)
            if b == 0:
                acts = {k: torch.empty(rows, store[k].shape[1]) for k in layers}
                logits = torch.empty(rows, out.shape[1])
            for k in layers:
                acts[k][at:at + len(x)] = store[k].float()
            logits[at:at + len(x)] = out.float()
            if not all(torch.isfinite(t[at:at + len(x)]).all() for t in (logits, *acts.values())):
                nonfinite(net, x, at, precision)
            at += len(x)
    return acts, logits


def nonfinite(net: torch.nn.Module, x: torch.Tensor, at: int, precision: str):
    """Refuse a batch whose activations or outputs hold NaN or infinity (the weights were checked finite
    when loaded): naming the module where they first appear, found by running the batch once more."""
    if not torch.isfinite(x).all():
        where = "in the input images themselves"
    else:
        module = first_nonfinite(net, x)
        where = f"first in the output of module {module!r}, from finite inputs" if module else \
            "(not again when the batch ran once more)"
    raise PipelineError(f"the forward pass on images {at + 1}-{at + len(x)} of the probing set gives NaN or infinite "
                        f"values, {where}; with finite weights this is the input's scale (--mean, --std) or the "
                        f"model's own code" + ("; under --precision bf16, try fp32" if precision == "bf16" else ""))

