"""The figures a reader looks at: every axis labelled, one truth per panel of describers.png, the
sensitivity heat map on fixed scales (values written in the cells, their standard errors in the
title), the sanity check's fdr and its target named as it is, and no figure drawn from nothing."""
import math
import re
import runpy
import sys

import matplotlib
import numpy as np
import pytest
import torch

from conftest import REPO
from mammi.describers import concept_overlap
from mammi.method import mammi

matplotlib.use("Agg")


def step(monkeypatch, script):
    """A step's functions, its constants at their defaults (nothing run)."""
    monkeypatch.setattr(sys, "argv", [script])
    return runpy.run_path(str(REPO / script), run_name="constants_only")


def v(mean, n=14, se=0.05):
    return {"mean": mean, "se": se, "n": n}


def table(kind="label_auc", fc=True, names=("mammi", "clip_dissect", "label_auc")):
    """A describers.json as compare_describers.py writes it, with hand-picked numbers."""
    rows = {}
    for i, name in enumerate(names):
        row = {"neurons": 14, "named": 14}
        if fc:
            row["fc"] = {"hit_rate": v(0.5 + 0.1 * i), "f1": v(0.4 + 0.1 * i)}
        if kind != "none" and name != "label_auc":
            row["truth"] = {"any": v(0.7 - 0.2 * i, 12), "top1": v(0.6 - 0.2 * i, 12)}
        rows[name] = row
    pair = {a: {b: {"mean": 1.0 if a == b else 0.25} for b in names} for a in names}
    return {"layer": "fc" if fc else "penultimate", "rows": rows, "pairwise": pair,
            "truth": {"kind": kind, "n": 12 if kind != "none" else 0, "own": "label_auc" if kind == "label_auc" else None}}


def main_axes(fig):
    return [ax for ax in fig.axes if ax.get_label() != "<colorbar>"]


def bar_heights(ax, label):
    got = [c for c in ax.containers if c.get_label() == label]
    assert len(got) == 1, [c.get_label() for c in ax.containers]
    return [b.get_height() for b in got[0]]


def test_describer_figure_has_one_truth_per_panel_and_labelled_axes(monkeypatch):
    cd = step(monkeypatch, "compare_describers.py")
    fig = cd["figure"](table())
    fc, truth, pairs = main_axes(fig)
    for ax in (fc, truth, pairs):
        assert ax.get_xlabel() and ax.get_ylabel(), ax.get_title()
    assert "class name" in fc.get_title() and "truth (label_auc" in truth.get_title()
    assert "truth" not in fc.get_title() and "class name" not in truth.get_title()
    assert fc.get_ylabel() == "mean over the 14 fc neurons" and truth.get_ylabel() == "share of the 12 neurons with a truth"
    # fc panel: every describer, the values of the table
    assert bar_heights(fc, "hit rate") == pytest.approx([0.5, 0.6, 0.7])
    assert bar_heights(fc, "F1") == pytest.approx([0.4, 0.5, 0.6])
    # truth panel: label_auc is the truth itself: no bar, a note instead
    got = bar_heights(truth, "truth among its concepts")
    assert got[:2] == pytest.approx([0.7, 0.5]) and math.isnan(got[2])
    assert any("by\nconstruction" in t.get_text() for t in truth.texts)
    assert [t.get_text() for t in pairs.get_xticklabels()] == ["mammi", "clip_dissect", "label_auc"]


def test_describer_figure_leaves_out_what_the_labels_would_give(monkeypatch):
    cd = step(monkeypatch, "compare_describers.py")
    fig = cd["figure"](table(kind="none", names=("mammi", "clip_dissect")))
    titles = [ax.get_title() for ax in main_axes(fig)]
    assert len(titles) == 2 and "class name" in titles[0] and "same first concept" in titles[1]
    # without fc metrics and truth, MAMMI alone leaves nothing to draw: no figure at all
    assert cd["figure"](table(kind="none", fc=False, names=("mammi",))) is None
    # two describers that never both name a neuron: an all-n/a matrix is no figure either
    t = table(kind="none", fc=False, names=("mammi", "topk_mean"))
    t["pairwise"] = {a: {b: {"mean": math.nan} for b in t["rows"]} for a in t["rows"]}
    assert cd["figure"](t) is None


def sensitivity_inputs(K=6, N=40, C=7, D=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    acts = torch.rand(N, K, generator=g)
    img, text = torch.randn(N, D, generator=g), torch.randn(C, D, generator=g)
    concepts = [f"c{i}" for i in range(C)]
    run = mammi(acts, img, text, None, concepts, 95.0, percent=93.0)["neurons"]
    cfg = {"adaptive": False, "layer": "layer3", "selection": "adaptive", "adaptive_percent": 93.0, "alpha": 95.0}
    feats = {"images": img, "text": {"features": text, "template": None}, "concepts": concepts}
    return {"config": cfg, "neurons": run}, acts, feats, concepts


@pytest.mark.parametrize("labelled", [True, False])
def test_sensitivity_maps_share_a_fixed_scale_and_say_their_noise(monkeypatch, tmp_path, labelled):
    figures = []
    monkeypatch.setattr("pipeline.sensitivity.save_png", lambda path, fig: figures.append(fig))  # the study saves it
    cd = step(monkeypatch, "compare_describers.py")
    run, acts, feats, concepts = sensitivity_inputs()
    truth = {"kind": "lift", "n": 6, "neurons": concepts[:6]} if labelled else \
            {"kind": "none", "n": 0, "neurons": [None] * 6}
    percents, alphas = [80.0, 93.0, 97.0], [50.0, 80.0, 95.0, 99.0]
    got = cd["sensitivity"](run, acts, feats, truth, percents, alphas, tmp_path, [])
    assert got["headline"] == ("truth_any" if labelled else "overlap") and got["hit_rate"] is None
    if labelled:
        # each cell's standard error, std/sqrt(n) of 6 neurons that agree or not: sqrt(v (1 - v) / 6)
        v = np.array(got["truth_any"])
        assert np.array(got["truth_any_se"]) == pytest.approx(np.sqrt(v * (1 - v) / 6))
    else:
        assert got["truth_any"] is None and got["truth_any_se"] is None
        # the run's own cell is the run: its concepts overlap their own fully
        assert got["overlap"][1][2] == 1.0
    (fig,) = figures
    panels = [ax for ax in fig.axes if ax.images]
    assert [ax.get_title() for ax in panels][1] == "concepts per neuron"
    for ax, key in zip(panels, (got["headline"], "n_concepts")):
        grid = np.array(got[key])
        norm = ax.images[0].norm
        assert ax.get_xlabel().startswith("alpha") and ax.get_ylabel() == "adaptive_percent p"
        # shares on 0-1 whatever their spread; the count of concepts from 0 to its largest cell
        assert (norm.vmin, norm.vmax) == ((0, 1) if key != "n_concepts" else (0, max(grid.max(), 1)))
        cells = sorted(t.get_text() for t in ax.texts)
        assert cells == sorted(f"{x:.3f}" for x in grid.flatten())
    title = panels[0].get_title()
    if labelled:
        se = np.array(got["truth_any_se"])
        assert f"standard error of a cell {se.min():.2g}-{se.max():.2g} (6 neurons)" in title
    else:
        assert "standard error" not in title  # a mean Jaccard is no share of neurons
    assert len(fig.axes) == 2 * len(panels)  # every panel has its colour bar


def test_fc_sensitivity_cells_count_neurons_on_a_fixed_scale(monkeypatch, tmp_path):
    """A hit rate spanning 1/3 to 2/3 of the scored neurons still spans only part of the 0-1 scale."""
    figures = []
    monkeypatch.setattr("pipeline.sensitivity.save_png", lambda path, fig: figures.append(fig))
    cd = step(monkeypatch, "compare_describers.py")
    run, acts, feats, concepts = sensitivity_inputs()
    scored = [(k, concepts[k]) for k in range(3)]  # neurons 0-2 "are" classes c0-c2
    got = cd["sensitivity"](run, acts, feats, {"kind": "none", "n": 0, "neurons": [None] * 6}, [80.0, 93.0],
                            [50.0, 95.0], tmp_path, scored)
    assert got["headline"] == "hit_rate"
    (fig,) = figures
    ax = next(ax for ax in fig.axes if ax.images)
    assert (ax.images[0].norm.vmin, ax.images[0].norm.vmax) == (0, 1)
    grid = np.array(got["hit_rate"])
    assert sorted(t.get_text() for t in ax.texts) == sorted(f"{round(x * 3)}/3" for x in grid.flatten())
    se = np.array(got["hit_rate_se"])
    assert se == pytest.approx(np.sqrt(grid * (1 - grid) / 3))
    assert f"standard error of a cell {se.min():.2g}-{se.max():.2g} (3 neurons)" in ax.get_title()


def test_a_constant_grid_keeps_the_fixed_scale(monkeypatch, tmp_path):
    figures = []
    monkeypatch.setattr("pipeline.sensitivity.save_png", lambda path, fig: figures.append(fig))  # the study saves it
    cd = step(monkeypatch, "compare_describers.py")
    run, acts, feats, concepts = sensitivity_inputs()
    # one concept, close to every image: every neuron is named with it at every p and alpha
    feats = {"images": feats["images"].abs(), "text": {"features": torch.ones(1, 5), "template": None},
             "concepts": concepts[:1]}
    run["neurons"] = mammi(acts, feats["images"], feats["text"]["features"], None, concepts[:1], 95.0)["neurons"]
    got = cd["sensitivity"](run, acts, feats, {"kind": "none", "n": 0, "neurons": [None] * 6}, [80.0, 93.0],
                            [90.0, 95.0], tmp_path, [])
    assert got["overlap"] == [[1.0, 1.0], [1.0, 1.0]] and got["n_concepts"] == [[1.0, 1.0], [1.0, 1.0]]
    (fig,) = figures
    panels = [ax for ax in fig.axes if ax.images]
    assert len(panels) == 2 and all(ax.get_title().endswith("the same in every cell") for ax in panels)
    assert all((ax.images[0].norm.vmin, ax.images[0].norm.vmax) == (0, 1) for ax in panels)
    assert len(fig.axes) == 4  # the fixed scale invents no range: each keeps its colour bar


def test_concept_overlap_is_the_mean_jaccard_of_named_neurons():
    # by hand: {x, y} vs {x}: 1/2; {z} vs {z}: 1; {a} vs {b}: 0; {q} vs nothing: 0; neither names one: left out
    got = concept_overlap([["x", "y"], ["z"], ["a"], [], ["q"]], [["x"], ["z"], ["b"], [], []])
    assert got["n"] == 4 and got["mean"] == pytest.approx(0.375)
    assert got["se"] == pytest.approx(np.std([0.5, 1, 0, 0]) / 4 ** 0.5)
    assert concept_overlap([[]], [[]])["n"] == 0


def test_ablation_sanity_and_roc_figures_label_both_axes(monkeypatch):
    from pipeline.ablation import figure as ablation_figure
    result = {"layer": "penultimate", "draws": 3, "findings": [
        {"finding": "mass", "effect": 0.5, "random_mean": 0.0, "random_sd": 0.1, "z": 5.0, "n_neurons": 2},
        {"finding": "nodule", "effect": None, "z": None, "n_neurons": 0}]}
    ax, = ablation_figure(result, {"mass": [0.1, -0.1, 0.0]}).axes
    assert ax.get_xlabel() and ax.get_ylabel() == "finding"
    layer = {"share": 0.5, "significant": 1, "live": 2, "tested": 2, "fdr": 0.05, "untrained": False,
             "first_concepts": [["mass", 1]]}
    fig = step(monkeypatch, "sanity_check.py")["figure"]({"fc": {"target": layer, "reinitialised": layer}})
    assert fig.axes[0].get_xlabel() == "share of named neurons whose name is significant (q <= 0.05)"
    assert fig.axes[0].get_ylabel() == "layer"
    labels = np.array([[1, 0], [0, 1], [1, 1], [0, 0]])
    probs = np.array([[0.9, 0.2], [0.1, 0.8], [0.7, 0.6], [0.3, 0.1]])
    ax, = step(monkeypatch, "target_model_perform.py")["roc_figure"](labels, probs, np.array([1.0, 1.0]),
                                                                      ["Mass", "Nodule"]).axes
    assert ax.get_xlabel() == "false positive rate" and ax.get_ylabel() == "true positive rate"


def figure_texts(fig) -> list[str]:
    """Every string a reader sees on a figure: titles, axis labels, legends, free text."""
    out = [fig._suptitle.get_text()] if fig._suptitle else []
    for ax in fig.axes:
        out += [ax.get_title(), ax.get_xlabel(), ax.get_ylabel()] + [t.get_text() for t in ax.texts]
        if ax.get_legend():
            out += [t.get_text() for t in ax.get_legend().get_texts()]
    return out


def test_sanity_figure_never_calls_an_untrained_target_trained(monkeypatch):
    """--checkpoint random: the target is untrained, so the figure says target and re-initialised, and the
    fdr each side was tested at."""
    sanity = step(monkeypatch, "sanity_check.py")
    side = {"share": 0.25, "significant": 1, "live": 4, "tested": 4, "fdr": 0.1, "first_concepts": [["mass", 3], ["edema", 1]]}
    fig = sanity["figure"]({"fc": {"target": {**side, "untrained": True}, "reinitialised": {**side, "untrained": True}}})
    texts = figure_texts(fig)
    assert not [t for t in texts if re.search(r"(?<!un)trained", t)], texts
    legend = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert legend == ["target (untrained: --checkpoint random)", "re-initialised"]
    assert "untrained" in fig._suptitle.get_text()
    assert fig.axes[0].get_xlabel() == "share of named neurons whose name is significant (q <= 0.1)"
    assert [b.get_width() for b in fig.axes[0].patches] == [0.25, 0.25]
