"""Run records: one JSON file per run, the single source of truth for every reported number.

This module defines the record's schema (:class:`RunRecord`), assembles it from what a run produced,
writes it atomically and reads it back, upgrading older versions, so every table reads one shape.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypedDict

from distillbench import distributed, provenance
from distillbench.atomic import write_atomic, write_json_atomic
from distillbench.history import best_epoch, epoch_history, final_loss_terms, loss_history, main_metric_key
from distillbench.portable import legacy_portable, portable_command, portable_path

__all__ = ["read_records", "write_atomic", "write_json_atomic"]  # the atomic writers live in atomic.py

if TYPE_CHECKING:
    from distillbench.planning import Plan
    from distillbench.training import RunData

# 2: no absolute path of the machine (see portable.py); version-1 records are upgraded on read.
RECORD_VERSION = 2
MIGRATED_KINDS = ("run", "bench")
# The harness's own supervised stage (teacher or student trained on the labels) is recorded under this
# label; it is the harness's stage, whichever method plug-in a run uses.
FINETUNE_STAGE = "finetune"


class RunRecord(TypedDict, total=False):
    """The fields of a run record (``results/runs/<run>.json``); docs/records.md explains each."""

    kind: str  # "run"
    version: int  # RECORD_VERSION; older versions are upgraded on read
    status: str
    run_id: str
    method: str
    task: str
    role: str  # "student", or "teacher" for the record of a teacher's fine-tuning stage
    setting: str  # "task-specific" or "after <method> pre-training"
    seed: int
    teacher_seed: int | None
    preset: str | None
    main_metric: str
    task_options: dict[str, Any]
    greater_is_better: bool
    data: dict[str, Any]
    git: dict[str, Any]
    packages: dict[str, str | None]
    hardware: dict[str, Any]  # with ``processes`` (one entry per rank) when launched as several processes
    distributed: dict[str, int]  # processes and the global batch (per-device batch × accumulation × processes)
    command: list[str]
    finished_at: str
    hparams: dict[str, Any]
    train: dict[str, Any]
    metrics: dict[str, float]
    majority_baseline: dict[str, float] | None  # always the most frequent training label (classification)
    epochs: list[dict[str, Any]]
    best_epoch: dict[str, Any] | None
    loss_terms: dict[str, float]
    loss_history: list[dict[str, float]]
    teacher: dict[str, Any] | None
    teacher_cache: dict[str, Any] | None
    stages: dict[str, Any]
    model: dict[str, Any]
    predictions: str | None
    resumed_from: str | None
    wall_time_s: float
    train_runtime_s: float | None
    tags: dict[str, Any]
    budget: dict[str, Any]  # the student's labelled examples, optimizer steps, teacher forwards, FLOPs (budget.py)
    teacher_chosen_by: dict[str, Any]  # a student's run given --teacher-settings: the study (as chosen_by)
    chosen_by: dict[str, Any]  # a teacher's: the teacher study that chose its settings (study, metric, held-out score)
    tuned_from: dict[str, Any]  # study, trial, value of the tuned parameters a student started from (--params best)


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


def base_record(
    plan: Plan, data: RunData, git: dict[str, Any], method: str, role: str, key: str, seed: int
) -> RunRecord:
    """The fields every run record has: what ran, on which data, with which code, packages and machine."""
    train_cfg = plan.config.train.for_role(role)
    return RunRecord(
        kind="run",
        version=RECORD_VERSION,
        status="complete",
        run_id=key,
        method=method,
        task=plan.config.task,
        role=role,
        setting=plan.setting if role == "student" else "task-specific",
        seed=seed,
        teacher_seed=plan.config.teacher_seed,  # None: each seed's own teacher; else pinned
        preset=plan.config.preset,
        main_metric=main_metric_key(plan.task),
        task_options=dataclasses.asdict(plan.task.options),
        greater_is_better=plan.task.greater_is_better,
        data={
            "sha256": plan.data_sha256,
            "files": [portable_path(p, plan.roots) for p in plan.task.data_files()],
            "train_examples": len(data.train_split(train_cfg.max_train_samples)),
            "eval_examples": {s: len(data.splits[s]) for s in plan.task.eval_splits},
            **({"held_out": data.held_out} if data.held_out else {}),
        },
        git=git,
        packages=provenance.package_versions(),
        hardware=provenance.hardware() | ({"processes": processes} if (processes := distributed.processes()) else {}),
        distributed={
            "processes": distributed.world_size(),
            "global_batch_size": distributed.global_batch_size(train_cfg),
        },
        command=portable_command(sys.argv, plan.roots),
        finished_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    )


def trained_fields(log_history: list[dict[str, Any]], plan: Plan) -> dict[str, Any]:
    """What a stage's Trainer log says: per-epoch dev metrics, the best epoch, the last loss terms."""
    epochs = epoch_history(log_history, plan.task)
    return {"epochs": epochs, "best_epoch": best_epoch(epochs, plan.task), "loss_terms": final_loss_terms(log_history)}


def stage_record(
    plan: Plan,
    data: RunData,
    git: dict[str, Any],
    role: str,
    seed: int,
    info: dict[str, Any],
    log_history: list[dict[str, Any]],
    predictions: str | None,
) -> RunRecord:
    """The record of a fine-tuned teacher stage: the teacher row of every table."""
    record = base_record(plan, data, git, FINETUNE_STAGE, role, info["key"], seed)
    record.update(
        metrics=info["metrics"],
        train=dataclasses.asdict(plan.config.train.for_role(role)),
        hparams={},
        model=info["settings"]["init"] | {"finetuned_sha256": info["weights_sha256"]},
        wall_time_s=info["wall_time_s"],
        predictions=predictions,
        **trained_fields(log_history, plan),
    )
    if info.get("chosen_by"):
        record["chosen_by"] = info["chosen_by"]
    return record


def student_record(
    plan: Plan, data: RunData, git: dict[str, Any], log_history: list[dict[str, Any]], **fields: Any
) -> RunRecord:
    """The record of a distilled (or fine-tuned) student; ``fields`` are the run's outcome (metrics,
    teacher, caches, stages, model, predictions, timings)."""
    record = base_record(plan, data, git, plan.config.method, "student", plan.key, plan.config.seed)
    record.update(
        hparams=dataclasses.asdict(plan.method.hp),
        # which of them the command set (the rest were the method's defaults for the task when it ran), so a
        # table can say "set by hand" without comparing with the defaults of a later version
        hparams_given=sorted(plan.config.method_overrides),
        train=dataclasses.asdict(plan.config.train),
        loss_history=loss_history(log_history),
        **trained_fields(log_history, plan),
        **fields,
    )
    if plan.config.tuned_from:
        record["tuned_from"] = plan.config.tuned_from
    if plan.config.teacher_chosen_by:  # a run without a teacher (fine-tuning) belongs to that teacher's experiment too
        record["teacher_chosen_by"] = plan.config.teacher_chosen_by
    return record
