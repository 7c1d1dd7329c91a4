"""Campaigns: a grid of ordinary runs (methods × tasks × seeds), resumable, with one overall progress bar.

Each cell is exactly the ``distillbench run`` its arguments spell, so it writes the same record and
shares the same stage caches. A cell whose complete record (same run key) exists is skipped; a cell
killed half-way has no record and resumes from its last checkpoint. Cells run task by task, seed by
seed, in the methods' listed order, so the first cell of a task builds the teacher stage and every later
cell reads it (as every stage shared by several methods is built by the first that needs it).
"""

from __future__ import annotations

import time
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from distillbench.errors import HeldElsewhere, UserError, one_line

SPEC_KEYS = {"methods", "tasks", "seeds", "args", "task_args", "method_args", "estimate", "results_dir"}


@dataclass
class SweepSpec:
    """The grid and the run arguments: common, per task and per method (flags as on the command line)."""

    methods: list[str]
    tasks: list[str]
    seeds: list[int]
    args: list[str] = field(default_factory=list)
    task_args: dict[str, list[str]] = field(default_factory=dict)
    method_args: dict[str, list[str]] = field(default_factory=dict)
    # where the records go, relative to the working directory: the committed campaign files name the
    # published ``results``; None: the user's workspace
    results_dir: Path | None = None

    @classmethod
    def from_toml(cls, path: Path) -> SweepSpec:
        """A committed sweep file (``sweeps/<name>.toml``); unknown keys are errors, not silently ignored."""
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except OSError as error:
            raise UserError(f"cannot read sweep file {path}: {error.strerror}") from None
        except UnicodeDecodeError:
            raise UserError(f"sweep file {path}: not UTF-8 text") from None
        except tomllib.TOMLDecodeError as error:
            raise UserError(f"sweep file {path}: {error}") from None
        unknown = sorted(set(data) - SPEC_KEYS)
        if unknown:
            raise UserError(f"sweep file {path}: unknown key {unknown[0]!r} (known: {', '.join(sorted(SPEC_KEYS))})")
        missing = [key for key in ("methods", "tasks", "seeds") if key not in data]
        if missing:
            raise UserError(f"sweep file {path}: missing key {missing[0]!r}")
        where = f"sweep file {path}"
        spec = cls(
            methods=names_of(data["methods"], f"{where}: methods"),
            tasks=names_of(data["tasks"], f"{where}: tasks"),
            seeds=seeds_of(data["seeds"], f"{where}: seeds"),
            args=strings_of(data.get("args", []), f"{where}: args"),
            task_args=table_of(data.get("task_args", {}), f"{where}: task_args"),
            method_args=table_of(data.get("method_args", {}), f"{where}: method_args"),
            results_dir=Path(data["results_dir"]) if isinstance(data.get("results_dir"), str) else None,
        )
        if "results_dir" in data and not isinstance(data["results_dir"], str):
            raise UserError(f"{where}: results_dir must be a string (a folder)")
        spec.check_extras(where)
        return spec

    def check_extras(self, where: str) -> None:
        """task_args / method_args name only tasks and methods of the grid: a typo is an error, not lost."""
        for kind, extras, grid in (
            ("task_args", self.task_args, self.tasks),
            ("method_args", self.method_args, self.methods),
        ):
            stray = sorted(set(extras) - set(grid))
            if stray:
                raise UserError(f"{where}: {kind} for {stray[0]!r}, which is not in the grid ({', '.join(grid)})")

    def cells(self) -> list[tuple[str, str, int, list[str]]]:
        """(task, method, seed, run arguments) in execution order."""
        return [
            (
                task,
                method,
                seed,
                [
                    *("--method", method, "--task", task, "--seed", str(seed)),
                    *self.args,
                    *self.task_args.get(task, []),
                    *self.method_args.get(method, []),
                ],
            )
            for task in self.tasks
            for seed in self.seeds
            for method in self.methods
        ]


def parse_list(text: str, kind: str) -> list[str]:
    items = [item.strip() for item in text.split(",") if item.strip()]
    if not items:
        raise UserError(f"--{kind} needs a comma-separated list")
    return items


@dataclass
class Cell:
    task: str
    method: str
    seed: int
    argv: list[str]
    plan: Any
    done: bool
    estimate_s: float | None

    @property
    def label(self) -> str:
        return f"{self.task} {self.method} seed {self.seed}"


def strings_of(value: Any, where: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise UserError(f"{where}: expected a list of strings, got {value!r}")
    return value


def names_of(value: Any, where: str) -> list[str]:
    """A list of distinct names: a repeated one would plan the same cells twice."""
    names = strings_of(value, where)
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise UserError(f"{where}: {repeated[0]!r} is listed twice")
    return names


def seeds_of(value: Any, where: str) -> list[int]:
    """Distinct non-negative integers, as written: "1", 1.7 or true are errors, not converted."""
    if not isinstance(value, list) or not all(type(v) is int for v in value):
        raise UserError(f"{where}: expected a list of integers, got {value!r}")
    if any(v < 0 for v in value):
        raise UserError(f"{where}: seeds are non-negative integers, got {min(value)}")
    repeated = sorted({v for v in value if value.count(v) > 1})
    if repeated:
        raise UserError(f"{where}: seed {repeated[0]} is listed twice")
    return value


def table_of(value: Any, where: str) -> dict[str, list[str]]:
    if not isinstance(value, dict):
        raise UserError(f"{where}: expected a table of name = [arguments]")
    return {name: strings_of(arguments, f"{where}.{name}") for name, arguments in value.items()}


def wall_time_estimates(records: list[dict[str, Any]]) -> dict[tuple[str, str], float]:
    """Mean wall time of earlier complete student runs per (task, method): the sweep's ETA."""
    times: dict[tuple[str, str], list[float]] = {}
    for record in records:
        if record.get("role") == "student" and record.get("status") == "complete" and record.get("wall_time_s"):
            times.setdefault((record["task"], record["method"]), []).append(float(record["wall_time_s"]))
    return {key: sum(values) / len(values) for key, values in times.items()}


def plan_cells(spec: SweepSpec, extra: list[str], parse: Callable[[list[str]], Any], results_dir: Path) -> list[Cell]:
    """Validate every cell before any runs (a typo fails the sweep at once, not hours in)."""
    from distillbench.records import read_records

    records = read_records(results_dir) if results_dir.is_dir() else []
    complete = {Path(r["_path"]).name for r in records if r.get("status") == "complete"}
    estimates = wall_time_estimates(records)
    cells = []
    for task, method, seed, argv in spec.cells():
        try:
            plan = parse([*argv, *extra])
        except UserError as error:
            raise UserError(f"sweep cell {task} {method} seed {seed}: {error}") from None
        done = f"{plan.run_name}.json" in complete
        cells.append(Cell(task, method, seed, [*argv, *extra], plan, done, estimates.get((task, method))))
    return cells


def format_minutes(seconds: float | None) -> str:
    return "?" if seconds is None else f"{seconds / 60:.0f} min"


def dry_run_text(cells: list[Cell]) -> str:
    lines = [f"{'task':<10} {'method':<10} {'seed':>4}  {'state':<5} {'estimate':>9}  run"]
    for cell in cells:
        state = "done" if cell.done else "todo"
        estimate = "" if cell.done else format_minutes(cell.estimate_s)
        lines.append(
            f"{cell.task:<10} {cell.method:<10} {cell.seed:>4}  {state:<5} {estimate:>9}  {cell.plan.run_name}"
        )
    todo = [c for c in cells if not c.done]
    known = [c.estimate_s for c in todo if c.estimate_s is not None]
    total = f"≈{format_minutes(sum(known))}" + (
        f" + {len(todo) - len(known)} cells without an estimate" if len(known) < len(todo) else ""
    )
    if todo and not known:
        total = "no estimate yet"
    lines.append(f"{len(cells)} cells: {len(cells) - len(todo)} done, {len(todo)} to run, estimated {total}")
    lines.append("estimates: mean wall time of earlier records of the same task and method")
    return "\n".join(lines)


@dataclass
class SweepOutcome:
    ran: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)
    elsewhere: list[str] = field(default_factory=list)  # cells another process was running

    def summary(self) -> str:
        lines = [
            f"sweep: {len(self.ran)} ran, {len(self.skipped)} already complete, "
            f"{len(self.elsewhere)} running elsewhere, {len(self.failed)} failed"
        ]
        lines += [f"  running elsewhere: {label} (another process holds it)" for label in self.elsewhere]
        lines += [f"  failed: {label}: {reason}" for label, reason in self.failed]
        return "\n".join(lines)


def run_cells(
    cells: list[Cell], execute: Callable[[Cell], None], show_progress: bool, results_dir: Path
) -> SweepOutcome:
    """Run every cell not yet done, each under its claim (``claims.py``): a cell another worker holds or
    has finished meanwhile is passed over, a failing cell is reported and the others still run."""
    from tqdm.auto import tqdm

    from distillbench.claims import record_complete, run_claimed

    outcome = SweepOutcome(skipped=[c.label for c in cells if c.done])
    todo = [c for c in cells if not c.done]
    bar = tqdm(total=len(cells), initial=len(cells) - len(todo), unit="cell", desc="sweep", disable=not show_progress)
    with bar:
        for position, cell in enumerate(todo):
            remaining = [c.estimate_s for c in todo[position:] if c.estimate_s is not None]
            bar.set_postfix_str(f"{cell.label}; est. left {format_minutes(sum(remaining) if remaining else None)}")
            started = time.time()
            try:
                if record_complete(results_dir, cell.plan.run_name):  # another worker finished it meanwhile
                    outcome.skipped.append(cell.label)
                elif run_claimed(results_dir, cell.plan.run_name, lambda cell=cell: execute(cell)):
                    outcome.ran.append(cell.label)
                else:
                    outcome.elsewhere.append(cell.label)
            except KeyboardInterrupt:
                raise
            except HeldElsewhere:
                outcome.elsewhere.append(cell.label)
            except Exception as error:
                outcome.failed.append((cell.label, one_line(error)))
            cell.estimate_s = time.time() - started
            bar.update(1)
    return outcome


def status_text(cells: list[Cell], results_dir: Path) -> str:
    """Per cell: done, running (where, since when), failed (why, log), to do — read while a campaign runs,
    from the records and the claims alone."""
    from distillbench.claims import claims_dir, owner_dead, read_claim, read_failure, record_complete

    lines, counts = [], {"done": 0, "running": 0, "failed": 0, "to do": 0}
    for cell in cells:
        name = cell.plan.run_name
        claim = read_claim(claims_dir(results_dir) / f"{name}.json")
        failure = read_failure(results_dir, name)
        if cell.done or record_complete(results_dir, name):
            state, detail = "done", ""
        elif claim is not None and not owner_dead(claim):
            job = f", job {claim['job']}" if claim.get("job") else ""
            since = time.strftime("%Y-%m-%d %H:%M", time.localtime(claim["since"]))
            state, detail = "running", f"on {claim['host']} (pid {claim['pid']}{job}) since {since}"
        elif failure is not None:
            state, detail = "failed", failure["reason"] + (f"; log {failure['log']}" if failure.get("log") else "")
        else:
            state = "to do"
            detail = "" if claim is None else f"claim of a dead worker on {claim['host']} (taken over when run)"
        counts[state] += 1
        lines.append(f"{cell.task:<10} {cell.method:<10} {cell.seed:>4}  {state:<7}  {detail}".rstrip())
    header = f"{'task':<10} {'method':<10} {'seed':>4}  state"
    summary = ", ".join(f"{n} {state}" for state, n in counts.items())
    return "\n".join([header, *lines, f"{len(cells)} cells: {summary}"])
