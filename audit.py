"""The shortcut audit (docs/audit.md): for each class, the named concepts its output rests on, and which
of them may be shortcuts - concepts that are not the finding yet carry the class's logit.

    python audit.py config/demo.py --layer penultimate
    python audit.py config/demo.py --audit_concepts results/demo/.../describers/label_auc/concepts.json

For each class with positive images on the held-out split and each concept named at the layer of a
concepts.json (MAMMI's, or a rival's): the concept's neurons are zeroed together and the mean fall of
the class's logit over its positives is its part of the logit; over the evidence for the class (the sum
of the channels' positive falls, each channel zeroed alone) its share. The same fall for `audit_draws` random
sets of as many live neurons gives z, as ablation.py's. A concept that is not one of the class's own
words, carries a share above `audit_share` and has z >= `audit_z` is flagged. For each flagged concept
(and each word of `audit_stratify`, any word of the concept set) the class's AUROC on its positives the
VLM sees the concept in, against those it does not, each against all the negatives, with bootstrap
intervals: hidden stratification.
Writes audit.json, audit.csv and audit.png beside the concepts.json.
"""
import pipeline.guard  # noqa: F401  (first: Ctrl-C and the console's encoding are handled from here on)

# isort: split
import functools
import math
import time

import torch

from core.digests import code_digest, file_digest
from dataset.concepts import read_concepts
from dataset.probe import label_key
from mammi.ablation import finding_stats, hook_drops, linear_drops, live_neurons, positives, random_sets
from mammi.audit import concept_neurons, concept_row, evidence_for, own_words, seen, stratified_auroc
from models import pick_device
from models.target import warn_untrained
from models.vlm import load_vlm
from pipeline.ablation import held_out
from pipeline.audit import figure, number, stratum_words, write_audit
from pipeline.cache import cached, claim, holds_claims, load_json
from pipeline.cli import PipelineError, configure, main, print_config
from pipeline.features import image_features, text_features, vlm_id
from pipeline.outputs import AUDIT, AUDIT_CSV, AUDIT_PNG, audit_key, given_matching, upstream_constants

# -----------------------------------------------------------------------------
# The held-out split is target_model_perform.py's (its val_split_file / test_split_file).
audit_concepts = ""             # concepts.json audited (MAMMI's or a rival's); default: MAMMI's for these constants
audit_split: "val | test" = "test"  # held-out split the logits are read on
audit_share: "[0, 1]" = 0.1     # a concept not the class's own with more than this share of the evidence ...
audit_z: "[0, 1000]" = 2.0      # ... and its neurons' z at least this is flagged as a possible shortcut
audit_draws: "[10, 10**6]" = 200  # random neuron sets per concept, each of as many neurons
audit_seed: "[0, 2**63 - 1]" = 0  # seed of those sets and of the bootstrap
audit_stratify = ""             # words of the concept set stratified for every class besides the flagged concepts,
                                # comma-separated (a word no neuron carries too: the VLM sees it or not)
audit_seen_top: "[1, 10**6]" = 20  # the VLM sees a concept in an image among its this many best-scored
audit_boot: "[100, 10**6]" = 1000  # bootstrap resamples of each AUROC's 95% interval
audit_top: "[1, 100]" = 5       # concepts per class in the printed table and the figure
batch_size: "[1, 8192]" = 64
num_workers: "[0, 256]" = 2     # data-loading processes
device: "auto | cpu | cuda | cuda:N | mps" = "auto"  # auto = CUDA when present
# -----------------------------------------------------------------------------
config = configure(globals(), reads=("example_selection.py", "concept_matching.py", "target_model_perform.py"))
UPSTREAM = upstream_constants()
# what step 3 scored with, read from the concepts.json (else these constants): the VLM's eyes for `seen`
MATCHING = ("model_clip", "clip_weights", "concept_set", "template_ver", "template", "adaptive")


@holds_claims
def run():
    path, data, _, ex = given_matching(audit_concepts, config, "audit_concepts", UPSTREAM)
    stage2 = ex["config"]
    if stage2["layer"] == "fc":
        raise PipelineError(f"{path} names the fc layer, whose neurons are the logits themselves: a class's "
                            f"output rests on its own neuron alone; audit a layer below it (--layer penultimate)")
    members = concept_neurons(data["neurons"])
    if not members:
        raise PipelineError(f"{path}: no live neuron of the {stage2['layer']} layer is named, so no concept to "
                            f"audit; run concept_matching.py on a layer with named neurons")
    matching = {k: data["config"].get(k, config[k]) for k in MATCHING}
    concept_path, concepts = read_concepts(matching["concept_set"])
    stratify = [w.strip() for w in audit_stratify.split(",") if w.strip()]
    unknown = [w for w in stratify if w not in concepts]
    if unknown:
        raise PipelineError(f"--audit_stratify: {', '.join(unknown)} is not in the concept set {concept_path} step 3 "
                            f"matched {path} against; name words of that set, comma-separated")
    print_config("audit", config)
    warn_untrained(stage2["model"], stage2.get("untrained", False))
    claim(path.parent)
    t0 = time.time()
    dev = pick_device(device)
    split_file = config[f"{audit_split}_split_file"]
    got = held_out(stage2, config.given, audit_split, split_file, batch_size, num_workers, dev, "audit_split")
    eyes = {**matching, **vlm_id(matching), "concept_set": file_digest(concept_path)}
    key = audit_key(path, got["activations_key"], config, eyes, code_digest("audit.py"))
    result = cached(path.parent / AUDIT, key, loader=load_json)
    if result is not None:
        print(f"reusing {path.parent / AUDIT}")
    else:
        rows, method = rank_concepts(data["neurons"], members, got)
        flagged = {(r["class"], c["concept"]) for r in rows for c in r["concepts"] if c["flagged"]}
        strata = stratify_classes(got, matching, (concept_path, concepts), stratify, flagged, rows)
        result = {"key": key, "target": stage2["model"], "checkpoint": stage2["checkpoint"], "layer": stage2["layer"],
                  "split": audit_split, "images": got["what"], "concepts": str(path),
                  "concepts_digest": file_digest(path), "method": method, "share_min": audit_share, "z_min": audit_z,
                  "draws": audit_draws, "seed": audit_seed, "boot": audit_boot, "seen_top": audit_seen_top,
                  "classes": [{**r, "stratified": strata[r["class"]]} for r in rows]}
        write_audit(path.parent, result, figure(result, audit_top))
    print_result(result)
    print(f"audit in {time.time() - t0:.1f}s")
    print("outputs:")
    for f in (AUDIT, AUDIT_CSV, AUDIT_PNG):
        print(f"  {path.parent / f}")


def rank_concepts(records: list[dict], members: dict[str, list[int]], got: dict) -> tuple[list[dict], str]:
    """Each class with positives: every named concept with its neurons' share of the evidence for the class
    and their z, by share; and how the falls were computed (linear: the head's weights; hook: forward
    passes, where z is computed only for the concepts it can flag: not own, share above audit_share)."""
    t = got["tensors"]()
    pos = positives(got["labels"])
    sd = t["logits"].std(0, correction=1)
    live = live_neurons(records)
    linear = t["weight"] is not None

    def drops(sets):
        if linear:
            return linear_drops(t["acts"], t["weight"], pos, sets)
        return hook_drops(t["net"], got["layer"], got["loader"](), pos, sets, got["dev"])

    evidence = evidence_for(drops([[k] for k in range(t["acts"].shape[1])]))
    names = list(members)
    falls = drops([members[c] for c in names])  # [concepts, C]
    own = {f: {c: label_key(c) in own_words(got["classes"][f]) for c in names} for f in got["findings"]}

    def row(i, c, f, z):
        return concept_row(float(falls[i, f]), float(evidence[f]), z, own[f][c], audit_share, audit_z)

    # the flag rule with z out of the way: the concepts only their z can keep from a flag
    candidate = [any(row(i, c, f, math.inf)["flagged"] for f in got["findings"]) for i, c in enumerate(names)]
    effects = {c: drops([members[c]] + random_sets(live, len(members[c]), audit_draws, audit_seed).tolist()) / sd
               for i, c in enumerate(names) if linear or candidate[i]}
    rows = []
    for f in got["findings"]:
        concepts = []
        for i, c in enumerate(names):
            z = finding_stats(effects[c], f, [])["z"] if c in effects else None
            concepts.append({"concept": c, "n_neurons": len(members[c]), **row(i, c, f, z)})
        concepts.sort(key=lambda c: -(c["share"] if c["share"] is not None else float("-inf")))
        rows.append({"class": got["classes"][f], "n_positives": int(pos[:, f].sum()), "evidence": float(evidence[f]),
                     "concepts": concepts})
    return rows, "linear" if linear else "hook"


def stratify_classes(got: dict, matching: dict, concept_set: tuple, stratify: list[str], flagged: set,
                     rows: list[dict]) -> dict:
    """Per class, the stratified AUROC of each concept flagged for it and each of --audit_stratify."""
    wanted = {r["class"]: stratify + [c for k, c in sorted(flagged) if k == r["class"] and c not in stratify]
              for r in rows}
    words = sorted({c for cs in wanted.values() for c in cs})
    if not words:
        return {r["class"]: [] for r in rows}
    sees = dict(zip(words, vlm_sees(got, matching, concept_set, words).T.numpy()))
    logits = got["tensors"]()["logits"].numpy()
    out = {}
    for f in got["findings"]:
        cls = got["classes"][f]
        out[cls] = [{"concept": c, "seen_in": int(sees[c].sum()),
                     **stratified_auroc(logits[:, f], got["labels"][:, f], sees[c], audit_boot, audit_seed)}
                    for c in wanted[cls]]
    return out


def vlm_sees(got: dict, matching: dict, concept_set: tuple, words: list[str]) -> torch.Tensor:
    """[N, W] bool over the held-out images: the words among each image's audit_seen_top concepts, as step
    3's VLM scores the concept set (step 3's text cache; the images' features cached per split)."""
    c = {**got["config"], **matching}
    vlm = functools.cache(lambda: load_vlm(c["model_clip"], c["clip_weights"], got["dev"]))  # only if a cache lacks
    img, _, _ = image_features(c, c, got["image_ids"], vlm, batch_size, num_workers)
    concept_path, concepts = concept_set  # (path, words) as run() read them
    text = text_features(c, concept_path, concepts, vlm)
    index = {w: i for i, w in enumerate(concepts)}
    missing = [w for w in words if w not in index]
    if missing:
        raise PipelineError(f"{', '.join(missing)} not in the concept set {concept_path} step 3 matched against; "
                            f"re-run concept_matching.py, or pass --concept_set with the set it used")
    template = text["template"] if c["adaptive"] else None
    return seen(img, text["features"], template, [index[w] for w in words], audit_seen_top)


def print_result(result: dict) -> None:
    print(f"\n== Shortcut audit, {result['layer']} layer ({result['method']}), {result['split']} split: each class's "
          f"top {audit_top} concepts by share of the evidence for it (z: against {result['draws']} random sets; "
          f"* flagged: not the class's own, share > {result['share_min']:g}, z >= {result['z_min']:g})")
    for r in result["classes"]:
        top = ", ".join(f"{'*' if c['flagged'] else ''}{c['concept']} {number(c['share'], '.2f')} "
                        f"(z {number(c['z'], '.1f')})" for c in r["concepts"][:audit_top])
        print(f"{r['class']:<20} {top}")
        for s in r["stratified"]:
            print(f"{'':<20}   {s['concept']}: {stratum_words(s)}")
    for r in result["classes"]:
        flags = [c["concept"] for c in r["concepts"] if c["flagged"]]
        print(f"flagged for {r['class']}: {', '.join(flags) if flags else 'none'}")


if __name__ == "__main__":
    main(run)
