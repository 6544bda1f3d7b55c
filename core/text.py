"""Lists in messages: the first few items, and how many were left out."""


def at_most(items, n: int, sep: str = ", ") -> str:
    """The first n items joined with sep; when some are left out, `… (and K more)` says how many."""
    items = [str(i) for i in items]
    left = len(items) - n
    return sep.join(items[:n]) + (f" … (and {left} more)" if left > 0 else "")
