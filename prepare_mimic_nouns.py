"""Stage 1: the concept set, every noun of a corpus of radiology reports (SPEC, stage 1).

Reads R2Gen's annotation.json (MIMIC-CXR or IU X-ray), IU X-ray reports as parsed from the NLM XML
(dataset/reports/iu_xray_reports.json), or a text file with one report per line. Each unique
sentence, in order of first appearance, is cleaned, stripped of caption-noise words and POS-tagged;
each new NN/NNS/NNP token joins the set. Writes {out_dir}/{name}.txt, one concept per line.
"""
import json
import re
from pathlib import Path

from cache import save_bytes
from cli import PipelineError, configure, main, print_config

# -----------------------------------------------------------------------------
reports = "data/mimic_cxr/annotation.json"  # R2Gen annotation.json, IU reports json, or .txt (one report per line)
report_split = "test"           # R2Gen split to read: train | val | test | all (the release used MIMIC test)
name = "mimic_nouns"            # concept set name: writes {out_dir}/{name}.txt
out_dir = "dataset/concept_set"
use_bundled_tagger = True       # fall back to the tagger shipped in dataset/nltk_data when NLTK has none
# -----------------------------------------------------------------------------
config = configure(globals())

# Words that describe the picture rather than its content, dropped before tagging (CLIP-Dissect's
# caption-noise filter, as the release applied it; SPEC stage 1 step 2).
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
        return [line for line in path.read_text().splitlines() if line.strip()]
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise PipelineError(f"{path}: not valid JSON ({e.msg}, line {e.lineno})") from None
    if isinstance(data, dict) and any(k in data for k in ("train", "val", "test")):  # R2Gen
        splits = [s for s in ("train", "val", "test") if s in data] if split == "all" else [split]
        if any(s not in data for s in splits):
            raise PipelineError(f"{path} has no split {split!r} (has {', '.join(data)}); pass --report_split")
        return [item["report"] for s in splits for item in data[s] if item.get("report")]
    if isinstance(data, list) and data and "findings" in data[0]:  # IU X-ray, NLM XML fields
        return [" ".join(t for t in (r.get("findings"), r.get("impression")) if t) for r in data]
    raise PipelineError(f"{path}: neither R2Gen annotation.json ({{'train': [...], ...}}) nor IU reports "
                        f"([{{'findings': ..., 'impression': ...}}])")


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


def nouns(sents: list[str]) -> list[str]:
    import nltk
    if use_bundled_tagger:
        nltk.data.path.append(str(Path(__file__).parent / "dataset" / "nltk_data"))
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


def run():
    print_config("prepare_mimic_nouns", config)
    texts = read_reports(Path(reports), report_split)
    sents = sentences(texts)
    words = nouns(sents)
    if not words:
        raise PipelineError(f"{reports}: no nouns found in {len(texts)} reports; is it the right file?")
    out = Path(out_dir) / f"{name}.txt"
    save_bytes(out, "\n".join(words).encode())
    print(f"{len(texts)} reports, {len(sents)} unique sentences, {len(words)} nouns")
    print(f"outputs:\n  {out}")


if __name__ == "__main__":
    main(run)
