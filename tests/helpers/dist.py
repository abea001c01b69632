"""Spawn real torch.distributed (gloo, CPU) process groups from a test and collect their results."""

from __future__ import annotations

import os
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _entry(rank: int, fn: Callable, world: int, port: int, out_dir: str, args: tuple) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        result = fn(rank, world, *args)
        torch.save(result, Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def run_distributed(fn: Callable, world: int, tmp_path: Path, *args: Any) -> list[Any]:
    """Run ``fn(rank, world, *args)`` in ``world`` spawned processes; return each rank's result."""
    out = tmp_path / f"dist{world}"
    out.mkdir(exist_ok=True)
    mp.spawn(_entry, args=(fn, world, _free_port(), str(out), args), nprocs=world, join=True)
    return [torch.load(out / f"rank{r}.pt", weights_only=False) for r in range(world)]


def uneven_split(n: int, world: int) -> list[slice]:
    """Contiguous, deliberately unequal shares (rank r gets a share proportional to r + 1)."""
    weights = [r + 1 for r in range(world)]
    cuts = [0]
    for w in weights:
        cuts.append(cuts[-1] + round(n * w / sum(weights)))
    cuts[-1] = n
    return [slice(cuts[r], cuts[r + 1]) for r in range(world)]
