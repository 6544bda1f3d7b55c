"""mammi/text_metrics.py: the fc cosine metric against cosines computed by hand from fixed unit vectors."""
import math

import torch

from mammi.text_metrics import mean_cosine

VECTORS = {"mass": [1.0, 0.0], "lump": [0.6, 0.8], "edema": [0.0, 1.0], "fluid": [0.8, 0.6]}


def embed(words):
    return torch.tensor([VECTORS[w] for w in words])


def rec(*concepts):
    return {"concepts": [{"concept": c} for c in concepts]}


def test_mean_over_neurons_of_the_mean_cosine_with_the_class_name():
    got = mean_cosine([rec("mass", "lump"), rec("fluid"), rec()], ["mass", "edema", "edema"], embed)
    per = [(1.0 + 0.6) / 2, 0.6]  # neuron 0: cos(mass, mass), cos(lump, mass); neuron 1: cos(fluid, edema)
    se = math.sqrt(sum((p - sum(per) / 2) ** 2 for p in per) / 2) / math.sqrt(2)  # mean_se: SD over n
    assert abs(got["mean"] - 0.7) < 1e-6 and abs(got["se"] - se) < 1e-6 and got["n"] == 2
    assert got["neurons_without_concepts"] == 1
    assert mean_cosine([rec()], ["mass"], embed) == {"error": "no concepts"}
