"""The generated results: ``results/leaderboard.md`` and the generated sections of the READMEs.

All are produced from the committed records (:func:`generated_sections`); a test regenerates them and
compares with the committed files, so no number in them can be edited by hand.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from distillbench.bench_report import bench_markdown, performance_summary
from distillbench.efficiency import efficiency_table
from distillbench.leaderboard import (
    EXPERIMENT,
    aggregate,
    build_table,
    collect,
    reference_table,
    render,
    row_key,
    significance,
)
from distillbench.records import read_records
from distillbench.task import get_task


def runs_table(records: list[dict]) -> str:
    """One line per run: the figures a closing note quotes, each traceable to its record file."""
    rows = []
    files = [r for r in records if not r.get("derived_from")]  # an ensemble's teacher row is not a run
    for record in sorted(files, key=lambda r: (r["task"], row_key(r)[1], r["seed"], r.get("finished_at", ""))):
        main = record["main_metric"]
        scale = get_task(record["task"]).display_scale
        best = record.get("best_epoch") or {}
        best_text = f"{scale * best['metrics'][main]:.1f} (ep {best['epoch']:.0f})" if best else ""
        rows.append(
            {
                "task": record["task"],
                "method": row_key(record)[1],
                "seed": record["seed"],
                "metric": main,
                "final": f"{scale * record['metrics'][main]:.1f}",
                "best": best_text,
                "steps": (record.get("epochs") or [{}])[-1].get("step", ""),
                "wall time (incl. stages it ran)": f"{record['wall_time_s'] / 60:.1f} min",
                "train loop": f"{record['train_runtime_s'] / 60:.1f} min" if record.get("train_runtime_s") else "",
                "record": Path(record["_path"]).name,
            }
        )
    return pd.DataFrame(rows).to_markdown(index=False) if rows else "(no runs)"


def studies_table(records: list[dict]) -> str:
    """One line per tuning study, from its trials' records: trials, best trial and value, time per trial."""
    by_study: dict[str, list[dict]] = {}
    for record in records:
        study = (record.get("tags") or {}).get("study")
        if study:
            by_study.setdefault(study, []).append(record)
    rows = []
    for study, trials in sorted(by_study.items()):
        complete = [r for r in trials if r.get("status") == "complete"]
        if not complete:
            continue
        main = complete[0]["main_metric"]
        pick = max if complete[0].get("greater_is_better", True) else min
        best = pick(complete, key=lambda r: r["metrics"][main])
        scale = get_task(best["task"]).display_scale
        rows.append(
            {
                "study": study,
                "task": best["task"],
                "method": best["method"],
                "metric": main,
                "trials": f"{len(complete)} complete, {len(trials) - len(complete)} pruned",
                "best trial": best["tags"]["trial"],
                "best": f"{scale * best['metrics'][main]:.1f}",
                "mean time per trial": f"{sum(r['wall_time_s'] for r in trials) / len(trials) / 60:.1f} min",
            }
        )
    return pd.DataFrame(rows).to_markdown(index=False, disable_numparse=True) if rows else ""


def leaderboard_markdown(results_dir: Path) -> str:
    selection = collect(results_dir)
    records = selection.records
    parts = [f"Generated from the run records under `{results_dir.name}/runs/`: {selection.report()}.", ""]
    if not records:
        return "\n".join([*parts, "No usable records yet.", ""])
    for score, heading in (("final", "Final epoch"), ("best", "Best epoch (what the TED reference reports)")):
        stats = aggregate(records, score)
        several = stats[stats["n"] > 1]
        if len(several):
            keys = {tuple(r) for r in several[["task", "method", *EXPERIMENT]].itertuples(index=False)}
            marks = significance([r for r in records if row_key(r) in keys], score)  # this table's rows only
            parts += [
                f"#### {heading}, dev set, several seeds",
                "",
                render(build_table(several, markers=marks.markers), "md"),
            ]
            parts += [marks.legend(), ""]
        single = stats[stats["n"] == 1]
        if len(single):
            parts += [f"#### {heading}, dev set, single runs (one seed: no error bar, no test)", ""]
            parts += [render(build_table(single), "md")]
    parts += [
        "Cells: mean over seeds (±std when n > 1), ×100; **bold**: best student per column.",
        "",
    ]
    efficiency = efficiency_table(results_dir)
    if len(efficiency):
        parts += [
            "#### Efficiency (`distillbench efficiency`: each architecture, fresh weights, the task's dev examples)",
            "",
            efficiency.to_markdown(index=False, disable_numparse=True),
            "",
        ]
    parts += [
        "#### Runs",
        "",
        runs_table(records),
        "",
    ]
    studies = studies_table(read_records(results_dir))
    if studies:
        parts += ["#### Tuning studies (`distillbench tune`; trials are left out of the tables above)", "", studies, ""]
    tasks = sorted({r["task"] for r in records})
    reference = reference_table(aggregate(records, "best"), tasks)
    if len(reference):
        parts += [
            "#### TED reference (DeBERTaV3-base → xsmall; not measured here) and measured − reference",
            "",
            reference.to_markdown(index=False, missingval=""),
            "",
        ]
    return "\n".join(parts)


def section_markers(name: str) -> tuple[str, str]:
    return f"<!-- {name}:start (generated by `distillbench leaderboard`; do not edit) -->", f"<!-- {name}:end -->"


def replace_section(text: str, name: str, body: str) -> str:
    """``text`` with the generated section ``name`` replaced by ``body``."""
    start, end = section_markers(name)
    if start not in text or end not in text:
        raise ValueError(f"no generated {name} section markers")
    head, rest = text.split(start, 1)
    _, tail = rest.split(end, 1)
    return f"{head}{start}\n{body}\n{end}{tail}"


def generated_sections(results_dir: Path) -> dict[str, str]:
    """Every generated section, by name: the leaderboard and the bench figures."""
    return {
        "results": leaderboard_markdown(results_dir),
        "bench": bench_markdown(results_dir),
        "performance": performance_summary(results_dir),
    }


def fill_sections(text: str, sections: dict[str, str]) -> str:
    """``text`` with every generated section it has markers for rewritten."""
    for name, body in sections.items():
        if section_markers(name)[0] in text:
            text = replace_section(text, name, body)
    return text
