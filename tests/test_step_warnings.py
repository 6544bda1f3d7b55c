"""Warnings that hold for a whole step are said once in it: the untrained target's (`--checkpoint random`)
in every step that runs the target or reads what it gave, whether it loads the target or reuses a cache,
over several layers, runs and loads; the demo VLM's (`--model_clip phantom`) in every step where it names
images that are not of a phantom world, and never on a world's own; a step nested in another says its own."""
import json
import os
import shutil

import pytest

from conftest import make_probe_set, ok, run_script
from core.text import one_step, say_once
from phantom.marker import outside_world
from phantom.world import write_world

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
    ablate = ["--layer", "features.8", "--ablation_draws", "10"]
    steps = [("step 2", "example_selection.py", two), ("step 2 reused", "example_selection.py", two),
             ("step 2 val", "example_selection.py", ["--split", "val"]),
             ("step 2 test", "example_selection.py", ["--split", "test"]),
             ("step 3", "concept_matching.py", two + vlm), ("step 4", "target_model_perform.py", []),
             # ablation where it tests something (at fc, whose neurons are the logits, it does not run)
             ("ablation", "ablation.py", vlm + ablate), ("ablation reused", "ablation.py", vlm + ablate),
             ("compare_describers", "compare_describers.py", rivals), ("compare_describers reused", "compare_describers.py", rivals),
             ("gallery", "gallery.py", []),
             ("gallery without maps", "gallery.py", ["--overlays", "False", "--gallery_dir", str(out / "plain")])]
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


# ---- the demo VLM on images that are not of its world

def test_a_worlds_images_are_those_its_world_json_lists(tmp_path):
    world = tmp_path / "world"
    write_world(world, 3, 1, 1, size=32)
    names = sorted(os.listdir(world / "images"))
    assert names == ["p00000_000.png", "p00001_000.png", "p00002_000.png", "p00003_000.png", "p00004_000.png"]
    other = tmp_path / "other" / "images"
    other.mkdir(parents=True)
    shutil.copy(world / "images" / names[0], other / names[0])          # a copy, beside no world.json
    (other / "linked.png").symlink_to(world / "images" / names[1])      # a link to a world's image
    shutil.copy(world / "images" / names[2], world / "images" / "extra.png")  # in a world, not listed in it
    assert outside_world(world / "images", names) == []
    assert outside_world(world, [f"images/{n}" for n in names] + ["images/extra.png", "world.json"]) == [
        "images/extra.png", "world.json"]
    assert outside_world(other, [names[0], "linked.png"]) == [names[0]]
    (tmp_path / "other" / "world.json").write_text(json.dumps([names[0]]))  # not a world's file
    assert outside_world(other, [names[0]]) == [names[0]]


def other_world(root, n: int) -> str:
    return (f"warning: --model_clip phantom is the demo's VLM, trained only on the synthetic phantom world "
            f"(phantom/world.py); {n} of the {n} probing images under {root} are not that world's (no world.json "
            f"beside their images/ folder lists them: 00000000_000.png, 00000001_000.png, 00000002_000.png … "
            f"(and {n - 3} more)), so the concepts it matches to them say nothing it learned; name them with a VLM "
            f"of real radiographs (--model_clip medclip or open_clip:NAME)")


@pytest.fixture(scope="module")
def phantom_vlm_runs(tmp_path_factory):
    """Steps 2-3 (two layers) and compare_describers with the demo VLM, on generated images and on a world."""
    root = tmp_path_factory.mktemp("phantom_vlm")
    (root / "concepts.txt").write_text("nodule\neffusion\nheart\n")
    write_world(root / "world", 8, 1, 1, size=64)
    probes = {"elsewhere": make_probe_set(root / "elsewhere", n=8, seed=2), "world": root / "world" / "images"}
    got = {}
    for kind, images in probes.items():
        common = [*TARGET, "--labels", "none", "--dataset", kind, "--data_root", str(images), "--save_root",
                  str(root / "res")]
        vlm = ["--model_clip", "phantom", "--concept_set", str(root / "concepts.txt"), "--metric_encoders", ""]
        ok(run_script("example_selection.py", *common, "--layer", "fc,features.8"))
        got[kind, 3] = ok(run_script("concept_matching.py", *common, *vlm, "--layer", "fc,features.8"))
        got[kind, "compare"] = ok(run_script("compare_describers.py", *common, *vlm, "--layer", "fc", "--describers",
                                             "clip_dissect,topk_mean", "--sensitivity_percents", ""))
    return probes, got


@pytest.mark.parametrize("step", [3, "compare"])
def test_the_demo_vlm_warns_once_on_images_not_of_its_world(phantom_vlm_runs, step):
    probes, got = phantom_vlm_runs
    lines = [line for line in got["elsewhere", step].splitlines() if "--model_clip phantom" in line]
    assert lines == [other_world(probes["elsewhere"], 8)]
    assert "--model_clip phantom" not in got["world", step]
