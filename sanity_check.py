"""Model-randomisation sanity check (README, "How far to trust a name"): steps 2-3 again on the same
architecture with every module re-initialised, beside the trained target's own runs.

    python sanity_check.py config/demo.py --layer fc,penultimate
    python sanity_check.py config/nih_densenet121.py --layer penultimate --sanity_seed 1

A way of naming neurons whose names survive the destruction of the weights describes the probing
images, not the model (Adebayo et al., "Sanity checks for saliency maps", NeurIPS 2018). Runs (or
reuses) example_selection.py and concept_matching.py for the trained target and for the target
re-initialised with `sanity_seed` (their --reinit_seed), the latter into its own folder
({model}-reinit{seed}/), and compares per layer the share of significant neurons and the most
frequent first concepts. Writes sanity.json and sanity.png in that folder.
"""
import pipeline.guard  # noqa: F401  (first: Ctrl-C and the console's encoding are handled from here on)
import sys
from collections import Counter
from pathlib import Path

import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt

from models.layers import layer_names
from pipeline.cache import load_json, save_json, save_png
from pipeline.cli import PipelineError, accepted_names, configure, main, print_config, run_script
from pipeline.outputs import matching_dir, model_dir

# -----------------------------------------------------------------------------
sanity_seed: "[0, 2**63 - 1]" = 0  # seed of the re-initialisation (the randomised target's --reinit_seed)
frequent_concepts: "[1, 1000]" = 5  # most frequent first concepts shown per layer and target
# -----------------------------------------------------------------------------
config = configure(globals(), reads=("example_selection.py", "concept_matching.py"))


def forwarded(script: str) -> list[str]:
    """This command line as the step takes it: the experiment files, and the options it knows as typed
    (--layer and --reinit_seed aside: each run sets its own)."""
    known = set(accepted_names(script)) - {"layer", "reinit_seed"}
    args, out = sys.argv[1:], []
    while args:
        a = args.pop(0)
        if not a.startswith("--"):
            out += [a] if a.endswith(".py") else []
            continue
        value = [] if "=" in a else args[:1]
        args = args if "=" in a else args[1:]
        if a[2:].split("=")[0] in known:
            out += [a] + value
    return out


def step(script: str, **args) -> None:
    argv = forwarded(script) + [a for k, v in args.items() for a in (f"--{k}", str(v))]
    print(f"\n$ python {script} {' '.join(argv)}", flush=True)
    if run_script(script, *argv) != 0:
        raise PipelineError(f"{script} failed (its error is above); the sanity check stops here")


def side(path: Path, top: int) -> dict:
    """One target's layer: how many live neurons, how many names were tested and how many significant,
    whether the layer could be tested at all, its most frequent first concepts."""
    run = load_json(path)
    live = [n for n in run["neurons"] if n["status"] != "dead"]
    ev = run.get("evidence")
    if ev is None:
        raise PipelineError(f"{path} has no test of its names (written by an older concept_matching.py); "
                            f"re-run concept_matching.py")
    first = Counter(n["concepts"][0]["concept"] for n in live if n["concepts"])
    tested = sum(n["tested"] is not None for n in live)
    sig = sum(n["significant"] is True for n in live)
    return {"concepts_json": str(path), "key": run["key"], "live": len(live), "tested": tested, "significant": sig,
            "testable": ev["testable"], "share": sig / tested if tested else None,  # 0 of 0: none
            "named": sum(n["status"] == "ok" for n in live), "first_concepts": first.most_common(top)}


def counted(side: dict) -> str:
    """'3 of 10 names significant (30%)'; a layer with no name tested has no share: '0 of 0 names significant'."""
    share = "" if side["share"] is None else f" ({side['share']:.0%})"
    return f"{side['significant']} of {side['tested']} names significant{share}"


def figure(layers: dict) -> plt.Figure:
    """Left: the significant share of each target per layer; right: their most frequent first concepts."""
    names = list(layers)
    fig, (ax, txt) = plt.subplots(1, 2, figsize=(11, 1.5 + 1.1 * len(names)), width_ratios=[1, 1.3])
    for off, which, color in ((-0.2, "trained", "tab:blue"), (0.2, "randomised", "tab:gray")):
        for i, n in enumerate(names):
            r = layers[n][which]
            share = r["share"] or 0.0  # no name tested: no bar, its 0/0 beside the axis
            ax.barh(i + off, share, height=0.38, color=color, label=which if i == 0 else None)
            ax.text(share + 0.01, i + off, f"{r['significant']}/{r['tested']}", va="center", fontsize=8)
    ax.set_yticks(range(len(names)), names)
    ax.invert_yaxis()
    ax.set_xlim(0, 1.15)
    ax.set_xlabel("share of named neurons whose name is significant (q <= fdr)")
    ax.set_ylabel("layer")
    ax.legend(loc="lower right", fontsize=8)
    txt.axis("off")
    lines = []
    for n in names:
        t, z = (layers[n][w]["first_concepts"] for w in ("trained", "randomised"))
        lines += [f"{n}", f"  {'trained':<26}randomised"]
        lines += [f"  {(f'{a[0]} {a[1]}' if a else ''):<26}{f'{b[0]} {b[1]}' if b else ''}"
                  for a, b in zip(t + [None] * (len(z) - len(t)), z + [None] * (len(t) - len(z)))]
        lines.append("")
    txt.text(0, 1, "most frequent first concepts (neurons)\n\n" + "\n".join(lines), va="top", family="monospace",
             fontsize=8, transform=txt.transAxes)
    fig.suptitle("Model-randomisation sanity check: the trained target against the same one re-initialised",
                 fontsize=10)
    return fig


def run():
    print_config("sanity_check", config)
    names = layer_names(config["layer"])
    if "list" in names:
        raise PipelineError("--layer list prints the layers; name the layers to check, e.g. --layer fc,penultimate")
    rand = {**config, "reinit_seed": sanity_seed}
    for seed in (-1, sanity_seed):  # one forward pass per target for all the layers
        step("example_selection.py", layer=",".join(names), reinit_seed=seed)
        step("concept_matching.py", layer=",".join(names), reinit_seed=seed)
    layers = {}
    for name in names:
        both = {w: side(matching_dir({**c, "layer": name}) / "concepts.json", frequent_concepts)
                for w, c in (("trained", {**config, "reinit_seed": -1}), ("randomised", rand))}
        shared = {c for c, _ in both["trained"]["first_concepts"]} & {c for c, _ in both["randomised"]["first_concepts"]}
        layers[name] = {**both, "shared_first_concepts": sorted(shared)}
    out = model_dir(rand)
    save_json(out / "sanity.json", {"sanity_seed": sanity_seed, "model": config["model"],
                                    "checkpoint": config["checkpoint"], "layers": layers})
    save_png(out / "sanity.png", figure(layers))
    print("\n== Sanity check: significant names of the trained and the re-initialised target")
    for name, r in layers.items():
        t, z = r["trained"], r["randomised"]
        print(f"{name}: trained {counted(t)}, randomised {counted(z)}; first concepts trained "
              f"{', '.join(c for c, _ in t['first_concepts'])}; randomised {', '.join(c for c, _ in z['first_concepts'])}")
    print("outputs:")
    for p in ("sanity.json", "sanity.png"):
        print(f"  {out / p}")


if __name__ == "__main__":
    main(run)
