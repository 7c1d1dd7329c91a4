"""Cached folders that concurrent runs build once and every later run can trust.

A stage (a fine-tuned model, TED's filters) or an output cache is built under an exclusive file lock
beside its folder, so two runs that need it at once build it once: the second waits, then reads what
the first wrote. A completeness marker written last carries a manifest (size and sha256 of every
file); a reader checks it, and a truncated, missing or altered file makes the folder be rebuilt, with
one line on stderr saying why, instead of being used silently.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import shutil
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from distillbench import distributed
from distillbench.atomic import write_json_atomic
from distillbench.errors import HeldElsewhere

MARKER = "done.json"


def stable_key(parts: dict[str, Any]) -> str:
    """16 hex digits of sha256 over the canonical JSON of ``parts``: the name of a cached folder or a run."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


@contextlib.contextmanager
def exclusive(lock_path: Path, wait: bool = True) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``lock_path``; ``wait=False`` refuses at once when it is held."""
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with lock_path.open("a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            raise HeldElsewhere(f"another process holds {lock_path} (the same run is already running)") from None
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def lock_for(folder: Path) -> Path:
    """Where the lock of a cached folder lives: ``<cache>/locks/<kind>-<name>.lock``, out of the listings
    of the stage and output-cache folders themselves."""
    return folder.parent.parent / "locks" / f"{folder.parent.name}-{folder.name}.lock"


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def manifest(folder: Path, skip: tuple[str, ...] = (MARKER,)) -> dict[str, dict[str, Any]]:
    """Size and sha256 of every file under ``folder`` (relative paths), the marker itself excepted."""
    return {
        path.relative_to(folder).as_posix(): {"size": path.stat().st_size, "sha256": sha256_of(path)}
        for path in sorted(folder.rglob("*"))
        if path.is_file() and path.name not in skip
    }


def manifest_problem(folder: Path, expected: dict[str, dict[str, Any]] | None) -> str | None:
    """What differs from the manifest (None: nothing; a folder built before manifests is trusted)."""
    if expected is None:
        return None
    for name, entry in expected.items():
        path = folder / name
        if not path.is_file():
            return f"{name} is missing"
        if path.stat().st_size != entry["size"]:
            return f"{name} has {path.stat().st_size} bytes, expected {entry['size']}"
        if sha256_of(path) != entry["sha256"]:
            return f"{name} differs from its recorded sha256"
    return None


def read_marker(folder: Path) -> dict[str, Any] | None:
    """The marker of a complete, intact folder, or None (absent, unreadable, or a file changed)."""
    marker = folder / MARKER
    if not marker.is_file():
        return None
    try:
        info = json.loads(marker.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        print(f"cache {folder.name}: {MARKER} is unreadable; rebuilding", file=sys.stderr)
        return None
    problem = manifest_problem(folder, info.get("manifest"))
    if problem:
        print(f"cache {folder.name}: {problem}; rebuilding", file=sys.stderr)
        return None
    return info


def cached_folder(folder: Path, build: Callable[[Path], dict[str, Any]]) -> tuple[dict[str, Any], bool]:
    """The marker of ``folder``, building it first when it is absent or damaged (under the lock);
    returns (marker, built now). ``build`` fills the folder and returns the marker's content.

    In a multi-process run every process calls this and builds (trains) the stage together; rank 0 alone
    holds the lock, decides whether to build, clears a damaged folder and writes the marker, and the
    others read the marker it wrote. Alone, a process is rank 0 and the collectives are no-ops."""
    main = distributed.is_main()
    with exclusive(lock_for(folder)) if main else contextlib.nullcontext():
        info = read_marker(folder) if main else None
        if not distributed.agree(info is None):
            return (info if main else read_marker(folder)) or {}, False
        if main:
            if (folder / MARKER).exists():
                shutil.rmtree(folder)  # damaged: start over (a folder without a marker keeps its checkpoints)
            folder.mkdir(parents=True, exist_ok=True)
        distributed.barrier()
        info = build(folder)
        if main:
            info["manifest"] = manifest(folder)
            write_json_atomic(folder / MARKER, info)
        distributed.barrier()
        return (info if main else read_marker(folder)) or {}, True
