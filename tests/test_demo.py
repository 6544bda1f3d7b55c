"""The demo end to end on a reduced phantom world with the committed weights: the quality bar
(fc hit rate >= 12 of 14) and every output file."""
import json
from pathlib import Path

import pytest

from conftest import REPO, run_script

pytestmark = pytest.mark.skipif(not (REPO / "pretrained" / "phantom_densenet121.pth").is_file(),
                                reason="the demo weights are not in pretrained/")


def test_demo_on_a_reduced_world(tmp_path):
    out, world = tmp_path / "res", tmp_path / "world"
    proc = run_script("demo.py", "--data_root", str(world / "images"), "--n_probe", "400", "--n_val", "100",
                      "--n_test", "150", "--vis_images", "4", "--num_workers", "0", "--save_root", str(out))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    default = next(iter(summary["fc"].values()))
    hits = round(default["hit_rate"]["mean"] * 14)
    assert hits >= 12, proc.stdout[-4000:]
    assert set(summary["fc"]) == {"MAMMI (adaptive examples, template, adaptive score)", "not adaptive",
                                  "no template", "top-k examples (k = 20)"}
    assert summary["penultimate"]["selective"] > 0
    assert sum(v for v in summary["auroc"].values()) / 14 > 0.85
    probe = out / "phantom_train" / "densenet121"
    for layer in ("fc", "penultimate"):
        assert (probe / layer / "activations.pt").is_file()
        for f in ("examples.json", "examples.csv"):
            assert (probe / layer / "adaptive93" / f).is_file()
        match = next((probe / layer / "adaptive93").glob("vlm_phantom*/demo_concepts_base_adaptive_a95"))
        for f in ("similarity.pt", "concepts.json") + (("metrics.json",) if layer == "fc" else ()):
            assert (match / f).is_file()
    assert (probe / "fc" / "top20" / "examples.json").is_file()
    assert list((out / "phantom_train").glob("vlm_phantom*/image_features.pt"))
    assert list(out.glob("vlm_phantom*/text_demo_concepts_base.pt"))
    ev = out / "phantom_test" / "densenet121" / "eval"
    for f in ("Threshold.csv", "TestEval.csv", "roc_curves.png"):
        assert (ev / f).is_file()
    assert list((out / "phantom_nih" / "bbox").glob("*_blend.png"))
    vis = out / "phantom_nih" / "densenet121" / "visualization"
    assert (vis / "total_results.json").is_file() and list((vis / "figures").glob("*.png"))
    assert "== Results on the phantom world" in proc.stdout and "pointing game" in proc.stdout
    # MAMMI against the other describers: every one with its numbers and standard errors, on both layers.
    rivals = summary["describers"]
    assert set(rivals) == {"fc", "penultimate"}
    for layer, table in rivals.items():
        assert list(table["rows"]) == ["mammi", "clip_dissect", "topk_mean", "label_auc", "dissection"], table["skipped"]
        assert table["truth"]["kind"] == "lift" and table["truth"]["n"] > 0
        for row in table["rows"].values():
            assert row["truth"]["any"]["n"] == table["truth"]["n"] and row["truth"]["any"]["se"] >= 0
        assert (Path(table["run"]).parent / "describers" / "sensitivity.png").is_file()
    fc = rivals["fc"]["rows"]
    assert fc["mammi"]["fc"]["hit_rate"] == default["hit_rate"]  # one scorer for MAMMI and its rivals
    assert all({"hit_rate", "precision", "f1", "cosine"} <= set(r["fc"]) for r in fc.values())
    assert "MAMMI against other describers" in proc.stdout and "sensitivity of MAMMI" in proc.stdout
    index = out / "gallery" / "index.html"
    assert index.is_file() and proc.stdout.rstrip().splitlines()[-1].startswith(f"neuron gallery: {index}")
