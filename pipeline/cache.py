"""Cache keys and atomic writes.

Every stage output carries a `key`: a digest of everything that produced it (constants, the
checkpoint's bytes, the probing set, the concept set, this code). A stage reuses an output only
when the stored key equals the key it would produce now. Writes go to a temporary file in the same
folder and are renamed into place, so an interrupted run never leaves a half-written cache.
"""
from __future__ import annotations

import csv
import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable

import torch

ROOT = Path(__file__).resolve().parents[1]  # the repository: code_version names files relative to it
_digests: dict[tuple, str] = {}
WRITTEN: list[Path] = []  # every output this process completed, for the one line a Ctrl-C ends with


def file_digest(path: str | os.PathLike) -> str:
    """sha256 of a file's bytes, memoised per (path, size, mtime) within a process."""
    st = os.stat(path)
    memo = (str(Path(path).resolve()), st.st_size, st.st_mtime_ns)
    if memo not in _digests:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        _digests[memo] = h.hexdigest()
    return _digests[memo]


def digest(obj: Any) -> str:
    """sha256 of a JSON-serialisable object, independent of dict order."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def code_version(*paths: str) -> str:
    """Digest of the sources that compute a stage: a code change invalidates its caches."""
    files: list[Path] = []
    for p in paths:
        p = ROOT / p
        files += sorted(p.rglob("*.py")) if p.is_dir() else [p]
    return digest({str(f.relative_to(ROOT)): file_digest(f) for f in files})


def _atomic(path: str | os.PathLike, write: Callable[[str], None]) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
        WRITTEN.append(path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def save_tensors(path, payload: dict) -> None:
    _atomic(path, lambda tmp: torch.save(payload, tmp))


def save_json(path, payload: Any) -> None:
    def write(tmp):
        with open(tmp, "w") as f:
            json.dump(payload, f, indent=1)
    _atomic(path, write)


def save_csv(path, header: list[str], rows: list[list]) -> None:
    def write(tmp):
        with open(tmp, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(header)
            w.writerows(rows)
    _atomic(path, write)


def save_bytes(path, data: bytes) -> None:
    def write(tmp):
        with open(tmp, "wb") as f:
            f.write(data)
    _atomic(path, write)


def save_png(path, image) -> None:
    """A matplotlib figure (closed afterwards) or a PIL image, as a PNG file."""
    if hasattr(image, "savefig"):
        import matplotlib.pyplot as plt
        _atomic(path, lambda tmp: image.savefig(tmp, format="png", bbox_inches="tight"))
        plt.close(image)
    else:
        _atomic(path, lambda tmp: image.save(tmp, format="PNG"))


def load_tensors(path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def cached(path, key: str, loader: Callable = load_tensors) -> Any | None:
    """The stored payload at path if its key matches, else None (absent, stale or unreadable)."""
    if not Path(path).exists():
        return None
    try:
        payload = loader(path)
    except Exception:
        return None
    return payload if isinstance(payload, dict) and payload.get("key") == key else None


def load_json(path) -> Any:
    with open(path) as f:
        return json.load(f)
