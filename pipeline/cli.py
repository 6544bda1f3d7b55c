"""Constants from an experiment file and the command line, and one-line failures.

A step script defines its constants at the top, each with a comment, then calls
`config = configure(globals())`. The command line is

    python STEP.py [config/EXPERIMENT.py ...] [--name value ...]

An experiment file is plain Python assigning constants (nanoGPT's configurator): every step reads
the same file and takes the constants it knows, so a threshold is changed in one place. `--name
value` (or `--name=value`) overrides after the files. A step that builds on another one names it in
`reads=`: it then also takes that step's constants (their defaults live in that step alone), to find
the upstream output; `check_stored` refuses a given constant that contradicts what the upstream
output stored. `--help` prints the constants with their comments.

Bad input anywhere raises `PipelineError`, which `main` turns into one line on stderr and exit
status 2, never a traceback and never a half-written cache.
"""
from __future__ import annotations

import ast
import io
import sys
import tokenize
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parents[1]
# The steps in order; an experiment file may set any constant of any of them.
STEPS = ("prepare_mimic_nouns.py", "example_selection.py", "concept_matching.py", "target_model_perform.py",
         "bbox_img.py", "visualization.py", "gallery.py", "compare_describers.py")
_SCALAR = (bool, int, float, str, type(None))
_HEADER_END = "\nconfig = configure("


class PipelineError(Exception):
    """Bad input or state the user can fix; the message names the file and the fix."""


class Config(dict):
    """The resolved constants of a step; `given` holds those set by an experiment file or the command line,
    `own` names the step's own constants (the rest are read from upstream steps)."""
    given: dict[str, Any]
    own: list[str]


def _is_constant(name: str, value: Any) -> bool:
    return not name.startswith("_") and name.islower() and isinstance(value, _SCALAR)


def _parse(name: str, text: str, default: Any) -> Any:
    if isinstance(default, bool):
        low = text.lower()
        if low in ("1", "true", "yes", "y", "on"):
            return True
        if low in ("0", "false", "no", "n", "off"):
            return False
        raise PipelineError(f"--{name} takes yes/no (or true/false), got {text!r}")
    if isinstance(default, int):
        try:
            return int(text)
        except ValueError:
            raise PipelineError(f"--{name} takes an integer, got {text!r}") from None
    if isinstance(default, float):
        try:
            return float(text)
        except ValueError:
            raise PipelineError(f"--{name} takes a number, got {text!r}") from None
    return text


def _coerce(name: str, value: Any, default: Any, where: str) -> Any:
    """A value from an experiment file, checked against the type of the constant's default."""
    if isinstance(default, bool) or default is None or isinstance(default, str):
        ok = isinstance(value, type(default)) if default is not None else True
    elif isinstance(default, float):
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        value = float(value) if ok else value
    else:
        ok = isinstance(value, int) and not isinstance(value, bool)
    if not ok:
        raise PipelineError(f"{where}: {name} = {value!r} should be of type {type(default).__name__}, "
                            f"like its default {default!r}")
    return value


@lru_cache(maxsize=None)
def _header(script: str) -> str:
    path = ROOT / script
    source = path.read_text()
    if _HEADER_END not in source:
        raise PipelineError(f"{path} does not define its constants with `config = configure(...)`")
    return source.split(_HEADER_END)[0]


@lru_cache(maxsize=None)
def constant_names(script: str) -> tuple[str, ...]:
    """The names of a step's constants, read from its source (nothing is run)."""
    names = []
    for node in ast.parse(_header(script)).body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            if node.targets[0].id.islower() and not node.targets[0].id.startswith("_"):
                names.append(node.targets[0].id)
    return tuple(names)


@lru_cache(maxsize=None)
def constants_of(script: str) -> dict[str, Any]:
    """A step's constants with their defaults, from running the top of its source (imports and
    assignments, up to its `configure` call): the one place those defaults are written."""
    scope: dict[str, Any] = {"__name__": "__constants__", "__file__": str(ROOT / script)}
    exec(compile(_header(script), str(ROOT / script), "exec"), scope)
    return {k: scope[k] for k in constant_names(script) if _is_constant(k, scope.get(k))}


def _comments(script_path: Path) -> dict[str, str]:
    """The comment on each constant's line (what --help prints)."""
    out, line_of = {}, {}
    source = script_path.read_text().split(_HEADER_END)[0]
    for node in ast.parse(source).body:
        if isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name):
            line_of[node.lineno] = node.targets[0].id
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.COMMENT and tok.start[0] in line_of:
            out[line_of[tok.start[0]]] = tok.string.lstrip("# ")
    return out


@lru_cache(maxsize=None)
def accepted_names(script: str) -> tuple[str, ...]:
    """Every constant a step takes on its command line: its own and those of the steps it reads."""
    source = (ROOT / script).read_text()
    call = ast.parse(source[source.index(_HEADER_END) + 1:].split("\n")[0].strip())
    reads = [ast.literal_eval(k.value) for k in call.body[0].value.keywords if k.arg == "reads"]
    return tuple(dict.fromkeys(constant_names(script) + sum((constant_names(r) for r in (reads or [()])[0]), ())))


def read_experiment(path: str | Path) -> dict[str, Any]:
    """The constants an experiment file assigns. Each must be a constant of some step."""
    path = Path(path)
    if not path.is_file():
        raise PipelineError(f"experiment file {path} not found; pass a file such as config/nih_densenet121.py")
    scope: dict[str, Any] = {}
    try:
        exec(compile(path.read_text(), str(path), "exec"), scope)
    except Exception as e:
        raise PipelineError(f"{path} does not run as Python ({type(e).__name__}: {e})") from None
    values = {k: v for k, v in scope.items() if _is_constant(k, v)}
    known = {n for s in STEPS if (ROOT / s).is_file() for n in constant_names(s)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise PipelineError(f"{path}: {', '.join(unknown)} is not a constant of any step; check the spelling")
    return values


def configure(scope: dict, argv: list[str] | None = None, reads: tuple[str, ...] = ()) -> Config:
    """Set the scalar constants defined so far in `scope` from experiment files and `--name value`;
    return them (and the constants of the steps in `reads`) as a Config. A bad option ends the
    script with one line, as any other bad input does."""
    try:
        return _configure(scope, argv, reads)
    except PipelineError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


def _configure(scope: dict, argv: list[str] | None, reads: tuple[str, ...]) -> Config:
    own = [k for k, v in scope.items() if _is_constant(k, v)]
    defaults = {k: scope[k] for k in own}
    for script in reads:  # a step's own constant shadows an upstream one of the same name
        for k, v in constants_of(script).items():
            defaults.setdefault(k, v)
    args = list(sys.argv[1:] if argv is None else argv)
    if "--help" in args or "-h" in args:
        _print_help(scope, reads, defaults)
        sys.exit(0)
    files = [a for a in args if not a.startswith("--") and a.endswith(".py")]
    given: dict[str, Any] = {}
    for f in files:
        for k, v in read_experiment(f).items():
            if k in defaults:
                given[k] = _coerce(k, v, defaults[k], f)
    rest = [a for a in args if a not in files]
    while rest:
        arg = rest.pop(0)
        if not arg.startswith("--"):
            raise PipelineError(f"unexpected argument {arg!r}: constants are set as --name value "
                                f"(and an experiment file ends in .py)")
        key, eq, value = arg[2:].partition("=")
        if key not in defaults:
            raise PipelineError(f"unknown option --{key}; see --help for the known ones")
        if not eq:
            if not rest:
                raise PipelineError(f"--{key} needs a value")
            value = rest.pop(0)
        given[key] = _parse(key, value, defaults[key])
    config = Config({k: given.get(k, v) for k, v in defaults.items()})
    config.given, config.own = given, own
    for k in own:
        scope[k] = config[k]
    return config


def _print_help(scope: dict, reads: tuple[str, ...], defaults: dict) -> None:
    script = Path(scope.get("__file__", "step.py"))
    rel = script.resolve().relative_to(ROOT) if script.resolve().is_relative_to(ROOT) else script
    how = script.name if rel.parent == Path(".") else "-m " + ".".join(rel.with_suffix("").parts)
    print(f"usage: python {how} [config/EXPERIMENT.py ...] [--name value ...]\n")
    doc = (scope.get("__doc__") or "").strip().splitlines()
    if doc:
        print(doc[0] + "\n")
    own = [k for k, v in scope.items() if _is_constant(k, v)]
    sources = [(f"constants of {script.name}:", own, _comments(script) if script.is_file() else {})]
    sources += [(f"constants of {r} (to find its outputs):", constant_names(r), _comments(ROOT / r)) for r in reads]
    shown = set()
    for title, names, comments in sources:
        names = [k for k in names if k in defaults and k not in shown]
        if names:
            print(title)
        for k in names:
            shown.add(k)
            print(f"  --{k:<20} {defaults[k]!r:<24} {comments.get(k, '')}")


def check_stored(config: Config, stored: dict, names, path: str | Path) -> None:
    """Refuse a constant given to this step that contradicts the value stored with the upstream output."""
    for k in names:
        if k in config.given and k in stored and not _same(config.given[k], stored[k]):
            raise PipelineError(f"--{k} {config.given[k]!r} contradicts {k} = {stored[k]!r} stored in {path}; "
                                f"drop --{k} here, or re-run the step that wrote {Path(path).name} with it")


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool):
        return float(a) == float(b)
    return a == b


def print_config(title: str, config: dict) -> None:
    print(f"== {title}")
    width = max(len(k) for k in config)
    for k, v in config.items():
        print(f"  {k:<{width}} = {v!r}")


def main(fn: Callable[[], Any]) -> None:
    """Run a script's body; a PipelineError becomes one line and exit status 2."""
    try:
        fn()
    except PipelineError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


def run_script(script: str, *args: str) -> int:
    """Run `python script args...` in this process (same __main__ path, heavy imports paid once),
    from the repo root; returns its exit status."""
    import os
    import runpy
    argv, cwd = sys.argv, os.getcwd()
    sys.argv = [script, *args]
    os.chdir(ROOT)
    try:
        runpy.run_path(str(ROOT / script), run_name="__main__")
        return 0
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    finally:
        sys.argv = argv
        os.chdir(cwd)
