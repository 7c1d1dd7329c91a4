"""The one-screen summary printed at the end of a run, read from its record."""

from __future__ import annotations

from typing import Any


def _format_metrics(metrics: dict[str, float] | None) -> str:
    if not metrics:
        return "-"
    return "  ".join(f"{k}={v:.4f}" for k, v in metrics.items())


def run_summary(record: dict[str, Any]) -> str:
    teacher = record.get("teacher") or {}
    best = record.get("best_epoch") or {}
    lines = [
        "",
        f"distillbench  {record['method']} on {record['task']}  (seed {record['seed']})",
        f"  teacher        {_format_metrics(teacher.get('metrics'))}",
        f"  student final  {_format_metrics(record['metrics'])}",
        f"  student best   {_format_metrics(best.get('metrics'))}"
        + (f"  (epoch {best['epoch']:.2f})" if best.get("epoch") is not None else ""),
        f"  loss terms     {_format_metrics(record.get('loss_terms'))}",
        f"  wall time      {record['wall_time_s']:.0f} s",
        f"  record         {record.get('_path', record['run_id'])}",
    ]
    return "\n".join(lines)
