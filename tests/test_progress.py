"""The phases that take minutes on realistic input show a progress bar on stderr: text embedding of a
50,000-concept set, the significance test's null draws, CLIP-Dissect's soft-WPMI; a one-batch call
(the fc metrics' few words) shows none."""
import math

import torch

from mammi.describers import soft_wpmi
from mammi.evidence import null_names
from models.vlm_base import VLM
from pipeline.features import text_features


class CountingVLM(VLM):
    """A quick stand-in text encoder: each prompt's length as its embedding."""

    def __init__(self):
        super().__init__()
        self._param = torch.nn.Parameter(torch.zeros(1))  # VLM.device reads the first parameter

    def embed_texts(self, texts):
        return torch.tensor([[len(t), 1.0] for t in texts])


def bar_total(err: str, desc: str) -> str:
    """The last state tqdm wrote for the bar `desc` ('done/total')."""
    last = [s for s in err.replace("\r", "\n").splitlines() if s.startswith(f"{desc}:")]
    assert last, err[-500:]
    return last[-1].split("|")[2].split()[0]


def test_text_embedding_of_50000_concepts_shows_a_bar(tmp_path, capsys):
    concepts = [f"concept{i}" for i in range(50_000)]
    path = tmp_path / "many.txt"
    path.write_text("\n".join(concepts) + "\n")
    c = {"save_root": str(tmp_path / "res"), "model_clip": "phantom", "clip_weights": str(tmp_path / "none"),
         "concept_set": str(path), "template_ver": "base", "template": "A chest x-ray image of a"}
    text = text_features(c, path, concepts, CountingVLM)
    assert text["features"].shape == (50_000, 2)
    # 50,000 prompts and the template, 256 a batch: ceil(50,001 / 256) = 196 batches
    assert bar_total(capsys.readouterr().err, "texts") == f"{math.ceil(50_001 / 256)}/196"


def test_one_batch_of_words_shows_no_bar(capsys):
    CountingVLM().encode_texts(["mass", "nodule", "effusion"])
    assert "texts" not in capsys.readouterr().err


def test_null_draws_show_a_bar_per_chunk(capsys):
    s_pool = torch.randn(20, 100, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    # 3 images a draw, 100 concepts, 600 scores at once: 2 draws a chunk, 100 draws in 50 chunks
    got = null_names(s_pool, [3], 100, seed=0, budget=600)
    assert got[3].shape == (100,)
    assert bar_total(capsys.readouterr().err, "null draws") == "50/50"


def test_soft_wpmi_shows_a_bar_over_neuron_chunks(capsys):
    g = torch.Generator().manual_seed(0)
    soft_wpmi(torch.randn(30, 7, generator=g), torch.rand(30, 70, generator=g), 10, 10.0, 1.0, 0.998, 0.97)
    assert bar_total(capsys.readouterr().err, "soft-WPMI") == "3/3"  # 70 neurons, 32 a chunk
