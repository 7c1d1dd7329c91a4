"""Paper-style leaderboards from run records: filter, group, aggregate over seeds, render with pandas.

Records are the only input. A record is *usable* when it is complete, carries a clean git commit, and
agrees on configuration with the rest of its group; everything else is counted and reported, never
silently mixed in. Reference numbers (the TED paper's code) are a separate block, never a measured row.
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from importlib.resources import files
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from distillbench.config import result_settings
from distillbench.errors import UserError
from distillbench.method import baseline_methods, get_method, method_registry
from distillbench.portable import packaged_alias
from distillbench.records import read_records
from distillbench.significance import ALPHA, DEFAULT_RESAMPLES, Comparison, compare_records, holm
from distillbench.task import get_task, list_tasks

FORMATS = ("md", "latex", "csv", "html")
SCORES = ("final", "best")
CONFIG_EXCLUDED = ("seed", "finished_at", "wall_time_s", "command", "hardware", "git", "packages", "_path")


def model_label(source: str | None) -> str:
    """Short name of a model: the packaged alias when it is one, else the folder or hub id."""
    if not source:
        return "?"
    return packaged_alias(source) or Path(source.split(":", 1)[-1]).name


def student_label(model: dict[str, Any]) -> str:
    spec = model.get("student") or {}
    if spec.get("kind") == "layers":
        return f"{model_label(model.get('teacher_source'))} layers {','.join(map(str, spec['layer_ids']))}"
    if spec.get("kind") == "random":
        return f"random {spec['num_layers']}L"
    if spec.get("origin"):
        return f"{spec['origin']['method']}-{spec['origin']['task']} student"
    return model_label(spec.get("source"))


def teacher_label(record: dict[str, Any]) -> str:
    """The teacher's model, and its seed when pinned (``--teacher-seed``): one fine-tuned teacher shared
    by every student seed is another experiment than a teacher fine-tuned per seed."""
    members = (record.get("teacher") or {}).get("members")
    if members:
        return ensemble_label(members)
    model = record.get("model") or {}
    label = model_label(model.get("teacher_source") or model.get("source"))
    pinned = record.get("teacher_seed")
    return label if pinned is None else f"{label} (seed {pinned})"


def ensemble_label(members: list[dict[str, Any]]) -> str:
    """``3-teacher ensemble: minilm-l6 (seeds 1, 2, 3)``, or each member named when the models differ."""
    pairs = [(model_label(m["settings"]["init"]["source"]), m["settings"]["seed"]) for m in members]
    models = {model for model, _ in pairs}
    if len(models) == 1:
        seeds = ", ".join(str(seed) for _, seed in pairs)
        return f"{len(pairs)}-teacher ensemble: {models.pop()} (seeds {seeds})"
    return f"{len(pairs)}-teacher ensemble: " + ", ".join(f"{model} (seed {seed})" for model, seed in pairs)


@dataclass
class Selection:
    """Usable records plus what was left out and why."""

    records: list[dict[str, Any]] = field(default_factory=list)
    excluded: Counter = field(default_factory=Counter)

    def report(self) -> str:
        kept = f"{len(self.records)} records used"
        if not self.excluded:
            return kept
        return kept + "; excluded: " + ", ".join(f"{n} {why}" for why, n in sorted(self.excluded.items()))


def budget_label(record: dict[str, Any]) -> str:
    """The training budget of a record's (student or teacher) stage: steps when capped, else epochs."""
    train = record.get("train") or {}
    if record.get("role") == "teacher":
        steps, epochs = train.get("teacher_max_steps", -1), train.get("teacher_epochs") or train.get("epochs")
    else:
        steps, epochs = train.get("max_steps", -1), train.get("epochs")
    if steps and steps > 0:
        return f"{steps} steps"
    return f"{epochs:g} ep" if epochs is not None else "?"


EXPERIMENT = ("teacher", "student", "setting", "budget")


TUNED = " (tuned)"


def method_label(record: dict[str, Any]) -> str:
    """A record's row name: the teacher, its method, or "<method> (tuned)" for a student started from a
    study's best parameters (``run --params best``), another configuration in a row of its own that the
    significance markers compare with the reference row of the same method."""
    if record.get("role") == "teacher":
        return "teacher"
    return record["method"] + (TUNED if record.get("tuned_from") else "")


def row_key(record: dict[str, Any]) -> tuple[str, ...]:
    """(task, method, *EXPERIMENT): what one table cell pools over seeds, and nothing else."""
    method = method_label(record)
    student = "-" if record.get("role") == "teacher" else student_label(record.get("model") or {})
    setting = record.get("setting", "task-specific")
    return (record["task"], method, teacher_label(record), student, setting, budget_label(record))


def config_fingerprint(record: dict[str, Any]) -> str:
    """Everything that should agree between seeds of one group: hparams, training settings, data."""
    train = result_settings(record.get("train") or {})
    return json.dumps(
        {
            "hparams": record.get("hparams"),
            "train": train,
            "data": (record.get("data") or {}).get("sha256"),
            "preset": record.get("preset"),
            # a pinned teacher seed is part of the experiment: seeds of it share one teacher
            "teacher_seed": record.get("teacher_seed"),
            # several processes train on a larger global batch than the per-device one recorded in train
            "processes": (record.get("distributed") or {}).get("processes", 1),
        },
        sort_keys=True,
        default=str,
    )


def bounded_by(record: dict[str, Any]) -> list[str]:
    """Why a record's budget was cut short of its schedule (a preset, ``--max-steps``, a subset of the
    training set): a smoke test or a demo, not a result. Empty for a full run."""
    train = record.get("train") or {}
    reasons = [f"preset {record['preset']}"] if record.get("preset") else []
    reasons += [f"{name}={train[name]}" for name in ("max_steps", "teacher_max_steps") if (train.get(name) or -1) > 0]
    if train.get("max_train_samples"):
        reasons.append(f"max_train_samples={train['max_train_samples']}")
    return reasons


def select(records: list[dict[str, Any]], include_dirty: bool = False, include_bounded: bool = False) -> Selection:
    """Drop incomplete, dirty-tree, tuning-trial (a study is its own evidence) and bounded (a preset such
    as the demo, ``--max-steps``, ``max_train_samples``; kept when asked) records; within a group keep the
    configuration most seeds share (ties: the newest), and of several runs of one seed the newest (a
    rerun is not another seed). A teacher row is the dev score of the teacher its students distilled
    from, as their records hold it (a teacher record of its own stands in where no student says)."""
    selection = Selection()
    candidates = []
    for record in records:
        if record.get("status") != "complete" or not record.get("metrics") or record.get("task") is None:
            selection.excluded["incomplete"] += 1
        elif not (record.get("git") or {}).get("commit"):
            selection.excluded["without a git commit"] += 1
        elif (record.get("git") or {}).get("dirty") and not include_dirty:
            selection.excluded["from a dirty tree"] += 1
        elif (record.get("tags") or {}).get("study"):
            selection.excluded["tuning trials"] += 1
        elif bounded_by(record) and not include_bounded:
            selection.excluded["bounded (preset, --max-steps; --include-bounded shows them)"] += 1
        else:
            candidates.append(record)
    teachers = read_teachers(candidates)
    spoken_for = {row_key(r) for r in teachers}
    chosen = {r["run_id"] for r in teachers}
    candidates = [
        r
        for r in candidates
        if r.get("role") != "teacher" or (r["run_id"] not in chosen and row_key(r) not in spoken_for)
    ]
    candidates += teachers
    groups: dict[tuple, dict[str, list]] = defaultdict(lambda: defaultdict(list))
    for record in candidates:
        groups[row_key(record)][config_fingerprint(record)].append(record)
    for variants in groups.values():
        ranked = sorted(variants.values(), key=lambda rs: (len(rs), max(r.get("finished_at", "") for r in rs)))
        newest_per_seed = {r.get("seed"): r for r in sorted(ranked[-1], key=lambda r: r.get("finished_at", ""))}
        selection.records.extend(newest_per_seed.values())
        selection.excluded["repeats of a seed (the newest counts)"] += len(ranked[-1]) - len(newest_per_seed)
        selection.excluded["disagreeing on configuration"] += sum(len(rs) for rs in ranked[:-1])
    selection.excluded = +selection.excluded
    return selection


def read_teachers(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """A teacher row for every distinct teacher (or ensemble) the student records distilled from: the
    teacher's own record when it is there (its run id is the key the students name), else a row read
    from a student's record, which holds the teacher's dev score (an ensemble's is only there). Counted
    once per teacher: the teacher's seeds, not the students', make its n."""
    own_records = {r.get("run_id"): r for r in records if r.get("role") == "teacher"}
    found: dict[tuple, dict[str, Any]] = {}
    for record in records:
        teacher = record.get("teacher") or {}
        if record.get("role") != "student" or not teacher.get("metrics"):
            continue
        members = teacher.get("members") or [teacher]
        key = (row_key(record)[2:], record["task"], *(member["key"] for member in members))
        if key in found:
            continue
        own = own_records.get(teacher.get("key")) if not teacher.get("members") else None
        if own is not None:  # labelled as its students name it: a teacher built unpinned, read by pinned students
            found[key] = own | {"teacher_seed": record.get("teacher_seed")}
            continue
        found[key] = {
            **{k: record.get(k) for k in ("kind", "task", "setting", "git", "train", "data", "main_metric")},
            **{k: record.get(k) for k in ("model", "teacher_seed", "preset", "majority_baseline")},
            "role": "teacher",
            "method": "finetune",
            "status": "complete",
            "seed": members[0]["settings"]["seed"],
            "hparams": {},
            "teacher": teacher,
            "metrics": teacher["metrics"],
            "epochs": teacher.get("epochs"),
            "run_id": "teacher-" + "-".join(member["key"].rsplit("-", 1)[-1] for member in members),
            # the score is read from this student record, which names it in its provenance
            "_path": record.get("_path"),
            "derived_from": record.get("run_id"),
        }
    unique = {(row_key(r), r["run_id"]): r for r in found.values()}  # one teacher may serve several experiments
    return list(unique.values())


def score_of(record: dict[str, Any], score: str) -> dict[str, float]:
    if score == "best" and record.get("best_epoch"):
        return record["best_epoch"]["metrics"]
    return record["metrics"]


def aggregate(records: list[dict[str, Any]], score: str = "final") -> pd.DataFrame:
    """One row per (task, method, teacher, student, setting, metric): mean, std (ddof 1), n seeds."""
    rows = []
    grouped: dict[tuple, list[dict[str, Any]]] = defaultdict(list)
    for record in records:
        grouped[row_key(record)].append(record)
    for key, members in grouped.items():
        metrics = sorted({m for r in members for m in score_of(r, score)})
        for metric in metrics:
            values = [score_of(r, score)[metric] for r in members if metric in score_of(r, score)]
            rows.append(
                dict(
                    zip(("task", "method", *EXPERIMENT), key, strict=True),
                    metric=metric,
                    mean=float(np.mean(values)),
                    std=float(np.std(values, ddof=1)) if len(values) > 1 else 0.0,
                    n=len(values),
                    seeds=sorted({r["seed"] for r in members}),
                )
            )
    columns = ["task", "method", *EXPERIMENT, "metric", "mean", "std", "n", "seeds"]
    return pd.DataFrame(rows, columns=columns)


def load_reference() -> dict[str, Any]:
    return json.loads(files("distillbench").joinpath("data/ted_reference.json").read_text())


@dataclass
class Table:
    """A rendered-ready leaderboard: the cell strings, the best cells, and the numbers behind them."""

    cells: pd.DataFrame
    best: set[tuple[int, str]]
    title: str


def format_cell(stats: list[tuple[float, float, int]], scale: float, decimals: int) -> str:
    parts = []
    for mean, std, n in stats:
        text = f"{mean * scale:.{decimals}f}"
        if n > 1:
            text += f"±{std * scale:.{decimals}f}"
        parts.append(text)
    return "/".join(parts)


def method_order(label: str) -> tuple[int, str]:
    """The teacher row first, then methods by the ``table_order`` they declare (unknown ones last), a
    tuned row right after its method's reference row."""
    if label == "teacher":
        return (-1, label)
    method = label.removesuffix(TUNED)
    return (get_method(method).table_order if method in method_registry else 10**6, label)


MARKS = (("†", "‡"), ("⁺", "⁻"))  # better / worse than the first baseline, then the second


def marked_baselines() -> list[str]:
    """The baselines a table marks cells against (one pair of markers each)."""
    return baseline_methods()[: len(MARKS)]


@dataclass(frozen=True)
class Finding:
    """One method against one baseline on one task of one experiment: the comparison, its p-value after
    Holm's correction over its table, and which baseline (0: the first, 1: the second) it was against."""

    key: tuple
    comparison: Comparison
    position: int
    adjusted_p: float

    @property
    def significant(self) -> bool:
        return self.adjusted_p < ALPHA

    @property
    def better(self) -> bool:
        return (self.comparison.bootstrap.difference > 0) == get_task(self.key[0]).greater_is_better


@dataclass
class Significance:
    """Cell markers from paired bootstraps against the baselines, Holm-corrected over one table, and every
    comparison that could not be made with its reason (never dropped silently)."""

    findings: list[Finding] = field(default_factory=list)
    skipped: list[tuple[tuple, str, str]] = field(default_factory=list)  # (row key, baseline, reason)

    @property
    def markers(self) -> dict[tuple, str]:
        marks: dict[tuple, str] = {}
        for finding in self.findings:
            if finding.significant:
                marks[finding.key] = marks.get(finding.key, "") + MARKS[finding.position][0 if finding.better else 1]
        return marks

    def legend(self) -> str:
        if not self.findings and not self.skipped:
            return f"No significance markers: no baseline ({', '.join(marked_baselines())}) ran beside these rows."
        if not self.findings:
            return "No significance markers." + self.skipped_note()
        names = marked_baselines()
        marks = "; ".join(
            f"{up} / {down}: better / worse than {name}" for (up, down), name in zip(MARKS, names, strict=False)
        )
        resamples = self.findings[0].comparison.bootstrap.resamples
        return (
            f"{marks}, on each task's main metric — paired bootstrap over dev examples ({resamples:,} resamples, "
            "seed pairs averaged), "
            f"Holm-corrected over the {len(self.findings)} comparisons of this table, p < {ALPHA}."
        ) + self.skipped_note()

    def skipped_note(self) -> str:
        if not self.skipped:
            return ""
        return f" {len(self.skipped)} comparison(s) could not be made and are not counted: " + "; ".join(
            f"{key[0]} {key[1]} vs {baseline}: {why}" for key, baseline, why in self.skipped
        )


def significance(
    records: list[dict[str, Any]], score: str, resamples: int = DEFAULT_RESAMPLES, progress: bool = False
) -> Significance:
    """Compare every method with every baseline of the same task and experiment (teacher, student,
    setting) on the main metric; Holm's correction over all of them; a cell whose corrected p is below
    0.05 gets a marker. A bar shows the bootstraps being computed (cached ones take no time)."""
    from tqdm.auto import tqdm

    groups: dict[tuple, list[dict[str, Any]]] = defaultdict(list)
    for record in records:
        groups[row_key(record)].append(record)
    result = Significance()
    baselines = marked_baselines()
    planned = []
    for position, baseline in enumerate(baselines):
        for key, members in groups.items():
            task, method, *experiment = key
            base = groups.get((task, baseline, *experiment))
            if method == "teacher" or method in baselines[: position + 1] or not base:
                continue  # an earlier baseline was already compared with this one
            planned.append((key, members, base, position, baseline))
    made = []
    for key, members, base, position, baseline in tqdm(
        planned, desc="significance", unit="comparison", disable=not progress or None, leave=False
    ):
        missing = [r.get("run_id") for r in [*members, *base] if not r.get("predictions")]
        if missing:
            result.skipped.append((key, baseline, f"no stored predictions in {', '.join(map(str, missing))}"))
            continue
        try:
            made.append((key, compare_records(members, base, score, resamples), position))
        except UserError as error:
            result.skipped.append((key, baseline, str(error)))
    adjusted = holm([comparison.bootstrap.p_value for _, comparison, _ in made])
    result.findings = [
        Finding(key, comparison, position, p) for (key, comparison, position), p in zip(made, adjusted, strict=True)
    ]
    return result


def build_table(
    stats: pd.DataFrame,
    tasks: list[str] | None = None,
    methods: list[str] | None = None,
    title: str = "",
    markers: dict[tuple, str] | None = None,
) -> Table:
    """Rows = (method, teacher, student, setting); one column per task with its paper metrics; a
    benchmark average (e.g. GLUE avg) over the tasks present; the best student per column is marked."""
    if tasks:
        stats = stats[stats["task"].isin(tasks)]
    if methods:
        stats = stats[stats["method"].isin([*methods, "teacher"])]
    task_names = [t for t in list_tasks() if t in set(stats["task"])]
    row_keys = sorted(
        {tuple(r) for r in stats[["method", *EXPERIMENT]].itertuples(index=False)},
        key=lambda k: (k[3], k[4], k[1], method_order(k[0]), k[2]),
    )
    lookup = {
        (r.task, r.method, r.teacher, r.student, r.setting, r.budget, r.metric): (r.mean, r.std, r.n)
        for r in stats.itertuples(index=False)
    }
    records, main_scores = [], defaultdict(dict)
    in_benchmark = [get_task(t).benchmark for t in task_names if get_task(t).benchmark]
    benchmarks = sorted(b for b in set(in_benchmark) if in_benchmark.count(b) > 1)  # an average of one task is none
    for index, (method, *experiment) in enumerate(row_keys):
        row: dict[str, Any] = {"method": method, **dict(zip(EXPERIMENT, experiment, strict=True))}
        ns, averages = set(), defaultdict(list)
        for task_name in task_names:
            task = get_task(task_name)
            found = [lookup.get((task_name, method, *experiment, m)) for m in task.paper_metrics]
            present = [f for f in found if f is not None]
            mark = (markers or {}).get((task_name, method, *experiment), "")
            row[task.column_label] = (
                format_cell(present, task.display_scale, task.display_decimals) + mark if present else ""
            )
            if present:
                ns.update(f[2] for f in present)
                main_scores[task.column_label][index] = present[0][0] * (1 if task.greater_is_better else -1)
                if task.benchmark:
                    averages[task.benchmark].append(float(np.mean([f[0] for f in present])))
        for benchmark in benchmarks:
            tasks_in = [t for t in task_names if get_task(t).benchmark == benchmark]
            label = average_label(benchmark, tasks_in)
            complete = len(averages[benchmark]) == len(tasks_in)
            scale = get_task(tasks_in[0]).display_scale
            row[label] = f"{scale * np.mean(averages[benchmark]):.1f}" if complete else ""
            if complete:
                main_scores[label][index] = float(np.mean(averages[benchmark]))
        row["n"] = "/".join(str(n) for n in sorted(ns))
        records.append(row)
    cells = pd.DataFrame(records)
    best = set()
    for column, scores in main_scores.items():
        students = {i: s for i, s in scores.items() if cells.loc[i, "method"] != "teacher"}
        if len(students) > 1:
            top = max(students.values())
            best.update((i, column) for i, s in students.items() if s == top)
    return Table(cells, best, title)


def average_label(benchmark: str, tasks_in: list[str]) -> str:
    """``GLUE avg`` only over every task of the benchmark; otherwise it names what it averages."""
    every = [t for t in list_tasks() if get_task(t).benchmark == benchmark]
    if set(tasks_in) >= set(every):
        return f"{benchmark} avg"
    return "avg " + ", ".join(get_task(t).column_label.split(" ")[0] for t in tasks_in)


def reference_table(stats: pd.DataFrame, tasks: list[str] | None = None) -> pd.DataFrame:
    """The TED reference numbers beside each measured experiment of the same method, task and metric,
    with measured-minus-reference deltas. One row per experiment (teacher, student, setting): students
    of different experiments (e.g. pre-trained first, or another student) are never averaged together."""
    reference = load_reference()
    columns = ["method", "task", "metric", *EXPERIMENT, "n", "reference", "measured", "delta"]
    rows = []
    for method, by_task in reference["results"].items():
        for task, metrics in by_task.items():
            if tasks and task not in tasks:
                continue
            scale = get_task(task).display_scale
            for metric, value in metrics.items():
                mine = stats[(stats["method"] == method) & (stats["task"] == task) & (stats["metric"] == metric)]
                base = {"method": method, "task": task, "metric": metric, "reference": value}
                if mine.empty:
                    rows.append(base)
                for r in mine.itertuples(index=False):
                    measured = round(scale * r.mean, 1)
                    rows.append(
                        base
                        | {
                            "teacher": r.teacher,
                            "student": r.student,
                            "setting": r.setting,
                            "budget": r.budget,
                            "n": r.n,
                        }
                        | {"measured": measured, "delta": round(measured - value, 1)}
                    )
    return pd.DataFrame(rows, columns=columns, dtype=object)


LATEX_ESCAPES = {
    "\\": r"\textbackslash{}",
    "&": r"\&",
    "%": r"\%",
    "_": r"\_",
    "#": r"\#",
    "$": r"\$",
    "{": r"\{",
    "}": r"\}",
    "~": r"\textasciitilde{}",
    "^": r"\textasciicircum{}",
    "±": r"$\pm$",
}


def _escape_latex(text: str) -> str:
    return "".join(LATEX_ESCAPES.get(char, char) for char in str(text))


def render(table: Table, fmt: str) -> str:
    """Markdown, LaTeX, CSV or HTML through pandas; best cells bold (md/latex/html) or flagged (csv)."""
    if fmt not in FORMATS:
        raise UserError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")
    cells = table.cells.copy()
    if fmt == "csv":
        cells["best"] = [";".join(c for i, c in sorted(table.best) if i == row) for row in cells.index]
        return cells.to_csv(index=False)
    if fmt == "md":
        for row, column in table.best:
            cells.loc[row, column] = f"**{cells.loc[row, column]}**"
        return cells.to_markdown(index=False, disable_numparse=True) + "\n"
    if fmt == "latex":
        escaped = cells.map(_escape_latex)
        escaped.columns = [_escape_latex(c) for c in cells.columns]
        styler = escaped.style.hide(axis="index")
        for row, column in table.best:
            styler = styler.set_properties(
                subset=pd.IndexSlice[[row], [_escape_latex(column)]], **{"font-weight": "bold"}
            )
        return styler.to_latex(convert_css=True, hrules=True, caption=_escape_latex(table.title) or None)
    styler = cells.style.hide(axis="index")
    for row, column in table.best:
        styler = styler.set_properties(subset=pd.IndexSlice[[row], [column]], **{"font-weight": "bold"})
    return styler.to_html(caption=table.title or None)


def collect(results_dir: Path, include_dirty: bool = False, include_bounded: bool = False) -> Selection:
    if not results_dir.is_dir():
        raise UserError(f"results directory {results_dir} does not exist")
    unreadable: list[Path] = []
    selection = select(read_records(results_dir, unreadable), include_dirty, include_bounded)
    if unreadable:
        selection.excluded["unreadable (not valid JSON)"] += len(unreadable)
    return selection
