"""Step 4: how well the target classifier does (README, "Where this differs", evaluation).

    python target_model_perform.py config/nih_densenet121.py
    python target_model_perform.py config/demo.py --device cpu

Per class: AUROC and AUPRC of the sigmoid outputs on the test split, and the F1-maximising threshold
on the val split (the visualisation predicts a class when its probability reaches that threshold).
The logits come from stage 2's cache when example_selection.py already ran on that split with this
checkpoint and preprocessing; otherwise from one batched pass per split. The classes are step 2's
(its --classes, the model's names, the probing CSV's label columns or NIH's), and each split's labels
join them by name; a class without ground truth on a split gets no threshold or AUROC. A CSV probing
set (--labels) is its own val and test set unless val_split_file and test_split_file name other CSVs.
Writes Threshold.csv, TestEval.csv, {Val,Test}{Probs,Labels}.csv and roc_curves.png, then eval.json: the
key of what produced them, the target the thresholds were fitted to and each file's digest, which
visualization.py checks before it predicts with them.
"""
import pipeline.guard  # noqa: F401  (first: Ctrl-C and the console's encoding are handled from here on)

# isort: split
import time

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import torch
from sklearn.metrics import roc_curve

from core.digests import file_digest
from dataset.boxes import disease_colour
from dataset.nih import model_input_args
from dataset.probe import MISSING, align_labels, load_probe, output_names, resolve_classes
from mammi.metrics import auroc_auprc, best_thresholds, known
from models import pick_device
from models.target import RANDOM, checkpoint_of, model_classes, preprocessing, target_as_probed, warn_untrained
from pipeline.cache import claim, holds_claims, save_csv, save_json, save_png
from pipeline.cli import PipelineError, configure, main, print_config
from pipeline.evaluation import forward_logits, held_out_split, stage2_logits
from pipeline.outputs import (
    EVAL_FILES,
    EVAL_RECORD,
    LABELS,
    PROBS,
    ROC_CURVES,
    TEST_EVAL,
    THRESHOLDS,
    eval_dir,
    eval_key,
    eval_split,
    target_key,
)

# -----------------------------------------------------------------------------
# The target, its checkpoint, preprocessing, image folder and save_root are example_selection.py's.
val_split_file = ""             # val split file; default: {data_root}/../val_official.txt, else NIH's (a CSV probing set: that CSV)
test_split_file = ""            # test split file; default: {data_root}/../test_official.txt, else NIH's (a CSV probing set: that CSV)
batch_size: "[1, 8192]" = 64
num_workers: "[0, 256]" = 2     # data-loading processes
device: "auto | cpu | cuda | cuda:N | mps" = "auto"  # auto = CUDA when present
# -----------------------------------------------------------------------------
config = configure(globals(), reads=("example_selection.py",))


@holds_claims
def run():
    print_config("target_model_perform", config)
    claim(eval_dir(config))
    model = config["model"]
    if config["labels"] == "none":
        raise PipelineError("target_model_perform.py scores the model against labels, and --labels none has none; "
                            "pass --labels with a CSV, or NIH split files")
    prep = preprocessing(config)
    ckpt = checkpoint_of(model, config["checkpoint"])
    warn_untrained(model, ckpt == RANDOM)  # here too when step 2's logits are reused and nothing loads it
    dev = pick_device(device)
    net, classes = None, None
    # A CSV probing set names the classes step 2 named (its label columns, unless --classes or the model
    # name them); each split's labels join those, whatever columns, in whatever order, its own CSV has.
    probed = load_probe(config) if config["labels"] else None
    out, data = {}, {}
    for split, override in (("val", val_split_file), ("test", test_split_file)):
        t0 = time.time()
        c, probe = held_out_split(config, split, override, probed)
        if classes is None:
            classes, source = resolve_classes(config["classes"], model_classes(model), probed or probe)
        labels = align_labels(probe, classes, source)
        if labels is None:
            raise PipelineError(f"the {probe.what} has no label columns to score the model against; "
                                f"pass a CSV with label columns")
        # a CSV serving as val or test is looked for under the split step 2 probed it as
        found = stage2_logits(c, c["split"], c["split_file"], ckpt, probe.data_key)
        if found is not None:
            logits, where = found
            print(f"{split}: reusing the logits of {where}")
        else:
            if net is None:  # as step 2 ran it: re-initialised too when reinit_seed says so
                net = target_as_probed({**config, **prep, "checkpoint": ckpt}, True, len(classes))[0].to(dev)
            logits = forward_logits(net, probe.paths, prep["resize"], prep["crop"], batch_size, num_workers, dev,
                                    desc=f"{model} {split}", **model_input_args(prep))
        if logits.shape[1] != len(classes):
            raise PipelineError(f"--model {model} has {logits.shape[1]} outputs but there are {len(classes)} class "
                                f"names {source}; pass --classes FILE with {logits.shape[1]} names in output order")
        probs = torch.sigmoid(logits).numpy().astype(np.float64)
        out[split] = (probe.names, labels, probs)
        data[split] = probe.data_key
        print(f"{split}: {len(probe.names)} images in {time.time() - t0:.1f}s")

    classes = output_names(classes, len(classes))
    thr = best_thresholds(out["val"][1], out["val"][2])
    names, labels, probs = out["test"]
    auc, ap = auroc_auprc(labels, probs)
    for what, values, split in (("threshold (no val positives)", thr, "val"), ("AUROC (one outcome only)", auc, "test")):
        if np.isnan(values).any():
            print(f"note: no {what} on {split} for {', '.join(c for c, v in zip(classes, values) if np.isnan(v))}")

    d = eval_dir(config)
    # eval.json, which the thresholds' reader checks, is removed with every output of the run before, and
    # written last: a write failing midway leaves no file of that run beside this one's, and no eval.json
    for f in (EVAL_RECORD,) + EVAL_FILES:
        (d / f).unlink(missing_ok=True)
    save_csv(d / THRESHOLDS, ["label", "bestthr"], [[c, f"{t:.6g}"] for c, t in zip(classes, thr)])
    save_csv(d / TEST_EVAL, ["label", "auc", "auprc"],
             [[c, f"{a:.6g}", f"{p:.6g}"] for c, a, p in zip(classes, auc, ap)])
    for split, (n, y, p) in out.items():
        tag = split.capitalize()
        save_csv(d / PROBS.format(split=tag), ["image_id"] + classes,
                 [[i] + [f"{v:.9g}" for v in row] for i, row in zip(n, p)])
        save_csv(d / LABELS.format(split=tag), ["image_id"] + classes,
                 [[i] + ["" if v == MISSING else int(v) for v in row] for i, row in zip(n, y)])
    save_png(d / ROC_CURVES, roc_figure(labels, probs, auc, classes, eval_split(config)))
    target = target_key({**config, **prep, "checkpoint": ckpt})
    save_json(d / EVAL_RECORD, {"key": eval_key(target, data, classes), "target": target,
                                "config": {**config, **prep, "checkpoint": str(ckpt or "")},
                                "files": {f: file_digest(d / f) for f in EVAL_FILES}})

    print(f"{'class':<20} {'AUROC':>7} {'AUPRC':>7} {'val thr':>8}")
    for c, a, p, t in zip(classes, auc, ap, thr):
        print(f"{c:<20} {a:7.4f} {p:7.4f} {t:8.4f}")
    print(f"mean AUROC {np.nanmean(auc):.4f} over {int((~np.isnan(auc)).sum())} classes "
          f"(mean AUPRC {np.nanmean(ap):.4f}), {len(names)} test images")
    print("outputs:")
    for f in EVAL_FILES + (EVAL_RECORD,):
        print(f"  {d / f}")


def roc_figure(labels, probs, auc, classes, split="test") -> plt.Figure:
    """The ROC curves on one axes, each in its disease's colour, AUROC in the legend; split names the
    images they were measured on (eval_split: what served as the test set)."""
    fig, ax = plt.subplots(figsize=(8.5, 6), dpi=100)
    ax.plot([0, 1], [0, 1], ls="--", lw=1, color="0.6", label="chance")
    for j, c in enumerate(classes):
        if np.isnan(auc[j]):
            ax.plot([], [], lw=2.5, color=np.array(disease_colour(c)) / 255, label=f"{c} (n/a)")
            continue
        fpr, tpr, _ = roc_curve(*known(labels, probs, j))
        ax.plot(fpr, tpr, lw=2.5, color=np.array(disease_colour(c)) / 255, label=f"{c} ({auc[j]:.3f})")
    ax.set(xlim=(-0.01, 1.01), ylim=(-0.01, 1.02), xlabel="false positive rate", ylabel="true positive rate",
           title=f"ROC on the {split} split: mean AUROC {np.nanmean(auc):.3f}, {len(labels)} images")
    ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1), title="class (AUROC)", frameon=False)
    return fig


if __name__ == "__main__":
    main(run)
