"""The shortcut audit's outputs (audit.py; docs/audit.md): audit.json, audit.csv and audit.png beside the
concepts.json audited, written so that a reader never finds a table beside a figure of other numbers."""
from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from pipeline.cache import save_table
from pipeline.outputs import AUDIT, AUDIT_CSV, AUDIT_PNG

FIELDS = ("class", "concept", "n_neurons", "share", "z", "own", "flagged")
COLOURS = {"flagged": "tab:orange", "own": "tab:blue", "other": "0.65"}


def write_audit(out: Path, result: dict, fig: plt.Figure) -> None:
    """audit.json, one row per class and concept in audit.csv, and the figure (pipeline/cache.save_table)."""
    rows = [[r["class"]] + [c[k] for k in FIELDS[1:]] for r in result["classes"] for c in r["concepts"]]
    save_table(out / AUDIT, result, out / AUDIT_CSV, list(FIELDS), rows, out / AUDIT_PNG, fig)


def number(v: float | None, spec: str = ".3f") -> str:
    return "-" if v is None else format(v, spec)


def stratum_words(s: dict) -> str:
    """One hidden stratification of audit.json in words."""
    ci = "-" if s["ci"] is None else f"{s['ci'][0]:+.3f} to {s['ci'][1]:+.3f}"
    return (f"AUROC {number(s['auroc_with'])} on the {s['n_with']} positives with it, {number(s['auroc_without'])} "
            f"on the {s['n_without']} without (each against the {s['n_negatives']} negatives); gap "
            f"{number(s['gap'], '+.3f')} (95% CI {ci})")


def figure(result: dict, top: int) -> plt.Figure:
    """One panel per class: its `top` concepts by share of the evidence for it, as bars with z beside each; flagged
    concepts orange, the class's own words blue, the rest grey."""
    classes = result["classes"]
    cols = 2
    rows = max(1, math.ceil(len(classes) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(11, 0.32 * top * rows + 1.2 * rows), dpi=100, squeeze=False)
    for ax, r in zip(axes.flat, classes):
        shown = [c for c in r["concepts"] if c["share"] is not None][:top]
        kind = ["flagged" if c["flagged"] else "own" if c["own"] else "other" for c in shown]
        ax.barh(range(len(shown)), [c["share"] for c in shown], color=[COLOURS[k] for k in kind])
        for i, c in enumerate(shown):
            z = "z n/a" if c["z"] is None else f"z {c['z']:.1f}"
            ax.annotate(f"{z} ({c['n_neurons']})", (max(c["share"], 0), i), xytext=(4, 0), textcoords="offset points",
                        va="center", fontsize=7)
        ax.set_yticks(range(len(shown)), [c["concept"] for c in shown], fontsize=8)
        ax.invert_yaxis()
        ax.axvline(result["share_min"], color="tab:orange", lw=0.8, ls="--")
        ax.set_title(f"{r['class']} ({r['n_positives']} positives)", fontsize=9)
        ax.set_xlabel("share of the evidence for the class (its channels' positive falls) on its positives",
                      fontsize=7)
        ax.margins(x=0.3)
    for ax in list(axes.flat)[len(classes):]:
        ax.axis("off")
    handles = [plt.Rectangle((0, 0), 1, 1, color=v) for v in COLOURS.values()]
    labels = [f"flagged: not its own, share > {result['share_min']:g} (dashed), z >= {result['z_min']:g}",
              "the class's own word", "other concept"]
    # the title, then the legend beneath it, then the panels: fixed inches from the top whatever the height
    height = fig.get_figheight()
    checkpoint = f" ({Path(result['checkpoint']).name})" if result.get("checkpoint") else ""
    fig.suptitle(f"{result['target']}{checkpoint}, {result['layer']} layer, {result['split']} split: what each "
                 f"class's logit rests on\n(z against {result['draws']} random sets; in brackets the concept's "
                 f"neurons)", fontsize=9, y=1 - 0.08 / height, va="top")
    fig.legend(handles, labels, loc="upper center", ncol=3, fontsize=8, frameon=False,
               bbox_to_anchor=(0.5, 1 - 0.45 / height))
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.6 / height))
    return fig
