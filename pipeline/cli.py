"""Constants from an experiment file and the command line, and one-line failures.

A step script defines its constants at the top, each with a comment, then calls
`config = configure(globals())`. The command line is

    python STEP.py [config/EXPERIMENT.py ...] [--name value ...]

An experiment file is plain Python assigning constants (nanoGPT's configurator): every step reads
the same file and takes the constants it knows, so a threshold is changed in one place. `--name
value` (or `--name=value`) overrides after the files. A step that builds on another one names it in
`reads=`: it then also takes that step's constants (their defaults live in that step alone, read from its
parsed header: nothing of it runs), to find the upstream output; `check_stored` refuses a given constant that contradicts what the upstream
output stored. `--help` prints the examples of the step's docstring (its indented `python ...`
lines), then the constants with their allowed values and comments.

A constant declares its valid values once, as a string annotation on its own line, in a tiny
language that `configure` checks every resolved value against (exit 2, one line naming the option):

    topk: ">= 1" = 20                       # also > x, <= x, < x
    alpha: "[0, 100)" = 95.0                # an interval; a bound may name another constant: "[1, resize]"
    seed: "[0, 2**63 - 1]" = 0              # or be a power, exactly: 10**7, 2**63 - 1
    selection: "adaptive | topk" = "adaptive"   # choices; N stands for digits, NAME for any text
    device: "auto | cpu | cuda | cuda:N" = "auto"
    mean: "numbers" = ""                    # comma-separated numbers ("" too); "numbers > 0": each > 0

NaN and infinity are refused for every number, in a list too. Every numeric constant declares both ends
(tests/test_declared_constants.py): a count without an upper end reaches an allocator before anything names it.

A step prints the constants that differ from their defaults and where each was set; `--verbose yes`
(taken by every step, as every constant in EVERY_STEP is) prints all of them.

A script that runs other steps (demo.py, sanity_check.py) runs each with `run_step`, which forwards its
experiment files and the options typed on its command line that the step takes.

Bad input anywhere raises `PipelineError`, which `main` turns into one line on stderr and exit
status 2, never a traceback and never a half-written cache. Ctrl-C ends with one line too (exit
status 130), naming the outputs completed before it.
"""
from __future__ import annotations

import ast
import contextlib
import difflib
import io
import math
import os
import re
import shlex
import sys
import tokenize
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable

from core.errors import PipelineError  # here too, for the steps that import it with configure
from core.text import one_step
from pipeline.guard import interrupted, written

ROOT = Path(__file__).resolve().parents[1]
# The steps in order; an experiment file may set any constant of any of them.
STEPS = ("prepare_mimic_nouns.py", "example_selection.py", "concept_matching.py", "target_model_perform.py",
         "bbox_img.py", "visualization.py", "gallery.py", "sanity_check.py", "ablation.py", "compare_describers.py")
# The steps whose constants other modules read: named here once, each read from its header (constants_of),
# never run, so a default is written in its step alone.
EXAMPLE_SELECTION = ROOT / "example_selection.py"
CONCEPT_MATCHING = ROOT / "concept_matching.py"
_SCALAR = (bool, int, float, str, type(None))
# Constants every step takes besides its own, with their comments. They decide what is printed, never
# what is computed (pipeline/outputs.py lists them among the run settings, outside every key).
EVERY_STEP = {"verbose": (False, "print every constant as resolved; default: those not at their defaults")}
_configured: list = [None]  # the Config configure() made last: main() runs its step under it
_running: list = []  # the Config of each step main() is running, innermost last (a step the demo runs is nested)


class Config(dict):
    """The resolved constants of a step; `given` holds those set by an experiment file or the command line,
    `origin` where each was set (the file, or "the command line"), `defaults` every constant's default,
    `own` names the step's own constants (the rest are read from upstream steps)."""
    given: dict[str, Any]
    origin: dict[str, str]
    defaults: dict[str, Any]
    own: list[str]
    files: list[str]  # the experiment files given, in order
    typed: list[tuple[str, str]]  # (name, value) of each --name value on the command line, as typed, in order


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


def _assigned(node: ast.stmt) -> str | None:
    """The name a top-level `name = value` or `name: "spec" = value` assigns, else None."""
    if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
        return node.targets[0].id
    if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and node.value is not None:
        return node.target.id
    return None


def _is_configure(node: ast.stmt) -> bool:
    """Whether a top-level statement is a step's `config = configure(...)` (over as many lines as it likes)."""
    return isinstance(node, ast.Assign) and isinstance(node.value, ast.Call) \
        and isinstance(node.value.func, ast.Name) and node.value.func.id == "configure"


@lru_cache(maxsize=None)
def _parsed(script: str | Path) -> tuple[str, tuple[ast.stmt, ...], ast.Call | None]:
    """A step's source, its header (the top-level statements before its `configure` call) and that call,
    read as text and parsed (nothing of it is run). Without a call, the whole module and None."""
    path = ROOT / script
    source = path.read_text()
    body = ast.parse(source, str(path)).body
    at = next((i for i, node in enumerate(body) if _is_configure(node)), None)
    return source, tuple(body[:at]), None if at is None else body[at].value


def _header(script: str | Path) -> tuple[ast.stmt, ...]:
    _, header, call = _parsed(script)
    if call is None:
        raise PipelineError(f"{ROOT / script} does not define its constants with `config = configure(...)`")
    return header


@lru_cache(maxsize=None)
def constant_names(script: str | Path) -> tuple[str, ...]:
    """The names of a step's constants, read from its source (nothing is run)."""
    names = []
    for node in _header(script):
        name = _assigned(node)
        if name and name.islower() and not name.startswith("_"):
            names.append(name)
    return tuple(names)


@lru_cache(maxsize=None)
def specs_of(script: str | Path) -> dict[str, str]:
    """The valid values each constant of a step declares (its string annotation), read from its
    source, so an upstream step's are known without running it."""
    return {node.target.id: node.annotation.value for node in _header(script)
            if _assigned(node) and isinstance(node, ast.AnnAssign)
            and isinstance(node.annotation, ast.Constant) and isinstance(node.annotation.value, str)}


@lru_cache(maxsize=None)
def constants_of(script: str | Path) -> dict[str, Any]:
    """A step's constants with their defaults, read from its header without running any of it: the one
    place those defaults are written. A default is a literal, or a name the header imports from a module
    of this project that assigns it a literal (template = TEMPLATE)."""
    header = _header(script)
    out = {}
    for node in header:
        name = _assigned(node)
        if name in constant_names(script):
            value = _literal(node.value, header, f"{ROOT / script}:{node.lineno}: {name}")
            if _is_constant(name, value):
                out[name] = value
    return out


def _literal(node: ast.expr, scope: tuple[ast.stmt, ...], where: str, depth: int = 0) -> Any:
    """The value an expression of a module's top level stands for, read statically: a literal, or a name
    assigned a literal there or imported (`from package.module import NAME`) from a project module that does."""
    with contextlib.suppress(ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        return ast.literal_eval(node)
    if isinstance(node, ast.Name) and depth < 8:  # (a re-export chain this long is a cycle)
        for stmt in reversed(scope):  # the last binding wins, as when run
            if _assigned(stmt) == node.id:
                return _literal(stmt.value, scope, where, depth + 1)
            if isinstance(stmt, ast.ImportFrom) and stmt.level == 0 and stmt.module:
                for alias in stmt.names:
                    if (alias.asname or alias.name) == node.id:
                        return _literal(ast.Name(alias.name), _module_body(stmt.module), where, depth + 1)
    raise PipelineError(f"{where} = {ast.unparse(node)}: a step's constant defaults to a literal (a number, text, "
                        f"True/False) or to a name imported from a module of this project that assigns one")


@lru_cache(maxsize=None)
def _module_body(dotted: str) -> tuple[ast.stmt, ...]:
    """The top-level statements of a project module, parsed from its file (empty for one outside the project)."""
    stem = ROOT.joinpath(*dotted.split("."))
    for file in (stem.with_suffix(".py"), stem / "__init__.py"):
        if file.is_file():
            return tuple(ast.parse(file.read_text(), str(file)).body)
    return ()


_PLACEHOLDERS = {"N": r"\d+", "NAME": r".+"}
_BOUND = r"[\w.+-]+(?:\s*\*\*\s*\d+)?(?:\s*-\s*\d+)?"  # a number, a constant's name, or a power: 10**7, 2**63 - 1
_POWER = re.compile(r"(\d+)\s*\*\*\s*(\d+)(?:\s*-\s*(\d+))?")


@lru_cache(maxsize=None)
def _rule(spec: str) -> tuple:
    """A declared spec, parsed once: ("choices", patterns), or ("range", low, low_closed, high,
    high_closed) where a bound is a number, the name of another constant, or None."""
    text = spec.strip()
    if text.startswith("numbers"):  # comma-separated numbers, each within the range that may follow
        inner = text[len("numbers"):].strip()
        inner = inner[len("in "):].strip() if inner.startswith("in ") else inner
        if inner:
            _rule(inner)  # refuse a bad range when the spec is read
        return ("numbers", inner or None)
    if "|" in text:
        return ("choices", tuple(re.compile("".join(_PLACEHOLDERS.get(part, re.escape(part))
                                                    for part in re.split(r"\b(N|NAME)\b", alt.strip())))
                                 for alt in text.split("|")))
    m = re.fullmatch(rf"([\[(])\s*({_BOUND})\s*,\s*({_BOUND})\s*([\])])", text)
    if m:
        return ("range", _bound(m[2], spec), m[1] == "[", _bound(m[3], spec), m[4] == "]")
    m = re.fullmatch(rf"(>=|>|<=|<)\s*({_BOUND})", text)
    if m:
        b = _bound(m[2], spec)
        return ("range", b, m[1] == ">=", None, False) if m[1][0] == ">" else ("range", None, False, b, m[1] == "<=")
    raise ValueError(f"cannot parse the declared values {spec!r}: use 'a | b', '>= x', '(x, y]' ...")


def _bound(text: str, spec: str) -> int | float | str:
    """A bound as written: an integer exactly (2**63 - 1 is not a float's 2**63), else a number, else the
    name of another constant."""
    power = _POWER.fullmatch(text)
    if power:
        return int(power[1]) ** int(power[2]) - int(power[3] or 0)
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    if text.isidentifier():
        return text
    raise ValueError(f"bad bound {text!r} in the declared values {spec!r}")


def _described(spec: str) -> str:
    """A spec in words: 'in (0, 100)', '>= 1', 'adaptive | topk' or 'comma-separated numbers, each > 0'."""
    text = spec.strip()
    if text.startswith("numbers"):
        inner = _rule(text)[1]
        return "comma-separated finite numbers" + (f", each {_described(inner)}" if inner else "")
    return f"in {spec}" if text[0] in "[(" else spec


def _unmet(spec: str, value: Any, config: dict) -> str | None:
    """What `value` must be under `spec`, in words, when it is not; None when it is allowed."""
    rule = _rule(spec)
    if rule[0] == "numbers":  # "" leaves the default to the code that reads it
        parts = value.split(",") if isinstance(value, str) and value.strip() else []
        if not isinstance(value, str):
            return _described(spec)
        for part in parts:
            try:
                x = float(part)
            except ValueError:
                return _described(spec)
            if not math.isfinite(x) or (rule[1] and _unmet(rule[1], x, config)):
                return _described(spec)
        return None
    if rule[0] == "choices":
        # numbers too (channels: "0 | 1 | 3"), by their plain text
        text = value if isinstance(value, str) else (str(value) if isinstance(value, int) and not isinstance(value, bool) else None)
        return None if text is not None and any(p.fullmatch(text) for p in rule[1]) else f"one of {spec}"
    _, low, low_closed, high, high_closed = rule
    named = [b for b in (low, high) if isinstance(b, str)]
    low, high = (config[b] if isinstance(b, str) else b for b in (low, high))
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    ok = ok and (low is None or value > low or (low_closed and value == low))
    ok = ok and (high is None or value < high or (high_closed and value == high))
    if ok:
        return None
    return _described(spec) + (f" ({', '.join(f'{b} = {config[b]!r}' for b in named)})" if named else "")


def _check(config: dict, specs: dict[str, str], origin: dict[str, str]) -> None:
    """Refuse a resolved value outside its declared range or choices, or a number that is NaN or
    infinite, naming where it was set."""
    for k, v in config.items():
        unmet = _unmet(specs[k], v, config) if k in specs else None
        if unmet is None and isinstance(v, float) and not math.isfinite(v):
            unmet = "a finite number"
        if unmet:
            where = origin.get(k, "")
            shown = f"--{k} {where[2:]}" if where.startswith("--") else f"{where or 'the default'}: {k} = {v!r}"
            raise PipelineError(f"{shown}: {k} must be {unmet}")


def _own_specs(scope: dict) -> dict[str, str]:
    file = scope.get("__file__")
    if file and Path(file).is_file() and _parsed(str(file))[2] is not None:
        return specs_of(str(file))
    return {k: v for k, v in scope.get("__annotations__", {}).items() if isinstance(v, str)}


def _comments(script_path: Path) -> dict[str, str]:
    """The comment on each constant's line (what --help prints)."""
    out, line_of = {}, {}
    source, header, _ = _parsed(script_path)
    for node in header:
        if _assigned(node):
            line_of[node.lineno] = _assigned(node)
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.COMMENT and tok.start[0] in line_of:
            out[line_of[tok.start[0]]] = tok.string.lstrip("# ")
    return out


@lru_cache(maxsize=None)
def accepted_names(script: str) -> tuple[str, ...]:
    """Every constant a step takes on its command line: its own and those of the steps it reads."""
    return tuple(dict.fromkeys(constant_names(script) + sum((constant_names(r) for r in reads_of(script)), ())
                               + tuple(EVERY_STEP)))


@lru_cache(maxsize=None)
def reads_of(script: str | Path) -> tuple[str, ...]:
    """The steps a step builds on: the `reads=` of its `configure` call, read from its source."""
    _header(script)
    return next((tuple(ast.literal_eval(k.value)) for k in _parsed(script)[2].keywords if k.arg == "reads"), ())


def _closest(name: str, known) -> str | None:
    """The known name closest to a mistyped one, hyphens read as underscores (data-root is data_root)."""
    folded = name.replace("-", "_").lower()
    if folded in known:
        return folded
    near = difflib.get_close_matches(folded, sorted(known), n=1, cutoff=0.6)
    return near[0] if near else None


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1][:200] if lines else ""


def read_experiment(path: str | Path) -> dict[str, Any]:
    """The constants an experiment file assigns. Each must be a constant of some step."""
    path = Path(path)
    if not path.is_file():
        raise PipelineError(f"experiment file {path} not found; pass a file such as config/nih_densenet121.py")
    scope: dict[str, Any] = {}
    said = io.StringIO()  # what it prints goes on, unless it fails: then its last line is quoted in ours
    try:
        with contextlib.redirect_stdout(said), contextlib.redirect_stderr(said):
            # bytes, read as Python reads a source file: a UTF-8 BOM (Windows editors write one) or a coding line
            exec(compile(path.read_bytes(), str(path), "exec"), scope)
    except SystemExit as e:  # sys.exit(), or argparse refusing the step's own options
        printed = _last_line(said.getvalue())
        raise PipelineError(f"experiment file {path} exited (SystemExit({e.code!r})) while being read"
                            + (f", printing {printed!r}" if printed else "")
                            + "; an experiment file only assigns constants (topk = 20): remove its exit or "
                              "argparse") from None
    except Exception as e:
        first = str(e).strip().splitlines()[0][:200] if str(e).strip() else ""
        raise PipelineError(f"experiment file {path} failed while being read ({type(e).__name__}"
                            + (f": {first}" if first else "") + "); fix it, it should only assign constants") from None
    print(said.getvalue(), end="")
    known = {n for s in STEPS if (ROOT / s).is_file() for n in constant_names(s)} | set(EVERY_STEP)
    for k, v in scope.items():
        if k in known and not isinstance(v, _SCALAR):
            raise PipelineError(f"{path}: {k} = {v!r} is a {type(v).__name__}; a constant is a number, text or "
                                f"True/False (several numbers as text: {k} = \"0.5,0.25\")")
    values = {k: v for k, v in scope.items() if _is_constant(k, v)}
    for k in sorted(set(values) - known):
        near = _closest(k, known)
        raise PipelineError(f"{path}: {k} is not a constant of any step; "
                            + (f"did you mean {near}?" if near else "check the spelling"))
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
    specs = _own_specs(scope)
    for script in reads:  # a step's own constant shadows an upstream one of the same name
        for k, v in constants_of(script).items():
            defaults.setdefault(k, v)
        for k, spec in specs_of(script).items():
            specs.setdefault(k, spec)
    for k, (v, _) in EVERY_STEP.items():
        defaults.setdefault(k, v)
    args = list(sys.argv[1:] if argv is None else argv)
    if "--help" in args or "-h" in args:
        _print_help(scope, reads, defaults, specs)
        sys.exit(0)
    files, typed = [], []  # experiment files, and (name, value) as typed, in order
    rest = list(args)
    while rest:
        arg = rest.pop(0)
        if not arg.startswith("--"):
            if not arg.endswith(".py"):
                raise PipelineError(f"unexpected argument {arg!r}: constants are set as --name value "
                                    f"(and an experiment file ends in .py)")
            files.append(arg)
            continue
        key, eq, value = arg[2:].partition("=")
        if key not in defaults:
            near = _closest(key, defaults)
            raise PipelineError(f"unknown option --{key}; " + (f"did you mean --{near}?" if near else
                                                               "see --help for the known ones"))
        if not eq:
            value = rest.pop(0) if rest else None
        if value is None or value.startswith("--"):  # an option name is never a value: --save_root --layer
            raise PipelineError(f"--{key} needs a value" + (f", not the option {value}" if value else "")
                                + f"; write --{key} VALUE")
        typed.append((key, value))
    given: dict[str, Any] = {}
    origin: dict[str, str] = {}  # where each given value was set: an experiment file, or "--VALUE" as typed
    for f in files:
        for k, v in read_experiment(f).items():
            if k in defaults:
                given[k] = _coerce(k, v, defaults[k], f)
                origin[k] = f
    for key, value in typed:
        given[key] = _parse(key, value, defaults[key])
        origin[key] = "--" + value
    config = Config({k: given.get(k, v) for k, v in defaults.items()})
    _check(config, specs, origin)
    config.given, config.own, config.defaults, config.files, config.typed = given, own, defaults, files, typed
    config.origin = {k: "the command line" if w.startswith("--") else w for k, w in origin.items()}
    for k in own:
        scope[k] = config[k]
    _configured[0] = config
    return config


def running_save_root() -> str | None:
    """The --save_root of the step running now, as its Config holds it now (a step may settle it from an
    input it was given), or None outside a step or for one without a save_root (prepare_mimic_nouns.py):
    pipeline/cache.py refuses every write outside it."""
    return _running[-1].get("save_root") if _running and _running[-1] is not None else None


def _print_help(scope: dict, reads: tuple[str, ...], defaults: dict, specs: dict[str, str]) -> None:
    script = Path(scope.get("__file__", "step.py"))
    rel = script.resolve().relative_to(ROOT) if script.resolve().is_relative_to(ROOT) else script
    how = script.name if rel.parent == Path(".") else "-m " + ".".join(rel.with_suffix("").parts)
    print(f"usage: python {how} [config/EXPERIMENT.py ...] [--name value ...]\n")
    doc = (scope.get("__doc__") or "").strip().splitlines()
    if doc:
        print(doc[0] + "\n")
    shown_examples = examples(scope.get("__doc__") or "")
    if shown_examples:
        print("examples:\n" + "".join(f"  {e}\n" for e in shown_examples))
    own = [k for k, v in scope.items() if _is_constant(k, v)]
    sources = [(f"constants of {script.name}:", own, _comments(script) if script.is_file() else {})]
    sources += [(f"constants of {r} (to find its outputs):", constant_names(r), _comments(ROOT / r)) for r in reads]
    sources += [("constants of every step:", list(EVERY_STEP), {k: c for k, (_, c) in EVERY_STEP.items()})]
    shown = set()
    for title, names, comments in sources:
        names = [k for k in names if k in defaults and k not in shown]
        if names:
            print(title)
        for k in names:
            shown.add(k)
            text = ": ".join(t for t in (_described(specs[k]) if k in specs else "", comments.get(k, "")) if t)
            print(f"  --{k:<20} {defaults[k]!r:<24} {text}")


def examples(doc: str) -> list[str]:
    """The commands a module's docstring shows (its indented lines that start with python or torchrun):
    --help prints them, so each example lives in the docstring alone."""
    return [line.strip() for line in doc.splitlines()
            if line.startswith("    ") and line.strip().split(" ", 1)[0] in ("python", "torchrun")]


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
    """The constants not at their defaults, one line per place they were set (an experiment file, the
    command line); with --verbose yes, or for a plain dict, every constant as resolved."""
    if not isinstance(config, Config) or config.get("verbose"):
        print(f"== {title}")
        width = max(len(k) for k in config)
        for k, v in config.items():
            print(f"  {k:<{width}} = {v!r}")
        return
    changed = [k for k in config if k in config.given and not _same(config.given[k], config.defaults[k])]
    print(f"== {title}: " + (f"{len(changed)} of {len(config)} constants not at their defaults" if changed else
                             f"all {len(config)} constants at their defaults") + " (--verbose yes lists all)")
    for where in sorted(dict.fromkeys(config.origin[k] for k in changed), key=lambda w: w == "the command line"):
        line = f"  {where}:"
        for k in (k for k in changed if config.origin[k] == where):
            item = f" {k} = {config[k]!r}"
            if len(line) + len(item) > 110 and line.endswith(","):  # whole items to a line
                print(line)
                line = "   "
            line += item + ","
        print(line.rstrip(","))


_depth = 0  # main() calls in progress: a step the demo runs is nested in the demo's


def main(fn: Callable[[], Any], torchrun: bool = False) -> None:
    """Run a script's body; a PipelineError becomes one line and exit status 2, Ctrl-C one line
    and exit status 130. A script that does not share its work among torchrun's processes
    (torchrun=False) refuses to run as several, which would each do all of it and write the same files."""
    global _depth
    before = len(written())
    _depth += 1
    _running.append(_configured[0])
    sys.excepthook = _quiet_dropped_peers  # forked loader workers inherit it
    try:
        if not torchrun and int(os.environ.get("WORLD_SIZE", 1)) > 1:
            raise PipelineError(f"{Path(sys.argv[0]).name} runs as one process; under torchrun only "
                                f"example_selection.py and concept_matching.py share their work: run it with python")
        with one_step():
            fn()
    except PipelineError as e:
        print(f"error: {own_message(e)}", file=sys.stderr)
        sys.exit(2)
    except RuntimeError as e:
        if _out_of_memory(e):
            _say_out_of_memory(e)
        if not _peer_failed(e):
            raise
        print(f"rank {os.environ.get('RANK', '?')}: stopped because another rank failed", file=sys.stderr)
        sys.exit(2)
    except MemoryError as e:
        _say_out_of_memory(e)
    except KeyboardInterrupt:
        if _depth > 1:  # the outermost script says it once, with everything it kept
            raise
        print(interrupted(written()[before:]), file=sys.stderr)
        sys.exit(130)
    finally:
        _depth -= 1
        _running.pop()


def _out_of_memory(e: RuntimeError) -> bool:
    """torch's allocators fail with a RuntimeError of their own: CPU 'can't allocate memory', CUDA OutOfMemoryError."""
    return type(e).__name__ == "OutOfMemoryError" or "can't allocate memory" in str(e)


def _say_out_of_memory(e: BaseException) -> None:
    """The counts that size arrays from the data are checked against memory before the work; what is left is
    a model's own need, which grows with the batch."""
    first = own_message(e).strip().splitlines()
    print(f"error: out of memory ({type(e).__name__}: {first[0][:160] if first else 'no message'}); pass a smaller "
          f"--batch_size (a model's activations grow with it), or free memory", file=sys.stderr)
    sys.exit(2)


def _peer_failed(e: BaseException) -> bool:
    """Under torchrun, whether torch.distributed raised e because another rank ended mid-exchange: that
    rank printed its own error line, so this one's traceback would only bury it."""
    if int(os.environ.get("WORLD_SIZE", 1)) < 2:
        return False
    tb, last = e.__traceback__, ""
    while tb is not None:
        last, tb = tb.tb_frame.f_code.co_filename, tb.tb_next
    return Path(last).parent.name == "distributed" and Path(last).parent.parent.name == "torch"


def _quiet_dropped_peers(kind, value, tb) -> None:
    """sys.excepthook of a step and of its loader workers. A worker passes each batch's file descriptors
    through multiprocessing's resource sharer, whose thread catches its own errors and hands them to
    sys.excepthook (never threading's). Ctrl-C can end the step mid-handshake with it; the worker's sharer
    then reports the dropped connection, a traceback below the one line the step ends with. That report
    alone is silent: a connection error caught by the sharer's serving loop (the traceback's first frame).
    Any other error, the sharer's own included, is printed as usual."""
    code = tb.tb_frame.f_code if tb is not None else None
    if issubclass(kind, (ConnectionError, EOFError)) and code is not None and code.co_name == "_serve" and \
            Path(code.co_filename).parts[-2:] == ("multiprocessing", "resource_sharer.py"):
        return
    sys.__excepthook__(kind, value, tb)


def own_message(e: BaseException) -> str:
    r"""An error's own message. A DataLoader worker's error comes back re-raised with the worker's
    whole traceback as its message ('Caught X in DataLoader worker process 0.\nOriginal Traceback
    ...\nmodule.X: message'): keep the message, so the error reads as it does without workers."""
    text = str(e)
    if text.startswith("Caught ") and "\nOriginal Traceback" in text:
        cls = type(e)
        name = cls.__qualname__ if cls.__module__ == "builtins" else f"{cls.__module__}.{cls.__qualname__}"
        text = text.rsplit(f"\n{name}: ", 1)[-1].strip()
    return text


def run_step(script: str, caller: Config, log: str | Path | None = None, shared: dict | None = None,
             **constants: Any) -> None:
    """Run step `script` as a script that runs steps does (the demo, the sanity check): in this process, as

        python SCRIPT [the caller's experiment files] [the caller's --name value the step takes] [shared] [constants]

    The caller's own constants are its own, never forwarded; `shared` values go to each step that takes
    them; `constants` are this run's, each one the step must take. A value given twice is forwarded once, the
    later one. The command is printed, so it can be re-run by hand; with `log`, what the step prints goes
    to that file (UTF-8, whatever the locale) and only its error lines come back. A step that fails stops
    the caller with one line naming it."""
    known = accepted_names(script)
    for k in constants:
        if k not in known:
            raise PipelineError(f"{script} takes no --{k}; see python {script} --help")
    chosen = {k: v for k, v in (shared or {}).items() if k in known} | constants
    argv = [*caller.files]
    argv += [a for k, v in caller.typed if k in known and k not in caller.own and k not in chosen for a in (f"--{k}", v)]
    argv += [a for k, v in chosen.items() for a in (f"--{k}", _as_typed(v))]
    print(f"{'' if log else chr(10)}$ python {script} {shlex.join(argv)}", flush=True)
    if log is None:
        status = run_script(script, *argv)
    else:
        log = Path(log).resolve()  # (run_script runs the step from the repo root)
        log.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "w", encoding="utf-8") as f, contextlib.redirect_stdout(f), contextlib.redirect_stderr(f):
            status = run_script(script, *argv)
    if status != 0:
        where = ""
        if log is not None:
            said = log.read_text(encoding="utf-8").splitlines()
            print("\n".join([line for line in said if line.startswith("error:")] or said[-5:]), file=sys.stderr)
            where = f", all it printed in {log}"
        raise PipelineError(f"{script} failed (its error is above{where}); {Path(sys.argv[0]).name} stops here")


def _as_typed(value: Any) -> str:
    """A constant's value as its option takes it: True/False as yes/no, the rest as text."""
    return ("yes" if value else "no") if isinstance(value, bool) else str(value)


def run_script(script: str, *args: str, cwd: str | Path | None = None) -> int:
    """Run `python script args...` in this process (same __main__ path, heavy imports paid once),
    from the repo root (or cwd, for commands written for the user's own folder); returns its exit status."""
    import runpy
    argv, back = sys.argv, os.getcwd()
    sys.argv = [script, *args]
    os.chdir(cwd or ROOT)
    try:
        runpy.run_path(str(ROOT / script), run_name="__main__")
        return 0
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    finally:
        sys.argv = argv
        os.chdir(back)
