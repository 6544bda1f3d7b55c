"""Warnings that hold for a whole step are said once in it: the untrained target's (`--checkpoint random`)
in every step that runs the target or reads what it gave, whether it loads the target or reuses a cache,
over several layers, runs and loads; a step nested in another says its own."""
import pytest

from conftest import make_probe_set, run_script
from core.text import one_step, say_once
from test_pipeline import ok, tiny_clip  # noqa: F401  (tiny_clip is a fixture)

MODEL = "torchvision:mobilenet_v3_small"
UNTRAINED = f"warning: --checkpoint random: {MODEL} is untrained"
TARGET = ["--model", MODEL, "--checkpoint", "random", "--num_classes", "14", "--resize", "64", "--crop", "64",
          "--num_workers", "0"]


def said(stdout: str) -> int:
    return sum(line.startswith(UNTRAINED) for line in stdout.splitlines())


@pytest.fixture(scope="module")
def untrained_run(tmp_path_factory, tiny_clip):
    """What each step printed, in order, on an untrained target's two layers and its logits of each split."""
    root = tmp_path_factory.mktemp("untrained")
    images = make_probe_set(root / "probe", n=24, seed=5)
    out = root / "res"
    common = ["--data_root", str(images), "--save_root", str(out)]
    vlm = ["--model_clip", f"open_clip:{tiny_clip}", "--clip_weights", "random", "--metric_encoders", ""]
    two = ["--layer", "fc,features.8"]
    rivals = vlm + ["--describers", "clip_dissect,topk_mean", "--sensitivity_percents", ""]
    steps = [("step 2", "example_selection.py", two), ("step 2 reused", "example_selection.py", two),
             ("step 2 val", "example_selection.py", ["--split", "val"]),
             ("step 2 test", "example_selection.py", ["--split", "test"]),
             ("step 3", "concept_matching.py", two + vlm), ("step 4", "target_model_perform.py", []),
             ("ablation", "ablation.py", vlm), ("ablation reused", "ablation.py", vlm),
             ("compare_describers", "compare_describers.py", rivals), ("compare_describers reused", "compare_describers.py", rivals),
             ("gallery", "gallery.py", []),
             ("gallery without maps", "gallery.py", ["--overlays", "False", "--gallery_dir", str(root / "plain")])]
    # without labels no ablation runs, so nothing in compare_describers.py loads the target
    bare = ["--labels", "none", "--dataset", "bare", "--layer", "fc"]
    steps += [("step 2 unlabeled", "example_selection.py", bare), ("step 3 unlabeled", "concept_matching.py", bare + vlm),
              ("compare_describers unlabeled", "compare_describers.py", bare + rivals)]
    return {name: ok(run_script(script, *TARGET, *common, *args)) for name, script, args in steps}


@pytest.mark.parametrize("step", ["step 2", "step 2 reused", "step 3", "step 4", "ablation", "ablation reused",
                                  "compare_describers", "compare_describers reused", "gallery",
                                  "gallery without maps", "compare_describers unlabeled"])
def test_the_untrained_warning_is_said_once_in_each_step(untrained_run, step):
    assert said(untrained_run[step]) == 1, untrained_run[step][-3000:]


def test_the_steps_reused_what_they_could_and_ran_the_rest(untrained_run):
    """The warning comes from a step that loads no target too: step 2's activations and step 4's logits reused."""
    assert untrained_run["step 2 reused"].count("reusing") >= 2
    assert untrained_run["step 4"].count("reusing the logits") == 2
    assert untrained_run["gallery"].count("== gallery") == 1


def test_a_step_nested_in_another_says_its_own(capsys):
    line = "warning: something that holds for the whole step"
    with one_step():
        say_once(line)
        with one_step():  # the demo runs each step inside its own
            say_once(line)
            say_once(line)
        say_once(line)
    say_once(line)  # outside any step: said each time
    assert capsys.readouterr().out == f"{line}\n" * 3
