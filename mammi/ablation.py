"""The ablation statistic (docs/ablation.md), as plain functions of tensors: does zeroing the neurons a
describer names for a finding lower the finding's logit more than zeroing as many neurons of the layer
drawn at random? Checked against a literal loop in tests/test_ablation.py and tests/test_mammi_ablation.py.

  named_neurons   N_f: the live neurons whose concepts name the finding (mammi.describers.names_finding);
  random_sets     R sets of |N_f| live neurons, drawn with a fixed seed;
  linear_drops    the mean drop of each class's logit over its positive images when a set is zeroed,
                  for a layer that reaches the logits through a linear map (linear_map: penultimate under a
                  linear head, W its weight; fc itself, W the identity): exactly sum_k A[x, k] W[c, k];
  hook_drops      the same for any layer, by forward passes with a hook that zeroes the channels (zeroing);
  finding_stats   effect, random mean and SD, z and the drop of the other classes, in logit SDs;
  median_z        a describer's faithfulness: the median z over its findings;
  untested        the layers where the test says nothing (fc, whose neurons are the logits themselves).
pipeline/ablation.py finds the held-out split, runs these and writes the outputs.
"""
from __future__ import annotations

from contextlib import contextmanager

import numpy as np
import torch
from torch import nn

from mammi.describers import names_finding
from models.layers import channel_axis, channels_last_modules, hook_layer
from models.target import head_name


def named_neurons(records: list[dict], finding: str) -> list[int]:
    """N_f: the live neurons (status other than dead) of a concepts.json whose concepts name the finding."""
    return [r["neuron"] for r in records
            if r.get("status") != "dead" and names_finding([c["concept"] for c in r["concepts"]], finding)]


def live_neurons(records: list[dict]) -> list[int]:
    return [r["neuron"] for r in records if r.get("status") != "dead"]


def random_sets(live: list[int], size: int, draws: int, seed: int) -> torch.Tensor:
    """[draws, size] neuron ids: each row a uniform random subset of `live` (without replacement), the
    first `size` of a seeded random order; the same seed gives the same orders for every finding."""
    g = torch.Generator().manual_seed(seed)
    order = torch.rand(draws, len(live), generator=g, dtype=torch.float64).argsort(dim=1)
    return torch.as_tensor(live, dtype=torch.long)[order[:, :size]]


def positives(labels: np.ndarray) -> torch.Tensor:
    """[N, C] float64: 1 where the image is labelled positive for the class (0 and MISSING: 0)."""
    return torch.as_tensor(np.asarray(labels) == 1, dtype=torch.float64)


def linear_drops(acts: torch.Tensor, weight: torch.Tensor, pos: torch.Tensor, sets: list[list[int]]) -> torch.Tensor:
    """[S, C]: for each set s and class c, the mean over the images x positive for c of
    sum_{k in s} acts[x, k] * weight[c, k], the drop of logit c when the layer's channels s are zeroed
    and the logits are weight @ acts + bias. NaN for a class without positives."""
    mean_act = (pos.T @ acts.double()) / pos.sum(0)[:, None]  # [C, K]: mean activation over c's positives
    member = torch.zeros(len(sets), acts.shape[1], dtype=torch.float64)
    for i, s in enumerate(sets):
        member[i, list(s)] = 1.0
    return member @ (weight.double() * mean_act).T


@contextmanager
def zeroing(net: nn.Module, layer: str):
    """A forward hook on the layer (fc: the outputs; penultimate: the head's input; else a module's
    output) that zeroes the channels in the returned list; empty: the network as it is. A module that runs
    several times in a pass is zeroed at its last call only, the one a probe reads, as counted by a pass
    before (hook_drops' first pass is the network as it is)."""
    channels: list[int] = []
    last = layer not in ("fc", "penultimate") and layer in channels_last_modules(net)

    def zero(t):
        if not channels:
            return t
        idx = torch.as_tensor(channels, dtype=torch.long, device=t.device)
        return t.index_fill(channel_axis(t, last), idx, 0)

    def on_output(out):
        if isinstance(out, (tuple, list)):  # attention blocks return (output, weights): the first tensor
            i = next(j for j, o in enumerate(out) if isinstance(o, torch.Tensor))
            return type(out)([zero(o) if j == i else o for j, o in enumerate(out)])
        return zero(out)

    hook = hook_layer(net, layer, on_output, only_last=True)
    try:
        yield channels
    finally:
        hook.remove()


def hook_drops(net: nn.Module, layer: str, batches, pos: torch.Tensor, sets: list[list[int]],
               dev: torch.device) -> torch.Tensor:
    """[S, C] as linear_drops, for any layer: per batch of images (in the order of pos's rows) one pass
    as the network is and one per set with its channels zeroed; the drop is the difference of logits."""
    total = torch.zeros(len(sets), pos.shape[1], dtype=torch.float64)
    at = 0
    with torch.no_grad(), zeroing(net, layer) as channels:
        for x in batches:
            x = x.to(dev)
            p = pos[at:at + len(x)]
            channels.clear()
            base = net(x).double().cpu()
            for i, s in enumerate(sets):
                channels[:] = list(s)
                total[i] += ((base - net(x).double().cpu()) * p).sum(0)
            at += len(x)
    return total / pos.sum(0)


def finding_stats(effects: torch.Tensor, f: int, others: list[int]) -> dict:
    """From effects [1 + R, C] (row 0: the named set N_f, then the R random sets; each a mean drop in
    units of the class's logit SD): the effect on class f, the random sets' mean and SD (n - 1) on it,
    z = (effect - mean) / SD (None when the SD is 0), and the named set's mean effect over `others`."""
    effect, rand = float(effects[0, f]), effects[1:, f]
    mean, sd = float(rand.mean()), float(rand.std(correction=1))
    z = (effect - mean) / sd if sd > 0 else None
    other = float(effects[0, others].mean()) if others else None
    return {"effect": effect, "random_mean": mean, "random_sd": sd, "z": z, "other_classes": other}


def linear_map(net: nn.Module, layer: str, acts: torch.Tensor, logits: torch.Tensor) -> torch.Tensor | None:
    """W [C, K] with logits = acts @ W.T + b on every image of the split, where the layer reaches the
    logits linearly: fc (W = I) or the input of an nn.Linear head; checked on the logits themselves
    (a model may scale or combine its head's output). None: ablate by hooks."""
    if layer == "fc":
        return torch.eye(logits.shape[1], dtype=torch.float64)
    if layer != "penultimate":
        return None
    head = net.get_submodule(head_name(net))
    if not isinstance(head, nn.Linear) or acts.shape[1] != head.in_features:
        return None
    w = head.weight.detach().double().cpu()
    b = head.bias.detach().double().cpu() if head.bias is not None else 0.0
    gap = (acts.double() @ w.T + b - logits.double()).abs().max()
    return w if gap <= 1e-4 * (1 + logits.abs().max()) else None


def median_z(result: dict) -> dict:
    """A describer's faithfulness: the median z over the findings with named neurons, and how many."""
    z = [r["z"] for r in result["findings"] if r["z"] is not None]
    return {"median_z": float(np.median(z)) if z else None, "findings": len(z), "of": len(result["findings"])}


def untested(layer: str) -> str | None:
    """Why ablation tests nothing at this layer, or None where it does. At fc each neuron is a class's
    logit: zeroing the neurons named for a finding and reading the finding's logit only asks whether the
    finding's own neuron is among them (z near sqrt(K - 1) if so, near 0 if not), which the hit rate says."""
    if layer == "fc":
        return ("at the fc layer each neuron is a class's logit, so zeroing the neurons named for a finding and "
                "reading that finding's logit only asks whether its own neuron is among them (the hit rate says "
                "that); the penultimate layer is where ablation tests the names")
    return None
