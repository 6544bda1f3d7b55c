"""Command-line overrides for a script's constants, and one-line failures.

A script defines its constants at the top, then calls `configure(globals())`: any constant can be
set as `--name value` (or `--name=value`). Bad input anywhere raises `PipelineError`, which `main`
turns into one line on stderr and exit status 2, never a traceback and never a half-written cache.
"""
from __future__ import annotations

import sys
from typing import Any, Callable

_SCALAR = (bool, int, float, str, type(None))


class PipelineError(Exception):
    """Bad input or state the user can fix; the message names the file and the fix."""


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


def configure(scope: dict, argv: list[str] | None = None) -> dict:
    """Override the scalar constants defined so far in `scope` from argv; return them as a dict.
    A bad option ends the script with one line, as any other bad input does."""
    try:
        return _configure(scope, argv)
    except PipelineError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


def _configure(scope: dict, argv: list[str] | None) -> dict:
    names = [k for k, v in scope.items() if not k.startswith("_") and k.islower() and isinstance(v, _SCALAR)]
    args = list(sys.argv[1:] if argv is None else argv)
    while args:
        arg = args.pop(0)
        if not arg.startswith("--"):
            raise PipelineError(f"unexpected argument {arg!r}: constants are set as --name value")
        key, _, value = arg[2:].partition("=")
        if key not in names:
            raise PipelineError(f"unknown option --{key}; known: " + " ".join(f"--{n}" for n in names))
        if not _:
            if not args:
                raise PipelineError(f"--{key} needs a value")
            value = args.pop(0)
        scope[key] = _parse(key, value, scope[key])
    return {k: scope[k] for k in names}


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
    from pathlib import Path
    root = Path(__file__).resolve().parent
    argv, cwd = sys.argv, os.getcwd()
    sys.argv = [script, *args]
    os.chdir(root)
    try:
        runpy.run_path(str(root / script), run_name="__main__")
        return 0
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    finally:
        sys.argv = argv
        os.chdir(cwd)
