"""Figures from records: one per experiment (methods per task), per-term loss curves, Optuna study history.

Each figure is saved where a command is told (``--out-dir``; ``leaderboard --write`` puts the experiment
figures under ``<results>/plots/``), the experiment figures as SVG only.
"""

from __future__ import annotations

import io
import textwrap
from collections import defaultdict
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; no display needed
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
from scipy import stats

from distillbench.errors import UserError
from distillbench.experiments import Experiment, has_costs
from distillbench.history import main_metric_key
from distillbench.labels import TUNED, base_method, row_key
from distillbench.leaderboard import aggregate, method_order
from distillbench.task import get_task, short_label

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


def method_colours(labels: list[str]) -> dict[str, tuple[float, float, float]]:
    """One colour per method, the same in every figure and on the page: the registry's order (by each
    method's ``table_order``) into seaborn's palette; a variant row (tuned, a control) takes its method's colour.
    The built-in methods come first, so a plug-in loaded beside them never shifts their colours."""
    from distillbench.method import get_method, is_built_in, list_methods

    order = sorted(list_methods(), key=lambda m: (not is_built_in(m), get_method(m).table_order, m))
    # tab10, then Dark2's eight for the methods past the tenth: no two built-in methods share a colour,
    # and the first ten keep theirs
    palette = sns.color_palette("tab10", n_colors=10) + sns.color_palette("Dark2", n_colors=8)
    colours = {method: palette[(index + 1) % len(palette)] for index, method in enumerate(order)}
    return {label: colours.get(base_method(label), palette[0]) for label in labels}


def marker_of(label: str) -> str:
    """A method's own row as a circle, its tuned row as a square, a control (another start) as a diamond."""
    if label == base_method(label):
        return "o"
    return "s" if label.endswith(TUNED) else "D"


def _ci_half_width(std: float, n: int) -> float:
    """Half the 95 % t-interval of a mean over n seeds (0 for one seed: no interval to draw)."""
    return float(stats.t.ppf(0.975, n - 1) * std / np.sqrt(n)) if n > 1 else 0.0


def experiment_figure(experiment: Experiment, score: str = "final") -> plt.Figure:
    """One figure per experiment, a panel per task: each method's mean over seeds with its 95 % CI, in
    the method's colour; the teacher, fine-tuning and the majority class as labelled reference lines
    (their labels in the panel's legend, so they never overprint). Lower-is-better metrics are drawn on
    an inverted axis, so better is always to the right."""
    scores = aggregate(experiment.records, score)
    tasks = experiment.tasks
    methods = sorted({m for m in scores["method"] if m != "teacher"}, key=method_order)
    colours = method_colours(methods)
    majority = experiment.majority()
    figure, axes = plt.subplots(1, len(tasks), figsize=(5.8 * len(tasks), 0.38 * len(methods) + 2.0), squeeze=False)
    for axis, task_name in zip(axes[0], tasks, strict=True):
        task = get_task(task_name)
        metric, scale = main_metric_key(task), task.display_scale
        rows = scores[(scores["task"] == task_name) & (scores["metric"] == metric)].set_index("method")
        present = [m for m in methods if m in rows.index]  # a method not run on this task has no row here
        labels = []
        for y, method in enumerate(present):
            row = rows.loc[method]
            half = _ci_half_width(row["std"], int(row["n"])) * scale
            marker = marker_of(method)
            axis.errorbar(row["mean"] * scale, y, xerr=half or None, fmt=marker, color=colours[method], capsize=3)
            labels.append(f"{method} (n={int(row['n'])})")
        references = []  # (label, score as recorded, colour, line style)
        if "teacher" in rows.index:
            references.append(("teacher", rows.loc["teacher", "mean"], "0.15", "--"))
        if "finetune" in rows.index:
            references.append(("fine-tune", rows.loc["finetune", "mean"], colours.get("finetune"), ":"))
        if majority.get(task_name, {}).get(metric) is not None:
            references.append(("majority class", majority[task_name][metric], "0.55", "-."))
        for name, value, colour, style in references:
            label = f"{name} {task.display(task.main_metric, value)}"
            axis.axvline(value * scale, color=colour, linestyle=style, linewidth=1.2, label=label)
        axis.set_yticks(range(len(present)), labels, fontsize=8)
        axis.set_ylim(len(present) - 0.5, -0.5)
        axis.margins(x=0.06)  # a reference line at the edge of the data stays off the axis frame
        axis.set_title(
            f"{short_label(task_name)}: {task.main_metric}" + (f" ×{scale:g}" if scale != 1 else ""), fontsize=9
        )
        axis.grid(axis="x", alpha=0.3)
        axis.set_xlabel("mean over seeds, 95% CI", fontsize=8)
        if not task.greater_is_better:
            axis.invert_xaxis()
            axis.set_xlabel("mean over seeds, 95% CI (lower is better, axis inverted)", fontsize=8)
        if references:  # beside the panel: never over the points, the axis label or another panel
            axis.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False)
    figure.suptitle(textwrap.fill(experiment.title(), 100, break_on_hyphens=False), fontsize=9)
    figure.tight_layout()
    return figure


def cost_figure(experiment: Experiment, score: str = "final") -> plt.Figure | None:
    """A panel per task: each method's mean score (95 % CI over seeds) against its estimated training
    FLOPs (mean over seeds, log axis), in the method's colour — what a method's lead cost. None when no
    record of the experiment has a FLOP estimate."""
    if not has_costs(experiment):
        return None
    flops: dict[tuple[str, str], list[float]] = defaultdict(list)
    for record in experiment.students:
        value = (record.get("budget") or {}).get("training_flops")
        if value:
            flops[(record["task"], row_key(record)[1])].append(value)
    scores = aggregate(experiment.records, score)
    tasks = [t for t in experiment.tasks if any(task == t for task, _ in flops)]
    methods = sorted({m for _, m in flops}, key=method_order)
    colours = method_colours(methods)
    figure, axes = plt.subplots(1, len(tasks), figsize=(5.8 * len(tasks), 3.8), squeeze=False)
    for axis, task_name in zip(axes[0], tasks, strict=True):
        task = get_task(task_name)
        metric, scale = main_metric_key(task), task.display_scale
        rows = scores[(scores["task"] == task_name) & (scores["metric"] == metric)].set_index("method")
        for method in methods:
            spent = flops.get((task_name, method))
            if not spent or method not in rows.index:
                continue
            row = rows.loc[method]
            half = _ci_half_width(row["std"], int(row["n"])) * scale
            marker = marker_of(method)
            axis.errorbar(
                float(np.mean(spent)),
                row["mean"] * scale,
                yerr=half or None,
                fmt=marker,
                color=colours[method],
                capsize=3,
                label=f"{method} (n={int(row['n'])})",
            )
        if "teacher" in rows.index:
            teacher = rows.loc["teacher", "mean"]
            label = f"teacher {task.display(task.main_metric, teacher)}"
            axis.axhline(teacher * scale, color="0.15", linestyle="--", linewidth=1, label=label)
        axis.set_xscale("log")
        axis.set_xlabel("estimated training FLOPs (student side, mean over seeds)", fontsize=8)
        axis.set_ylabel(f"{task.main_metric}" + (f" ×{scale:g}" if scale != 1 else "") + ", 95% CI", fontsize=8)
        if not task.greater_is_better:
            axis.invert_yaxis()
        axis.set_title(f"{short_label(task_name)}: score vs training cost", fontsize=9)
        axis.grid(alpha=0.3)
        axis.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False)
    figure.suptitle(textwrap.fill(experiment.title(), 100, break_on_hyphens=False), fontsize=9)
    figure.tight_layout()
    return figure


def experiment_plots(experiments: list[Experiment], out_dir: Path, score: str = "final") -> list[Path]:
    """Every experiment's figures as SVG under ``out_dir``: scores (``experiment-<number>.svg``) and
    score against training cost (``experiment-<number>-cost.svg``, when its records have FLOP estimates)."""
    paths = []
    for experiment in experiments:
        suffix = "" if score == "final" else f"-{score}"
        name = f"experiment-{experiment.number}{suffix}"
        paths += _save(experiment_figure(experiment, score), out_dir, name, ("svg",))
        if has_costs(experiment):
            paths += _save(cost_figure(experiment, score), out_dir, f"{name}-cost", ("svg",))
    return paths


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
