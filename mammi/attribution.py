"""Which penultimate neurons drive a prediction (visualization.py, step 6): Taylor scores, activation x
d(class logit)/d(activation) at the pooled penultimate layer, for every class at once, by plain autograd
through the head. Checked against captum's LayerGradientXActivation in tests/test_visualization.py."""
from __future__ import annotations

import torch
import torch.nn as nn

from models.layers import map_module, read_maps, tap
from models.target import head_name


def taylor_scores(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """For a batch x: logits [B, C], Taylor scores [B, C, K] of the K pooled penultimate neurons for
    each of the C classes, and the spatial maps [B, K, h, w] of the last spatial block (map_module).
    The backbone runs once without a graph; the gradient of each class's logit is taken through the
    head from the pooled activations."""
    with torch.no_grad(), tap(model, "penultimate") as pen, read_maps(model, map_module(model)) as rec:
        model(x)
    pooled = pen["a"].detach().float().requires_grad_()
    with torch.enable_grad():
        logits = model.get_submodule(head_name(model))(pooled)
        grads = [torch.autograd.grad(logits[:, c].sum(), pooled, retain_graph=c < logits.shape[1] - 1)[0]
                 for c in range(logits.shape[1])]
    taylor = pooled.detach()[:, None, :] * torch.stack(grads, 1)
    return logits.detach(), taylor, rec["maps"]


def top_neurons(scores: torch.Tensor, n: int) -> list[int]:
    """The n neurons with the largest Taylor score (ties: lower id first)."""
    return torch.sort(scores, descending=True, stable=True).indices[:n].tolist()
