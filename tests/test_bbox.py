"""bbox_img.py and dataset/boxes.py: parsing, scaling, crop mapping, and what the drawn pixels carry."""
import json
import runpy
import sys

import numpy as np
import pytest
from PIL import Image

from conftest import REPO, run_inline
from dataset.boxes import (
    DEFAULT_FILES,
    add_legend,
    canonical,
    disease_colour,
    draw_boxes,
    load_boxes,
    read_nih,
    scale_to,
    to_probe_crop,
)
from dataset.nih import class_names, probe_crop
from pipeline.cli import PipelineError


def test_blend_colours_inside_boxes_only():
    grey = Image.fromarray(np.full((80, 100), 90, np.uint8))
    anns = [{"label": "Effusion", "box": [10, 20, 40, 50], "polygon": None},
            {"label": "Mass", "box": [60, 5, 90, 30], "polygon": None}]
    outlined, blend = draw_boxes(grey, anns)
    assert outlined.shape == blend.shape == (80, 100, 3)
    for a in anns:
        x1, y1, x2, y2 = a["box"]
        want = np.round(90 * 0.7 + 0.3 * np.array(disease_colour(a["label"])))
        assert (blend[y1 + 1:y2, x1 + 1:x2] == want).all()          # inside: 0.3 of the colour
        assert (outlined[y1, x1:x2 + 1] == disease_colour(a["label"])).all()  # the outline's top edge
        assert (outlined[y1 + 5:y2 - 5, x1 + 5:x2 - 5] == 90).all()  # an outline does not fill
    inside = np.zeros((80, 100), bool)
    inside[20:51, 10:41] = inside[5:31, 60:91] = True
    assert (blend[~inside] == 90).all()                               # outside: untouched
    assert disease_colour("Effusion") != disease_colour("Mass")


def test_polygons_are_outlined():
    black = Image.new("RGB", (64, 64))
    poly = [[10, 10], [50, 10], [50, 50], [10, 50]]
    _, blend = draw_boxes(black, [{"label": "Nodule", "box": [5, 5, 55, 55], "polygon": poly}])
    colour = np.array(disease_colour("Nodule"))
    assert (blend[10, 20] == colour).all() and (blend[30, 50] == colour).all()  # on the outline
    assert (blend[30, 30] == np.round(0.3 * colour)).all()                   # inside it: the box's fill only


def test_legend_strip_below_the_image():
    pixels = np.full((200, 300, 3), 90, np.uint8)
    anns = [{"label": "Effusion", "box": [0, 0, 1, 1], "polygon": None}] * 2 + [
        {"label": "Cardiomegaly", "box": [0, 0, 1, 1], "polygon": None}]
    out = np.asarray(add_legend(pixels, anns))
    assert out.shape[1] == 300 and out.shape[0] > 200
    assert (out[:200] == pixels).all()
    strip = out[200:]
    for label in ("Effusion", "Cardiomegaly"):
        assert (strip == disease_colour(label)).all(-1).sum() > 50  # its swatch
    assert (strip < 60).all(-1).sum() > 50                          # dark text


def test_nih_boxes_scale_to_a_512_pixel_image(tmp_path):
    path = tmp_path / "bbox.csv"
    path.write_text("image_name,label,bbox_x,bbox_y,bbox_w,bbox_h\n"
                    "a.png,Infiltrate,100,200,50,60\na.png,Mass,512,0,512,1024\n")
    boxes = read_nih(path)
    assert [a["label"] for a in boxes["a.png"]] == ["Infiltration", "Mass"]
    assert boxes["a.png"][0]["box"] == [100, 200, 150, 260]
    scaled = scale_to(boxes["a.png"], (512, 512))
    assert scaled[0]["box"] == pytest.approx([50, 100, 75, 130])
    assert scaled[1]["box"] == pytest.approx([256, 0, 512, 512])
    assert scale_to(boxes["a.png"], (1024, 512))[0]["box"] == pytest.approx([100, 100, 150, 130])


def test_boxes_follow_resize_and_centre_crop(tmp_path):
    # A white rectangle on a non-square image: after Resize(256) + CenterCrop(224) it must sit in the mapped box.
    w, h = 400, 512
    img = np.zeros((h, w), np.uint8)
    img[300:380, 120:200] = 255
    Image.fromarray(img).save(tmp_path / "x.png")
    crop = np.asarray(probe_crop(tmp_path / "x.png", 256, 224))[..., 0]
    (box,) = to_probe_crop([{"label": "Mass", "box": [120, 300, 200, 380], "polygon": None}], (w, h), 256, 224)
    rows, cols = np.nonzero(crop > 128)
    assert box["box"] == pytest.approx([cols.min(), rows.min(), cols.max() + 1, rows.max() + 1], abs=1.5)
    # Outside the crop: clipped, or dropped when nothing is left.
    gone = to_probe_crop([{"label": "Mass", "box": [0, 0, 300, 20], "polygon": None}], (w, h), 256, 224)
    assert gone == []


def test_real_annotation_files_parse():
    for name, images, n_boxes in (("ChestX_Det_test.json", 553, 1734), ("ChestX_Det_train.json", 3025, 7905)):
        boxes, _ = load_boxes("chestx_det", DEFAULT_FILES["chestx_det"].parent / name)
        assert len(boxes) == images and sum(len(a) for a in boxes.values()) == n_boxes
        assert all(a["polygon"] and len(a["box"]) == 4 for anns in boxes.values() for a in anns)
    labels = {a["label"] for anns in boxes.values() for a in anns}
    assert "Pleural thickening" in labels and "Fracture" in labels
    nih, _ = load_boxes("nih")
    assert len(nih) == 880 and sum(len(a) for a in nih.values()) == 984
    assert {a["label"] for anns in nih.values() for a in anns} <= set(class_names())
    assert canonical("infiltrate") == "Infiltration" and canonical("PLEURAL THICKENING") == "Pleural thickening"


def test_bad_box_files(tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("name,x\n")
    with pytest.raises(PipelineError, match="bbox.csv columns"):
        load_boxes("nih", bad)
    with pytest.raises(PipelineError, match="box_source"):
        load_boxes("kaggle")
    bad.write_text("[{\"file\": 1}]")
    with pytest.raises(PipelineError, match="ChestX-Det"):
        load_boxes("chestx_det", bad)


def test_script_draws_both_sources(tmp_path, monkeypatch, capsys):
    images = tmp_path / "images"
    images.mkdir()
    Image.fromarray(np.full((512, 512), 100, np.uint8)).save(images / "a.png")
    Image.fromarray(np.full((1024, 1024), 100, np.uint8)).save(images / "b.png")
    nih = tmp_path / "bbox.csv"
    nih.write_text("image_name,label,bbox_x,bbox_y,bbox_w,bbox_h\na.png,Cardiomegaly,200,400,400,300\n"
                   "a.png,Infiltrate,600,100,200,200\nmissing.png,Mass,1,1,5,5\nb.png,Mass,0,0,100,100\n")
    run_inline(monkeypatch, "bbox_img.py", "--data_root", str(images), "--box_file", str(nih), "--save_root", str(tmp_path / "r"))
    out = capsys.readouterr().out
    assert "1 of 3 annotated images missing" in out and "drew 3 boxes on 2 images" in out
    blend = np.asarray(Image.open(tmp_path / "r" / "nih14_nih" / "bbox" / "a_blend.png").convert("RGB")).astype(int)
    assert blend.shape[0] > 512  # the legend strip
    want = np.round(100 * 0.7 + 0.3 * np.array(disease_colour("Cardiomegaly")))
    assert (blend[210:340, 110:290] == want).all()        # box 200..600 x 400..700 at half scale
    assert (blend[360:500, 10:90] == 100).all() and (blend[:512, 480:] == 100).all()
    boxes = np.asarray(Image.open(tmp_path / "r" / "nih14_nih" / "bbox" / "a_boxes.png").convert("RGB")).astype(int)
    assert (boxes[200, 100:300] == disease_colour("Cardiomegaly")).all()

    det = tmp_path / "det.json"
    det.write_text(json.dumps([{"file_name": "b.png", "syms": ["Effusion"], "boxes": [[100, 100, 300, 300]],
                                "polygons": [[[150, 150], [250, 150], [250, 250]]]},
                               {"file_name": "a.png", "syms": [], "boxes": [], "polygons": []}]))
    run_inline(monkeypatch, "bbox_img.py", "--data_root", str(images), "--box_source", "chestx_det",
               "--box_file", str(det), "--save_root", str(tmp_path / "r"))
    assert "drew 1 boxes on 1 images" in capsys.readouterr().out
    blend = np.asarray(Image.open(tmp_path / "r" / "nih14_chestx_det" / "bbox" / "b_blend.png").convert("RGB")).astype(int)
    assert (blend[150, 152:248] == disease_colour("Effusion")).all()  # the polygon's top edge, opaque

    monkeypatch.setattr(sys, "argv", ["bbox_img.py", "--box_file", str(tmp_path / "nope.csv")])
    with pytest.raises(SystemExit) as e:
        runpy.run_path(str(REPO / "bbox_img.py"), run_name="__main__")
    assert e.value.code == 2 and "nope.csv not found" in capsys.readouterr().err
