"""One run as several processes (``torchrun``, ``accelerate launch``, ``srun``): who writes, who waits.

The Trainer already trains data-parallel when a launcher starts N copies of the command. Everything
else the harness writes — stage caches, teacher-output caches, predictions, the record, the saved
student — is written by rank 0 alone: the other processes train alongside it (every stage is a
collective), then wait at a barrier and read what rank 0 wrote. Without a launcher (no ``WORLD_SIZE``)
every function here is a no-op, so the single-process path is the same code.

All processes must see one file system (one machine, or a shared one across nodes).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import Any

import torch
import torch.distributed as dist

_processes: list[dict[str, Any]] | None = None  # every process's hardware, gathered once at start


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def is_main() -> bool:
    return rank() == 0


def global_batch_size(cfg: Any) -> int:
    """Examples per optimiser step: per-device batch × gradient accumulation × processes."""
    return cfg.batch_size * cfg.gradient_accumulation_steps * world_size()


def key_part() -> dict[str, int]:
    """What a run or stage key adds for several processes (nothing alone, so single-process keys keep
    their value): their global batch differs from the per-device one the settings name."""
    return {"processes": world_size()} if world_size() > 1 else {}


def start(hardware: dict[str, Any]) -> None:
    """Join the launcher's process group (the one the Trainer will use) and gather every process's
    hardware for the record. Called once per process, before the first stage."""
    global _processes
    if world_size() == 1 or _processes is not None:
        return
    from accelerate import PartialState

    # The same state TrainingArguments sets up: gloo between CPU processes, NCCL between GPUs.
    PartialState(cpu=not torch.cuda.is_available())
    gathered: list[Any] = [None] * world_size()
    dist.all_gather_object(gathered, {"rank": rank(), "local_rank": int(os.environ.get("LOCAL_RANK", 0))} | hardware)
    _processes = gathered


def processes() -> list[dict[str, Any]] | None:
    """Every process's hardware (rank order), or None in a single-process run."""
    return _processes


def barrier() -> None:
    if world_size() > 1 and dist.is_initialized():
        dist.barrier()


def agree(value: bool) -> bool:
    """Rank 0's ``value`` on every process: decisions that start or skip a collective must be unanimous."""
    if world_size() == 1 or not dist.is_initialized():
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return bool(box[0])


@contextlib.contextmanager
def main_first() -> Iterator[None]:
    """Rank 0 runs the block first (building a cache); the others run it after, finding it built."""
    if not is_main():
        barrier()
    try:
        yield
    finally:
        if is_main():
            barrier()
