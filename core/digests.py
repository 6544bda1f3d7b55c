"""Digests for cache keys: of JSON-like values, of files' bytes, and of the code that computes an output.

The code part of a key is never a hand list of files: `code_digest` starts from the modules that
compute an output and follows their import statements (those inside functions too), transitively,
to every module of the project they reach. A user's model file and its neighbours are found the
same way (`imported_files` with the file's own folder as the base).
"""
from __future__ import annotations

import ast
import hashlib
import json
import os
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]  # the repository: the base of the project's own imports
_digests: dict[tuple, str] = {}
_imports: dict[tuple, list[tuple[Path, str]]] = {}


def _memo(path: Path) -> tuple:
    st = os.stat(path)
    return str(Path(path).resolve()), st.st_size, st.st_mtime_ns


def file_digest(path: str | os.PathLike) -> str:
    """sha256 of a file's bytes, memoised per (path, size, mtime) within a process."""
    memo = _memo(Path(path))
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


def _imported_names(file: Path, base: Path) -> list[tuple[Path, str]]:
    """(folder, dotted name) of each module file's import statements name, anywhere in it: an absolute
    import is looked for under base, a relative one under the file's own package folder."""
    memo = (*_memo(file), str(base))
    if memo not in _imports:
        try:
            tree = ast.parse(file.read_bytes(), str(file))
        except (SyntaxError, ValueError):  # the import itself will say what is wrong with it
            tree = ast.Module(body=[], type_ignores=[])
        names = []
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names += [(base, a.name) for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                where = file.parents[min(node.level, len(file.parents)) - 1] if node.level else base
                names += [(where, f"{node.module or ''}.{a.name}".strip(".")) for a in node.names]
        _imports[memo] = names
    return _imports[memo]


def imported_files(roots: list[str | os.PathLike], base: str | os.PathLike) -> list[Path]:
    """The roots and every .py file under base that they import, directly or through each other, found
    by reading their import statements (never by running them). `import pkg.sub` and `from pkg import
    sub` reach pkg/__init__.py and pkg/sub.py, as far as they exist; a module imported by a computed
    name (importlib) is not seen."""
    base = Path(base).resolve()
    found: list[Path] = []
    todo = [Path(r).resolve() for r in roots]
    while todo:
        file = todo.pop()
        if file in found:
            continue
        found.append(file)
        for folder, dotted in _imported_names(file, base):
            parts = dotted.split(".")
            for i in range(1, len(parts) + 1):
                stem = folder.joinpath(*parts[:i])
                todo += [f for f in (stem.with_suffix(".py"), stem / "__init__.py")
                         if f.is_file() and f.is_relative_to(base)]
    return sorted(found)


def code_digest(*roots: str) -> str:
    """Digest of the sources that compute an output: the root modules (paths relative to the
    repository) and every project module they import, transitively. Taken when called, not at import,
    so that a process running several steps sees an edit made meanwhile."""
    files = imported_files([ROOT / r for r in roots], ROOT)
    return digest({f.relative_to(ROOT).as_posix(): file_digest(f) for f in files})
