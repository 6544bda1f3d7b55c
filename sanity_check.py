"""Model-randomisation sanity check (README, "How far to trust a name"): steps 2-3 again on the same
architecture with every module re-initialised, beside the target's own runs.

    python sanity_check.py config/demo.py --layer fc,penultimate
    python sanity_check.py config/nih_densenet121.py --layer penultimate --sanity_seed 1

A way of naming neurons whose names survive the destruction of the weights describes the probing
images, not the model (Adebayo et al., "Sanity checks for saliency maps", NeurIPS 2018). Runs (or
reuses) example_selection.py and concept_matching.py for the target as its checkpoint gives it (untrained
with --checkpoint random: then nothing here calls it trained) and for the target re-initialised with
`sanity_seed` (their --reinit_seed), the latter into its own folder ({model}-reinit{seed}/), and
compares per layer the share of significant neurons and the most frequent first concepts. Writes
sanity.json and sanity.png in that folder.
"""
import pipeline.guard  # noqa: F401  (first: Ctrl-C and the console's encoding are handled from here on)

# isort: split
from collections import Counter
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from models.layers import layer_names
from pipeline.cache import save_json, save_png
from pipeline.cli import PipelineError, configure, main, print_config, run_step
from pipeline.outputs import CONCEPTS, SANITY, SANITY_PNG, matching_dir, model_dir, read_matching

# -----------------------------------------------------------------------------
sanity_seed: "[0, 2**63 - 1]" = 0  # seed of the re-initialisation (the re-initialised target's --reinit_seed)
frequent_concepts: "[1, 1000]" = 5  # most frequent first concepts shown per layer and target
# -----------------------------------------------------------------------------
config = configure(globals(), reads=("example_selection.py", "concept_matching.py"))
# The two sides of each layer, as sanity.json keys them and as they are called: the target as its checkpoint
# left it (never called trained: --checkpoint random gives an untrained one) and the re-initialised one.
SIDES = {"target": "target", "reinitialised": "re-initialised"}


def side(path: Path, top: int) -> dict:
    """One target's layer: how many live neurons, how many names were tested and how many significant (at
    which fdr), whether the layer could be tested at all, its most frequent first concepts, and whether step 2
    marked the target untrained (--checkpoint random)."""
    run, _, ex = read_matching(path)
    live = [n for n in run["neurons"] if n["status"] != "dead"]
    ev = run.get("evidence")
    if ev is None:
        raise PipelineError(f"{path} has no test of its names (written by an older concept_matching.py); "
                            f"re-run concept_matching.py")
    first = Counter(n["concepts"][0]["concept"] for n in live if n["concepts"])
    tested, sig = ev["tested"], ev["significant"]  # as step 3 counted them
    return {"concepts_json": str(path), "key": run["key"], "live": len(live), "tested": tested, "significant": sig,
            "testable": ev["testable"], "share": sig / tested if tested else None,  # 0 of 0: none
            "named": sum(n["status"] == "ok" for n in live), "fdr": run["config"]["fdr"],
            "untrained": bool(ex["config"].get("untrained", False)), "first_concepts": first.most_common(top)}


def counted(side: dict) -> str:
    """'3 of 10 names significant (30%)'; a layer with no name tested has no share: '0 of 0 names significant';
    one whose names no probing set this small could prove says so (step 3 printed why)."""
    if side["named"] and not side["testable"]:
        return f"{side['named']} names, not testable on this probing set"
    share = "" if side["share"] is None else f" ({side['share']:.0%})"
    return f"{side['significant']} of {side['tested']} names significant{share}"


def side_name(which: str, r: dict) -> str:
    """What a side is called: 'target' (untrained when step 2 says so) or 're-initialised'."""
    return SIDES[which] + (" (untrained: --checkpoint random)" if which == "target" and r.get("untrained") else "")


def q_rule(layers: dict) -> str:
    """'q <= 0.05': the fdr the layers' names were tested at (each value, should they differ)."""
    fdrs = sorted({r[w]["fdr"] for r in layers.values() for w in SIDES})
    return "q <= " + " or ".join(f"{f:g}" for f in fdrs)


def figure(layers: dict) -> plt.Figure:
    """Left: the significant share of each target per layer; right: their most frequent first concepts."""
    names = list(layers)
    fig, (ax, txt) = plt.subplots(1, 2, figsize=(11, 1.5 + 1.1 * len(names)), width_ratios=[1, 1.3])
    for off, which, color in ((-0.2, "target", "tab:blue"), (0.2, "reinitialised", "tab:gray")):
        for i, n in enumerate(names):
            r = layers[n][which]
            share = r["share"] or 0.0  # no name tested: no bar, its 0/0 beside the axis
            ax.barh(i + off, share, height=0.38, color=color, label=side_name(which, r) if i == 0 else None)
            ax.text(share + 0.01, i + off, f"{r['significant']}/{r['tested']}", va="center", fontsize=8)
    ax.set_yticks(range(len(names)), names)
    ax.invert_yaxis()
    ax.set_xlim(0, 1.15)
    ax.set_xlabel(f"share of named neurons whose name is significant ({q_rule(layers)})")
    ax.set_ylabel("layer")
    ax.legend(loc="lower right", fontsize=8)
    txt.axis("off")
    lines = []
    for n in names:
        t, z = (layers[n][w]["first_concepts"] for w in SIDES)
        lines += [f"{n}", f"  {'target':<26}re-initialised"]
        lines += [f"  {(f'{a[0]} {a[1]}' if a else ''):<26}{f'{b[0]} {b[1]}' if b else ''}"
                  for a, b in zip(t + [None] * (len(z) - len(t)), z + [None] * (len(t) - len(z)))]
        lines.append("")
    txt.text(0, 1, "most frequent first concepts (neurons)\n\n" + "\n".join(lines), va="top", family="monospace",
             fontsize=8, transform=txt.transAxes)
    untrained = any(r["target"].get("untrained") for r in layers.values())
    fig.suptitle("Model-randomisation sanity check: the target against the same architecture re-initialised" +
                 ("\n(the target itself is untrained: --checkpoint random)" if untrained else ""), fontsize=10)
    return fig


def run():
    print_config("sanity_check", config)
    names = layer_names(config["layer"])
    if "list" in names:
        raise PipelineError("--layer list prints the layers; name the layers to check, e.g. --layer fc,penultimate")
    rand = {**config, "reinit_seed": sanity_seed}
    for seed in (-1, sanity_seed):  # one forward pass per target for all the layers
        run_step("example_selection.py", config, layer=",".join(names), reinit_seed=seed)
        run_step("concept_matching.py", config, layer=",".join(names), reinit_seed=seed)
    layers = {}
    for name in names:
        both = {w: side(matching_dir({**c, "layer": name}) / CONCEPTS, frequent_concepts)
                for w, c in (("target", {**config, "reinit_seed": -1}), ("reinitialised", rand))}
        shared = {c for c, _ in both["target"]["first_concepts"]} & {c for c, _ in both["reinitialised"]["first_concepts"]}
        layers[name] = {**both, "shared_first_concepts": sorted(shared)}
    out = model_dir(rand)
    save_json(out / SANITY, {"sanity_seed": sanity_seed, "model": config["model"],
                                    "checkpoint": config["checkpoint"], "layers": layers})
    save_png(out / SANITY_PNG, figure(layers))
    print(f"\n== Sanity check: significant names ({q_rule(layers)}) of the target and of the target re-initialised "
          f"(seed {sanity_seed})")
    for name, r in layers.items():
        t, z = r["target"], r["reinitialised"]
        print(f"{name}: {side_name('target', t)} {counted(t)}, re-initialised {counted(z)}; first concepts: target "
              f"{', '.join(c for c, _ in t['first_concepts'])}; re-initialised {', '.join(c for c, _ in z['first_concepts'])}")
    print("outputs:")
    for p in (SANITY, SANITY_PNG):
        print(f"  {out / p}")


if __name__ == "__main__":
    main(run)
