"""mammi/maps.py and the one reader of a layer's maps (models/layers.py's read_maps): each against a plain
forward written here, on tiny models whose maps are known."""
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from mammi.maps import (
    class_activation_maps,
    layer_kind,
    layer_maps,
    module_maps,
    overall_map,
    token_grid,
    tokens_on_grid,
)
from models.layers import read_maps, tap
from pipeline.cli import PipelineError


class Block(nn.Module):
    """A conv block whose output the model then changes in place (as DenseNet's final ReLU does)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)

    def forward(self, x):
        return self.conv(x)


class Net(nn.Module):
    """features -> in-place ReLU -> mean -> fc: DenseNet's shape in miniature."""

    def __init__(self):
        super().__init__()
        self.features = Block()
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        return self.fc(F.relu(self.features(x), inplace=True).mean((2, 3)))


class ChannelsLast(nn.Module):
    """A stage that says its output is [B, H, W, C] (timm's output_fmt), then a head over its channels."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.stage = nn.Identity()
        self.stage.output_fmt = "NHWC"
        self.head = nn.Linear(4, 2)

    def forward(self, x):
        return self.head(self.stage(self.conv(x).permute(0, 2, 3, 1)).mean((1, 2)))


def plain_features(net, x):
    return net.features.conv(x)


def test_the_reader_keeps_the_output_before_an_in_place_change():
    torch.manual_seed(0)
    net, x = Net().eval(), torch.randn(2, 3, 5, 5)
    with torch.no_grad(), read_maps(net, "features") as rec:
        net(x)
        want = plain_features(net, x)
    assert (want < 0).any()  # the ReLU would have changed these, had the reader not copied them
    assert torch.equal(rec["maps"], want)


def test_the_reader_moves_channels_last_maps_and_token_channels_to_dim_1():
    torch.manual_seed(0)
    net, x = ChannelsLast().eval(), torch.randn(2, 3, 4, 6)
    with torch.no_grad(), read_maps(net, "stage") as rec:
        net(x)
    raw = net.conv(x)  # [B, C, H, W] before the model's permute: what channel-first means
    assert rec["maps"].shape == (2, 4, 4, 6) and torch.equal(rec["maps"], raw.detach())
    enc = nn.TransformerEncoderLayer(8, 2, 16, batch_first=True).eval()
    seq = torch.randn(2, 5, 8)
    with torch.no_grad(), read_maps(enc, "fc") as rec:  # fc: the module's own outputs, [B, T, D]
        out = enc(seq)
    assert rec["maps"].shape == (2, 8, 5)
    assert all(torch.equal(rec["maps"][b, d, t], out[b, t, d]) for b in range(2) for d in range(8) for t in range(5))


def test_a_module_run_twice_is_read_at_its_last_call():
    class Twice(nn.Module):
        def __init__(self):
            super().__init__()
            self.act = nn.Conv2d(2, 2, 1)
            self.fc = nn.Linear(2, 1)

        def forward(self, x):
            return self.fc(self.act(self.act(x)).mean((2, 3)))
    torch.manual_seed(0)
    net, x = Twice().eval(), torch.randn(1, 2, 3, 3)
    with torch.no_grad(), read_maps(net, "act") as rec:
        net(x)
    assert rec["hook"].calls == 2 and torch.equal(rec["maps"], net.act(net.act(x)).detach())
    assert not net.act._forward_hooks  # the block removed its hooks


def test_class_activation_maps_are_the_head_at_each_position():
    g = torch.Generator().manual_seed(1)
    w, b, maps = torch.randn(3, 4, generator=g), torch.randn(3, generator=g), torch.randn(2, 4, 2, 5, generator=g)
    got = class_activation_maps(w, b, maps)
    for i in range(2):
        for c in range(3):
            for y in range(2):
                for x in range(5):
                    want = sum(float(w[c, k]) * float(maps[i, k, y, x]) for k in range(4)) + float(b[c])
                    assert abs(float(got[i, c, y, x]) - want) < 1e-5


def test_layer_maps_average_to_the_logits_and_the_pooled_features():
    torch.manual_seed(0)
    net, x = Net().eval(), torch.randn(2, 3, 5, 5)
    raw = module_maps(net, "features", x)
    with torch.no_grad():
        pooled = F.relu(plain_features(net, x)).mean((2, 3))
        logits = pooled @ net.fc.weight.T + net.fc.bias
    assert torch.allclose(layer_maps(net, "penultimate", raw).mean((2, 3)), pooled, atol=1e-6)
    assert torch.allclose(layer_maps(net, "fc", raw).mean((2, 3)), logits, atol=1e-6)
    assert torch.equal(layer_maps(net, "features", raw), raw)
    with torch.no_grad(), tap(net, "fc") as store:
        net(x)
    assert torch.allclose(layer_maps(net, "fc", raw).mean((2, 3)), store["a"], atol=1e-6)


def test_tokens_lie_on_their_square_patch_grid_after_the_prefix():
    class Vit(nn.Module):  # timm's declaration: one class token, 4 patches
        num_prefix_tokens = 1
        patch_embed = type("P", (), {"num_patches": 4})()
    assert token_grid(Vit(), 5) == (1, 2)
    assert token_grid(Vit(), 4) == (0, 2)  # the patches alone (the patch embedding's output)
    assert token_grid(Vit(), 6) is None  # 5 patches make no square
    tokens = torch.arange(2 * 3 * 5, dtype=torch.float32).reshape(2, 3, 5)  # [B, D, T]
    grid = tokens_on_grid(tokens, 1, 2)
    for b in range(2):
        for d in range(3):
            assert grid[b, d].tolist() == [[tokens[b, d, 1].item(), tokens[b, d, 2].item()],
                                           [tokens[b, d, 3].item(), tokens[b, d, 4].item()]]


def test_a_layer_without_spatial_extent_is_refused_in_its_own_shape():
    enc = nn.Sequential(nn.Flatten(), nn.Linear(12, 7), nn.Linear(7, 2))
    with pytest.raises(PipelineError, match=r"its output \[1, 7\] has no spatial extent"):
        layer_kind(enc, "1", torch.randn(1, 3, 2, 2))


def test_overall_map_is_the_weighted_sum_of_the_thresholded_maps():
    maps = torch.tensor([[[1.0, 2.0], [3.0, 4.0]], [[4.0, 0.0], [0.0, -1.0]]])
    got = overall_map(maps, torch.tensor([3.0, -1.0]), 50, 2)  # resized to its own size: no interpolation
    # at the 50th percentile map 0 keeps 3 and 4, map 1 keeps 4 (its median is 0); weights 3/4 and -1/4
    assert got.tolist() == [[-1.0, 0.0], [2.25, 3.0]]
