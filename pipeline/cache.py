"""Cache keys, atomic writes, the output folders a step writes and the upstream outputs it reads.

Every stage output carries a `key`: a digest of everything that produced it (constants, the
checkpoint's bytes, the probing set, the concept set, this code; core/digests.py takes the digests). A
stage reuses an output only when the stored key equals the key it would produce now. Writes go to a
temporary file in the same folder and are renamed into place, so an interrupted run never leaves a
half-written cache; a temp file names its writer (host, pid), so the next run in that folder removes
those of a killed one.
A step checks each folder it writes before any long work (`writable`) and locks its own (`claim`),
so that a second run cannot mix its outputs with this one's; caches shared between runs are updated
under the lock of their folder (`locked`). What a step reads from an upstream step goes through
`read_output`, which turns anything unreadable, truncated or foreign into one line.
"""
from __future__ import annotations

import csv
import errno
import functools
import glob
import hashlib
import json
import math
import os
import re
import socket
import sys
import tempfile
import time
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any, Callable

import filelock
import torch

from core.errors import PipelineError
from pipeline.cli import running_save_root

LOCK_TIMEOUT = 60.0     # seconds a step waits for another run writing the same folder, then refuses
STALE_AGE = 24 * 3600   # a temp file older than this is stale even if its writer cannot be checked
WRITTEN: list[Path] = []  # every output this process completed, for the one line a Ctrl-C ends with
# Temp files are .NAME.HOST-PID.RANDOM.tmp: HOST is a digest of the host name, so a pid is only
# judged alive or dead on the machine that wrote it (a save_root may be shared between machines).
_HOST = hashlib.sha256(socket.gethostname().encode()).hexdigest()[:8]
_TEMP = re.compile(r"^\..+\.([0-9a-f]{8})-(\d+)\.[A-Za-z0-9_]+\.tmp$")
_OLD_TEMP = re.compile(r"^\..+\.[A-Za-z0-9_]+\.tmp$")  # mkstemp's, before temp files named their writer
_claims: list[ExitStack] = []
NAME_ROOM = 200  # bytes of an output's name a temp file keeps: its additions (host, pid, random) fit in 255
# Fields where NaN is a legitimate "no value", not a failure: a mean and standard error over no neuron
# (mean, se), an ablation's z where the random sets' drops do not spread (z), a
# describer's score of a concept it cannot score (scores: label_auc of a class with one outcome). JSON
# stores them as null (it has no NaN), tensors as NaN; a NaN or infinity anywhere else is refused.
NO_VALUE = frozenset({"mean", "se", "z", "scores"})


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _cannot_write(path, e: OSError) -> PipelineError:
    if e.errno == errno.ENAMETOOLONG:
        return PipelineError(f"cannot write {path} ({e.strerror}): a name in it is too long for the file system; "
                             f"pass a shorter --save_root or shorter names")
    return PipelineError(f"cannot write {path} ({e.strerror or type(e).__name__}); "
                         f"free space or fix its permissions, or pass another --save_root")


def _os_error(e: BaseException) -> OSError | None:
    """The OSError behind an error, if any: torch.save meeting a full disk raises the OSError, then a
    RuntimeError of its own while closing the archive (raised during the first)."""
    seen = set()
    while e is not None and id(e) not in seen:
        if isinstance(e, OSError):
            return e
        seen.add(id(e))
        e = e.__cause__ or e.__context__
    return None


def under(root: str | os.PathLike, path: str | os.PathLike) -> bool:
    """Whether path lies below root (never root itself), with no '..' or '.' in the part below it. Read
    on the paths' text first, so that a folder the user linked elsewhere on purpose is followed; then
    on their absolute forms (an input given as /abs/results/x under --save_root results)."""
    root, path = Path(root), Path(path)
    if ".." in path.parts:
        return False
    for r, p in ((root, path), (Path(os.path.abspath(root)), Path(os.path.abspath(path)))):
        if p.is_relative_to(r):
            rel = p.relative_to(r).parts
            return bool(rel) and not any(x in ("..", ".") for x in rel)
    return False


def may_write(path) -> Path:
    """The one check every write goes through (_atomic, writable and so claim and locked): under the
    --save_root of the step running now (pipeline.cli.main runs each step under its Config), else refused
    in one line before anything is made. Outside a step (a test, a library call) nothing is checked."""
    root = running_save_root()
    if root is not None and not under(root, path):
        raise PipelineError(f"refusing to write {path}: it is not inside --save_root {root}, under which every "
                            f"output is written; pass a --save_root that holds it (or inputs that lie under yours)")
    return Path(path)


def _temp_stem(name: str) -> str:
    """An output's name as its temp file carries it: cut (and told apart by a digest) when the temp
    file's additions would take it past the file system's 255 bytes."""
    if len(os.fsencode(name)) <= NAME_ROOM:
        return name
    return os.fsdecode(os.fsencode(name)[:NAME_ROOM - 13]) + "~" + hashlib.sha256(os.fsencode(name)).hexdigest()[:12]


def _writer_gone(tmp: Path) -> bool:
    """A temp file whose writer died on this host, or one too old to belong to a live write."""
    m = _TEMP.match(tmp.name)
    if not (m or _OLD_TEMP.match(tmp.name)):
        return False
    try:
        old = time.time() - tmp.stat().st_mtime > STALE_AGE
    except FileNotFoundError:
        return False
    if old or not m or m.group(1) != _HOST:
        return old
    try:
        os.kill(int(m.group(2)), 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, another user's
        pass
    return False


def remove_stale_temps(folder: Path, name: str = "*") -> None:
    """Remove the temp files a killed run left in folder (of one output, or of all)."""
    for tmp in Path(folder).glob(f".{name}.*.tmp"):
        if _writer_gone(tmp):
            tmp.unlink(missing_ok=True)


def _atomic(path: str | os.PathLike, write: Callable[[str], None]) -> None:
    path = may_write(path)
    stem = _temp_stem(path.name)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_temps(path.parent, glob.escape(stem))
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{stem}.{_HOST}-{os.getpid()}.", suffix=".tmp")
        os.close(fd)
    except OSError as e:
        raise _cannot_write(path, e) from None
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~_umask())  # what open() would give; mkstemp makes it 0600
        os.replace(tmp, path)
        WRITTEN.append(path)
    except BaseException as e:
        try:
            os.unlink(tmp)
        except OSError:  # gone, or the folder itself failed: the error to report is the first one
            pass
        cause = _os_error(e)
        if cause is not None and not isinstance(e, (PipelineError, KeyboardInterrupt)):
            raise _cannot_write(path, cause) from None
        raise


def _tensors(payload: Any, where: str = ""):
    """(field, tensor) for every floating-point tensor in a payload (dicts and lists walked)."""
    if isinstance(payload, torch.Tensor):
        if payload.is_floating_point():
            yield where, payload
    elif isinstance(payload, dict):
        for k, v in payload.items():
            yield from _tensors(v, f"{where}.{k}" if where else str(k))
    elif isinstance(payload, (list, tuple)):
        for i, v in enumerate(payload):
            yield from _tensors(v, f"{where}[{i}]")


def check_finite(path, payload: Any, writing: bool = True, step: str = "") -> None:
    """The one finite check of every tensor a step writes or reads: NaN or infinity, outside the NO_VALUE
    fields, means the model that computed it gives non-finite outputs; refused, naming the file."""
    for where, t in _tensors(payload):
        if where.split(".")[-1].split("[")[0] in NO_VALUE:
            continue
        bad = int((~torch.isfinite(t)).sum())
        if bad:
            what = "cannot write" if writing else "refusing to read"
            raise PipelineError(f"{what} {path}: its {where} hold {bad} NaN or infinite value(s) of {t.numel()}; "
                                f"the model that computed them gives non-finite outputs (a checkpoint with NaN or "
                                f"infinite weights, or an overflow under --precision bf16): check the checkpoint "
                                f"or weights, then re-run {step or Path(sys.argv[0]).name}")


def save_tensors(path, payload: dict) -> None:
    check_finite(path, payload)

    def write(tmp):
        # Through a file object: torch names the archive inside after a file path (here the random temp
        # name), which made identical payloads differ in bytes; and a full disk raises OSError.
        with open(tmp, "wb") as f:
            torch.save(payload, f)
    _atomic(path, write)


def _json_ready(path, value: Any, where: str = "", no_value: bool = False) -> Any:
    """value with the NaN and infinities of NO_VALUE fields as null; any other is refused, naming it."""
    if isinstance(value, float) and not math.isfinite(value):
        if no_value:
            return None
        raise PipelineError(f"cannot write {path}: {where} is {value} (JSON has no such number); it was computed "
                            f"from non-finite numbers: check the checkpoint or weights that produced them, then re-run")
    if isinstance(value, dict):
        return {k: _json_ready(path, v, f"{where}.{k}" if where else str(k), no_value or k in NO_VALUE)
                for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_ready(path, v, f"{where}[{i}]", no_value) for i, v in enumerate(value)]
    return value


def save_json(path, payload: Any) -> None:
    """Standard JSON, no NaN token: a no-value field's NaN is null (NO_VALUE), any other NaN is refused.
    Text that is not UTF-8 (a file name's stray bytes, kept by Python as surrogates) is \\u-escaped."""
    def write(tmp):
        with open(tmp, "w") as f:
            try:
                json.dump(payload, f, indent=1, allow_nan=False)
            except ValueError:  # a non-finite number: checked only then, the common case costs nothing
                f.seek(0)
                f.truncate()
                json.dump(_json_ready(path, payload), f, indent=1, allow_nan=False)
    _atomic(path, write)


def six_digits(rows: list[list]) -> list[list]:
    """A table's floats to six significant digits, as its readers print them; other values as they are."""
    return [[f"{v:.6g}" if isinstance(v, float) else v for v in r] for r in rows]


def save_table(json_path, payload: dict, csv_path, header: list[str], rows: list[list], png_path, fig) -> None:
    """A result as JSON, its rows as CSV (six_digits) and its figure as PNG. The JSON, the one a reader
    takes, is removed first and written last: a write failing between leaves no table beside a figure of
    other numbers."""
    may_write(json_path).unlink(missing_ok=True)
    save_csv(csv_path, header, six_digits(rows))
    save_png(png_path, fig)
    save_json(json_path, payload)


def save_csv(path, header: list[str], rows: list[list]) -> None:
    """A CSV file in UTF-8; a file name that is not UTF-8 keeps its bytes as the file system holds them
    (surrogateescape), and reads back (_load_csv, with the same errors=) as the same name."""
    def write(tmp):
        with open(tmp, "w", newline="", encoding="utf-8", errors="surrogateescape") as f:
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


def save_jpeg(path, image, quality: int = 95) -> None:
    """A PIL image as a JPEG file, written like every other output (atomic, one line on a full disk)."""
    _atomic(path, lambda tmp: image.save(tmp, format="JPEG", quality=quality))


def load_tensors(path) -> dict:
    payload = torch.load(path, map_location="cpu", weights_only=True)
    check_finite(path, payload, writing=False)
    return payload


def cached(path, key: str, loader: Callable = load_tensors) -> Any | None:
    """The stored payload at path if its key matches, else None (absent, stale, unreadable or not finite)."""
    if not Path(path).exists():
        return None
    try:
        payload = loader(path)
    except PipelineError:
        print(f"note: {path} holds NaN or infinite values: computing it again")
        return None
    except Exception as e:
        print(f"note: {path} is unreadable ({type(e).__name__}; truncated?): computing it again")
        return None
    return payload if isinstance(payload, dict) and payload.get("key") == key else None


def load_json(path) -> Any:
    with open(path) as f:
        return json.load(f)


def _load_csv(path) -> dict:
    with open(path, newline="", encoding="utf-8", errors="surrogateescape") as f:
        rows = list(csv.DictReader(f))
    return {"columns": list(rows[0]) if rows else [], "rows": rows}


def read_output(path, step: str, fields: dict[str, type], check: Callable[[dict], Any] | None = None,
                mmap: bool = False) -> dict:
    """An output of an upstream step (.json, .pt, or .csv as {"columns", "rows"}), checked to hold
    `fields` of their types and to pass `check` (which may raise or return False); anything
    unreadable, truncated or foreign becomes one line saying which step to re-run."""
    path = Path(path)
    if not path.is_file():
        raise PipelineError(f"{path} not found; run {step} first")
    try:
        if path.suffix == ".json":
            payload = load_json(path)
        elif path.suffix == ".csv":
            payload = _load_csv(path)
        else:
            payload = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
            check_finite(path, payload, writing=False, step=step)
    except PipelineError:
        raise
    except Exception as e:
        raise PipelineError(f"{path} is unreadable ({type(e).__name__}; truncated or not {step}'s output); "
                            f"re-run {step}") from None
    wrong = [k for k, t in fields.items() if not isinstance(payload.get(k), t)] if isinstance(payload, dict) \
        else ["all"]
    if not wrong and check is not None:
        try:
            wrong = [] if check(payload) else ["entries"]
        except Exception:
            wrong = ["entries"]
    if wrong:
        raise PipelineError(f"{path} is not {step}'s output as this code reads it (missing or malformed: "
                            f"{', '.join(wrong)}); re-run {step}")
    return payload


def writable(folder) -> Path:
    """Create an output folder and check that a file can be written in it, before any long work (the
    failure would otherwise come after it); remove the temp files that killed runs left there."""
    folder = may_write(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=folder, prefix=f".write-check.{_HOST}-{os.getpid()}.", suffix=".tmp")
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise PipelineError(f"cannot write in {folder} ({e.strerror or type(e).__name__}); "
                            f"pass a writable --save_root") from None
    remove_stale_temps(folder)
    return folder


def _acquire(folder: Path) -> filelock.FileLock:
    lock = filelock.FileLock(lock_path(folder))
    try:
        try:
            lock.acquire(timeout=0)
        except filelock.Timeout:
            print(f"waiting for the lock on {folder}: another run is writing there (up to {LOCK_TIMEOUT:g} s)",
                  flush=True)
            lock.acquire(timeout=LOCK_TIMEOUT)
    except filelock.Timeout:
        raise PipelineError(f"{folder} is being written by another run (its lock {lock_path(folder)} was held "
                            f"for {LOCK_TIMEOUT:g} s); let it finish, or pass another --save_root") from None
    except OSError as e:  # not a file this user may open: a folder by that name, another user's file
        raise PipelineError(f"cannot open the lock file {lock_path(folder)} ({e.strerror or type(e).__name__}); "
                            f"remove it if no run is writing in {folder} (or fix its owner and permissions), "
                            f"or pass another --save_root") from None
    return lock


def claim(folder) -> Path:
    """A step's own output folder, `writable` and locked until the step's run() (decorated with
    `holds_claims`) ends: a second run on the same folder waits up to LOCK_TIMEOUT, then refuses, so
    two runs never mix their outputs (say activations.pt of one checkpoint, examples.json of another)."""
    if not _claims:
        raise RuntimeError("claim() is for a step's run() decorated with @holds_claims, which releases the lock")
    folder = writable(folder)
    _claims[-1].callback(_acquire(folder).release)
    return folder


@contextmanager
def locked(folder):
    """Hold a folder's lock for a short read-merge-write of a cache that several runs share."""
    lock = _acquire(writable(folder))
    try:
        yield
    finally:
        lock.release()


def lock_path(folder) -> Path:
    return Path(folder) / ".lock"


def holds_claims(run: Callable) -> Callable:
    """Decorate a step's run(): the folders it claims are released when it returns or fails."""
    @functools.wraps(run)
    def wrapper(*args, **kwargs):
        with ExitStack() as stack:
            _claims.append(stack)
            try:
                return run(*args, **kwargs)
            finally:
                _claims.pop()
    return wrapper
