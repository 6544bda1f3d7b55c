"""mammi/ablation.py's pieces that tests/test_ablation.py reaches only through a run: the live neurons,
a describer's median z, and the layers where ablation tests nothing; each against a value by hand."""
import pytest

from mammi.ablation import live_neurons, median_z, named_neurons, untested


def rec(k, concepts, status="ok"):
    return {"neuron": k, "status": status, "concepts": [{"concept": c, "score": 1.0} for c in concepts]}


def test_live_neurons_leave_out_only_the_dead():
    records = [rec(0, ["mass"]), rec(1, ["mass"], "dead"), rec(2, [], "flat"), rec(5, ["lung"])]
    assert live_neurons(records) == [0, 2, 5]
    assert named_neurons(records, "Mass") == [0]


def test_median_z_over_the_findings_with_a_z():
    rows = [{"z": 3.0}, {"z": None}, {"z": -1.0}, {"z": 0.5}, {"z": 10.0}]
    assert median_z({"findings": rows}) == {"median_z": pytest.approx(1.75), "findings": 4, "of": 5}
    assert median_z({"findings": [{"z": 2.0}, {"z": None}, {"z": -4.0}]})["median_z"] == pytest.approx(-1.0)
    assert median_z({"findings": [{"z": None}]}) == {"median_z": None, "findings": 0, "of": 1}


def test_only_fc_is_untested():
    assert "logit" in untested("fc")
    assert untested("penultimate") is None and untested("features.denseblock4") is None
