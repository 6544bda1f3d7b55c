"""NIH ChestX-ray14 (or any set written in its formats): split files, image paths, preprocessing.

A split file lists one image per line: its name, then 14 binary labels in the order of
`nih14/nih_labels.txt`. Images live in one folder, or in the Kaggle layout
(`images_001/images/...`, `images_002/images/...`). A probing set may carry its own split files in
its image folder's parent (`{split}_official.txt`); otherwise the official NIH splits are used.
"""
from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torchvision import transforms

from core.digests import digest, file_digest
from core.errors import PipelineError
from core.text import at_most
from dataset.files import image_files, read_image, read_text

HERE = Path(__file__).resolve().parent
LABELS_FILE = HERE / "nih14" / "nih_labels.txt"
# An image id is a path relative to --data_root; one that is absolute or climbs out with '..' would
# read (and, as a crop name, write) files the user never meant to hand over.
OUTSIDE = "is outside --data_root (absolute, or with '..'); image ids are paths relative to the image folder"
# The target models were fine-tuned with these statistics on all three channels (medical_mae release).
MEAN, STD = 0.5056, 0.252


def class_names() -> list[str]:
    return [line.strip() for line in read_text(LABELS_FILE).splitlines() if line.strip()]


def split_file(split: str, data_root: str | Path, override: str = "") -> Path:
    if override:
        return Path(override)
    own = Path(data_root).parent / f"{split}_official.txt"
    return own if own.is_file() else HERE / "nih14" / f"{split}_official.txt"


def split_source(split: str, data_root: str | Path, override: str, option: str) -> str:
    """The split file a split reads, for the log; a fall-back to NIH's own split says so, since a
    probing set without its split file would otherwise be read against NIH's image list unnoticed."""
    path = split_file(split, data_root, override)
    own = Path(data_root).parent / f"{split}_official.txt"
    if override or path == own:
        return f"{split}: split file {path}"
    return f"{split}: split file {path} (NIH's official {split} split, as there is no {own}; pass {option} for another)"


def read_split(path: str | Path) -> tuple[list[str], np.ndarray]:
    """Image names and their [N, 14] 0/1 labels."""
    path = Path(path)
    if not path.is_file():
        raise PipelineError(f"split file {path} not found; pass --split train|val|test or --split_file PATH")
    names, labels, line_of = [], [], {}
    n = len(class_names())
    for i, line in enumerate(read_text(path).splitlines(), 1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) != n + 1 or any(p not in ("0", "1") for p in parts[1:]):
            raise PipelineError(f"{path}, line {i}: expected an image name and {n} labels 0/1, got {line[:80]!r}")
        if outside_root(parts[0]):
            raise PipelineError(f"{path}, line {i}: image {parts[0][:80]!r} {OUTSIDE}")
        key = Path(parts[0])  # 'a.png' and './a.png' are one image
        if key in line_of:
            # It would count twice among a neuron's examples and weigh twice in its concept scores.
            raise PipelineError(f"{path}: image {parts[0]} is listed twice (lines {line_of[key]} and {i}); "
                                f"remove one of them")
        line_of[key] = i
        names.append(parts[0])
        labels.append([int(p) for p in parts[1:]])
    if not names:
        raise PipelineError(f"split file {path} lists no images")
    return names, np.asarray(labels, dtype=np.int64)


def findings(label_row: np.ndarray, names: list[str] | None = None) -> str:
    names = names or class_names()
    found = [names[j] for j in np.flatnonzero(np.asarray(label_row) == 1)]  # not 0, nor -1 (no ground truth)
    return "|".join(found) if found else "No Finding"


def outside_root(name: str) -> bool:
    """Whether an image id would leave the folder it is looked up in. Symbolic links the user put
    inside --data_root are followed as they are: they are the user's own layout, not the list's."""
    p = Path(name)
    return p.is_absolute() or bool(p.drive) or ".." in p.parts


def resolve_images(root: str | Path, names: list[str], skip_missing: bool = False,
                   listed_in: str = "") -> tuple[list[str], list[Path]]:
    """Paths of the named images under root (flat or Kaggle layout). Missing ones fail loudly
    (or are dropped with a note when skip_missing). Returns the names kept and their paths.
    listed_in names the file that lists them (step 2's split file or CSV): when none of its images
    is there but the folder holds others, the message says to probe the folder with --labels none."""
    root = Path(root)
    if not root.is_dir():
        raise PipelineError(f"image folder {root} not found; pass --data_root with the NIH images "
                            f"(one folder, or the Kaggle images_001/images/... layout)")
    where = {p.name: p for p in root.glob("images_*/images/*")}
    kept, paths, missing = [], [], []
    for name in names:
        if outside_root(name):
            raise PipelineError(f"image {name[:80]!r} {OUTSIDE}; fix the file that lists it")
        p = root / name
        if not p.is_file():
            p = where.get(name)
        if p is None:
            missing.append(name)
        else:
            kept.append(name)
            paths.append(p)
    if not kept and listed_in and (other := next(image_files(root), None)) is not None:
        fix = "--labels FILE.csv" if listed_in.startswith("CSV") else "--split_file FILE"
        raise PipelineError(f"none of the {len(names)} images the {listed_in} lists is under {root}, which holds "
                            f"other images ({other}, …); to probe that folder without labels pass --labels none, "
                            f"or pass the file that lists its images ({fix})")
    if missing:
        msg = f"{len(missing)} of {len(names)} images missing under {root} (first: {at_most(missing, 3)})"
        if not skip_missing:
            # with none found, skipping the missing ones would leave nothing to probe
            fix = "fix --data_root or set --skip_missing yes" if kept else "fix --data_root"
            raise PipelineError(f"{msg}; {fix}" + (" (or, for a folder of images without a split file, pass "
                                                    "--labels none)" if listed_in else ""))
        print(f"note: {msg}; skipped")
    if not kept:
        raise PipelineError(f"no images of the split found under {root}; fix --data_root")
    return kept, paths


def probe_crop(path: str | Path, resize: int = 256, crop: int = 224) -> Image.Image:
    """The un-normalised probe image: RGB, Resize(resize), CenterCrop(crop). Stage 3 embeds this.
    A grey image is resized on its one channel and made RGB after the crop: the same pixels (PIL
    resamples each channel alike) for a third of the work, a third of the decode-and-resize time."""
    return crop_of(read_image(path, keep_grey=True), resize, crop)


def crop_of(im: Image.Image, resize: int = 256, crop: int = 224) -> Image.Image:
    """probe_crop of an image already read (read_image's, grey kept)."""
    return transforms.CenterCrop(crop)(transforms.Resize(resize)(im)).convert("RGB")


def normalize(x: torch.Tensor, mean=(MEAN,), std=(STD,)) -> torch.Tensor:
    """Pixels in [0, 1], [..., C, H, W] -> the target's input: each channel with its mean and std
    (one value serves every channel)."""
    c = x.shape[-3]
    return transforms.functional.normalize(x, list(mean) * (c if len(mean) == 1 else 1),
                                           list(std) * (c if len(std) == 1 else 1))


def to_model_input(crop: Image.Image, channels: int = 3, mean=(MEAN,), std=(STD,)) -> torch.Tensor:
    """The crop as the target sees it; one channel is the mean of R, G and B (torchxrayvision's
    greyscale), which for a radiograph is its grey level."""
    x = transforms.functional.to_tensor(crop)
    return normalize(x.mean(0, keepdim=True) if channels == 1 else x, mean, std)


def model_input_args(c: dict) -> dict:
    """The channels, mean and std step 2 stored (resolved) in c, for to_model_input and ProbeSet;
    outputs from before they were stored used the medical_mae statistics on three channels."""
    floats = lambda v: tuple(float(t) for t in str(v).split(","))
    return {"channels": int(c.get("channels") or 3), "mean": floats(c.get("mean") or MEAN),
            "std": floats(c.get("std") or STD)}


class ProbeSet(torch.utils.data.Dataset):
    """The probe crop of each image (probe_crop), as the target sees it (to_model_input with channels,
    mean and std) or through `preprocess` instead (a VLM's); with sizes, each item also carries the
    image's (width, height), to move its boxes onto the crop. Any format read_image reads."""

    def __init__(self, paths: list[Path], resize: int = 256, crop: int = 224, channels: int = 3, mean=(MEAN,),
                 std=(STD,), preprocess=None, sizes: bool = False):
        self.paths, self.resize, self.crop, self.sizes = paths, resize, crop, sizes
        # a partial, not a lambda: loader workers receive the dataset pickled
        self.preprocess = preprocess or functools.partial(to_model_input, channels=channels, mean=mean, std=std)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        im = read_image(self.paths[i], keep_grey=True)
        x = self.preprocess(crop_of(im, self.resize, self.crop))
        return (x, torch.tensor(im.size)) if self.sizes else x


def data_digest(listing: Path | None, names: list[str], paths: list[Path]) -> str:
    """What identifies a probing set: the bytes of the file that lists it (none for a folder) and each
    image's name, size and modification time."""
    stats = [(n, p.stat().st_size, p.stat().st_mtime_ns) for n, p in zip(names, paths)]
    return digest({"split_file": file_digest(listing) if listing else None, "images": stats})
