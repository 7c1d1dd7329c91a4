"""Experiments: what a leaderboard shows one at a time.

An experiment is one teacher, one student, one setting and one budget, over the tasks and seeds its runs
covered (a sweep file describes one). Methods are compared inside an experiment only: a 5-step smoke run
or a single-seed run of another budget is another experiment and never changes a campaign's table.
Experiments with several seeds come first (the most seeds, methods and tasks first); single-seed
experiments are history, shown apart. Each experiment's table has the teacher, the majority-class score
and the fine-tune baseline as reference rows; its findings put the bootstrap over dev examples and the
test across seeds side by side, with the smallest p the across-seed test can reach for its n.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from distillbench.labels import EXPERIMENT, row_key
from distillbench.leaderboard import Table, aggregate, build_table, format_cell
from distillbench.markers import Significance, marked_baselines, significance
from distillbench.selection import bounded_by
from distillbench.significance import ALPHA, DEFAULT_RESAMPLES, format_p, smallest_permutation_p
from distillbench.task import get_task, list_tasks, short_label

MAJORITY = "majority class"
BETTER, WORSE = "▲", "▼"


@dataclass
class Experiment:
    """One teacher, student, setting and budget; its student records and its teacher's rows."""

    teacher: str
    student: str
    setting: str
    budget: str
    records: list[dict[str, Any]] = field(default_factory=list)
    number: int = 0  # its place in the leaderboard, from 1

    @property
    def students(self) -> list[dict[str, Any]]:
        return [r for r in self.records if r.get("role") != "teacher"]

    @property
    def tasks(self) -> list[str]:
        present = {r["task"] for r in self.students}
        return [t for t in list_tasks() if t in present]

    @property
    def seeds(self) -> list[int]:
        return sorted({r["seed"] for r in self.students})

    @property
    def most_seeds(self) -> int:
        """The most seeds any one method ran on any one task."""
        counts: dict[tuple, set] = defaultdict(set)
        for record in self.students:
            counts[row_key(record)[:2]].add(record["seed"])
        return max((len(seeds) for seeds in counts.values()), default=0)

    @property
    def bounded(self) -> bool:
        """Cut short by a preset, ``--max-steps`` or a training subset: history, never a ranked table."""
        return any(bounded_by(r) for r in self.students)

    @property
    def methods(self) -> list[str]:
        return sorted({row_key(r)[1] for r in self.students})

    def title(self) -> str:
        tasks = ", ".join(short_label(t) for t in self.tasks)
        seeds = ", ".join(map(str, self.seeds))
        return (
            f"Experiment {self.number}: {tasks} — teacher {self.teacher} → student {self.student}, "
            f"{self.setting}, {self.budget}, seeds {seeds}"
        )

    def majority(self) -> dict[str, dict[str, float]]:
        """Per task, the majority-class scores its records hold (classification tasks only)."""
        found: dict[str, dict[str, float]] = {}
        for record in self.records:
            if record.get("majority_baseline") and record["task"] not in found:
                found[record["task"]] = record["majority_baseline"]
        return found


def group_experiments(records: list[dict[str, Any]]) -> list[Experiment]:
    """Student records grouped by (teacher, student, setting, budget), each with the teacher rows of its
    teacher on its tasks (the same budget preferred); several-seed experiments first, numbered."""
    by_key: dict[tuple, Experiment] = {}
    for record in records:
        if record.get("role") != "teacher":
            key = row_key(record)[2:]
            by_key.setdefault(key, Experiment(*key)).records.append(record)
    teachers = [r for r in records if r.get("role") == "teacher"]
    for experiment in by_key.values():
        for task in experiment.tasks:
            candidates = [
                r
                for r in teachers
                if r["task"] == task and row_key(r)[2] == experiment.teacher and row_key(r)[4] == experiment.setting
            ]
            same_budget = [r for r in candidates if row_key(r)[5] == experiment.budget]
            chosen = same_budget or candidates
            budgets = {row_key(r)[5] for r in chosen}
            if len(budgets) == 1:  # a teacher of several other budgets would be a guess: show none
                experiment.records.extend(chosen)
    ordered = sorted(
        by_key.values(),
        key=lambda e: (-e.most_seeds, -len(e.methods), -len(e.tasks), e.teacher, e.student, e.setting, e.budget),
    )
    for number, experiment in enumerate(ordered, 1):
        experiment.number = number
    return ordered


def ranked(experiments: list[Experiment], include_bounded: bool = False) -> list[Experiment]:
    """The experiments a leaderboard shows one by one: several seeds, a full budget (unless asked)."""
    return [e for e in experiments if e.most_seeds > 1 and (include_bounded or not e.bounded)]


def history(experiments: list[Experiment], include_bounded: bool = False) -> list[Experiment]:
    """The rest — single-seed and bounded experiments: shown apart, collapsed, never tested."""
    shown = ranked(experiments, include_bounded)
    return [e for e in experiments if e not in shown]


def experiment_significance(
    experiment: Experiment, score: str, resamples: int = DEFAULT_RESAMPLES, progress: bool = False
) -> Significance:
    """Every method against the baselines on each task of the experiment, Holm-corrected over them."""
    return significance(experiment.students, score, resamples, progress)


def score_table(experiment: Experiment, score: str, marks: Significance | None = None) -> Table:
    """Methods as rows (teacher and majority class first), one column per task of the experiment, an
    average over its tasks of one benchmark; the experiment's own columns are in its title."""
    table = build_table(aggregate(experiment.records, score), markers=marks.markers if marks else None)
    cells = table.cells.drop(columns=list(EXPERIMENT))
    majority = experiment.majority()
    if majority:
        row: dict[str, str] = dict.fromkeys(cells.columns, "")
        row["method"] = MAJORITY
        for task_name, scores in majority.items():
            task = get_task(task_name)
            found = [(scores[m], 0.0, 1) for m in task.paper_metrics if m in scores]
            if task.column_label in row and found:
                row[task.column_label] = format_cell(found, task.display_scale, task.display_decimals)
        position = int((cells["method"] == "teacher").sum())
        cells = pd.concat([cells.iloc[:position], pd.DataFrame([row]), cells.iloc[position:]], ignore_index=True)
        best = {(i + (i >= position), column) for i, column in table.best}
    else:
        best = table.best
    return Table(cells, best, table.title)


def findings_table(marks: Significance) -> pd.DataFrame:
    """One line per comparison: the bootstrap over dev examples (difference, 95 % CI, Holm-corrected p)
    beside the test across seeds (its p and the smallest p it can reach with these seeds)."""
    rows = []
    for finding in marks.findings:
        comparison = finding.comparison
        seeds = comparison.across_seeds
        if seeds.p_value is not None:
            across = f"{format_p(seeds.p_value)} (min {format_p(smallest_permutation_p(*comparison.seed_counts))})"
        elif seeds.name == "aso":
            across = f"ASO ε {seeds.statistic:.2f}"
        else:
            across = "—"
        rows.append(
            {
                "task": short_label(finding.key[0]),
                "method": finding.key[1],
                "vs": comparison.baseline,
                "Δ [95% CI]": difference_text(finding),
                "p examples (Holm)": format_p(finding.adjusted_p),
                "p seeds (min)": across,
            }
        )
    return pd.DataFrame(rows)


def difference_text(finding) -> str:
    """``+11.2 [+9.9, +12.7] ▲``: the paired difference, its 95 % CI and the corrected verdict."""
    boot, scale = finding.comparison.bootstrap, get_task(finding.key[0]).display_scale
    mark = (BETTER if finding.better else WORSE) if finding.significant else ""
    return f"{scale * boot.difference:+.1f} [{scale * boot.low:+.1f}, {scale * boot.high:+.1f}] {mark}".rstrip()


def findings_legend(marks: Significance) -> str:
    if not marks.findings:
        return marks.legend()
    resamples = marks.findings[0].comparison.bootstrap.resamples
    return (
        "Δ: difference of the task's main metric (×100) over the seeds both methods ran; 95% CI and p from a "
        f"paired bootstrap over dev examples ({resamples:,} resamples) — would the gap survive another dev set? "
        f"p is Holm-corrected over the {len(marks.findings)} comparisons of this experiment; {BETTER} / {WORSE}: "
        f"better / worse at p < {ALPHA}; the CI is not corrected, so a CI that excludes 0 without a mark is a "
        "difference that does not survive the correction. p seeds: exact permutation test of the per-seed "
        "scores — would it survive other training seeds? — with the smallest p it can reach for that many "
        "seeds in brackets: a p at its minimum is as strong as those seeds can say." + marks.skipped_note()
    )


def headline(experiment: Experiment, marks: Significance) -> pd.DataFrame:
    """Method × (task vs baseline): the difference, its CI and the corrected verdict, for the methods
    compared in ``experiment``."""
    baselines = marked_baselines()
    columns = [(t, b) for t in experiment.tasks for b in baselines]
    cells: dict[str, dict[str, str]] = defaultdict(dict)
    for finding in marks.findings:
        task, method = finding.key[0], finding.key[1]
        label = f"{short_label(task)} vs {finding.comparison.baseline}"
        cells[method][label] = difference_text(finding)
    labels = [f"{short_label(t)} vs {b}" for t, b in columns]
    labels = [label for label in labels if any(label in row for row in cells.values())]
    order = sorted(cells, key=lambda m: (m not in baselines, m))
    return pd.DataFrame([{"method": m, **{label: cells[m].get(label, "") for label in labels}} for m in order])


NOTHING_RANKED = "No experiment with several seeds and a baseline yet: nothing is ranked."


def headline_intro(experiment: Experiment) -> str:
    return f"{experiment.title()} — each method against fine-tuning and KD on the dev set, final epoch."


def headline_legend(marks: Significance) -> str:
    return (
        f"Cells: difference in the main metric ×100, [95% CI]; {BETTER} / {WORSE}: better / worse after Holm's "
        f"correction over the experiment's {len(marks.findings)} comparisons (p < {ALPHA}); no mark: not "
        "significant after it (the CI is uncorrected)."
    )


def headline_lines(experiment: Experiment, marks: Significance) -> list[str]:
    """Per task, in words: which methods beat (or fall behind) each baseline after correction."""
    lines = []
    for task_name in experiment.tasks:
        mine = [f for f in marks.findings if f.key[0] == task_name]
        if not mine:
            continue
        parts = []
        for baseline in marked_baselines():
            against = [f for f in mine if f.comparison.baseline == baseline]
            if not against:
                continue
            better = sorted(f.key[1] for f in against if f.significant and f.better)
            worse = sorted(f.key[1] for f in against if f.significant and not f.better)
            text = f"better than {baseline}: {', '.join(better) or 'none'}"
            if worse:
                text += f"; worse: {', '.join(worse)}"
            parts.append(text)
        lines.append(f"- **{short_label(task_name)}** ({len(mine)} comparisons): " + "; ".join(parts) + ".")
    return lines


def history_table(experiments: list[Experiment], score: str) -> pd.DataFrame:
    """Single-seed experiments in one long table: one line per (task, method, experiment)."""
    rows = []
    for experiment in experiments:
        stats = aggregate(experiment.records, score)
        for task_name in experiment.tasks:
            task = get_task(task_name)
            for method in sorted(set(stats["method"]), key=lambda m: (m != "teacher", m)):
                found = [
                    stats[(stats["task"] == task_name) & (stats["method"] == method) & (stats["metric"] == m)]
                    for m in task.paper_metrics
                ]
                present = [(f.iloc[0]["mean"], f.iloc[0]["std"], int(f.iloc[0]["n"])) for f in found if len(f)]
                if not present:
                    continue
                budget = next(f.iloc[0]["budget"] for f in found if len(f))  # a teacher's own budget
                rows.append(
                    {
                        "task": short_label(task_name),
                        "method": method,
                        "teacher": experiment.teacher,
                        # no setting column: a student pre-trained first is named so ("kd-pretrain student")
                        "student": "-" if method == "teacher" else experiment.student,
                        "budget": budget + (" (bounded)" if experiment.bounded else ""),
                        "score": format_cell(present, task.display_scale, task.display_decimals),
                        "metrics": task.column_label.removeprefix(short_label(task_name)).strip(),
                    }
                )
    return pd.DataFrame(rows)
