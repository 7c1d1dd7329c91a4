"""Cells of a campaign are claimed, not assumed: at most one worker runs a cell, whatever runs the workers.

A worker (an in-process sweep, a local worker process, a Slurm job on another machine sharing the
results folder) takes a cell by creating ``<results>/.claims/<run>.json`` with ``O_EXCL``, which is
atomic on local filesystems and on NFS v3+. The file names its owner (host, pid, Slurm job) and the
owner renews its modification time every ``HEARTBEAT_S`` seconds from a background thread. A claim not
renewed for ``stale_after()`` seconds, or whose process is gone from this host, belongs to a dead worker
(killed, node lost, job timed out) and is taken over; the takeover itself is serialised by a second
``O_EXCL`` file so two workers that both see the stale claim cannot both take it. A requeued Slurm job
takes over its own earlier claim at once.
A cell that fails leaves ``<run>.failed.json`` (reason, log) until a later attempt succeeds.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from distillbench.errors import HeldElsewhere, one_line
from distillbench.periodic import repeating

CLAIMS = ".claims"
HEARTBEAT_S = 10.0
STALE_ENV = "DISTILLBENCH_CLAIM_STALE_S"  # tests shorten it; a cluster with slow shared disks may lengthen it


def stale_after() -> float:
    """Seconds without a heartbeat after which a claim's owner counts as dead (default 6 heartbeats)."""
    return float(os.environ.get(STALE_ENV, 6 * HEARTBEAT_S))


def claims_dir(results_dir: Path) -> Path:
    return results_dir / CLAIMS


def owner() -> dict[str, Any]:
    """Who is running: the host and process, and the Slurm job (array task) when there is one."""
    job = (
        os.environ.get("SLURM_ARRAY_JOB_ID")
        and f"{os.environ['SLURM_ARRAY_JOB_ID']}_{os.environ['SLURM_ARRAY_TASK_ID']}"
    )
    return {"host": socket.gethostname(), "pid": os.getpid(), "job": job or os.environ.get("SLURM_JOB_ID")}


def read_claim(path: Path) -> dict[str, Any] | None:
    """A claim's contents plus ``age_s`` since its last heartbeat; None when there is none (or it vanished)."""
    try:
        info = json.loads(path.read_text())
        return info | {"age_s": time.time() - path.stat().st_mtime}
    except (OSError, ValueError):
        return None


def owner_dead(claim: dict[str, Any]) -> bool:
    """No heartbeat for ``stale_after()`` seconds, or (on this host) its process is gone: a killed worker's
    claim is free at once here, and after the heartbeat's silence anywhere else."""
    if claim["age_s"] > stale_after():
        return True
    if claim.get("host") != socket.gethostname():
        return False
    try:
        os.kill(int(claim["pid"]), 0)
    except ProcessLookupError:
        return True
    except (PermissionError, ValueError, KeyError):
        return False
    return False


def _create(path: Path, info: dict[str, Any]) -> bool:
    try:
        descriptor = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        return False
    with os.fdopen(descriptor, "w") as handle:
        json.dump(info, handle)
    return True


def _take_over(path: Path, seen: dict[str, Any], info: dict[str, Any]) -> bool:
    """Replace a dead owner's claim, once: only the worker that creates the takeover file may."""
    guard = path.with_name(path.name + ".takeover")
    held = read_claim(guard)
    if held is not None and held["age_s"] > stale_after():  # a worker died inside a takeover
        guard.unlink(missing_ok=True)
    if not _create(guard, info):
        return False
    try:
        current = read_claim(path)
        same = (
            current is not None and current.get("since") == seen.get("since") and current.get("pid") == seen.get("pid")
        )
        if current is not None and not same:
            return False  # someone else took it over between our look and our guard
        path.unlink(missing_ok=True)
        return _create(path, info)
    finally:
        guard.unlink(missing_ok=True)


@dataclass
class Claim:
    """A held claim; ``release`` removes it (only if it is still this worker's)."""

    path: Path
    info: dict[str, Any]

    def renew(self) -> None:
        with contextlib.suppress(OSError):
            os.utime(self.path)

    def release(self) -> None:
        current = read_claim(self.path)
        if current is not None and current.get("token") == self.info["token"]:
            self.path.unlink(missing_ok=True)


def try_claim(results_dir: Path, run_name: str) -> Claim | None:
    """The cell's claim, or None while a live worker (another process, host or job) holds it."""
    folder = claims_dir(results_dir)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{run_name}.json"
    info = owner() | {"since": time.time(), "token": uuid.uuid4().hex}
    if _create(path, info):
        return Claim(path, info)
    seen = read_claim(path)
    if seen is None:  # released between our two looks
        return Claim(path, info) if _create(path, info) else None
    requeued = info["job"] is not None and seen.get("job") == info["job"]  # this job's own earlier run
    if (requeued or owner_dead(seen)) and _take_over(path, seen, info):
        return Claim(path, info)
    return None


@contextlib.contextmanager
def heartbeat(claim: Claim) -> Iterator[None]:
    """Renew the claim in the background while the cell runs; release it afterwards."""
    try:
        with repeating(claim.renew, HEARTBEAT_S, "claim-heartbeat"):
            yield
    finally:
        claim.release()


def failure_path(results_dir: Path, run_name: str) -> Path:
    return claims_dir(results_dir) / f"{run_name}.failed.json"


def record_failure(results_dir: Path, run_name: str, reason: str, log: str | None) -> None:
    from distillbench.atomic import write_json_atomic

    write_json_atomic(failure_path(results_dir, run_name), owner() | {"at": time.time(), "reason": reason, "log": log})


def clear_failure(results_dir: Path, run_name: str) -> None:
    failure_path(results_dir, run_name).unlink(missing_ok=True)


def read_failure(results_dir: Path, run_name: str) -> dict[str, Any] | None:
    try:
        return json.loads(failure_path(results_dir, run_name).read_text())
    except (OSError, ValueError):
        return None


def record_complete(results_dir: Path, run_name: str) -> bool:
    """Whether a complete record of the run exists (written by any worker, here or elsewhere)."""
    try:
        return json.loads((results_dir / "runs" / f"{run_name}.json").read_text()).get("status") == "complete"
    except (OSError, ValueError):
        return False


def run_claimed(results_dir: Path, run_name: str, execute: Callable[[], Any], log: str | None = None) -> bool:
    """Run one cell under its claim; False when another live worker holds it. A failure is recorded
    (reason, log) for ``sweep --status`` and raised on; a later success clears it."""
    claim = try_claim(results_dir, run_name)
    if claim is None:
        return False
    with heartbeat(claim):
        try:
            execute()
        except HeldElsewhere:  # the run's own lock: not a failure of the cell
            raise
        except Exception as error:
            record_failure(results_dir, run_name, one_line(error), log)
            raise
    clear_failure(results_dir, run_name)
    return True
