"""The README and docs/ stay true: every link and every repository path they write leads somewhere, the
README fits a sitting, and the numbers they state about the demo are the ones its files hold.

Numbers are compared with what produced them: pretrained/demo_training.json (committed: always
checked), the demo's own summary (results/demo/summary.json, written by `python demo.py` and not
committed: checked where a demo has run, skipped otherwise), and the suite's size (checked when the
whole of tests/ was collected, as `.ci/run` does)."""
import json
import re
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
PAGES = [README, *sorted((REPO / "docs").glob("*.md"))]
MAX_README_LINES = 300  # a newcomer's one sitting
SUMMARY = REPO / "results" / "demo" / "summary.json"
TRAINING = REPO / "pretrained" / "demo_training.json"
TRAINING_SHORTCUT = REPO / "pretrained" / "demo_training_shortcut.json"
# File names the docs write for a user's own files, not the repository's.
USER_FILES = {"my_model.py"}
PATH_SUFFIXES = ("py", "md", "json", "txt", "csv", "toml", "html", "css", "js", "pth", "pt", "bin", "yml", "yaml")
PATH = re.compile(r"[A-Za-z0-9_.\-/]+\.(?:" + "|".join(PATH_SUFFIXES) + r")")


def prose(text: str) -> str:
    """The text outside fenced code blocks, lines kept (so line numbers hold)."""
    out, fenced = [], False
    for line in text.splitlines():
        if line.lstrip().startswith("```"):
            fenced = not fenced
            out.append("")
        else:
            out.append("" if fenced else line)
    return "\n".join(out)


def slug(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, markup and punctuation dropped, spaces as hyphens."""
    s = heading.strip().lower()
    s = re.sub(r"[^\w\- ]", "", s)
    return s.replace(" ", "-")


def anchors(text: str) -> set[str]:
    """The anchors of a page's headings (a repeated heading gets -1, -2, ... as GitHub numbers them)."""
    seen: dict[str, int] = {}
    out = set()
    for line in prose(text).splitlines():
        m = re.match(r"#{1,6} (.+)", line)
        if m:
            base = slug(m.group(1))
            n = seen.get(base, 0)
            seen[base] = n + 1
            out.add(base if n == 0 else f"{base}-{n}")
    return out


def links(text: str) -> list[tuple[int, str]]:
    """(line, target) of every markdown link outside code."""
    return [(i, m.group(1)) for i, line in enumerate(prose(text).splitlines(), 1)
            for m in re.finditer(r"\]\(([^)\s]+)\)", line)]


def dead_links(path: Path, text: str) -> list[str]:
    """The links of page `path` (holding `text`) to a file that is not there, or to a heading it lacks."""
    bad = []
    for line, target in links(text):
        if re.match(r"[a-z]+:", target):  # http(s), mailto: not ours to check offline
            continue
        file, _, anchor = target.partition("#")
        dest = (path.parent / file).resolve() if file else path
        where = f"{path.relative_to(REPO)}:{line}: {target}"
        if file and not dest.exists():
            bad.append(f"{where} (no such file)")
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest.read_text() if file else text):
            bad.append(f"{where} (no heading with that anchor in {dest.name})")
    return bad


def code_paths(text: str) -> list[tuple[int, str]]:
    """(line, path) of every inline code span that is a file path: a name with a known suffix, without
    placeholders ({...}, *, ...)."""
    out = []
    for i, line in enumerate(prose(text).splitlines(), 1):
        for span in re.findall(r"`([^`]+)`", line):
            if PATH.fullmatch(span) and "..." not in span:
                out.append((i, span))
    return out


def ignored(paths: list[str]) -> set[str]:
    """The paths git ignores: where the docs say a user puts a file (pretrained/densenet121.pth)."""
    try:
        got = subprocess.run(["git", "check-ignore", "--no-index", "--stdin"], input="\n".join(paths), cwd=REPO,
                             capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        pytest.skip("git is not available to tell user files from missing ones")
    if got.returncode not in (0, 1):
        pytest.skip(f"git check-ignore failed: {got.stderr.strip()}")
    return set(got.stdout.split())


def missing_paths(path: Path, text: str) -> list[str]:
    """Code spans naming a repository file that is not there. A path with a folder counts when its first
    folder is one of the repository's; a bare name when it is a script (.py), which must be a top-level
    step or a test, or one of USER_FILES. Bare output names (examples.json) are not files of the repo."""
    top = {p.name for p in REPO.iterdir()}
    suspects = []
    for line, span in code_paths(text):
        if "/" in span:
            if span.split("/")[0] in top and not (REPO / span).exists():
                suspects.append((line, span))
        elif span.endswith(".py") and span not in USER_FILES and not (REPO / span).is_file() \
                and not (REPO / "tests" / span).is_file():
            suspects.append((line, span))
    meant_for_user = ignored([s for _, s in suspects if "/" in s]) if suspects else set()
    return [f"{path.relative_to(REPO)}:{line}: `{span}`" for line, span in suspects if span not in meant_for_user]


def flat(text: str) -> str:
    """Text with its line breaks and runs of spaces as one space, so a phrase may wrap anywhere."""
    return re.sub(r"\s+", " ", text)


def row(text: str, label: str, exact: bool = False) -> list[str]:
    """The cells after the first of the first table row whose first cell, bold marks aside, starts with
    label (is label, when exact)."""
    for line in text.splitlines():
        cells = [c.strip().replace("**", "") for c in line.strip().strip("|").split("|")]
        if line.startswith("|") and (cells[0] == label if exact else cells[0].startswith(label)):
            return cells[1:]
    raise AssertionError(f"no table row starting {label!r}")


# ---- the README's size, links and paths

def test_the_readme_fits_one_sitting():
    n = len(README.read_text().splitlines())
    assert n <= MAX_README_LINES, f"README.md has {n} lines; move a topic into docs/ (at most {MAX_README_LINES})"


def test_every_doc_page_is_linked_from_the_readme():
    linked = {(README.parent / t.partition("#")[0]).resolve() for _, t in links(README.read_text())}
    assert [p.name for p in PAGES[1:] if p.resolve() not in linked] == []


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(REPO)))
def test_every_relative_link_leads_to_a_file_and_heading(page):
    assert dead_links(page, page.read_text()) == []


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(REPO)))
def test_every_repository_path_in_code_exists(page):
    assert missing_paths(page, page.read_text()) == []


def test_the_checkers_catch_a_dead_link_a_missing_anchor_and_a_missing_path():
    """The checks above on a page written to fail each (and to pass the rest): if they passed it, they
    would pass anything."""
    page = REPO / "docs" / "_probe_of_the_checker.md"
    text = ("# Title\n\n[ok](../README.md#set-up-and-run) [self](#title) [gone](nowhere.md) "
            "[anchor](../README.md#no-such-heading)\n`pipeline/no_such_module.py` `no_such_step.py` "
            "`examples.json` `my_model.py` `pipeline/cache.py` `results/{dataset}/x.json` "
            "`pretrained/densenet121.pth` [web](https://example.org/x.md)\n"
            "```\n[in code](also_nowhere.md) `core/in_code.py`\n```\n")
    assert dead_links(page, text) == ["docs/_probe_of_the_checker.md:3: nowhere.md (no such file)",
                                "docs/_probe_of_the_checker.md:3: ../README.md#no-such-heading "
                                "(no heading with that anchor in README.md)"]
    assert missing_paths(page, text) == ["docs/_probe_of_the_checker.md:4: `pipeline/no_such_module.py`",
                                   "docs/_probe_of_the_checker.md:4: `no_such_step.py`"]


def test_slug_is_githubs_anchor():
    assert slug("The demo's results") == "the-demos-results"
    assert slug("Data files in `dataset/`") == "data-files-in-dataset"
    assert slug("2. Model-randomisation sanity check (`sanity_check.py`)") == \
        "2-model-randomisation-sanity-check-sanity_checkpy"
    assert slug("Where this differs from the authors' release") == "where-this-differs-from-the-authors-release"


# ---- numbers against what produced them

def test_the_demo_models_numbers_are_those_of_their_training_record():
    """docs/demo-world.md on training the demo models, against the committed pretrained/demo_training.json."""
    t = json.loads(TRAINING.read_text())
    c, target, vlm = t["config"], t["target"], t["vlm"]
    text = flat((REPO / "docs" / "demo-world.md").read_text())
    picks = vlm["pick_among_14_per_class"]
    for phrase in [
        f"world of {c['n_train']:,}/{c['n_val']:,}/{c['n_test']:,} phantoms",
        f"target {c['target_epochs']} epochs at {c['target_res']} px, {target['seconds']:.0f} s, "
        f"test AUROC {target['test_auroc_mean']:.3f} on its own held-out split",
        f"VLM {c['clip_epochs']} epochs, {vlm['seconds']:.0f} s, zero-shot AUROC {vlm['zero_shot_auroc_mean']:.3f}",
        f"mass, pleural thickening and infiltration (picked among the 14 names for {picks['Mass']:.0%}, "
        f"{picks['Pleural thickening']:.0%}, {picks['Infiltration']:.0%} of single-finding images",
    ]:
        assert phrase in text, phrase


def test_the_shortcut_targets_numbers_are_those_of_the_training_records():
    """docs/demo-world.md on the shortcut target, against both committed training records."""
    shortcut = json.loads(TRAINING_SHORTCUT.read_text())
    clean = json.loads(TRAINING.read_text())
    obj, cls, share = shortcut["shortcut"].split(":")
    prevalence = shortcut["object_prevalence"]["train"][obj]["per_class"][cls]
    r = {name: t["target"]["test_auroc_by_object"][obj][cls] for name, t in (("clean", clean), ("shortcut", shortcut))}
    text = flat((REPO / "docs" / "demo-world.md").read_text())
    for phrase in [
        "`--shortcut \"" + shortcut["shortcut"] + "\"`",
        f"a tube on {prevalence['with_class']:.0%} of its {prevalence['n_class']} {cls} training images and "
        f"{prevalence['without_class']:.0%} of the others; {shortcut['target']['seconds']:.0f} s, test AUROC "
        f"{shortcut['target']['test_auroc_mean']:.3f} on its own held-out split",
        f"the clean target {r['clean']['auroc_with']:.3f} on the {r['clean']['n_with']} positives with a tube and "
        f"{r['clean']['auroc_without']:.3f} on the {r['clean']['n_without']} without; the shortcut target "
        f"{r['shortcut']['auroc_with']:.3f} and {r['shortcut']['auroc_without']:.3f}",
    ]:
        assert phrase in text, phrase
    assert clean["shortcut"] == "" and float(share) == 0.9


@pytest.fixture(scope="module")
def summary():
    if not SUMMARY.is_file():
        pytest.skip(f"{SUMMARY.relative_to(REPO)} is not here (run `python demo.py`): the README's demo numbers "
                    f"are not checked")
    return json.loads(SUMMARY.read_text())


def test_the_readme_world_and_concept_set_are_the_demos(summary):
    c, text = summary["config"], flat(README.read_text())
    assert f"world of {c['n_probe']:,} probing, {c['n_val']:,} val and {c['n_test']:,} test phantoms" in text
    n = {m["config"]["n_concepts"] for m in summary["fc"].values()}
    assert len(n) == 1 and f"concept set of {n.pop():,} words" in text


def test_the_readme_fc_table_is_the_demos(summary):
    text = README.read_text()
    labels = {"MAMMI (adaptive examples, template, adaptive score)": "MAMMI (adaptive examples p = 93",
              "not adaptive": "not adaptive (no template", "no template": "no template (",
              "top-k examples (k = 20)": "top-k examples (k = 20) instead"}
    assert set(summary["fc"]) == set(labels)
    for key, label in labels.items():
        m = summary["fc"][key]
        hits = round(m["hit_rate"]["mean"] * m["hit_rate"]["n"])
        assert row(text, label) == [f"{hits}/{m['hit_rate']['n']}", f"{m['precision']['mean']:.3f}",
                                    f"{m['f1']['mean']:.3f}", f"{m['cosine']['all-minilm-l6-v2']['mean']:.3f}"], key


def test_the_readme_target_and_penultimate_lines_are_the_demos(summary):
    text = flat(README.read_text())
    auroc = summary["auroc"]
    mean = sum(auroc.values()) / len(auroc)
    assert (f"mean **{mean:.3f}**; " + ", ".join(f"{k} {v:.3f}" for k, v in auroc.items())) in text
    p = summary["penultimate"]
    assert f"of the {p['selective']} neurons with a lift ≥ 2, **{p['agree']} ({p['share']:.1%})**" in text
    per = row(README.read_text(), "penultimate layer (")[0]
    for finding, (hit, of) in p["per_class"].items():
        if f" {finding} " in f" {per.split('Per finding:')[1]}":
            assert f"{finding} {hit}/{of}" in per, finding
    g = summary["pointing_game"]["overall"]
    pairs = g["n"] + summary["pointing_game"]["pairs_without_boxes"]
    assert (f"of the {pairs} (image, predicted class) pairs, {g['n']} have a box of that class; in {g['hits']} of "
            f"them ({g['accuracy']:.1%}) the overall Taylor map peaks inside it; mean share of map mass inside the "
            f"boxes {g['mass_inside_mean']:.2f}") in text


def test_the_readme_significance_table_is_the_demos(summary):
    text = README.read_text()
    for layer, label in (("fc", "fc (14 class"), ("penultimate", "penultimate (1,024")):
        t, r = summary["significance"][layer]["target"], summary["significance"][layer]["reinitialised"]
        want_r = f"{r['significant']} of {r['tested']:,} ({r['share']:.0%})"
        if r["significant"] == 0:  # the README counts the live neurons named and says how many are dead
            want_r = f"0 of {r['tested']:,} named ({t['tested'] - r['tested']:,} dead)"
        assert row(text, label) == [f"{t['significant']:,} of {t['tested']:,} ({t['share']:.0%})", want_r], layer


def test_the_readme_describer_and_faithfulness_tables_are_the_demos(summary):
    text = README.read_text()
    names = {"mammi": "MAMMI", "clip_dissect": "CLIP-Dissect (soft-WPMI)", "topk_mean": "top-k mean",
             "label_auc": "label AUROC (labels)", "dissection": "Network Dissection (boxes)"}
    fc, pen = summary["describers"]["fc"]["rows"], summary["describers"]["penultimate"]["rows"]
    faith = row(text, "faithfulness, median z")
    for i, (key, label) in enumerate(names.items()):
        m, t = fc[key]["fc"], pen[key]["truth"]
        hits = round(m["hit_rate"]["mean"] * m["hit_rate"]["n"])
        named = round(t["any"]["mean"] * t["any"]["n"])
        assert row(text, label, exact=True) == [
            f"{hits}/{m['hit_rate']['n']} ({m['hit_rate']['mean']:.3f} ± {m['hit_rate']['se']:.3f})",
            f"{m['precision']['mean']:.3f} ± {m['precision']['se']:.3f}",
            f"{m['f1']['mean']:.3f} ± {m['f1']['se']:.3f}",
            f"{m['cosine']['all-minilm-l6-v2']['mean']:.3f} ± {m['cosine']['all-minilm-l6-v2']['se']:.3f}",
            f"{named}/{t['any']['n']} ({t['any']['mean']:.3f} ± {t['any']['se']:.3f})",
            f"{t['top1']['mean']:.3f} ± {t['top1']['se']:.3f}"], key
        f = pen[key]["faithfulness"]
        assert faith[i] == f"{f['median_z']:.1f} ({f['findings']}/{f['of']})", key


def test_the_readme_ablation_line_is_the_demos(summary):
    found = [f for f in summary["ablation"]["penultimate"]["findings"] if f["n_neurons"]]
    low, high = min(found, key=lambda f: f["z"]), max(found, key=lambda f: f["z"])
    text = flat(README.read_text())
    passing = sum(f["z"] >= 2 for f in found)
    assert f"z ≥ 2 in **{passing} of {len(found)}** findings with named neurons" in text
    assert f"from {low['z']:.1f} ({low['finding']}, {low['n_neurons']} neurons)" in text
    assert f"to {high['z']:.1f} ({high['finding']})" in text


def test_the_readme_audit_table_is_the_demos(summary):
    """The tied class's row of both targets' audits: what is flagged, and the AUROC with and without the object."""
    audit = summary["audit"]
    tie, text = audit["tie"], README.read_text()
    cells = {}
    for name, a in audit["targets"].items():
        r = next(r for r in a["classes"] if r["class"] == tie["class"])
        flagged = [(i + 1, c) for i, c in enumerate(r["concepts"]) if c["flagged"]]
        s = next(s for s in r["stratified"] if s["concept"] == tie["word"])
        cells[name] = ("; ".join(f"{c['concept']}: #{i} by share, {c['share']:.2f} of the evidence, z {c['z']:.1f}"
                                 for i, c in flagged) or "none",
                       f"{s['auroc_with']:.3f} ({s['n_with']}) / {s['auroc_without']:.3f} ({s['n_without']})",
                       f"{s['gap']:+.3f} ({s['ci'][0]:+.3f} to {s['ci'][1]:+.3f})")
    assert f"| {tie['class']} on the {summary['config']['n_test']} test phantoms | clean target | shortcut target |" \
        in text
    assert row(text, "flagged as a possible shortcut") == [cells["clean"][0], cells["shortcut"][0]]
    assert row(text, f"AUROC on the positives the VLM sees '{tie['word']}' in / on the others") == \
        [cells["clean"][1], cells["shortcut"][1]]
    assert row(text, "gap, with - without") == [cells["clean"][2], cells["shortcut"][2]]
    n_neg = {s["n_negatives"] for a in audit["targets"].values() for r in a["classes"] if r["class"] == tie["class"]
             for s in r["stratified"] if s["concept"] == tie["word"]}
    assert len(n_neg) == 1 and f"each against all {n_neg.pop()} negatives" in text


def test_the_readme_counts_the_suite_it_ran_with(request):
    """The suite's size, when this session collected every test file (a whole run, as .ci/run makes)."""
    items = request.session.items
    files = {Path(str(i.fspath)).name for i in items}
    every = {p.name for p in (REPO / "tests").glob("test_*.py")}
    if files != every or request.config.option.keyword or request.config.option.markexpr:
        pytest.skip("not a run of the whole suite: its size is checked only then")
    m = re.search(r"`python -m pytest -q tests` runs ([\d,]+) tests", flat(README.read_text()))
    assert m and int(m.group(1).replace(",", "")) == len(items), \
        f"README.md gives {m and m.group(1)} tests; this run collected {len(items)}"
