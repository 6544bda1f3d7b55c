"""Lists in messages: the first few items, and how many were left out."""


def at_most(items, n: int, sep: str = ", ") -> str:
    """The first n items joined with sep; when some are left out, `… (and K more)` says how many."""
    items = [str(i) for i in items]
    left = len(items) - n
    return sep.join(items[:n]) + (f" … (and {left} more)" if left > 0 else "")


def printable(text: str) -> str:
    """Text as any stdout prints it: a file name's byte that is not UTF-8 (os.listdir's surrogate escape of
    a Latin-1 name) as a backslash escape, which a strict UTF-8 stdout would refuse to print."""
    return text.encode("utf-8", "backslashreplace").decode()
