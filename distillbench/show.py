"""``distillbench show NAME``: what a method or task declares, read from the plug-in itself.

Everything printed comes from the registered class — its docstring, ``HParams`` fields with their
declared help and ranges, per-task defaults, search space, needs, training defaults and options — so the
page cannot drift from the code.
"""

from __future__ import annotations

import dataclasses
import sys
from typing import Any

from distillbench.errors import UserError
from distillbench.fields import help_of
from distillbench.hub import DATA_HINT
from distillbench.method import Method, get_method, list_methods
from distillbench.task import get_task, list_tasks, resolve_data_dir


class SpaceRecorder:
    """Stands in for an Optuna trial and writes down what a search space asks for."""

    def __init__(self) -> None:
        self.space: dict[str, str] = {}

    def suggest_float(self, name: str, low: float, high: float, log: bool = False, step: float | None = None) -> float:
        self.space[name] = f"float in [{low:g}, {high:g}]" + (" (log)" if log else "")
        return low

    def suggest_int(self, name: str, low: int, high: int, step: int = 1, log: bool = False) -> int:
        self.space[name] = f"int in [{low}, {high}]" + (" (log)" if log else "")
        return low

    def suggest_categorical(self, name: str, choices: list[Any]) -> Any:
        self.space[name] = "one of " + ", ".join(map(str, choices))
        return choices[0]


def rule_text(item: dataclasses.Field) -> str:
    check = item.metadata.get("check") or {}
    symbols = {"gt": ">", "ge": "≥", "lt": "<", "le": "≤"}
    parts = [", ".join(f"{symbols[k]} {check[k]}" for k in symbols if k in check)] if check.keys() & symbols else []
    if "choices" in check:
        parts.append("one of " + ", ".join(map(str, check["choices"])))
    if check.get("allow"):
        parts.append("or " + ", ".join(map(str, check["allow"])))
    return " ".join(parts)


def field_lines(fields: list[dataclasses.Field], extra: dict[str, str] | None = None) -> list[str]:
    lines = []
    for item in fields:
        default = item.default if item.default is not dataclasses.MISSING else "(required)"
        rule = rule_text(item)
        text = f"  {item.name} = {default!r}" + (f"  [{rule}]" if rule else "")
        lines.append(text)
        if help_of(item):
            lines.append(f"      {help_of(item)}")
        if extra and item.name in extra:
            lines.append(f"      search: {extra[item.name]}")
    return lines


def show_method(name: str) -> str:
    cls = get_method(name)
    recorder = SpaceRecorder()
    cls.search_space(recorder)
    # a method that draws its own batches (on-policy) has the teacher score them live, whatever it inherits
    draws = cls.sampling.__func__ is not Method.sampling.__func__
    reads_cache = cls.cached_teacher_layers is not Method.cached_teacher_layers and not draws
    lines = [
        f"method {name}: {cls.summary()}",
        "",
        *[f"  {line}".rstrip() for line in (sys.modules[cls.__module__].__doc__ or "").strip().splitlines()],
        "",
        f"needs: {', '.join(sorted(cls.needs)) or 'the task outputs only'}; "
        f"teacher: {'yes' if cls.uses_teacher else 'no'}; "
        f"teacher-output cache: {'can read one' if reads_cache else 'no (live teacher)'}"
        + ("; a baseline: tables test every other method against it" if cls.is_baseline else ""),
        "",
        "hyper-parameters (--set KEY=VALUE):",
        *field_lines(list(dataclasses.fields(cls.HParams)), recorder.space),
    ]
    if cls.task_defaults:
        lines += ["", "per-task defaults:"]
        lines += [f"  {task}: {values}" for task, values in sorted(cls.task_defaults.items())]
    return "\n".join(lines)


def show_task(name: str, data_dir: str | None = None) -> str:
    cls = get_task(name)
    labels = f"labels: {', '.join(map(str, cls.label_names))}" if cls.label_names else f"output: {cls.output_type}"
    lines = [
        f"task {name}: {cls.summary()}",
        f"model: {cls.model_class} ({cls.output_type}); main metric: {cls.main_metric} "
        f"({'higher' if cls.greater_is_better else 'lower'} is better); dev splits: {', '.join(cls.eval_splits)}",
        labels,
        *data_lines(cls, data_dir),
        f"training defaults: {cls.train_defaults or '(the dataclass defaults)'}",
    ]
    options = list(dataclasses.fields(cls.Options))
    if options:
        lines += ["", "task options (--set KEY=VALUE):", *field_lines(options)]
    return "\n".join(lines)


def data_lines(cls: type, data_dir: str | None) -> list[str]:
    """Where the task's data comes from and, from a data folder, its split sizes and the majority-class
    score (read from the files: a few seconds; the hub is never contacted here)."""
    folder = resolve_data_dir(data_dir)
    if folder is None:
        return [f"data: the Hugging Face Hub when a run needs it (none given here: {DATA_HINT})"]
    task = cls(folder)
    files = task.local_files()
    missing = [str(p) for p in files.values() if not p.is_file()]
    if missing:
        return [f"data: {folder} — missing {', '.join(missing)}"]
    splits = task.load()
    sizes = ", ".join(f"{split} {len(rows):,}" for split, rows in splits.items())
    named = list(files.values()) or task.data_files()  # text tasks name their files by option, not by split
    lines = [f"data: {folder} ({', '.join(p.name for p in named)}); examples: {sizes}"]
    majority = task.majority_baseline(splits)
    if majority:
        scores = ", ".join(f"{metric} {cls.display_scale * value:.1f}" for metric, value in majority.items())
        lines.append(f"majority class (the most frequent training label, scored on dev): {scores}")
    return lines


def show(name: str, data_dir: str | None = None) -> str:
    if name in list_methods():
        return show_method(name)
    if name in list_tasks():
        return show_task(name, data_dir)
    known = ", ".join([*list_methods(), *list_tasks()])
    raise UserError(f"no method or task named {name!r} (known: {known})")
