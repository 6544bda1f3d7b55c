"""Steps 2 to 7 and the describers on a probing set whose classes are not NIH's: a CSV with
four findings, of which ChestX-Det boxes Cardiomegaly, Nodule (as "nodule") and Pleural-Thickening (as
"Pleural Thickening": joined as labels join classes, case, spaces, '_' and '-' aside) and never Zebra
Sign, with -1 and blank labels left without ground truth (--uncertain ignore). Every output names the
stored classes and never NIH's other ones; AUROC, thresholds and the label describer are checked
against scikit-learn and the metric functions on the stored labels."""
import csv
import json

import numpy as np
import pytest
import timm
import torch
from sklearn.metrics import roc_auc_score

from conftest import TINY_CLIP, make_probe_set, ok, run_script
from core.digests import file_digest
from dataset.boxes import canonical
from dataset.nih import class_names
from dataset.probe import MISSING
from mammi.metrics import best_thresholds
from pipeline.cache import load_tensors

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: one intra-op thread

CLASSES = ["Cardiomegaly", "Zebra Sign", "Nodule", "Pleural-Thickening"]
N = 24
# Each class's label per image, cycling: 1, 0, -1 (uncertain), blank, 0, 1, ... (shifted per class).
VALUES = ["1", "0", "-1", "", "0", "1", "0", "0"]
CONCEPTS = "cardiomegaly\nzebra sign\nnodule\nheart\nlung\neffusion\n"
# ChestX-Det boxes (1024-pixel frame) on the first images; an image listed without findings has none.
BOXES = {0: [("Cardiomegaly", [300, 500, 700, 800])],
         1: [("nodule", [100, 100, 200, 200]), ("Pleural Thickening", [50, 300, 150, 700])],
         2: [("Effusion", [600, 600, 900, 900]), ("Cardiomegaly", [350, 450, 750, 850])], 3: []}
# NIH's class names that are not the name of a box here (boxes are named in NIH's spelling where one fits)
# A torchvision Swin small enough for a test, its outputs the four classes.
SWIN_FILE = f"""import torch
from torchvision.models.swin_transformer import SwinTransformer


def build():
    torch.manual_seed(0)
    return SwinTransformer([4, 4], 16, [1, 1], [1, 2], [4, 4], num_classes={len(CLASSES)})
"""
NIH_ONLY = [c for c in class_names() if c not in {canonical(s) for anns in BOXES.values() for s, _ in anns}]
K = len(CLASSES)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("other")
    images = make_probe_set(root / "set", n=N, size=64)
    rows = [["Path", "Sex"] + CLASSES]
    for i in range(N):
        rows.append([f"{i:08d}_000.png", "MF"[i % 2]] + [VALUES[(i + 3 * j) % len(VALUES)] for j in range(K)])
    with open(root / "labels.csv", "w", newline="") as f:
        csv.writer(f).writerows(rows)
    det = [{"file_name": f"{i:08d}_000.png", "syms": [s for s, _ in anns], "boxes": [b for _, b in anns],
            "polygons": [None] * len(anns)} for i, anns in BOXES.items()]
    (root / "boxes.json").write_text(json.dumps(det))
    (root / "concepts.txt").write_text(CONCEPTS)
    (root / "clip.json").write_text(json.dumps(TINY_CLIP))
    torch.manual_seed(0)
    torch.save(timm.create_model("resnet10t", num_classes=K).state_dict(), root / "resnet10t.pth")
    return root, images


def args(world):
    root, images = world
    step2 = ["--dataset", "other", "--data_root", str(images), "--labels", str(root / "labels.csv"), "--uncertain",
             "ignore", "--model", "timm:resnet10t", "--checkpoint", str(root / "resnet10t.pth"), "--resize", "64",
             "--crop", "64", "--mean", "0.5056", "--std", "0.252", "--num_workers", "0", "--save_root",
             str(root / "res")]
    step3 = ["--model_clip", f"open_clip:{root / 'clip.json'}", "--clip_weights", "random", "--concept_set",
             str(root / "concepts.txt"), "--metric_encoders", ""]
    boxes = ["--box_source", "chestx_det", "--box_file", str(root / "boxes.json")]
    return step2, step3, boxes


def known_labels():
    """The stored labels [N, K] under --uncertain ignore: -1 and blank have no ground truth (NaN)."""
    value = {"1": 1.0, "0": 0.0, "-1": np.nan, "": np.nan}
    return np.array([[value[VALUES[(i + 3 * j) % len(VALUES)]] for j in range(K)] for i in range(N)])


def test_steps_2_to_7_name_the_stored_classes(world):
    root, images = world
    step2, step3, boxes = args(world)
    res = root / "res"
    ok(run_script("example_selection.py", *step2, "--layer", "fc,penultimate"))
    ok(run_script("concept_matching.py", *step2, *step3, "--layer", "fc,penultimate"))
    fc = res / "other_train" / "timm-resnet10t" / "fc"
    act = load_tensors(fc / "activations.pt")
    assert act["config"]["class_names"] == CLASSES
    header = (fc / "adaptive93" / "examples.csv").read_text().splitlines()[0].split(",")
    assert header[5:] == CLASSES + [f"prob_{c}" for c in CLASSES]
    run = next(fc.glob("adaptive93/vlm_*/*/concepts.json"))
    assert json.loads(run.read_text())["config"]["class_names"] == CLASSES
    metrics = json.loads((run.parent / "metrics.json").read_text())
    assert metrics["hit_rate"]["n"] == K

    # The describers: findings are the stored classes, labels the stored ones (blank = no ground truth)
    log = ok(run_script("compare_describers.py", *step2, *step3, *boxes, "--mammi_run", str(run)))
    table = json.loads((run.parent / "describers" / "describers.json").read_text())
    assert table["rows"]["mammi"]["fc"]["hit_rate"] == metrics["hit_rate"]
    findings = [c.lower() for c in CLASSES]
    auc = load_tensors(run.parent / "describers" / "label_auc" / "scores.pt")
    assert auc["concepts"] == findings
    y, acts = known_labels(), act["activations"].double().numpy()
    for j in range(K):
        has = ~np.isnan(y[:, j])
        for k in range(K):
            assert abs(float(auc["scores"][k, j]) - roc_auc_score(y[has, j], acts[has, k])) < 1e-6  # stored as float32
    # dissection joins the boxes to the classes by name (Pleural Thickening: Pleural-Thickening) and adds
    # the box findings that are no class (effusion); its maps are the model's own, under its folder
    dis = load_tensors(run.parent / "describers" / "dissection" / "scores.pt")
    negative = [i for i in range(N) if i not in BOXES and (y[i] == 0).all()]  # known to have none of them
    assert negative and dis["concepts"] == findings + ["effusion"] and dis["n_used"] == len(BOXES) + len(negative)
    assert f"dissection: {len(BOXES) + len(negative)} images (3 with boxes" in log
    assert (res / "other_train" / "timm-resnet10t" / "maps_layer4.pt").is_file()
    assert {t for t in table["truth"]["neurons"] if t} <= set(findings) and table["truth"]["n"]
    # every class lacks ground truth on some images: each lift is over the images labelled for it
    ok(run_script("compare_describers.py", *step2, *step3, "--mammi_run", str(run), "--describers", "label_auc",
                  "--truth", "lift", "--truth_images", "8", "--lift_min", "1.2", "--sensitivity_percents", ""))
    want = []
    for k in range(acts.shape[1]):
        top = np.argsort(-acts[:, k], kind="stable")[:8]
        lifts = []
        for j in range(len(CLASSES)):
            has, top_has = ~np.isnan(y[:, j]), top[~np.isnan(y[top, j])]
            lifts.append(y[top_has, j].mean() / y[has, j].mean() if len(top_has) and y[has, j].mean() else -1)
        best = int(np.argmax(lifts))
        want.append(CLASSES[best].lower() if lifts[best] >= 1.2 else None)
    truth = json.loads((run.parent / "describers" / "describers.json").read_text())["truth"]
    assert truth["neurons"] == want and any(want), (truth["neurons"], want)

    # Step 4: the probing CSV is its own val and test set; AUROC per stored class on its known labels
    log = ok(run_script("target_model_perform.py", *step2))
    ev = res / "other_train" / "timm-resnet10t" / "eval"
    thr = [r.split(",")[0] for r in (ev / "Threshold.csv").read_text().splitlines()[1:]]
    assert thr == CLASSES and "reusing the logits" in log
    got = {r[0]: float(r[1]) for r in csv.reader((ev / "TestEval.csv").read_text().splitlines()[1:])}
    logits = act["logits"].double().numpy()
    for j, c in enumerate(CLASSES):
        has = ~np.isnan(y[:, j])
        assert abs(got[c] - roc_auc_score(y[has, j], logits[has, j])) < 1e-6, c
    labels = list(csv.reader((ev / "TestLabels.csv").read_text().splitlines()))
    assert labels[0] == ["image_id"] + CLASSES
    assert [r[1:] for r in labels[1:]] == [["" if np.isnan(v) else str(int(v)) for v in row] for row in y]
    # a val CSV of other columns in another order: its labels join the classes step 2 named
    val = root / "val.csv"
    val.write_text("Pleural Thickening,Path,cardiomegaly\n" + "".join(f"{r[K]},{r[0]},{r[1]}\n" for r in labels[1:]))
    ok(run_script("target_model_perform.py", *step2, "--val_split_file", str(val)))
    thr = {r[0]: r[1] for r in csv.reader((ev / "Threshold.csv").read_text().splitlines()[1:])}
    probs = 1 / (1 + np.exp(-logits))
    want = best_thresholds(np.nan_to_num(y, nan=MISSING).astype(int), probs)
    assert list(thr) == CLASSES and thr["Zebra Sign"] == thr["Nodule"] == "nan"  # no column in val.csv
    assert abs(float(thr["Cardiomegaly"]) - want[0]) < 1e-6 and abs(float(thr["Pleural-Thickening"]) - want[3]) < 1e-6

    # Step 5: the boxed images drawn, whatever the classes
    ok(run_script("bbox_img.py", *step2, *boxes))
    drawn = sorted(p.name for p in (res / "other_chestx_det" / "bbox").glob("*.png"))
    assert drawn == [f"{i:08d}_000_{s}.png" for i in range(3) for s in ("blend", "boxes")]

    # Step 6: each class predicted on every image (thresholds 0): pointing only where a class has boxes
    zero = root / "zero" / "Threshold.csv"  # step 4's thresholds set to 0 by hand, its eval.json vouching for them
    zero.parent.mkdir()
    zero.write_text("label,bestthr\n" + "".join(f"{c},0\n" for c in CLASSES))
    record = json.loads((ev / "eval.json").read_text())
    record["files"]["Threshold.csv"] = file_digest(zero)
    (zero.parent / "eval.json").write_text(json.dumps(record))
    vis_dir = res / "other_chestx_det" / "timm-resnet10t" / "visualization"
    for extra in ([], ["--thresholds", str(zero)]):
        ok(run_script("visualization.py", *step2, *step3, *boxes, *extra))
        vis = json.loads((vis_dir / "total_results.json").read_text())
        for image in vis["images"]:
            assert list(image["probabilities"]) == CLASSES
            assert {p["class"] for p in image["predictions"]} <= set(CLASSES)
            assert all((vis_dir / p["figure"]).is_file() for p in image["predictions"])
    assert len(vis["images"]) == 4 and all(len(i["predictions"]) == K for i in vis["images"])
    per_class = vis["pointing_game"]["per_class"]
    assert {c: v["n"] for c, v in per_class.items()} == {"Cardiomegaly": 2, "Nodule": 1, "Pleural-Thickening": 1}
    assert (vis_dir / "figures" / "00000000_000_Zebra_Sign.png").is_file()

    # Step 7: the gallery's fc cards carry the stored class names
    ok(run_script("gallery.py", "--save_root", str(res)))
    page = (res / "gallery" / "index.html").read_text()
    assert all(f'"cls": "{c}"' in page or f'"cls":"{c}"' in page for c in CLASSES)

    # No output anywhere names an NIH class that is none of these
    for path in res.rglob("*"):
        if path.suffix in (".json", ".csv", ".html"):
            text = path.read_text()
            assert not [c for c in NIH_ONLY if c in text], path

    # Dissection feeds a model its own input statistics (timm's ImageNet ones here) and does not apply,
    # saying why, to one whose maps are channels-last (a Swin: [B, H, W, C]).
    (root / "swin.py").write_text(SWIN_FILE)
    plain = [a for a in step2 if a not in ("--mean", "--std", "0.5056", "0.252")]
    for model, why in ((["--model", "timm:resnet10t"], None),
                       (["--model", f"{root / 'swin.py'}:build", "--checkpoint", ""],
                        "the maps of `features` are channels-last")):
        other = [*plain, *model, "--save_root", str(root / "res_other")]
        ok(run_script("example_selection.py", *other))
        ok(run_script("concept_matching.py", *other, *step3))
        log = ok(run_script("compare_describers.py", *other, *step3, *boxes, "--describers", "label_auc,dissection",
                            "--sensitivity_percents", ""))
        assert "label_auc: 4 neurons named" in log
        assert f"dissection skipped: {why}" in log if why else "dissection skipped" not in log, log[-2000:]

    # Labels changed since step 2: the describers would name neurons from labels the run did not see
    (root / "labels.csv").write_text((root / "labels.csv").read_text().replace(",1,", ",0,", 1))
    proc = run_script("compare_describers.py", *step2, *step3, "--mammi_run", str(run))
    assert proc.returncode == 2 and "changed since step 2 read them" in proc.stderr, proc.stderr[-2000:]


def test_dissection_feeds_the_model_its_own_input(tmp_path):
    """The maps' pass normalises as step 2 did (channels, mean, std) and reads every format step 2 reads."""
    from PIL import Image

    from conftest import REAL_DICOM
    from dataset.nih import ProbeSet, probe_crop, to_model_input
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (50, 70), dtype=np.uint8)).save(tmp_path / "a.png")
    norm = {"channels": 1, "mean": (0.4,), "std": (0.3,)}
    x, size = ProbeSet([tmp_path / "a.png"], 40, 32, **norm, sizes=True)[0]
    assert torch.equal(x, to_model_input(probe_crop(tmp_path / "a.png", 40, 32), **norm)) and x.shape == (1, 32, 32)
    assert size.tolist() == [70, 50]  # (width, height) of the image, for its boxes
    x, size = ProbeSet([REAL_DICOM], 40, 32, sizes=True)[0]
    assert x.shape == (3, 32, 32) and min(size.tolist()) > 32
