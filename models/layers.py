"""Reading a target's layers: read_maps, the one reader of a layer's output with its neurons on dim 1
(conv maps, channels-last maps, transformer tokens), for heatmaps, dissection and the gallery's maps;
taps, which pool it to one value per neuron and image; the module whose maps the head pools
(map_module); and the table of every layer that `--layer list` prints."""
from __future__ import annotations

import difflib
from contextlib import ExitStack, contextmanager

import torch
import torch.nn as nn
from torchvision.ops.misc import Permute
from tqdm import tqdm

from core.errors import PipelineError
from core.text import at_most
from models.target import ScriptedTarget, head_name

# Modules that compute over dim 1, so their 4-D outputs are [B, C, H, W] inside a channels-last model too.
CHANNELS_FIRST = (nn.Conv2d, nn.ConvTranspose2d, nn.BatchNorm2d, nn.InstanceNorm2d, nn.GroupNorm, nn.AvgPool2d,
                  nn.MaxPool2d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)


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


def first_tensor(out):
    """A module's output tensor: attention blocks return (output, weights), the first tensor is the output;
    None when there is no tensor at all."""
    if isinstance(out, (tuple, list)):
        return next((o for o in out if isinstance(o, torch.Tensor)), None)
    return out if isinstance(out, torch.Tensor) else None


def reduce_output(out, layout: tuple[int, int | None], token_pool: str, channels_last: bool = False) -> torch.Tensor:
    """One value per neuron and image: [B, D] as is; [B, C, H, W] (conv) by the spatial mean, or
    [B, H, W, C] when channels_last; [B, T, D] (transformer tokens) by the mean over patch tokens, or
    the class token (token_pool)."""
    return pool_maps(channel_first(first_tensor(out), channels_last), layout, token_pool)


def pool_maps(maps: torch.Tensor, layout: tuple[int, int | None], token_pool: str) -> torch.Tensor:
    """reduce_output on a channel-first output (channel_first's): [B, D] as is, maps [B, C, H, W] by
    their spatial mean, tokens [B, D, T] by the mean over patch tokens or the class token."""
    if maps.dim() > 3:
        return maps.flatten(2).mean(2)
    if maps.dim() < 3:
        return maps
    prefix, patches = layout
    if patches is not None and maps.shape[2] == patches:
        prefix = 0  # a sequence of patches alone (the patch embedding's output)
    if token_pool == "cls":
        if prefix < 1:
            raise PipelineError(f"--token_pool cls: this layer's {maps.shape[2]} tokens have no class token "
                                f"(the model declares none before its patches); use --token_pool mean")
        return maps[:, :, 0]
    return maps[:, :, prefix:].mean(2)


def channel_first(out: torch.Tensor, channels_last: bool) -> torch.Tensor:
    """A layer's output with its neurons on dim 1 (a view): [B, D] and [B, C, H, W] as they are,
    channels-last maps [B, H, W, C] as [B, C, H, W], tokens [B, T, D] as [B, D, T]."""
    return out.movedim(channel_axis(out, channels_last), 1)


def channel_axis(t: torch.Tensor, channels_last: bool) -> int:
    """Where a layer output's neurons are, as reduce_output reads them: [B, D] and [B, C, H, W] on dim 1,
    tokens [B, T, D] and channels-last maps on the last dim."""
    return -1 if t.dim() == 3 or (t.dim() > 3 and channels_last) else 1


class LayerHook:
    """The hooks hook_layer puts on a model; calls: how many times the layer ran in the last complete
    forward pass (a module can run several times in one: a ReLU that a ResNet block applies after each
    of its convolutions)."""

    def __init__(self):
        self.calls, self.now, self.handles = 0, 0, []

    def remove(self):
        for h in self.handles:
            h.remove()


def hook_layer(model: nn.Module, layer: str, fn, only_last: bool = False) -> LayerHook:
    """Call fn(output) on each forward pass at `layer`: the model's outputs (fc), its head's input
    (penultimate) or a module's output. fn may return a tensor that replaces what flows on (None: as is).
    A module that runs several times in a pass calls fn each time, and the last call is what is read (a
    block's output, where its ReLU is shared). only_last: fn is called only on that last call, as counted
    in the pass before (the first call in a first pass): ablation zeroes what was read."""
    hook = LayerHook()

    def on(out):
        hook.now += 1
        return fn(out) if not only_last or hook.now == (hook.calls or 1) else None

    def start(m, args):
        hook.now = 0

    def end(m, args, out):
        hook.calls = hook.now

    hook.handles.append(model.register_forward_pre_hook(start))
    if layer == "fc":
        hook.handles.append(model.register_forward_hook(lambda m, inp, out: on(out)))
    elif layer == "penultimate":
        def before_head(m, inp):
            new = on(inp[0])
            return None if new is None else (new, *inp[1:])
        hook.handles.append(model.get_submodule(head_name(model)).register_forward_pre_hook(before_head))
    else:
        hook.handles.append(model.get_submodule(layer).register_forward_hook(lambda m, inp, out: on(out)))
    hook.handles.append(model.register_forward_hook(end))  # after fc's own: counts the pass's calls
    return hook


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


@contextmanager
def read_maps(model: nn.Module, layer: str, keep=None):
    """The one reader of a layer's maps: hooks `layer` (fc, penultimate or a module, as hook_layer) and, on
    each forward pass inside the block, puts keep(its output, neurons on dim 1) under store["maps"]: conv
    maps [B, C, H, W], channels-last maps moved to it (as the model declares its layout), tokens [B, D, T],
    [B, D] as is (channel_first). A module that runs several times in a pass is read at its last call.
    keep: by default a detached float copy, cloned because DenseNet's final ReLU runs in place on its
    features output after the hook; tap passes its pooling, done inside the hook for the same reason.
    store["hook"]: the LayerHook (how many times the layer ran)."""
    inner = model.script if isinstance(model, ScriptedTarget) else model
    last = layer not in ("fc", "penultimate") and layer in channels_last_modules(inner)
    keep = keep or (lambda maps: maps.detach().clone().float())
    store: dict = {}
    store["hook"] = hook_layer(model, layer, lambda out: store.__setitem__(
        "maps", keep(channel_first(first_tensor(out), last))))
    try:
        yield store
    finally:
        store["hook"].remove()


def map_module(model: nn.Module) -> str:
    """The last spatial block, whose maps the head pools: DenseNet's `features` (its last module is norm5,
    so the output is pre-ReLU), ResNet's `layer4`; refused for other models or channels-last maps."""
    names = dict(model.named_children())
    found = next((n for n in ("features", "layer4") if n in names), None)
    if found is None:
        raise PipelineError("heatmaps are taken at the output of a `features` (DenseNet) or `layer4` (ResNet) "
                            "module, and this model has neither; they are not available for this model family")
    return channels_first(model, found)


def map_source(model: nn.Module, layer: str) -> str:
    """The module whose output holds a layer's maps: fc and penultimate both come from the last spatial
    block (map_module), so one pass serves both."""
    name = map_module(model) if layer in ("fc", "penultimate") else layer
    if name not in dict(model.named_modules()) or not name:
        raise PipelineError(f"--layer {layer!r} is not a module of this model; try fc, penultimate or a block name")
    return channels_first(model, name)


def channels_first(model: nn.Module, name: str) -> str:
    """name, if its maps are [B, C, H, W]; torchvision's Swin, say, gives [B, H, W, C] (refused)."""
    if name in channels_last_modules(model):
        raise PipelineError(f"the maps of `{name}` are channels-last [B, H, W, C] in this model, and heatmaps and "
                            f"dissection read [B, C, H, W]; they are not available for this model family")
    return name


def _reader(model: nn.Module, token_pool: str):
    """reduce_output by layer name (fc, penultimate or a module), each output with the layout the model
    declares for it (the head's input is [B, D], or [B, C, H, W] for a Conv2d head)."""
    layout = token_layout(model)
    last = channels_last_modules(model) - {"fc", "penultimate"}
    return lambda name, out: reduce_output(out, layout, token_pool, name in last)


def _register(model: nn.Module, layer: str, put, pool, batch: dict):
    """read_maps on `layer`, each forward pass calling put(its pooled output); refused when that output
    has another number of rows than the pass has images (batch['n']): a block that works on windows
    (Swin's attention) holds no value per image."""
    def checked(maps):
        v = pool(maps)
        if v.shape[0] != batch["n"]:
            raise PipelineError(f"--layer {layer}: its output has {v.shape[0]} rows for {batch['n']} images (it "
                                f"works on windows or patches of them); name the block or stage that holds it "
                                f"(--layer list shows the neurons of each)")
        put(v)
    modules = dict(model.named_modules())
    if layer == "fc":
        return read_maps(model, layer, checked)
    if isinstance(model, ScriptedTarget):
        raise PipelineError(f"--layer {layer}: a TorchScript model accepts no hooks, so only its outputs (fc) can "
                            f"be read; pass the model as file.py:function to probe its layers")
    if layer not in modules and layer != "penultimate" or not layer:
        names = [n for n in modules if n]
        ends = [n for n in names if n.endswith("." + layer)]  # the right name without its parents
        near = list(dict.fromkeys(ends + difflib.get_close_matches(layer, names, n=5, cutoff=0.5)))
        hint = (f"closest: {at_most(near, 5)}" if near else
                f"top-level modules: {', '.join(n for n in names if '.' not in n)}")
        raise PipelineError(f"--layer {layer!r} is not a module of this model; use fc, penultimate, a module "
                            f"name ({hint}) or --layer list")
    # Pooled inside the hook: DenseNet applies its last ReLU in place on the features output afterwards.
    return read_maps(model, layer, checked)


@contextmanager
def _hooked(model: nn.Module, layers: list[str], token_pool: str, key):
    if token_pool not in ("mean", "cls"):
        raise PipelineError(f"--token_pool is mean or cls, not {token_pool!r}")
    store: dict[str, torch.Tensor] = {}
    batch: dict[str, int] = {}
    layout = token_layout(model.script if isinstance(model, ScriptedTarget) else model)
    pool = lambda maps: pool_maps(maps, layout, token_pool)  # noqa: E731
    hooks = [model.register_forward_pre_hook(lambda m, args: batch.__setitem__("n", len(args[0])))]
    layer_hooks: dict[str, LayerHook] = {}
    noted: set[str] = set()

    def note(m, args, out):
        """Once per layer: a module that runs several times per pass is read at its last call."""
        for layer, h in layer_hooks.items():
            if h.calls > 1 and layer not in noted:
                noted.add(layer)
                tqdm.write(f"note: --layer {layer}: the module runs {h.calls} times in each forward pass; its last "
                           f"call (the block's output) is read, the {h.calls - 1} before it are left out")
    try:
        with ExitStack() as readers:
            for layer in layers:
                put = lambda v, k=key(layer): store.__setitem__(k, v)  # noqa: E731
                layer_hooks[layer] = readers.enter_context(_register(model, layer, put, pool, batch))["hook"]
            hooks.append(model.register_forward_hook(note))  # after the layers' hooks have counted the pass
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
    neurons '-' where an output holds no one value per image and neuron. A module that runs several
    times in the pass says how many after its shape (its last call's, the one a probe reads)."""
    # Keyed by (row, name): the model's outputs (row "fc") are not its module fc (ResNet's head), which runs
    # once in a pass of its own; one key for both would count two calls.
    shapes: dict[tuple[str, str], tuple[str, str]] = {}
    calls: dict[tuple[str, str], int] = {}
    inner = model.script if isinstance(model, ScriptedTarget) else model
    read = _reader(inner, token_pool)

    def record(key, out):
        calls[key] = calls.get(key, 0) + 1  # the last call's shape stays: the call that is read
        t = first_tensor(out)
        if t is None:
            shapes[key] = (type(out).__name__, "-")
            return
        try:
            v = read(key[1], t)
            neurons = str(v.shape[1]) if t.dim() > 1 and len(v) == len(x) else "-"
        except PipelineError:
            neurons = "-"
        shapes[key] = (str(list(t.shape)), neurons)

    hooks = [model.register_forward_hook(lambda m, i, o: record(("layer", "fc"), o))]
    if not isinstance(model, ScriptedTarget):
        try:
            hooks.append(model.get_submodule(head_name(model)).register_forward_pre_hook(
                lambda m, i: record(("layer", "penultimate"), i[0])))
        except PipelineError:
            pass
        hooks += [m.register_forward_hook(lambda m, i, o, n=n: record(("module", n), o))
                  for n, m in model.named_modules() if n]
    try:
        with torch.inference_mode():
            model(x)
    finally:
        for h in hooks:
            h.remove()
    for key, k in calls.items():
        if k > 1:
            shapes[key] = (f"{shapes[key][0]} ({k} calls: the last read)", shapes[key][1])
    rows = [(n, *shapes[("layer", n)]) for n in ("fc", "penultimate") if ("layer", n) in shapes]
    if isinstance(model, ScriptedTarget):
        rows += [(n, "(TorchScript: no hooks)", "-") for n, _ in inner.named_modules() if n]
    else:
        rows += [(n, *shapes.get(("module", n), ("(not called)", "-"))) for n, _ in model.named_modules() if n]
    return rows


def first_nonfinite(model: nn.Module, x: torch.Tensor) -> str | None:
    """The module whose output is the first, in the order they finish, to hold NaN or infinity when the
    model runs on x (a module finishes after the modules inside it, so this is where they first appear);
    'fc' for the outputs alone (a TorchScript model's modules cannot be hooked), None when all are finite."""
    found: list[str] = []

    def check(name, out):
        t = first_tensor(out)
        if not found and t is not None and t.is_floating_point() and not torch.isfinite(t).all():
            found.append(name)
    hooks = [m.register_forward_hook(lambda m, i, o, n=n: check(n, o)) for n, m in model.named_modules() if n
             and not isinstance(model, ScriptedTarget)]
    hooks.append(model.register_forward_hook(lambda m, i, o: check("fc", o)))
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in hooks:
            h.remove()
    return found[0] if found else None

