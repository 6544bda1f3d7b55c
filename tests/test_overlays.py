"""pipeline/overlays.py and the gallery's maps over a neuron's examples: each map against a plain forward
hook and numpy (channel maps, fc class activation maps, transformer tokens on their grid) on the exact
example sets of a real step 2, the cache reused and renewed, a refusal for a layer with no spatial
extent and for a target that is not step 2's, and the maps drawn over the thumbnails in a real browser."""
import json
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
import torch.nn.functional as F

import pipeline.overlays as overlays
from conftest import densenet_of, model_input, no_errors, ok, page_data, run_script
from core.errors import PipelineError
from pipeline.outputs import overlays_path, read_examples

LAYERS = ("fc", "penultimate", "features.denseblock3", "classifier")
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def dense(probe_set, densenet_ckpt, tmp_path_factory):
    """Step 2 on the 64 test images, DenseNet-121 at 64 px: fc, penultimate, a dense block and the head
    module (whose output [B, 14] has no spatial extent), in one pass."""
    out = tmp_path_factory.mktemp("overlays") / "res"
    ok(run_script("example_selection.py", "--data_root", str(probe_set), "--checkpoint", str(densenet_ckpt),
                  "--resize", "64", "--crop", "64", "--num_workers", "0", "--layer", ",".join(LAYERS),
                  "--save_root", str(out)))
    return {layer: out / "nih14_train" / "densenet121" / layer / "adaptive93" / "examples.json" for layer in LAYERS}


def hooked(net: torch.nn.Module, module: torch.nn.Module, x: torch.Tensor) -> np.ndarray:
    """A module's output for a batch, by a forward hook written here (a copy: DenseNet's last ReLU is in place)."""
    got = {}
    h = module.register_forward_hook(lambda m, i, o: got.__setitem__("o", o.detach().clone()))
    with torch.no_grad():
        net(x)
    h.remove()
    return got["o"].double().numpy()


def by_hand(ex_json: Path, limit: int, maps_of) -> tuple[list, list, np.ndarray]:
    """The neurons with examples, their counts (the first `limit`) and maps_of(neuron, image path) stacked."""
    ex = json.loads(ex_json.read_text())
    folder = Path(ex["config"]["data_root"])
    neurons, counts, maps = [], [], []
    for n in ex["neurons"]:
        ids = [e["image_id"] for e in n["examples"][:limit]]
        if ids:
            neurons.append(n["neuron"])
            counts.append(len(ids))
            maps += [maps_of(n["neuron"], folder / i) for i in ids]
    return neurons, counts, np.stack(maps)


def test_maps_equal_a_plain_hook_and_the_fc_weights_by_hand(dense, densenet_ckpt):
    """penultimate: the neuron's channel of ReLU(features); fc: sum_k W[c, k] ReLU(features)[k] + b[c]; a dense
    block: its channel; each for the first 3 examples of every live neuron, in examples.json's order."""
    net = densenet_of(densenet_ckpt)
    W, b = net.classifier.weight.detach().double().numpy(), net.classifier.bias.detach().double().numpy()
    c = json.loads(dense["fc"].read_text())["config"]
    memo = {}

    def out(module, path):
        if (module, path) not in memo:
            memo[(module, path)] = hooked(net, dict(net.named_modules())[module], model_input(path, c)[None])[0]
        return memo[(module, path)]

    def cam(k, path):
        f = np.maximum(out("features", path), 0)
        return sum(W[k, j] * f[j] for j in range(f.shape[0])) + b[k]

    plain = {"penultimate": lambda k, p: np.maximum(out("features", p)[k], 0), "fc": cam,
             "features.denseblock3": lambda k, p: out("features.denseblock3", p)[k]}
    for layer, maps_of in plain.items():
        neurons, counts, want = by_hand(dense[layer], 3, maps_of)
        got = overlays.example_overlays(dense[layer], read_examples(dense[layer]), "", 3, 16, 0, CPU)
        assert got["neurons"] == neurons and got["counts"] == counts and max(counts) == 3
        assert got["kind"] == {"fc": "fc", "penultimate": "penultimate"}.get(layer, "spatial")
        assert got["maps"].shape == want.shape and want.shape[1:] == ((4, 4) if layer == "features.denseblock3" else (2, 2))
        np.testing.assert_allclose(got["maps"].double().numpy(), want, rtol=1e-4, atol=1e-4)


@pytest.fixture(scope="module")
def reinit(probe_set, densenet_ckpt, tmp_path_factory):
    """Step 2 of the same target re-initialised with seed 2 (sanity_check.py's randomised run): fc and a dense block."""
    out = tmp_path_factory.mktemp("overlays-reinit") / "res"
    layers = ("fc", "features.denseblock3")
    ok(run_script("example_selection.py", "--data_root", str(probe_set), "--checkpoint", str(densenet_ckpt),
                  "--resize", "64", "--crop", "64", "--num_workers", "0", "--layer", ",".join(layers),
                  "--reinit_seed", "2", "--save_root", str(out)))
    return {layer: out / "nih14_train" / "densenet121-reinit2" / layer / "adaptive93" / "examples.json"
            for layer in layers}


def test_maps_of_a_reinitialised_run_are_the_reinitialised_models(reinit, densenet_ckpt):
    """A run of the re-initialised target: its maps (a dense block's channel, fc's class activation map) are
    those of the checkpoint re-initialised by hand with the run's seed, which differ from the trained one's."""
    nets = {"trained": densenet_of(densenet_ckpt), "re-initialised": densenet_of(densenet_ckpt, 2)}
    c = json.loads(reinit["fc"].read_text())["config"]
    memo = {}

    def out(which, module, path):
        if (which, module, path) not in memo:
            net = nets[which]
            memo[(which, module, path)] = hooked(net, dict(net.named_modules())[module], model_input(path, c)[None])[0]
        return memo[(which, module, path)]

    def maps_of(which, layer):
        if layer != "fc":
            return lambda k, path: out(which, layer, path)[k]
        head = nets[which].classifier
        W, b = head.weight.detach().double().numpy(), head.bias.detach().double().numpy()
        return lambda k, path: np.tensordot(W[k], np.maximum(out(which, "features", path), 0), 1) + b[k]

    for layer, ex_json in reinit.items():
        neurons, counts, want = by_hand(ex_json, 3, maps_of("re-initialised", layer))
        got = overlays.example_overlays(ex_json, read_examples(ex_json), "", 3, 16, 0, CPU)
        assert got["neurons"] == neurons and got["counts"] == counts and max(counts) == 3
        np.testing.assert_allclose(got["maps"].double().numpy(), want, rtol=1e-4, atol=1e-4)
        trained = by_hand(ex_json, 3, maps_of("trained", layer))[2]
        assert not np.allclose(trained, want, rtol=1e-2, atol=1e-2), layer


def test_a_layer_without_spatial_extent_is_refused_with_the_reason(dense):
    with pytest.raises(PipelineError, match=r"classifier: its output \[1, 14\] has no spatial extent"):
        overlays.example_overlays(dense["classifier"], read_examples(dense["classifier"]), "", 3, 16, 0, CPU)
    assert not overlays_path(dense["classifier"]).exists()
    with pytest.raises(PipelineError, match="no example images to draw maps on"):  # the gallery shows none
        overlays.example_overlays(dense["fc"], read_examples(dense["fc"]), "", 0, 16, 0, CPU)


class Pooled(torch.nn.Module):
    """features, then a head: one Linear over its pooled channels, or two (a hidden layer between)."""

    def __init__(self, hidden: int = 0):
        super().__init__()
        self.features = torch.nn.Conv2d(3, 4, 3)
        self.classifier = torch.nn.Sequential(torch.nn.Linear(4, hidden), torch.nn.ReLU(), torch.nn.Linear(hidden, 3)) \
            if hidden else torch.nn.Linear(4, 3)

    def forward(self, x):
        return self.classifier(self.features(x).relu().mean((2, 3)))


def test_fc_maps_only_where_the_head_weighs_the_blocks_channels():
    x = torch.zeros(1, 3, 8, 8)
    assert overlays.layer_kind(Pooled(), "fc", x) == ("features", "fc")
    with pytest.raises(PipelineError, match="the head reads 6 values, not the 4 channels of `features`"):
        overlays.layer_kind(Pooled(hidden=6), "penultimate", x)


def test_maps_of_another_target_than_step_2s_are_refused(dense):
    """Stored activations doubled stand for a checkpoint that changed since step 2: the maps no longer
    average to them, and nothing is cached."""
    ex = read_examples(dense["penultimate"])
    for n in ex["neurons"]:
        for e in n["examples"]:
            e["activation"] *= 2
    ex["activations_key"] = "another"
    path = overlays_path(dense["penultimate"])
    before = path.read_bytes() if path.exists() else None
    with pytest.raises(PipelineError, match="do not average to the activations"):
        overlays.example_overlays(dense["penultimate"], ex, "", 2, 16, 0, CPU)
    assert (path.read_bytes() if path.exists() else None) == before


def test_the_cache_is_reused_and_renewed(dense, monkeypatch, capsys):
    """Reused for the same examples and step-2 key (the model is not run); renewed for other example
    sets (another limit) or another step-2 key."""
    path, ex = dense["fc"], read_examples(dense["fc"])
    first = overlays.example_overlays(path, ex, "", 2, 16, 0, CPU)
    real = overlays.example_maps
    calls = []
    monkeypatch.setattr(overlays, "example_maps", lambda *a, **k: calls.append(1) or real(*a, **k))
    again = overlays.example_overlays(path, ex, "", 2, 16, 0, CPU)
    assert calls == [] and "reusing" in capsys.readouterr().out and torch.equal(again["maps"], first["maps"])
    more = overlays.example_overlays(path, ex, "", 4, 16, 0, CPU)
    assert calls == [1] and sum(more["counts"]) > sum(first["counts"])
    overlays.example_overlays(path, {**ex, "activations_key": "another step 2"}, "", 4, 16, 0, CPU)
    assert calls == [1, 1]


@pytest.fixture(scope="module")
def vit(probe_set, tmp_path_factory):
    root = tmp_path_factory.mktemp("overlays_vit")
    torch.manual_seed(0)
    net = timm.create_model("test_vit", num_classes=3).eval()
    torch.save(net.state_dict(), root / "vit.pth")
    (root / "classes.txt").write_text("a\nb\nc\n")
    out = root / "res"
    ok(run_script("example_selection.py", "--data_root", str(probe_set), "--labels", "none", "--model", "timm:test_vit",
                  "--checkpoint", str(root / "vit.pth"), "--classes", str(root / "classes.txt"), "--num_workers", "0",
                  "--layer", "fc,blocks.1", "--max_images", "16", "--save_root", str(out)))
    return net, {layer: next(out.glob(f"*/timm-test_vit/{layer}/adaptive93/examples.json")) for layer in ("fc", "blocks.1")}


def test_transformer_tokens_on_their_patch_grid(vit):
    """blocks.1's [B, 101, D]: the class token dropped, patch t at row t // 10, column t % 10."""
    net, where = vit
    c = json.loads(where["blocks.1"].read_text())["config"]

    memo = {}

    def grid(k, path):
        if path not in memo:
            memo[path] = hooked(net, net.blocks[1], model_input(path, c)[None])[0]
        tokens = memo[path]
        return np.array([[tokens[1 + r * 10 + col, k] for col in range(10)] for r in range(10)])

    neurons, counts, want = by_hand(where["blocks.1"], 2, grid)
    got = overlays.example_overlays(where["blocks.1"], read_examples(where["blocks.1"]), "", 2, 8, 0, CPU)
    assert got["kind"] == "tokens" and got["neurons"] == neurons and got["counts"] == counts
    np.testing.assert_allclose(got["maps"].double().numpy(), want, rtol=1e-4, atol=1e-4)
    with pytest.raises(PipelineError, match="neither"):  # its fc has no last spatial block to weigh
        overlays.example_overlays(where["fc"], read_examples(where["fc"]), "", 2, 8, 0, CPU)


# ---- in the gallery -----------------------------------------------------------------------------
def hand_run(ex_json: Path) -> Path:
    """A stage-3 result in step 3's format without its scores (no VLM needed): each live neuron named 'spot',
    its examples step 2's, as MAMMI's are."""
    ex = json.loads(ex_json.read_text())
    path = ex_json.parent / "hand" / "concepts.json"
    path.parent.mkdir()
    path.write_text(json.dumps({"examples_key": ex["key"],
                                "config": {"layer": ex["config"]["layer"], "examples": str(ex_json)},
                                "neurons": [{"neuron": n["neuron"], "n_examples": len(n["examples"]), "concepts":
                                             [{"concept": "spot", "score": 1.0}] if n["examples"] else []}
                                            for n in ex["neurons"]]}))
    return path


@pytest.fixture(scope="module")
def gallery(dense):
    runs = [hand_run(dense[layer]) for layer in ("fc", "classifier")]
    root = dense["fc"].parents[4]
    log = ok(run_script("gallery.py", "--runs", ",".join(map(str, runs)), "--save_root", str(root),
                        "--num_workers", "0", "--max_examples", "5"))
    return root / "gallery" / "index.html", log


def test_the_page_embeds_each_runs_maps_in_8_bits(gallery, dense):
    index, log = gallery
    data = page_data(index)[2]
    fc, head = data["runs"]
    assert "maps" not in head and "no spatial extent" in head["maps_note"] and "no spatial extent" in log
    g = data["maps"][fc["maps"]]
    stored = torch.load(overlays_path(dense["fc"]), weights_only=True)
    assert (g["h"], g["w"]) == (2, 2) and g["kind"] == overlays.KINDS["fc"]
    at = 0
    for k, count in zip(stored["neurons"], stored["counts"]):
        lo, hi, b64 = g["m"][str(k)]
        q = np.frombuffer(__import__("base64").b64decode(b64), dtype=np.uint8).reshape(count, 2, 2)
        mine = stored["maps"][at:at + count].double().numpy()
        at += count
        assert lo == pytest.approx(mine.min(), rel=1e-3) and hi == pytest.approx(mine.max(), rel=1e-3)
        np.testing.assert_allclose(lo + q / 255 * (hi - lo), mine, atol=(hi - lo) / 255 / 2 + 1e-3 * abs(hi))


def test_browser_draws_the_maps_over_the_examples_and_hides_them(browser, gallery):  # noqa: F811
    """The fc view: a canvas over each thumbnail whose opacity is the map upsampled bilinearly (as torch's
    interpolate) to 160 px; the toggle hides and shows them; the head module's view says why it has none."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait
    index = gallery[0]
    data = page_data(index)[2]
    n = next(x for x in data["neurons"] if x["r"] == 0 and x["x"])
    drv = browser
    drv.get(index.resolve().as_uri() + f"#n0-{n['n']}")
    WebDriverWait(drv, 10).until(lambda d: d.find_element(By.ID, "view").is_displayed())
    canvases = drv.find_elements(By.CSS_SELECTOR, "#panel .thumbs canvas.map")
    assert len(canvases) == len(n["x"]) == len(drv.find_elements(By.CSS_SELECTOR, "#panel .thumbs img"))
    g = data["maps"][data["runs"][0]["maps"]]
    q = np.frombuffer(__import__("base64").b64decode(g["m"][str(n["n"])][2]), dtype=np.uint8).reshape(-1, 2, 2)
    for r in range(len(n["x"])):
        alpha = np.array(drv.execute_script(
            "const c = document.querySelectorAll('#panel canvas.map')[arguments[0]];"
            "return Array.from(c.getContext('2d').getImageData(0, 0, 160, 160).data.filter((v, i) => i % 4 === 3))", r))
        want = F.interpolate(torch.from_numpy(q[r] / 255.0)[None, None], size=(160, 160), mode="bilinear",
                             align_corners=False)[0, 0].numpy() * 0.6 * 255
        assert np.abs(alpha.reshape(160, 160) - want).max() <= 1.01
    box = drv.find_element(By.ID, "maps")
    assert canvases[0].is_displayed() and "class activation map" in drv.find_element(By.CSS_SELECTOR, ".maptoggle").text
    box.click()
    assert not any(c.is_displayed() for c in canvases)
    box.click()
    assert all(c.is_displayed() for c in canvases)
    m = next(x for x in data["neurons"] if x["r"] == 1 and x["x"])
    drv.get(index.resolve().as_uri() + f"#n1-{m['n']}")
    WebDriverWait(drv, 10).until(lambda d: d.find_element(By.ID, "view").is_displayed())
    assert "no spatial extent" in drv.find_element(By.ID, "mapnote").text
    assert not drv.find_elements(By.CSS_SELECTOR, "#panel canvas.map")
    no_errors(drv)
