"""Huge and damaged images: a size claimed in a header is checked before anything is decoded (PNG,
DICOM, in loader workers too), the resize and crop have an upper bound, and a DICOM file whose
pixel data is cut short is named as damaged, not as wanting a decoder. Each ends in a correct image
or one line naming the file and the fix, exit 2."""
import struct
import zlib

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.encaps import encapsulate
from pydicom.pixels import get_decoder
from pydicom.uid import JPEG2000Lossless, JPEGLSLossless

from conftest import REPO, make_probe_set, refused, run_script, write_dicom
from dataset import files
from dataset.files import read_image
from dataset.nih import probe_crop
from pipeline import cli
from pipeline.cli import PipelineError

PIL_DEFAULT = 1024 * 1024 * 1024 // 4 // 3  # PIL's documented default for Image.MAX_IMAGE_PIXELS


def png_header_only(path, width, height):
    """A valid PNG signature and IHDR that claim width x height 8-bit grey pixels, with no pixels."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b""))
    return path


def refusal(path) -> str:
    with pytest.raises(PipelineError) as e:
        read_image(path)
    msg = str(e.value)
    assert "\n" not in msg and str(path) in msg, msg
    return msg


# ---- a size claimed in the header

def test_the_bound_is_pils_default():
    assert files.MAX_PIXELS == PIL_DEFAULT == 89478485


def test_a_header_claiming_60000_squared_is_refused_from_the_header(tmp_path):
    bomb = png_header_only(tmp_path / "bomb.png", 60000, 60000)
    assert bomb.stat().st_size < 700
    msg = refusal(bomb)
    assert "60000 x 60000" in msg and "3,600 M" in msg and "downscale" in msg


def test_a_size_between_pils_warning_and_its_error_is_refused_too(tmp_path):
    """PIL alone only warns below twice its bound and would decode 9460 x 9460; the reader refuses it."""
    msg = refusal(png_header_only(tmp_path / "big.png", 9460, 9460))
    assert "9460 x 9460" in msg


@pytest.mark.parametrize("fmt", ["png", "dcm"])
def test_the_bound_at_and_beyond(tmp_path, monkeypatch, fmt):
    monkeypatch.setattr(files, "MAX_PIXELS", 100)

    def write(name, h, w):
        a = (np.arange(h * w).reshape(h, w) * 7 % 250).astype(np.uint8)
        if fmt == "dcm":
            return write_dicom(tmp_path / f"{name}.dcm", a)
        Image.fromarray(a).save(tmp_path / f"{name}.png")
        return tmp_path / f"{name}.png"
    assert read_image(write("square", 10, 10)).size == (10, 10)
    assert read_image(write("long", 1, 100)).size == (100, 1)  # exactly the bound
    assert "101 x 1 pixels" in refusal(write("over", 1, 101))  # one pixel more
    assert "11 x 10 pixels" in refusal(write("wide", 10, 11))


def test_a_dicom_claiming_60000_squared_is_refused_before_its_pixels(tmp_path):
    path = write_dicom(tmp_path / "bomb.dcm", np.zeros((2, 2)))
    ds = pydicom.dcmread(path)
    ds.Rows = ds.Columns = 60000  # 8 bytes of pixel data for 3.6 G pixels
    ds.save_as(path)
    msg = refusal(path)
    assert "60000 x 60000" in msg and "downscale" in msg and "damaged" not in msg


def test_16bit_4096_squared_png_and_dicom_still_read(tmp_path):
    ramp = np.tile((np.arange(4096) * 16).astype(np.uint16), (4096, 1))  # 0 .. 65520 left to right
    Image.fromarray(ramp).save(tmp_path / "wide.png")
    png = read_image(tmp_path / "wide.png", keep_grey=True)
    assert png.size == (4096, 4096)
    assert np.asarray(png)[0, [0, 2048, 4095]].tolist() == [0, round(32768 * 255 / 65535), round(65520 * 255 / 65535)]
    dcm = read_image(write_dicom(tmp_path / "wide.dcm", ramp // 16), keep_grey=True)  # 12-bit stored
    assert dcm.size == (4096, 4096)
    assert np.asarray(dcm)[0, [0, 4095]].tolist() == [0, 255]


@pytest.mark.parametrize("workers", ["0", "2"])
def test_a_bomb_in_the_probing_set_is_one_line_with_and_without_workers(tmp_path, densenet_ckpt, workers):
    images = make_probe_set(tmp_path / "p", n=6, size=32)
    bomb = png_header_only(images / "00000003_000.png", 60000, 60000)
    proc = run_script("example_selection.py", "--data_root", str(images), "--checkpoint", str(densenet_ckpt),
                      "--resize", "32", "--crop", "32", "--batch_size", "2", "--num_workers", workers,
                      "--save_root", str(tmp_path / "res"))
    line = refused(proc, str(bomb), "60000 x 60000", "downscale")
    assert line == f"error: {refusal(bomb)}"
    assert not (tmp_path / "res").exists() or not list((tmp_path / "res").rglob("*.pt"))


# ---- resize and crop have an upper bound

def configure(*args):
    scope = {**cli.constants_of("example_selection.py"), "__file__": str(REPO / "example_selection.py")}
    return cli.configure(scope, list(args))


@pytest.mark.parametrize("option, value", [("--resize", "4097"), ("--resize", "100000"), ("--crop", "4097")])
def test_resize_and_crop_beyond_4096_are_refused(tmp_path, option, value):
    proc = run_script("example_selection.py", option, value, "--data_root", str(tmp_path / "nowhere"),
                      "--save_root", str(tmp_path / "res"))
    refused(proc, f"{option} {value}", "[0, 4096]")
    assert not (tmp_path / "res").exists()


def test_resize_and_crop_at_4096_are_accepted_and_work(tmp_path):
    config = configure("--resize", "4096", "--crop", "4096")
    assert (config["resize"], config["crop"]) == (4096, 4096)
    Image.fromarray(np.full((30, 20), 77, np.uint8)).save(tmp_path / "small.png")
    crop = probe_crop(tmp_path / "small.png", 4096, 4096)
    assert crop.size == (4096, 4096) and crop.mode == "RGB"  # 20 px wide -> 4096, 6144 tall -> cropped


# ---- a damaged DICOM file is not blamed on a decoder

@pytest.fixture()
def dicom_64(tmp_path):
    return write_dicom(tmp_path / "ok.dcm", (np.arange(64 * 64).reshape(64, 64) % 4000))


def test_truncated_uncompressed_dicom_is_named_as_damaged(tmp_path, dicom_64):
    data = dicom_64.read_bytes()
    cut = tmp_path / "cut.dcm"
    cut.write_bytes(data[:-1000])  # the last 1000 of its 64 x 64 x 2 = 8192 bytes of pixels
    msg = refusal(cut)
    assert "damaged or truncated" in msg and "7192 bytes" in msg and "need 8192" in msg
    assert "decoder" not in msg


def test_rows_claiming_more_than_the_pixel_data_holds_is_damaged(tmp_path, dicom_64):
    ds = pydicom.dcmread(dicom_64)
    ds.Rows = 128
    ds.save_as(tmp_path / "rows.dcm")
    msg = refusal(tmp_path / "rows.dcm")
    assert "8192 bytes" in msg and "128 x 64 pixels need 16384" in msg and "decoder" not in msg


def compressed(path, syntax):
    ds = pydicom.dcmread(path)
    ds.file_meta.TransferSyntaxUID = syntax
    ds.PixelData = encapsulate([b"\xff\xd8 these bytes are no codestream"])
    ds["PixelData"].VR = "OB"
    ds.save_as(path)
    return path


def test_compressed_dicom_without_its_decoder_names_the_decoder(dicom_64):
    if get_decoder(JPEGLSLossless).is_available:
        pytest.skip("a JPEG-LS decoder is installed here")
    msg = refusal(compressed(dicom_64, JPEGLSLossless))
    assert "no installed pydicom decoder" in msg and "JPEG-LS Lossless" in msg and "pylibjpeg" in msg
    assert "damaged" not in msg


def test_compressed_dicom_with_a_decoder_but_bad_data_is_damaged(dicom_64):
    if not get_decoder(JPEG2000Lossless).is_available:
        pytest.skip("no JPEG 2000 decoder installed here")
    msg = refusal(compressed(dicom_64, JPEG2000Lossless))
    assert "cannot be decoded" in msg and "damaged" in msg and "install" not in msg


def test_a_transfer_syntax_pydicom_has_no_decoder_for_says_so(dicom_64):
    msg = refusal(compressed(dicom_64, pydicom.uid.UID("1.2.3.4.5")))
    assert "no installed pydicom decoder" in msg and "(1.2.3.4.5)" in msg and "pydicom has none for it" in msg
