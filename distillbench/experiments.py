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
from dataclasses import asdict, dataclass, field
from typing import Any

import pandas as pd

from distillbench.labels import EXPERIMENT, method_label, row_key
from distillbench.leaderboard import Table, aggregate, build_table
from distillbench.markers import REFINED_RESAMPLES, Significance, marked_baselines, significance
from distillbench.method import get_method, list_methods
from distillbench.selection import bounded_by
from distillbench.significance import ALPHA, DEFAULT_RESAMPLES, format_p, smallest_permutation_p
from distillbench.task import eval_set_note, get_task, list_tasks, scale_note, short_label

MAJORITY = "majority class"
BETTER, WORSE = "▲", "▼"


def _setting(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


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
    def key(self) -> tuple[str, str, str, str]:
        return (self.teacher, self.student, self.setting, self.budget)

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

    def seeds_per_row(self, task: str | None = None) -> dict[tuple, set[int]]:
        """The seeds each (task, method row) ran, on one task or all: how complete a row's evidence is."""
        seeds: dict[tuple, set[int]] = defaultdict(set)
        for record in self.students:
            if task is None or record["task"] == task:
                seeds[row_key(record)[:2]].add(record["seed"])
        return seeds

    @property
    def most_seeds(self) -> int:
        """The most seeds any one method ran on any one task."""
        return max(map(len, self.seeds_per_row().values()), default=0)

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

    def hand_set(self) -> str:
        """The hyper-parameters a row's runs set away from their method's defaults for the task (a sweep's
        ``--set``), e.g. "Set by hand: kd on GEN temperature=1": one row may span tasks whose runs were
        configured differently, and a reader of the table should not have to open the records to see it.
        The start (said by the row's label) and tuned rows (labelled "(tuned)") are left out."""
        found: dict[tuple[str, str], dict[str, Any]] = {}
        for record in self.students:
            if record.get("tuned_from"):
                continue
            changed = {name: value for name, value in hand_set_hparams(record).items() if name != "student_start"}
            if changed:
                found.setdefault((record["task"], method_label(record)), {}).update(changed)
        if not found:
            return ""
        rows = [
            f"{method} on {short_label(task)} "
            + ", ".join(f"{name}={_setting(value)}" for name, value in changed.items())
            for (task, method), changed in sorted(found.items(), key=lambda item: (item[0][1], item[0][0]))
        ]
        return f"Set by hand (every other setting is its method's default for the task): {'; '.join(rows)}."

    def majority(self) -> dict[str, dict[str, float]]:
        """Per task, the majority-class scores its records hold (classification tasks only)."""
        found: dict[str, dict[str, float]] = {}
        for record in self.records:
            if record.get("majority_baseline") and record["task"] not in found:
                found[record["task"]] = record["majority_baseline"]
        return found


def hand_set_hparams(record: dict[str, Any]) -> dict[str, Any]:
    """The hyper-parameters a run's command set: its record's ``hparams_given``; a record made before that
    field existed shows those that differ from its method's defaults for the task today (none for a method
    this installation does not know)."""
    hparams = record.get("hparams") or {}
    if "hparams_given" in record:
        return {name: hparams[name] for name in record["hparams_given"] if name in hparams}
    if record["method"] not in list_methods():
        return {}
    defaults = asdict(get_method(record["method"]).hparams_for(record["task"], {}))
    return {name: value for name, value in hparams.items() if name in defaults and value != defaults[name]}


def group_experiments(
    records: list[dict[str, Any]], numbered_among: list[dict[str, Any]] | None = None
) -> list[Experiment]:
    """Student records grouped by (teacher, student, setting, budget), each with the teacher rows of its
    teacher on its tasks (the same budget preferred); several-seed experiments first, numbered.
    ``numbered_among`` (all the records, when ``records`` is a filtered part of them) gives the numbers and
    their order, so an experiment keeps the number the full leaderboard shows in every filtered view."""
    if numbered_among is not None:
        numbers = {e.key: e.number for e in group_experiments(numbered_among)}
        experiments = group_experiments(records)
        for experiment in experiments:
            experiment.number = numbers[experiment.key]
        return sorted(experiments, key=lambda e: e.number)
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
    experiment: Experiment, score: str, resamples: int = DEFAULT_RESAMPLES, progress: bool = False, seed: int = 0
) -> Significance:
    """Every method against the baselines on each task of the experiment, Holm-corrected over them."""
    return significance(experiment.students, score, resamples, progress, seed)


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
            found = {m: (scores[m], 0.0, 1) for m in task.paper_metrics if m in scores}
            if task.column_label in row and found:
                row[task.column_label] = task.cell(found)
        position = int((cells["method"] == "teacher").sum())
        cells = pd.concat([cells.iloc[:position], pd.DataFrame([row]), cells.iloc[position:]], ignore_index=True)
        best = {(i + (i >= position), column) for i, column in table.best}
    else:
        best = table.best
    costs = budget_cells(experiment)
    if any(costs.values()):
        cells[BUDGET_COLUMN] = [costs.get(method, "") for method in cells["method"]]
    return Table(cells, best, table.title)


def n_legend(cells: pd.DataFrame) -> str:
    """What the ``n`` column means; its two-number form explained only where a cell uses it."""
    uneven = "n" in cells and cells["n"].astype(str).str.contains("/").any()
    return "n: seeds behind each score" + (
        " (2/5: the tasks have different numbers of seeds, fewest first)" if uneven else ""
    )


BUDGET_COLUMN = "labels · train FLOPs"
BUDGET_LEGEND = (
    f"{BUDGET_COLUMN}: the labelled epochs the student saw over all its stages (a fine-tuned start and a "
    "method's own labelled stages count) and the estimated training FLOPs per task (forward + backward of the "
    "student, teacher forwards — one pass when read from a cache — at the median dev length; docs/records.md)."
)


def budget_cells(experiment: Experiment) -> dict[str, str]:
    """Per method row: the labelled epochs its student saw (labelled examples ÷ training set, all its
    stages) and the estimated training FLOPs per task in column order, mean over seeds — ``9 ep · 47 / 36 TF``.
    A method's cost beside its score: TED's lead comes with three times the labelled epochs of KD."""
    by_method: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for record in experiment.students:
        by_method[row_key(record)[1]].append(record)
    cells = {}
    for method, records in by_method.items():
        budgets = [(r, r.get("budget") or {}) for r in records]
        epochs = {
            round(b["student_labelled_examples"] / r["data"]["train_examples"], 1)
            for r, b in budgets
            if b and (r.get("data") or {}).get("train_examples")
        }
        means = []
        for task in experiment.tasks:
            values = [b.get("training_flops") for r, b in budgets if r["task"] == task and b]
            known = [v for v in values if v is not None]
            means.append(sum(known) / len(known) if known and len(known) == len(values) else None)
        if epochs:
            label = "/".join(f"{e:g}" for e in sorted(epochs)) + " ep"
            cells[method] = f"{label} · {flops_text(means)}" if any(means) else label
    return cells


def has_costs(experiment: Experiment) -> bool:
    """Whether any student record of the experiment estimates its training FLOPs (a cost figure to draw)."""
    return any((r.get("budget") or {}).get("training_flops") for r in experiment.students)


FLOP_UNITS = ((1e15, "PF"), (1e12, "TF"), (1e9, "GF"))


def flops_text(values: list[float | None]) -> str:
    """``18.3 / 13.9 TF``: one unit for the cell, from its largest value; ``–`` where a task has none."""
    largest = max(v for v in values if v is not None)
    scale, unit = next(((s, u) for s, u in FLOP_UNITS if largest >= s), FLOP_UNITS[-1])
    return " / ".join("–" if v is None else f"{v / scale:.3g}" for v in values) + f" {unit}"


def findings_table(marks: Significance) -> pd.DataFrame:
    """One line per comparison: the bootstrap over dev examples (difference, 95 % CI, Holm-corrected p)
    beside the test across seeds (its p and the smallest p it can reach with these seeds)."""
    rows = []
    for finding in marks.findings:
        comparison = finding.comparison
        rows.append(
            {
                "task": short_label(finding.key[0]),
                "method": finding.key[1],
                "vs": comparison.baseline,
                "Δ [95% CI]": difference_text(finding),
                "p examples (Holm)": holm_text(finding),
                "p seeds (min)": seeds_text(finding),
            }
        )
    return pd.DataFrame(rows)


def difference_text(finding) -> str:
    """``+11.2 [+9.9, +12.7] ▲``: the paired difference, its 95 % CI and the corrected verdict."""
    task = get_task(finding.key[0])
    boot, scale = finding.comparison.bootstrap, task.display_scale
    digits = task.decimals(finding.comparison.metric.split("/")[-1])  # ROUGE-L as scored differs in the third
    mark = (BETTER if finding.better else WORSE) if finding.significant else ""
    low, high = scale * boot.low, scale * boot.high
    return f"{scale * boot.difference:+.{digits}f} [{low:+.{digits}f}, {high:+.{digits}f}] {mark}".rstrip()


def findings_legend(marks: Significance) -> str:
    if not marks.findings:
        return marks.legend()
    resamples = min(f.comparison.bootstrap.resamples for f in marks.findings)
    tasks = list(dict.fromkeys(f.key[0] for f in marks.findings))
    return (
        f"Δ: difference of the task's main metric ({scale_note(tasks)}) over the seeds both methods ran; 95% CI "
        "and p from a "
        f"paired bootstrap over dev examples ({resamples:,} resamples, {REFINED_RESAMPLES}× for a p near the "
        "threshold) — would the gap survive another dev set? "
        f"p is Holm-corrected over the {len(marks.findings)} comparisons of this experiment; {BETTER} / {WORSE}: "
        f"better / worse at p < {ALPHA}; borderline: still within twice its Monte-Carlo error of {ALPHA}, so "
        "another bootstrap seed could move it across: no mark. The CI is not corrected, so a CI that excludes 0 "
        "without a mark is a difference that does not survive the correction. p seeds: exact permutation test "
        "of the per-seed scores — would it survive other training seeds? — with the smallest p it can reach for "
        "that many seeds in brackets: a p at its minimum is as strong as those seeds can say." + marks.skipped_note()
    )


def headline(experiment: Experiment, marks: Significance) -> pd.DataFrame:
    """The findings table that opens a reading: task × method, each method against fine-tuning — the
    difference, its 95 % CI and the Holm-corrected verdict over dev examples, beside the test across
    seeds (its p and, in brackets, the smallest p that many seeds can give)."""
    baseline = marked_baselines()[0]
    rows = []
    for finding in marks.findings:
        if finding.comparison.baseline != baseline:
            continue
        rows.append(
            {
                "task": short_label(finding.key[0]),
                "method": finding.key[1],
                f"Δ vs {baseline} [95% CI]": difference_text(finding),
                "p examples (Holm)": holm_text(finding),
                "p seeds (min)": seeds_text(finding),
            }
        )
    return pd.DataFrame(rows)


def holm_text(finding) -> str:
    """``0.05 (borderline)``: the Holm-corrected p over dev examples, flagged when it is unsettled."""
    return format_p(finding.adjusted_p) + (" (borderline)" if finding.unsettled else "")


def seeds_text(finding) -> str:
    """``0.008 (min 0.008)``: the across-seed p and the smallest p its seeds allow, or ASO's ε."""
    comparison = finding.comparison
    seeds = comparison.across_seeds
    if seeds.p_value is not None:
        return f"{format_p(seeds.p_value)} (min {format_p(smallest_permutation_p(*comparison.seed_counts))})"
    return f"ASO ε {seeds.statistic:.2f}" if seeds.name == "aso" else "—"


NOTHING_RANKED = "No experiment with several seeds and a baseline yet: nothing is ranked."


def headline_intro(experiment: Experiment) -> str:
    scored_on = eval_set_note(experiment.tasks)
    return f"{experiment.title()} — each method against fine-tuning on the {scored_on}, final epoch."


def headline_legend(marks: Significance) -> str:
    return (
        f"Δ: difference in the main metric {scale_note(list(dict.fromkeys(f.key[0] for f in marks.findings)))}, "
        f"[95% CI] over dev examples; {BETTER} / {WORSE}: better / worse "
        f"after Holm's correction over the experiment's {len(marks.findings)} comparisons (p < {ALPHA}); no "
        "mark: not significant after it (the CI is uncorrected). p seeds: exact permutation test of the "
        "per-seed scores, with the smallest p those seeds can give."
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
        counted = f"{len(mine)} comparison{'s' if len(mine) != 1 else ''}"
        counts = [len(seeds) for seeds in experiment.seeds_per_row(task_name).values()]
        fewest, most = min(counts), max(counts)
        if fewest < len(experiment.seeds):  # a task whose seeds are still running reads as partial, not settled
            counted += f", {fewest}{f'–{most}' if most > fewest else ''} of {len(experiment.seeds)} seeds per method"
        lines.append(f"- **{short_label(task_name)}** ({counted}): " + "; ".join(parts) + ".")
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
                present = {
                    m: (f.iloc[0]["mean"], f.iloc[0]["std"], int(f.iloc[0]["n"]))
                    for m, f in zip(task.paper_metrics, found, strict=True)
                    if len(f)
                }
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
                        "score": task.cell(present),
                        "metrics": task.column_label.removeprefix(short_label(task_name)).strip(),
                    }
                )
    return pd.DataFrame(rows)
