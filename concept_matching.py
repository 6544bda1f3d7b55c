"""Step 3: name each neuron by matching its example images with a concept set (README, "The method
in one screen", 3).

    python concept_matching.py config/nih_densenet121.py --layer fc
    torchrun --nproc_per_node 4 concept_matching.py config/nih_densenet121.py --layer fc  # ranks share the images

Reads step 2's examples.json (given, or derived from example_selection.py's constants) and takes
the selection that produced it from what it stored. Each distinct example image is embedded once
by the VLM, each concept once (as a prompt); S(k, c) sums, over neuron k's examples, the cosine of
image and concept, minus the cosine of image and template when adaptive; a neuron's concepts are
those above alpha% of its best score.
Writes image_features.pt, text_*.pt, similarity.pt, concepts.json (+ metrics.json for fc).
"""
import pipeline.guard  # noqa: F401  (first: Ctrl-C and the console's encoding are handled from here on)

# isort: split
import functools
import time
from pathlib import Path

from scipy.stats import false_discovery_control

from core.digests import code_digest
from dataset.concepts import read_concepts
from dataset.probe import load_probe, output_names
from mammi.evidence import name_test, null_bytes, pool_needed, pool_rows, smallest_p, smallest_q
from mammi.method import TEMPLATE, fc_metrics, image_concept_scores, mammi, neuron_concept_scores
from models import pick_device
from models.layers import layer_names
from models.target import warn_untrained
from models.vlm import load_vlm, weights_identity
from phantom.marker import warn_other_world
from pipeline import ranks
from pipeline.cache import cached, claim, holds_claims, load_json, save_json, save_tensors, writable
from pipeline.cli import PipelineError, check_stored, configure, constant_names, main, print_config
from pipeline.features import image_features, text_features
from pipeline.limits import check_memory
from pipeline.outputs import (
    CONCEPTS,
    EXAMPLES,
    METRICS,
    RUN_SETTINGS,
    SIMILARITY,
    beside_input,
    class_neurons,
    examples_dir,
    image_features_path,
    matching_dir,
    matching_key,
    metrics_key,
    read_examples,
    stored_classes,
    text_features_path,
)
from pipeline.text_metrics import cosine_metrics

# -----------------------------------------------------------------------------
examples = ""                   # step 2's examples.json; default: the one example_selection.py's constants name
model_clip: "medclip | medclip-vit | open_clip:NAME | phantom" = "medclip"  # the VLM; NAME: an open_clip model or config .json
clip_weights = ""               # VLM weights: folder (medclip, phantom), checkpoint or pretrained tag (open_clip)
concept_set = "mimic_nouns"     # a name in dataset/concept_set/ or a path to a .txt, one concept per line
template_ver: "base | no" = "base"  # base: prompt = template + concept; no: prompt = concept alone
template = TEMPLATE             # T of the method: "A chest x-ray image of a"
adaptive = True                 # subtract cos(image, template) from every score (needs template_ver base)
alpha: "[0, 100)" = 95.0        # keep concepts with S > alpha% of the neuron's best S
batch_size: "[1, 8192]" = 64
num_workers: "[-1, 256]" = -1   # data-loading processes; -1 = one per core (shared by torchrun's ranks)
device: "auto | cpu | cuda | cuda:N | mps" = "auto"  # auto = CUDA when present (torchrun: each rank its own GPU)
metric_encoders = "medclip,clip-vit-b-16,all-mpnet-base-v2,all-minilm-l6-v2"  # text encoders for the fc cosine
medclip_weights = ""            # MedCLIP folder for the fc cosine metric; default pretrained/medclip-vit
null_pool: "[1, 10**7]" = 2000  # significance: the probing images random example sets are drawn from (all when fewer)
null_draws: "[100, 10**7]" = 1000  # random example sets per example count; the smallest p is 1/(null_draws + 1)
fdr: "(0, 1)" = 0.05            # a neuron is significant when its Benjamini-Hochberg q <= fdr
null_seed: "[0, 2**63 - 1]" = 0  # seed of the pool (when drawn) and of the random example sets
# -----------------------------------------------------------------------------
config = configure(globals(), reads=("example_selection.py",))
CODE = code_digest("concept_matching.py")
# Step-2 constants that decide its examples (its run settings do not).
STAGE2 = [k for k in constant_names("example_selection.py") if k not in RUN_SETTINGS]


@holds_claims
def run():
    dev = ranks.start(pick_device(device))  # under torchrun: join the others, rank 0 alone prints
    if adaptive and template_ver != "base":
        raise PipelineError("--adaptive yes subtracts the template's score and needs --template_ver base; "
                            "pass --adaptive no with --template_ver no")
    ex_json = Path(examples) if examples else examples_dir(config) / EXAMPLES
    if not ex_json.is_file():
        raise PipelineError(f"{ex_json} not found; run example_selection.py with the same experiment file and "
                            f"--layer (or pass --examples PATH)")
    stored = read_examples(ex_json)
    ex_cfg, neurons = stored["config"], stored["neurons"]
    beside_input(config, ex_json, ex_cfg["save_root"], "examples")
    check_stored(config, ex_cfg, STAGE2, ex_json)
    config.update({k: ex_cfg[k] for k in STAGE2 if k in ex_cfg})  # what produced the examples, not the defaults
    print_config("concept_matching", config)
    warn_untrained(ex_cfg["model"], ex_cfg.get("untrained", False))  # its examples are an untrained target's
    img_path, txt_path, out_dir = image_features_path(config), text_features_path(config), matching_dir(config, ex_json)
    if ranks.is_main():  # under torchrun the other ranks only help embed the images; rank 0 writes
        writable(img_path.parent)
        writable(txt_path.parent)
        claim(out_dir)
    probe_names = check_probe_set(ex_json, ex_cfg)
    warn_other_world(model_clip, ex_cfg["data_root"], probe_names)
    concept_path, concepts = read_concepts(concept_set)
    vlm = functools.cache(lambda: load_vlm(model_clip, clip_weights, dev))
    t0 = time.time()

    # Image features: every distinct example image and the significance test's pool (README, "How far
    # to trust a name") once, cached per probing set and VLM, grown as needed.
    ids = list(dict.fromkeys(e["image_id"] for n in neurons for e in n["examples"]))
    pool = [probe_names[r] for r in pool_rows(len(probe_names), null_pool, null_seed)] if ids else []  # no live neuron: no test
    sizes = [len(n["examples"]) for n in neurons if n["examples"]]
    if sizes:  # the null's draws are held at once: refused now, before the images are embedded, if they cannot be
        check_memory("null_draws", null_draws, null_bytes(len(pool), max(sizes), len(set(sizes))),
                     f"{null_draws} random example sets of up to {max(sizes)} of the pool's {len(pool)} images")
    feats, img_key, new = image_features(config, ex_cfg, ids + pool, vlm, batch_size, num_workers)
    if not ranks.is_main():
        return
    img_feats, pool_feats = feats[:len(ids)], feats[len(ids):]
    print(f"image features {tuple(img_feats.shape)} and the null pool's {len(pool)} ({new} new) in "
          f"{time.time() - t0:.1f}s")

    # Text features: each concept as one prompt, batched without changing any embedding.
    t1 = time.time()
    text = text_features(config, concept_path, concepts, vlm)
    txt_key = text["key"]
    print(f"text features {tuple(text['features'].shape)} in {time.time() - t1:.1f}s")

    # Scores and concepts.
    if not ids:  # no neuron has an example: all scores are zero, each neuron is dead or has none
        img_feats = pool_feats = text["features"][:0]
    row = {i: r for r, i in enumerate(ids)}
    rows = [{**n, "examples": [row[e["image_id"]] for e in n["examples"]]} for n in neurons]
    got = mammi(rows, img_feats, text["features"], text["template"] if adaptive else None, concepts, alpha)
    S, named = got["S"], got["neurons"]
    result_key = matching_key(stored["key"], img_key, txt_key, config, CODE)
    # Evidence for each name (docs/evidence.md): would random images, named as the examples are, score as well?
    t2 = time.time()
    s_pool = image_concept_scores(pool_feats, text["features"], text["template"] if adaptive else None)
    evidence = test_names(named, rows, got["s"], s_pool, {c: i for i, c in enumerate(concepts)})
    print(f"test in {time.time() - t2:.1f}s")
    cfg = {**config, "concept_set_file": str(concept_path), "n_concepts": len(concepts), "examples": str(ex_json),
           "class_names": stored_classes(ex_cfg)}
    save_tensors(out_dir / SIMILARITY, {"key": result_key, "similarity": S, "concepts": concepts,
                                             "neurons": [n["neuron"] for n in neurons]})
    save_json(out_dir / CONCEPTS, {"key": result_key, "examples_key": stored["key"], "config": cfg,
                                          "evidence": evidence, "neurons": named})
    counts = {st: sum(n["status"] == st for n in named) for st in ("ok", "none", "dead")}
    print(f"neurons named: {counts['ok']}; none above zero: {counts['none']}; dead: {counts['dead']}")
    written = [img_path, txt_path, out_dir / SIMILARITY, out_dir / CONCEPTS]
    classes = cfg["class_names"]
    scored = [(named[j], c) for j, c in class_neurons(classes, len(named))]
    if config["layer"] == "fc" and not scored:
        print(f"note: the {len(named)} fc neurons have no class names to score against "
              f"(example_selection.py --classes FILE names them); no metrics.json")
    elif config["layer"] == "fc":
        # The cosine metric loads up to four text encoders: reuse it while nothing behind it changed.
        m_key = metrics_key(result_key, metric_encoders, weights_identity("medclip", medclip_weights))
        metrics = cached(out_dir / METRICS, m_key, load_json)
        if metrics is None:
            metrics = fc_metrics([[c["concept"] for c in n["concepts"]] for n, _ in scored], [c for _, c in scored])
            metrics["cosine"] = cosine_metrics([n for n, _ in scored], [c for _, c in scored], metric_encoders,
                                               medclip_weights)
            save_json(out_dir / METRICS, {"key": m_key, "config": cfg, **metrics})
        else:
            print(f"reusing {out_dir / METRICS}")
        print_fc_table(named, output_names(classes, len(named)), metrics)
        written.append(out_dir / METRICS)
    print("outputs:")
    for p in written:
        print(f"  {p}")


def test_names(named: list[dict], rows: list[dict], s, s_pool, column: dict) -> dict:
    """Each named neuron's name against the naming replayed on random n-subsets of the pool; fills each
    record's tested, m, p, q, significant, null_p95 (and each concept's p) and returns the layer's summary.
    When no neuron could reach q <= fdr, says so and tests nothing."""
    for n in named:
        n.update(tested=None, m=None, p=None, q=None, significant=None, null_p95=None)
        for c in n["concepts"]:
            c["p"] = None
    test = [j for j, n in enumerate(named) if n["status"] == "ok"]
    sizes = [len(rows[j]["examples"]) for j in test]
    summary = {"testable": False, "tested": 0, "significant": 0, "fdr": fdr, "draws": null_draws,
               "pool": s_pool.shape[0], "p_min": None, "pool_needed": None}
    if not test:
        print("significance: no neuron has a name to test")
        return summary
    p_min = [smallest_p(s_pool.shape[0], n, null_draws) for n in sizes]
    summary["p_min"] = min(p_min)
    if smallest_q(p_min) > fdr:
        need = pool_needed(sizes, null_draws, fdr)
        summary["pool_needed"] = need
        print(f"significance: not testable: with a pool of {s_pool.shape[0]} images, {null_draws} draws and "
              f"{min(sizes)}-{max(sizes)} examples per neuron, the smallest p is {min(p_min):.3g} and the smallest "
              f"q {smallest_q(p_min):.3g} > fdr {fdr:g}; " + (
                  f"a probing set of at least {need} images (with as many examples per neuron) would make it "
                  f"testable" if need else "no probing set would, with these draws (raise --null_draws)"))
        return summary
    # S(k, c) in float64, summed as the null's draws are, so the neuron's own example set ties with itself
    S = neuron_concept_scores(s, [rows[j]["examples"] for j in test])
    scores = [[S[i, column[c["concept"]]].item() / size for c in named[j]["concepts"]]
              for i, (j, size) in enumerate(zip(test, sizes))]
    p, p95 = name_test(scores, sizes, s_pool, null_draws, null_seed)
    q = false_discovery_control([pk[0] for pk in p], method="bh")
    for j, sc, pk, qk, c95 in zip(test, scores, p, q, p95):
        n = named[j]
        n.update(tested=n["concepts"][0]["concept"], m=sc[0], p=pk[0], q=float(qk), significant=bool(qk <= fdr),
                 null_p95=c95)
        for c, pc in zip(n["concepts"], pk):
            c["p"] = pc
    summary.update(testable=True, tested=len(test), significant=sum(named[j]["significant"] for j in test))
    print(f"significant names: {summary['significant']} of {len(test)} named neurons (q <= {fdr:g}; "
          f"H0: the examples are a random subset of the probing set)")
    return summary


def check_probe_set(ex_json: Path, ex_cfg: dict) -> list[str]:
    """The examples name images by file: if the probing set changed since step 2 (images replaced,
    re-encoded, another split file), they are no longer the images that activated each neuron."""
    try:
        probe = load_probe(ex_cfg)
    except PipelineError as e:
        raise PipelineError(f"cannot re-read the probing set {ex_json} was selected from ({e}); restore it, "
                            f"or re-run example_selection.py") from None
    if probe.data_key != ex_cfg["data_key"]:
        raise PipelineError(f"the images or split file under {ex_cfg['data_root']} changed since {ex_json} was "
                            f"selected from them; re-run example_selection.py (same experiment file), then this step")
    return probe.names


def print_fc_table(named, classes, metrics):
    print(f"{'class':<20} concepts")
    for n, name in zip(named, classes):
        got = ", ".join(c["concept"] for c in n["concepts"]) or f"({n['status']})"
        print(f"{name:<20} {'*' if name.lower() in got.split(', ') else ' '} {got[:90]}")
    m = metrics
    print(f"hit rate {m['hit_rate']['mean']:.3f} ({round(m['hit_rate']['mean'] * m['hit_rate']['n'])}/{m['hit_rate']['n']}); "
          f"precision {m['precision']['mean']:.3f}±{m['precision']['se']:.3f}; recall {m['recall']['mean']:.3f}; "
          f"F1 {m['f1']['mean']:.3f}±{m['f1']['se']:.3f}")
    for enc, v in m["cosine"].items():
        print(f"  cosine[{enc}]: " + (f"{v['mean']:.3f}±{v['se']:.3f}" if "mean" in v else f"unavailable ({v['error']})"))


def run_layers():
    """Each layer of --layer fc,penultimate in turn, as separate runs would (sharing the caches)."""
    names = layer_names(config["layer"])
    if len(names) > 1 and examples:
        raise PipelineError("--examples names the examples of one layer; drop it, or pass a single --layer")
    for name in names:
        config["layer"] = name
        if "layer" in config.given:
            config.given["layer"] = name
        run()


if __name__ == "__main__":
    try:
        main(run_layers, torchrun=True)
    finally:
        ranks.finish()
