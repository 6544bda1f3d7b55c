"""Text in messages: lists cut to their first few items, names that print on any stdout, and warnings
said once in a step however often the step meets what they warn of."""
from __future__ import annotations

from contextlib import contextmanager

_said: set[str] | None = None  # the lines say_once said in the step now running (None: no step is running)


def at_most(items, n: int, sep: str = ", ") -> str:
    """The first n items joined with sep; when some are left out, `… (and K more)` says how many."""
    items = [str(i) for i in items]
    left = len(items) - n
    return sep.join(items[:n]) + (f" … (and {left} more)" if left > 0 else "")


def printable(text: str) -> str:
    """Text as any stdout prints it: a file name's byte that is not UTF-8 (os.listdir's surrogate escape of
    a Latin-1 name) as a backslash escape, which a strict UTF-8 stdout would refuse to print."""
    return text.encode("utf-8", "backslashreplace").decode()


def say_once(line: str) -> None:
    """Print line unless the step now running said it already: a warning about the target or the VLM
    holds for the whole step, whichever of its layers, runs or loads meets it. Outside a step (a library
    call) every call says it."""
    if _said is None or line not in _said:
        if _said is not None:
            _said.add(line)
        print(line)


@contextmanager
def one_step():
    """A step's own say_once lines: pipeline.cli.main runs each step inside this, so a step nested in
    another (the demo's, sanity_check.py's) says them for itself, apart from the step around it."""
    global _said
    outer, _said = _said, set()
    try:
        yield
    finally:
        _said = outer
