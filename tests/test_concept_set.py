"""Stage 1 on the real IU X-ray reports with the real NLTK tagger, and its input formats."""
import json
import re

import pytest

from conftest import REPO, run_script

IU = REPO / "dataset" / "reports" / "iu_xray_reports.json"  # all 3,955 IU X-ray reports, shipped in the repo


@pytest.fixture(scope="module")
def iu_nouns(tmp_path_factory):
    out = tmp_path_factory.mktemp("cs")
    proc = run_script("prepare_mimic_nouns.py", "--reports", str(IU), "--name", "iu", "--out_dir", str(out))
    assert proc.returncode == 0, proc.stderr
    return (out / "iu.txt").read_text().splitlines()


def test_iu_reports_give_the_expected_set(iu_nouns):
    assert 1000 <= len(iu_nouns) <= 1300
    assert len(set(iu_nouns)) == len(iu_nouns)
    assert not [w for w in iu_nouns if "xxx" in w or len(w) < 2 or not re.fullmatch(r"[a-z0-9]+", w)]
    text = " ".join(f"{r['findings'] or ''} {r['impression'] or ''}" for r in json.loads(IU.read_text())).lower()
    classes = [c.lower() for c in (REPO / "dataset" / "nih14" / "nih_labels.txt").read_text().splitlines()]
    occurring = [c for c in classes if " " not in c and re.search(rf"\b{c}\b", text)]
    assert len(occurring) == 12
    assert set(occurring) <= set(iu_nouns)
    assert {"photo", "image", "left", "right"}.isdisjoint(iu_nouns)


def test_shipped_iu_set_is_this_script_s_output(iu_nouns):
    assert (REPO / "dataset" / "concept_set" / "iu_xray_nouns.txt").read_text().splitlines() == iu_nouns


def test_r2gen_and_text_inputs(tmp_path):
    ann = {"train": [{"id": "a", "report": "Large left pleural effusion. XXXX noted."}],
           "test": [{"id": "b",
                     "report": "There is a nodule in the lung. Heart size is normal. ___ The nodule is small."}]}
    (tmp_path / "annotation.json").write_text(json.dumps(ann))
    proc = run_script("prepare_mimic_nouns.py", "--reports", str(tmp_path / "annotation.json"),
                      "--name", "t", "--out_dir", str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "t.txt").read_text().splitlines() == ["nodule", "lung", "heart", "size"]
    proc = run_script("prepare_mimic_nouns.py", "--reports", str(tmp_path / "annotation.json"), "--report_split", "all",
                      "--name", "t2", "--out_dir", str(tmp_path))
    assert (tmp_path / "t2.txt").read_text().splitlines()[0] == "effusion"
    (tmp_path / "r.txt").write_text("Mild cardiomegaly.\nNo pneumothorax.\n")
    run_script("prepare_mimic_nouns.py", "--reports", str(tmp_path / "r.txt"), "--name", "t3",
               "--out_dir", str(tmp_path))
    assert {"cardiomegaly", "pneumothorax"} <= set((tmp_path / "t3.txt").read_text().splitlines())


def test_missing_tagger_names_the_download(tmp_path, monkeypatch):
    import nltk
    monkeypatch.setattr(nltk.data, "path", [str(tmp_path)])
    monkeypatch.setenv("NLTK_DATA", str(tmp_path))
    proc = run_script("prepare_mimic_nouns.py", "--reports", str(IU), "--name", "x", "--out_dir", str(tmp_path),
                      "--use_bundled_tagger", "no")
    assert proc.returncode == 2
    assert "nltk.download('averaged_perceptron_tagger_eng')" in proc.stderr
    assert not (tmp_path / "x.txt").exists()
    proc = run_script("prepare_mimic_nouns.py", "--reports", str(tmp_path / "none.json"))
    assert proc.returncode == 2 and "none.json" in proc.stderr
