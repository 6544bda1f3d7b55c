"""Every output's file name is written in one module, pipeline/outputs.py: the steps make their paths from
the names and path functions there and read each other's outputs through its readers, so that renaming an
output, or changing what its reader accepts, is done in one place. And the readers added for the outputs
that were read raw refuse a malformed file with one line naming it and the step to re-run."""
import ast
import json
import re
from pathlib import Path

import pytest

from pipeline.cli import PipelineError
from pipeline.outputs import read_auroc, read_example_labels, read_metrics, read_sanity, read_total_results

REPO = Path(__file__).resolve().parents[1]
# A string that is a file name (or a path ending in one) of the kinds the steps write; "{}" stands for
# each value an f-string fills in.
FILE_NAME = re.compile(r"[\w.{}*/-]*\.(json|csv|pt|png|html)")

# The steps', the demo's and the gallery's outputs, as the README and docs/ name them (listed by hand,
# not read from the module under test).
OUTPUTS = ("activations.pt", "examples.json", "examples.csv", "image_features.pt", "text_{}_{}.pt", "similarity.pt",
           "concepts.json", "metrics.json", "scores.pt", "describers.json", "describers.csv", "agreement.csv",
           "describers.png", "sensitivity.png", "ablation.json", "ablation.csv", "ablation.png", "maps_{}.pt",
           "audit.json", "audit.csv", "audit.png",
           "overlays.pt", "Threshold.csv", "TestEval.csv", "{split}Probs.csv", "{split}Labels.csv", "roc_curves.png",
           "eval.json", "{stem}_{kind}.png", "{image}_{class}.png", "total_results.json", "sanity.json", "sanity.png",
           "summary.json", "index.html")

# Names of files the steps read but do not write, each in the modules that read or make them: model
# configs and weights, box files, the demo world (phantom/ makes it; the demo and the box reader take it),
# images, and the gallery page's own sources.
INPUTS = {
    "bio_clinicalbert.json": {"benchmark.py", "models/medclip.py"},
    "swin_tiny.json": {"benchmark.py", "models/medclip.py"},
    "swin_config.json": {"models/medclip.py"},
    "bert_config.json": {"models/medclip.py"},
    "tokenizer.json": {"models/medclip.py"},
    "model.pt": {"models/target.py"},
    "phantom_clip.pt": {"models/phantom_clip.py"},
    "phantom_clip.json": {"models/phantom_clip.py"},
    "bbox.csv": {"dataset/boxes.py", "demo.py", "phantom/world.py"},
    "demo/world/bbox.csv": {"config/demo.py"},
    "ChestX_Det_test.json": {"dataset/boxes.py"},
    "annotation.json": {"phantom/world.py", "phantom/train.py"},
    "{}/annotation.json": {"demo.py"},
    "data/mimic_cxr/annotation.json": {"prepare_mimic_nouns.py"},
    "world.json": {"phantom/marker.py"},
    "demo_training.json": {"phantom/train.py"},
    "pretrained/demo_training_shortcut.json": {"demo.py"},
    "phantom_sheet.png": {"phantom/world.py"},
    "p{}_000.png": {"phantom/world.py"},
    "{}.png": {"benchmark.py"},
    "gallery.html": {"gallery.py"},
}


def file_names(path: Path) -> set[str]:
    """The file names a module spells out as strings (docstrings aside; an f-string with "{}" for what it
    fills in). A bare suffix or pattern ('.json', '*.png') names no file."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    skip = set()
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if (isinstance(body, list) and body and isinstance(body[0], ast.Expr)
                and isinstance(body[0].value, ast.Constant)):
            skip.add(id(body[0].value))
        if isinstance(node, ast.JoinedStr):
            skip.update(id(v) for v in node.values)
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.JoinedStr):
            text = "".join(v.value if isinstance(v, ast.Constant) else "{}" for v in node.values)
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in skip:
            text = node.value
        else:
            continue
        stem = text.rsplit(".", 1)[0].rsplit("/", 1)[-1].replace("*", "")
        if FILE_NAME.fullmatch(text) and stem:
            found.add(text)
    return found


def modules() -> dict[str, set[str]]:
    """Each module of the repo outside tests/ and the file names it spells out."""
    return {p.relative_to(REPO).as_posix(): file_names(p) for p in sorted(REPO.rglob("*.py"))
            if not {"tests", ".git", ".venv"} & set(p.relative_to(REPO).parts)}


def test_every_output_name_is_spelled_in_pipeline_outputs_alone():
    where = {}
    for module, names in modules().items():
        for name in names:
            where.setdefault(name, set()).add(module)
    wrong = {name: sorted(where.get(name, ())) for name in OUTPUTS if where.get(name) != {"pipeline/outputs.py"}}
    assert not wrong, f"output names not spelled in pipeline/outputs.py alone: {wrong}"


def test_no_other_module_names_a_file_it_does_not_read_as_an_input():
    stray = {f"{module}: {name}" for module, names in modules().items() if module != "pipeline/outputs.py"
             for name in names if module not in INPUTS.get(name, ())}
    assert not stray, f"file names outside pipeline/outputs.py (an output: name it there): {sorted(stray)}"


def test_the_scan_finds_names_in_strings_and_f_strings_but_not_in_docstrings(tmp_path):
    src = tmp_path / "m.py"
    src.write_text('"""Writes concepts.json."""\n'
                   'def f(d, k):\n    """examples.csv"""\n'
                   '    a = d / "sanity.json"\n    b = d / f"maps_{k}.pt"\n    c = f"{d} is not a metrics.json"\n'
                   '    return d.glob("*.png"), a, b, c\n')
    assert file_names(src) == {"sanity.json", "maps_{}.pt"}


def refused(call, *words):
    with pytest.raises(PipelineError) as e:
        call()
    msg = str(e.value)
    assert "\n" not in msg and all(w in msg for w in words), msg


def test_read_auroc_reads_each_class_and_refuses_a_table_without_auc(tmp_path):
    ok = tmp_path / "TestEval.csv"
    ok.write_text("label,auc,auprc\nAtelectasis,0.75,0.5\nMass,0.5,0.25\n")
    assert read_auroc(ok) == {"Atelectasis": 0.75, "Mass": 0.5}
    bad = tmp_path / "bad" / "TestEval.csv"
    bad.parent.mkdir()
    bad.write_text("label,auprc\nAtelectasis,0.5\n")
    refused(lambda: read_auroc(bad), str(bad), "target_model_perform.py")
    bad.write_text("label,auc,auprc\nAtelectasis,high,0.5\n")
    refused(lambda: read_auroc(bad), str(bad), "target_model_perform.py")


def test_read_metrics_takes_step_3s_fc_table_and_refuses_one_without_its_shares(tmp_path):
    share = {"mean": 0.5, "se": 0.1, "n": 14}
    good = {"key": "k", "config": {}, "hit_rate": share, "precision": share, "recall": share, "f1": share, "cosine": {}}
    path = tmp_path / "metrics.json"
    path.write_text(json.dumps(good))
    assert read_metrics(path) == good
    path.write_text(json.dumps({**good, "f1": {"mean": 0.5}}))
    refused(lambda: read_metrics(path), str(path), "concept_matching.py")


def test_read_sanity_and_read_total_results_refuse_what_their_steps_do_not_write(tmp_path):
    side = {"significant": 1, "tested": 4, "testable": True, "share": 0.25}
    path = tmp_path / "sanity.json"
    path.write_text(json.dumps({"sanity_seed": 0, "layers": {"fc": {"target": side, "reinitialised": side}}}))
    assert read_sanity(path)["layers"]["fc"]["target"]["share"] == 0.25
    path.write_text(json.dumps({"sanity_seed": 0, "layers": {"fc": {"target": side}}}))
    refused(lambda: read_sanity(path), str(path), "sanity_check.py")

    shown = tmp_path / "total_results.json"
    shown.write_text(json.dumps({"config": {}, "pointing_game": {}, "images": [{"predictions": []}]}))
    assert read_total_results(shown)["images"] == [{"predictions": []}]
    shown.write_text(json.dumps({"config": {}, "pointing_game": {}, "images": [{"predictions": "x.png"}]}))
    refused(lambda: read_total_results(shown), str(shown), "visualization.py")
    shown.write_text('{"config": {}, "pointing')
    refused(lambda: read_total_results(shown), str(shown), "visualization.py")


def test_read_example_labels_takes_findings_and_fc_probabilities(tmp_path):
    path = tmp_path / "examples.csv"
    path.write_text("neuron,rank,image_id,activation,findings,prob_Mass,prob_Nodule\n"
                    "0,1,a.png,2.0,Mass,0.9,0.1\n1,1,b.png,1.5,,0.2,nan\n")
    labels, probs = read_example_labels(path, ["Mass", "Nodule"])
    assert labels == {"a.png": "Mass", "b.png": ""}
    assert probs == {(0, "a.png"): 0.9}  # neuron 1 is Nodule's: b.png's is nan, not shown
    assert read_example_labels(tmp_path / "absent.csv", []) == ({}, {})
    path.write_text("neuron,image_id\nzero,a.png\n")
    refused(lambda: read_example_labels(path, []), str(path), "example_selection.py")
