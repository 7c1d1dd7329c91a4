"""Seaborn figures from records: method bars per task, per-term loss curves, Optuna study history.

Each figure is saved as PNG and SVG under ``results/plots/`` (or ``--out-dir``).
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; no display needed
import matplotlib.pyplot as plt
import pandas as pd
import seaborn as sns

from distillbench.errors import UserError
from distillbench.leaderboard import row_key, score_of
from distillbench.task import get_task


def _save(figure: plt.Figure, out_dir: Path, name: str) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / f"{name}.{ext}" for ext in ("png", "svg")]
    for path in paths:
        figure.savefig(path, bbox_inches="tight", dpi=120)
    plt.close(figure)
    return paths


def method_bars(records: list[dict], out_dir: Path, score: str = "final") -> list[Path]:
    """Main dev metric per task × method, bars = mean over seeds, error bars = std."""
    rows = []
    for record in records:
        metrics = score_of(record, score)
        task = get_task(record["task"])
        scale = task.display_scale
        rows.append(
            {
                "task": task.column_label.split(" ")[0],
                "method": row_key(record)[1],
                "score": scale * metrics[record["main_metric"]],
            }
        )
    if not rows:
        raise UserError("no usable records to plot")
    frame = pd.DataFrame(rows)
    grid = sns.catplot(
        data=frame, x="method", y="score", col="task", kind="bar", errorbar="sd", sharey=False, height=3.2, aspect=1.2
    )
    grid.set_titles("{col_name}")
    grid.set_axis_labels("", f"dev main metric ({score} epoch)")
    for axis in grid.axes.flat:
        axis.tick_params(axis="x", rotation=45)
    return _save(grid.figure, out_dir, f"methods-{score}")


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
