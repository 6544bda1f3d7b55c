"""Target chest X-ray classifiers: build, load a checkpoint strictly, read a layer's activations.

The medical_mae release fine-tunes torchvision DenseNet-121 and ResNet-50 with a 14-way head.
Its checkpoints come as {'model': sd}, {'state_dict': sd} or a bare sd, with `module.` (DataParallel)
or `module.encoder_q.` (MoCo pretraining) key prefixes. The authors' loader used strict=False and
so could run a random network without a word; here every backbone tensor must be present and fit,
and a tensor the model does not have is refused too (another model's weights, a training state):
only another head and MoCo's key encoder and queue are ignored.
"""
from __future__ import annotations

import difflib
import re
from contextlib import contextmanager
from pathlib import Path

import torch
import torch.nn as nn
import torchvision

from models import load_failure
from pipeline.cli import PipelineError

ARCHS = ("densenet121", "resnet50")
_PREFIXES = ("module.encoder_q.", "encoder_q.", "module.", "model.", "backbone.")
# What a MoCo pretraining checkpoint holds besides its query encoder: the key encoder and the queue.
_MOCO_EXTRAS = ("encoder_k.", "queue", "queue_ptr")
# Old torchvision DenseNet names ('norm.1') as in some released checkpoints.
_DENSENET_LEGACY = re.compile(r"^(.*denselayer\d+\.(?:norm|relu|conv))\.((?:[12])\.(?:weight|bias|running_mean|running_var|num_batches_tracked))$")


def build_target(arch: str, num_classes: int = 14) -> nn.Module:
    if arch == "densenet121":
        return torchvision.models.densenet121(weights=None, num_classes=num_classes)
    if arch == "resnet50":
        return torchvision.models.resnet50(weights=None, num_classes=num_classes)
    raise PipelineError(f"unknown --model {arch!r}; choose one of {', '.join(ARCHS)}")


def head_name(model: nn.Module) -> str:
    """Name of the final linear layer (DenseNet: classifier, ResNet: fc)."""
    return "classifier" if hasattr(model, "classifier") else "fc"


def _state_dict_of(obj, path) -> dict:
    for field in ("model", "state_dict", "model_state_dict"):
        if isinstance(obj, dict) and isinstance(obj.get(field), dict):
            obj = obj[field]
            break
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise PipelineError(f"{path}: no state dict inside (expected {{'model': ...}}, {{'state_dict': ...}} or a bare state dict)")
    out = {}
    for k, v in obj.items():
        for p in _PREFIXES:
            if k.startswith(p):
                k = k[len(p):]
                break
        k = _DENSENET_LEGACY.sub(r"\1\2", k)
        out[k] = v
    return out


def require_file(path: str | Path, arch: str) -> Path:
    path = Path(path)
    if not path.is_file():
        raise PipelineError(f"checkpoint {path} not found: put the medical_mae {arch} weights there "
                            f"(see README, 'Weights') or pass --checkpoint PATH")
    return path


def load_checkpoint(model: nn.Module, path: str | Path, arch: str) -> str | None:
    """Load weights strictly into the backbone, and the head when it fits. Returns None when the
    head was loaded too, else what the checkpoint has instead of it."""
    path = require_file(path, arch)
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        why = load_failure(e)
        fix = "" if why.startswith("a pickle") else "; re-download it"
        raise PipelineError(f"{path}: cannot read as a PyTorch checkpoint ({why}){fix}") from None
    sd = _state_dict_of(obj, path)
    own = model.state_dict()
    head = head_name(model) + "."
    backbone = [k for k in own if not k.startswith(head) and not k.endswith("num_batches_tracked")]
    missing = [k for k in backbone if k not in sd]
    misfit = [k for k in backbone if k in sd and sd[k].shape != own[k].shape]
    if missing or misfit:
        eg = (missing + misfit)[:3]
        raise PipelineError(
            f"{path} does not fit --model {arch}: {len(missing)} of {len(backbone)} backbone tensors missing, "
            f"{len(misfit)} mis-shaped (e.g. {', '.join(eg)}); pass the checkpoint made for {arch}")
    extra = [k for k in sd if k not in own and not k.startswith(head)]
    moco = [k for k in extra if k.startswith(_MOCO_EXTRAS)]
    unknown = [k for k in extra if k not in moco]
    if unknown:
        raise PipelineError(f"{path} holds {len(unknown)} tensors that --model {arch} does not have (e.g. "
                            f"{', '.join(unknown[:3])}); pass a checkpoint of {arch} alone, not another model or "
                            f"a training state")
    if moco:
        print(f"note: {path}: ignoring MoCo's key encoder and queue ({len(moco)} tensors)")
    head_keys = [k for k in own if k.startswith(head)]
    head_ok = all(k in sd and sd[k].shape == own[k].shape for k in head_keys)
    load = {k: sd[k] for k in backbone + (head_keys if head_ok else []) if k in sd}
    model.load_state_dict(load, strict=False)
    if head_ok:
        return None
    weight, classes = head + "weight", own[head + "weight"].shape[0]
    if weight in sd and sd[weight].dim() == 2:
        return (f"a {sd[weight].shape[0]}-way classifier ({weight} {list(sd[weight].shape)}) that does not fit "
                f"the {classes} classes of dataset/nih14/nih_labels.txt")
    return f"no {classes}-way classifier (a pretraining checkpoint?)"


def load_target(arch: str, checkpoint: str | Path, need_head: bool, num_classes: int = 14) -> tuple[nn.Module, bool]:
    model = build_target(arch, num_classes)
    head = load_checkpoint(model, checkpoint, arch)
    if head is not None:
        if need_head:
            raise PipelineError(f"{checkpoint} has {head}: the fc layer and the model's outputs need a checkpoint "
                                f"fine-tuned on those {num_classes} classes (the medical_mae NIH one); "
                                f"the backbone can still be probed with --layer penultimate")
        print(f"note: {checkpoint} has {head}: backbone layers are probed, the model's outputs are not reported")
    return model.eval(), head is None


def _spatial_mean(x: torch.Tensor) -> torch.Tensor:
    return x.flatten(2).mean(2) if x.dim() > 2 else x


@contextmanager
def tap(model: nn.Module, layer: str):
    """Record `layer`'s activations (one value per channel) during forward passes inside the block.

    `fc` are the logits; `penultimate` the pooled features fed to the head (the head's input);
    anything else is a module name (`layer4`, `features.denseblock3`, ...), spatially averaged.
    """
    store: dict[str, torch.Tensor] = {}
    modules = dict(model.named_modules())
    if layer == "penultimate":
        hook = modules[head_name(model)].register_forward_pre_hook(lambda m, inp: store.__setitem__("a", inp[0]))
    else:
        name = head_name(model) if layer == "fc" else layer
        if name not in modules or not name:
            names = [n for n in modules if n]
            ends = [n for n in names if n.endswith("." + layer)]  # the right name without its parents
            near = list(dict.fromkeys(ends + difflib.get_close_matches(layer, names, n=5, cutoff=0.5)))[:5]
            hint = (f"closest: {', '.join(near)}" if near else
                    f"top-level modules: {', '.join(n for n in names if '.' not in n)}")
            raise PipelineError(f"--layer {layer!r} is not a module of this model; use fc, penultimate or a module "
                                f"name ({hint})")
        hook = modules[name].register_forward_hook(lambda m, inp, out: store.__setitem__("a", _spatial_mean(out)))
    try:
        yield store
    finally:
        hook.remove()


def default_checkpoint(arch: str) -> str:
    return f"pretrained/{arch}.pth"
