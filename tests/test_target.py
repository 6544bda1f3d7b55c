"""models/target.py: checkpoint formats, the loud failure on a wrong checkpoint, and what each layer reads. What
weights a target runs: a checkpoint (of any family) holding NaN or infinity is refused when loaded, a forward pass
that turns finite weights into NaN names the module where it starts, `--checkpoint random` is the library's own
initialisation (seeded, marked untrained in the outputs) and `--checkpoint pretrained` the library's own weights
file in its local cache, never downloaded; the keys tell them apart."""
import hashlib
import json

import pytest
import timm
import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision
import torchxrayvision as xrv
from safetensors.torch import save_file

from conftest import refused, unlabeled_stage2
from models.layers import first_nonfinite, tap
from models.target import Spec, build_target, checkpoint_of, load_target, parse_model, target_identity
from pipeline.cache import load_tensors
from pipeline.cli import PipelineError
from pipeline.outputs import activations_key

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: one intra-op thread


@pytest.fixture(scope="module")
def dense_sd():
    torch.manual_seed(1)
    return build_target("densenet121").state_dict()


def legacy(sd):
    """Old torchvision DenseNet names ('norm.1.weight' for 'norm1.weight')."""
    out = {}
    for k, v in sd.items():
        for part in ("norm1", "norm2", "conv1", "conv2", "relu1", "relu2"):
            k = k.replace(f".{part}.", f".{part[:-1]}.{part[-1]}.")
        out[k] = v
    return out


@pytest.mark.parametrize("fmt", ["model", "state_dict", "bare", "module", "moco", "legacy"])
def test_checkpoint_formats_load_exactly(tmp_path, dense_sd, fmt):
    sd = dict(dense_sd)
    if fmt == "module":
        sd = {f"module.{k}": v for k, v in sd.items()}
    if fmt == "moco":
        sd = {f"module.encoder_q.{k}": v for k, v in sd.items()}
    if fmt == "legacy":
        sd = legacy(sd)
        assert any(".norm.1." in k for k in sd)
    obj = {"model": sd, "epoch": 3} if fmt == "model" else {"state_dict": sd} if fmt == "state_dict" else sd
    torch.save(obj, tmp_path / "c.pth")
    model, head = load_target("densenet121", tmp_path / "c.pth", need_head=True)
    assert head
    for k, v in model.state_dict().items():
        assert torch.equal(v, dense_sd[k]), k


def test_wrong_architecture_fails_loudly(tmp_path, dense_sd):
    torch.save({"model": dense_sd}, tmp_path / "dense.pth")
    with pytest.raises(PipelineError, match=r"does not fit --model resnet50.*missing"):
        load_target("resnet50", tmp_path / "dense.pth", need_head=False)
    bad = dict(dense_sd)
    bad["features.conv0.weight"] = torch.zeros(32, 3, 7, 7)
    torch.save(bad, tmp_path / "misfit.pth")
    with pytest.raises(PipelineError, match="1 mis-shaped"):
        load_target("densenet121", tmp_path / "misfit.pth", need_head=False)
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(PipelineError, match="cannot read"):
        load_target("densenet121", tmp_path / "junk.pth", need_head=False)
    with pytest.raises(PipelineError, match="not found"):
        load_target("densenet121", tmp_path / "absent.pth", need_head=False)


def test_pretraining_checkpoint_without_head(tmp_path, dense_sd, capsys):
    moco = {f"module.encoder_q.{k}": v for k, v in dense_sd.items() if not k.startswith("classifier")}
    moco["module.encoder_q.classifier.0.weight"] = torch.zeros(128, 1024)  # an MLP projection head
    torch.save({"state_dict": moco}, tmp_path / "moco.pth")
    with pytest.raises(PipelineError, match="no 14-way classifier"):
        load_target("densenet121", tmp_path / "moco.pth", need_head=True)
    model, head = load_target("densenet121", tmp_path / "moco.pth", need_head=False)
    assert not head and "pretraining checkpoint" in capsys.readouterr().out
    assert torch.equal(model.features.conv0.weight, dense_sd["features.conv0.weight"])


def test_medical_mae_keeps_its_14_outputs_where_torchvision_takes_the_checkpoints(tmp_path, dense_sd, capsys):
    """The same DenseNet-121 weights with a 5-way head: as densenet121 (the medical_mae release) the
    model keeps NIH's 14 outputs and names the head as not fitting; as torchvision:densenet121 the
    checkpoint's head sets the outputs."""
    five = {**dense_sd, "classifier.weight": torch.randn(5, 1024), "classifier.bias": torch.randn(5)}
    torch.save(five, tmp_path / "five.pth")
    with pytest.raises(PipelineError, match=r"a 5-way classifier .* does not fit the model's 14 outputs"):
        load_target("densenet121", tmp_path / "five.pth", need_head=True)
    model, head = load_target("densenet121", tmp_path / "five.pth", need_head=False)
    assert not head and model.classifier.out_features == 14 and "5-way classifier" in capsys.readouterr().out
    assert torch.equal(model.features.conv0.weight, dense_sd["features.conv0.weight"])
    model, head = load_target("torchvision:densenet121", tmp_path / "five.pth", need_head=True)
    assert head and model.classifier.out_features == 5
    assert torch.equal(model.classifier.weight, five["classifier.weight"])


def test_timm_names_with_a_pretrained_tag_are_models_too():
    """timm.list_models() leaves out the tagged names (resnet18.a1_in1k) that timm.create_model takes."""
    assert parse_model("timm:resnet18.a1_in1k") == Spec("timm", "resnet18.a1_in1k")
    with pytest.raises(PipelineError, match="timm has no model 'resnet18x'"):
        parse_model("timm:resnet18x")


def test_layers_read_what_spec_says():
    torch.manual_seed(0)
    x = torch.randn(3, 3, 64, 64)
    dn = build_target("densenet121").eval()
    with torch.no_grad():
        with tap(dn, "penultimate") as s:
            logits = dn(x)
        want = F.relu(dn.features(x)).mean((2, 3))
        assert torch.allclose(s["a"], want, atol=1e-5)
        with tap(dn, "fc") as s:
            dn(x)
        assert torch.allclose(s["a"], logits)
        with tap(dn, "features.denseblock2") as s:
            dn(x)
        assert s["a"].shape == (3, 512)
        rn = build_target("resnet50").eval()
        with tap(rn, "layer2") as s:
            rn(x)
        stem = rn.maxpool(rn.relu(rn.bn1(rn.conv1(x))))
        assert torch.allclose(s["a"], rn.layer2(rn.layer1(stem)).mean((2, 3)), atol=1e-5)
        with tap(rn, "penultimate") as s:
            rn(x)
        assert s["a"].shape == (3, 2048)
    assert not dn.classifier._forward_pre_hooks and not rn.layer2._forward_hooks  # hooks removed
    with pytest.raises(PipelineError, match="not a module"):
        with tap(dn, "layer9"):
            pass


XRV = "xrv:densenet121-res224-all"
# The file names each library's own loader saves its weights under (from their download URLs).
TV_FILE = "mobilenet_v3_small-047dcff4.pth"
XRV_FILE = "nih-pc-chex-mimic_ch-google-openi-kaggle-densenet121-d121-tw-lr001-rot45-tr15-sc15-seed0-best.pt"
TIMM_REPO = "models--timm--test_vit.r160_in1k"


def floating(net: nn.Module) -> list[str]:
    return [k for k, v in net.state_dict().items() if v.dtype in (torch.float32, torch.float64, torch.float16)]


def broken(sd: dict) -> dict:
    """The state dict with one tensor NaN at one place and another +inf: two tensors non-finite."""
    names = [k for k, v in sd.items() if v.is_floating_point()]
    sd[names[0]].view(-1)[0] = float("nan")
    sd[names[-1]].view(-1)[-1] = float("inf")
    return sd


def nothing_written(out):
    assert not out.exists() or not [p for p in out.rglob("*") if p.is_file() and p.name != ".lock"]


# ---- non-finite weights and activations

def test_nan_weights_are_refused_in_every_family(images, tmp_path):
    torch.manual_seed(0)
    tv = torchvision.models.mobilenet_v3_small(num_classes=3)
    torch.save(broken(tv.state_dict()), tmp_path / "tv.pth")
    vit = timm.create_model("test_vit", num_classes=3)
    torch.save(broken(vit.state_dict()), tmp_path / "vit.pth")
    dense = xrv.models.DenseNet(weights=None)
    broken(dense.state_dict())  # in place: the tensors are the model's own
    torch.save(dense, tmp_path / "xrv.pt")  # a whole pickled model, as torchxrayvision ships
    mae = build_target("densenet121")
    torch.save({"model": broken(mae.state_dict())}, tmp_path / "mae.pth")
    (tmp_path / "nan.py").write_text("import torch.nn as nn\n\n\ndef build():\n    net = nn.Sequential(nn.Conv2d(3, 4, 3), "
                                     "nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3))\n"
                                     "    net[0].bias.data[1] = float('nan')\n    return net\n")
    cases = [("torchvision:mobilenet_v3_small", tmp_path / "tv.pth", len(floating(tv)), 2),
             ("timm:test_vit", tmp_path / "vit.pth", len(floating(vit)), 2),
             (XRV, tmp_path / "xrv.pt", len(floating(dense)), 2),
             ("densenet121", tmp_path / "mae.pth", len(floating(mae)), 2),
             (f"{tmp_path / 'nan.py'}:build", None, 4, 1)]
    for model, ckpt, total, bad in cases:
        out = tmp_path / "res"
        args = ["--checkpoint", str(ckpt)] if ckpt else []
        named = str(ckpt) if ckpt else f"--model {model}"
        for selection in ("adaptive", "topk"):
            line = refused(unlabeled_stage2(images, out, model, *args, "--layer", "fc", "--selection", selection, "--classes",
                           ""), named, f"{bad} of {total} weight tensors hold NaN or infinite values")
            assert line.startswith(f"error: {named}: "), line
        nothing_written(out)


NAN_FORWARD = '''import torch
import torch.nn as nn


class Log(nn.Module):
    def forward(self, x):
        return torch.log(x)


def build():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Conv2d(4, 4, 1), Log(), nn.AdaptiveAvgPool2d(1),
                         nn.Flatten(), nn.Linear(4, 3))
'''


def test_a_forward_pass_that_makes_nan_names_where(images, tmp_path):
    """Finite weights, NaN from log of negative numbers in module 3: the step says so and writes nothing."""
    (tmp_path / "nanfwd.py").write_text(NAN_FORWARD)
    model = f"{tmp_path / 'nanfwd.py'}:build"
    out = tmp_path / "res"
    for layer in ("fc", "1", "5"):  # the logits, a finite layer before the NaN, the pooled NaN
        refused(unlabeled_stage2(images, out, model, "--layer", layer), "the forward pass on images 1-3 of the probing set gives "
                "NaN or infinite values, first in the output of module '3', from finite inputs", "--mean")
    nothing_written(out)
    assert "try fp32" in refused(unlabeled_stage2(images, out, model, "--layer", "fc", "--precision", "bf16"), "module '3'")


def test_first_nonfinite_is_the_first_module_to_finish_with_nan():
    torch.manual_seed(0)
    inner = nn.Sequential(nn.Linear(4, 4), nn.Identity())
    net = nn.Sequential(nn.Linear(4, 4), inner, nn.Linear(4, 2))
    x = torch.randn(3, 4)
    assert first_nonfinite(net, x) is None
    with torch.no_grad():
        inner[0].weight[0, 0] = float("inf")
    # inner.0 finishes first with inf; inner, and the last Linear after it, hold it too
    assert first_nonfinite(net, x) == "1.0"


# ---- --checkpoint random

def same(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_random_is_the_library_initialisation_seeded(capsys):
    """The same weights as the library's own constructor after torch.manual_seed(0), every time, and the
    caller's random stream left as it was."""
    torch.manual_seed(0)
    want = {"torchvision:mobilenet_v3_small": torchvision.models.mobilenet_v3_small(num_classes=3)}
    torch.manual_seed(0)
    want["timm:test_vit"] = timm.create_model("test_vit", num_classes=3)
    torch.manual_seed(0)
    want[XRV] = xrv.models.DenseNet(weights=None, num_classes=18, **xrv.models.get_densenet_params("densenet121-res224-all"))
    torch.manual_seed(0)
    want["densenet121"] = torchvision.models.densenet121(num_classes=14)
    for model, net in want.items():
        torch.manual_seed(123)
        got, head = load_target(model, "random", need_head=True, n_classes=18 if model == XRV else 3)
        after = torch.rand(3)
        torch.manual_seed(123)
        assert torch.equal(after, torch.rand(3)), model
        assert head and same(got, net), model
        assert capsys.readouterr().out.startswith(f"warning: --checkpoint random: {model} is untrained"), model


def test_random_through_step_2_is_marked_untrained(images, tmp_path):
    out = tmp_path / "res"
    model = "torchvision:mobilenet_v3_small"
    proc = unlabeled_stage2(images, out, model, "--checkpoint", "random", "--layer", "fc,features.8", "--classes", "")
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "warning: --checkpoint random" in proc.stdout
    (fc,) = (out / "mine_all").glob("*/fc")
    stored = load_tensors(fc / "activations.pt")
    assert stored["config"]["untrained"] is True and stored["config"]["checkpoint"] == "random"
    assert stored["activations"].shape == (6, 1000)
    examples = json.loads((fc / "adaptive93" / "examples.json").read_text())
    assert examples["config"]["untrained"] is True
    # the same run with a checkpoint file: trained, and its own key
    torch.manual_seed(0)
    torch.save(torchvision.models.mobilenet_v3_small().state_dict(), tmp_path / "same.pth")
    proc = unlabeled_stage2(images, out, model, "--checkpoint", str(tmp_path / "same.pth"), "--layer", "fc", "--classes", "")
    assert proc.returncode == 0 and "reusing" not in proc.stdout, proc.stdout[-2000:] + proc.stderr[-2000:]
    trained = load_tensors(fc / "activations.pt")
    assert trained["config"]["untrained"] is False and trained["key"] != stored["key"]
    # random and a file holding the same weights give the same activations
    assert torch.equal(trained["activations"], stored["activations"])


@pytest.mark.parametrize("model,args", [("torchvision:mobilenet_v3_small", []), ("timm:test_vit", []),
                                        (XRV, ["--resize", "32", "--crop", "32"])])
def test_layer_list_with_random_weights(images, tmp_path, model, args):
    out = tmp_path / "res"
    proc = unlabeled_stage2(images, out, model, "--checkpoint", "random", "--layer", "list", "--classes", "", *args)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    rows = {line.split()[0] for line in proc.stdout.splitlines() if line.strip()}
    assert {"fc", "penultimate"} <= rows
    nothing_written(out)


def test_layer_list_counts_the_outputs_apart_from_the_head_module_fc(images, tmp_path):
    """timm's ResNet-18 names its head module fc, which runs once per pass, as do the model's outputs (row
    fc): neither row says it ran twice, and no module of this model runs twice."""
    proc = unlabeled_stage2(images, tmp_path / "res", "timm:resnet18", "--checkpoint", "random", "--layer", "list",
                            "--classes", "")
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    fc = [line.split() for line in proc.stdout.splitlines() if line.startswith("fc ")]
    assert fc == [["fc", "[2,", "1000]", "1000"]] * 2, proc.stdout
    assert "calls" not in proc.stdout


def test_random_and_pretrained_are_refused_for_a_models_own_file(images, tmp_path):
    (tmp_path / "own.py").write_text("import torch.nn as nn\n\n\ndef build():\n    return nn.Linear(3, 3)\n")
    for word in ("random", "pretrained"):
        refused(unlabeled_stage2(images, tmp_path / "res", f"{tmp_path / 'own.py'}:build", "--checkpoint", word),
                f"--checkpoint {word}:", "builds or holds its own weights")


# ---- --checkpoint pretrained, from the libraries' local caches

@pytest.fixture
def caches(tmp_path, monkeypatch):
    """Empty caches of torch hub, Hugging Face and torchxrayvision under tmp_path."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    return tmp_path


def test_pretrained_reads_each_librarys_cached_file(images, caches):
    torch.manual_seed(1)
    tv = torchvision.models.mobilenet_v3_small()
    tv_file = caches / "torch" / "hub" / "checkpoints" / TV_FILE
    tv_file.parent.mkdir(parents=True)
    torch.save(tv.state_dict(), tv_file)
    vit = timm.create_model("test_vit")
    snapshot = caches / "hf" / "hub" / TIMM_REPO / "snapshots" / "0123abcd"
    snapshot.mkdir(parents=True)
    (caches / "hf" / "hub" / TIMM_REPO / "refs").mkdir()
    (caches / "hf" / "hub" / TIMM_REPO / "refs" / "main").write_text("0123abcd")
    save_file({k: v.contiguous() for k, v in vit.state_dict().items()}, snapshot / "model.safetensors")
    dense = xrv.models.DenseNet(weights=None)
    xrv_file = caches / "home" / ".torchxrayvision" / "models_data" / XRV_FILE
    xrv_file.parent.mkdir(parents=True)
    torch.save(dense, xrv_file)
    proc = unlabeled_stage2(images, caches / "res", "torchvision:mobilenet_v3_small", "--checkpoint", "pretrained", "--layer", "list")
    assert proc.returncode == 0 and "features.8" in proc.stdout, proc.stdout[-2000:] + proc.stderr[-2000:]
    for model, file, net in (("torchvision:mobilenet_v3_small", tv_file, tv),
                             ("timm:test_vit", snapshot / "model.safetensors", vit), (XRV, xrv_file, dense)):
        assert checkpoint_of(model, "pretrained") == file, model
        got, head = load_target(model, "pretrained", need_head=True)
        assert head and same(got, net), model
        sha = hashlib.sha256(file.read_bytes()).hexdigest()
        assert target_identity(model, checkpoint_of(model, "pretrained"))["checkpoint"] == sha
        keys = {activations_key({"model": model}, checkpoint_of(model, word), "data") for word in ("pretrained", "random")}
        assert len(keys) == 2, model
        before = activations_key({"model": model}, file, "data")
        file.write_bytes(file.read_bytes() + b"\0")  # other bytes in the same cache file: another key
        assert activations_key({"model": model}, file, "data") != before, model
    assert target_identity("timm:test_vit", "random")["checkpoint"] == "random:0"


def test_pretrained_missing_names_its_url_and_downloads_nothing(images, caches):
    out = caches / "res"
    refused(unlabeled_stage2(images, out, "torchvision:mobilenet_v3_small", "--checkpoint", "pretrained", "--layer", "list"),
            str(caches / "torch" / "hub" / "checkpoints" / TV_FILE),
            f"https://download.pytorch.org/models/{TV_FILE}", "nothing is downloaded")
    refused(unlabeled_stage2(images, out, "timm:test_vit", "--checkpoint", "pretrained", "--layer", "list"),
            str(caches / "hf" / "hub"), "https://huggingface.co/timm/test_vit.r160_in1k/resolve/main/model.safetensors",
            "nothing is downloaded")
    refused(unlabeled_stage2(images, out, XRV, "--checkpoint", "pretrained", "--layer", "list"),
            str(caches / "home" / ".torchxrayvision" / "models_data" / XRV_FILE), "https://github.com/mlmed")
    assert not (caches / "torch" / "hub" / "checkpoints").exists() and not (caches / "hf" / "hub").exists()
    nothing_written(out)
