"""Paper-style tables from selected records: aggregate over seeds, lay out cells, render with pandas.

The records come from :mod:`selection`; markers from :mod:`markers`; the reference block from
:mod:`reference`. A cell pools the seeds of one row (method and experiment) and nothing else.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from distillbench.errors import UserError
from distillbench.labels import (
    EXPERIMENT,
    FORMATS,
    base_method,
    row_key,
    score_of,
)
from distillbench.method import get_method, method_registry
from distillbench.task import get_task, list_tasks


def aggregate(records: list[dict[str, Any]], score: str = "final") -> pd.DataFrame:
    """One row per (task, method, teacher, student, setting, metric): mean, std (ddof 1), n seeds."""
    rows = []
    grouped: dict[tuple, list[dict[str, Any]]] = defaultdict(list)
    for record in records:
        grouped[row_key(record)].append(record)
    for key, members in grouped.items():
        metrics = sorted({m for r in members for m in score_of(r, score)})
        for metric in metrics:
            values = [score_of(r, score)[metric] for r in members if metric in score_of(r, score)]
            rows.append(
                dict(
                    zip(("task", "method", *EXPERIMENT), key, strict=True),
                    metric=metric,
                    mean=float(np.mean(values)),
                    std=float(np.std(values, ddof=1)) if len(values) > 1 else 0.0,
                    n=len(values),
                    seeds=sorted({r["seed"] for r in members}),
                )
            )
    columns = ["task", "method", *EXPERIMENT, "metric", "mean", "std", "n", "seeds"]
    return pd.DataFrame(rows, columns=columns)


@dataclass
class Table:
    """A rendered-ready leaderboard: the cell strings, the best cells, and the numbers behind them."""

    cells: pd.DataFrame
    best: set[tuple[int, str]]
    title: str


def method_order(label: str) -> tuple[int, str]:
    """The teacher row first, then methods by the ``table_order`` they declare (unknown ones last), a
    variant row (tuned, a control) right after its method's reference row."""
    if label == "teacher":
        return (-1, label)
    method = base_method(label)
    return (get_method(method).table_order if method in method_registry else 10**6, label)


def build_table(
    stats: pd.DataFrame,
    tasks: list[str] | None = None,
    methods: list[str] | None = None,
    title: str = "",
    markers: dict[tuple, str] | None = None,
) -> Table:
    """Rows = (method, teacher, student, setting); one column per task with its paper metrics; a
    benchmark average (e.g. GLUE avg) over the tasks present; the best student per column is marked."""
    if tasks:
        stats = stats[stats["task"].isin(tasks)]
    if methods:
        stats = stats[stats["method"].isin([*methods, "teacher"])]
    task_names = [t for t in list_tasks() if t in set(stats["task"])]
    row_keys = sorted(
        {tuple(r) for r in stats[["method", *EXPERIMENT]].itertuples(index=False)},
        key=lambda k: (k[3], k[4], k[1], method_order(k[0]), k[2]),
    )
    lookup = {
        (r.task, r.method, r.teacher, r.student, r.setting, r.budget, r.metric): (r.mean, r.std, r.n)
        for r in stats.itertuples(index=False)
    }
    records, main_scores = [], defaultdict(dict)
    in_benchmark = [get_task(t).benchmark for t in task_names if get_task(t).benchmark]
    benchmarks = sorted(b for b in set(in_benchmark) if in_benchmark.count(b) > 1)  # an average of one task is none
    for index, (method, *experiment) in enumerate(row_keys):
        row: dict[str, Any] = {"method": method, **dict(zip(EXPERIMENT, experiment, strict=True))}
        ns, averages = set(), defaultdict(list)
        for task_name in task_names:
            task = get_task(task_name)
            by_metric = {m: lookup.get((task_name, method, *experiment, m)) for m in task.paper_metrics}
            present = [f for f in by_metric.values() if f is not None]
            mark = (markers or {}).get((task_name, method, *experiment), "")
            row[task.column_label] = (
                task.cell({m: f for m, f in by_metric.items() if f is not None}) + mark if present else ""
            )
            if present:
                ns.update(f[2] for f in present)
                main_scores[task.column_label][index] = present[0][0] * (1 if task.greater_is_better else -1)
                if task.benchmark:
                    averages[task.benchmark].append(float(np.mean([f[0] for f in present])))
        for benchmark in benchmarks:
            tasks_in = [t for t in task_names if get_task(t).benchmark == benchmark]
            label = average_label(benchmark, tasks_in)
            complete = len(averages[benchmark]) == len(tasks_in)
            scale = get_task(tasks_in[0]).display_scale
            row[label] = f"{scale * np.mean(averages[benchmark]):.1f}" if complete else ""
            if complete:
                main_scores[label][index] = float(np.mean(averages[benchmark]))
        row["n"] = "/".join(str(n) for n in sorted(ns))
        records.append(row)
    cells = pd.DataFrame(records)
    best = set()
    for column, scores in main_scores.items():
        students = {i: s for i, s in scores.items() if cells.loc[i, "method"] != "teacher"}
        if len(students) > 1:
            top = max(students.values())
            best.update((i, column) for i, s in students.items() if s == top)
    return Table(cells, best, title)


def render_within(table: Table, width: int) -> str:
    """Markdown that keeps to ``width`` columns: a table wider than that (several tasks, the controls' long
    labels, the budget column) becomes several under each other, each repeating the method column, so a
    terminal shows every cell without wrapping a row."""
    first, chunks = table.cells.columns[0], [[]]

    def part(columns: list[str]) -> str:
        best = {(row, column) for row, column in table.best if column in columns}
        return render(Table(table.cells[[first, *columns]], best, table.title), "md")

    for column in table.cells.columns[1:]:
        if chunks[-1] and max(map(len, part([*chunks[-1], column]).splitlines())) > width:
            chunks.append([])
        chunks[-1].append(column)
    return "\n".join(part(columns) for columns in chunks)


def average_label(benchmark: str, tasks_in: list[str]) -> str:
    """``GLUE avg`` only over every task of the benchmark; otherwise it names what it averages."""
    every = [t for t in list_tasks() if get_task(t).benchmark == benchmark]
    if set(tasks_in) >= set(every):
        return f"{benchmark} avg"
    return "avg " + ", ".join(get_task(t).column_label.split(" ")[0] for t in tasks_in)


LATEX_ESCAPES = {
    "\\": r"\textbackslash{}",
    "&": r"\&",
    "%": r"\%",
    "_": r"\_",
    "#": r"\#",
    "$": r"\$",
    "{": r"\{",
    "}": r"\}",
    "~": r"\textasciitilde{}",
    "^": r"\textasciicircum{}",
    "±": r"$\pm$",
}


def _escape_latex(text: str) -> str:
    return "".join(LATEX_ESCAPES.get(char, char) for char in str(text))


def render(table: Table, fmt: str) -> str:
    """Markdown, LaTeX, CSV or HTML through pandas; best cells bold (md/latex/html) or flagged (csv)."""
    if fmt not in FORMATS:
        raise UserError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")
    cells = table.cells.copy()
    if fmt == "csv":
        cells["best"] = [";".join(c for i, c in sorted(table.best) if i == row) for row in cells.index]
        return cells.to_csv(index=False)
    if fmt == "md":
        for row, column in table.best:
            cells.loc[row, column] = f"**{cells.loc[row, column]}**"
        return cells.to_markdown(index=False, disable_numparse=True) + "\n"
    if fmt == "latex":
        escaped = cells.map(_escape_latex)
        escaped.columns = [_escape_latex(c) for c in cells.columns]
        styler = escaped.style.hide(axis="index")
        for row, column in table.best:
            styler = styler.set_properties(
                subset=pd.IndexSlice[[row], [_escape_latex(column)]], **{"font-weight": "bold"}
            )
        return styler.to_latex(convert_css=True, hrules=True, caption=_escape_latex(table.title) or None)
    styler = cells.style.hide(axis="index")
    for row, column in table.best:
        styler = styler.set_properties(subset=pd.IndexSlice[[row], [column]], **{"font-weight": "bold"})
    return styler.to_html(caption=table.title or None)
