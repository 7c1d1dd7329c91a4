"""The TED paper's published numbers beside what was measured: data, never a measured row.

The numbers are the reference's (``distillbench/data/ted_reference.json``, per method, task and
metric); each measured experiment of the same method, task and metric gets its own line with the
measured-minus-reference delta, so different experiments are never averaged together.
"""

from __future__ import annotations

import json
from importlib.resources import files
from typing import Any

import pandas as pd

from distillbench.labels import EXPERIMENT
from distillbench.task import get_task


def load_reference() -> dict[str, Any]:
    return json.loads(files("distillbench").joinpath("data/ted_reference.json").read_text())


def reference_table(stats: pd.DataFrame, tasks: list[str] | None = None) -> pd.DataFrame:
    """The TED reference numbers beside each measured experiment of the same method, task and metric,
    with measured-minus-reference deltas. One row per experiment (teacher, student, setting): students
    of different experiments (e.g. pre-trained first, or another student) are never averaged together."""
    reference = load_reference()
    columns = ["method", "task", "metric", *EXPERIMENT, "n", "reference", "measured", "delta"]
    rows = []
    for method, by_task in reference["results"].items():
        for task, metrics in by_task.items():
            if tasks and task not in tasks:
                continue
            scale = get_task(task).display_scale
            for metric, value in metrics.items():
                mine = stats[(stats["method"] == method) & (stats["task"] == task) & (stats["metric"] == metric)]
                base = {"method": method, "task": task, "metric": metric, "reference": value}
                if mine.empty:
                    rows.append(base)
                for r in mine.itertuples(index=False):
                    measured = round(scale * r.mean, 1)
                    rows.append(
                        base
                        | {
                            "teacher": r.teacher,
                            "student": r.student,
                            "setting": r.setting,
                            "budget": r.budget,
                            "n": r.n,
                        }
                        | {"measured": measured, "delta": round(measured - value, 1)}
                    )
    table = pd.DataFrame(rows, columns=columns, dtype=object)
    return table.where(table.notna(), "")  # a method not run here has no measured cells: blank, not "nan"
