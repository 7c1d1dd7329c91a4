"""The one-screen summary printed at the end of a run, read from its record."""

from __future__ import annotations

from typing import Any


def _format_metrics(metrics: dict[str, float] | None) -> str:
    if not metrics:
        return "-"
    return "  ".join(f"{k}={v:.4f}" for k, v in metrics.items())


def _gap(record: dict[str, Any]) -> str:
    """Teacher minus student on the main metric, and whether both clear the majority-class baseline."""
    key = record["main_metric"]
    teacher = (record.get("teacher") or {}).get("metrics") or {}
    student = record["metrics"]
    if key not in student:
        return "-"
    parts = [f"teacher − student {key} = {teacher[key] - student[key]:+.4f}"] if key in teacher else []
    majority = (record.get("majority_baseline") or {}).get(key)
    if majority is not None:
        above = [name for name, m in (("teacher", teacher), ("student", student)) if key in m and m[key] > majority]
        parts.append(f"above the majority class: {', '.join(above) or 'neither'}")
    return "; ".join(parts) or "-"


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
        f"  majority class {_format_metrics(record.get('majority_baseline'))}",
        f"  gap            {_gap(record)}",
        f"  loss terms     {_format_metrics(record.get('loss_terms'))}",
        f"  wall time      {record['wall_time_s']:.0f} s",
        f"  record         {record.get('_path', record['run_id'])}",
    ]
    return "\n".join(lines)
