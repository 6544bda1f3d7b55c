"""Digests for cache keys: of JSON-like values, of files' bytes, and of the code that computes an output.

The code part of a key is never a hand list of files: `code_digest` starts from the modules that
compute an output and follows their import statements (those inside functions too), transitively,
to every module of the project they reach. A user's model file and its neighbours are found the
same way (`imported_files` with the file's own folder as the base). Each module counts by its syntax
tree without docstrings (`source_digest`): a comment, a docstring or a blank line cannot change a
result, so editing one re-runs nothing.
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
_sources: dict[str, tuple[list, str]] = {}  # _source by the sha256 of a file's bytes: each version parsed once


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


def source_digest(path: str | os.PathLike) -> str:
    """sha256 of a Python file's syntax tree with the docstrings of its module, classes and functions left
    out: what running it can depend on, without its comments, docstrings, layout and line numbers. A file
    that does not parse counts by its bytes."""
    return _source(Path(path))[1]


def _source(file: Path) -> tuple[list[tuple[int, str | None, list[str]]], str]:
    """A module's import statements ((level, module, names) of each, anywhere in it) and its source_digest,
    from one parse of each version of the file (known by the sha256 of its bytes)."""
    data = file.read_bytes()
    raw = hashlib.sha256(data).hexdigest()
    if raw not in _sources:
        try:
            tree = ast.parse(data, str(file))
        except (SyntaxError, ValueError):  # the import itself will say what is wrong with it
            _sources[raw] = ([], raw)
            return _sources[raw]
        imports, documented = [], []
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                imports.append((0, None, [a.name for a in node.names]))
            elif isinstance(node, ast.ImportFrom):
                imports.append((node.level, node.module, [a.name for a in node.names]))
            elif isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body \
                    and isinstance(node.body[0], ast.Expr) and isinstance(node.body[0].value, ast.Constant) \
                    and isinstance(node.body[0].value.value, str):
                documented.append(node)
        for node in documented:
            node.body = node.body[1:]
        _sources[raw] = (imports, hashlib.sha256(ast.dump(tree).encode()).hexdigest())
    return _sources[raw]


def digest(obj: Any) -> str:
    """sha256 of a JSON-serialisable object, independent of dict order."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def _imported_names(file: Path, base: Path) -> list[tuple[Path, str]]:
    """(folder, dotted name) of each module file's import statements name, anywhere in it: an absolute
    import is looked for under base, a relative one under the file's own package folder."""
    names = []
    for level, module, aliases in _source(file)[0]:
        if module is None and not level:  # import a.b
            names += [(base, a) for a in aliases]
        else:
            where = file.parents[min(level, len(file.parents)) - 1] if level else base
            names += [(where, f"{module or ''}.{a}".strip(".")) for a in aliases]
    return names


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
    repository) and every project module they import, transitively, each by its source_digest. Taken
    when called, not at import, so that a process running several steps sees an edit made meanwhile."""
    files = imported_files([ROOT / r for r in roots], ROOT)
    return digest({f.relative_to(ROOT).as_posix(): source_digest(f) for f in files})
