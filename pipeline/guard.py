"""The first import of every step, before anything heavy, so that from a step's first line on:

- a Ctrl-C ends it with one line and exit status 130, however early it comes: while torch is imported
  or the constants are read, outside the `main` (pipeline/cli.py) that catches it inside the step's run;
- a console that cannot encode a character of a path or a concept (PYTHONIOENCODING=ascii, a cp1252
  console) shows it escaped (\\xe9) instead of failing in the middle of a line.

It imports only what Python has loaded before any script runs (os, sys), so that it is in force from its
own first lines; what the one line needs besides is imported when a Ctrl-C comes.
"""
import os
import sys


def written() -> list:
    """The outputs this process completed (pipeline.cache records them; not imported yet: none)."""
    return list(getattr(sys.modules.get("pipeline.cache"), "WRITTEN", []))


def interrupted(paths: list) -> str:
    """The one line a Ctrl-C ends a step with: the complete outputs it kept, or that nothing was written."""
    if not paths:
        return "interrupted; nothing was written"
    from core.text import at_most
    paths = list(dict.fromkeys(str(p) for p in paths))
    return (f"interrupted; kept the {len(paths)} complete output(s) written before it: {at_most(paths, 3)}; "
            f"nothing half-written")


def _excepthook(kind, value, tb) -> None:
    if not issubclass(kind, KeyboardInterrupt):
        sys.__excepthook__(kind, value, tb)
        return
    print(interrupted(written()), file=sys.stderr)
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(130)  # a hook cannot choose the exit status; nothing else is left to run at this point


sys.excepthook = _excepthook
for _stream in (sys.stdout, sys.stderr):
    try:
        _stream.reconfigure(errors="backslashreplace")
    except (AttributeError, ValueError, OSError):  # not a text stream of its own (a capture, a closed file)
        pass
