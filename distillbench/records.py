"""Run records: one JSON file per run, the single source of truth for every reported number."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from distillbench.portable import legacy_portable

# 2: no absolute path of the machine (see portable.py); version-1 records are upgraded on read.
RECORD_VERSION = 2
MIGRATED_KINDS = ("run", "bench")


def write_atomic(path: Path, write: Callable[[IO[bytes]], None]) -> None:
    """Write through ``write`` to a temporary file in the same folder, then rename: readers never see
    half a file. Readable by others (mkstemp's 0600 would lock shared results folders)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.chmod(temporary, 0o644)
    try:
        with os.fdopen(handle, "wb") as file:
            write(file)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def write_json_atomic(path: Path, payload: dict[str, Any]) -> None:
    text = json.dumps(payload, indent=2, sort_keys=True, default=str) + "\n"
    write_atomic(path, lambda file: file.write(text.encode()))


def read_records(root: Path, unreadable: list[Path] | None = None) -> list[dict[str, Any]]:
    """Every run record under ``root`` (recursively), each with its ``_path``; files under ``runs/``
    that cannot be parsed (a truncated copy) are listed in ``unreadable`` when given."""
    records = []
    for path in sorted(root.rglob("*.json")):
        try:
            record = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            if unreadable is not None and path.parent.name == "runs":
                unreadable.append(path)
            continue
        if isinstance(record, dict) and record.get("kind") == "run":
            record = upgrade(record)
            record["_path"] = str(path)
            records.append(record)
    return records


def _rewrite_strings(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _rewrite_strings(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_rewrite_strings(v) for v in value]
    return legacy_portable(value) if isinstance(value, str) else value


def upgrade(record: dict[str, Any]) -> dict[str, Any]:
    """A record in the current schema: a version-1 record's absolute paths become portable names;
    every other field is kept as it was."""
    if record.get("version", 1) >= RECORD_VERSION:
        return record
    return _rewrite_strings(record) | {"version": RECORD_VERSION, "migrated_from_version": record.get("version", 1)}


def migrate_folder(root: Path) -> list[Path]:
    """Rewrite every older run record under ``root`` in the current schema; returns the files changed."""
    changed = []
    for path in sorted(root.rglob("*.json")):
        try:
            record = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        kind = record.get("kind") if isinstance(record, dict) else None
        if kind in MIGRATED_KINDS and record.get("version", 1) < RECORD_VERSION:
            write_json_atomic(path, upgrade(record))
            changed.append(path)
    return changed
