"""The fc cosine metric (README, "The method in one screen", 4): how close a neuron's concepts are in
meaning to its class name under a text encoder, the mean over its concepts of cos(concept, class name),
averaged over the neurons that have concepts. pipeline/text_metrics.py loads the encoders."""
from __future__ import annotations

from mammi.method import mean_se


def mean_cosine(named: list[dict], truth: list[str], embed) -> dict:
    """mean +- std/sqrt(n) over the fc neurons with concepts (concepts.json records, in class order) of
    the mean cosine between each one's concepts and its class name truth[k]; embed: strings ->
    L2-normalised embeddings [n, d]. With neurons_without_concepts; {"error": ...} when none has any."""
    per = []
    for n, want in zip(named, truth):
        words = [c["concept"] for c in n["concepts"]]
        if words:
            e = embed(words + [want])
            per.append(float((e[:-1] @ e[-1]).mean()))
    return {**mean_se(per), "neurons_without_concepts": len(named) - len(per)} if per else {"error": "no concepts"}
