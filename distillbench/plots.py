"""Figures from records: method bars per task family, per-term loss curves, Optuna study history.

Each figure is saved under ``results/plots/`` (or ``--out-dir``); the method figures, which
``distillbench leaderboard`` regenerates with the tables, as SVG only.
"""

from __future__ import annotations

import io
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; no display needed
import matplotlib.pyplot as plt
import pandas as pd
import seaborn as sns

from distillbench.errors import UserError
from distillbench.history import main_metric_key
from distillbench.leaderboard import EXPERIMENT, aggregate
from distillbench.task import get_task

# No creation date or software version in the files: a committed figure changes only with its records.
FIXED_METADATA = {".svg": {"Date": None, "Creator": None}, ".png": {"Software": None}}


def _save(figure: plt.Figure, out_dir: Path, name: str, formats: tuple[str, ...] = ("png", "svg")) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / f"{name}.{ext}" for ext in formats]
    for path in paths:
        if path.suffix == ".svg":
            path.write_text(svg_text(figure))
        else:
            figure.savefig(path, bbox_inches="tight", dpi=120, metadata=FIXED_METADATA[path.suffix])
    plt.close(figure)
    return paths


def svg_text(figure: plt.Figure) -> str:
    """The figure as SVG, the same bytes for the same figure (fixed ids, no date)."""
    buffer = io.StringIO()
    with matplotlib.rc_context({"svg.hashsalt": "distillbench"}):
        figure.savefig(buffer, format="svg", bbox_inches="tight", metadata=FIXED_METADATA[".svg"])
    return buffer.getvalue()


def family_of(task_name: str) -> str:
    """Tasks of one benchmark share a figure (GLUE); any other task family has its own."""
    task = get_task(task_name)
    return task.benchmark or task.column_label.split(" ")[0] or task_name


def method_figures(records: list[dict], score: str = "final") -> list[tuple[str, plt.Figure]]:
    """One figure per task family: a panel per task, one point per (method, experiment) — the mean over
    seeds with the seeds' std as error bar and n beside it —, the teacher of each experiment as a line.
    Different experiments (teacher, student, setting, budget) are never pooled: each is its own point,
    labelled by what differs. A metric where lower is better (perplexity) is drawn with its axis
    inverted, so better is always further right."""
    stats = aggregate(records, score)
    if stats.empty:
        raise UserError("no usable records to plot")
    main = {t: main_metric_key(get_task(t)) for t in set(stats["task"])}
    stats = stats[[main[t] == m for t, m in zip(stats["task"], stats["metric"], strict=True)]]
    varying = [column for column in EXPERIMENT if stats[stats["method"] != "teacher"][column].nunique() > 1]
    figures = []
    for family in sorted({family_of(t) for t in stats["task"]}):
        tasks = [t for t in sorted(set(stats["task"])) if family_of(t) == family]
        bars = max(
            int((stats["task"].isin(tasks) & (stats["method"] != "teacher")).groupby(stats["task"]).sum().max()), 1
        )
        size = (5.5 * len(tasks), 0.32 * bars + 1.4)
        figure, axes = plt.subplots(1, len(tasks), figsize=size, squeeze=False)
        for axis, task_name in zip(axes[0], tasks, strict=True):
            _task_panel(axis, stats[stats["task"] == task_name], get_task(task_name), varying)
        figure.suptitle(f"{family}: dev main metric, {score} epoch")
        figure.tight_layout()
        figures.append((f"{family.lower()}-{score}", figure))
    return figures


def _task_panel(axis: plt.Axes, stats: pd.DataFrame, task, varying: list[str]) -> None:
    """Mean ± std over seeds as a point per experiment (differences of a point stay visible), the
    teacher as a dashed line; labels name only what differs between this panel's experiments."""
    scale = task.display_scale
    students = stats[stats["method"] != "teacher"].reset_index(drop=True)
    varying = [c for c in varying if students[c].nunique() > 1]
    labels = [
        " · ".join([row.method, *(str(getattr(row, c)) for c in varying)]) for row in students.itertuples(index=False)
    ]
    palette = sns.color_palette(n_colors=max(len(students), 1))
    for y, row in enumerate(students.itertuples(index=False)):
        axis.errorbar(row.mean * scale, y, xerr=row.std * scale, fmt="o", color=palette[y], capsize=3)
        axis.annotate(f"  n={row.n}", (row.mean * scale, y), va="center", fontsize=7)
    for row in stats[stats["method"] == "teacher"].itertuples(index=False):
        axis.axvline(row.mean * scale, color="0.3", linestyle="--", linewidth=1)
        axis.annotate(f"teacher {row.teacher} ", (row.mean * scale, -0.6), fontsize=7, color="0.3", ha="right")
    axis.set_yticks(range(len(students)), labels, fontsize=7)
    axis.set_ylim(len(students) - 0.5, -1)  # the first experiment at the top, room for the teacher label
    axis.set_title(f"{task.column_label.split(' ')[0]} {task.main_metric}")
    axis.grid(axis="x", alpha=0.3)
    if not task.greater_is_better:
        axis.invert_xaxis()
        axis.set_xlabel(f"{task.main_metric} (lower is better, axis inverted)")


def speed_quality_figures(
    records: list[dict], efficiency: dict[tuple[str, str], dict], score: str = "final"
) -> list[tuple[str, plt.Figure]]:
    """Per task: the main dev score (mean ± std over seeds) against CPU latency per example at batch 1,
    one point per (method, experiment) whose model was measured; the teacher drawn as a star."""
    stats = aggregate(records, score)
    figures = []
    for task_name in sorted(set(stats["task"])):
        task = get_task(task_name)
        rows = stats[(stats["task"] == task_name) & (stats["metric"] == main_metric_key(task))]
        points = []
        for row in rows.itertuples(index=False):
            label = row.teacher if row.method == "teacher" else row.student
            measured = efficiency.get((task_name, label))
            if measured:
                points.append((row, measured["latency_ms_batch1"]))
        if not points:
            continue
        figure, axis = plt.subplots(figsize=(5, 3.6))
        for row, latency in points:
            teacher = row.method == "teacher"
            axis.errorbar(
                latency,
                row.mean * task.display_scale,
                yerr=row.std * task.display_scale,
                fmt="*" if teacher else "o",
                markersize=12 if teacher else 6,
                capsize=3,
                label=f"{'teacher' if teacher else row.method} (n={row.n}, {row.setting})",
            )
        axis.set_xlabel("CPU ms per example, batch 1")
        axis.set_ylabel(f"{task.main_metric} ({score} epoch)")
        if not task.greater_is_better:
            axis.invert_yaxis()
        axis.set_title(f"{task.column_label.split(' ')[0]}: score vs latency")
        axis.legend(fontsize=6, loc="best")
        figures.append((f"speed-{task_name}-{score}", figure))
    return figures


def method_plots(records: list[dict], out_dir: Path, score: str = "final") -> list[Path]:
    """Every family figure of :func:`method_figures` as SVG under ``out_dir``."""
    paths = []
    for name, figure in method_figures(records, score):
        paths += _save(figure, out_dir, f"methods-{name}", ("svg",))
    return paths


def loss_curves(record: dict, out_dir: Path) -> list[Path]:
    """Every logged loss term of one run against the training step."""
    history = pd.DataFrame(record.get("loss_history") or [])
    if history.empty:
        raise UserError(f"record {record.get('_path')} has no loss history")
    long = history.melt(
        id_vars=["step"],
        value_vars=[c for c in history.columns if c.startswith("loss")],
        var_name="term",
        value_name="value",
    ).dropna()
    figure, axis = plt.subplots(figsize=(6, 3.5))
    sns.lineplot(data=long, x="step", y="value", hue="term", ax=axis)
    axis.set_yscale("log")
    axis.set_title(f"{record['method']} on {record['task']} (seed {record['seed']})")
    return _save(figure, out_dir, f"loss-{record['task']}-{record['method']}-{record['run_id']}")


def study_history(trials: pd.DataFrame, direction: str, out_dir: Path, name: str) -> list[Path]:
    """Objective value per finished trial and the best value so far."""
    finished = trials[trials["state"] == "COMPLETE"].sort_values("number")
    if finished.empty:
        raise UserError(f"study {name} has no finished trials")
    best = finished["value"].cummax() if direction == "maximize" else finished["value"].cummin()
    figure, axis = plt.subplots(figsize=(6, 3.5))
    sns.scatterplot(data=finished, x="number", y="value", ax=axis, label="trial")
    sns.lineplot(x=finished["number"], y=best, ax=axis, label="best so far", drawstyle="steps-post")
    axis.set_title(f"study {name}")
    return _save(figure, out_dir, f"study-{name}")
