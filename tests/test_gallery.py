"""gallery.py: the page built from real stage 2-3 outputs (fc and penultimate, a tiny open_clip VLM) and
from a synthetic 2,048-neuron run in the stages' formats; checked by parsing the HTML, then in a real
browser (headless Chromium through selenium): search, filters, a neuron's view, load time."""
import ast
import html
import json
import math
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from urllib.parse import unquote

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import (
    ABLATION,
    HOSTILE,
    REPO,
    TINY_CLIP,
    WORDS,
    no_errors,
    ok,
    page_data,
    refused,
    run_script,
    stage2,
    stage3,
    unchangeable,
    write_synthetic,
)
from core.digests import file_digest
from dataset.nih import class_names

PAGE_FILES = ("gallery.html", "gallery.css", "gallery.js")  # the page's source, beside gallery.py


# ---- inputs ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def real_run(probe_set, densenet_ckpt, tmp_path_factory):
    """Stages 2 and 3 as a user runs them: DenseNet-121 fc and penultimate, a 20-word concept set
    holding the hostile name (so it is among every neuron's top 20 scores)."""
    tmp = tmp_path_factory.mktemp("gallery_real")
    clip = tmp / "tiny-clip.json"
    clip.write_text(json.dumps(TINY_CLIP))
    cset = tmp / "words.txt"
    cset.write_text("\n".join(WORDS + [HOSTILE]) + "\n")
    out = tmp / "res"
    torch.manual_seed(0)  # the random CLIP's weights come from torch's stream: the same names whatever ran before
    for layer in ("fc", "penultimate"):
        ok(stage2(probe_set, densenet_ckpt, out, "--layer", layer))
        ok(stage3(out, clip, "--layer", layer, "--concept_set", str(cset), "--metric_encoders", ""))
    return out


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    res = write_synthetic(tmp_path_factory.mktemp("gallery_synth"))
    log = ok(run_script("gallery.py", "--save_root", str(res)))
    return res, log


@pytest.fixture(scope="module")
def real_gallery(real_run):
    """The page of the real runs, each with an ablation table beside it (at fc one written before ablation
    left that layer untested: the page must not show its z)."""
    for path in real_run.rglob("concepts.json"):
        layer = json.loads(path.read_text())["config"]["layer"]
        (path.parent / "ablation.json").write_text(json.dumps({"key": "by-hand", "concepts": str(path), "layer": layer,
                                                               "concepts_digest": file_digest(path),
                                                               "findings": ABLATION}))
    log = ok(run_script("gallery.py", "--save_root", str(real_run)))
    return real_run / "gallery" / "index.html", log


def check_against_outputs(index: Path, concept_files: list[Path]):
    """Every neuron of every run once, with concepts.json's status, count and concepts; every
    thumbnail and link a file; histograms over the whole probing set; bars from similarity.pt."""
    text, page, data = page_data(index)
    runs = {Path(r["path"]).resolve(): i for i, r in enumerate(data["runs"])}
    assert sorted(runs) == sorted(p.resolve() for p in concept_files)
    keys = [(n["r"], n["n"]) for n in data["neurons"]]
    assert len(keys) == len(set(keys))
    got = {k: n for k, n in zip(keys, data["neurons"])}
    for path in concept_files:
        c = json.loads(path.read_text())
        r = runs[path.resolve()]
        assert sorted(k for k in got if k[0] == r) == [(r, n["neuron"]) for n in c["neurons"]]
        assert data["runs"][r]["evidence"] == c.get("evidence")
        ex = {n["neuron"]: n for n in json.loads(Path(c["config"]["examples"]).read_text())["neurons"]}
        sim = torch.load(path.parent / "similarity.pt", weights_only=True)
        acts = torch.load(Path(c["config"]["examples"]).parent.parent / "activations.pt", weights_only=True)["activations"]
        for n in c["neurons"]:
            g = got[(r, n["neuron"])]
            assert g["s"] == n["status"] and g["e"] == n["n_examples"] == len(ex[n["neuron"]]["examples"])
            assert [w for w, _ in g["c"]] == [x["concept"] for x in n["concepts"]]
            assert np.allclose([s for _, s in g["c"]], [x["score"] for x in n["concepts"]], rtol=1e-3)
            assert [data["images"][i][0] for i, *_ in g["x"]] == [e["image_id"] for e in ex[n["neuron"]]["examples"]][:100]
            assert sum(g["h"]) == acts.shape[0] and g["t"] == pytest.approx(ex[n["neuron"]]["threshold"], rel=1e-3)
            row = sim["similarity"][sim["neurons"].index(n["neuron"])]
            assert g["b"][0][1] == pytest.approx(float(row.max()), rel=1e-3, abs=1e-6)
            assert float(row[sim["concepts"].index(data["vocab"][g["b"][0][0]])]) == pytest.approx(float(row.max()))
            assert g["cut"] == pytest.approx(c["config"]["alpha"] / 100 * float(row.max()), rel=1e-3, abs=1e-6)
            # the name test as step 3 stored it (concept_matching.py's fields), none where it tested nothing
            assert g.get("ev", {}).get("tested") == n.get("tested") and g.get("ev", {}).get("sig") == n.get("significant")
            if data["runs"][r]["fc"]:
                cls = class_names()[n["neuron"]]
                assert g["cls"] == cls and g["hit"] == (cls.lower() in [x["concept"] for x in n["concepts"]])
    folder = index.parent
    for img in data["images"]:
        assert img[1] and (folder / img[1]).is_file(), img
    for p in data["panels"]:
        assert (folder / unquote(p["f"])).resolve().is_file(), p
    for tag, attrs in page.tags:
        for a in ("href", "src"):
            if attrs.get(a):
                assert (folder / unquote(attrs[a])).is_file(), (tag, attrs)
    # The hostile name reaches the page only as JSON text: no tag, no raw markup anywhere.
    assert HOSTILE not in text and "<img" not in text.lower()
    assert [t for t, _ in page.tags if t in ("img", "iframe", "object", "embed")] == []
    assert list(page.scripts) == ["settings", "data", "code"]
    return data


def test_real_outputs_fc_and_penultimate(real_gallery, real_run):
    index, log = real_gallery
    files = sorted(real_run.rglob("concepts.json"))
    assert len(files) == 2
    data = check_against_outputs(index, files)
    assert sorted(r["layer"] for r in data["runs"]) == ["fc", "penultimate"]
    assert len(data["neurons"]) == 14 + 1024
    assert HOSTILE in data["vocab"]  # every neuron's top 20 of the 20 words holds it
    assert all(img[2] for img in data["images"])  # each thumbnail carries its labels from examples.csv
    fc = [n for n in data["neurons"] if data["runs"][n["r"]]["fc"]]
    assert all(len(x) == 3 for n in fc for x in n["x"])  # fc examples show p(class)
    assert f"outputs:\n  {index}" in log and index.resolve().as_uri() in log


def test_no_ablation_z_where_the_neurons_are_the_logits(real_gallery):
    """At fc each neuron is a class logit, so zeroing it and reading that logit tests nothing: the fc run
    carries no ablation table (though an ablation.json lies beside it) but the reason; penultimate its table."""
    index, _ = real_gallery
    runs = {r["layer"]: r for r in page_data(index)[2]["runs"]}
    assert runs["fc"]["ablation"] is None
    assert runs["fc"]["ablation_note"].startswith("at the fc layer each neuron is a class's logit")
    assert runs["penultimate"]["ablation_note"] is None and [r[0] for r in runs["penultimate"]["ablation"]] == \
        [r["finding"] for r in ABLATION]


def test_synthetic_2048_and_panels(synthetic):
    res, log = synthetic
    data = check_against_outputs(res / "gallery" / "index.html", [next(res.rglob("concepts.json"))])
    by = {n["n"]: n for n in data["neurons"]}
    assert len(by) == 2048 and by[5]["s"] == "dead" and by[7]["s"] == "none"
    assert by[3]["c"][0][0] == HOSTILE
    assert [data["panels"][i]["i"] for i in by[3]["p"]] == ["s00001.png"]
    assert sum(len(n["p"]) for n in data["neurons"]) == 1
    assert "1 panels linked" in log
    assert (res / "gallery" / "index.html").stat().st_size < 4_000_000
    # The stylesheet and the script are written into the page verbatim: one file, nothing to fetch.
    text, page, _ = page_data(res / "gallery" / "index.html")
    assert page.scripts["code"] == "\n" + (REPO / "gallery.js").read_text()
    assert "<style>\n" + (REPO / "gallery.css").read_text() + "</style>" in text
    assert [t for t, _ in page.tags if t == "link"] == [] and not re.search(r"__[A-Z]+__", text)  # no placeholder left


def test_each_name_carries_its_evidence_and_the_layer_its_ablation(synthetic):
    """The page holds, per neuron, the name tested, its m, p, q, verdict and null percentile step 3 stored
    (none for the dead neuron), per run the layer's evidence record, and the ablation table ablation.py wrote
    beside its concepts.json, row for row."""
    res, _ = synthetic
    concepts = json.loads(next(res.rglob("concepts.json")).read_text())
    data = page_data(res / "gallery" / "index.html")[2]
    stored = {n["neuron"]: n for n in concepts["neurons"]}
    assert "ev" not in next(n for n in data["neurons"] if n["n"] == 5)  # dead: no test
    tested = [n for n in data["neurons"] if "ev" in n]
    assert len(tested) == sum(n["significant"] is not None for n in concepts["neurons"]) > 100
    for n in tested:
        want = stored[n["n"]]
        assert n["ev"]["sig"] is want["significant"] and n["ev"]["tested"] == want["tested"] == want["concepts"][0]["concept"]
        assert [n["ev"][k] for k in ("m", "p", "q", "p95")] == pytest.approx(
            [want[k] for k in ("m", "p", "q", "null_p95")], rel=1e-3)
    run = data["runs"][0]
    assert run["fdr"] == 0.05 and run["evidence"] == concepts["evidence"]
    assert run["ablation"] == [[r["finding"], r["n_neurons"]] + [r[k] for k in ("effect", "random_mean", "random_sd", "z",
                                                                                "other_classes")] + [r["neurons"]]
                               for r in ABLATION]


def test_thumbnails_reused_and_renewed(tmp_path):
    res = write_synthetic(tmp_path, n_neurons=16, n_images=24)
    log = ok(run_script("gallery.py", "--save_root", str(res)))
    thumbs = sorted((res / "gallery" / "thumbs").glob("*.jpg"))
    assert thumbs and f"({len(thumbs)} new)" in log
    stamp = {p.name: p.stat().st_mtime_ns for p in thumbs}
    log = ok(run_script("gallery.py", "--save_root", str(res)))
    assert "(0 new)" in log
    assert {p.name: p.stat().st_mtime_ns for p in (res / "gallery" / "thumbs").glob("*.jpg")} == stamp
    # Images moved elsewhere (--data_root): new thumbnails, named by the files they are made of; the old ones go.
    shutil.move(tmp_path / "world", tmp_path / "moved")
    log = ok(run_script("gallery.py", "--save_root", str(res), "--data_root", str(tmp_path / "moved" / "images")))
    assert f"({len(stamp)} new)" in log
    now = {p.name for p in (res / "gallery" / "thumbs").glob("*.jpg")}
    assert len(now) == len(stamp) and not now & set(stamp)


def test_old_thumbnails_in_a_folder_it_may_not_change_stay_with_a_note(tmp_path):
    """thumbs/ that this user may not change (another user's folder, a read-only share) while every thumbnail
    the page needs is there: the page is written; the thumbnails no run shows any more stay, said in a note."""
    res = write_synthetic(tmp_path, n_neurons=16, n_images=24)
    ok(run_script("gallery.py", "--save_root", str(res), "--overlays", "no"))
    thumbs = res / "gallery" / "thumbs"
    old = thumbs / ("0" * 24 + ".jpg")  # a thumbnail of an image no run shows now
    old.write_bytes((next(thumbs.glob("*.jpg"))).read_bytes())
    index = res / "gallery" / "index.html"
    index.unlink()
    with unchangeable(thumbs):
        log = ok(run_script("gallery.py", "--save_root", str(res), "--overlays", "no"))
    assert old.is_file() and index.is_file()
    assert f"note: 1 thumbnail(s) in {thumbs} that no run shows any more stay there: cannot remove them (" in log


def test_a_describer_without_similarity_or_status(tmp_path):
    """A baseline describer's output: one name per neuron with its own score, no status, no count,
    no similarity.pt. It joins the page as a second run of the same layer; its scores make its chart."""
    res = write_synthetic(tmp_path, n_neurons=16, n_images=24)
    mammi = next(res.rglob("concepts.json"))
    ex_json = json.loads(mammi.read_text())["config"]["examples"]
    other = mammi.parent.parent.parent / "clip_dissect" / "concepts.json"
    other.parent.mkdir()
    other.write_text(json.dumps({"examples_key": "synthetic-examples",
                                 "config": {"layer": "penultimate", "examples": ex_json, "describer": "clip-dissect"},
                                 "neurons": [{"neuron": k, "concepts": [{"concept": "lung", "score": 0.5 + k}]}
                                             for k in range(16) if k != 5]}))
    ok(run_script("gallery.py", "--save_root", str(res)))
    data = page_data(res / "gallery" / "index.html")[2]
    assert [r["describer"] for r in data["runs"]] == ["clip-dissect", "MAMMI"]
    assert [r["label"] for r in data["runs"]] == ["clip_dissect", "vlm_synth/words_base_adaptive_a95"]
    cd = [n for n in data["neurons"] if n["r"] == 0]
    assert len(cd) == 15 and all(n["s"] == "ok" and "cut" not in n for n in cd)
    assert all(n["b"] == [[data["vocab"].index("lung"), 0.5 + n["n"]]] for n in cd)
    assert all(sum(n["h"]) == 24 for n in cd)


def test_bad_inputs_fail_with_one_line(tmp_path):
    res = write_synthetic(tmp_path, n_neurons=8, n_images=12)
    proc = run_script("gallery.py", "--save_root", str(tmp_path / "nothing"))
    assert proc.returncode == 2 and "no concepts.json under" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    proc = run_script("gallery.py", "--runs", str(tmp_path / "missing.json"), "--save_root", str(res))
    assert proc.returncode == 2 and "missing.json not found" in proc.stderr
    shutil.move(tmp_path / "world", tmp_path / "moved")
    proc = run_script("gallery.py", "--save_root", str(res))
    assert proc.returncode == 2 and "--data_root" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    ok(run_script("gallery.py", "--save_root", str(res), "--data_root", str(tmp_path / "moved" / "images")))
    concepts = next(res.rglob("concepts.json"))
    concepts.write_text("{not json")
    proc = run_script("gallery.py", "--save_root", str(res))
    assert proc.returncode == 2 and str(concepts) in proc.stderr and "concept_matching.py" in proc.stderr


# ---- the page's source -------------------------------------------------------------------------
def test_the_page_is_static_files_not_python_strings():
    """gallery.py holds no markup, style or script: the page is gallery.html, .css and .js, which editors
    and linters read; and inlined, the style and the script cannot end their element early."""
    tree = ast.parse((REPO / "gallery.py").read_text())
    strings = [n.value.lower() for n in ast.walk(tree) if isinstance(n, ast.Constant) and isinstance(n.value, str)]
    for tag in ("<html", "<head", "<body", "<style", "<script", "<div", "<svg"):
        assert not [s for s in strings if tag in s], tag
    css, js = ((REPO / name).read_text().lower() for name in PAGE_FILES[1:])
    assert "</style" not in css and "</script" not in js and "<!--" not in js


def test_a_changed_page_file_changes_the_page_key(tmp_path):
    """The key index.html carries covers gallery.html, .css and .js, not only gallery.py: each of them
    changes what the page is. Run from a copy of the repository in which each file gets one comment."""
    res = write_synthetic(tmp_path / "in", n_neurons=8, n_images=12)
    code = tmp_path / "code"
    code.mkdir()
    for p in REPO.iterdir():
        if p.name in PAGE_FILES + ("gallery.py",):
            shutil.copy(p, code / p.name)
        elif p.name != ".git":
            (code / p.name).symlink_to(p)

    def build() -> tuple[str, str]:
        proc = subprocess.run([sys.executable, str(code / "gallery.py"), "--save_root", str(res)], cwd=code,
                              env={**os.environ, "PYTHONUNBUFFERED": "1"}, capture_output=True, text=True, check=False)
        ok(proc)
        text, _, data = page_data(res / "gallery" / "index.html")
        return text, data["key"]

    keys = [build()[1]]
    for name, comment in zip(PAGE_FILES, ("<!-- one more line -->", "/* one more line */", "// one more line")):
        with open(code / name, "a") as f:
            f.write(comment + "\n")
        text, key = build()
        assert comment in text  # the copy's page was the one written
        assert key not in keys, f"{name} changed but the page key did not"
        keys.append(key)


def test_a_run_whose_examples_changed_is_refused(tmp_path):
    """concepts.json computed from other examples than its examples.json now holds (step 2 re-ran), or its
    similarity.pt written by another run: the gallery refuses it in one line rather than show another
    run's examples, bars or alpha cut beside its concepts."""
    res = write_synthetic(tmp_path, n_neurons=8, n_images=12)
    ok(run_script("gallery.py", "--save_root", str(res)))
    concepts = next(res.rglob("concepts.json"))
    good = concepts.read_text()
    concepts.write_text(good.replace('"examples_key": "synthetic-examples"', '"examples_key": "older-examples"'))
    proc = run_script("gallery.py", "--save_root", str(res))
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert str(concepts) in proc.stderr and "other examples" in proc.stderr and "concept_matching.py" in proc.stderr
    concepts.write_text(good.replace('{"key": "synthetic"', '{"key": "another-run"'))
    proc = run_script("gallery.py", "--save_root", str(res))
    assert proc.returncode == 2 and "similarity.pt was not written with the concepts.json" in proc.stderr, proc.stderr
    concepts.write_text(good)
    act = next(res.rglob("activations.pt"))
    torch.save({**torch.load(act, weights_only=True), "key": "a-later-step-2"}, act)
    proc = run_script("gallery.py", "--save_root", str(res))
    assert proc.returncode == 2 and "was not selected from the activations" in proc.stderr, proc.stderr


def test_alpha_cut_is_the_stored_alpha_of_the_best_score(tmp_path):
    """The red line of a neuron's bars: the alpha concepts.json stored, times the neuron's best S."""
    res = write_synthetic(tmp_path, n_neurons=8, n_images=12)
    concepts = next(res.rglob("concepts.json"))
    concepts.write_text(concepts.read_text().replace('"alpha": 95.0', '"alpha": 40.0'))
    ok(run_script("gallery.py", "--save_root", str(res)))
    data = page_data(res / "gallery" / "index.html")[2]
    S = torch.load(concepts.parent / "similarity.pt", weights_only=True)["similarity"].double()
    assert data["runs"][0]["alpha"] == 40.0
    for n in data["neurons"]:
        assert n["cut"] == pytest.approx(0.4 * float(S[n["n"]].max()), rel=1e-3)


def test_runs_takes_a_concepts_json_or_a_folder_holding_one(tmp_path):
    """--runs given an examples.json (which would show every neuron as named by nothing) or a folder without
    a concepts.json is refused in one line naming it and what to pass; a folder holding runs gives them."""
    res = write_synthetic(tmp_path, n_neurons=8, n_images=12)
    concepts = next(res.rglob("concepts.json"))
    ex_json = next(res.rglob("examples.json"))
    err = refused(run_script("gallery.py", "--save_root", str(res), "--runs", str(ex_json)), bars=False)
    assert f"--runs {ex_json} is not a concepts.json" in err and "concept_matching.py" in err
    empty = tmp_path / "empty"
    empty.mkdir()
    err = refused(run_script("gallery.py", "--save_root", str(res), "--runs", str(empty)), bars=False)
    assert f"--runs {empty} holds no concepts.json" in err
    assert not (res / "gallery").exists()  # nothing written by a refused run
    ok(run_script("gallery.py", "--save_root", str(res), "--runs", str(res / "synth_all")))
    data = page_data(res / "gallery" / "index.html")[2]
    assert [Path(r["path"]) for r in data["runs"]] == [concepts]


def test_images_other_than_those_step_2_read_are_refused(tmp_path):
    """--data_root pointing at a folder with other images under the same names: refused in one line (the
    data key step 2 stored: names, sizes, modification times), the page left as it was; an exact copy of
    the probing set (times kept) is accepted."""
    res = write_synthetic(tmp_path, n_neurons=8, n_images=12)
    ok(run_script("gallery.py", "--save_root", str(res)))
    index = res / "gallery" / "index.html"
    copy = tmp_path / "copy"
    shutil.copytree(tmp_path / "world" / "images", copy)  # copy2: sizes and modification times kept
    ok(run_script("gallery.py", "--save_root", str(res), "--data_root", str(copy)))
    other = tmp_path / "other"
    shutil.copytree(copy, other)
    name = sorted(other.iterdir())[0]
    stat = name.stat()
    Image.fromarray(np.full((48, 48), 7, dtype=np.uint8)).save(name)  # another picture under the same name
    os.utime(name, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # even with the old modification time
    assert name.stat().st_size != stat.st_size
    ok(run_script("gallery.py", "--save_root", str(res), "--data_root", str(copy)))
    before = index.read_bytes()
    err = refused(run_script("gallery.py", "--save_root", str(res), "--data_root", str(other)), bars=False)
    assert f"the images under {other} are not those" in err and "--data_root" in err
    assert index.read_bytes() == before


def test_a_describer_whose_examples_changed_is_refused(tmp_path):
    """A describer's concepts.json carries the key of the examples it was computed from: one computed from
    other examples than examples.json holds now, or one that does not say, is refused in one line naming
    compare_describers.py, not shown as ok."""
    res = write_synthetic(tmp_path, n_neurons=8, n_images=12)
    mammi = next(res.rglob("concepts.json"))
    other = mammi.parent.parent.parent / "describers" / "topk_mean" / "concepts.json"
    other.parent.mkdir(parents=True)
    run = {"examples_key": "synthetic-examples", "config": {"layer": "penultimate", "describer": "topk_mean",
                                                            "examples": json.loads(mammi.read_text())["config"]["examples"]},
           "neurons": [{"neuron": k, "status": "ok", "concepts": [{"concept": "lung", "score": 0.2}]} for k in range(8)]}
    other.write_text(json.dumps(run))
    ok(run_script("gallery.py", "--save_root", str(res)))
    other.write_text(json.dumps({**run, "examples_key": "examples-of-an-earlier-step-2"}))
    err = refused(run_script("gallery.py", "--save_root", str(res)), bars=False)
    assert str(other) in err and "other examples" in err and "re-run compare_describers.py" in err
    other.write_text(json.dumps({k: v for k, v in run.items() if k != "examples_key"}))
    err = refused(run_script("gallery.py", "--save_root", str(res)), bars=False)
    assert str(other) in err and "re-run compare_describers.py" in err


def test_placeholders_in_a_save_root_stay_text(tmp_path):
    """The page is filled in one pass: a save_root whose name holds the template's placeholders shows as
    that name in the title, and the data, the style and the script are each written once, where they belong."""
    odd = tmp_path / "__DATA__ & __TITLE__ __JS__ __SETTINGS__ <b>"
    res = write_synthetic(odd, n_neurons=8, n_images=12)
    ok(run_script("gallery.py", "--save_root", str(res)))
    text, page, data = page_data(res / "gallery" / "index.html")
    title = re.search(r"<title>(.*)</title>", text).group(1)
    assert html.unescape(title) == f"Neuron gallery: {res}" == data["title"]
    assert page.scripts["code"] == "\n" + (REPO / "gallery.js").read_text()
    assert json.loads(page.scripts["settings"]) == {"cardThumbs": 4}
    assert text.count((REPO / "gallery.css").read_text()) == 1 and len(data["neurons"]) == 8


def test_an_experiment_file_shows_its_own_runs(tmp_path):
    """gallery.py config/X.py: the runs under save_root of X's dataset and model (by what their examples.json
    stored), not every run there (the demo's under results/); --runs still shows what it names."""
    res = write_synthetic(tmp_path / "a", n_neurons=8, n_images=12)
    theirs = write_synthetic(tmp_path / "b", n_neurons=9, n_images=12)
    moved = res / "synth_all" / "densenet121"
    shutil.move(theirs / "synth_all" / "resnet50", moved)  # another model's run under the same save_root
    ex_json = moved / "penultimate" / "adaptive93" / "examples.json"
    ex_json.write_text(ex_json.read_text().replace('"model": "resnet50"', '"model": "densenet121"'))
    mine = next((res / "synth_all" / "resnet50").rglob("concepts.json"))
    exp = tmp_path / "exp.py"
    exp.write_text(f"dataset = 'synth'\nmodel = 'resnet50'\nalpha = 95.0\nsave_root = {str(res)!r}\n")

    def runs(*args):
        ok(run_script("gallery.py", *args))
        return sorted(Path(r["path"]) for r in page_data(res / "gallery" / "index.html")[2]["runs"])

    assert runs(str(exp)) == [mine]
    assert runs("--save_root", str(res)) == sorted([mine, next(moved.rglob("concepts.json"))])
    assert runs(str(exp), "--model", "densenet121") == [next(moved.rglob("concepts.json"))]
    err = refused(run_script("gallery.py", str(exp), "--dataset", "nih14"), bars=False)
    assert "no concepts.json under" in err and "dataset nih14" in err


def test_runs_of_one_describer_layer_and_model_are_told_apart_by_their_settings(tmp_path):
    """Cards name a run by describer, layer and model; where several runs share the three, each also gets the
    settings in which they differ (and only those), and a re-initialised target (sanity_check.py) is its
    own model, flagged untrained like --checkpoint random."""
    res = write_synthetic(tmp_path, n_neurons=8, n_images=12)
    mine = next(res.rglob("concepts.json"))
    plain = mine.parent.parent / "words_no_plain_a95"
    shutil.copytree(mine.parent, plain)
    (plain / "ablation.json").unlink()  # it ablates the first run's names
    data = json.loads(mine.read_text())
    data["config"].update(template_ver="no", adaptive=False)
    (plain / "concepts.json").write_text(json.dumps(data))
    (mine.parent / "concepts.json").write_text(json.dumps({**data, "config": {**data["config"], "template_ver": "base",
                                                                             "adaptive": True}}))
    reinit_copy(mine)
    ok(run_script("gallery.py", "--save_root", str(res)))
    runs = {(r["model"], Path(r["path"]).parent.name): r for r in page_data(res / "gallery" / "index.html")[2]["runs"]}
    assert {k: (r["variant"], r["untrained"]) for k, r in runs.items()} == {
        ("resnet50", "words_base_adaptive_a95"): ("adaptive scores · prompt base", False),
        ("resnet50", "words_no_plain_a95"): ("plain scores · prompt no", False),
        ("resnet50-reinit0", "words_base_adaptive_a95"): ("adaptive scores · prompt base", True),
        ("resnet50-reinit0", "words_no_plain_a95"): ("plain scores · prompt no", True)}


def reinit_copy(concepts: Path) -> Path:
    """The layer of a synthetic run copied as sanity_check.py's re-initialised target (resnet50-reinit0), its
    runs pointing at their own examples; returns the copy's layer folder."""
    layer = concepts.parents[3]
    reinit = layer.parent.parent / "resnet50-reinit0" / "penultimate"
    shutil.copytree(layer, reinit)
    ex_json = reinit / "adaptive93" / "examples.json"
    ex_json.write_text(ex_json.read_text().replace('"dataset": "synth"', '"reinit_seed": 0, "dataset": "synth"'))
    for f in reinit.rglob("concepts.json"):
        f.write_text(f.read_text().replace(str(concepts.parents[2]), str(reinit / "adaptive93")))
    return reinit


def test_browser_opens_on_one_run_and_counts_trained_and_untrained_apart(browser, tmp_path):
    """A page with an untrained target's run (--checkpoint random, listed first) and a trained one's opens
    on the trained run; with all runs shown, the counts of named, none and dead neurons and of significant
    names are given for the trained and the untrained target apart, never pooled."""
    from selenium.webdriver.common.by import By
    drv = browser
    res = write_synthetic(tmp_path, n_neurons=16, n_images=24)
    shutil.copytree(res / "synth_all", res / "synthz_all")  # the trained target's, of another probing set's name
    for f in (res / "synthz_all").rglob("*.json"):
        f.write_text(f.read_text().replace('"dataset": "synth"', '"dataset": "synthz"')
                     .replace(str(res / "synth_all"), str(res / "synthz_all")))
    ex_json = next((res / "synth_all").rglob("examples.json"))
    ex_json.write_text(ex_json.read_text().replace('"dataset": "synth"', '"untrained": true, "dataset": "synth"'))
    untrained = next((res / "synth_all").rglob("concepts.json"))
    stored = json.loads(untrained.read_text())
    for n in stored["neurons"]:  # the untrained target's names: none significant
        if n["significant"] is not None:
            n.update(significant=False, q=0.5)
    untrained.write_text(json.dumps(stored))
    mine = next((res / "synthz_all").rglob("concepts.json"))
    ok(run_script("gallery.py", "--save_root", str(res)))
    index = res / "gallery" / "index.html"
    runs = page_data(index)[2]["runs"]
    assert [r["untrained"] for r in runs] == [True, False]
    drv.get(index.resolve().as_uri())
    assert drv.find_element(By.ID, "run").get_attribute("value") == "1"

    def tally(neurons):
        st = [n["status"] for n in neurons]
        tested = [n["significant"] for n in neurons if n["significant"] is not None]
        return (f"{st.count('ok')} named · {st.count('none')} none · {st.count('dead')} dead · "
                f"{sum(tested)} of {len(tested)} tested significant")

    trained = json.loads(mine.read_text())["neurons"]
    assert drv.find_element(By.ID, "count").text == f"16 of 32 neurons shown · {tally(trained)}"
    assert sum(n["significant"] is True for n in trained) > 0
    drv.find_element(By.CSS_SELECTOR, "#run option[value='']").click()
    assert drv.find_element(By.ID, "count").text == (f"32 of 32 neurons shown · trained target: {tally(trained)} | "
                                                     f"untrained target: {tally(stored['neurons'])}")
    drv.find_element(By.CSS_SELECTOR, "#run option[value='0']").click()
    assert drv.find_element(By.ID, "count").text == f"16 of 32 neurons shown · untrained target: {tally(stored['neurons'])}"
    no_errors(drv)


def test_browser_a_layer_that_cannot_be_tested_says_not_testable(browser, tmp_path):
    """concepts.json's evidence says the layer is not testable (no neuron could reach q <= fdr): each named
    neuron's badge reads "not testable", never "not significant"; the evidence filter finds exactly them; the
    view says why in the record's numbers."""
    from selenium.webdriver.common.by import By
    drv = browser
    res = write_synthetic(tmp_path, n_neurons=16, n_images=24, testable=False)
    ok(run_script("gallery.py", "--save_root", str(res)))
    index = res / "gallery" / "index.html"
    stored = json.loads(next(res.rglob("concepts.json")).read_text())
    named = sorted(f"0-{n['neuron']}" for n in stored["neurons"] if n["status"] == "ok")
    drv.get(index.resolve().as_uri())
    badges = drv.execute_script("return [...document.querySelectorAll('#list .card')].map(c => [c.dataset.key,"
                                " [...c.querySelectorAll('.badge.nt, .badge.nsig, .badge.sig')].map(b => b.textContent)])")
    assert {k: b for k, b in badges if b} == {k: ["not testable"] for k in named}
    assert "not significant" not in drv.find_element(By.ID, "list").text
    assert drv.find_element(By.ID, "count").text.endswith(f" · {len(named)} not testable")
    drv.find_element(By.CSS_SELECTOR, "#evsel option[value='nt']").click()
    assert sorted(all_keys(drv)) == named
    drv.find_element(By.CSS_SELECTOR, "#evsel option[value='nsig']").click()
    assert all_keys(drv) == []
    drv.get(index.resolve().as_uri() + "#n" + named[0])
    text = drv.find_element(By.ID, "evidence").text
    assert text.startswith("Not testable. The name is not tested: with a pool of 24 probing images and 1000 random "
                           "draws, the smallest p any neuron could reach is 0.2: no name of this layer can reach "
                           "q ≤ 0.05, so none is called significant or not; a probing set of 500 images could."), text
    no_errors(drv)


def test_browser_sort_by_q_puts_the_most_significant_first(browser, synthetic):
    """Sort by q: ascending q (ties in page order), the neurons without a test after them; a view of a name
    with several examples states the hypothesis with their number."""
    from selenium.webdriver.common.by import By
    drv = browser
    index = synthetic[0] / "gallery" / "index.html"
    data = page_data(index)[2]
    drv.get(index.resolve().as_uri())
    drv.find_element(By.CSS_SELECTOR, "#sort option[value='q']").click()
    got = drv.execute_script("return [...document.querySelectorAll('#list .card')].slice(0, 120).map(c => c.dataset.key)")
    order = sorted(range(len(data["neurons"])), key=lambda i: (data["neurons"][i].get("ev", {}).get("q", 2.0), i))
    assert got == [f"0-{data['neurons'][i]['n']}" for i in order][:len(got)] and len(got) >= 60
    assert data["neurons"][order[0]]["ev"]["q"] == 0.01 and data["neurons"][order[-1]].get("ev") is None
    # A name with several examples: the hypothesis in words, with their number.
    n = next(n for n in data["neurons"] if n.get("ev") and n["e"] > 2)
    drv.get(index.resolve().as_uri() + f"#n0-{n['n']}")
    text = drv.find_element(By.ID, "evidence").text
    assert f"H0: its {n['e']} examples are a random {n['e']}-image subset of the probing set (the null draws from a " \
           f"pool of 96 probing images, 1000 draws)." in text, text
    assert f"Its mean score over the {n['e']} examples, m = " in text and "little power" not in text
    no_errors(drv)


def visible_keys(drv) -> list[str]:
    return drv.execute_script("return [...document.querySelectorAll('#list .card')]"
                              ".filter(c => c.offsetParent !== null).map(c => c.dataset.key)")


def all_keys(drv) -> list[str]:
    """The cards of the whole filtered list: scrolled to its end until every chunk is rendered. Each scroll
    waits for the cards it adds (or the end), however slowly a loaded machine renders them."""
    from selenium.webdriver.support.ui import WebDriverWait
    done = "const m = document.getElementById('more').textContent; return m === '' || m === 'no neuron matches'"
    while not drv.execute_script(done):
        before = len(visible_keys(drv))
        drv.execute_script("window.scrollTo(0, document.body.scrollHeight)")
        WebDriverWait(drv, 30).until(lambda d: d.execute_script(done) or len(visible_keys(d)) > before)
    return visible_keys(drv)


def type_query(drv, text):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    box = drv.find_element(By.ID, "q")
    box.send_keys(Keys.CONTROL + "a", Keys.DELETE)
    for ch in text:  # typed key by key: the list follows every keystroke
        box.send_keys(ch)


def open_view_and_check(drv, key, n_thumbs):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait
    drv.find_element(By.CSS_SELECTOR, f'.card[data-key="{key}"]').click()
    WebDriverWait(drv, 10).until(lambda d: d.find_element(By.ID, "view").is_displayed())
    WebDriverWait(drv, 20).until(lambda d: d.execute_script(
        "return [...document.querySelectorAll('#panel .thumbs img')].every(i => i.complete)"))
    widths = drv.execute_script("return [...document.querySelectorAll('#panel .thumbs img')].map(i => i.naturalWidth)")
    assert len(widths) == n_thumbs and all(w > 0 for w in widths), widths
    assert drv.find_elements(By.CSS_SELECTOR, "#panel svg.hist rect")
    assert drv.find_elements(By.CSS_SELECTOR, "#panel svg.bars rect")


def test_browser_real_gallery(browser, real_gallery, real_run):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    drv = browser
    index = real_gallery[0]
    data = page_data(index)[2]
    drv.get(index.resolve().as_uri())
    # It opens on one run: the trained MAMMI run with the most neurons (penultimate's 1,024); then all of them.
    pen = next(i for i, r in enumerate(data["runs"]) if r["layer"] == "penultimate")
    assert drv.find_element(By.ID, "run").get_attribute("value") == str(pen)
    assert drv.find_element(By.ID, "count").text.startswith(f"1024 of {len(data['neurons'])} neurons shown · ")
    drv.find_element(By.CSS_SELECTOR, "#run option[value='']").click()
    assert drv.find_element(By.ID, "count").text.startswith(f"{len(data['neurons'])} of {len(data['neurons'])}")
    # Search: pick a concept that names a few neurons; exactly those cards stay.
    names = {}
    for n in data["neurons"]:
        for w, _ in n["c"]:
            names.setdefault(w, set()).add(f"{n['r']}-{n['n']}")
    word = min((w for w in names if w != HOSTILE), key=lambda w: len(names[w]))
    want = {f"{n['r']}-{n['n']}" for n in data["neurons"] if any(word in w.lower() for w, _ in n["c"])}
    type_query(drv, word)
    assert sorted(all_keys(drv)) == sorted(want)
    drv.execute_script("window.scrollTo(0, 0)")
    # Layer filter: only the fc run's 14 neurons, each with its class and hit/miss.
    type_query(drv, "")
    drv.find_element(By.CSS_SELECTOR, "#layer option[value='fc']").click()
    keys = visible_keys(drv)
    assert len(keys) == 14 and len(drv.find_elements(By.CSS_SELECTOR, "#list .card .hit, #list .card .miss")) == 14
    # A neuron's view: thumbnails decoded, both figures, the hostile name as plain text in the bar chart.
    first = next(n for n in data["neurons"] if f"{n['r']}-{n['n']}" == keys[0])
    open_view_and_check(drv, keys[0], len(first["x"]))
    labels = drv.execute_script("return [...document.querySelectorAll('#panel svg.bars text title')].map(t => t.textContent)")
    assert HOSTILE in labels
    # No ablation z at fc: the reason instead of the table.
    assert drv.find_elements(By.CSS_SELECTOR, "#ablation table") == []
    assert drv.find_element(By.ID, "ablation").text.startswith("No ablation at this layer: at the fc layer each neuron")
    assert drv.execute_script("return document.querySelectorAll('img[src=\"x\"]').length") == 0
    from selenium.webdriver.support.ui import WebDriverWait
    drv.find_element(By.ID, "next").click()  # a link: the view follows the address (hashchange)
    WebDriverWait(drv, 10).until(lambda d: d.find_element(By.ID, "vtitle").text == f"neuron {first['n'] + 1}")
    drv.find_element(By.TAG_NAME, "body").send_keys(Keys.ESCAPE)
    assert not drv.find_element(By.ID, "view").is_displayed()
    no_errors(drv)


def test_browser_2048_neurons(browser, synthetic):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait
    drv = browser
    index = synthetic[0] / "gallery" / "index.html"
    data = page_data(index)[2]
    loads = []
    for _ in range(3):  # the first load pays for a cold cache; report the median
        drv.get(index.resolve().as_uri())
        t = drv.execute_script("const n = performance.getEntriesByType('navigation')[0];"
                               "return [n.domContentLoadedEventEnd, n.loadEventEnd, window.galleryTiming.first_cards_ms,"
                               " window.galleryTiming.script_ms]")
        loads.append(t)
    dcl, load, first, script = np.median(np.array(loads), axis=0)
    print(f"\n2,048-neuron gallery ({index.stat().st_size / 1e6:.1f} MB): first cards {first:.0f} ms after navigation "
          f"(script {script:.0f} ms), DOMContentLoaded {dcl:.0f} ms, load {load:.0f} ms (median of 3)")
    assert first < 1000, loads
    assert len(visible_keys(drv)) <= 120  # rendered lazily, not 2,048 cards at once
    assert drv.find_element(By.ID, "count").text.startswith("2048 of 2048")
    # Evidence: the filter keeps exactly the significant names, each card says so; the view explains the test.
    drv.find_element(By.CSS_SELECTOR, "#evsel option[value='sig']").click()
    want = {f"{n['r']}-{n['n']}" for n in data["neurons"] if n.get("ev", {}).get("sig")}
    assert sorted(all_keys(drv)) == sorted(want) and len(want) > 100
    assert f"{len(want)} of {len(want)} tested significant" in drv.find_element(By.ID, "count").text
    drv.execute_script("window.scrollTo(0, 0)")
    assert drv.find_element(By.CSS_SELECTOR, '.card[data-key="0-3"] .badge.sig').text == "significant q 0.01"
    open_view_and_check(drv, "0-3", len(data["neurons"][3]["x"]))
    # The view says in words what was tested, against what, and the hypothesis rejected (concepts.json's
    # fields of neuron 3: the hostile name, m = 10 / its examples, the null's 95th percentile 3.25).
    text = drv.find_element(By.ID, "evidence").text
    assert data["neurons"][3]["e"] == 1  # one example: m is its score, S = 10
    assert text.startswith("Significant at q ≤ 0.05.") and f"Tested: the name “{HOSTILE}”." in text, text
    assert "Its mean score over the 1 example, m = 10, against 3.25: the 95th percentile of the best mean score " \
           "(the naming replayed) of random 1-image subsets" in text, text
    assert "p = 0.004, q = 0.01" in text and "z =" not in text
    assert "H0: its 1 example is a random image of the probing set (the null draws from a pool of 96 probing images, " \
           "1000 draws)." in text, text
    rows = drv.find_elements(By.CSS_SELECTOR, "#ablation tr")
    cells = [[td.text for td in r.find_elements(By.TAG_NAME, "td")] for r in rows[1:]]
    assert cells == [[HOSTILE, "1", "1.5", "0.1 ± 0.2", "7", "0.05"], ["mass", "0", "–", "–", "–", "–"]]
    assert drv.find_elements(By.CSS_SELECTOR, "#ablation tr.mine") == [rows[1]]  # neuron 3 is named for it
    drv.find_element(By.ID, "close").click()
    drv.find_element(By.CSS_SELECTOR, "#evsel option[value='']").click()
    # The hostile concept: found by search, shown as text, never run.
    type_query(drv, "onerror")
    want = {f"{n['r']}-{n['n']}" for n in data["neurons"] if any("onerror" in w for w, _ in n["c"])}
    assert "0-3" in want and sorted(all_keys(drv)) == sorted(want)
    drv.execute_script("window.scrollTo(0, 0)")
    card = drv.find_element(By.CSS_SELECTOR, '.card[data-key="0-3"]')
    assert HOSTILE in card.text
    open_view_and_check(drv, "0-3", len(data["neurons"][3]["x"]))
    assert drv.find_element(By.CSS_SELECTOR, "#panel .panels img").get_property("naturalWidth") == 90
    drv.find_element(By.ID, "close").click()
    # Status filter and sort.
    type_query(drv, "")
    drv.find_element(By.CSS_SELECTOR, "#status option[value='dead']").click()
    assert visible_keys(drv) == ["0-5"]
    drv.find_element(By.CSS_SELECTOR, "#status option[value='']").click()
    drv.find_element(By.CSS_SELECTOR, "#sort option[value='ex']").click()
    most = max(n["e"] for n in data["neurons"])
    assert drv.execute_script("return document.querySelector('#list .card').dataset.key") in \
        {f"0-{n['n']}" for n in data["neurons"] if n["e"] == most}
    # Scrolling renders more cards.
    before = len(visible_keys(drv))
    drv.execute_script("window.scrollTo(0, document.body.scrollHeight)")
    WebDriverWait(drv, 30).until(lambda d: len(visible_keys(d)) > before)
    no_errors(drv)


# ---- a run of each kind: MAMMI, a label-based describer and a top-k one, of an untrained target ----------
TOP_K = 7  # the synthetic clip_dissect's images per neuron


@pytest.fixture(scope="module")
def mixed(tmp_path_factory):
    """The synthetic layer (40 neurons) probed with an untrained target, named by MAMMI (scores of a few
    units), by label_auc (AUROCs below 1, from the findings: it selects no examples) and by clip_dissect
    (soft-WPMI scores of its top 7 images per neuron, its top 3 concepts listed)."""
    res = write_synthetic(tmp_path_factory.mktemp("gallery_mixed"), n_neurons=40, n_images=30, seed=1)
    ex_json = next(res.rglob("examples.json"))
    ex = json.loads(ex_json.read_text())
    ex["config"]["untrained"] = True
    ex_json.write_text(json.dumps(ex))
    mammi = next(res.rglob("concepts.json"))
    rng = np.random.default_rng(2)
    findings = class_names()
    neurons = []
    for k in range(40):
        picked = rng.choice(14, 1 + k % 2, replace=False)
        neurons.append({"neuron": k, "n_examples": 30, "status": "dead" if k == 5 else "ok", "concepts": [] if k == 5 else
                        [{"concept": findings[j], "score": float(rng.uniform(0.5, 0.99))} for j in picked]})
    auc = mammi.parent / "describers" / "label_auc" / "concepts.json"
    auc.parent.mkdir(parents=True)
    auc.write_text(json.dumps({"key": "synthetic-auc", "examples_key": "synthetic-examples", "config": {
        "layer": "penultimate", "model": "resnet50", "examples": str(ex_json), "describer": "label_auc",
        "vocabulary": "findings"}, "neurons": neurons}))
    wpmi = []
    for k in range(40):
        top = sorted(rng.uniform(-3, 3, 3).tolist(), reverse=True)
        words = [WORDS[(k + j) % len(WORDS)] for j in range(3)]
        wpmi.append({"neuron": k, "n_examples": TOP_K, "status": "dead" if k == 5 else "ok",
                     "concepts": [] if k == 5 else [{"concept": words[0], "score": top[0]}],
                     "top": [] if k == 5 else [{"concept": w, "score": v} for w, v in zip(words, top)]})
    cd = mammi.parent / "describers" / "clip_dissect" / "concepts.json"
    cd.parent.mkdir(parents=True)
    cd.write_text(json.dumps({"key": "synthetic-cd", "examples_key": "synthetic-examples", "config": {
        "layer": "penultimate", "model": "resnet50", "examples": str(ex_json), "describer": "clip_dissect",
        "vocabulary": "concept_set", "top_k": TOP_K, "model_clip": "synthetic"}, "neurons": wpmi}))
    ok(run_script("gallery.py", "--save_root", str(res)))
    return res, {str(p): json.loads(p.read_text()) for p in (mammi, auc, cd)}


def card_score(n, run) -> float | None:
    """The score a card shows, by which a neuron stands in its run: its best concept's (MAMMI's summed S over
    its examples divided by their number); none for a dead neuron."""
    if n["s"] == "dead":
        return None
    best = (n["b"] or n["c"])[0][1]
    return best / n["e"] if run["describer"] == "MAMMI" else best


def top_share(data) -> dict:
    """Per neuron: 100 x the share of its run's scored neurons whose score is at least its own (a literal count)."""
    out = {}
    for r, run in enumerate(data["runs"]):
        mine = [(n["n"], card_score(n, run)) for n in data["neurons"] if n["r"] == r]
        scored = [v for _, v in mine if v is not None]
        out.update({(r, k): 100 * sum(w >= v for w in scored) / len(scored) for k, v in mine if v is not None})
    return out


def test_mammi_cards_score_the_mean_per_example_and_rivals_their_own(mixed):
    """A card's score: MAMMI's S(k, c) of its first concept divided by its examples (the sum grows with
    their number), a rival's best score as it stored it; each run names its score and unit."""
    res, stored = mixed
    data = page_data(res / "gallery" / "index.html")[2]
    runs = {r["describer"]: i for i, r in enumerate(data["runs"])}
    assert {d: data["runs"][i]["score"][0] for d, i in runs.items()} == {
        "MAMMI": "S(k, c)", "label_auc": "AUROC", "clip_dissect": "soft-WPMI"}
    assert data["runs"][runs["MAMMI"]]["score"][1] == "summed score over the examples"
    mammi = next(p for p in stored if "describers" not in p)
    S = torch.load(Path(mammi).parent / "similarity.pt", weights_only=True)["similarity"].double()
    counts = {n["neuron"]: n["n_examples"] for n in stored[mammi]["neurons"]}
    for n in data["neurons"]:
        run = data["runs"][n["r"]]
        if n["s"] == "dead":
            assert n["v"] is None
        elif run["describer"] == "MAMMI":
            assert n["v"] == pytest.approx(float(S[n["n"]].max()) / counts[n["n"]], rel=1e-3)
        else:
            want = stored[run["path"]]["neurons"][n["n"]]["concepts"][0]["score"]
            assert n["v"] == pytest.approx(want, rel=1e-3)


def test_a_rival_shows_its_own_examples_or_none(mixed):
    """clip_dissect's view holds its own top 7 images by activation (ties in probe order), its 7th activation
    as the cut, and how many of them begin step 2's examples (whose activation maps they get); label_auc,
    which scores every image and selects none, shows none. Neither shows MAMMI's examples."""
    res, stored = mixed
    data = page_data(res / "gallery" / "index.html")[2]
    ex_json = next(res.rglob("examples.json"))
    ex = {n["neuron"]: [e["image_id"] for e in n["examples"]] for n in json.loads(ex_json.read_text())["neurons"]}
    act = torch.load(ex_json.parent.parent / "activations.pt", weights_only=True)
    acts, ids = act["activations"].double(), act["image_ids"]
    runs = {r["describer"]: i for i, r in enumerate(data["runs"])}
    cd = data["runs"][runs["clip_dissect"]]
    assert cd["top_k"] == TOP_K and len(data["tops"]) == 1 and cd["tops"] == 0
    tops = data["tops"][0]
    differ, mapped = 0, []
    for n in data["neurons"]:
        if n["r"] == runs["label_auc"]:
            assert n["x"] == [] and n["e"] == 0 and n["t"] is None
        elif n["r"] == runs["clip_dissect"]:
            assert "x" not in n  # the run's top images are the page's, shared with any rival of the same k
            k = str(n["n"])
            shown = [data["images"][x[0]][0] for x in tops["x"][k]]
            if n["s"] == "dead":
                assert shown == [] and n["e"] == 0
                continue
            col = acts[:, n["n"]].tolist()
            order = sorted(range(len(ids)), key=lambda i: (-col[i], i))[:TOP_K]
            assert shown == [ids[i] for i in order] and n["e"] == TOP_K
            assert tops["t"][k] == pytest.approx(col[order[-1]], rel=1e-3)
            assert [x[1] for x in tops["x"][k]] == pytest.approx([col[i] for i in order], rel=1e-3)
            same = 0
            while same < len(shown) and same < len(ex[n["n"]]) and shown[same] == ex[n["n"]][same]:
                same += 1
            assert tops["mp"][k] == same
            mapped.append(same)
            differ += shown != ex[n["n"]]
        else:
            assert [data["images"][x[0]][0] for x in n["x"]] == ex[n["n"]]
    assert differ > 10 and 0 < min(mapped)  # most neurons' top 7 are not their adaptive examples, which begin them


def test_browser_cards_short_labels_rank_sort_and_untrained(browser, mixed):
    """Cards carry describer, layer and model as labels of their own, never the run's folder (the neuron view
    does); no example count for a label-based describer; the status "ok" reads "named"; the score is named
    by its describer's measure and placed in its run as "top N%"; sorting by it ranks within each run, so
    MAMMI's means and AUROCs interleave by rank; an untrained target is flagged on every card and in the
    view; an address #n{run}-{neuron} opens that neuron."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait
    drv = browser
    res, stored = mixed
    index = res / "gallery" / "index.html"
    data = page_data(index)[2]
    runs = data["runs"]
    auc = next(i for i, r in enumerate(runs) if r["describer"] == "label_auc")
    cd = next(i for i, r in enumerate(runs) if r["describer"] == "clip_dissect")
    mammi = next(i for i, r in enumerate(runs) if r["describer"] == "MAMMI")
    drv.get(index.resolve().as_uri())
    assert drv.find_element(By.ID, "run").get_attribute("value") == str(mammi)  # it opens on MAMMI's run
    drv.find_element(By.CSS_SELECTOR, "#run option[value='']").click()
    all_keys(drv)
    cards = drv.execute_script("return [...document.querySelectorAll('#list .card')].map(c => [c.dataset.key,"
                               " [...c.querySelectorAll('.tag')].map(t => t.textContent), c.querySelector('.score').textContent,"
                               " c.textContent, c.querySelectorAll('.badge.untrained').length,"
                               " c.querySelector('.badge[class*=\"s-\"]').textContent])")
    assert len(cards) == 120
    share = top_share(data)
    by = {(n["r"], n["n"]): n for n in data["neurons"]}
    for key, tags, score, text, untrained, status in cards:
        r, k = map(int, key.split("-"))
        assert tags == [runs[r]["describer"], "penultimate", "resnet50"], tags
        assert runs[r]["folder"] not in text and "synth_all" not in text and "vlm_synth" not in text
        assert ("example" in score) == (r != auc), score
        assert untrained == 1
        assert status == {"ok": "named", "none": "none", "dead": "dead"}[by[(r, k)]["s"]]
        if (r, k) in share:
            assert score.endswith(f" · top {max(1, math.floor(share[(r, k)] + 0.5))}% of its run"), score
            assert {auc: "AUROC ", cd: "soft-WPMI ", mammi: "mean S "}[r] in score, score
    # Sort by score: across runs by the share of its run at or above it, then the score; dead neurons last.
    drv.execute_script("window.scrollTo(0, 0)")
    drv.find_element(By.CSS_SELECTOR, "#sort option[value='top']").click()
    inf = float("inf")
    order = sorted(data["neurons"], key=lambda n: (share.get((n["r"], n["n"]), inf),
                                                   -(card_score(n, runs[n["r"]]) if n["s"] != "dead" else -inf),
                                                   data["neurons"].index(n)))
    want = [f"{n['r']}-{n['n']}" for n in order]
    by_score = [f"{n['r']}-{n['n']}" for n in sorted(data["neurons"], key=lambda n: -(card_score(n, runs[n["r"]]) or -inf))]
    assert want[:40] != by_score[:40]  # raw scores would put one run's neurons first
    assert all_keys(drv) == want
    # Within one run: by its own score.
    drv.execute_script("window.scrollTo(0, 0)")
    drv.find_element(By.CSS_SELECTOR, f"#run option[value='{auc}']").click()
    mine = [n for n in data["neurons"] if n["r"] == auc]
    assert all_keys(drv) == [f"{auc}-{n['n']}" for n in sorted(mine, key=lambda n: (
        -(card_score(n, runs[auc]) if n["s"] != "dead" else -inf), n["n"]))]
    # The views: the run's folder, the warning; label_auc with no examples and its AUROC; clip_dissect with its
    # own top 7 and its soft-WPMI; only MAMMI's score is S(k, c).
    drv.get(index.resolve().as_uri() + f"#n{auc}-3")
    WebDriverWait(drv, 10).until(lambda d: d.find_element(By.ID, "view").is_displayed())
    assert drv.find_element(By.ID, "vtitle").text == "neuron 3"
    assert drv.find_element(By.ID, "runpath").text == runs[auc]["folder"]
    assert drv.find_element(By.ID, "untrained").is_displayed()
    panel = drv.find_element(By.ID, "panel").text
    assert "it selects no examples" in panel and "no examples: label_auc selects none" in panel
    assert "examples (adaptive" not in panel and "S(k, c)" not in panel
    assert drv.find_elements(By.CSS_SELECTOR, "#panel .thumbs img") == []
    assert bars_axis(drv).startswith("AUROC: of the neuron's activation against the finding's labels")
    drv.get(index.resolve().as_uri() + f"#n{cd}-3")
    WebDriverWait(drv, 10).until(lambda d: d.find_element(By.ID, "vtitle").text == "neuron 3")
    panel = drv.find_element(By.ID, "panel").text
    assert f"{TOP_K} examples (its top {TOP_K} by activation)" in panel and "S(k, c)" not in panel
    assert len(drv.find_elements(By.CSS_SELECTOR, "#panel .thumbs figure")) == TOP_K
    assert bars_axis(drv).startswith("soft-WPMI: log P(c | k)")
    k, count = next((n["n"], n["e"]) for n in data["neurons"] if n["r"] == mammi and n["e"] > 1)
    drv.get(index.resolve().as_uri() + f"#n{mammi}-{k}")
    WebDriverWait(drv, 10).until(lambda d: d.find_element(By.ID, "vtitle").text == f"neuron {k}")
    assert f"{count} examples (adaptive" in drv.find_element(By.ID, "panel").text
    assert bars_axis(drv) == "S(k, c): summed score over the examples"
    no_errors(drv)


def bars_axis(drv) -> str:
    """The label under a neuron's bar chart of concept scores."""
    return drv.execute_script("const t = document.querySelectorAll('#panel svg.bars > text'); return t[t.length - 1].textContent")


def test_browser_layer_summary_counts_neurons_per_concept(browser, mixed):
    """The layer summary, opened from the bar: per run, a bar per concept with the number of neurons whose
    names hold it, the most carried first (ties by name), as counted from the concepts.json files."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait
    drv = browser
    res, stored = mixed
    index = res / "gallery" / "index.html"
    runs = page_data(index)[2]["runs"]
    drv.get(index.resolve().as_uri())
    drv.find_element(By.ID, "summarybtn").click()
    WebDriverWait(drv, 10).until(lambda d: d.find_element(By.ID, "view").is_displayed())
    assert drv.find_element(By.ID, "vtitle").text == "layer summary"
    for r, run in enumerate(runs):
        counts = {}
        for n in stored[run["path"]]["neurons"]:
            for w in {c["concept"] for c in n["concepts"]}:
                counts[w] = counts.get(w, 0) + 1
        want = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
        sel = f'.summary[data-run="{r}"]'
        names = drv.execute_script(f"return [...document.querySelectorAll('{sel} svg text.concept title')].map(t => t.textContent)")
        got = drv.execute_script(f"return [...document.querySelectorAll('{sel} svg text.count')].map(t => +t.textContent)")
        assert list(zip(names, got)) == want[:25]
        more = drv.find_element(By.CSS_SELECTOR, sel).text
        assert (f"{len(want) - 25} more concepts not drawn" in more) == (len(want) > 25)
    drv.find_element(By.ID, "close").click()
    assert not drv.find_element(By.ID, "view").is_displayed()
    no_errors(drv)


def test_browser_the_readme_bookmark_opens_its_neuron(browser, synthetic):
    """The address the README gives as a bookmark opens that neuron's view on a page that holds it; a trained
    target's page shows no untrained warning."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait
    drv = browser
    index = synthetic[0] / "gallery" / "index.html"
    m = re.search(r"`index\.html#(n(\d+)-(\d+))`", (REPO / "README.md").read_text())
    assert m, "the README gives no bookmark"
    drv.get(index.resolve().as_uri() + "#" + m.group(1))
    WebDriverWait(drv, 10).until(lambda d: d.find_element(By.ID, "view").is_displayed())
    assert drv.find_element(By.ID, "vtitle").text == f"neuron {m.group(3)}"
    assert drv.find_elements(By.CSS_SELECTOR, ".untrained, #untrained") == []
    no_errors(drv)
