"""Reading the Trainer's log history: per-epoch dev metrics, the best epoch, the logged loss terms.

``transformers.Trainer`` logs everything (losses, evaluations, runtime) as one flat list of dicts with
prefixed keys; records store it in a shape a table can read. Kept apart from the harness because the
leaderboard, the tuner and the tests read the same shapes.
"""

from __future__ import annotations

from typing import Any

from distillbench.task import Task


def main_metric_key(task: Task) -> str:
    splits = task.eval_splits
    return task.main_metric if len(splits) == 1 else f"{splits[0]}/{task.main_metric}"


TRAINER_EVAL_KEYS = {"loss", "runtime", "samples_per_second", "steps_per_second", "epoch", "model_preparation_time"}


def flatten_metrics(logs: dict[str, Any], task: Task) -> dict[str, float]:
    """Trainer's ``eval_[split_]name`` keys → ``name`` (one split) or ``split/name`` (several); the
    Trainer's own bookkeeping (eval loss, runtime, throughput) is left out."""
    result: dict[str, float] = {}
    splits = task.eval_splits
    for key, value in logs.items():
        if not key.startswith("eval_"):
            continue
        name = key.removeprefix("eval_")
        split = None
        if len(splits) > 1:
            split = next((s for s in splits if name.startswith(f"{s}_")), None)
            if split is None:
                continue
            name = name.removeprefix(f"{split}_")
        if name not in TRAINER_EVAL_KEYS:
            result[f"{split}/{name}" if split else name] = float(value)
    return result


def epoch_history(log_history: list[dict[str, Any]], task: Task) -> list[dict[str, Any]]:
    """One entry per evaluation (epoch, step, metrics); several splits of one step are merged."""
    by_step: dict[int, dict[str, Any]] = {}
    for entry in log_history:
        metrics = flatten_metrics(entry, task)
        if metrics:
            row = by_step.setdefault(entry["step"], {"epoch": entry.get("epoch"), "step": entry["step"], "metrics": {}})
            row["metrics"].update(metrics)
    return [by_step[s] for s in sorted(by_step)]


def best_epoch(history: list[dict[str, Any]], task: Task) -> dict[str, Any] | None:
    """The evaluation with the best main metric (the TED reference reports this, via --save_best)."""
    key = main_metric_key(task)
    scored = [h for h in history if key in h["metrics"]]
    if not scored:
        return None
    pick = max if task.greater_is_better else min
    return pick(scored, key=lambda h: h["metrics"][key])


def final_loss_terms(log_history: list[dict[str, Any]]) -> dict[str, float]:
    """The last logged value of the total loss and of every named term."""
    last: dict[str, float] = {}
    for entry in log_history:
        for key, value in entry.items():
            if key == "loss" or key.startswith("loss/"):
                last[key] = float(value)
    return last


def train_runtime(log_history: list[dict[str, Any]]) -> float | None:
    """Seconds the Trainer spent in this stage's training loop (this process only, if resumed)."""
    return next((e["train_runtime"] for e in reversed(log_history) if "train_runtime" in e), None)


def loss_history(log_history: list[dict[str, Any]]) -> list[dict[str, float]]:
    return [
        {k: v for k, v in e.items() if k in ("step", "epoch", "loss") or k.startswith("loss/")}
        for e in log_history
        if "loss" in e
    ]
