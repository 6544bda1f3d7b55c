"""Output paths: every one is proved inside --save_root, a name that would leave it is refused in one
line, a reader finds its inputs where they lie (a moved results folder works) and never writes into
the save_root an output stored, and outputs are named after the split actually read."""
import json
import runpy
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import REPO, files_stage3, ok, refused, run_script, stage2
from pipeline.cli import PipelineError
from pipeline.outputs import eval_dir, inside_root, probe_dir, read_examples, read_matching


def every_file(folder: Path) -> set[Path]:
    return {p for p in folder.rglob("*")}


@pytest.mark.parametrize("option, value", [("dataset", "../../x"), ("dataset", "ABS"), ("split", "/../../x"),
                                           ("dataset", "a/b"), ("dataset", ".."), ("split", "a\\b")])
def test_a_name_that_would_leave_save_root_is_refused(files, probe_set, tmp_path, option, value):
    """--dataset and --split name a folder under --save_root: a path (../../x, an absolute one, a/b) is
    refused in one line naming the option and a plain name to pass, and nothing is written anywhere."""
    value = str(tmp_path / "abs") if value == "ABS" else value
    work = tmp_path / "a" / "b" / "c"  # ../../x from save_root would land in tmp_path/a/x
    work.mkdir(parents=True)
    before = every_file(tmp_path)
    err = refused(stage2(probe_set, files["a"], work / "res", f"--{option}", value), f"--{option}", "plain name", bars=False)
    assert "such as" in err
    assert every_file(tmp_path) == before  # not even save_root was made


def test_a_plain_dataset_and_split_are_written_under_save_root(files, probe_set, tmp_path):
    """The refusal is of paths only: names with dots, dashes and spaces stay one folder under save_root."""
    out = tmp_path / "res"
    ok(stage2(probe_set, files["a"], out, "--dataset", "my set.v2", "--split", "train"))
    assert (out / "my set.v2_train" / "densenet121" / "fc" / "adaptive93" / "examples.json").is_file()
    assert all(out in p.parents for p in tmp_path.rglob("*") if p.is_file())


def test_inside_root_refuses_every_path_outside_save_root():
    """The one function every output path goes through: under save_root, no '..' below it."""
    c = {"save_root": "results"}
    assert inside_root(c, Path("results") / "a" / "b.pt") == Path("results/a/b.pt")
    for bad in (Path("results") / ".." / "x", Path("/elsewhere/x"), Path("results"), Path("other/results/x"),
                Path("results") / "a" / ".." / ".." / "x"):
        with pytest.raises(PipelineError, match="not inside --save_root"):
            inside_root(c, bad)
    # a relative save_root of '.' holds every relative path without '..'
    assert inside_root({"save_root": "."}, Path("x") / "y") == Path("x/y")
    with pytest.raises(PipelineError):
        inside_root({"save_root": "."}, Path("..") / "y")


def test_outputs_are_named_after_the_split_read(monkeypatch):
    """A folder probed whole reads no split: {dataset}_all; step 4's folder is the split that served as
    its test set: NIH's test, the probing CSV's own split, or test_split_file's name."""
    base = {"save_root": "r", "dataset": "d", "split": "valid", "model": "densenet121"}
    assert probe_dir({**base, "labels": "none"}) == Path("r/d_all")
    assert probe_dir({**base, "labels": ""}) == Path("r/d_valid")
    assert probe_dir({**base, "labels": "x.csv"}) == Path("r/d_valid")
    assert eval_dir({**base, "labels": ""}) == Path("r/d_test/densenet121/eval")
    assert eval_dir({**base, "labels": "data/valid.csv"}) == Path("r/d_valid/densenet121/eval")
    assert eval_dir({**base, "labels": "data/valid.csv", "test_split_file": "data/holdout.csv"}) == \
        Path("r/d_holdout/densenet121/eval")
    monkeypatch.setattr(sys, "argv", ["target_model_perform.py"])
    roc_figure = runpy.run_path(str(REPO / "target_model_perform.py"), run_name="step_under_test")["roc_figure"]
    fig = roc_figure(np.array([[1], [0], [1], [0]]), np.array([[0.9], [0.2], [0.6], [0.4]]), np.array([1.0]),
                     ["Mass"], "valid")
    assert fig.axes[0].get_title().startswith("ROC on the valid split")


def test_a_moved_results_folder_is_read_where_it_lies(files, probe_set, tmp_path):
    """Steps 2-3 in one folder, the folder moved: compare_describers (label_auc, and dissection, which
    writes its maps beside the probing set's folder) runs on it with exit 0, writing under the save_root
    it is given, nothing in the stored one (which no longer exists)."""
    first = tmp_path / "first" / "res"
    ok(stage2(probe_set, files["a"], first))
    ok(files_stage3(files, first))
    boxes = tmp_path / "boxes.json"
    boxes.write_text(json.dumps([{"file_name": f"{i:08d}_000.png", "syms": ["Mass"], "boxes": [[10, 10, 40, 40]],
                                  "polygons": [None]} for i in range(0, 64, 3)]))
    moved = tmp_path / "moved" / "res"
    shutil.move(first.parent, moved.parent)
    log = ok(run_script("compare_describers.py", "--model_clip", f"open_clip:{files['clip']}", "--clip_weights",
                        "random", "--concept_set", str(files["concepts"]), "--num_workers", "0", "--save_root",
                        str(moved), "--describers", "label_auc,dissection", "--box_source", "chestx_det",
                        "--box_file", str(boxes), "--sensitivity_percents", "", "--data_root", str(probe_set)))
    assert "dissection skipped" not in log, log[-3000:]
    assert not first.parent.exists()  # nothing written into the save_root the outputs stored
    assert list((moved / "nih14_train" / "densenet121").glob("maps_*.pt"))
    assert (next(moved.rglob("describers.json"))).is_file()


def test_a_stored_path_into_another_folder_is_not_followed(files, probe_set, tmp_path):
    """A concepts.json copied into another results folder (b) still stores the examples path of the first
    (a), whose examples a later run replaced: it is read with the examples.json above it, b's, that it
    was computed from; and read_examples gives the save_root where the examples lie now."""
    a = tmp_path / "a"
    ok(stage2(probe_set, files["a"], a))
    ok(files_stage3(files, a))
    b = tmp_path / "b"
    shutil.copytree(a, b)
    ok(stage2(probe_set, files["b"], a))  # a's examples are now another checkpoint's; b's are whole
    run = next(b.rglob("concepts.json"))
    assert json.loads(run.read_text())["config"]["examples"].startswith(str(a))  # it names a's
    _, ex_json, ex = read_matching(run)
    assert ex_json == run.parents[2] / "examples.json" and b in ex_json.parents
    assert ex["config"]["save_root"] == str(b)
    assert read_examples(ex_json)["config"]["save_root"] == str(b)


def test_a_reference_that_cannot_be_found_is_one_line(files, probe_set, tmp_path):
    """A concepts.json without an examples.json above it is refused in one line naming the stored path;
    an examples.json out of the folders step 2 writes it in is refused naming where it belongs."""
    out = tmp_path / "res"
    ok(stage2(probe_set, files["a"], out))
    ok(files_stage3(files, out))
    run = next(out.rglob("concepts.json"))
    lone = tmp_path / "lone" / "concepts.json"
    lone.parent.mkdir()
    shutil.copy(run, lone)
    stored = json.loads(lone.read_text())["config"]["examples"]
    refused(run_script("visualization.py", "--concepts", str(lone), "--save_root", str(out)), lone, stored,
            "keep the results folder whole", bars=False)
    ex = next(out.rglob("examples.json"))
    odd = tmp_path / "odd" / "fc" / "adaptive93"
    shutil.copytree(ex.parent.parent, odd.parent)
    refused(run_script("concept_matching.py", "--examples", str(odd / "examples.json"), "--save_root", str(out)),
            odd / "examples.json", "nih14_train/densenet121/fc/adaptive93/examples.json", bars=False)
