"""Ablation of the named neurons (docs/ablation.md): do the neurons a describer names for a finding
carry the model's evidence for it?

    python ablation.py config/nih_densenet121.py --layer penultimate
    python ablation.py config/demo.py --ablation_concepts results/demo/.../describers/label_auc/concepts.json

For each finding f (a class with positive images on the held-out split) and the layer of a
concepts.json (MAMMI's, or a rival's from compare_describers.py): N_f, the live neurons one of whose
concepts is f or a word of f, are zeroed, and the mean drop of f's logit over the split's images
positive for f, in units of that logit's SD over the split, is set against the same drop for
`ablation_draws` random sets of |N_f| live neurons: z = (effect - their mean) / their SD. The drop of
the other classes' logits says how specific the neurons are. The penultimate layer under a linear
head (and fc) takes the exact linear shortcut; any other layer forward passes with a hook.
Writes ablation.json, ablation.csv and ablation.png beside the concepts.json. At the fc layer, whose
neurons are the logits themselves, the test says nothing: one line says so, nothing is written (an
earlier table there is removed) and the exit status is 0.
"""
import pipeline.guard  # noqa: F401  (first: Ctrl-C and the console's encoding are handled from here on)

# isort: split
import time

from mammi.ablation import untested
from models import pick_device
from models.target import warn_untrained
from pipeline.ablation import OUTPUTS, ablate, check_draws, discard, held_out
from pipeline.cache import claim, holds_claims
from pipeline.cli import check_stored, configure, main, print_config
from pipeline.outputs import beside_input, find_matching, stored_classes, upstream_constants

# -----------------------------------------------------------------------------
# The held-out split is target_model_perform.py's (its val_split_file / test_split_file).
ablation_concepts = ""          # concepts.json whose named neurons are zeroed (MAMMI's or describers/NAME/'s); default: MAMMI's for these constants
ablation_split: "val | test" = "test"  # held-out split the neurons are zeroed on (step 4 scores the model on test)
ablation_draws: "[10, 10**7]" = 200  # random neuron sets per finding, each of the size of N_f
ablation_seed: "[0, 2**63 - 1]" = 0  # seed of those random sets
batch_size: "[1, 8192]" = 64
num_workers: "[0, 256]" = 2     # data-loading processes
device: "auto | cpu | cuda | cuda:N | mps" = "auto"  # auto = CUDA when present
# -----------------------------------------------------------------------------
config = configure(globals(), reads=("example_selection.py", "concept_matching.py", "target_model_perform.py"))
UPSTREAM = upstream_constants()


@holds_claims
def run():
    path, data, _, ex = find_matching(ablation_concepts, config, "ablation_concepts")
    stage2 = ex["config"]
    check_stored(config, data["config"], UPSTREAM, path)
    beside_input(config, path, stage2["save_root"], "ablation_concepts")
    why = untested(stage2["layer"])
    if why:
        claim(path.parent)
        discard(path)
        print(f"ablation not run: {why}")
        return
    print_config("ablation", config)
    warn_untrained(stage2["model"], stage2.get("untrained", False))  # a reused ablation loads no target
    check_draws(ablation_draws, len(data["neurons"]), len(stored_classes(stage2) or []))
    claim(path.parent)
    t0 = time.time()
    split_file = config[f"{ablation_split}_split_file"]
    got = held_out(stage2, config.given, ablation_split, split_file, batch_size, num_workers, pick_device(device))
    result = ablate(path, data["neurons"], got, ablation_draws, ablation_seed)
    print_result(result)
    print(f"ablation in {time.time() - t0:.1f}s")
    print("outputs:")
    for f in OUTPUTS:
        print(f"  {path.parent / f}")


def print_result(result: dict) -> None:
    print(f"\n== Ablation of the named neurons, {result['layer']} layer ({result['method']}), {result['split']} "
          f"split, {result['draws']} random sets (effects in SDs of the finding's logit)")
    print(f"{'finding':<20} {'neurons':>7} {'images':>6} {'effect':>7} {'random':>15} {'z':>6} {'other':>7}")
    num = lambda v, spec: "-" if v is None else format(v, spec)
    for r in result["findings"]:
        band = "-" if r["random_mean"] is None else f"{r['random_mean']:.3f}±{r['random_sd']:.3f}"
        print(f"{r['finding']:<20} {r['n_neurons']:>7} {r['n_images']:>6} {num(r['effect'], '.3f'):>7} {band:>15} "
              f"{num(r['z'], '.1f'):>6} {num(r['other_classes'], '.3f'):>7}")
    if "note" in result:
        print(f"note: {result['note']}")


if __name__ == "__main__":
    main(run)
