"""Probing sets: the images step 2 probes and later steps re-read, their labels and class names.

Step 2's constant `labels` picks the kind:
- "" (default): NIH split files as the release reads them (dataset/nih.py);
- "none": every image under --data_root, searched recursively (PNG, JPEG, DICOM; a file without a
  suffix counts when it starts like a DICOM file, as hospital exports often do; links followed as
  dataset.files.image_files says), no labels;
- a CSV: one row per image, a path column (PATH_COLUMNS, relative to --data_root) and label
  columns in CheXpert / MIMIC-CXR style: 1 positive, 0 negative, -1 uncertain, blank not mentioned.
  Step 2's `uncertain` says what -1 and blank become (UNCERTAIN). A column whose values are not all
  of these (Sex, Age, AP/PA) is metadata, not a label.

Class names are the names of the model's outputs (fc neuron k is class k): a `--classes` file, else
the model's own (torchxrayvision's, the medical_mae models' NIH 14), else the CSV's label columns or
NIH's 14. Labels join the
classes by name, ignoring case, spaces, '_' and '-'; a class without a label column has no ground
truth (MISSING). `max_images` keeps a random subset of that size (`seed`), in listed order.
"""
from __future__ import annotations

import csv
import io
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from core.errors import PipelineError
from core.text import at_most, printable
from dataset.files import identical_files, image_files, read_text
from dataset.nih import OUTSIDE, class_names, data_digest, outside_root, read_split, resolve_images, split_file

MISSING = -1  # a label without ground truth: a class the set has no column for, or one the policy ignores
# What -1 (uncertain) and a blank (not mentioned) become under each `uncertain` policy.
UNCERTAIN = {"zero": (0, 0), "one": (1, 0), "ignore": (MISSING, MISSING)}
LABEL_VALUES = {"1": 1, "1.0": 1, "0": 0, "0.0": 0, "-1": -1, "-1.0": -1, "": None}
# Header names (case ignored) of the column that holds image paths: CheXpert says Path, NIH Image Index.
PATH_COLUMNS = ("path", "image", "image_path", "image_id", "image index", "filename", "file_name", "file")


@dataclass
class Probe:
    names: list[str]                # image ids: paths relative to data_root
    paths: list[Path]
    labels: np.ndarray | None       # [N, len(label_names)] of 1, 0, MISSING; None for an unlabeled set
    label_names: list[str] | None
    data_key: str                   # digest of what identifies the set: its list file and each image's stat
    what: str                       # the source, for messages


def load_probe(c: dict) -> Probe:
    """The probing set step 2's constants in c describe (labels, data_root, split, split_file,
    skip_missing, uncertain, max_images, seed)."""
    kind, root = c.get("labels", ""), c["data_root"]
    if kind == "none":
        names = list_images(root)
        paths, labels, label_names, listing, what = [Path(root) / n for n in names], None, None, None, f"folder {root}"
    else:
        if kind:
            listing = Path(kind)
            names, label_names, labels = read_label_csv(listing, c["uncertain"])
            what = f"CSV {listing}"
        else:
            listing = split_file(c["split"], root, c.get("split_file", ""))
            (names, labels), label_names, what = read_split(listing), class_names(), f"split file {listing}"
        row = {n: i for i, n in enumerate(names)}
        names, paths = resolve_images(root, names, c.get("skip_missing", False), listed_in=what)
        labels = None if labels is None else labels[[row[n] for n in names]]
    n = c.get("max_images", 0)
    if n and len(names) > n:
        keep = np.sort(np.random.default_rng(c.get("seed", 0)).choice(len(names), n, replace=False))
        what = f"{what} (a random {n} of its {len(names)}, seed {c.get('seed', 0)})"
        names, paths = [names[i] for i in keep], [paths[i] for i in keep]
        labels = None if labels is None else labels[keep]
    return Probe(names, paths, labels, label_names, data_digest(listing, names, paths), what)


def list_images(root: str | Path) -> list[str]:
    root = Path(root)
    if not root.is_dir():
        raise PipelineError(f"image folder {root} not found; pass --data_root with the folder of images")
    skipped = []
    names = sorted(image_files(root, skipped), key=lambda n: n.split("/"))  # the order of their paths
    if skipped:
        shown = printable(at_most(skipped, 3))
        print(f"note: {root}: {len(skipped)} link(s) to folders not followed, as they lead inside the folder "
              f"(its images are listed under their own path), above it (a loop) or to a folder reached "
              f"already: {shown}")
    if not names:
        raise PipelineError(f"no images (PNG, JPEG or DICOM) under {root}, searched recursively; "
                            f"pass --data_root with the folder that holds them")
    return names


def note_copies(probe: Probe) -> None:
    """One line when the probing set holds one image (the same bytes) under several names: each name is
    probed, so that image can be a neuron's example as often as it has names."""
    groups = identical_files(probe.paths)
    if groups:
        shown = printable(at_most([" = ".join(probe.names[i] for i in g) for g in groups], 3, "; "))
        print(f"note: the {probe.what} holds {len(groups)} image(s) under more than one name "
              f"({sum(map(len, groups))} names, the same bytes); each name is probed, so one image can be a "
              f"neuron's example once per name: {shown}")


def read_label_csv(path: Path, uncertain: str) -> tuple[list[str], list[str] | None, np.ndarray | None]:
    """Image ids, label column names and [N, L] labels under the `uncertain` policy (None, None
    when the file has a path column only)."""
    if uncertain not in UNCERTAIN:
        raise PipelineError(f"--uncertain is one of {' | '.join(UNCERTAIN)}, not {uncertain!r}")
    header, body, col = _label_rows(path)
    names = _image_names(path, body, col)
    cols = _label_columns(path, header, body, col)
    if not cols:
        return names, None, None
    neg1, blank = UNCERTAIN[uncertain]
    value = {**{k: v for k, v in LABEL_VALUES.items() if v is not None}, "-1": neg1, "-1.0": neg1, "": blank}
    labels = np.array([[value[r[j].strip()] for j in cols] for r in body], dtype=np.int64)
    return names, [header[j] for j in cols], labels


def _label_rows(path: Path) -> tuple[list[str], list[list[str]], int]:
    """A labels CSV's header, its non-blank rows (each as long as the header) and its path column."""
    if not path.is_file():
        raise PipelineError(f"labels file {path} not found; pass --labels with a CSV, none for an unlabeled "
                            f"folder, or leave it empty for NIH split files")
    rows = [r for r in csv.reader(io.StringIO(read_text(path))) if any(v.strip() for v in r)]
    if not rows:
        raise PipelineError(f"{path} is empty; it needs a header with a path column and label columns")
    header = [h.strip() for h in rows[0]]
    col = next((j for j, h in enumerate(header) if h.lower() in PATH_COLUMNS), None)
    if col is None:
        raise PipelineError(f"{path}: no path column among {at_most(header, 8)}; name the column of image "
                            f"paths one of {', '.join(PATH_COLUMNS)} (CheXpert's is Path)")
    body = rows[1:]
    for i, r in enumerate(body, 2):
        if len(r) != len(header):
            raise PipelineError(f"{path}, line {i}: {len(r)} fields where the header has {len(header)}; fix the row")
    if not body:
        raise PipelineError(f"{path} lists no images")
    return header, body, col


def _image_names(path: Path, body: list[list[str]], col: int) -> list[str]:
    """The path column's entries, each inside the data root and listed once."""
    names, line_of = [], {}
    for i, r in enumerate(body, 2):
        name = r[col].strip()
        if not name or outside_root(name):
            raise PipelineError(f"{path}, line {i}: image {name[:80]!r} " + ("is empty" if not name else OUTSIDE))
        if Path(name) in line_of:
            raise PipelineError(f"{path}: image {name} is listed twice (lines {line_of[Path(name)]} and {i}); "
                                f"remove one of them")
        line_of[Path(name)] = i
        names.append(name)
    return names


def _label_columns(path: Path, header: list[str], body: list[list[str]], col: int) -> list[int]:
    """The columns whose every value is a label value, each naming a class no other column names."""
    cols = [j for j in range(len(header)) if j != col and all(r[j].strip() in LABEL_VALUES for r in body)]
    other = [header[j] for j in range(len(header)) if j != col and j not in cols]
    if other:
        print(f"note: {path}: columns {at_most(other, 8)} are not labels (values other than 1, 0, -1, blank)")
    first = {}  # label columns join classes by name: two of one name would leave one class two answers
    for j in cols:
        other = first.setdefault(label_key(header[j]), j)
        if other != j:
            raise PipelineError(f"{path}: columns {other + 1} ({header[other]!r}) and {j + 1} ({header[j]!r}) both "
                                f"label the class {header[other]!r} (names join case, spaces, '_' and '-' aside); "
                                f"keep one of them")
    return cols


def read_classes(path: str | Path) -> list[str]:
    """A --classes file: one class name per line, in the order of the model's outputs."""
    path = Path(path)
    if not path.is_file():
        raise PipelineError(f"classes file {path} not found; pass --classes with one class name per line")
    names = [line.strip() for line in read_text(path).splitlines() if line.strip()]
    if not names:
        raise PipelineError(f"classes file {path} names no class; write one name per line, in output order")
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise PipelineError(f"classes file {path} names {at_most(twice, 3)} twice; each output has one name")
    return names


def resolve_classes(classes_file: str, model_classes: list[str] | None, probe: Probe) -> tuple[list[str] | None, str]:
    """The class names and where they come from (for messages); None when nothing names them."""
    if classes_file:
        return read_classes(classes_file), f"from {classes_file}"
    if model_classes is not None:
        return list(model_classes), "of the model"
    if probe.label_names:
        return list(probe.label_names), f"from the {probe.what}"
    return None, ""


def label_key(name: str) -> str:
    """A class or label name as names are joined: case, spaces, '_' and '-' ignored."""
    return re.sub(r"[\s_-]+", " ", name.strip().lower())


def align_labels(probe: Probe, classes: list[str] | None, source: str) -> np.ndarray | None:
    """The probing set's labels as [N, len(classes)], each class from the label column of its name
    (MISSING where there is none); refused when no class has a column."""
    if probe.labels is None or classes is None:
        return None
    where = {label_key(n): j for j, n in enumerate(probe.label_names)}
    cols = [where.get(label_key(c)) if c else None for c in classes]
    if all(j is None for j in cols):
        raise PipelineError(f"the labels of the {probe.what} ({at_most(probe.label_names, 6)}) match none of the "
                            f"{len(classes)} classes {source} ({at_most([c for c in classes if c], 6)}); "
                            f"name the label columns after the classes, or pass --classes FILE")
    unused = [n for j, n in enumerate(probe.label_names) if j not in cols]
    bare = [c for c, j in zip(classes, cols) if j is None and c]
    if unused or bare:
        print(f"note: labels of the {probe.what} joined to the classes by name; "
              + "; ".join(t for t in (f"no class for {', '.join(unused)}" if unused else "",
                                      f"no ground truth for {', '.join(bare)}" if bare else "") if t))
    out = np.full((len(probe.names), len(classes)), MISSING, dtype=np.int64)
    for k, j in enumerate(cols):
        if j is not None:
            out[:, k] = probe.labels[:, j]
    return out


def output_names(classes: list[str] | None, k: int) -> list[str]:
    """A name for each of k outputs, for table columns: the class name, or 'output j' where the
    model leaves an output unnamed (torchxrayvision's '') or nothing names the classes."""
    return [classes[j] if classes and j < len(classes) and classes[j] else f"output {j}" for j in range(k)]
