"""Checkpoint formats, the loud failure on a wrong checkpoint, and what each layer reads."""
import pytest
import torch
import torch.nn.functional as F

from pipeline.cli import PipelineError
from models.layers import tap
from models.target import Spec, build_target, load_target, parse_model


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
