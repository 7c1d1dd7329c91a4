"""How a record is named in tables: its model labels, budget, method row and experiment key.

Every reader (tables, significance, figures, the page) names rows through these functions, so a row
means the same everywhere; they read a record's fields and import nothing but the portable names.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from distillbench.portable import packaged_alias

SCORES = ("final", "best")  # which evaluation of a run a table reads: its last epoch or its best
FORMATS = ("md", "latex", "csv", "html")  # what a table renders to

# A stand-in teacher pre-trained here (``--teacher scratch:<preset>``) lives at standins/<preset>-<key>/model.
STANDIN_FOLDER = re.compile(r"standins/(?P<preset>[^/]+)-[0-9a-f]{16}/model$")


def model_label(source: str | None) -> str:
    """Short name of a model: the packaged alias when it is one, a stand-in by its preset (never as the
    model it stands in for), else the folder or hub id."""
    if not source:
        return "?"
    standin = STANDIN_FOLDER.search(source)
    if standin:
        return f"{standin['preset']} stand-in"
    return packaged_alias(source) or Path(source.split(":", 1)[-1]).name


def student_label(model: dict[str, Any]) -> str:
    spec = model.get("student") or {}
    if spec.get("kind") == "layers":
        return f"{model_label(model.get('teacher_source'))} layers {','.join(map(str, spec['layer_ids']))}"
    if spec.get("kind") == "random":
        return f"random {spec['num_layers']}L"
    if spec.get("origin"):
        return f"{spec['origin']['method']}-{spec['origin']['task']} student"
    return model_label(spec.get("source"))


STUDIED = "settings from its study"  # a teacher whose training settings a teacher study chose


def teacher_label(record: dict[str, Any]) -> str:
    """The teacher's model, and its seed when pinned (``--teacher-seed``): one fine-tuned teacher shared
    by every student seed is another experiment than a teacher fine-tuned per seed."""
    members = (record.get("teacher") or {}).get("members")
    if members:
        return ensemble_label(members)
    model = record.get("model") or {}
    label = model_label(model.get("teacher_source") or model.get("source"))
    pinned = record.get("teacher_seed")
    notes = [f"seed {pinned}"] if pinned is not None else []
    teacher = record.get("teacher") or {}
    if record.get("chosen_by") or record.get("teacher_chosen_by") or teacher.get("chosen_by"):
        notes.append(STUDIED)
    return f"{label} ({', '.join(notes)})" if notes else label


def ensemble_label(members: list[dict[str, Any]]) -> str:
    """``3-teacher ensemble: minilm-l6 (seeds 1, 2, 3)``, or each member named when the models differ."""
    pairs = [(model_label(m["settings"]["init"]["source"]), m["settings"]["seed"]) for m in members]
    models = {model for model, _ in pairs}
    if len(models) == 1:
        seeds = ", ".join(str(seed) for _, seed in pairs)
        return f"{len(pairs)}-teacher ensemble: {models.pop()} (seeds {seeds})"
    return f"{len(pairs)}-teacher ensemble: " + ", ".join(f"{model} (seed {seed})" for model, seed in pairs)


def budget_label(record: dict[str, Any]) -> str:
    """The training budget of a record's (student or teacher) stage: steps when capped, else epochs; the
    student's training subset when it had one ("1 ep of 2,400 examples"); and ", length-grouped" when its
    batches were (an option that changed results, so another experiment)."""
    train = record.get("train") or {}
    subset = ""
    if record.get("role") == "teacher":
        steps, epochs = train.get("teacher_max_steps", -1), train.get("teacher_epochs") or train.get("epochs")
    else:
        steps, epochs = train.get("max_steps", -1), train.get("epochs")
        subset = f" of {train['max_train_samples']:,} examples" if train.get("max_train_samples") else ""
    grouped = ", length-grouped" if train.get("group_by_length") else ""
    if steps and steps > 0:
        return f"{steps} steps{subset}{grouped}"
    return f"{epochs:g} ep{subset}{grouped}" if epochs is not None else "?"


EXPERIMENT = ("teacher", "student", "setting", "budget")


TUNED = " (tuned)"


def base_method(label: str) -> str:
    """The registered method of a row label: ``kd`` of "kd (tuned)" and of "kd (from fine-tuned)"."""
    return label.split(" (", 1)[0]


def method_label(record: dict[str, Any]) -> str:
    """A record's row name: the teacher, its method, "<method> (tuned)" for a student started from a
    study's best parameters (``run --params best``), another configuration in a row of its own that the
    significance markers compare with the reference row of the same method, or "<method> (from fine-tuned)"
    for a control started where the method does not (KD from TED's fine-tuned student)."""
    if record.get("role") == "teacher":
        return "teacher"
    model = record.get("model") or {}
    start = model.get("student_start")
    control = (
        f" (from {start.replace('finetuned', 'fine-tuned')})"
        if start != model.get("student_start_default", start)
        else ""
    )
    return record["method"] + control + (TUNED if record.get("tuned_from") else "")


def row_key(record: dict[str, Any]) -> tuple[str, ...]:
    """(task, method, *EXPERIMENT): what one table cell pools over seeds, and nothing else."""
    method = method_label(record)
    student = "-" if record.get("role") == "teacher" else student_label(record.get("model") or {})
    setting = record.get("setting", "task-specific")
    return (record["task"], method, teacher_label(record), student, setting, budget_label(record))


def score_of(record: dict[str, Any], score: str) -> dict[str, float]:
    if score == "best" and record.get("best_epoch"):
        return record["best_epoch"]["metrics"]
    return record["metrics"]
