"""The demo world's objects that are not findings: their prevalence per split follows the shortcut constant,
they leave the findings as the world without them drew them, each is drawn inside its box, the reports
name them, and a bad constant is one line and exit status 2; the AUROC with and without an object."""
from __future__ import annotations

import hashlib
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from core.errors import PipelineError  # noqa: E402
from phantom import world as phantom  # noqa: E402

N_CASES = 1500  # cases drawn for the prevalence checks (a few ms each)
TIE = "chest tube:Effusion:0.9"  # Effusion: the most frequent finding, so its share is measured on the most images


@pytest.fixture(scope="module")
def cases():
    return [phantom.make_case(0, i)[0] for i in range(N_CASES)]


def within(k: int, n: int, p: float, sds: float = 4.0) -> bool:
    """k successes in n draws agree with a binomial(n, p) within `sds` standard deviations (plus one draw)."""
    return abs(k - n * p) <= sds * math.sqrt(n * p * (1 - p)) + 1


def carried(cases, split: str, tie) -> dict[str, np.ndarray]:
    """Per object, which cases carry it in `split`."""
    drawn = [{o["object"] for o in phantom.sample_objects(0, i, split, c, tie)} for i, c in enumerate(cases)]
    return {obj: np.array([obj in d for d in drawn]) for obj in phantom.OBJECTS}


def has_label(cases, label: str) -> np.ndarray:
    return np.array([any(f["label"] == label for f in c["findings"]) for c in cases])


@pytest.mark.parametrize("spec", [TIE, "laterality marker:Effusion:0", ""])
def test_prevalence_per_split_follows_the_constant(cases, spec):
    tie = phantom.parse_shortcut(spec)
    label = tie.label if tie else "Effusion"
    pos = has_label(cases, label)
    assert pos.sum() > 100  # enough of the class's images for the binomial check to mean something
    for split in ("train", "val", "test"):
        per_object = carried(cases, split, tie)
        for obj, thing in phantom.OBJECTS.items():
            has = per_object[obj]
            tied = tie is not None and tie.obj == obj and split == "train"
            p_pos = tie.share if tied else thing.base
            k, n = int(has[pos].sum()), int(pos.sum())
            assert within(k, n, p_pos), (spec, obj, split, "class", k / n, p_pos)
            k, n = int(has[~pos].sum()), int((~pos).sum())
            assert within(k, n, thing.base), (spec, obj, split, "others", k / n, thing.base)


def test_val_and_test_do_not_depend_on_the_tie(cases):
    tie = phantom.parse_shortcut(TIE)
    for i in range(60):
        for split in ("val", "test"):
            assert phantom.make_image(0, i, split, tie) == phantom.make_image(0, i, split, None)


def test_findings_are_those_of_the_world_without_objects(cases):
    """The findings (labels, boxes, everything sampled) of the first 200 cases of seed 0, and the pixels of
    four images without objects, as the version-2 generator (before objects) drew them."""
    def rounded(x):
        if isinstance(x, float):
            return round(x, 9)
        if isinstance(x, dict):
            return {k: rounded(v) for k, v in x.items()}
        if isinstance(x, list):
            return [rounded(v) for v in x]
        return x
    tie = phantom.parse_shortcut(TIE)
    for split, t in (("train", tie), ("train", None), ("test", tie)):
        found = [phantom.make_image(0, i, split, t)[0]["findings"] for i in range(200)]
        digest = hashlib.sha256(json.dumps(rounded(found), sort_keys=True).encode()).hexdigest()
        assert digest == "843df7f62e785a89a7de9f3717663a629accd3aec58872625aec28bcb96b3039", split
    # pixel sums of the version-2 generator's renders at 48 px (one grey level of rounding allowed per image)
    v2 = [277371, 235999, 227775, 322281]
    for i, want in enumerate(v2):
        case = dict(phantom.make_case(0, i)[0], objects=[])
        assert abs(int(phantom.render(case, 48).astype(int).sum()) - want) <= 48, i


def test_reports_keep_the_findings_text_and_name_the_objects():
    tie = phantom.parse_shortcut(TIE)
    seen = set()
    for i in range(300):
        case, report = phantom.make_image(0, i, "train", tie)
        assert report.endswith(phantom.make_case(0, i)[1])
        low = report.lower()
        names = {o["object"] for o in case["objects"]}
        seen |= names
        for obj, thing in phantom.OBJECTS.items():
            assert (thing.word in low) == (obj in names), (obj, report)
        if "chest tube" in names:
            assert "chest tube" in low or "drainage tube" in low, report
    assert seen == set(phantom.OBJECTS)


def test_every_object_is_drawn_inside_its_box():
    size = 256
    for k, obj in enumerate(phantom.OBJECTS):
        case = dict(phantom.make_case(5, k)[0], objects=[])
        o = {"object": obj}
        phantom.OBJECTS[obj].sample(np.random.default_rng([9, k]), case["anatomy"], case["findings"], o)
        with_ = phantom.render(dict(case, objects=[o]), size).astype(float)
        without = phantom.render(case, size).astype(float)
        d = np.abs(with_ - without)
        x, y, w, h = [int(round(v * size)) for v in o["box"]]
        inside = np.zeros_like(d, bool)
        inside[max(0, y - 2):y + h + 2, max(0, x - 2):x + w + 2] = True
        assert d[inside].max() > 60, (obj, d[inside].max())  # metal and leads: bright against the film
        assert d[inside].sum() > 0.95 * d.sum(), (obj, d[inside].sum() / d.sum())


def test_world_json_records_each_images_objects(tmp_path):
    meta = phantom.write_world(tmp_path, 24, 6, 6, size=64, seed=1, shortcut="Chest Tube:pneumothorax:1")
    assert meta["shortcut"] == "chest tube:Pneumothorax:1"
    on_disk = json.loads((tmp_path / "world.json").read_text())
    assert on_disk["shortcut"] == meta["shortcut"] and set(on_disk["objects"]) == set(phantom.OBJECTS)
    tie = phantom.parse_shortcut("chest tube:Pneumothorax:1")
    n_objects = 0
    for i, (name, entry) in enumerate(on_disk["images"].items()):
        case, report = phantom.make_image(1, i, entry["split"], tie)
        assert entry["report"] == report
        assert [o["object"] for o in entry["objects"]] == [o["object"] for o in case["objects"]]
        for o, c in zip(entry["objects"], case["objects"]):
            assert o["box"] == [round(v * 64, 1) for v in c["box"]] and o["location"] == c["location"]
        n_objects += len(entry["objects"])
        if entry["split"] == "train" and any(f["label"] == "Pneumothorax" for f in entry["findings"]):
            assert any(o["object"] == "chest tube" for o in entry["objects"]), name
    assert n_objects > 0


@pytest.mark.parametrize("bad, says", [("drain:Pneumothorax:0.9", "unknown object 'drain'"),
                                       ("chest tube:Pneumonitis:0.9", "unknown class 'Pneumonitis'"),
                                       ("chest tube:Pneumothorax:1.2", "share '1.2' is not in [0, 1]"),
                                       ("chest tube:Pneumothorax:-0.1", "is not in [0, 1]"),
                                       ("chest tube:Pneumothorax", "is not OBJECT:CLASS:SHARE")])
def test_bad_shortcut_names_the_valid_values(tmp_path, bad, says):
    with pytest.raises(PipelineError) as e:
        phantom.write_world(tmp_path / "w", 2, 1, 1, size=32, seed=0, shortcut=bad)
    msg = str(e.value)
    assert says in msg and msg.startswith("shortcut = ") and "laterality marker" in msg and "Pleural thickening" in msg
    assert not (tmp_path / "w").exists()  # nothing half-written


def test_bad_shortcut_stops_the_trainer_with_one_line(tmp_path):
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    cmd = [sys.executable, "-m", "phantom.train", "--world_dir", str(tmp_path / "w"),
           "--out_dir", str(tmp_path / "out"), "--shortcut", "drain:Pneumothorax:0.9"]
    r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 2, r.stderr[-2000:]
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("error: shortcut = 'drain:Pneumothorax:0.9': unknown object 'drain'")
    assert "Traceback" not in r.stderr
    assert not (tmp_path / "w").exists() and not (tmp_path / "out").exists()
