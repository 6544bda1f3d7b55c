"""Step 1: the concept set, every noun of a corpus of radiology reports (README, "The method in one
screen", 1).

    python prepare_mimic_nouns.py --reports data/mimic_cxr/annotation.json
    python prepare_mimic_nouns.py --reports dataset/reports/iu_xray_reports.json --name iu_nouns

Reads R2Gen's annotation.json (MIMIC-CXR or IU X-ray), IU X-ray reports as parsed from the NLM XML
(dataset/reports/iu_xray_reports.json), or a text file with one report per line. Each unique
sentence, in order of first appearance, is cleaned, stripped of caption-noise words and POS-tagged;
each new NN/NNS/NNP token joins the set. Writes {out_dir}/{name}.txt, one concept per line.
"""
import pipeline.guard  # noqa: F401  (first: Ctrl-C and the console's encoding are handled from here on)

# isort: split
from pathlib import Path

from dataset.concepts import nouns, read_reports, sentences
from pipeline.cache import save_bytes, writable
from pipeline.cli import PipelineError, configure, main, print_config

# -----------------------------------------------------------------------------
reports = "data/mimic_cxr/annotation.json"  # R2Gen annotation.json, IU reports json, or .txt (one report per line)
report_split: "train | val | test | all" = "test"  # R2Gen split to read (the release used MIMIC test)
name = "mimic_nouns"            # concept set name: writes {out_dir}/{name}.txt
out_dir = "dataset/concept_set"
use_bundled_tagger = True       # fall back to the tagger shipped in dataset/nltk_data when NLTK has none
# -----------------------------------------------------------------------------
config = configure(globals())


def run():
    print_config("prepare_mimic_nouns", config)
    writable(out_dir)
    texts = read_reports(Path(reports), report_split)
    sents = sentences(texts)
    words = nouns(sents, use_bundled_tagger)
    if not words:
        raise PipelineError(f"{reports}: no nouns found in {len(texts)} reports; is it the right file?")
    out = Path(out_dir) / f"{name}.txt"
    save_bytes(out, "\n".join(words).encode())
    print(f"{len(texts)} reports, {len(sents)} unique sentences, {len(words)} nouns")
    print(f"outputs:\n  {out}")


if __name__ == "__main__":
    main(run)
