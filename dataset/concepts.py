"""Concept sets: radiology-report nouns (step 1; README, "The method in one screen", 1) and reading one back.

Used by prepare_mimic_nouns.py (step 1), concept_matching.py (step 3) and the demo's trainer.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

from core.errors import PipelineError
from core.text import at_most
from dataset.files import read_text

TEMPLATE = "A chest x-ray image of a"  # T: a concept c is embedded as g(T + " " + c), the template alone as g(T)
HERE = Path(__file__).resolve().parent
BUNDLED_NLTK = HERE / "nltk_data"  # NLTK's English tagger, shipped so stage 1 runs offline

# Words that describe the picture rather than its content, dropped before tagging: the words the
# method names from CLIP-Dissect's filter, their plurals and a few of the same kind (README, "Where
# this differs").
NOISE = {"photo", "photos", "image", "images", "picture", "pictures", "view", "views",
         "left", "right", "small", "full", "close", "closeup", "background", "foreground"}
# De-identification placeholders of IU X-ray (xxxx, also glued: 'xxxxpm') and MIMIC (___, which
# the punctuation rule already removes).
PLACEHOLDER = re.compile(r"xxx")
NOUN_TAGS = {"NN", "NNS", "NNP"}


def read_reports(path: Path, split: str) -> list[str]:
    if not path.is_file():
        raise PipelineError(f"reports file {path} not found; pass --reports with R2Gen's annotation.json, "
                            f"dataset/reports/iu_xray_reports.json or a .txt with one report per line")
    if path.suffix == ".txt":
        return [line for line in read_text(path).splitlines() if line.strip()]
    try:
        data = json.loads(read_text(path))
    except json.JSONDecodeError as e:
        raise PipelineError(f"{path}: not valid JSON ({e.msg}, line {e.lineno})") from None
    if isinstance(data, dict) and any(k in data for k in ("train", "val", "test")):  # R2Gen
        splits = [s for s in ("train", "val", "test") if s in data] if split == "all" else [split]
        if any(s not in data for s in splits):
            raise PipelineError(f"{path} has no split {split!r} (has {', '.join(data)}); pass --report_split")
        return [text for s in splits for text in _entries(path, data[s], s, R2GEN_ENTRY, ("report",))]
    if isinstance(data, list) and data:  # IU X-ray, NLM XML fields
        return _entries(path, data, "", IU_ENTRY, ("findings", "impression"))
    raise PipelineError(f"{path}: neither R2Gen annotation.json ({{'train': [...], ...}}) nor IU reports "
                        f"([{{'findings': ..., 'impression': ...}}])")


R2GEN_ENTRY = "{'id': ..., 'report': '...'}"
IU_ENTRY = "{'findings': '...' or null, 'impression': '...' or null}"


def _entries(path: Path, items, split: str, shape: str, fields: tuple[str, ...]) -> list[str]:
    """The non-empty texts of a list of report entries. A malformed entry ends the step with one line
    naming it: R2Gen's report must be a string, IU's findings and impression strings or null."""
    if not isinstance(items, list):
        raise PipelineError(f"{path}: split {split!r} should be a list of entries {shape}, "
                            f"not a {type(items).__name__}")
    optional = len(fields) > 1
    texts = []
    for i, item in enumerate(items):
        got = [item.get(f) for f in fields] if isinstance(item, dict) else None
        if got is None or not all(isinstance(t, str) or (optional and t is None) for t in got):
            raise PipelineError(f"{path}: entry {split}[{i}] is {json.dumps(item)[:80]}, not {shape}; "
                                f"fix or remove it")
        text = " ".join(t for t in got if t)
        if text.strip():
            texts.append(text)
    return texts


def sentences(texts: list[str]) -> list[str]:
    """Unique sentences in order of first appearance."""
    seen = {}
    for text in texts:
        for s in re.split(r"(?<=[.!?])\s+|\n+", text):
            if s.strip():
                seen.setdefault(s.strip(), None)
    return list(seen)


def clean_tokens(sentence: str) -> list[str]:
    s = sentence.lower().replace("'", "")
    s = re.sub(r"[^A-Za-z0-9 \n]", " ", s)
    return [t for t in s.split() if t not in NOISE]


def nouns(sents: list[str], use_bundled_tagger: bool = True) -> list[str]:
    """Each new NN/NNS/NNP token of the sentences, in order of first appearance."""
    import nltk
    if use_bundled_tagger and str(BUNDLED_NLTK) not in nltk.data.path:
        nltk.data.path.append(str(BUNDLED_NLTK))
    try:
        tagger = nltk.tag.PerceptronTagger()
    except LookupError:
        raise PipelineError("NLTK's English POS tagger is missing; install it with: "
                            "python -c \"import nltk; nltk.download('averaged_perceptron_tagger_eng')\" "
                            "(or point NLTK_DATA at a folder holding it)") from None
    found: dict[str, None] = {}
    for s in sents:
        tokens = clean_tokens(s)
        for tok, tag in tagger.tag(tokens) if tokens else []:
            if tag in NOUN_TAGS and len(tok) > 1 and not PLACEHOLDER.search(tok):
                found.setdefault(tok, None)
    return list(found)



def read_concepts(name: str) -> tuple[Path, list[str]]:
    """A concept set by name (dataset/concept_set/NAME.txt) or .txt path: its file and its words.
    Words that differ only in case are one concept to the VLMs (CLIP's and MedCLIP's tokenizers
    lower-case every prompt): they are folded into the lower-case form, in the first one's place."""
    path = Path(name) if name.endswith(".txt") else HERE / "concept_set" / f"{name}.txt"
    if not path.is_file():
        raise PipelineError(f"concept set {path} not found; pass --concept_set NAME (dataset/concept_set/NAME.txt) "
                            f"or a .txt path, or make one with prepare_mimic_nouns.py")
    lines = list(dict.fromkeys(w.strip() for w in read_text(path).splitlines() if w.strip()))
    first: dict[str, int] = {}
    words, folded = [], []
    for w in lines:
        low = w.lower()
        if low in first:
            words[first[low]] = low
            folded.append(w)
        else:
            first[low] = len(words)
            words.append(w)
    if folded:
        print(f"note: {path}: {len(folded)} concept(s) differ from an earlier one only in case "
              f"({at_most(folded, 5)}); folded into their lower-case form")
    if not words:
        raise PipelineError(f"concept set {path} is empty; regenerate it with prepare_mimic_nouns.py")
    return path, words
