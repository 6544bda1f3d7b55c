"""The one text reader and the one image reader every step uses for what the user brings.

Text (split files, concept sets, reports, label and box files): UTF-8, a BOM dropped (editors on
Windows write one, and it would glue itself to the first image name or concept). Bytes that are not
UTF-8, or a NUL byte (a binary or UTF-16 file), end the step with the file and line to fix.

Images: whatever PIL opens, as 8-bit RGB. 16-bit greyscale (PNG modes I;16, I;16B, I) is scaled from
its full range 0..65535 to 0..255, as torchxrayvision's loaders divide by 2**bits - 1; PIL's own
convert("RGB") would clip it to near-white. An alpha channel is dropped (the colour channels are the
picture), as PIL's convert does. DICOM (by its `DICM` preamble, whatever the file is called) goes
through pydicom: the modality LUT (rescale slope and intercept), then the VOI LUT or window the file
names, then MONOCHROME1 is inverted so that bone is bright as in every other format; the grey levels
that result are stretched from their own minimum..maximum to 0..255.

An image whose header claims more than MAX_PIXELS pixels (a PNG of 30000 x 30000, or 682 bytes
that say 60000 x 60000) is refused from the header, before anything is decoded. A DICOM file's
pixel data that is shorter than its Rows, Columns and bit depth need is named as damaged; a
missing decoder is named only where the transfer syntax needs one that is not installed.

Folders (`image_files`): searched recursively, hidden names skipped; symbolic links are followed,
to files and to folders alike, except a link to a folder inside the root (its images are listed
under their own path), above it (a loop), or reached already (a second name for the same images):
each such link is skipped and counted.
Names are os.listdir's: bytes that are not UTF-8 (a Latin-1 name) come as surrogate escapes, the
same str Python uses to open the file again.
"""
from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from core.digests import file_digest
from core.errors import PipelineError

WIDE_MODES = {"I;16": 16, "I;16B": 16, "I;16L": 16, "I;16N": 16, "I": 16}
# Where a DICOM file says what it is: 128 bytes of preamble, then these four.
DICOM_MAGIC = (128, b"DICM")
# The most pixels an image may claim: PIL's own default bound (2**30 / 12, about 89.5 M: 9459 x 9459).
# A radiograph's full detector resolution (4300 x 4300, 18.5 M) fits; a claim beyond it is more
# likely a decompression bomb, or a scan to downscale, than a picture to probe at 224 px.
MAX_PIXELS = 2 ** 30 // 12
Image.MAX_IMAGE_PIXELS = None  # read_image checks the header's size itself, naming the file; PIL's check has no name
# Suffixes of image files in a folder probed without labels; a file without a suffix counts when
# it starts like a DICOM file, as hospital exports name them.
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".dcm", ".dicom")
# Bytes read from the start of each file that shares its size with another (identical_files): one page.
# Two different radiographs of one size differ within it (a PNG's compressed pixels start after 33 bytes
# of header, a DICOM file's instance UID within its first few hundred), so whole files are read for copies
# alone; a file that agrees this far and no further costs one whole read, never a wrong note.
HEAD_BYTES = 4096


def read_text(path: str | Path) -> str:
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as e:
        raise PipelineError(f"{path}: cannot read ({e.strerror or type(e).__name__})") from None
    if b"\x00" in data:  # UTF-16 and binary files have them; text saved as UTF-8 does not
        line = data[:data.index(b"\x00")].count(b"\n") + 1
        raise PipelineError(f"{path}, line {line}: a NUL byte, so binary or UTF-16 rather than UTF-8 text; "
                            f"pass the text file, saved as UTF-8")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data[:e.start].count(b"\n") + 1
        raise PipelineError(f"{path}, line {line}: byte 0x{data[e.start]:02x} is not UTF-8 text; "
                            f"re-save the file as UTF-8") from None


def is_dicom(path: str | Path) -> bool:
    try:
        with open(path, "rb") as f:
            head = f.read(DICOM_MAGIC[0] + len(DICOM_MAGIC[1]))
    except OSError:
        return False
    return head[DICOM_MAGIC[0]:] == DICOM_MAGIC[1]


def read_image(path: str | Path, keep_grey: bool = False) -> Image.Image:
    """The image as 8-bit RGB, its grey levels scaled from the full range of its bit depth; with
    keep_grey, a grey image stays 8-bit grey (L), so that a resize works on one channel, not three."""
    rgb = (lambda im: im) if keep_grey else (lambda im: im.convert("RGB"))
    if is_dicom(path):
        return _read_dicom(path, rgb)
    try:
        with Image.open(path) as im:  # reads the header only
            check_size(path, *im.size)
            im.load()
            if im.mode in WIDE_MODES:
                a = np.asarray(im).astype(np.float64)
                top = 2 ** WIDE_MODES[im.mode] - 1
                if a.min() < 0 or a.max() > top:
                    raise PipelineError(f"{path}: {im.mode} pixel values {a.min():.0f}..{a.max():.0f} exceed "
                                        f"the 16-bit range; save it as an 8- or 16-bit PNG")
                return rgb(Image.fromarray(np.round(a * (255 / top)).astype(np.uint8)))
            if im.mode == "F":
                raise PipelineError(f"{path}: a floating-point image has no fixed grey range; "
                                    f"save it as an 8- or 16-bit PNG")
            return im if keep_grey and im.mode == "L" else im.convert("RGB")
    except (UnidentifiedImageError, OSError, ValueError) as e:
        raise PipelineError(f"{path}: cannot read the image ({type(e).__name__}); replace or remove it") from None


def check_size(path: str | Path, width: int, height: int) -> None:
    if width * height > MAX_PIXELS:
        raise PipelineError(f"{path}: its header claims {width} x {height} pixels ({width * height / 1e6:,.0f} M), "
                            f"more than the {MAX_PIXELS / 1e6:.1f} M an image may have (a guard against "
                            f"decompression bombs); downscale it (4096 px on its longer side is plenty) or remove it")


def _read_dicom(path: str | Path, rgb) -> Image.Image:
    import pydicom
    try:
        ds = pydicom.dcmread(path, defer_size="1 MB")  # large values (the pixels) read after the size is checked
    except Exception as e:  # pydicom raises several kinds on a damaged file
        raise PipelineError(f"{path}: cannot read as DICOM ({type(e).__name__}); replace or remove it") from None
    if not any(k in ds for k in ("PixelData", "FloatPixelData", "DoubleFloatPixelData")):
        raise PipelineError(f"{path}: a DICOM file without pixel data (a report or structured document?); "
                            f"remove it from the probing set")
    check_size(path, int(ds.get("Columns") or 0), int(ds.get("Rows") or 0))
    a = _dicom_pixels(path, ds)
    lo, hi = float(a.min()), float(a.max())
    a = (a - lo) * (255 / (hi - lo)) if hi > lo else np.zeros_like(a)
    if str(ds.get("PhotometricInterpretation", "")).upper() == "MONOCHROME1":
        a = 255 - a  # its smallest value is white
    return rgb(Image.fromarray(np.round(a).astype(np.uint8)))


def _dicom_pixels(path: str | Path, ds) -> np.ndarray:
    """The first frame's values, through the modality and VOI lookups for a grey image."""
    from pydicom.pixels import apply_modality_lut, apply_voi_lut, pixel_array
    from pydicom.pixels.utils import get_expected_length
    syntax = _decodable_syntax(path, ds)
    try:
        if syntax and not syntax.is_encapsulated and "PixelData" in ds:
            # uncompressed: its length follows from Rows, Columns, samples, bits and frames
            want, got = get_expected_length(ds, "bytes"), len(ds.PixelData)
            if got < want:
                raise PipelineError(f"{path}: its pixel data is damaged or truncated: {got} bytes where its "
                                    f"{ds.Rows} x {ds.Columns} pixels need {want}; replace or re-export the file")
        a = pixel_array(ds, index=0)  # a radiograph has one frame; only the first is decoded
    except PipelineError:
        raise
    except Exception as e:
        raise PipelineError(f"{path}: its pixel data ({getattr(syntax, 'name', 'no transfer syntax')}) cannot be "
                            f"decoded ({type(e).__name__}: {str(e).splitlines()[0][:120] if str(e) else ''}); "
                            f"the file looks damaged: replace or re-export it") from None
    if int(ds.get("SamplesPerPixel", 1)) == 3:
        return a.astype(np.float64)
    return apply_voi_lut(apply_modality_lut(a, ds), ds).astype(np.float64)


def _decodable_syntax(path: str | Path, ds):
    """The file's transfer syntax (None when it states none), stopping when no installed decoder reads it."""
    from pydicom.pixels import get_decoder
    syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    try:
        decoder = get_decoder(syntax) if syntax else None
    except (NotImplementedError, ValueError):  # a syntax pydicom has no decoder for at all
        decoder = None
    if syntax and (decoder is None or not decoder.is_available):
        need = f"install one of: {'; '.join(decoder.missing_dependencies)}" if decoder else "pydicom has none for it"
        raise PipelineError(f"{path}: no installed pydicom decoder reads its pixel data ({syntax.name}); {need}; "
                            f"or convert the file")
    return syntax


def image_files(root: str | Path, skipped: list[str] | None = None) -> Iterator[str]:
    """Each image under root as a path relative to it ('a/b.png'), in no particular order; the
    links to folders left out (already searched, or above root) are appended to skipped."""
    top = os.path.realpath(root)
    seen = {top}

    def keep(folder: str, d: str) -> bool:
        real = os.path.realpath(os.path.join(folder, d))
        around = real == top or real.startswith(top + os.sep) or top.startswith(real + os.sep)
        if real in seen or (around and os.path.islink(os.path.join(folder, d))):
            if skipped is not None:
                skipped.append(Path(os.path.relpath(os.path.join(folder, d), root)).as_posix())
            return False
        seen.add(real)
        return True

    for folder, dirs, files in os.walk(root, followlinks=True):
        # sorted, so that of two links to one folder the same one is followed on every run
        dirs[:] = [d for d in sorted(dirs) if not d.startswith(".") and keep(folder, d)]
        for f in files:
            p = os.path.join(folder, f)
            suffix = Path(f).suffix.lower()
            if not f.startswith(".") and os.path.isfile(p) and (suffix in IMAGE_SUFFIXES or not suffix and is_dicom(p)):
                yield Path(os.path.relpath(p, root)).as_posix()


def identical_files(paths: list[Path]) -> list[list[int]]:
    """Groups (two or more, in the order given) of the indices of paths whose files hold the same bytes: one
    image under several names (a copy in another sub-folder, a link). Hashing every file would read a whole
    NIH-sized set (112,120 PNGs, 42 GB) for a note; instead files are told apart by size (one stat each),
    then by their first HEAD_BYTES, and only files equal in both are read whole and compared by digest
    (README, "Your own model and data", measures it)."""
    def head(p):
        with open(p, "rb") as f:
            return f.read(HEAD_BYTES)

    groups = [list(range(len(paths)))]
    for key in (lambda p: os.stat(p).st_size, head, file_digest):
        split = []
        for g in groups:
            by: dict = {}
            for i in g:
                try:
                    k = key(paths[i])
                except OSError:  # unreadable: the image reader names it when it comes to it
                    k = ("unreadable", i)
                by.setdefault(k, []).append(i)
            split += [same for same in by.values() if len(same) > 1]
        groups = split
    return sorted(groups)
