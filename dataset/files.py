"""The one text reader and the one image reader every step uses for what the user brings.

Text (split files, concept sets, reports, label and box files): UTF-8, a BOM dropped (editors on
Windows write one, and it would glue itself to the first image name or concept). Bytes that are not
UTF-8, or a NUL byte (a binary or UTF-16 file), end the step with the file and line to fix.

Images: whatever PIL opens, as 8-bit RGB. 16-bit greyscale (PNG modes I;16, I;16B, I) is scaled from
its full range 0..65535 to 0..255, as torchxrayvision's loaders divide by 2**bits - 1; PIL's own
convert("RGB") would clip it to near-white. An alpha channel is dropped (the colour channels are the
picture), as PIL's convert does.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from pipeline.cli import PipelineError

WIDE_MODES = {"I;16": 16, "I;16B": 16, "I;16L": 16, "I;16N": 16, "I": 16}


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


def read_image(path: str | Path) -> Image.Image:
    """The image as 8-bit RGB, its grey levels scaled from the full range of its bit depth."""
    try:
        with Image.open(path) as im:
            im.load()
            if im.mode in WIDE_MODES:
                a = np.asarray(im).astype(np.float64)
                top = 2 ** WIDE_MODES[im.mode] - 1
                if a.min() < 0 or a.max() > top:
                    raise PipelineError(f"{path}: {im.mode} pixel values {a.min():.0f}..{a.max():.0f} exceed "
                                        f"the 16-bit range; save it as an 8- or 16-bit PNG")
                return Image.fromarray(np.round(a * (255 / top)).astype(np.uint8)).convert("RGB")
            if im.mode == "F":
                raise PipelineError(f"{path}: a floating-point image has no fixed grey range; "
                                    f"save it as an 8- or 16-bit PNG")
            return im.convert("RGB")
    except (UnidentifiedImageError, OSError, ValueError) as e:
        raise PipelineError(f"{path}: cannot read the image ({type(e).__name__}); replace or remove it") from None
