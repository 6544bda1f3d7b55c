"""What a layer's neurons are when a model keeps its feature maps channels-last (Swin in timm and
torchvision: [B, H, W, C]), that channels-first ones (ConvNeXt) read as before, and what
the cache key of a user's model file covers."""
import sys

import pytest
import timm
import torch
import torchvision

from conftest import make_probe_set, run_script
from models.layers import channels_last_modules, layer_table, taps
from models.target import load_target, target_identity
from pipeline.cli import PipelineError
from pipeline.outputs import activations_key

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: one intra-op thread

# A Swin small enough for a test: 64 px in, stages of 24, 48, 96 and 192 channels on 16, 8, 4 and 2 patches.
SWIN = dict(pretrained=False, img_size=64, embed_dim=24, depths=(1, 1, 2, 1), num_heads=(1, 2, 2, 4), window_size=4,
            num_classes=3)
SWIN_FILE = f'''import timm


def build():
    return timm.create_model("swin_tiny_patch4_window7_224", **{SWIN!r})
'''


def read(net, layers, x):
    """Each layer's reduced activations (taps) and its raw output (a plain hook), from one pass."""
    raw, modules = {}, dict(net.named_modules())
    grabs = [modules[n].register_forward_hook(lambda m, i, o, n=n: raw.__setitem__(n, o.clone()))
             for n in layers if n in modules]
    try:
        with torch.no_grad(), taps(net, layers) as got:
            net(x)
    finally:
        for g in grabs:
            g.remove()
    return got, raw


def neurons(net, x):
    return {name: n for name, _, n in layer_table(net, x)}


def test_timm_swin_reads_channels_last():
    torch.manual_seed(0)
    net = timm.create_model("swin_tiny_patch4_window7_224", **SWIN).eval()
    x = torch.randn(2, 3, 64, 64)
    stages = ["layers.0", "layers.1", "layers.2", "layers.3", "norm"]
    got, raw = read(net, stages + ["patch_embed", "patch_embed.proj", "penultimate"], x)
    table = neurons(net, x)
    for name, channels in zip(stages, (24, 48, 96, 192, 192)):
        assert raw[name].shape[-1] == channels and raw[name].shape[1] == raw[name].shape[2]  # [B, H, W, C]
        assert torch.allclose(got[name], raw[name].mean((1, 2)), atol=1e-6), name
        assert table[name] == str(channels), name
    assert torch.allclose(got["patch_embed"], raw["patch_embed"].mean((1, 2)), atol=1e-6)
    # the convolution inside the patch embedding is channels-first, as every Conv2d
    assert raw["patch_embed.proj"].shape == (2, 24, 16, 16)
    assert torch.allclose(got["patch_embed.proj"], raw["patch_embed.proj"].mean((2, 3)), atol=1e-6)
    # the head pools the channels-last norm output over its patches: the same numbers
    assert torch.allclose(got["penultimate"], got["norm"], atol=1e-6)


def test_timm_output_fmt_declares_the_stages_channels_last():
    """MambaOut's stem permutes in plain code: only the model's output_fmt says its stages are [B, H, W, C]."""
    torch.manual_seed(0)
    net = timm.create_model("mambaout_femto", num_classes=3).eval()
    assert net.output_fmt == "NHWC"
    x = torch.randn(2, 3, 64, 64)
    stages = ["stem", "stages.0", "stages.1", "stages.2", "stages.3"]
    got, raw = read(net, stages, x)
    for name, channels in zip(stages, (48, 48, 96, 192, 288)):
        assert raw[name].shape[-1] == channels and raw[name].shape[1] == raw[name].shape[2], name
        assert torch.allclose(got[name], raw[name].mean((1, 2)), atol=1e-5), name


def test_torchvision_swin_reads_channels_last():
    torch.manual_seed(0)
    net = torchvision.models.swin_t(num_classes=3).eval()
    x = torch.randn(2, 3, 64, 64)
    stages = ["features.0", "features.1", "features.3", "features.5", "features.7", "norm"]
    got, raw = read(net, stages + ["permute", "features.0.0", "penultimate"], x)
    table = neurons(net, x)
    for name, channels in zip(stages, (96, 96, 192, 384, 768, 768)):
        assert raw[name].shape[-1] == channels and raw[name].shape[1] == raw[name].shape[2], name
        assert torch.allclose(got[name], raw[name].mean((1, 2)), atol=1e-5), name
        assert table[name] == str(channels), name
    for name in ("permute", "features.0.0"):  # back to channels-first before pooling; the stem's Conv2d
        assert raw[name].shape[1] in (96, 768) and torch.allclose(got[name], raw[name].mean((2, 3)), atol=1e-5)
    assert torch.allclose(got["penultimate"], got["norm"], atol=1e-5)


def test_heatmaps_refuse_channels_last_features():
    from models.layers import map_module, map_source
    from pipeline.cli import PipelineError
    swin = torchvision.models.swin_t(num_classes=3)
    with pytest.raises(PipelineError, match="channels-last"):
        map_module(swin)
    with pytest.raises(PipelineError, match="channels-last"):  # a stage named by --layer, for dissection
        map_source(swin, "features.3")
    assert map_module(torchvision.models.densenet121(num_classes=3)) == "features"
    assert map_source(torchvision.models.densenet121(num_classes=3), "features.denseblock2") == "features.denseblock2"


@pytest.mark.parametrize("family", ["timm", "torchvision"])
def test_convnext_reads_channels_first_as_before(family):
    torch.manual_seed(0)
    if family == "timm":
        net = timm.create_model("convnext_atto", num_classes=3).eval()
        stages = ["stem", "stages.0", "stages.1", "stages.2", "stages.3"]
    else:
        net = torchvision.models.convnext_tiny(num_classes=3).eval()
        stages = ["features.0", "features.1", "features.3", "features.5", "features.7"]
    assert not channels_last_modules(net) & set(stages)
    x = torch.randn(2, 3, 64, 64)
    got, raw = read(net, stages, x)
    table = neurons(net, x)
    for name in stages:
        assert torch.allclose(got[name], raw[name].mean((2, 3)), atol=1e-5), name
        assert table[name] == str(raw[name].shape[1]), name
    if family == "torchvision":  # inside a block, between its two Permutes, the LayerNorm is channels-last
        got, raw = read(net, ["features.1.0.block.2"], x)
        assert raw["features.1.0.block.2"].shape == (2, 16, 16, 96)
        assert torch.allclose(got["features.1.0.block.2"], raw["features.1.0.block.2"].mean((1, 2)), atol=1e-5)


def test_a_layer_without_one_row_per_image_is_refused():
    """Swin's window attention runs on 16 windows of each image: its output is no value per image."""
    net = timm.create_model("swin_tiny_patch4_window7_224", **SWIN).eval()
    x = torch.randn(2, 3, 64, 64)
    assert neurons(net, x)["layers.0.blocks.0.attn"] == "-"
    with pytest.raises(PipelineError, match=r"--layer layers.0.blocks.0.attn: its output has 32 rows for 2 images"):
        read(net, ["layers.0.blocks.0.attn"], x)
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in net.modules())  # hooks removed


def test_layer_list_shows_the_channels_of_a_swin_file(tmp_path):
    (tmp_path / "swin.py").write_text(SWIN_FILE)
    images = make_probe_set(tmp_path / "p", n=2, size=64)
    proc = run_script("example_selection.py", "--data_root", str(images), "--model", f"{tmp_path / 'swin.py'}:build",
                      "--resize", "64", "--crop", "64", "--num_workers", "0", "--save_root", str(tmp_path / "res"),
                      "--layer", "list")
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    rows = {r.split()[0]: r.split()[-1] for r in proc.stdout.splitlines() if r.startswith(("layers.", "norm "))}
    assert [rows[f"layers.{i}"] for i in range(4)] == ["24", "48", "96", "192"] and rows["norm"] == "192"
    assert rows["layers.0.blocks.0.attn"] == "-"


# ---- a user's model file: its cache key covers the modules it imports

MODEL_FILE = '''import torch.nn as nn
from helpers import WIDTH


def build():
    import blocks.stem  # imported when the model is built, not when the file is read
    return nn.Sequential(blocks.stem.make(WIDTH), nn.Flatten(), nn.LazyLinear(3))
'''


def user_folder(root):
    (root / "blocks").mkdir(parents=True)
    (root / "mine.py").write_text(MODEL_FILE)
    (root / "helpers.py").write_text("from consts import BASE\n\nWIDTH = BASE\n")
    (root / "consts.py").write_text("BASE = 4\n")
    (root / "blocks" / "__init__.py").write_text("")
    (root / "blocks" / "stem.py").write_text("import torch.nn as nn\n\n\ndef make(w):\n"
                                             "    return nn.Sequential(nn.Conv2d(3, w, 3), nn.AdaptiveAvgPool2d(1))\n")
    (root / "unused.py").write_text("X = 1\n")
    return f"{root / 'mine.py'}:build"


def test_file_model_key_covers_the_modules_it_imports(tmp_path):
    model = user_folder(tmp_path / "user")
    elsewhere = tmp_path / "other" / "helpers.py"  # the same name, in another folder
    elsewhere.parent.mkdir()
    elsewhere.write_text("WIDTH = 4\n")
    key = lambda: activations_key({"model": model}, None, "data")
    assert set(target_identity(model, None)["source"]) == {"mine.py", "helpers.py", "consts.py", "blocks/__init__.py",
                                                           "blocks/stem.py"}
    before = set(sys.modules)
    try:
        net, _ = load_target(model, None, need_head=False)  # the file runs and finds its neighbours
    finally:  # this process's later tests must not find these modules under their plain names
        for name in set(sys.modules) - before:
            if str(getattr(sys.modules[name], "__file__", "")).startswith(str(tmp_path)):
                del sys.modules[name]
    assert net[0][0].out_channels == 4
    first = key()
    for path, text in ((tmp_path / "user" / "unused.py", "X = 2\n"), (elsewhere, "WIDTH = 8\n")):
        path.write_text(text)
        assert key() == first, path  # nothing the model runs changed
    for path, text in ((tmp_path / "user" / "helpers.py", "from consts import BASE\n\nWIDTH = 2 * BASE\n"),
                       (tmp_path / "user" / "consts.py", "BASE = 3\n"),  # imported by helpers.py
                       (tmp_path / "user" / "blocks" / "stem.py", "import torch.nn as nn\n\n\ndef make(w):\n"
                        "    return nn.Sequential(nn.Conv2d(3, w, 5), nn.AdaptiveAvgPool2d(1))\n")):
        before = key()
        path.write_text(text)
        assert key() != before, path
