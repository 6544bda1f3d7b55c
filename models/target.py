"""Target chest X-ray classifiers: build any of them from one `--model` spec, load its checkpoint
strictly, say how it wants its input, and read any of its layers.

The forms of `--model` (FORMS):
    densenet121, resnet50     torchvision's, as the medical_mae release fine-tuned them (14-way NIH head)
    torchvision:NAME          any torchvision classification model; the head has --num_classes outputs
    timm:NAME                 any timm model, likewise
    xrv:NAME                  a torchxrayvision classifier (densenet121-res224-all, resnet50-res512-all, ...)
    path/file.py:function     the nn.Module function() returns: the file's code runs, as an import would
    path/model.pt             a TorchScript file (torch.jit.save); it also runs the code it holds

--checkpoint random builds the architecture untrained (seeded, so the same weights each time; said in
a warning and stored as `untrained`), --checkpoint pretrained reads the library's own weights from its
local cache (torchvision's and timm's URL files under torch.hub.get_dir(), timm's Hugging Face files,
torchxrayvision's ~/.torchxrayvision): nothing is downloaded, a missing file is named with its URL.
Every loaded model's weights must be finite. A user's file runs inside one guard (user_code): its
exceptions and exits while imported, built or run become one line naming the file, and its forward
must return logits [batch, classes].

The medical_mae checkpoints come as {'model': sd}, {'state_dict': sd} or a bare sd, with `module.`
(DataParallel) or `module.encoder_q.` (MoCo pretraining) key prefixes. The authors' loader used
strict=False and so could run a random network without a word; here every backbone tensor must be
present and fit, and a tensor the model does not have is refused too (another model's weights, a
training state): only another head and MoCo's key encoder and queue are ignored. The same holds for
every family's --checkpoint. torchxrayvision ships whole pickled DenseNets; such a file is read with
weights_only=True too, the classes its pickle names allowed only when they are torch.nn layers or
torchxrayvision's own.

Each family is one entry of FAMILIES (at the end): how it is built, fed, loaded and named. Reading a
layer of the built model is models/layers.py.
"""
from __future__ import annotations

import difflib
import importlib
import importlib.util
import os
import re
import sys
import traceback
import types
import warnings
from collections.abc import Callable
from contextlib import contextmanager, nullcontext, redirect_stderr
from dataclasses import dataclass
from io import StringIO
from pathlib import Path

import torch
import torch.nn as nn
import torchvision

from core.digests import file_digest, imported_files
from core.errors import PipelineError
from core.text import at_most, say_once
from dataset.nih import MEAN, STD
from models import load_failure

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
_DENSENET_LEGACY = re.compile(r"^(.*denselayer\d+\.(?:norm|relu|conv))\."
                              r"((?:[12])\.(?:weight|bias|running_mean|running_var|num_batches_tracked))$")
# --checkpoint words: the architecture untrained, or the library's own weights from its local cache.
RANDOM, PRETRAINED = "random", "pretrained"
RANDOM_SEED = 0  # torch's seed for --checkpoint random: the same untrained weights in every step
IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
# torchxrayvision scales [0, 1] pixels to [-1024, 1024] (xrv.datasets.normalize): (x - 0.5) / (1 / 2048).
XRV_NORM = ((0.5,), (1 / 2048,))


@dataclass(frozen=True)
class Spec:
    family: str         # medical_mae | torchvision | timm | xrv | file | torchscript
    name: str           # the architecture, or the file
    function: str = ""  # file.py:function


@dataclass(frozen=True)
class Family:
    """How the models of one family (an entry of FAMILIES) are built, fed, loaded and named: plain
    functions of the Spec (and the --model text, for messages)."""
    build: Callable[[Spec, str, int, int], nn.Module]      # (spec, model, outputs, channels): the untrained network
    checkpoint: Callable[[Spec, str, str], Path | None]    # (spec, model, --checkpoint): the weights file, checked
    preprocessing: Callable[[Spec], dict]                  # its own input: resize, crop, channels, mean, std
    library: Callable[[], str | None]                      # the version of the library that defines it
    # outputs before a checkpoint or --num_classes says; None: its file decides
    outputs: Callable[[Spec], int] | None = None
    head_sizes: bool = True                                # a checkpoint's head sets the outputs (not medical_mae's 14)
    # the NAMEs of family:NAME it knows (with the one asked, if known)
    names: Callable[[str], list[str]] | None = None
    classes: Callable[[Spec], list[str]] | None = None     # the output names it carries itself
    source: Callable[[Spec], object] | None = None         # the digest of its own code
    tag: Callable[[Spec], str] | None = None               # its folder name, when not the --model text
    pretrained: Callable[[Spec, str], Path] | None = None  # (spec, model): its library's weights file, cached here


def parse_model(model: str) -> Spec:
    """The family and name a --model value names; an unknown one lists the forms."""
    if model in ARCHS:
        return Spec("medical_mae", model)
    family, sep, name = model.partition(":")
    if sep and family in FAMILIES and FAMILIES[family].names:
        _check_name(family, name)
        return Spec(family, name)
    file, sep, function = model.rpartition(":")
    if sep and file.endswith(".py") and function.isidentifier():
        return Spec("file", file, function)
    if model.endswith(SCRIPT_SUFFIXES):
        return Spec("torchscript", model)
    raise PipelineError(f"unknown --model {model}: the forms are {FORMS}")


def _check_name(family: str, name: str) -> None:
    known = FAMILIES[family].names(name)
    if name not in known:
        near = difflib.get_close_matches(name, known, n=4, cutoff=0.5)
        hint = f"closest: {', '.join(near)}" if near else f"{len(known)} known: {at_most(known, 4)}"
        raise PipelineError(f"--model {family}:{name}: {family} has no model {name!r} ({hint}); the forms are {FORMS}")


def model_tag(model: str) -> str:
    """A folder name for a --model value: a file's stem (and function), not its whole path."""
    spec = parse_model(model)
    tag = FAMILIES[spec.family].tag
    return tag(spec) if tag else re.sub(r"[^A-Za-z0-9_.-]+", "-", model).strip("-")


def model_classes(model: str) -> list[str] | None:
    """The output names a model carries itself: the medical_mae models' 14 NIH findings,
    torchxrayvision's 18 pathologies (some ''); None for the other families."""
    spec = parse_model(model)
    classes = FAMILIES[spec.family].classes
    return classes(spec) if classes else None


# ---- preprocessing

def default_preprocessing(model: str) -> dict:
    """The family's own input: Resize, CenterCrop, channels, mean and std (README, "Your own model
    and data"). Interpolation is bilinear for all."""
    spec = parse_model(model)
    return FAMILIES[spec.family].preprocessing(spec)


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


def checkpoint_of(model: str, checkpoint: str) -> Path | str | None:
    """The weights file a target loads (None: a user's model or TorchScript file holds its own), checked
    to exist; nothing is downloaded. RANDOM for --checkpoint random; --checkpoint pretrained is the
    library's file in its local cache (and so keyed by its bytes, as any file)."""
    spec = parse_model(model)
    family = FAMILIES[spec.family]
    if checkpoint in (RANDOM, PRETRAINED) and not Path(checkpoint).is_file():
        if family.outputs is None:  # a user's file or TorchScript: the weights are whatever it builds or holds
            raise PipelineError(f"--checkpoint {checkpoint}: --model {model} builds or holds its own weights; drop "
                                f"--checkpoint, or pass the weights file for it")
        if checkpoint == RANDOM:
            return RANDOM
        return family.pretrained(spec, model)
    return family.checkpoint(spec, model, checkpoint)


def _cached(path: Path, url: str, model: str, library: str) -> Path:
    """A library's weights file where its own loader would have saved it; nothing is downloaded."""
    if not path.is_file():
        raise PipelineError(f"--model {model} --checkpoint pretrained: {path} is not in {library}'s cache and "
                            f"nothing is downloaded here; download {url} to {path} (or pass --checkpoint FILE)")
    return path


def _hub_file(url: str, model: str, library: str) -> Path:
    # torch.hub.get_dir() reads TORCH_HOME (or XDG_CACHE_HOME) when called: torchvision's and timm's URL weights
    return _cached(Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(url), url, model, library)


def _given(model: str, checkpoint: str) -> Path | None:
    if checkpoint and not Path(checkpoint).is_file():
        raise PipelineError(f"checkpoint {checkpoint} not found; pass --checkpoint with the weights of --model {model}")
    return Path(checkpoint) if checkpoint else None


def target_identity(model: str, checkpoint: str | Path | None) -> dict:
    """What decides a target's outputs, for cache keys: the bytes of its weights, of its code file and
    the modules beside it that the file imports, and the version of the library that defines its
    architecture. The file runs with its folder first on sys.path (_from_file), so `import helpers`
    and `from helpers import x` reach the files there before any installed module: these are the
    user's code the model can run. They are read, not imported: a key is computed before the model
    is built and must not run the file."""
    spec = parse_model(model)
    family = FAMILIES[spec.family]
    weights = f"{RANDOM}:{RANDOM_SEED}" if checkpoint == RANDOM else file_digest(checkpoint) if checkpoint else None
    return {"model": model, "checkpoint": weights,
            "source": family.source(spec) if family.source else None, "library": family.library()}


# ---- building and loading

class ScriptedTarget(nn.Module):
    """A TorchScript model. TorchScript modules accept no hooks, so only its outputs (fc) can be read."""

    def __init__(self, script, name: str = "model.pt"):
        super().__init__()
        self.script = script
        self.name = name

    def forward(self, x):
        return check_logits(self.script(x), x, self.name)


def build_target(arch: str, num_classes: int = 14) -> nn.Module:
    if arch == "densenet121":
        return torchvision.models.densenet121(weights=None, num_classes=num_classes)
    if arch == "resnet50":
        return torchvision.models.resnet50(weights=None, num_classes=num_classes)
    raise PipelineError(f"unknown --model {arch!r}; choose one of {', '.join(ARCHS)}")


def reinitialise(net: nn.Module, seed: int, model: str) -> list[str]:
    """The same architecture with fresh weights, for the model-randomisation sanity check: every module's
    own reset_parameters(), in module order, from torch's generator seeded with `seed` (restored after);
    a user's file's modules inside its guard (user_code), as its import, build and forward are.
    Returns the parameters no module's reset_parameters() covers (they keep their values); refuses a
    model none of whose modules can re-initialise itself (a TorchScript file)."""
    covered, names = set(), {id(p): n for n, p in net.named_parameters()}
    spec = parse_model(model)
    guard = user_code(spec, model, "reset") if spec.family == "file" else nullcontext()
    with torch.random.fork_rng(devices=[]), guard:
        torch.manual_seed(seed)
        for m in net.modules():
            if callable(getattr(m, "reset_parameters", None)):
                m.reset_parameters()
                covered |= {id(p) for p in m.parameters(recurse=False)}
    if names and not covered:
        raise PipelineError("no module of this model has reset_parameters(), so it cannot be re-initialised "
                            "(a TorchScript file?); pass the model as file.py:function")
    return [n for i, n in names.items() if i not in covered]


def target_as_probed(c: dict, need_head: bool, n_classes: int = 0) -> tuple[nn.Module, bool]:
    """The target exactly as step 2 ran it, from its constants as given to step 2 or as an output stored
    them (examples.json's, activations.pt's, concepts.json's config): the model, its checkpoint ("random":
    untrained, seeded), the head's size, the input channels, and sanity_check.py's re-initialisation
    (reinit_seed >= 0, applied after the weights are loaded, as step 2 applied it). Every step that runs the
    target builds it here, so none runs the trained network under a re-initialised one's outputs. n_classes:
    the number of class names (it sizes a head nothing else sizes). Returns the network in eval mode and
    whether its head is trained (load_target)."""
    net, head_ok = load_target(c["model"], c.get("checkpoint") or None, need_head, c.get("num_classes", 0),
                               int(preprocessing(c)["channels"]), n_classes)
    seed = c.get("reinit_seed", -1)
    if seed >= 0:
        kept = reinitialise(net, seed, c["model"])
        print(f"re-initialised with seed {seed}" + (f"; {len(kept)} parameter tensor(s) have no reset_parameters() "
              f"and keep their values: {at_most(kept, 5)}" if kept else ""))
    return net.eval(), head_ok


def _from_file(spec: Spec, model: str) -> nn.Module:
    path = Path(spec.name)
    where = importlib.util.spec_from_file_location(f"mammi_target_{path.stem}", path)
    module = importlib.util.module_from_spec(where)
    sys.modules[where.name] = module  # as an import would: dataclasses and pickling look it up there
    sys.path.insert(0, str(path.resolve().parent))  # the file may import its neighbours
    try:
        with user_code(spec, model, "import"):
            where.loader.exec_module(module)
        build = getattr(module, spec.function, None)
        if not callable(build):
            names = [n for n, v in vars(module).items() if callable(v) and not n.startswith("_")]
            raise PipelineError(f"--model {model}: {path} defines no function {spec.function!r} "
                                f"(it has {at_most(names, 6) or 'none'})")
        with user_code(spec, model, "build"):
            net = build()
    finally:
        sys.path.remove(str(path.resolve().parent))
    if not isinstance(net, nn.Module):
        raise PipelineError(f"--model {model}: {spec.function}() returned a {type(net).__name__}, "
                            f"not a torch.nn.Module")

    def forward(self, *args, **kwargs):  # the class's own forward, guarded; bound to each copy of the model
        with user_code(spec, model, "forward"):
            out = type(self).forward(self, *args, **kwargs)
        return check_logits(out, args[0] if args else None, model)
    net.forward = types.MethodType(forward, net)
    return net


@contextmanager
def user_code(spec: Spec, model: str, what: str):
    """Run the code of a user's model file (what: its import, the build function, the model's forward, its
    modules' reset_parameters()): an exception or an exit inside it (sys.exit, or argparse reading the step's
    own command line) becomes one line naming the file, the function and what happened, never the step's
    exit status or a usage that reads as the step's. What the code writes on stderr is held back and passed
    on after it."""
    who = Path(spec.name).name + ("" if what == "import" else f":{spec.function}")
    when = {"import": " while imported", "build": "", "forward": " in the model's forward",
            "reset": " while its modules were re-initialised (reset_parameters(), for --reinit_seed)"}[what]
    err = StringIO()
    try:
        with redirect_stderr(err):
            yield
    except (PipelineError, KeyboardInterrupt):  # ours (a hook's check), or the user's Ctrl-C
        sys.stderr.write(err.getvalue())
        raise
    except SystemExit as e:
        status = 0 if e.code is None else e.code if isinstance(e.code, int) else 1
        said = [line.strip() for line in err.getvalue().splitlines() if line.strip()]
        parser = any(line.startswith("usage:") for line in said)
        why = (f"argparse inside the model's code read the step's command line: {said[-1][:160]}" if parser else
               "sys.exit inside the model's code" + (f": {str(e.code)[:160]}" if isinstance(e.code, str) else ""))
        fix = "keep the argument parsing" if parser else "remove the exit, or keep it"
        raise PipelineError(f"--model {model}: {who} exited with status {status}{when} ({why}); the model's code "
                            f"must return, not exit: {fix} under if __name__ == '__main__'") from None
    except Exception as e:
        sys.stderr.write(err.getvalue())
        root = Path(spec.name).resolve().parent
        frames = [f for f in traceback.extract_tb(e.__traceback__) if Path(f.filename).resolve().is_relative_to(root)]
        at = f" at {Path(frames[-1].filename).name}:{frames[-1].lineno}" if frames else ""
        if isinstance(e, SyntaxError) and e.filename:  # raised while compiling: no frame of the file yet
            at = f" at {Path(e.filename).name}:{e.lineno}"
        first = str(e).strip().splitlines()[0][:200] if str(e).strip() else ""
        raise PipelineError(f"--model {model}: {who} raised {type(e).__name__}{when}{at} ({first}); fix the file"
                            + ("" if what != "forward" else ", or --crop and --channels if its input is not what "
                               "it takes")) from None
    sys.stderr.write(err.getvalue())


def check_logits(out, x, model: str):
    """A user's model's outputs as the steps read them: logits, a float tensor [batch, classes]. A dict
    (even with a 'logits' key), a tuple or a tensor of another shape is refused: its own code says which
    of its outputs are the logits, in one line of the file."""
    n = len(x) if isinstance(x, torch.Tensor) else None
    if isinstance(out, torch.Tensor) and out.dim() == 2 and out.is_floating_point() and n in (None, out.shape[0]):
        return out
    if isinstance(out, torch.Tensor):
        what = f"a tensor of shape {list(out.shape)}" + ("" if out.is_floating_point() else f" and dtype {out.dtype}")
    elif isinstance(out, dict):
        what = f"a dict (keys {at_most(map(repr, out), 5)})"
    elif isinstance(out, (tuple, list)):
        what = f"a {type(out).__name__} of {len(out)} items"
    else:
        what = f"a {type(out).__name__}"
    raise PipelineError(f"--model {model}: its forward returned {what}, not logits: a float tensor [batch, classes] "
                        f"([{n if n is not None else 'batch'}, K] here); return the classifier's outputs as one tensor "
                        f"(e.g. out['logits'] of a dict, or a tuple's first item)")


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
        if Path(path).suffix == ".safetensors":  # timm's Hugging Face weights: tensors alone, no pickle
            from safetensors.torch import load_file
            return load_file(path, device="cpu")
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
        raise PipelineError(f"{path}: no state dict inside (expected {{'model': ...}}, {{'state_dict': ...}} "
                            f"or a bare state dict)")
    return {k if k in own else _unwrapped(k): v for k, v in obj.items()}


def _unwrapped(key: str) -> str:
    """A tensor's name without a training wrapper's prefix, in torchvision's DenseNet spelling."""
    p = next((p for p in _PREFIXES if key.startswith(p)), "")
    return _DENSENET_LEGACY.sub(r"\1\2", key[len(p):])


def load_checkpoint(model: nn.Module, sd: dict, path: str | Path, arch: str) -> str | None:
    """Load weights strictly into the backbone, and the head when it fits. Returns None when the
    head was loaded too, else what the checkpoint has instead of it."""
    own = model.state_dict()
    head = head_name(model) + "."
    backbone = [k for k in own if not k.startswith(head) and not k.endswith("num_batches_tracked")]
    missing = [k for k in backbone if k not in sd]
    misfit = [k for k in backbone if k in sd and sd[k].shape != own[k].shape]
    if missing or misfit:
        raise PipelineError(
            f"{path} does not fit --model {arch}: {len(missing)} of {len(backbone)} backbone tensors missing, "
            f"{len(misfit)} mis-shaped (e.g. {at_most(missing + misfit, 3)}); pass the checkpoint made for {arch}")
    extra = [k for k in sd if k not in own and not k.startswith(head) and k not in _XRV_EXTRAS]
    moco = [k for k in extra if k.startswith(_MOCO_EXTRAS)]
    unknown = [k for k in extra if k not in moco]
    if unknown:
        raise PipelineError(f"{path} holds {len(unknown)} tensors that --model {arch} does not have (e.g. "
                            f"{at_most(unknown, 3)}); pass a checkpoint of {arch} alone, not another model or "
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


def _outputs(spec: Spec, model: str, sd: dict, path, channels: int, num_classes: int, n_classes: int) -> int:
    """How many outputs to build: --num_classes, which must agree with the checkpoint's head; else the
    head's; else the number of class names; else the family's. A medical_mae model keeps its 14-way
    NIH head unless told otherwise: a checkpoint with another head is then named as not fitting it."""
    family = FAMILIES[spec.family]
    default = family.outputs(spec)
    with torch.device("meta"):  # the architecture's names and head, without allocating it
        shape = family.build(spec, model, default, channels)
    head = head_name(shape)
    weight = _state_dict_of(sd, path, shape.state_dict()).get(head + ".weight") if sd is not None else None
    found = weight.shape[0] if weight is not None and weight.dim() in (2, 4) else 0
    if num_classes and found and found != num_classes:
        raise PipelineError(f"--num_classes {num_classes} disagrees with the {found}-way head of {path} "
                            f"({head}.weight {list(weight.shape)}); drop --num_classes or pass the checkpoint of a "
                            f"{num_classes}-way model")
    if not family.head_sizes:
        return num_classes or default
    return num_classes or found or n_classes or default


def load_target(model: str, checkpoint: str | Path | None, need_head: bool, num_classes: int = 0, channels: int = 3,
                n_classes: int = 0) -> tuple[nn.Module, bool]:
    """The target in eval mode and whether its head (its outputs) is trained. `checkpoint` as given
    (empty: the family's default, checkpoint_of); n_classes is the number of class names, which sizes
    a head that neither --num_classes nor the checkpoint sizes."""
    spec = parse_model(model)
    family = FAMILIES[spec.family]
    checkpoint = checkpoint_of(model, str(checkpoint or ""))
    untrained = checkpoint == RANDOM
    obj = _read_checkpoint(checkpoint) if checkpoint and not untrained else None
    if family.outputs is None:  # the model's own file builds it, outputs and all
        net = family.build(spec, model, 0, channels)
        head = None
        if obj is not None:
            head = load_checkpoint(net, _state_dict_of(obj, checkpoint, net.state_dict()), checkpoint, model)
    elif untrained:
        num_classes = _outputs(spec, model, None, checkpoint, channels, num_classes, n_classes)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(RANDOM_SEED)
            net = family.build(spec, model, num_classes, channels)
        head = None
        warn_untrained(model, True)
    else:
        k = _outputs(spec, model, obj, checkpoint, channels, num_classes, n_classes)
        net = family.build(spec, model, k, channels)
        head = load_checkpoint(net, _state_dict_of(obj, checkpoint, net.state_dict()), checkpoint, model)
        num_classes = k
    check_weights_finite(net, checkpoint or f"--model {model}")
    if head is not None:
        if need_head:
            raise PipelineError(f"{checkpoint} has {head}: the fc layer and the model's outputs need a checkpoint "
                                f"fine-tuned on those {num_classes} classes (the medical_mae NIH one for NIH); "
                                f"the backbone can still be probed with --layer penultimate")
        print(f"note: {checkpoint} has {head}: backbone layers are probed, the model's outputs are not reported")
    return net.eval(), head is None


def warn_untrained(model: str, untrained: bool) -> None:
    """The warning that the target is untrained (--checkpoint random; stored as `untrained` in step 2's outputs),
    once in each step that runs it or reads what it gave, however many of its layers, runs or loads the step meets."""
    if untrained:
        say_once(f"warning: --checkpoint random: {model} is untrained (its library's initialisation, seed "
                 f"{RANDOM_SEED}): its neurons and outputs mean nothing learned; the outputs are marked untrained")


def check_weights_finite(net: nn.Module, source) -> None:
    """Every weight and buffer finite: NaN weights would give every neuron a NaN threshold and no example,
    and every concept the same score, without an error anywhere downstream."""
    tensors = {k: v for k, v in net.state_dict().items()  # a lazy module's are made at its first forward pass
               if not nn.parameter.is_lazy(v) and (v.is_floating_point() or v.is_complex())}
    bad = [k for k, v in tensors.items() if not torch.isfinite(v).all()]
    if bad:
        raise PipelineError(f"{source}: {len(bad)} of {len(tensors)} weight tensors hold NaN or infinite values (e.g. "
                            f"{at_most(bad, 3)}); the weights are broken (a diverged training run?): pass a "
                            f"checkpoint whose weights are all finite")


# ---- the families: for each, how to build it, feed it, find its weights and name it (FAMILIES)

def _nih_input(spec: Spec) -> dict:
    # medical_mae, and a user's own model until told otherwise: the release's NIH statistics
    return {"resize": 256, "crop": 224, "channels": 3, "mean": (MEAN,), "std": (STD,)}


def _imagenet_input() -> dict:
    return {"resize": 256, "crop": 224, "channels": 3, "mean": IMAGENET[0], "std": IMAGENET[1]}


def _torchvision_version() -> str:
    return torchvision.__version__


def _nih_classes(spec: Spec) -> list[str]:
    from dataset.nih import class_names
    return class_names()


def _fine_tuned(spec: Spec, model: str, checkpoint: str) -> Path | None:
    """torchvision and timm: the weights of the user's fine-tuned model, which only they have."""
    if not checkpoint:
        raise PipelineError(f"--model {model} needs --checkpoint FILE: the weights of your fine-tuned {spec.name} "
                            f"(a state dict; its head sets the number of outputs), or --checkpoint pretrained (the "
                            f"library's own weights, from its local cache) or random (untrained)")
    return _given(model, checkpoint)


def _torchvision_input(spec: Spec) -> dict:
    try:
        t = torchvision.models.get_model_weights(spec.name).DEFAULT.transforms()
        return {"resize": t.resize_size[0], "crop": t.crop_size[0], "channels": 3, "mean": tuple(t.mean),
                "std": tuple(t.std)}
    except (ValueError, AttributeError, KeyError):  # a model without released weights: ImageNet's
        return _imagenet_input()


def _torchvision_pretrained(spec: Spec, model: str) -> Path:
    """torchvision's DEFAULT weights, where torchvision.models.get_model(weights="DEFAULT") saves them."""
    try:
        url = torchvision.models.get_model_weights(spec.name).DEFAULT.url
    except (ValueError, AttributeError, KeyError):
        raise PipelineError(f"--model {model} --checkpoint pretrained: torchvision releases no weights for "
                            f"{spec.name}; pass --checkpoint FILE or --checkpoint random") from None
    return _hub_file(url, model, "torchvision")


def _timm_names(name: str) -> list[str]:
    import timm
    return [name] if timm.is_model(name) else timm.list_models()  # timm knows tagged names it does not list


def _timm_build(spec: Spec, model: str, outputs: int, channels: int) -> nn.Module:
    import timm
    return timm.create_model(spec.name, pretrained=False, num_classes=outputs, in_chans=channels)


def _hf_cache() -> Path:
    """Hugging Face's hub cache as the environment names it now (huggingface_hub reads it once, on import)."""
    home = os.environ.get("HF_HOME") or os.path.join(os.environ.get("XDG_CACHE_HOME") or "~/.cache", "huggingface")
    return Path(os.path.expanduser(os.environ.get("HF_HUB_CACHE") or os.path.join(home, "hub")))


def _timm_pretrained(spec: Spec, model: str) -> Path:
    """timm's own weights as timm.create_model(pretrained=True) finds them: its Hugging Face repository's
    model.safetensors (or pytorch_model.bin) in the hub cache, else its release URL's file in torch's."""
    import timm
    from huggingface_hub import try_to_load_from_cache
    cfg = timm.get_pretrained_cfg(spec.name)
    if cfg is None or not (cfg.hf_hub_id or cfg.url):
        raise PipelineError(f"--model {model} --checkpoint pretrained: timm releases no weights for {spec.name}; "
                            f"pass --checkpoint FILE or --checkpoint random")
    if not cfg.hf_hub_id:
        return _hub_file(cfg.url, model, "timm")
    repo, _, revision = cfg.hf_hub_id.partition("@")
    names = [cfg.hf_hub_filename] if cfg.hf_hub_filename else ["model.safetensors", "pytorch_model.bin"]
    for name in names:
        found = try_to_load_from_cache(repo, name, cache_dir=_hf_cache(), revision=revision or None)
        if isinstance(found, str):
            return Path(found)
    if cfg.url and (Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(cfg.url)).is_file():
        return _hub_file(cfg.url, model, "timm")
    raise PipelineError(f"--model {model} --checkpoint pretrained: {repo} is not in the Hugging Face cache "
                        f"{_hf_cache()} and nothing is downloaded here; download "
                        f"https://huggingface.co/{repo}/resolve/{revision or 'main'}/{names[0]} into that cache once "
                        f"(python -c \"import timm; timm.create_model('{spec.name}', pretrained=True)\") or pass "
                        f"--checkpoint FILE")


def _timm_input(spec: Spec) -> dict:
    import timm
    cfg = timm.get_pretrained_cfg(spec.name)
    if cfg is None:
        return _imagenet_input()
    size = cfg.input_size[-1]
    return {"resize": int(size / (cfg.crop_pct or 1.0)), "crop": size, "channels": cfg.input_size[0],
            "mean": tuple(cfg.mean), "std": tuple(cfg.std)}


def _timm_version() -> str:
    import timm
    return timm.__version__


def _xrv_names(name: str) -> list[str]:
    import torchxrayvision as xrv
    return list(xrv.models.model_urls)


def _xrv_build(spec: Spec, model: str, outputs: int, channels: int) -> nn.Module:
    import torchxrayvision as xrv
    if spec.name.startswith("resnet"):
        # xrv.models.ResNet downloads its weights when built; its network is torchvision's ResNet with a
        # one-channel stem, and its weight files hold that network's state dict: built here directly.
        net = getattr(torchvision.models, spec.name.split("-")[0])(weights=None, num_classes=outputs)
        net.conv1 = nn.Conv2d(1, 64, kernel_size=7, stride=2, padding=3, bias=False)
        return net
    return xrv.models.DenseNet(weights=None, num_classes=outputs, **xrv.models.get_densenet_params(spec.name))


def _xrv_checkpoint(spec: Spec, model: str, checkpoint: str) -> Path | None:
    """--checkpoint, else the file torchxrayvision downloaded into its cache."""
    if checkpoint:
        return _given(model, checkpoint)
    import torchxrayvision as xrv
    cached = _xrv_cache(spec.name)
    if not cached.is_file():
        raise PipelineError(f"--model {model}: its weights are not in torchxrayvision's cache; download "
                            f"{xrv.models.model_urls[spec.name]['weights_url']} to {cached} "
                            f"(or pass --checkpoint FILE)")
    return cached


def _xrv_input(spec: Spec) -> dict:
    import torchxrayvision as xrv
    res = xrv.models.model_urls[spec.name].get("input_resolution", 224)
    return {"resize": res, "crop": res, "channels": 1, "mean": XRV_NORM[0], "std": XRV_NORM[1]}


def _xrv_classes(spec: Spec) -> list[str]:
    import torchxrayvision as xrv
    return list(xrv.models.model_urls[spec.name]["labels"])


def _xrv_version() -> str:
    import torchxrayvision as xrv
    return xrv.__version__


def _source_file(spec: Spec, model: str, what: str) -> None:
    source = Path(spec.name)
    if not source.is_file():
        raise PipelineError(f"--model {model}: {source} not found; pass the path of your {what}")


def _file_checkpoint(spec: Spec, model: str, checkpoint: str) -> Path | None:
    _source_file(spec, model, "Python file and the function in it")
    return _given(model, checkpoint)


def _file_sources(spec: Spec) -> dict:
    root = Path(spec.name).resolve().parent
    return {f.relative_to(root).as_posix(): file_digest(f) for f in imported_files([spec.name], root)}


def _torchscript_build(spec: Spec, model: str, outputs: int, channels: int) -> nn.Module:
    try:
        with warnings.catch_warnings():  # torch.jit.load's deprecation notice is not the user's to fix
            warnings.simplefilter("ignore", FutureWarning)
            return ScriptedTarget(torch.jit.load(str(Path(spec.name)), map_location="cpu"), model)
    except Exception as e:
        raise PipelineError(f"--model {model}: not a TorchScript file ({type(e).__name__}); save the model with "
                            f"torch.jit.save, or pass a state dict as --checkpoint with its architecture") from None


def _torchscript_checkpoint(spec: Spec, model: str, checkpoint: str) -> None:
    _source_file(spec, model, "TorchScript file")
    if checkpoint:
        raise PipelineError(f"--model {model} is a TorchScript file, which holds its weights; drop --checkpoint")


def _torchscript_source(spec: Spec) -> str:
    return file_digest(spec.name)


FAMILIES = {
    "medical_mae": Family(  # densenet121, resnet50: the medical_mae release, fine-tuned on NIH's 14 findings
        build=lambda spec, model, outputs, channels: build_target(spec.name, outputs),
        checkpoint=lambda spec, model, checkpoint: require_file(checkpoint or default_checkpoint(spec.name), spec.name),
        preprocessing=_nih_input, library=_torchvision_version, outputs=lambda spec: 14, head_sizes=False,
        classes=_nih_classes, pretrained=lambda spec, model: require_file(default_checkpoint(spec.name), spec.name)),
    "torchvision": Family(
        build=lambda spec, model, outputs, channels: torchvision.models.get_model(spec.name, weights=None,
                                                                                 num_classes=outputs),
        checkpoint=_fine_tuned, preprocessing=_torchvision_input, library=_torchvision_version,
        outputs=lambda spec: 1000, names=lambda name: torchvision.models.list_models(module=torchvision.models),
        pretrained=_torchvision_pretrained),
    "timm": Family(build=_timm_build, checkpoint=_fine_tuned, preprocessing=_timm_input, library=_timm_version,
                   outputs=lambda spec: 1000, names=_timm_names, pretrained=_timm_pretrained),
    "xrv": Family(build=_xrv_build, checkpoint=_xrv_checkpoint, preprocessing=_xrv_input, library=_xrv_version,
                  outputs=lambda spec: len(_xrv_classes(spec)), names=_xrv_names, classes=_xrv_classes,
                  pretrained=lambda spec, model: _xrv_checkpoint(spec, model, "")),
    "file": Family(  # path/file.py:function, the user's code
        build=lambda spec, model, outputs, channels: _from_file(spec, model), checkpoint=_file_checkpoint,
        preprocessing=_nih_input, library=lambda: None, source=_file_sources,
        tag=lambda spec: f"{Path(spec.name).stem}-{spec.function}"),
    "torchscript": Family(build=_torchscript_build, checkpoint=_torchscript_checkpoint, preprocessing=_nih_input,
                          library=lambda: None, source=_torchscript_source, tag=lambda spec: Path(spec.name).stem),
}
