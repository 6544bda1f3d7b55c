"""End to end from the command line: stages 2 and 3 on a generated probing set, caches included."""
import json

import torch

from conftest import ok, stage2, stage3
from pipeline.cache import load_tensors


def test_densenet_end_to_end_with_caches(probe_set, densenet_ckpt, tiny_clip, tmp_path):
    out = tmp_path / "res"
    log = ok(stage2(probe_set, densenet_ckpt, out, "--save_crops", "yes"))
    layer = out / "nih14_train" / "densenet121" / "fc"
    acts = load_tensors(layer / "activations.pt")
    assert acts["activations"].shape == (64, 14) and acts["logits"].shape == (64, 14)
    assert torch.equal(acts["activations"], acts["logits"])  # fc activations are the logits
    ex = json.loads((layer / "adaptive93" / "examples.json").read_text())
    assert ex["config"]["adaptive_percent"] == 93.0 and len(ex["neurons"]) == 14
    for n in ex["neurons"]:
        a = [e["activation"] for e in n["examples"]]
        assert a == sorted(a, reverse=True) and all(v > n["threshold"] for v in a)
    csv_rows = (layer / "adaptive93" / "examples.csv").read_text().splitlines()
    assert len(csv_rows) == 1 + sum(len(n["examples"]) for n in ex["neurons"])
    assert "prob_Nodule" in csv_rows[0] and "findings" in csv_rows[0]
    crops = list((layer / "adaptive93" / "crops").rglob("*.jpg"))
    assert len(crops) == len(csv_rows) - 1
    assert "outputs:" in log and str(layer / "activations.pt") in log

    log = ok(stage3(out, tiny_clip))
    match = layer / "adaptive93" / "vlm_openclip-tiny-clip-random" / "mimic_nouns_base_adaptive_a95"
    for f in ("similarity.pt", "concepts.json", "metrics.json"):
        assert (match / f).is_file()
    img = load_tensors(out / "nih14_train" / "vlm_openclip-tiny-clip-random" / "image_features.pt")
    ids = {e["image_id"] for n in ex["neurons"] for e in n["examples"]}
    # every probing image once: the 64 are the significance test's pool, the example images among them
    assert len(img["image_ids"]) == len(set(img["image_ids"])) == 64 and ids <= set(img["image_ids"])
    assert img["features"].shape == (64, 32)
    text = load_tensors(out / "vlm_openclip-tiny-clip-random" / "text_mimic_nouns_base.pt")
    assert text["features"].shape == (1361, 32) and text["template"].shape == (32,)
    assert load_tensors(match / "similarity.pt")["similarity"].shape == (14, 1361)
    concepts = json.loads((match / "concepts.json").read_text())
    assert [n["neuron"] for n in concepts["neurons"]] == list(range(14))
    metrics = json.loads((match / "metrics.json").read_text())
    assert set(metrics) >= {"hit_rate", "precision", "recall", "f1", "cosine"}
    assert "error" in metrics["cosine"]["medclip"] and "mean" in metrics["cosine"]["all-minilm-l6-v2"]
    assert "hit rate" in log

    # Second run: everything reused.
    log2 = ok(stage2(probe_set, densenet_ckpt, out))
    assert "reusing" in log2 and log2.count("reusing") == 2
    log3 = ok(stage3(out, tiny_clip))
    assert "reusing" in log3 and "(0 new)" in log3
    assert json.loads((match / "concepts.json").read_text()) == concepts

    # A changed constant recomputes the selection, not the forward pass.
    log4 = ok(stage2(probe_set, densenet_ckpt, out, "--adaptive_percent", "80"))
    assert f"reusing {layer / 'activations.pt'}" in log4 and "examples.json" not in log4.split("outputs:")[0]
    ex80 = json.loads((layer / "adaptive80" / "examples.json").read_text())
    assert sum(len(n["examples"]) for n in ex80["neurons"]) > sum(len(n["examples"]) for n in ex["neurons"])
    log5 = ok(stage3(out, tiny_clip, "--adaptive_percent", "80", "--alpha", "90"))
    assert "new)" in log5


def test_resnet_layers_and_topk(probe_set, resnet_ckpt, tiny_clip, tmp_path):
    out = tmp_path / "res"
    ok(stage2(probe_set, resnet_ckpt, out, "--layer", "layer3", "--selection", "topk", "--topk", "5", model="resnet50"))
    acts = load_tensors(out / "nih14_train" / "resnet50" / "layer3" / "activations.pt")
    assert acts["activations"].shape == (64, 1024)
    ex = json.loads((out / "nih14_train" / "resnet50" / "layer3" / "top5" / "examples.json").read_text())
    assert all(len(n["examples"]) == 5 for n in ex["neurons"] if not n["dead"])
    ok(stage2(probe_set, resnet_ckpt, out, "--layer", "penultimate", model="resnet50"))
    pen = load_tensors(out / "nih14_train" / "resnet50" / "penultimate" / "activations.pt")
    assert pen["activations"].shape == (64, 2048)
    log = ok(stage3(out, tiny_clip, "--layer", "penultimate", "--template_ver", "no", "--adaptive", "no",
                    model="resnet50"))
    assert "metrics.json" not in log  # only the fc layer has a ground truth
    c = json.loads((out / "nih14_train" / "resnet50" / "penultimate" / "adaptive93" / "vlm_openclip-tiny-clip-random"
                    / "mimic_nouns_no_plain_a95" / "concepts.json").read_text())
    assert len(c["neurons"]) == 2048


def test_dead_neuron_is_reported_not_fatal(probe_set, tmp_path, tiny_clip):
    from conftest import save_random_target
    ckpt = save_random_target(tmp_path / "d.pth", "densenet121")
    obj = torch.load(ckpt, weights_only=True)
    obj["model"]["classifier.weight"][3] = 0.0  # logit 3 = its bias on every image
    torch.save(obj, ckpt)
    out = tmp_path / "res"
    log = ok(stage2(probe_set, ckpt, out))
    assert "1 dead neuron(s)" in log and "[3]" in log
    ok(stage3(out, tiny_clip, "--metric_encoders", "all-minilm-l6-v2"))
    c = json.loads(next(out.rglob("concepts.json")).read_text())
    assert c["neurons"][3]["status"] == "dead" and c["neurons"][3]["concepts"] == []
    assert all(n["status"] == "ok" for i, n in enumerate(c["neurons"]) if i != 3)
