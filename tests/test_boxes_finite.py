"""Box files whose coordinates are NaN or infinite are refused where every box file is read
(dataset/boxes.py): one line naming the file, the line (or json item) and the fix, exit 2."""
import json

import pytest

from conftest import run_script
from core.errors import PipelineError
from dataset.boxes import load_boxes

HEADER = "image_name,label,bbox_x,bbox_y,bbox_w,bbox_h\n"


@pytest.mark.parametrize("bad", ["nan", "inf", "-inf", "1e999", "NaN"])
def test_nih_box_with_a_non_finite_coordinate_names_file_and_line(tmp_path, bad):
    path = tmp_path / "bbox.csv"
    path.write_text(HEADER + "a.png,Mass,10,20,30,40\n" + f"b.png,Nodule,10,{bad},30,40\n")
    with pytest.raises(PipelineError) as e:
        load_boxes("nih", path)
    msg = str(e.value)
    assert msg.startswith(f"{path}, line 3: box coordinates must be finite numbers") and "fix or remove" in msg


def test_finite_boxes_still_load(tmp_path):
    path = tmp_path / "bbox.csv"
    path.write_text(HEADER + "a.png,Mass,10,20,30,40\n")
    boxes, _ = load_boxes("nih", path)
    assert boxes == {"a.png": [{"label": "Mass", "box": [10.0, 20.0, 40.0, 60.0], "polygon": None}]}


@pytest.mark.parametrize("field", ["boxes", "polygons"])
def test_chestx_det_box_or_polygon_with_nan_names_the_item(tmp_path, field):
    items = [{"file_name": "a.png", "syms": ["Mass"], "boxes": [[1, 2, 3, 4]], "polygons": [[[1, 2], [3, 4]]]},
             {"file_name": "b.png", "syms": ["Nodule"], "boxes": [[1, 2, 3, 4]], "polygons": [[[1, 2], [3, 4]]]}]
    if field == "boxes":
        items[1]["boxes"] = [[1, float("nan"), 3, 4]]
    else:
        items[1]["polygons"] = [[[1, 2], [float("inf"), 4]]]
    path = tmp_path / "det.json"
    path.write_text(json.dumps(items))  # json writes NaN and Infinity, and reads them back
    with pytest.raises(PipelineError, match=r"det\.json, item 1 \(b\.png\): box coordinates must be finite"):
        load_boxes("chestx_det", path)


def test_a_step_reading_an_infinite_box_exits_2_with_one_line(tmp_path):
    path = tmp_path / "bbox.csv"
    path.write_text(HEADER + "a.png,Mass,10,20,inf,40\n")
    proc = run_script("bbox_img.py", "--box_file", str(path), "--data_root", str(tmp_path), "--save_root",
                      str(tmp_path / "res"))
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
    assert f"{path}, line 2" in proc.stderr and "Traceback" not in proc.stderr
