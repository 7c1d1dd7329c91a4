"""``distillbench teacher-study``: the teacher's training settings chosen for its pair, never on the dev set.

A small grid of teacher-stage settings (learning rate × warm-up, say) is fine-tuned on the task's training
set less a seeded held-out part (``holdout_fraction``) and scored on that part, so the choice never sees
the dev split the students are scored on. The best point is written to
``<results>/studies/teacher-<task>.json``; a run reads it with ``--teacher-settings study`` and its
teacher's record names the study. Each point is the ordinary cached teacher stage (resumable after a
kill, recorded like any teacher, left out of tables as a held-out score). Then the chosen settings and the
task's defaults are fine-tuned on the whole training set, so the study file holds the chosen teacher's dev
score beside the plain fine-tune's.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from distillbench.atomic import write_json_atomic
from distillbench.config import EXECUTION_ONLY, TrainConfig, _coerce
from distillbench.errors import UserError
from distillbench.history import main_metric_key

STUDY_PREFIX = "teacher-"
TEACHER_SIDE = "teacher_"  # a study chooses the teacher stage's settings alone: the students' stay as given


def parse_grid(pairs: list[str]) -> dict[str, list[Any]]:
    """``teacher_learning_rate=2e-5,3e-5`` (repeatable) → {field: typed values}, teacher settings only."""
    fields = {f.name: f for f in dataclasses.fields(TrainConfig) if f.name not in EXECUTION_ONLY}
    grid: dict[str, list[Any]] = {}
    for pair in pairs:
        key, sep, values = pair.partition("=")
        if not sep or not values:
            raise UserError(f"--grid expects KEY=V1,V2,…, got {pair!r}")
        if key not in fields or not key.startswith(TEACHER_SIDE):
            known = ", ".join(name for name in fields if name.startswith(TEACHER_SIDE))
            raise UserError(f"--grid {key}: not a teacher setting (known: {known})")
        grid[key] = [_coerce(value, fields[key].type, key) for value in values.split(",")]
    if not grid:
        raise UserError("--grid: give at least one teacher setting to vary, e.g. teacher_learning_rate=2e-5,5e-5")
    return grid


def grid_points(grid: dict[str, list[Any]]) -> list[dict[str, Any]]:
    return [dict(zip(grid, values, strict=True)) for values in itertools.product(*grid.values())]


def study_path(results_dir: Path, task: str) -> Path:
    return results_dir / "studies" / f"{STUDY_PREFIX}{task}.json"


def as_overrides(settings: dict[str, Any]) -> list[str]:
    return [arg for key, value in settings.items() for arg in ("--set", f"{key}={value}")]


def best_point(trials: list[dict[str, Any]], greater_is_better: bool) -> dict[str, Any]:
    """The trial with the best held-out score (ties: the earlier grid point)."""
    sign = 1 if greater_is_better else -1
    return max(trials, key=lambda trial: (sign * trial["held_out_score"], -trials.index(trial)))


def load_choice(results_dir: Path, task: str, where: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """The settings a teacher study chose and where they come from (the teacher records name it).
    ``where``: ``study`` (``<results>/studies/teacher-<task>.json``) or a study file's path."""
    path = study_path(results_dir, task) if where == "study" else Path(where)
    if not path.is_file():
        raise UserError(f"--teacher-settings {where}: no teacher study at {path}; run `distillbench teacher-study`")
    try:
        study = json.loads(path.read_text())
        chosen, score = study["chosen"], study["chosen_held_out_score"]
    except (json.JSONDecodeError, KeyError, TypeError):
        raise UserError(f"--teacher-settings {where}: {path} is not a teacher study file") from None
    if study.get("task") != task:
        raise UserError(f"--teacher-settings {where}: {path} chose settings for {study.get('task')}, not {task}")
    origin = {"study": f"studies/{path.name}", "metric": study["metric"], "held_out_score": score}
    return chosen, origin


@dataclasses.dataclass
class Point:
    """One teacher fine-tune of the study: its settings and how to build (or find) its cached stage."""

    settings: dict[str, Any]
    argv: list[str]


def run_study(
    task: str,
    base_argv: list[str],
    grid: dict[str, list[Any]],
    holdout: float,
    results_dir: Path,
    build: Callable[[list[str]], tuple[Any, dict[str, Any]]],
    dev_check: bool = True,
    arguments: list[str] | None = None,
) -> dict[str, Any]:
    """Fine-tune every grid point on held-out train, choose, then score the chosen and the default
    teacher on the dev set. ``build(argv)`` builds (or reads from the cache) the teacher stage of a run
    with those arguments and returns (plan, stage info); ``arguments``: the run flags the user gave, for
    the study file (default: ``base_argv``)."""
    held_out = ["--set", f"holdout_fraction={holdout}"]
    points = [Point(s, [*base_argv, *as_overrides(s), *held_out]) for s in grid_points(grid)]
    trials, plan = [], None
    for number, point in enumerate(points, 1):
        label = ", ".join(f"{k}={v}" for k, v in point.settings.items())
        print(f"[{number}/{len(points)}] {label}: held-out fine-tune", file=sys.stderr, flush=True)
        plan, info = build(point.argv)
        metric = plan_metric(plan)
        score = info["metrics"][metric]
        print(f"[{number}/{len(points)}] {label}: held-out {metric} {score:.4f}", file=sys.stderr, flush=True)
        trials.append({"settings": point.settings, "held_out_score": score, "stage": info["key"]})
    chosen = best_point(trials, plan.task.greater_is_better)
    study = {
        "kind": "teacher-study",
        "task": task,
        "metric": plan_metric(plan),
        "greater_is_better": plan.task.greater_is_better,
        "held_out": {"fraction": holdout, "note": "a seeded part of train; the dev set is never read"},
        "arguments": base_argv if arguments is None else arguments,
        "grid": grid,
        "trials": trials,
        "chosen": chosen["settings"],
        "chosen_held_out_score": chosen["held_out_score"],
    }
    path = study_path(results_dir, task)
    write_json_atomic(path, study)
    print(f"chose {chosen['settings']} (held-out {study['metric']} {chosen['held_out_score']:.4f}); wrote {path}")
    if dev_check:
        study["dev"] = {}
        for name, argv in (
            ("chosen", [*base_argv, "--teacher-settings", str(path)]),
            ("defaults", base_argv),
        ):
            print(f"dev check: the {name} teacher on the whole training set", file=sys.stderr, flush=True)
            point, info = build(argv)
            teacher = point.config.train.for_role("teacher")
            settings = {key: getattr(teacher, key.removeprefix(TEACHER_SIDE)) for key in grid}
            study["dev"][name] = {"stage": info["key"], "settings": settings, "metrics": info["metrics"]}
        write_json_atomic(path, study)
        metric = study["metric"]
        print(
            f"dev {metric}: chosen {study['dev']['chosen']['metrics'][metric]:.4f}, "
            f"task defaults {study['dev']['defaults']['metrics'][metric]:.4f}"
        )
    return study


def plan_metric(plan: Any) -> str:
    return main_metric_key(plan.task)


def read_studies(results_dir: Path) -> list[dict[str, Any]]:
    """Every teacher study file under ``<results>/studies/``, by task."""
    found = []
    for path in sorted((results_dir / "studies").glob(f"{STUDY_PREFIX}*.json")):
        try:
            study = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        if isinstance(study, dict) and study.get("kind") == "teacher-study":
            found.append(study)
    return found


def studies_markdown(studies: list[dict[str, Any]]) -> str:
    """Per study: its grid with each point's held-out score (the chosen one marked), then the dev score of
    the chosen settings and of the task's defaults, each fine-tuned on the whole training set."""
    import pandas as pd

    parts = []
    for study in studies:
        metric = study["metric"]
        rows = [
            {
                **{key.removeprefix(TEACHER_SIDE): value for key, value in trial["settings"].items()},
                f"held-out {metric} ×100": f"{100 * trial['held_out_score']:.1f}"
                + (" (chosen)" if trial["settings"] == study["chosen"] else ""),
            }
            for trial in study["trials"]
        ]
        held = study["held_out"]["fraction"]
        parts += [
            f"**{study['task']}** ({len(rows)} points, {held:.0%} of train held out and scored; "
            f"run flags `{' '.join(study['arguments']) or 'none'}`):",
            "",
            pd.DataFrame(rows).to_markdown(index=False, disable_numparse=True),
            "",
        ]
        dev = study.get("dev") or {}
        if dev:
            checks = [
                f"{name}{settings_text(entry.get('settings', {}))} {100 * entry['metrics'][metric]:.1f}"
                for name, entry in dev.items()
            ]
            parts += [f"Dev {metric} ×100 after fine-tuning on all of train: " + "; ".join(checks) + ".", ""]
    return "\n".join(parts)


def settings_text(settings: dict[str, Any]) -> str:
    """`` (learning_rate 5e-05, warmup_steps 0)``: teacher settings named as the grid names them ("" if none)."""
    text = ", ".join(f"{key.removeprefix(TEACHER_SIDE)} {value}" for key, value in settings.items())
    return f" ({text})" if text else ""
