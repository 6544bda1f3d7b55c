"""Probing sets beyond NIH's split files: every image format through the one reader, an
unlabeled folder, a CheXpert-style CSV under each policy for -1 and blank, class names and their
labels, and a random subset."""
import shutil

import numpy as np
import pydicom
import pytest
from PIL import Image

from conftest import REAL_DICOM, REAL_JPEG, run_script, write_dicom
from dataset.files import read_image
from dataset.probe import (
    MISSING,
    Probe,
    align_labels,
    list_images,
    load_probe,
    output_names,
    read_classes,
    read_label_csv,
    resolve_classes,
)
from pipeline.cli import PipelineError


def test_real_dicom_and_jpeg_read_as_8bit_rgb():
    dcm = read_image(REAL_DICOM)
    assert dcm.mode == "RGB" and dcm.size == (1024, 1024)
    a = np.asarray(dcm)
    assert a.min() == 0 and a.max() == 255 and (a[..., 0] == a[..., 2]).all()
    want = pydicom.dcmread(REAL_DICOM).pixel_array.astype(float)  # MONOCHROME2 without rescale or window
    assert np.abs(a[..., 0] - np.round((want - want.min()) * 255 / (want.max() - want.min()))).max() <= 1
    jpg = read_image(REAL_JPEG)
    assert jpg.mode == "RGB" and jpg.size == (1036, 885)


def test_dicom_rescale_window_and_monochrome1(tmp_path):
    ramp = np.tile(np.arange(0, 4000, 40, dtype=np.uint16), (20, 1))  # 20 x 100, stored values 0..3960
    plain = np.asarray(read_image(write_dicom(tmp_path / "plain.dcm", ramp)))[..., 0].astype(int)
    assert plain[0, 0] == 0 and plain[0, -1] == 255 and (np.diff(plain[0]) >= 0).all()
    # MONOCHROME1: the smallest value is white, so the picture is inverted
    inv = np.asarray(read_image(write_dicom(tmp_path / "m1.dcm", ramp, "MONOCHROME1")))[..., 0].astype(int)
    assert np.abs(inv - (255 - plain)).max() <= 1
    # rescale then a window over stored values 1000..2000 (rescaled -500..500): flat outside, a ramp inside
    win = write_dicom(tmp_path / "win.dcm", ramp, RescaleSlope=1, RescaleIntercept=-1500, WindowCenter=0,
                      WindowWidth=1000)
    w = np.asarray(read_image(win))[..., 0].astype(int)[0]
    stored = ramp[0].astype(int)
    assert (w[stored <= 1000] == 0).all() and (w[stored >= 2000] == 255).all()
    inside = (stored > 1050) & (stored < 1950)
    assert (np.diff(w[inside]) > 0).all()
    # without a suffix it is still found, by its preamble
    shutil.copy(win, tmp_path / "scan")
    assert np.array_equal(np.asarray(read_image(tmp_path / "scan")), np.asarray(read_image(win)))


def test_dicom_without_pixel_data_is_one_line(tmp_path):
    path = write_dicom(tmp_path / "report.dcm", np.zeros((4, 4)), pixel_data=False)
    with pytest.raises(PipelineError, match="without pixel data") as e:
        read_image(path)
    assert str(path) in str(e.value) and "\n" not in str(e.value)


def test_16bit_and_rgba_png(tmp_path):
    wide = np.array([[0, 65535], [32768, 1000]], dtype=np.uint16)
    Image.fromarray(wide).save(tmp_path / "w.png")
    got = np.asarray(read_image(tmp_path / "w.png"))[..., 0]
    assert got.tolist() == [[0, 255], [128, 4]]  # the full 16-bit range onto 0..255, not clipped
    rgba = np.zeros((3, 3, 4), np.uint8)
    rgba[..., 0], rgba[..., 3] = 200, 7
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    assert (np.asarray(read_image(tmp_path / "a.png")) == [200, 0, 0]).all()  # alpha dropped, colours kept


def test_folder_is_searched_recursively(tmp_path):
    root = tmp_path / "export"
    (root / "a" / "b").mkdir(parents=True)
    (root / ".hidden").mkdir()
    Image.new("L", (8, 8)).save(root / "a" / "x.PNG")
    Image.new("L", (8, 8)).save(root / "a" / "b" / "y.jpg")
    Image.new("L", (8, 8)).save(root / ".hidden" / "z.png")
    shutil.copy(REAL_DICOM, root / "a" / "b" / "IM0001")  # a DICOM export's suffixless name
    (root / "a" / "notes.txt").write_text("not an image")
    (root / "a" / "README").write_text("no suffix, not DICOM")
    assert list_images(root) == ["a/b/IM0001", "a/b/y.jpg", "a/x.PNG"]
    probe = load_probe({"labels": "none", "data_root": str(root)})
    assert probe.labels is None and probe.names == ["a/b/IM0001", "a/b/y.jpg", "a/x.PNG"]
    empty = tmp_path / "empty"
    (empty / "sub").mkdir(parents=True)
    (empty / "sub" / "notes.txt").write_text("x")
    with pytest.raises(PipelineError, match="no images") as e:
        load_probe({"labels": "none", "data_root": str(empty)})
    assert str(empty) in str(e.value)


CSV = ("Path,Sex,Age,Frontal/Lateral,AP/PA,No Finding,Cardiomegaly,Edema,Pleural Effusion\n"
       "p/1.png,Female,68,Frontal,AP,,1.0,-1.0,\n"
       "p/2.png,Male,87,Frontal,AP,1.0,0.0,,0.0\n"
       "p/3.png,Male,41,Lateral,,,-1.0,1.0,1.0\n")


@pytest.mark.parametrize("policy, neg1, blank", [("zero", 0, 0), ("one", 1, 0), ("ignore", MISSING, MISSING)])
def test_csv_labels_under_each_policy(tmp_path, policy, neg1, blank):
    path = tmp_path / "train.csv"
    path.write_text(CSV)
    names, columns, labels = read_label_csv(path, policy)
    assert names == ["p/1.png", "p/2.png", "p/3.png"]
    assert columns == ["No Finding", "Cardiomegaly", "Edema", "Pleural Effusion"]  # Sex, Age, views are no labels
    assert labels.tolist() == [[blank, 1, neg1, blank], [1, 0, blank, 0], [blank, neg1, 1, 1]]


def test_csv_errors_are_one_line(tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("File Path,Cardiomegaly\na.png,1\n")
    with pytest.raises(PipelineError, match="no path column") as e:
        read_label_csv(bad, "zero")
    assert "bad.csv" in str(e.value) and "File Path" in str(e.value)
    bad.write_text("Path,Cardiomegaly\na.png,1\na.png,0\n")
    with pytest.raises(PipelineError, match="listed twice"):
        read_label_csv(bad, "zero")
    bad.write_text("Path,Cardiomegaly\n../../etc/passwd,1\n")
    with pytest.raises(PipelineError, match="outside"):
        read_label_csv(bad, "zero")
    bad.write_text("Path,Cardiomegaly\na.png\n")
    with pytest.raises(PipelineError, match="line 2"):
        read_label_csv(bad, "zero")


@pytest.mark.parametrize("header, first, second", [("Path,Mass,Nodule,Mass", "2 ('Mass')", "4 ('Mass')"),
                                                   ("Path,Pleural_Thickening,Pleural Thickening",
                                                    "2 ('Pleural_Thickening')", "3 ('Pleural Thickening')")])
def test_two_label_columns_of_one_class_are_refused_naming_both(tmp_path, header, first, second):
    """Labels join classes by name (case, spaces, '_' and '-' aside): two columns of one name would give one
    class two answers, of which the last silently won."""
    images = tmp_path / "images"
    images.mkdir()
    Image.new("L", (32, 32), 90).save(images / "a.png")
    csv = tmp_path / "labels.csv"
    csv.write_text(header + "\na.png" + ",1" * header.count(",") + "\n")
    with pytest.raises(PipelineError) as e:
        read_label_csv(csv, "zero")
    assert str(e.value).startswith(f"{csv}: columns {first} and {second} both label the class")
    proc = run_script("example_selection.py", "--data_root", str(images), "--labels", str(csv), "--save_root",
                      str(tmp_path / "res"))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines() == [f"error: {e.value}"]
    assert not (tmp_path / "res").exists() or not [f for f in (tmp_path / "res").rglob("*") if f.is_file()]


def test_classes_and_their_labels(tmp_path, capsys):
    labels = np.array([[1, 0, MISSING], [0, 1, 1]])
    probe = Probe(["a", "b"], [], labels, ["Cardiomegaly", "Pleural_Effusion", "No Finding"], "k", "CSV x.csv")
    # the model's names come first; a class joins the column of its name whatever the case, space or '_'
    classes, source = resolve_classes("", ["Effusion", "pleural effusion", "", "cardiomegaly"], probe)
    assert source == "of the model"
    got = align_labels(probe, classes, source)
    assert got.tolist() == [[MISSING, 0, MISSING, 1], [MISSING, 1, MISSING, 0]]
    assert "no class for No Finding" in capsys.readouterr().out
    assert output_names(classes, 4) == ["Effusion", "pleural effusion", "output 2", "cardiomegaly"]
    assert output_names(None, 2) == ["output 0", "output 1"]
    with pytest.raises(PipelineError, match="match none of the 2 classes"):
        align_labels(probe, ["Mass", "Nodule"], "from classes.txt")
    # a classes file wins over the CSV header; no names at all leaves the outputs unnamed
    f = tmp_path / "classes.txt"
    f.write_text("Mass\n\nNodule\n")
    assert resolve_classes(str(f), None, probe) == (["Mass", "Nodule"], f"from {f}")
    assert resolve_classes("", None, probe)[0] == ["Cardiomegaly", "Pleural_Effusion", "No Finding"]
    assert resolve_classes("", None, Probe([], [], None, None, "k", "folder x"))[0] is None
    f.write_text("Mass\nMass\n")
    with pytest.raises(PipelineError, match="twice"):
        read_classes(f)


def test_random_subset_is_seeded_and_in_order(tmp_path):
    root = tmp_path / "imgs"
    root.mkdir()
    for i in range(20):
        Image.new("L", (4, 4), i).save(root / f"{i:02d}.png")
    c = {"labels": "none", "data_root": str(root), "max_images": 5, "seed": 3}
    a, b = load_probe(c), load_probe(c)
    assert a.names == b.names and a.data_key == b.data_key and len(a.names) == 5 and a.names == sorted(a.names)
    other = load_probe({**c, "seed": 4})
    assert other.names != a.names and other.data_key != a.data_key
    assert len(load_probe({**c, "max_images": 0}).names) == 20
