"""The generated results: ``results/leaderboard.md`` and the generated sections of the READMEs.

All are produced from the committed records (:func:`generated_sections`); a test regenerates them and
compares with the committed files, so no number in them can be edited by hand.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from distillbench.bench_report import bench_markdown, on_policy_markdown, performance_summary, top_k_markdown
from distillbench.efficiency import efficiency_table, fill_budgets
from distillbench.experiments import (
    BUDGET_LEGEND,
    NOTHING_RANKED,
    Experiment,
    experiment_significance,
    findings_legend,
    findings_table,
    group_experiments,
    has_costs,
    headline,
    headline_intro,
    headline_legend,
    headline_lines,
    history,
    history_table,
    n_legend,
    ranked,
    score_table,
)
from distillbench.labels import row_key
from distillbench.leaderboard import aggregate, render
from distillbench.markers import Significance
from distillbench.reading_bench import reading_markdown
from distillbench.records import read_records
from distillbench.reference import reference_table
from distillbench.selection import Selection, collect
from distillbench.task import eval_set_note, get_task, scale_note
from distillbench.teacher_study import read_studies, studies_markdown


def runs_table(records: list[dict]) -> str:
    """One line per run: the figures a closing note quotes, each traceable to its record file."""
    rows = []
    files = [r for r in records if not r.get("derived_from")]  # an ensemble's teacher row is not a run
    for record in sorted(files, key=lambda r: (r["task"], row_key(r)[1], r["seed"], r.get("finished_at", ""))):
        main = record["main_metric"]
        task = get_task(record["task"])
        best = record.get("best_epoch") or {}
        best_text = f"{task.display(main, best['metrics'][main])} (ep {best['epoch']:.3g})" if best else ""
        rows.append(
            {
                "task": record["task"],
                "method": row_key(record)[1],
                "seed": record["seed"],
                "metric": main,
                "final": task.display(main, record["metrics"][main]),
                "best": best_text,
                "steps": (record.get("epochs") or [{}])[-1].get("step", ""),
                "wall time (incl. stages it ran)": f"{record['wall_time_s'] / 60:.1f} min",
                "train loop": f"{record['train_runtime_s'] / 60:.1f} min" if record.get("train_runtime_s") else "",
                "record": Path(record["_path"]).name,
            }
        )
    if not rows:
        return "(no runs)"
    numbers = ("seed", "final", "steps")  # strings in each metric's own decimals, aligned as numbers
    table = pd.DataFrame(rows)
    return table.to_markdown(
        index=False, disable_numparse=True, colalign=["right" if c in numbers else "left" for c in table.columns]
    )


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
        rows.append(
            {
                "study": study,
                "task": best["task"],
                "method": best["method"],
                "metric": main,
                "trials": f"{len(complete)} complete, {len(trials) - len(complete)} pruned",
                "best trial": best["tags"]["trial"],
                "best": get_task(best["task"]).display(main, best["metrics"][main]),
                "mean time per trial": f"{sum(r['wall_time_s'] for r in trials) / len(trials) / 60:.1f} min",
            }
        )
    return pd.DataFrame(rows).to_markdown(index=False, disable_numparse=True) if rows else ""


@dataclass
class Reading:
    """What one reading of a results folder computed: the selection, its experiments and the
    significance of each ranked experiment (the markdown, the page and the figures all draw on it)."""

    results_dir: Path
    selection: Selection
    experiments: list[Experiment]
    marks: dict[int, Significance]

    @property
    def ranked(self) -> list[Experiment]:
        return ranked(self.experiments)

    @property
    def history(self) -> list[Experiment]:
        return history(self.experiments)

    @property
    def lead(self) -> Experiment | None:
        """The experiment the headline reads: the first ranked one with a baseline compared."""
        return next((e for e in self.ranked if self.marks[e.number].findings), None)


# The published leaderboard keeps its bounded runs (the 60-step continual pre-training) in its history.
PUBLISHED_INCLUDES_BOUNDED = True


def read_results(results_dir: Path, progress: bool = False, include_bounded: bool = False) -> Reading:
    """Records → selection → experiments → significance of each ranked experiment at the final epoch
    (bootstraps cached, a bar while they compute). Bounded runs are left out unless asked; asked, they
    join the history, never a ranked table."""
    selection = collect(results_dir, include_bounded=include_bounded)
    fill_budgets(selection.records, results_dir)
    experiments = group_experiments(selection.records)
    marks = {e.number: experiment_significance(e, "final", progress=progress) for e in ranked(experiments)}
    return Reading(results_dir, selection, experiments, marks)


def headline_markdown(reading: Reading) -> str:
    """The per-task answer first: which methods beat fine-tuning and KD in the lead experiment."""
    lead = reading.lead
    if lead is None:
        return NOTHING_RANKED
    marks = reading.marks[lead.number]
    return "\n".join(
        [
            headline_intro(lead),
            "",
            headline(lead, marks).to_markdown(index=False, disable_numparse=True),
            "",
            f"{headline_legend(marks)} Across seeds, and every other experiment: below.",
            "",
            *headline_lines(lead, marks),
        ]
    )


def experiment_markdown(experiment: Experiment, marks: Significance, figures: list[str]) -> list[str]:
    table = score_table(experiment, "final", marks)
    parts = [
        f"### {experiment.title()}",
        "",
        render(table, "md"),
        f"Final epoch, {eval_set_note(experiment.tasks)}. Cells: mean ± std over seeds, "
        f"{scale_note(experiment.tasks)}; {n_legend(table.cells)}; **bold**: best student per column. "
        f"{marks.legend()} {BUDGET_LEGEND}",
        "",
    ]
    hand_set = experiment.hand_set()
    if hand_set:
        parts += [hand_set, ""]
    for figure in figures:
        what = "score against training cost" if figure.endswith("-cost.svg") else "scores"
        parts += [f"![{experiment.title()}: {what}]({figure})", ""]
    findings = findings_table(marks)
    if len(findings):
        parts += [findings.to_markdown(index=False, disable_numparse=True), "", findings_legend(marks), ""]
    return parts


def leaderboard_markdown(reading: Reading, figures: dict[int, list[str]] | None = None) -> str:
    """The leaderboard: the headline, each ranked experiment (scores, findings, its figure), the history
    of single runs, efficiency, runs, studies and the TED reference. ``figures``: experiment number →
    the path of its figure relative to the results folder."""
    records = reading.selection.records
    parts = [f"Generated from the run records under `runs/`: {reading.selection.report()}.", ""]
    if not records:
        return "\n".join([*parts, "No usable records yet.", ""])
    parts += ["### Headline", "", headline_markdown(reading), ""]
    for experiment in reading.ranked:
        parts += experiment_markdown(
            experiment, reading.marks[experiment.number], (figures or {}).get(experiment.number, [])
        )
    if reading.history:
        parts += [
            "### Single runs and history (one seed or a bounded budget: no error bar, no test)",
            "",
            history_table(reading.history, "final").to_markdown(index=False, disable_numparse=True),
            "",
        ]
    efficiency = efficiency_table(reading.results_dir)
    if len(efficiency):
        parts += [
            "#### Efficiency (`distillbench efficiency`: each architecture, fresh weights, the task's dev examples)",
            "",
            efficiency.to_markdown(index=False, disable_numparse=True),
            "",
        ]
    parts += ["#### Runs", "", runs_table(records), ""]
    teacher_studies = read_studies(reading.results_dir)
    if teacher_studies:
        parts += [
            "#### Teacher studies (`distillbench teacher-study`: the teacher's settings, chosen on held-out train)",
            "",
            studies_markdown(teacher_studies),
        ]
    studies = studies_table(read_records(reading.results_dir))
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


def generation_markdown(reading: Reading) -> str:
    """The ranked experiments of tasks that score generations, for the generative objectives' page (its
    figures are in the leaderboard: this page lives outside the results folder)."""
    from distillbench.task import get_task

    parts: list[str] = []
    for experiment in reading.ranked:
        if any(get_task(task).scores_generations for task in experiment.tasks):
            parts += experiment_markdown(experiment, reading.marks[experiment.number], [])
    return "\n".join(parts) if parts else "No generation experiment in the published results yet."


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


def figure_paths(reading: Reading) -> dict[int, list[str]]:
    """Where ``leaderboard --write`` puts each ranked experiment's figures, relative to the results folder:
    its scores, and its scores against training cost when its records estimate FLOPs."""
    return {
        e.number: [f"plots/experiment-{e.number}.svg"]
        + ([f"plots/experiment-{e.number}-cost.svg"] if has_costs(e) else [])
        for e in reading.ranked
    }


def generated_sections(results_dir: Path, reading: Reading | None = None) -> dict[str, str]:
    """Every generated section, by name: the headline, the leaderboard and the bench figures (a folder
    read as the published results are, when no reading is given)."""
    reading = reading or read_results(results_dir, include_bounded=PUBLISHED_INCLUDES_BOUNDED)
    return {
        "headline": headline_markdown(reading),
        "results": leaderboard_markdown(reading, figure_paths(reading)),
        "bench": bench_markdown(results_dir),
        "reading": reading_markdown(results_dir),
        "performance": performance_summary(results_dir),
        "top-k": top_k_markdown(results_dir),
        "on-policy": on_policy_markdown(results_dir),
        "generation": generation_markdown(reading),
    }


def fill_sections(text: str, sections: dict[str, str]) -> str:
    """``text`` with every generated section it has markers for rewritten."""
    for name, body in sections.items():
        if section_markers(name)[0] in text:
            text = replace_section(text, name, body)
    return text
