"""mammi.describers.names_finding, the one rule by which a neuron's concepts name a finding, for the describer
table's truth agreement, the demo's agreement and the ablation's named neurons alike: hand-written cases."""
import pytest

from mammi.describers import names_finding, truth_agreement
from pipeline.ablation import named_neurons

CASES = [
    (["effusion"], "Effusion", True),                          # the finding itself, case aside
    (["Effusion "], "effusion", True),                         # spaces around it aside
    (["pleural thickening"], "Pleural_Thickening", True),      # '_' joins words as a space does
    (["pleural-thickening"], "pleural thickening", True),      # and so does '-'
    (["pleural", "thickening"], "pleural thickening", True),   # each word of it, as separate concepts
    (["thickening", "mass", "pleural"], "Pleural_Thickening", True),  # in any order, among others
    (["pleural"], "pleural thickening", False),                # one word alone names no finding
    (["thickening"], "Pleural_Thickening", False),
    (["pleural effusion"], "effusion", False),                 # a concept is compared whole
    (["pleural effusion"], "pleural thickening", False),
    (["masses"], "mass", False),                               # no stemming
    (["mass"], "mass", True),
    ([], "mass", False),
    (["mass"], "", False),                                     # a blank finding is named by nothing
]


@pytest.mark.parametrize("concepts, finding, named", CASES)
def test_concepts_name_a_finding_whole_or_word_by_word(concepts, finding, named):
    assert names_finding(concepts, finding) is named


def test_the_table_and_the_ablation_count_the_same_neurons():
    """The neurons the ablation zeroes for a finding are those whose concepts the table counts as naming it."""
    words = [c for c, _, _ in CASES]
    for finding in ("Pleural_Thickening", "effusion", "mass"):
        records = [{"neuron": k, "status": "ok", "concepts": [{"concept": c} for c in w]} for k, w in enumerate(words)]
        hits = truth_agreement(words, [finding] * len(words))["any"]
        named = named_neurons(records, finding)
        assert named == [k for k, w in enumerate(words) if names_finding(w, finding)]
        assert hits["mean"] * hits["n"] == pytest.approx(len(named))
