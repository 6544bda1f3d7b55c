"""Target chest X-ray classifiers: build any of them from one `--model` spec, load its checkpoint
strictly, say how it wants its input, and read any of its layers.

The forms of `--model` (FORMS):
    densenet121, resnet50     torchvision's, as the medical_mae release fine-tuned them (14-way NIH head)
    torchvision:NAME          any torchvision classification model; the head has --num_classes outputs
    timm:NAME                 any timm model, likewise
    xrv:NAME                  a torchxrayvision classifier (densenet121-res224-all, resnet50-res512-all, ...)
    path/file.py:function     the nn.Module function() returns: the file's code runs, as an import would
    path/model.pt             a TorchScript file (torch.jit.save); it also runs the code it holds

The medical_mae checkpoints come as {'model': sd}, {'state_dict': sd} or a bare sd, with `module.`
(DataParallel) or `module.encoder_q.` (MoCo pretraining) key prefixes. The authors' loader used
strict=False and so could run a random network without a word; here every backbone tensor must be
present and fit, and a tensor the model does not have is refused too (another model's weights, a
training state): only another head and MoCo's key encoder and queue are ignored. The same holds for
every family's --checkpoint. torchxrayvision ships whole pickled DenseNets; such a file is read with
weights_only=True too, the classes its pickle names allowed only when they are torch.nn layers or
torchxrayvision's own.
"""
from __future__ import annotations

import ast
import difflib
import importlib
import importlib.util
import os
import re
import sys
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn
import torchvision
from torchvision.ops.misc import Permute

from dataset.nih import MEAN, STD
from models import load_failure
from pipeline.cli import PipelineError

ARCHS = ("densenet121", "resnet50")
FORMS = ("densenet121 | resnet50 | torchvision:NAME | timm:NAME | xrv:NAME | path/file.py:function | "
         "path/model.pt (TorchScript)")
SCRIPT_SUFFIXES = (".pt", ".pth", ".ts")
_PREFIXES = ("module.encoder_q.", "encoder_q.", "module.", "model.", "backbone.")
# What a MoCo pretraining checkpoint holds besides its query encoder: the key encoder and the queue.
_MOCO_EXTRAS = ("encoder_k.", "queue", "queue_ptr")
# torchxrayvision's calibration buffer: it maps outputs to probabilities; the logits are wanted here.
_XRV_EXTRAS = ("op_threshs",)
# Old torchvision DenseNet names ('norm.1') as in some released checkpoints.
_DENSENET_LEGACY = re.compile(r"^(.*denselayer\d+\.(?:norm|relu|conv))\.((?:[12])\.(?:weight|bias|running_mean|running_var|num_batches_tracked))$")
IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
# torchxrayvision scales [0, 1] pixels to [-1024, 1024] (xrv.datasets.normalize): (x - 0.5) / (1 / 2048).
XRV_NORM = ((0.5,), (1 / 2048,))
# Modules that compute over dim 1, so their 4-D outputs are [B, C, H, W] inside a channels-last model too.
CHANNELS_FIRST = (nn.Conv2d, nn.ConvTranspose2d, nn.BatchNorm2d, nn.InstanceNorm2d, nn.GroupNorm, nn.AvgPool2d,
                  nn.MaxPool2d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)
# Outputs of each family before a checkpoint or --num_classes says otherwise.
_DEFAULT_CLASSES = {"medical_mae": 14, "torchvision": 1000, "timm": 1000}


@dataclass(frozen=True)
class Spec:
    family: str         # medical_mae | torchvision | timm | xrv | file | torchscript
    name: str           # the architecture, or the file
    function: str = ""  # file.py:function


def parse_model(model: str) -> Spec:
    """The family and name a --model value names; an unknown one lists the forms."""
    if model in ARCHS:
        return Spec("medical_mae", model)
    family, sep, name = model.partition(":")
    if sep and family in ("torchvision", "timm", "xrv"):
        _check_name(family, name)
        return Spec(family, name)
    file, sep, function = model.rpartition(":")
    if sep and file.endswith(".py") and function.isidentifier():
        return Spec("file", file, function)
    if model.endswith(SCRIPT_SUFFIXES):
        return Spec("torchscript", model)
    raise PipelineError(f"unknown --model {model}: the forms are {FORMS}")


def _check_name(family: str, name: str) -> None:
    if family == "torchvision":
        known = torchvision.models.list_models(module=torchvision.models)
    elif family == "timm":
        import timm
        known = timm.list_models()
        if timm.is_model(name):
            return
    else:
        import torchxrayvision as xrv
        known = list(xrv.models.model_urls)
    if name not in known:
        near = difflib.get_close_matches(name, known, n=4, cutoff=0.5)
        hint = f"closest: {', '.join(near)}" if near else f"{len(known)} known, e.g. {', '.join(known[:4])}"
        raise PipelineError(f"--model {family}:{name}: {family} has no model {name!r} ({hint}); the forms are {FORMS}")


def model_tag(model: str) -> str:
    """A folder name for a --model value: a file's stem (and function), not its whole path."""
    spec = parse_model(model)
    if spec.family == "file":
        return f"{Path(spec.name).stem}-{spec.function}"
    if spec.family == "torchscript":
        return Path(spec.name).stem
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", model).strip("-")


def model_classes(model: str) -> list[str] | None:
    """The output names a model carries itself: the medical_mae models' 14 NIH findings,
    torchxrayvision's 18 pathologies (some ''); None for the other families."""
    spec = parse_model(model)
    if spec.family == "medical_mae":
        from dataset.nih import class_names
        return class_names()
    if spec.family != "xrv":
        return None
    import torchxrayvision as xrv
    return list(xrv.models.model_urls[spec.name]["labels"])


# ---- preprocessing

def default_preprocessing(model: str) -> dict:
    """The family's own input: Resize, CenterCrop, channels, mean and std (README, "Your own model
    and data"). Interpolation is bilinear for all."""
    spec = parse_model(model)
    if spec.family == "torchvision":
        try:
            t = torchvision.models.get_model_weights(spec.name).DEFAULT.transforms()
            return {"resize": t.resize_size[0], "crop": t.crop_size[0], "channels": 3, "mean": tuple(t.mean),
                    "std": tuple(t.std)}
        except (ValueError, AttributeError, KeyError):  # a model without released weights: ImageNet's
            return {"resize": 256, "crop": 224, "channels": 3, "mean": IMAGENET[0], "std": IMAGENET[1]}
    if spec.family == "timm":
        import timm
        cfg = timm.get_pretrained_cfg(spec.name)
        if cfg is None:
            return {"resize": 256, "crop": 224, "channels": 3, "mean": IMAGENET[0], "std": IMAGENET[1]}
        size = cfg.input_size[-1]
        return {"resize": int(size / (cfg.crop_pct or 1.0)), "crop": size, "channels": cfg.input_size[0],
                "mean": tuple(cfg.mean), "std": tuple(cfg.std)}
    if spec.family == "xrv":
        import torchxrayvision as xrv
        res = xrv.models.model_urls[spec.name].get("input_resolution", 224)
        return {"resize": res, "crop": res, "channels": 1, "mean": XRV_NORM[0], "std": XRV_NORM[1]}
    # medical_mae, and a user's own model until told otherwise: the release's NIH statistics
    return {"resize": 256, "crop": 224, "channels": 3, "mean": (MEAN,), "std": (STD,)}


def preprocessing(c: dict) -> dict:
    """resize, crop, channels, mean and std for step 2's constants in c: each the family's default
    where c leaves it 0 or empty. mean and std come back as text ("0.485,0.456,0.406"), as stored."""
    d = default_preprocessing(c["model"])
    out = {k: c.get(k) or d[k] for k in ("resize", "crop", "channels")}
    if out["crop"] > out["resize"]:
        raise PipelineError(f"--crop {out['crop']} exceeds --resize {out['resize']}: CenterCrop would pad the image "
                            f"with black; pass a crop no larger than the resize")
    if out["channels"] not in (1, 3):
        raise PipelineError(f"--channels is 1 or 3 (0 = the model family's), not {out['channels']}")
    for k in ("mean", "std"):
        text = c.get(k, "")
        try:
            v = tuple(float(t) for t in text.split(",")) if text else d[k]
        except ValueError:
            raise PipelineError(f"--{k} takes one number or one per channel, comma-separated, not {text!r}") from None
        if len(v) not in (1, out["channels"]):
            raise PipelineError(f"--{k} has {len(v)} values for {out['channels']} channel(s)"
                                + ("" if text else f" (the family's default, for --channels {d['channels']})")
                                + f"; pass --{k} with 1 or {out['channels']} values")
        if k == "std" and min(v) <= 0:
            raise PipelineError(f"--std must be positive, not {text!r}")
        out[k] = ",".join(repr(x) for x in v)
    return out


# ---- files and identity

def require_file(path: str | Path, arch: str) -> Path:
    path = Path(path)
    if not path.is_file():
        raise PipelineError(f"checkpoint {path} not found: put the medical_mae {arch} weights there "
                            f"(see README, 'Weights') or pass --checkpoint PATH")
    return path


def default_checkpoint(arch: str) -> str:
    return f"pretrained/{arch}.pth"


def _xrv_cache(name: str) -> Path:
    import torchxrayvision as xrv
    url = xrv.models.model_urls[name]["weights_url"]
    return Path(os.path.expanduser(xrv.utils.get_cache_dir())) / os.path.basename(url)


def checkpoint_of(model: str, checkpoint: str) -> Path | None:
    """The weights file a target loads (None: a user's model or TorchScript file holds its own), checked
    to exist; nothing is downloaded."""
    spec = parse_model(model)
    if spec.family == "medical_mae":
        return require_file(checkpoint or default_checkpoint(spec.name), spec.name)
    if spec.family in ("file", "torchscript"):
        source = Path(spec.name)
        if not source.is_file():
            what = "Python file and the function in it" if spec.family == "file" else "TorchScript file"
            raise PipelineError(f"--model {model}: {source} not found; pass the path of your {what}")
        if spec.family == "torchscript" and checkpoint:
            raise PipelineError(f"--model {model} is a TorchScript file, which holds its weights; drop --checkpoint")
    elif spec.family == "xrv" and not checkpoint:
        import torchxrayvision as xrv
        cached = _xrv_cache(spec.name)
        if not cached.is_file():
            raise PipelineError(f"--model {model}: its weights are not in torchxrayvision's cache; download "
                                f"{xrv.models.model_urls[spec.name]['weights_url']} to {cached} "
                                f"(or pass --checkpoint FILE)")
        return cached
    elif not checkpoint and spec.family in ("torchvision", "timm"):
        raise PipelineError(f"--model {model} needs --checkpoint FILE: the weights of your fine-tuned {spec.name} "
                            f"(a state dict; its head sets the number of outputs)")
    if checkpoint and not Path(checkpoint).is_file():
        raise PipelineError(f"checkpoint {checkpoint} not found; pass --checkpoint with the weights of --model {model}")
    return Path(checkpoint) if checkpoint else None


def local_sources(path: str | Path) -> list[Path]:
    """A user's model file and the modules beside it that it imports, directly or through them, found by
    reading their import statements (those inside functions too). The file runs with its folder first on
    sys.path (_from_file), so `import helpers`, `from helpers import x` and `import pkg.sub` reach the
    files there before any installed module: these are the user's code the model can run. Read, not
    imported: a cache key is computed before the model is built and must not run the file. A module
    imported by a computed name (importlib) is not seen."""
    root = Path(path).resolve().parent
    found: list[Path] = []
    todo = [Path(path).resolve()]
    while todo:
        file = todo.pop()
        if file in found:
            continue
        found.append(file)
        try:
            tree = ast.parse(file.read_bytes(), str(file))
        except (SyntaxError, ValueError):  # the import itself will say what is wrong with it
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [(root, a.name) for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                # relative (level 1: the file's own package folder) or from the model file's folder
                base = file.parents[min(node.level, len(file.parents)) - 1] if node.level else root
                head = node.module or ""
                names = [(base, f"{head}.{a.name}".strip(".")) for a in node.names]
            else:
                continue
            for base, dotted in names:
                parts = dotted.split(".")
                for i in range(1, len(parts) + 1):  # pkg/__init__.py, pkg/sub.py, ... as far as they exist
                    stem = base.joinpath(*parts[:i])
                    todo += [f for f in (stem.with_suffix(".py"), stem / "__init__.py")
                             if f.is_file() and f.is_relative_to(root)]
    return sorted(found)


def target_identity(model: str, checkpoint: str | Path | None) -> dict:
    """What decides a target's outputs, for cache keys: the bytes of its weights, of its code file and
    the modules beside it that the file imports (local_sources), and the version of the library that
    defines its architecture."""
    from pipeline.cache import file_digest
    spec = parse_model(model)
    library = torchvision.__version__ if spec.family in ("medical_mae", "torchvision") else None
    if spec.family == "timm":
        import timm
        library = timm.__version__
    if spec.family == "xrv":
        import torchxrayvision as xrv
        library = xrv.__version__
    source = file_digest(spec.name) if spec.family == "torchscript" else None
    if spec.family == "file":
        root = Path(spec.name).resolve().parent
        source = {f.relative_to(root).as_posix(): file_digest(f) for f in local_sources(spec.name)}
    return {"model": model, "checkpoint": file_digest(checkpoint) if checkpoint else None,
            "source": source, "library": library}


# ---- building and loading

class ScriptedTarget(nn.Module):
    """A TorchScript model. TorchScript modules accept no hooks, so only its outputs (fc) can be read."""

    def __init__(self, script):
        super().__init__()
        self.script = script

    def forward(self, x):
        return self.script(x)


def build_target(arch: str, num_classes: int = 14) -> nn.Module:
    if arch == "densenet121":
        return torchvision.models.densenet121(weights=None, num_classes=num_classes)
    if arch == "resnet50":
        return torchvision.models.resnet50(weights=None, num_classes=num_classes)
    raise PipelineError(f"unknown --model {arch!r}; choose one of {', '.join(ARCHS)}")


def reinitialise(net: nn.Module, seed: int) -> list[str]:
    """The same architecture with fresh weights, for the model-randomisation sanity check: every module's
    own reset_parameters(), in module order, from torch's generator seeded with `seed` (restored after).
    Returns the parameters no module's reset_parameters() covers (they keep their values); refuses a
    model none of whose modules can re-initialise itself (a TorchScript file)."""
    covered, names = set(), {id(p): n for n, p in net.named_parameters()}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for m in net.modules():
            if callable(getattr(m, "reset_parameters", None)):
                m.reset_parameters()
                covered |= {id(p) for p in m.parameters(recurse=False)}
    if names and not covered:
        raise PipelineError("no module of this model has reset_parameters(), so it cannot be re-initialised "
                            "(a TorchScript file?); pass the model as file.py:function")
    return [n for i, n in names.items() if i not in covered]


def _build(spec: Spec, num_classes: int, channels: int) -> nn.Module:
    if spec.family == "medical_mae":
        return build_target(spec.name, num_classes)
    if spec.family == "torchvision":
        return torchvision.models.get_model(spec.name, weights=None, num_classes=num_classes)
    if spec.family == "timm":
        import timm
        return timm.create_model(spec.name, pretrained=False, num_classes=num_classes, in_chans=channels)
    import torchxrayvision as xrv
    if spec.name.startswith("resnet"):
        # xrv.models.ResNet downloads its weights when built; its network is torchvision's ResNet with a
        # one-channel stem, and its weight files hold that network's state dict: built here directly.
        net = getattr(torchvision.models, spec.name.split("-")[0])(weights=None, num_classes=num_classes)
        net.conv1 = nn.Conv2d(1, 64, kernel_size=7, stride=2, padding=3, bias=False)
        return net
    return xrv.models.DenseNet(weights=None, num_classes=num_classes, **xrv.models.get_densenet_params(spec.name))


def _from_file(spec: Spec, model: str) -> nn.Module:
    path = Path(spec.name)
    if spec.family == "torchscript":
        try:
            with warnings.catch_warnings():  # torch.jit.load's deprecation notice is not the user's to fix
                warnings.simplefilter("ignore", FutureWarning)
                return ScriptedTarget(torch.jit.load(str(path), map_location="cpu"))
        except Exception as e:
            raise PipelineError(f"--model {model}: not a TorchScript file ({type(e).__name__}); save the model with "
                                f"torch.jit.save, or pass a state dict as --checkpoint with its architecture") from None
    where = importlib.util.spec_from_file_location(f"mammi_target_{path.stem}", path)
    module = importlib.util.module_from_spec(where)
    sys.modules[where.name] = module  # as an import would: dataclasses and pickling look it up there
    sys.path.insert(0, str(path.resolve().parent))  # the file may import its neighbours
    try:
        where.loader.exec_module(module)
        build = getattr(module, spec.function, None)
        if not callable(build):
            names = [n for n, v in vars(module).items() if callable(v) and not n.startswith("_")]
            raise PipelineError(f"--model {model}: {path} defines no function {spec.function!r} "
                                f"(it has {', '.join(names[:6]) or 'none'})")
        net = build()
    except PipelineError:
        raise
    except Exception as e:
        first = str(e).splitlines()[0][:200] if str(e) else ""
        raise PipelineError(f"--model {model}: running {path} failed ({type(e).__name__}: {first}); "
                            f"fix the file") from None
    finally:
        sys.path.remove(str(path.resolve().parent))
    if not isinstance(net, nn.Module):
        raise PipelineError(f"--model {model}: {spec.function}() returned a {type(net).__name__}, "
                            f"not a torch.nn.Module")
    return net


def head_name(model: nn.Module) -> str:
    """Name of the final layer: timm's get_classifier(), else the last nn.Linear registered (DenseNet:
    classifier, ResNet: fc, torchvision's ViT: heads.head), else the last Conv2d (SqueezeNet's 1x1)."""
    get = getattr(model, "get_classifier", None)
    head = get() if callable(get) else None
    for kind in (nn.Linear, nn.Conv2d):
        found = [(n, m) for n, m in model.named_modules() if isinstance(m, kind)]
        for n, m in found:
            if m is head:
                return n
        if found:
            return found[-1][0]
    raise PipelineError("this model has no nn.Linear or Conv2d head, so no penultimate layer; name a module "
                        "with --layer (--layer list shows them)")


def _allowed_global(name: str) -> bool:
    return name.startswith(("torch.nn.modules.", "torchxrayvision.")) or name in ("collections.OrderedDict",)


def _read_checkpoint(path: Path):
    # A whole pickled model (torchxrayvision's DenseNets) names classes in its pickle: allowed when they
    # are torch.nn layers and torchxrayvision's own, still without running any other code.
    try:
        names = torch.serialization.get_unsafe_globals_in_checkpoint(path)
    except Exception:  # not a zip checkpoint: torch.load below says what it is
        names = []
    classes = []
    if names and all(_allowed_global(n) for n in names):
        for n in names:
            mod, _, attr = n.rpartition(".")
            classes.append(getattr(importlib.import_module(mod), attr))
    try:
        with torch.serialization.safe_globals(classes):
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        why = load_failure(e)
        fix = "" if why.startswith("a pickle") else "; re-download it"
        raise PipelineError(f"{path}: cannot read as a PyTorch checkpoint ({why}){fix}") from None


def _state_dict_of(obj, path, own: dict) -> dict:
    """The tensors of a checkpoint, named as the model names them: a wrapper's prefix is dropped only
    where the model has no tensor of the prefixed name (torchxrayvision's ResNet starts with model.)."""
    if isinstance(obj, nn.Module):
        for mod in obj.modules():  # pickles of old torch versions lack this attribute
            if not hasattr(mod, "_non_persistent_buffers_set"):
                mod._non_persistent_buffers_set = set()
        obj = obj.state_dict()
    for field in ("model", "state_dict", "model_state_dict"):
        if isinstance(obj, dict) and isinstance(obj.get(field), dict):
            obj = obj[field]
            break
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise PipelineError(f"{path}: no state dict inside (expected {{'model': ...}}, {{'state_dict': ...}} or a bare state dict)")
    out = {}
    for k, v in obj.items():
        if k not in own:
            for p in _PREFIXES:
                if k.startswith(p):
                    k = k[len(p):]
                    break
            k = _DENSENET_LEGACY.sub(r"\1\2", k)
        out[k] = v
    return out


def load_checkpoint(model: nn.Module, sd: dict, path: str | Path, arch: str) -> str | None:
    """Load weights strictly into the backbone, and the head when it fits. Returns None when the
    head was loaded too, else what the checkpoint has instead of it."""
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
    extra = [k for k in sd if k not in own and not k.startswith(head) and k not in _XRV_EXTRAS]
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
                f"the model's {classes} outputs")
    return f"no {classes}-way classifier (a pretraining checkpoint?)"


def _outputs(spec: Spec, sd: dict, path, channels: int, num_classes: int, n_classes: int) -> int:
    """How many outputs to build: --num_classes, which must agree with the checkpoint's head; else the
    head's; else the number of class names; else the family's. A medical_mae model keeps its 14-way
    NIH head unless told otherwise: a checkpoint with another head is then named as not fitting it."""
    default = _DEFAULT_CLASSES.get(spec.family) or len(model_classes(f"xrv:{spec.name}"))
    with torch.device("meta"):  # the architecture's names and head, without allocating it
        shape = _build(spec, default, channels)
    head = head_name(shape)
    weight = _state_dict_of(sd, path, shape.state_dict()).get(head + ".weight") if sd is not None else None
    found = weight.shape[0] if weight is not None and weight.dim() in (2, 4) else 0
    if num_classes and found and found != num_classes:
        raise PipelineError(f"--num_classes {num_classes} disagrees with the {found}-way head of {path} "
                            f"({head}.weight {list(weight.shape)}); drop --num_classes or pass the checkpoint of a "
                            f"{num_classes}-way model")
    if spec.family == "medical_mae":
        return num_classes or default
    return num_classes or found or n_classes or default


def load_target(model: str, checkpoint: str | Path | None, need_head: bool, num_classes: int = 0, channels: int = 3,
                n_classes: int = 0) -> tuple[nn.Module, bool]:
    """The target in eval mode and whether its head (its outputs) is trained. `checkpoint` as given
    (empty: the family's default, checkpoint_of); n_classes is the number of class names, which sizes
    a head that neither --num_classes nor the checkpoint sizes."""
    spec = parse_model(model)
    checkpoint = checkpoint_of(model, str(checkpoint or ""))
    obj = _read_checkpoint(checkpoint) if checkpoint else None
    if spec.family in ("file", "torchscript"):
        net = _from_file(spec, model)
        head = None
        if obj is not None:
            head = load_checkpoint(net, _state_dict_of(obj, checkpoint, net.state_dict()), checkpoint, model)
    else:
        k = _outputs(spec, obj, checkpoint, channels, num_classes, n_classes)
        net = _build(spec, k, channels)
        head = load_checkpoint(net, _state_dict_of(obj, checkpoint, net.state_dict()), checkpoint, model)
        num_classes = k
    if head is not None:
        if need_head:
            raise PipelineError(f"{checkpoint} has {head}: the fc layer and the model's outputs need a checkpoint "
                                f"fine-tuned on those {num_classes} classes (the medical_mae NIH one for NIH); "
                                f"the backbone can still be probed with --layer penultimate")
        print(f"note: {checkpoint} has {head}: backbone layers are probed, the model's outputs are not reported")
    return net.eval(), head is None


# ---- reading layers

def layer_names(text: str) -> list[str]:
    """The layers a --layer value names, each once, in order."""
    names = list(dict.fromkeys(t.strip() for t in text.split(",") if t.strip()))
    if not names or ("list" in names and len(names) > 1):
        raise PipelineError(f"--layer {text!r}: name fc, penultimate or modules, comma-separated, or list alone")
    return names


def token_layout(model: nn.Module) -> tuple[int, int | None]:
    """How many prefix tokens (class, distillation, register) lead a transformer's token sequence,
    and how many patch tokens follow: timm says num_prefix_tokens and patch_embed.num_patches;
    torchvision's ViT has one class_token and seq_length tokens in all. Other models: (0, None)."""
    if hasattr(model, "num_prefix_tokens"):
        patches = getattr(getattr(model, "patch_embed", None), "num_patches", None)
        return int(model.num_prefix_tokens), patches
    if isinstance(getattr(model, "class_token", None), torch.Tensor) and hasattr(model, "seq_length"):
        return 1, int(model.seq_length) - 1
    return 0, None


def reduce_output(out, layout: tuple[int, int | None], token_pool: str, channels_last: bool = False) -> torch.Tensor:
    """One value per neuron and image: [B, D] as is; [B, C, H, W] (conv) by the spatial mean, or
    [B, H, W, C] when channels_last; [B, T, D] (transformer tokens) by the mean over patch tokens, or
    the class token (token_pool)."""
    if isinstance(out, (tuple, list)):  # attention blocks return (output, weights)
        out = next(o for o in out if isinstance(o, torch.Tensor))
    if out.dim() > 3:
        return out.flatten(1, -2).mean(1) if channels_last else out.flatten(2).mean(2)
    if out.dim() < 3:
        return out
    prefix, patches = layout
    if patches is not None and out.shape[1] == patches:
        prefix = 0  # a sequence of patches alone (the patch embedding's output)
    if token_pool == "cls":
        if prefix < 1:
            raise PipelineError(f"--token_pool cls: this layer's {out.shape[1]} tokens have no class token "
                                f"(the model declares none before its patches); use --token_pool mean")
        return out[:, 0]
    return out[:, prefix:].mean(1)


def _declared_last(module: nn.Module) -> bool | None:
    """Whether a module says its output is channels-last: torchvision's Permute by its dims, timm's
    output_fmt (a str enum: 'NHWC' or 'NCHW'); None when it says nothing."""
    if isinstance(module, Permute):
        return {(0, 2, 3, 1): True, (0, 3, 1, 2): False}.get(tuple(module.dims))
    fmt = getattr(module, "output_fmt", None)
    return fmt == "NHWC" if isinstance(fmt, str) else None


def channels_last_modules(model: nn.Module) -> set[str]:
    """The modules whose 4-D output is [B, H, W, C], as the model declares it. timm permutes in plain code
    and says so in output_fmt: a model of output_fmt 'NHWC' (Swin, SwinV2, Sequencer, MambaOut) keeps its
    feature maps channels-last, and so does a patch embedding that says it. torchvision permutes with
    Permute modules (Swin once after its stem and back before pooling, ConvNeXt inside each block):
    each one sets the layout of what follows it, its modules taken in order (nn.Sequential's order is
    the order they run in). A module of CHANNELS_FIRST computes over dim 1 and so outputs channels-first
    wherever it sits; a block outputs the layout its last module leaves."""
    last: set[str] = set()

    def walk(name: str, module: nn.Module, state: bool) -> bool:
        """The layout of module's output, given the layout that reaches it (state)."""
        if isinstance(module, CHANNELS_FIRST):
            return state  # its own output is channels-first; what follows it is permuted back, if at all
        said = _declared_last(module)  # what a module says holds for its own modules too (timm's patch norm)
        state = state if said is None else said
        for child_name, child in module.named_children():
            state = walk(f"{name}.{child_name}" if name else child_name, child, state)
        if state and name:
            last.add(name)
        return state

    walk("", model, False)  # the input is an image batch, [B, C, H, W]
    return last


def _reader(model: nn.Module, token_pool: str):
    """reduce_output by layer name (fc, penultimate or a module), each output with the layout the model
    declares for it (the head's input is [B, D], or [B, C, H, W] for a Conv2d head)."""
    layout = token_layout(model)
    last = channels_last_modules(model) - {"fc", "penultimate"}
    return lambda name, out: reduce_output(out, layout, token_pool, name in last)


def _register(model: nn.Module, layer: str, put, read, batch: dict):
    """Hook `layer` so that each forward pass calls put(its reduced output); refused when that output
    has another number of rows than the pass has images (batch['n']): a block that works on windows
    (Swin's attention) holds no value per image."""
    def checked(name, out):
        v = read(name, out)
        if v.shape[0] != batch["n"]:
            raise PipelineError(f"--layer {layer}: its output has {v.shape[0]} rows for {batch['n']} images (it "
                                f"works on windows or patches of them); name the block or stage that holds it "
                                f"(--layer list shows the neurons of each)")
        put(v)
    modules = dict(model.named_modules())
    if layer == "fc":
        return model.register_forward_hook(lambda m, inp, out: checked("fc", out))
    if isinstance(model, ScriptedTarget):
        raise PipelineError(f"--layer {layer}: a TorchScript model accepts no hooks, so only its outputs (fc) can "
                            f"be read; pass the model as file.py:function to probe its layers")
    if layer == "penultimate":
        return modules[head_name(model)].register_forward_pre_hook(lambda m, inp: checked("penultimate", inp[0]))
    name = layer
    if name not in modules or not name:
        names = [n for n in modules if n]
        ends = [n for n in names if n.endswith("." + layer)]  # the right name without its parents
        near = list(dict.fromkeys(ends + difflib.get_close_matches(layer, names, n=5, cutoff=0.5)))[:5]
        hint = (f"closest: {', '.join(near)}" if near else
                f"top-level modules: {', '.join(n for n in names if '.' not in n)}")
        raise PipelineError(f"--layer {layer!r} is not a module of this model; use fc, penultimate, a module "
                            f"name ({hint}) or --layer list")
    # Reduced inside the hook: DenseNet applies its last ReLU in place on the features output afterwards.
    return modules[name].register_forward_hook(lambda m, inp, out: checked(name, out))


@contextmanager
def _hooked(model: nn.Module, layers: list[str], token_pool: str, key):
    if token_pool not in ("mean", "cls"):
        raise PipelineError(f"--token_pool is mean or cls, not {token_pool!r}")
    store: dict[str, torch.Tensor] = {}
    batch: dict[str, int] = {}
    read = _reader(model.script if isinstance(model, ScriptedTarget) else model, token_pool)
    hooks = [model.register_forward_pre_hook(lambda m, args: batch.__setitem__("n", len(args[0])))]
    try:
        for layer in layers:
            hooks.append(_register(model, layer, lambda v, k=key(layer): store.__setitem__(k, v), read, batch))
        yield store
    finally:
        for h in hooks:
            h.remove()


def taps(model: nn.Module, layers: list[str], token_pool: str = "mean"):
    """Record several layers' activations (one value per neuron) in one forward pass, by layer name.

    `fc` are the model's outputs (the logits); `penultimate` the input of its head; anything else a
    module name (`layer4`, `features.denseblock3`, `blocks.9`), reduced by reduce_output.
    """
    return _hooked(model, layers, token_pool, lambda layer: layer)


def tap(model: nn.Module, layer: str, token_pool: str = "mean"):
    """One layer's activations, under store["a"]."""
    return _hooked(model, [layer], token_pool, lambda layer: "a")


def layer_table(model: nn.Module, x: torch.Tensor, token_pool: str = "mean") -> list[tuple[str, str, str]]:
    """(name, output shape, neurons) of fc, penultimate and every module, from one forward pass on x;
    neurons '-' where an output holds no one value per image and neuron."""
    shapes: dict[str, tuple[str, str]] = {}
    inner = model.script if isinstance(model, ScriptedTarget) else model
    read = _reader(inner, token_pool)

    def record(name, out):
        t = next((o for o in out if isinstance(o, torch.Tensor)), None) if isinstance(out, (tuple, list)) else out
        if not isinstance(t, torch.Tensor):
            shapes[name] = (type(out).__name__, "-")
            return
        try:
            v = read(name, t)
            neurons = str(v.shape[1]) if t.dim() > 1 and len(v) == len(x) else "-"
        except PipelineError:
            neurons = "-"
        shapes[name] = (str(list(t.shape)), neurons)

    hooks = [model.register_forward_hook(lambda m, i, o: record("fc", o))]
    if not isinstance(model, ScriptedTarget):
        try:
            hooks.append(model.get_submodule(head_name(model)).register_forward_pre_hook(
                lambda m, i: record("penultimate", i[0])))
        except PipelineError:
            pass
        hooks += [m.register_forward_hook(lambda m, i, o, n=n: record(n, o)) for n, m in model.named_modules() if n]
    try:
        with torch.inference_mode():
            model(x)
    finally:
        for h in hooks:
            h.remove()
    rows = [(n, *shapes[n]) for n in ("fc", "penultimate") if n in shapes]
    if isinstance(model, ScriptedTarget):
        rows += [(n, "(TorchScript: no hooks)", "-") for n, _ in inner.named_modules() if n]
    else:
        rows += [(n, *shapes.get(n, ("(not called)", "-"))) for n, _ in model.named_modules() if n]
    return rows
