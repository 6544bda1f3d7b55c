"""Every constant a step declares, enumerated from its source (pipeline.cli reads the headers):

- each declared range accepts and refuses the values at and just beyond its bounds as it says, in
  the check that `configure` runs on what a user gives;
- each constant of step 2, of step 3's matching and of the describers either changes the key of
  what it decides or is declared as deciding no cached output (a run setting, or the comparison
  table that is rewritten on every run).
"""
import json
import math
from pathlib import Path

import pytest

from pipeline import cli
from pipeline.cli import PipelineError

SCRIPTS = [p.relative_to(cli.ROOT).as_posix() for p in sorted(cli.ROOT.glob("*.py")) + sorted(cli.ROOT.glob("*/*.py"))
           if p.parts[-2] != "tests" and "\nconfig = configure(" in p.read_text()]


def accepted(script: str, name: str, value) -> bool:
    """Whether the check `configure` runs on resolved values lets `value` through for `name` (the other
    constants at their defaults, which a bound may name)."""
    config = {**cli.constants_of(script), name: value}
    try:
        cli._check(config, {name: cli.specs_of(script)[name]}, {})
    except PipelineError:
        return False
    return True


def declared_ranges():
    for script in SCRIPTS:
        defaults = cli.constants_of(script)
        for name, spec in cli.specs_of(script).items():
            if cli._rule(spec)[0] == "range":
                yield script, name, spec, defaults[name]


def test_the_steps_are_found():
    assert {"example_selection.py", "concept_matching.py", "compare_describers.py", "visualization.py",
            "phantom/train.py"} <= set(SCRIPTS)
    found = {(s, n): spec for s, n, spec, _ in declared_ranges()}
    assert found[("concept_matching.py", "alpha")] == "[0, 100)"
    assert found[("example_selection.py", "adaptive_percent")] == "(0, 100)"
    assert found[("compare_describers.py", "wpmi_p_start")] == "(0, 1]"
    assert found[("example_selection.py", "topk")] == "[1, 10**9]"


def written_number(text: str):
    """A bound as Python reads it: 20, 1e-9, 10**7, 2**63 - 1 (integers exact)."""
    assert set(text) <= set("0123456789.e*+- "), text
    return eval(text, {"__builtins__": {}})


def bound_cases(spec: str, default, config: dict) -> list[tuple[float, bool]]:
    """(value, allowed) at and just beyond each finite bound of a range spec, written out from the spec's
    text here: '[' and ']' close an end, '(' and ')' open it; '>= x' is [x, inf), '> x' (x, inf), and
    '<= x', '< x' likewise. Integers step by 1, numbers by a relative 1e-9."""
    text = spec.strip()
    if text[0] in "[(":
        low, high = (part.strip() for part in text[1:-1].split(","))
        ends = [(low, text[0] == "[", "low"), (high, text[-1] == "]", "high")]
    else:
        op, bound = text.split()
        ends = [(bound, op.endswith("="), "low" if op.startswith(">") else "high")]
    cases = []
    for raw, closed, side in ends:
        b = config[raw] if raw.isidentifier() else written_number(raw)
        b = b if isinstance(default, int) else float(b)
        step = 1 if isinstance(default, int) else 1e-9 * max(1.0, abs(b))
        inside, outside = (b + step, b - step) if side == "low" else (b - step, b + step)
        cases += [(b, closed), (inside, True), (outside, False)]
    if isinstance(default, int):
        cases = [(int(v), ok) for v, ok in cases]
    return cases


@pytest.mark.parametrize("script, name, spec, default", list(declared_ranges()),
                         ids=[f"{s}:{n}" for s, n, _, _ in declared_ranges()])
def test_range_bounds_are_checked_as_declared(script, name, spec, default):
    """The value at a closed end is accepted, at an open end refused; just inside accepted, just outside
    refused."""
    config = cli.constants_of(script)
    cases = bound_cases(spec, default, config)
    got = [(v, accepted(script, name, v)) for v, _ in cases]
    assert got == cases, f"{script}: {name}: {spec!r}"


def test_bound_cases_by_hand():
    """The cases the range test checks, for the four kinds of spec, written out."""
    assert bound_cases("[0, 100)", 95.0, {}) == [(0, True), (1e-9, True), (-1e-9, False),
                                                  (100, False), (100 - 1e-7, True), (100 + 1e-7, False)]
    assert bound_cases("(0, 1]", 0.5, {}) == [(0, False), (1e-9, True), (-1e-9, False),
                                               (1, True), (1 - 1e-9, True), (1 + 1e-9, False)]
    assert bound_cases(">= 1", 20, {}) == [(1, True), (2, True), (0, False)]
    assert bound_cases("[1, resize]", 3, {"resize": 8}) == [(1, True), (2, True), (0, False),
                                                            (8, True), (7, True), (9, False)]
    assert bound_cases("[0, 2**63 - 1]", 0, {}) == [(0, True), (1, True), (-1, False), (9223372036854775807, True),
                                                     (9223372036854775806, True), (9223372036854775808, False)]


def test_non_finite_numbers_are_refused():
    assert not accepted("compare_describers.py", "wpmi_a", math.inf)
    assert not accepted("compare_describers.py", "wpmi_a", math.nan)
    assert accepted("compare_describers.py", "wpmi_a", 1000.0)


SEED = "[0, 2**63 - 1]"  # what torch's and numpy's generators both take (torch's stops at 2**64 - 1, numpy's at 0)


def numeric_constants():
    for script in SCRIPTS:
        for name, value in cli.constants_of(script).items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                yield script, name, value


@pytest.mark.parametrize("script, name, value", list(numeric_constants()),
                         ids=[f"{s}:{n}" for s, n, _ in numeric_constants()])
def test_every_number_declares_a_range_with_both_ends(script, name, value):
    """Every numeric constant of every step declares its allowed values, and a range closed on both sides
    by numbers: a count or a size without an upper end reaches the allocator (10**11 random draws) or the
    integer a library takes (a seed of 2**64) before anything names the option. Seeds take exactly SEED
    (reinit_seed also -1, the trained weights)."""
    spec = cli.specs_of(script).get(name)
    assert spec is not None, f"{script}: {name} = {value!r} declares no range"
    rule = cli._rule(spec)
    if rule[0] == "choices":
        return
    assert rule[0] == "range" and rule[1] is not None and rule[3] is not None, f"{script}: {name}: {spec!r}"
    if name.endswith("seed"):
        assert spec == (SEED if name != "reinit_seed" else "[-1, 2**63 - 1]"), f"{script}: {name}: {spec!r}"


@pytest.mark.parametrize("seed", [0, 2**63 - 1])
def test_the_seed_range_is_what_the_generators_take(seed):
    import numpy as np
    import torch
    torch.Generator().manual_seed(seed)
    torch.manual_seed(seed + 1)  # phantom/train.py seeds the VLM's batches with seed + 1
    np.random.default_rng(seed).choice(10, 3, replace=False)
    np.random.default_rng([seed, 1])


# ---- every constant is in the key of what it decides, or is declared as deciding no cached output

def other_value(script: str, name: str, value, special: dict):
    """A valid value of a constant other than `value`: from `special` when a plain change would not be
    a value the step can take (a model name, a file), else the next choice or a nearby number."""
    if name in special:
        return special[name]
    if isinstance(value, bool):
        return not value
    spec = cli.specs_of(script).get(name)
    if spec and cli._rule(spec)[0] == "choices":
        options = [o.strip() for o in spec.split("|")]
        candidates = [type(value)(o) for o in options if o.isidentifier() or o.isdigit()]
    elif isinstance(value, (int, float)):
        candidates = [value + 1, value - 1, value / 2, value * 1.001 + 0.001]
    else:
        candidates = [value + "_other" if value else "other"]
    return next(v for v in candidates if v != value and (not spec or accepted(script, name, v)))


def script_constants(script: str, monkeypatch) -> dict:
    """A step script's namespace as far as its constants (and what it computes beside them), with no
    command line."""
    import runpy
    import sys
    monkeypatch.setattr(sys, "argv", [script])
    return runpy.run_path(str(cli.ROOT / script), run_name="constants_only")


def write_examples(path: Path, key: str, stage2: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"key": key, "config": stage2}))
    return path


def stage2_keys(c: dict) -> tuple[str, str]:
    """Step 2's two keys as it computes them: its activations (from the checkpoint it resolves) and its
    examples."""
    from models.target import checkpoint_of
    from pipeline.outputs import activations_key, examples_key
    act = activations_key(c, checkpoint_of(c["model"], c["checkpoint"]), "probing set")
    return act, examples_key(act, c)


@pytest.fixture
def files(tmp_path):
    made = {}
    for name, data in (("ckpt_a.pth", b"a"), ("ckpt_b.pth", b"b"), ("classes.txt", b"x\ny\n"),
                       ("words.txt", b"mass\nnodule\n"), ("other_words.txt", b"mass\n")):
        made[name] = tmp_path / name
        made[name].write_bytes(data)
    return made


def test_every_step2_constant_changes_a_key_or_is_a_run_setting(files):
    """Each constant of example_selection.py, changed alone to another valid value, changes the
    activations key or the examples key, unless pipeline/outputs.py declares it a run setting, which
    changes neither. The selection's own constants are tried under the selection they belong to."""
    from pipeline.outputs import RUN_SETTINGS
    script = "example_selection.py"
    base = {**cli.constants_of(script), "checkpoint": str(files["ckpt_a.pth"])}
    special = {"model": "resnet50", "checkpoint": str(files["ckpt_b.pth"]), "classes": str(files["classes.txt"]),
               "mean": "0.5", "std": "0.25", "layer": "penultimate", "labels": "none"}
    contexts = [base, {**base, "selection": "topk"}]
    uncovered, settings_in_keys = [], []
    for name in cli.constant_names(script):
        changed = [stage2_keys(c) != stage2_keys({**c, name: other_value(script, name, c[name], special)})
                   for c in contexts]
        if name in RUN_SETTINGS and any(changed):
            settings_in_keys.append(name)
        elif name not in RUN_SETTINGS and not any(changed):
            uncovered.append(name)
    assert uncovered == [], f"step-2 constants in neither key nor RUN_SETTINGS: {uncovered}"
    assert settings_in_keys == [], f"run settings that change a key: {settings_in_keys}"


def stage3_keys(c: dict, code: str) -> tuple[str, str]:
    """Step 3's keys as concept_matching.py chains them: its examples' key, both feature caches, the
    matching (similarity.pt, concepts.json) and the fc metrics."""
    from dataset.concepts import read_concepts
    from models.vlm import weights_identity
    from pipeline.features import vlm_id
    from pipeline.outputs import image_features_key, matching_key, metrics_key, text_features_key
    ex = json.loads(Path(c["examples"]).read_text())
    vlm = vlm_id(c)
    concept_file, _ = read_concepts(c["concept_set"])
    result = matching_key(ex["key"], image_features_key(vlm, ex["config"]), text_features_key(vlm, concept_file, c),
                          c, code)
    return result, metrics_key(result, c["metric_encoders"], weights_identity("medclip", c["medclip_weights"]))


def test_every_step3_constant_changes_a_key_or_is_a_run_setting(files, tmp_path, monkeypatch):
    """Each constant of concept_matching.py changes the matching key or the metrics key, or is a run
    setting (which changes neither)."""
    from pipeline.outputs import RUN_SETTINGS
    script = "concept_matching.py"
    stage2 = {"data_key": "d", "resize": 224, "crop": 224}
    code = script_constants(script, monkeypatch)["CODE"]
    base = {**cli.constants_of(script), "concept_set": str(files["words.txt"]),
            "examples": str(write_examples(tmp_path / "a" / "examples.json", "examples a", stage2))}
    special = {"examples": str(write_examples(tmp_path / "b" / "examples.json", "examples b", stage2)),
               "concept_set": str(files["other_words.txt"]), "model_clip": "open_clip:ViT-B-32",
               "clip_weights": "openai", "template": "A radiograph of a", "medclip_weights": str(tmp_path)}
    uncovered, settings_in_keys = [], []
    for name in cli.constant_names(script):
        changed = stage3_keys(base, code) != stage3_keys({**base, name: other_value(script, name, base[name], special)},
                                                         code)
        if name in RUN_SETTINGS and changed:
            settings_in_keys.append(name)
        elif name not in RUN_SETTINGS and not changed:
            uncovered.append(name)
    assert uncovered == [], f"step-3 constants in no key and not run settings: {uncovered}"
    assert settings_in_keys == [], f"run settings that change a key: {settings_in_keys}"


def test_every_describer_constant_is_in_a_rival_key_or_declared_outside_them(monkeypatch):
    """Each constant of compare_describers.py is in the key of a rival that uses it (changing it
    changes that rival's key), a run setting, or declared as deciding only the comparison that every
    run rewrites; never two of these."""
    from pipeline.outputs import RUN_SETTINGS, describer_key
    script = "compare_describers.py"
    ns = script_constants(script, monkeypatch)
    constants, comparison_only, config = ns["CONSTANTS"], set(ns["COMPARISON_ONLY"]), ns["config"]
    in_keys = {k for names in constants.values() for k in names}
    own = set(cli.constant_names(script))
    unclaimed = sorted(own - in_keys - set(RUN_SETTINGS) - comparison_only)
    assert unclaimed == [], f"compare_describers.py constants neither keyed nor declared: {unclaimed}"
    assert not (in_keys & comparison_only or in_keys & set(RUN_SETTINGS) or comparison_only & set(RUN_SETTINGS))
    inputs = {"activations": "a", "data": "d"}
    for rival, names in constants.items():
        base = describer_key(inputs, {k: config[k] for k in names}, ns["CODE"])
        for name in names:
            where = script if name in own else "bbox_img.py"
            new = {**config, name: other_value(where, name, config[name], {"box_source": "chestx_det"})}
            assert describer_key(inputs, {k: new[k] for k in names}, ns["CODE"]) != base, f"{rival}: {name}"
