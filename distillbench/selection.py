"""Which records a reading uses: complete, committed, full-budget runs, one per seed, teachers as their
students name them — and everything left out counted and reported, never silently mixed in.
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from distillbench.config import result_settings
from distillbench.errors import UserError
from distillbench.labels import row_key
from distillbench.records import read_records

CONFIG_EXCLUDED = ("seed", "finished_at", "wall_time_s", "command", "hardware", "git", "packages", "_path")


@dataclass
class Selection:
    """Usable records plus what was left out and why."""

    records: list[dict[str, Any]] = field(default_factory=list)
    excluded: Counter = field(default_factory=Counter)

    def report(self) -> str:
        kept = f"{len(self.records)} records used"
        if not self.excluded:
            return kept
        return kept + "; excluded: " + ", ".join(f"{n} {why}" for why, n in sorted(self.excluded.items()))


def config_fingerprint(record: dict[str, Any]) -> str:
    """Everything that should agree between seeds of one group: hparams, training settings, data."""
    train = result_settings(record.get("train") or {})
    return json.dumps(
        {
            "hparams": record.get("hparams"),
            "train": train,
            "data": (record.get("data") or {}).get("sha256"),
            "preset": record.get("preset"),
            # a pinned teacher seed is part of the experiment: seeds of it share one teacher
            "teacher_seed": record.get("teacher_seed"),
            # several processes train on a larger global batch than the per-device one recorded in train
            "processes": (record.get("distributed") or {}).get("processes", 1),
        },
        sort_keys=True,
        default=str,
    )


def bounded_by(record: dict[str, Any]) -> list[str]:
    """Why a record's budget was cut short of its schedule (a preset, ``--max-steps``): a smoke test or a
    demo, not a result. Empty for a full run. A training subset (``max_train_samples``) is not a cut: its
    epochs run whole over a smaller training set, an experiment of its own (its budget label says how many
    examples; low-resource distillation and the CPU's causal-LM campaign are such experiments)."""
    train = record.get("train") or {}
    reasons = [f"preset {record['preset']}"] if record.get("preset") else []
    reasons += [f"{name}={train[name]}" for name in ("max_steps", "teacher_max_steps") if (train.get(name) or -1) > 0]
    return reasons


EXCLUDED_BOUNDED = "bounded (preset, --max-steps; --include-bounded shows them)"


def select(records: list[dict[str, Any]], include_dirty: bool = False, include_bounded: bool = False) -> Selection:
    """Drop incomplete, dirty-tree, tuning-trial (a study is its own evidence) and bounded (a preset such
    as the demo, ``--max-steps``, ``max_train_samples``; kept when asked) records; within a group keep the
    configuration most seeds share (ties: the newest), and of several runs of one seed the newest (a
    rerun is not another seed). A teacher row is the dev score of the teacher its students distilled
    from, as their records hold it (a teacher record of its own stands in where no student says)."""
    selection = Selection()
    candidates = []
    for record in records:
        if record.get("status") != "complete" or not record.get("metrics") or record.get("task") is None:
            selection.excluded["incomplete"] += 1
        elif not (record.get("git") or {}).get("commit"):
            selection.excluded["without a git commit"] += 1
        elif (record.get("git") or {}).get("dirty") and not include_dirty:
            selection.excluded["from a dirty tree"] += 1
        elif (record.get("tags") or {}).get("study"):
            selection.excluded["tuning trials"] += 1
        elif (record.get("data") or {}).get("held_out"):
            selection.excluded["scored on held-out train (a settings study), not the dev set"] += 1
        elif bounded_by(record) and not include_bounded:
            selection.excluded[EXCLUDED_BOUNDED] += 1
        else:
            candidates.append(record)
    teachers = read_teachers(candidates)
    spoken_for = {row_key(r) for r in teachers}
    chosen = {r["run_id"] for r in teachers}
    candidates = [
        r
        for r in candidates
        if r.get("role") != "teacher" or (r["run_id"] not in chosen and row_key(r) not in spoken_for)
    ]
    candidates += teachers
    groups: dict[tuple, dict[str, list]] = defaultdict(lambda: defaultdict(list))
    for record in candidates:
        groups[row_key(record)][config_fingerprint(record)].append(record)
    for variants in groups.values():
        ranked = sorted(variants.values(), key=lambda rs: (len(rs), max(r.get("finished_at", "") for r in rs)))
        newest_per_seed = {r.get("seed"): r for r in sorted(ranked[-1], key=lambda r: r.get("finished_at", ""))}
        selection.records.extend(newest_per_seed.values())
        selection.excluded["repeats of a seed (the newest counts)"] += len(ranked[-1]) - len(newest_per_seed)
        selection.excluded["disagreeing on configuration"] += sum(len(rs) for rs in ranked[:-1])
    selection.excluded = +selection.excluded
    return selection


def read_teachers(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """A teacher row for every distinct teacher (or ensemble) the student records distilled from: the
    teacher's own record when it is there (its run id is the key the students name), else a row read
    from a student's record, which holds the teacher's dev score (an ensemble's is only there). Counted
    once per teacher: the teacher's seeds, not the students', make its n."""
    own_records = {r.get("run_id"): r for r in records if r.get("role") == "teacher"}
    found: dict[tuple, dict[str, Any]] = {}
    for record in records:
        teacher = record.get("teacher") or {}
        if record.get("role") != "student" or not teacher.get("metrics"):
            continue
        members = teacher.get("members") or [teacher]
        key = (row_key(record)[2:], record["task"], *(member["key"] for member in members))
        if key in found:
            continue
        own = own_records.get(teacher.get("key")) if not teacher.get("members") else None
        if own is not None:  # labelled as its students name it: a teacher built unpinned, read by pinned students
            found[key] = own | {"teacher_seed": record.get("teacher_seed")}
            continue
        found[key] = {
            **{k: record.get(k) for k in ("kind", "task", "setting", "git", "train", "data", "main_metric")},
            **{k: record.get(k) for k in ("model", "teacher_seed", "preset", "majority_baseline")},
            "role": "teacher",
            "method": "finetune",
            "status": "complete",
            "seed": members[0]["settings"]["seed"],
            "hparams": {},
            "teacher": teacher,
            "metrics": teacher["metrics"],
            "epochs": teacher.get("epochs"),
            "run_id": "teacher-" + "-".join(member["key"].rsplit("-", 1)[-1] for member in members),
            # the score is read from this student record, which names it in its provenance
            "_path": record.get("_path"),
            "derived_from": record.get("run_id"),
        }
    unique = {(row_key(r), r["run_id"]): r for r in found.values()}  # one teacher may serve several experiments
    return list(unique.values())


def collect(results_dir: Path, include_dirty: bool = False, include_bounded: bool = False) -> Selection:
    if not results_dir.is_dir():
        raise UserError(f"results directory {results_dir} does not exist")
    unreadable: list[Path] = []
    selection = select(read_records(results_dir, unreadable), include_dirty, include_bounded)
    if unreadable:
        selection.excluded["unreadable (not valid JSON)"] += len(unreadable)
    return selection
