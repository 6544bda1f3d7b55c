"""Several processes over one probing set, as torchrun starts them (README, "Scale").

    torchrun --nproc_per_node 4 example_selection.py config/nih_densenet121.py

Each process (rank) takes a contiguous run of whole batches: the very batches one process would
make. So every image is seen once (no rank pads its share with duplicates, as DistributedSampler
would), and each image's activations come out of the same batch as in a single run, bit for bit on
a CPU. Rank 0 receives the other ranks' rows into its own arrays and alone writes the caches; the
others print nothing to stdout (their errors still reach stderr).
"""
from __future__ import annotations

import os
import sys

import torch
import torch.distributed as dist


def world() -> tuple[int, int]:
    """(this rank, number of ranks); (0, 1) outside torchrun."""
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def is_main() -> bool:
    return world()[0] == 0


def start(dev: torch.device) -> torch.device:
    """Join the process group when torchrun started several processes; on GPUs each rank takes the
    GPU of its local rank (NCCL), on the CPU they talk through gloo. Returns this rank's device."""
    rank, size = world()
    if size == 1:
        return dev
    if dev.type == "cuda":
        dev = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        torch.cuda.set_device(dev)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
    if rank:
        sys.stdout = open(os.devnull, "w")  # one log, rank 0's
    return dev


def share(n: int, batch_size: int, rank: int | None = None) -> range:
    """The images of a rank (default: this one): a contiguous run of whole batches of size batch_size,
    the first ranks taking one batch more where they do not divide evenly (so rank 0 is never idle)."""
    r, size = world()
    r = r if rank is None else rank
    q, extra = divmod(-(-n // batch_size), size)
    lo = r * q + min(r, extra)
    hi = lo + q + (r < extra)
    return range(min(lo * batch_size, n), min(hi * batch_size, n))


def agree(flags: list[bool]) -> list[bool]:
    """Rank 0's flags on every rank (what is left to compute is decided by the one who writes)."""
    if world()[1] == 1 or not flags:  # (every rank has as many flags: they come from the same inputs)
        return flags
    t = torch.tensor(flags, dtype=torch.uint8, device=_comm_device())
    dist.broadcast(t, 0)
    return [bool(v) for v in t.tolist()]


def collect(rows: torch.Tensor, n: int, batch_size: int) -> torch.Tensor | None:
    """Rank 0: the rows [n, ...] of every rank in probe order, each other rank's share received into
    its slice. Its own share is given either in place in rows [n, ...] (no second full copy) or
    alone. Other ranks: send their share [m, ...], get None."""
    rank, size = world()
    if size == 1:
        return rows
    dev = _comm_device()
    if rank:
        if len(rows):
            dist.send(rows.contiguous().to(dev), 0)
        return None
    if len(rows) != n:
        whole = rows.new_empty((n, *rows.shape[1:]))
        whole[:len(rows)] = rows
        rows = whole
    for r in range(1, size):
        part = share(n, batch_size, r)
        if len(part):
            buf = torch.empty((len(part), *rows.shape[1:]), dtype=rows.dtype, device=dev)
            dist.recv(buf, r)
            rows[part.start:part.stop] = buf.to(rows.device)
    return rows


def finish() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def _comm_device() -> torch.device:
    # NCCL moves tensors between GPUs only; gloo between CPUs.
    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")
