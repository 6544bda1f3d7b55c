"""What this machine can honour of a count the user gives, checked before the work it sizes: the memory
the arrays of a count take, and the open files the loader processes take. A count beyond it is refused
in one line with the largest that fits, instead of an allocator's or the kernel's error midway.
"""
from __future__ import annotations

import os
from pathlib import Path

from core.errors import PipelineError

FILES_PER_WORKER = 4  # a loader process's pipes and sentinel in this process (measured: 4 + its prefetched batches)
FILES_RESERVED = 64   # open files kept for the step itself: its outputs, caches, images read here, libraries


def available_memory() -> int | None:
    """Bytes this process may still allocate: the kernel's MemAvailable, or less under a cgroup (a
    container's) memory limit; None where neither can be read (then nothing is refused)."""
    free = []
    try:
        meminfo = Path("/proc/meminfo").read_text()
        free += [int(line.split()[1]) * 1024 for line in meminfo.splitlines() if line.startswith("MemAvailable:")]
    except (OSError, ValueError, IndexError):
        pass
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        if limit != "max":
            free.append(int(limit) - int(Path("/sys/fs/cgroup/memory.current").read_text()))
    except (OSError, ValueError):
        pass
    return max(0, min(free)) if free else None


def size(n: float) -> str:
    """Bytes in words: '17.2 GB'."""
    for unit in ("bytes", "KB", "MB", "GB", "TB"):
        if n < 1000:
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} PB"


def check_memory(option: str, value: int, each: int, what: str) -> None:
    """Refuse --option value when value times `each` bytes (what: those arrays, in words) is more memory
    than is available, naming the largest value that fits."""
    free = available_memory()
    if free is None or value * each <= free:
        return
    fit = free // max(1, each)
    raise PipelineError(f"--{option} {value}: {what} need {size(value * each)} of memory, and {size(free)} is "
                        f"available; at most {fit} fit: pass --{option} {fit} or less, or free memory")


def open_files() -> tuple[int | None, int]:
    """The soft limit on this process's open files (None: none) and how many it has open now."""
    try:
        import resource
    except ImportError:  # not on Unix: no such limit
        return None, 0
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    try:
        now = len(os.listdir("/proc/self/fd" if os.path.isdir("/proc/self/fd") else "/dev/fd"))
    except OSError:
        now = 0
    return (None if soft == resource.RLIM_INFINITY else soft), now


def workers_that_fit(prefetch: int) -> int | None:
    """How many loader processes, each with `prefetch` batches in flight (each batch an open file while
    torch passes it between processes), fit in this process's open-file limit; None: no limit."""
    soft, now = open_files()
    if soft is None:
        return None
    return max(0, (soft - now - FILES_RESERVED) // (FILES_PER_WORKER + prefetch))


def check_workers(option: str, n: int, prefetch: int) -> None:
    """Refuse n loader processes (--option) beyond the open-file limit, naming the most that fit."""
    fit = workers_that_fit(prefetch)
    if fit is None or n <= fit:
        return
    soft, now = open_files()
    raise PipelineError(f"--{option} {n}: {n} loader processes need about {n * (FILES_PER_WORKER + prefetch)} open "
                        f"files, and this process may open {soft} (ulimit -n) with {now} open already; at most {fit} "
                        f"fit: pass --{option} {fit} or less, or raise ulimit -n")
