"""Experiment files and upstream settings: one set of constants for every step, and a later step
that refuses a constant contradicting what the output it reads has stored."""
import json

import pytest

from conftest import TINY_CLIP, refused, run_script


@pytest.fixture(scope="module")
def experiment(tmp_path_factory, probe_set, densenet_ckpt):
    """An experiment file for the generated probing set, and a function to rewrite one constant."""
    root = tmp_path_factory.mktemp("exp")
    clip = root / "tiny-clip.json"
    clip.write_text(json.dumps(TINY_CLIP))
    path = root / "exp.py"
    values = {"dataset": "probe", "data_root": str(probe_set), "checkpoint": str(densenet_ckpt), "resize": 64,
              "crop": 64, "num_workers": 0, "save_root": str(root / "res"), "model_clip": f"open_clip:{clip}",
              "clip_weights": "random", "metric_encoders": "all-minilm-l6-v2", "adaptive_percent": 93.0}

    def write(**change):
        values.update(change)
        path.write_text("# a test experiment\n" + "".join(f"{k} = {v!r}\n" for k, v in values.items()))
        return str(path)

    write()
    return write, root / "res"


def test_one_threshold_in_the_experiment_file_reaches_every_step(experiment):
    write, res = experiment
    exp = write(adaptive_percent=80.0)
    for script in ("example_selection.py", "concept_matching.py"):
        proc = run_script(script, exp, "--layer", "fc")
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    layer = res / "probe_train" / "densenet121" / "fc"
    ex = json.loads((layer / "adaptive80" / "examples.json").read_text())
    assert ex["config"]["adaptive_percent"] == 80.0 and ex["config"]["resize"] == 64
    concepts = next((layer / "adaptive80").glob("vlm_*/*/concepts.json"))
    stored = json.loads(concepts.read_text())["config"]
    # step 3 records the selection it was given by the examples, not its own defaults
    assert stored["adaptive_percent"] == 80.0 and stored["checkpoint"] == ex["config"]["checkpoint"]
    assert not (layer / "adaptive93").exists()  # nothing was read or written at the default threshold
    write(adaptive_percent=93.0)


def test_a_constant_that_contradicts_the_stored_one_is_refused(experiment):
    write, res = experiment
    exp = write()
    assert run_script("example_selection.py", exp, "--layer", "fc").returncode == 0
    examples = res / "probe_train" / "densenet121" / "fc" / "adaptive93" / "examples.json"
    # --examples names the run; a selection that disagrees with it is refused, naming both values
    line = refused(run_script("concept_matching.py", exp, "--examples", str(examples),
                                     "--adaptive_percent", "80"), "80", "93", str(examples), bars=False)
    assert "--adaptive_percent" in line
    refused(run_script("concept_matching.py", exp, "--examples", str(examples), "--resize", "256"),
                   "--resize", "256", "64", bars=False)
    # the same value, given again, is not a contradiction
    proc = run_script("concept_matching.py", exp, "--examples", str(examples), "--adaptive_percent", "93")
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_bad_experiment_files_are_one_line(tmp_path):
    bad = tmp_path / "typo.py"
    bad.write_text("adaptive_precent = 80\n")
    refused(run_script("example_selection.py", str(bad)), str(bad), "adaptive_precent", bars=False)
    wrong_type = tmp_path / "type.py"
    wrong_type.write_text("topk = 'twenty'\n")
    refused(run_script("example_selection.py", str(wrong_type)), "topk", "int", bars=False)
    refused(run_script("example_selection.py", str(tmp_path / "absent.py")), "absent.py", bars=False)
    # a constant another step owns is not taken by a step that neither owns nor reads it
    refused(run_script("example_selection.py", "--alpha", "90"), "--alpha", bars=False)


def test_help_lists_own_and_upstream_constants_with_their_comments():
    proc = run_script("concept_matching.py", "--help")
    assert proc.returncode == 0
    own, upstream = proc.stdout.split("constants of example_selection.py")
    assert "--alpha" in own and "keep concepts with S > alpha% of the neuron's best S" in own
    assert "--adaptive_percent" in upstream and "p of the adaptive threshold" in upstream
    assert "--alpha" not in upstream


def test_no_step_redeclares_an_upstream_constant():
    """Each constant has one home: a step that reads another step's constants does not define them."""
    from pipeline.cli import STEPS, constant_names
    from pipeline.cli import ROOT
    run_settings = {"batch_size", "num_workers", "device"}  # each step's own, by design
    home = {}
    for step in STEPS:
        if not (ROOT / step).is_file():
            continue
        for name in set(constant_names(step)) - run_settings:
            assert name not in home, f"{name} is declared by both {home[name]} and {step}"
            home[name] = step
