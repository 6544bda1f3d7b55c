"""The rival describers (describers.py, compare_describers.py): each formula against a plain loop or
scikit-learn, dissection on hand-made maps and boxes, and end to end: every describer's concepts.json
read by the same readers as MAMMI's, and no image or prompt embedded twice."""
import json
import math

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from conftest import REPO, compare, ok, run_script, stage2, stage3
from dataset.nih import class_names
from mammi.describers import label_auc, lift_findings, name_neurons, same_name, soft_wpmi, topk_mean, truth_agreement
from mammi.dissection import dissection_counts, iou, top_quantile
from pipeline.cli import constants_of

WPMI = constants_of("compare_describers.py")


def plain_soft_wpmi(cos, acts, top_k, a, lam, p_start, p_end):
    """CLIP-Dissect's soft-WPMI as docs/describers.md states it, literally, with loops over neurons, images and concepts."""
    N, C = len(cos), len(cos[0])
    K = len(acts[0])
    P = []
    for row in cos:
        e = [math.exp(a * v) for v in row]
        P.append([v / sum(e) for v in e])
    m = min(top_k, N)
    log_pck = []
    for k in range(K):
        top = sorted(range(N), key=lambda i: (-acts[i][k], i))[:m]
        log_pck.append([sum(math.log(1 + (p_start - (i / m) * (p_start - p_end)) * (P[img][c] - 1) + 1e-7)
                            for i, img in enumerate(top)) for c in range(C)])
    log_pc = [math.log(sum(math.exp(log_pck[k][c]) for k in range(K))) - math.log(K) for c in range(C)]
    return [[log_pck[k][c] - lam * log_pc[c] for c in range(C)] for k in range(K)]


@pytest.mark.parametrize("seed,top_k", [(0, 5), (1, 12), (2, 100)])
def test_soft_wpmi_matches_spec_loop(seed, top_k):
    g = torch.Generator().manual_seed(seed)
    N, K, C = 30, 5, 7
    cos = torch.rand(N, C, generator=g) * 2 - 1
    acts = torch.randn(N, K, generator=g)
    acts[:4, 1] = 3.0  # ties at the top: probe order decides
    args = (WPMI["top_k"] if top_k == 100 else top_k, WPMI["wpmi_a"], WPMI["wpmi_lambda"], WPMI["wpmi_p_start"],
            WPMI["wpmi_p_end"])
    got = soft_wpmi(cos, acts, *args)
    want = torch.tensor(plain_soft_wpmi(cos.double().tolist(), acts.double().tolist(), *args), dtype=torch.float64)
    assert got.shape == (K, C)
    assert torch.allclose(got, want, rtol=1e-10, atol=1e-10)


def test_published_defaults():
    assert (WPMI["top_k"], WPMI["wpmi_a"], WPMI["wpmi_lambda"], WPMI["wpmi_p_start"], WPMI["wpmi_p_end"]) == \
        (100, 10.0, 1.0, 0.998, 0.97)
    assert WPMI["dissection_quantile"] == 0.995


def test_topk_mean_matches_loop():
    g = torch.Generator().manual_seed(3)
    cos, acts = torch.rand(20, 6, generator=g), torch.randn(20, 4, generator=g)
    got = topk_mean(cos, acts, 5)
    for k in range(4):
        top = sorted(range(20), key=lambda i: (-float(acts[i, k]), i))[:5]
        for c in range(6):
            assert abs(float(got[k, c]) - sum(float(cos[i, c]) for i in top) / 5) < 1e-12


def test_label_auc_matches_sklearn():
    rng = np.random.default_rng(0)
    acts = torch.from_numpy(np.round(rng.normal(size=(80, 6)), 1))  # rounded: many ties
    labels = rng.integers(0, 2, size=(80, 4))
    labels[:, 3] = 0  # a class without positives has no AUROC
    got = label_auc(acts, labels)
    assert got.shape == (6, 4) and torch.isnan(got[:, 3]).all()
    for k in range(6):
        for c in range(3):
            assert abs(float(got[k, c]) - roc_auc_score(labels[:, c], acts[:, k].numpy())) < 1e-12


def test_top_quantile_is_numpys():
    x = torch.randn(3, 1000, generator=torch.Generator().manual_seed(1))
    assert torch.allclose(top_quantile(x, 0.995), torch.from_numpy(np.quantile(x.double().numpy(), 0.995, axis=1)))


def test_dissection_iou_on_hand_made_maps_and_boxes():
    from mammi.dissection import finding_masks
    # A 2x2 map [[1, 0], [0, 0]] upsampled bilinearly to 4x4 is the outer product of [1, .75, .25, 0] with
    # itself; at T = 0.5 its top-left 2x2 block is on (1, .75, .75, .5625).
    maps = torch.tensor([[[[1.0, 0.0], [0.0, 0.0]]]])  # [B=1, K=1, 2, 2]
    anns = [{"label": "Mass", "box": [0, 0, 2, 2], "polygon": None},       # exactly the block
            {"label": "Nodule", "box": [0, 0, 2, 4], "polygon": None},     # the left half: 4 of 8 pixels
            {"label": "Effusion", "box": [2, 2, 4, 4], "polygon": None}]   # disjoint
    findings = ["mass", "nodule", "effusion", "edema"]
    masks = finding_masks(anns, findings, 4)[None]
    assert masks[0].flatten(1).sum(1).tolist() == [4, 8, 4, 0]
    inter, area, mask_area = dissection_counts(maps, torch.tensor([0.5]), masks)
    assert area.tolist() == [4.0] and inter.tolist() == [[4.0, 4.0, 0.0, 0.0]] and mask_area.tolist() == [4, 8, 4, 0]
    got = iou(inter, area, mask_area)
    assert got.tolist() == [[1.0, 0.5, 0.0, 0.0]]
    # Summed over images: a second image where the neuron fires everywhere and only edema is boxed.
    maps2 = torch.cat([maps, torch.ones(1, 1, 2, 2)])
    masks2 = torch.cat([masks, finding_masks([{"label": "Edema", "box": [0, 0, 4, 4], "polygon": None}], findings, 4)[None]])
    got = iou(*dissection_counts(maps2, torch.tensor([0.5]), masks2))
    assert got.tolist() == [[4 / 20, 4 / 24, 0.0, 16 / 20]]
    # A polygon is filled: the triangle (0,0) (4,0) (0,4) covers the pixels on and above the anti-diagonal.
    tri = finding_masks([{"label": "Mass", "box": [0, 0, 4, 4], "polygon": [[0, 0], [4, 0], [0, 4]]}], findings, 4)
    assert tri[0].sum() >= 6 and not tri[0, 3, 3]


def test_maps_average_to_the_cached_activations():
    """The dissection pass's maps are the maps of step 2's activations: their spatial mean is the logit (fc),
    the pooled feature (penultimate) or the module's channel mean."""
    from mammi.maps import layer_maps, module_maps
    from models.layers import map_source, tap
    from models.target import build_target
    torch.manual_seed(0)
    net = build_target("densenet121").eval()
    x = torch.randn(2, 3, 64, 64)
    for layer in ("fc", "penultimate", "features.denseblock3"):
        with torch.inference_mode(), tap(net, layer) as store:
            net(x)
        maps = layer_maps(net, layer, module_maps(net, map_source(net, layer), x))
        assert maps.dim() == 4 and torch.allclose(maps.mean((2, 3)), store["a"], atol=1e-5)


def test_naming_truth_and_agreement_rules():
    S = torch.tensor([[0.1, 0.9, 0.9], [float("nan")] * 3, [0.0, 0.0, 0.0], [0.2, 0.1, 0.3]], dtype=torch.float64)
    recs = name_neurons(S, ["a", "b", "c"], [False, False, False, True], 7, top_n=2, floor=0.0)
    assert [r["status"] for r in recs] == ["ok", "none", "none", "dead"]
    assert recs[0]["concepts"] == [{"concept": "b", "score": 0.9}] and [t["concept"] for t in recs[0]["top"]] == ["b", "c"]
    assert recs[3]["concepts"] == [] and recs[0]["n_examples"] == 7
    labels = np.array([[1, 0], [1, 0], [0, 1], [0, 0]])
    assert lift_findings(labels, [[0, 1], [2], [3], []], 2.0) == [0, 1, None, None]
    # -1: no ground truth. Finding 1's base rate is 2/3 (rows 1, 2, 4); rows [2, 3] have it known only in row 2.
    labels = np.array([[1, -1], [1, 0], [0, 1], [0, -1], [0, 1]])
    assert lift_findings(labels, [[0, 1], [2, 3], [3], [2, 4]], 1.4) == [0, 1, None, 1]
    assert lift_findings(labels, [[0, 1], [2, 3], [3], [2, 4]], 2.0) == [0, None, None, None]
    t = truth_agreement([["mass"], ["pleural", "thickening"], ["x", "mass"], []], ["mass", "pleural thickening", "mass", None])
    assert t["any"]["n"] == 3 and t["any"]["mean"] == 1.0 and abs(t["top1"]["mean"] - 1 / 3) < 1e-12
    assert same_name([["a"], ["b"], []], [["a", "z"], ["c"], ["d"]])["mean"] == 0.5


# ---- end to end ------------------------------------------------------------------------------------

def write_boxes(probe_set, n_boxed=24):
    """A bbox.csv for the first images of the generated probing set: one Mass box each (1024-px frame)."""
    rows = ["image_name,label,bbox_x,bbox_y,bbox_w,bbox_h"]
    for i in range(n_boxed):
        rows.append(f"{i:08d}_000.png,Mass,{100 + 10 * i},{200},{300},{250}")
    path = probe_set.parent / "bbox.csv"
    path.write_text("\n".join(rows) + "\n")
    return path


def contract(path):
    """What every reader of a concepts.json relies on (gallery, visualization, the fc metrics)."""
    data = json.loads(path.read_text())
    cfg = data["config"]
    assert isinstance(data["key"], str) and cfg["layer"] and json.loads(open(cfg["examples"]).read())["neurons"]
    for k, n in enumerate(data["neurons"]):
        assert n["neuron"] == k and isinstance(n["n_examples"], int) and n["status"] in ("ok", "none", "dead")
        assert all(isinstance(c["concept"], str) and isinstance(c["score"], float) for c in n["concepts"])
        assert (n["status"] == "ok") == bool(n["concepts"])
    return data


@pytest.fixture()
def counted(monkeypatch):
    """How many images and prompts the VLM embeds, whatever calls it."""
    from models import vlm
    seen = {"images": 0, "texts": 0}
    pixels, texts = vlm.VLM.encode_pixels, vlm.VLM.encode_texts

    def count_pixels(self, x):
        seen["images"] += len(x)
        return pixels(self, x)

    def count_texts(self, t, batch_size=256):
        seen["texts"] += len(t)
        return texts(self, t, batch_size)

    monkeypatch.setattr(vlm.VLM, "encode_pixels", count_pixels)
    monkeypatch.setattr(vlm.VLM, "encode_texts", count_texts)
    return seen


def test_every_describer_end_to_end_embeds_nothing_twice(probe_set, densenet_ckpt, tiny_clip, tmp_path, counted):
    out = tmp_path / "res"
    boxes = write_boxes(probe_set)
    ok(stage2(probe_set, densenet_ckpt, out))
    ok(stage3(out, tiny_clip, "--metric_encoders", "all-minilm-l6-v2"))
    run = next(out.rglob("concepts.json"))
    ex = json.loads((run.parent.parent.parent / "examples.json").read_text())
    n_examples = len({e["image_id"] for n in ex["neurons"] for e in n["examples"]})
    # the 64 probing images (the significance test's pool, the examples among them) and the 1,361 prompts + template
    assert n_examples < 64 and counted["images"] == 64 and counted["texts"] == 1362

    log = ok(compare(out, tiny_clip, "--box_file", str(boxes)))
    # Nothing more: step 3's caches already hold every probing image and every prompt.
    assert counted["images"] == 64 and counted["texts"] == 1362, log[-3000:]
    root = run.parent / "describers"
    table = json.loads((root / "describers.json").read_text())
    assert list(table["rows"]) == ["mammi", "clip_dissect", "topk_mean", "label_auc", "dissection"]
    mammi_metrics = json.loads((run.parent / "metrics.json").read_text())
    assert table["rows"]["mammi"]["fc"]["hit_rate"] == mammi_metrics["hit_rate"]  # one scorer for all
    for name, row in table["rows"].items():
        assert set(row["fc"]) >= {"hit_rate", "precision", "f1", "cosine"} and "se" in row["fc"]["f1"]
        assert {"any", "top1"} == set(row.get("truth", {"any", "top1"})) and row["neurons"] == 14
    assert table["truth"]["kind"] == "label_auc" and table["truth"]["n"] == 14
    # label_auc's names are the truth: its row is not scored against it (it would be 1 by construction)
    assert table["truth"]["own"] == "label_auc" and "truth" not in table["rows"]["label_auc"]
    assert table["pairwise"]["clip_dissect"]["clip_dissect"]["mean"] == 1.0
    for f in ("describers.csv", "agreement.csv", "describers.png", "sensitivity.png"):
        assert (root / f).is_file()
    # faithfulness: at fc each neuron is a class logit, so nothing is ablated and the column stays empty, saying
    # why (test_ablation.py: the median z of each describer's ablation on the penultimate layer)
    assert "faithfulness_median_z" in (root / "describers.csv").read_text().splitlines()[0]
    assert table["faithfulness_skipped"].startswith("at the fc layer each neuron is a class's logit")
    assert [n for n, row in table["rows"].items() if "faithfulness" in row] == [] and not list(run.parent.rglob("ablation.*"))
    sens = table["sensitivity"]
    assert np.array(sens["hit_rate"]).shape == (6, 5)
    # The run's own cell of the grid is the run's hit rate: the study re-computes MAMMI from the cache.
    assert sens["hit_rate"][sens["percents"].index(93.0)][sens["alphas"].index(95.0)] == mammi_metrics["hit_rate"]["mean"]
    assert "== Describers on the fc layer" in log and "dissection: 24 images (24 with boxes" in log

    # The shared contract: MAMMI's reader takes every describer's output.
    files = [run] + [root / n / "concepts.json" for n in ("clip_dissect", "topk_mean", "label_auc", "dissection")]
    for f in files:
        data = contract(f)
        assert data["config"]["examples"] == json.loads(run.read_text())["config"]["examples"]
    cd = json.loads(files[1].read_text())
    assert cd["config"]["describer"] == "clip_dissect" and cd["config"]["top_k"] == 100
    assert all(len(n["top"]) == 5 for n in cd["neurons"])
    for f in files[3:]:  # label_auc and dissection name findings
        assert json.loads(f.read_text())["config"]["vocabulary"] == "findings"
        named = {c["concept"] for n in json.loads(f.read_text())["neurons"] for c in n["concepts"]}
        assert named and named <= {c.lower() for c in class_names()}
    ok(run_script("gallery.py", "--save_root", str(out), "--runs", ",".join(map(str, files))))
    page = (out / "gallery" / "index.html").read_text()
    assert "clip_dissect" in page and "dissection" in page

    # Again: everything is read back, nothing is embedded or dissected again.
    log = ok(compare(out, tiny_clip, "--box_file", str(boxes)))
    assert counted["images"] == 64 and counted["texts"] == 1362
    assert log.count("reusing") >= 6 and "maps fc" not in log
    assert json.loads((root / "describers.json").read_text())["rows"] == table["rows"]

    # Boxes of other images only: dissection does not apply, says why, and leaves no stale output.
    other = tmp_path / "other.csv"
    other.write_text("image_name,label,bbox_x,bbox_y,bbox_w,bbox_h\nelsewhere.png,Mass,1,2,3,4\n")
    log = ok(compare(out, tiny_clip, "--box_file", str(other), "--describers", "label_auc,dissection",
                     "--sensitivity_percents", ""))
    assert "dissection skipped: no image of the probing set has a box" in log and not (root / "dissection").exists()
    again = json.loads((root / "describers.json").read_text())
    assert list(again["rows"]) == ["mammi", "label_auc"] and "dissection" in again["skipped"]
    assert "sensitivity" not in again


def test_bad_requests_are_one_line(probe_set, densenet_ckpt, tiny_clip, tmp_path):
    out = tmp_path / "res"
    proc = compare(out, tiny_clip)
    assert proc.returncode == 2 and "concept_matching.py" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    proc = compare(out, tiny_clip, "--describers", "clip_dissect,netdissect")
    assert proc.returncode == 2 and "netdissect" in proc.stderr


def test_lift_truth_at_the_step_s_default_threshold(monkeypatch):
    """compare_describers.py --truth lift, its threshold left at its default: a neuron has a finding when
    the finding's rate among its top 20 images is at least twice its rate over the probing set (the
    README's lift >= 2). Worked out by hand on 40 images: finding a in images 0-9 (base rate 1/4),
    b in images 10-29 (1/2).
      neuron 0, top images 4-23:        a 6/20 (lift 1.2), b 14/20 (lift 1.4): below 2, no finding
      neuron 1, top images 0-9, 30-39:  a 10/20 (lift 2.0): a, at the threshold itself
      neuron 2, top images 20-39:       b 10/20 (lift 1.0): no finding"""
    import runpy
    import sys
    monkeypatch.setattr(sys, "argv", ["compare_describers.py", "--truth", "lift"])
    step = runpy.run_path(str(REPO / "compare_describers.py"), run_name="constants_only")
    labels = np.zeros((40, 2), dtype=np.int64)
    labels[0:10, 0] = 1
    labels[10:30, 1] = 1
    tops = [range(4, 24), list(range(0, 10)) + list(range(30, 40)), range(20, 40)]
    acts = torch.tensor([[(10.0 if i in top else 0.0) + 0.01 * i for top in tops] for i in range(40)])
    got = step["neuron_truth"](acts, labels, ["a", "b"], [False, False, False], None)
    assert got["kind"] == "lift" and got["neurons"] == [None, "a", None]
    # the same images under a threshold of 1 would name all three: the default is what decides
    assert lift_findings(labels, [list(t) for t in tops], 1.0) == [1, 0, 1]
