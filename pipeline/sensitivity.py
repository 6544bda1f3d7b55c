"""The sensitivity of MAMMI's names to its two constants (adaptive_percent p, alpha), from the cached
tensors of a run (mammi/sensitivity.py computes the grids): stored in describers.json with its figure,
sensitivity.png, beside it."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from mammi.sensitivity import sensitivity_grids
from pipeline.cache import save_png
from pipeline.outputs import SENSITIVITY_PNG


def sensitivity(run_json, acts, feats, truth_of, percents, alphas, out: Path, scored) -> dict:
    """MAMMI re-run from the cache over adaptive_percent x alpha (its template and adaptive score as the
    run): the fc hit rate and F1 (fc layer), the agreement with the truth (each share with its standard
    error), the overlap with the run's own concepts and the mean number of concepts per neuron, on a grid.
    The figure: the headline metric (fc hit rate; else the agreement with the truth; without one, the
    overlap with the run), and beside it what a lower alpha pays for it."""
    cfg = run_json["config"]
    template = feats["text"]["template"] if cfg["adaptive"] else None
    is_fc, has_truth = bool(scored), truth_of["n"] > 0
    grids = sensitivity_grids(run_json["neurons"], acts, feats["images"], feats["text"]["features"], template,
                              feats["concepts"], percents, alphas, truth_of["neurons"] if has_truth else None, scored)
    own = (cfg["adaptive_percent"], cfg["alpha"]) if cfg["selection"] == "adaptive" else None
    headline = "hit_rate" if is_fc else "truth_any" if has_truth else "overlap"
    title = {"hit_rate": "fc hit rate", "truth_any": f"agreement with the truth ({truth_of['kind']})",
             "overlap": "overlap with the run's concepts (Jaccard)"}[headline]
    panels = [(title, headline), ("fc F1 (precision pays for extra concepts)", "f1") if is_fc else
              ("concepts per neuron", "n_concepts")]
    panels = [(t, k) for t, k in panels if np.isfinite(grids[k]).any()]  # never an empty panel
    result = {"percents": percents, "alphas": alphas, "metric": title, "headline": headline,
              **{k: (g.tolist() if np.isfinite(g).any() else None) for k, g in grids.items()}, "figure": None}
    if not panels:
        (out / SENSITIVITY_PNG).unlink(missing_ok=True)
        return result
    size = (len(panels) * (1.1 * len(alphas) + 2.2), 0.6 * len(percents) + 1.8)
    fig, axes = plt.subplots(1, len(panels), figsize=size, dpi=110, squeeze=False)
    for ax, (label, k) in zip(axes[0], panels):
        grid = grids[k]
        # A fixed scale: shares from 0 to 1, a count from 0 to its largest cell, so that a step of one
        # neuron in 14 (hit rate 10/14 against 13/14, within two standard errors) looks as small as it is.
        lo, hi = 0.0, 1.0 if k != "n_concepts" else max(float(np.nanmax(grid)), 1.0)
        im = ax.imshow(grid, cmap="viridis", vmin=lo, vmax=hi, aspect="auto")
        for (r, c), v in np.ndenumerate(grid):
            text = f"{round(v * len(scored))}/{len(scored)}" if k == "hit_rate" else f"{v:.3f}"
            ax.text(c, r, text, ha="center", va="center", color="white" if v < (lo + hi) / 2 else "black",
                    fontsize=9, fontweight="bold" if (percents[r], alphas[c]) == own else None)
        ax.set_xticks(range(len(alphas)), [f"{a:g}" for a in alphas])
        ax.set_yticks(range(len(percents)), [f"{p:g}" for p in percents])
        ax.set_xlabel("alpha (concepts above alpha% of the best score)")
        ax.set_ylabel("adaptive_percent p")
        se = grids.get(f"{k}_se")
        noise = "" if se is None else f"\nstandard error of a cell {spread(se)} " \
                                      f"({len(scored) if k == 'hit_rate' else truth_of['n']} neurons)"
        same = float(np.nanmax(grid)) - float(np.nanmin(grid)) < 1e-12
        ax.set_title(label + (": the same in every cell" if same else "") + noise, fontsize=10)
        fig.colorbar(im, ax=ax, fraction=0.05).set_label(
            label.split(" (")[0] + (" (fixed scale 0-1)" if k != "n_concepts" else " (scale from 0)"), fontsize=8)
    fig.suptitle(f"MAMMI's two constants, {cfg['layer']} layer, from the cached tensors " +
                 (f"(bold: the run's p = {own[0]:g}, alpha = {own[1]:g})" if own else "(the run selected its top k)"),
                 fontsize=10)
    fig.tight_layout()
    save_png(out / SENSITIVITY_PNG, fig)
    return {**result, "figure": str(out / SENSITIVITY_PNG)}


def spread(values: np.ndarray) -> str:
    """'0.013-0.016', or one value when both ends read the same."""
    lo, hi = f"{np.nanmin(values):.2g}", f"{np.nanmax(values):.2g}"
    return lo if lo == hi else f"{lo}-{hi}"
