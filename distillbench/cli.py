"""``distillbench`` command line: run, tune, list, and the record readers table, plot and leaderboard.

Every user error is one ``error: …`` line on stderr and exit code 2; nothing is written before the
whole run has been validated.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

from distillbench.errors import RunFailed, UserError
from distillbench.plugins import load_plugin, take_plugin_arguments

WRITE_HELP = (
    "where records go (default: the workspace ./distillbench-runs or $DISTILLBENCH_RESULTS; "
    "the published campaign only when told: --results-dir results)"
)
STRICT_HELP = "exit 1 when a comparison could not be made (a missing or altered predictions file); CI uses it"
BOUNDED_HELP = "keep runs cut short by a preset or --max-steps (left out by default)"
READ_HELP = "records to read (default: your workspace when it has runs, else the published results)"
EXIT_USAGE = 2
EXIT_FAILED = 1


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a usage error is a single line (no usage block) with exit code 2."""

    def error(self, message: str) -> NoReturn:
        raise UserError(f"{self.prog}: {message}")


FLAG_TYPES = {"int": int, "int | None": int, "float": float}  # anything else is text (a comma list: parsed later)


# Run flags whose default a task may set (``Task.default_teacher``): what the help says about it.
TASK_DEFAULTS = {"teacher": "a task may name its own, e.g. clm: scratch:gpt2-cpu"}


def add_flags(parser: argparse.ArgumentParser, cls: type, skip: tuple[str, ...] = ()) -> None:
    """A flag for every :func:`config.option` field of ``cls``, its help declared there once; a boolean
    is a switch."""
    from distillbench.config import RunConfig, flag_fields

    for item in flag_fields(cls):
        if item.name in skip:
            continue
        if item.type == "bool":
            parser.add_argument(flag_of(item.name), action="store_true", help=item.metadata["help"])
            continue
        required = item.default is dataclasses.MISSING
        by_task = cls is RunConfig and item.name in TASK_DEFAULTS  # not given: the task's own default
        parser.add_argument(
            flag_of(item.name),
            type=FLAG_TYPES.get(item.type, str),
            default=None if required or by_task else item.default,
            required=required,
            help=item.metadata["help"] + (f" (default: {item.default}; {TASK_DEFAULTS[item.name]})" if by_task else ""),
        )


def add_run_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of every command that runs: RunConfig's flag fields (their help is declared there), then
    the training shortcuts and the folders."""
    from distillbench.config import RunConfig

    add_flags(parser, RunConfig, skip=("data_dir",))  # the data folder stands with the other folders below
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a method hyper-parameter, training setting or task option (typed), repeatable",
    )
    parser.add_argument("--epochs", type=float, help="training epochs of every stage")
    parser.add_argument(
        "--max-steps",
        type=int,
        help="a smoke-test bound on every stage, the teacher's too (unless a teacher fine-tuned at the full "
        "budget is cached: then it is read); the record is marked bounded and left out of tables",
    )
    parser.add_argument(
        "--teacher-cache",
        choices=("on", "off", "auto"),
        help="read the teacher's outputs from a disk cache (default auto: when the method allows it)",
    )
    parser.add_argument(
        "--report-to",
        metavar="TRACKERS",
        help="log every stage's loss terms to none (default), tensorboard, wandb, mlflow (comma list) or all",
    )
    parser.add_argument("--data-dir", help=field_help(RunConfig, "data_dir"))
    parser.add_argument("--output-dir", type=Path, help="checkpoints and the trained student (default: outputs/…)")
    parser.add_argument("--results-dir", type=Path, help=WRITE_HELP)
    parser.add_argument("--cache-dir", type=Path, help="stage cache (default: $DISTILLBENCH_CACHE or ~/.cache)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def flag_of(name: str) -> str:
    return "--" + name.replace("_", "-")


def field_help(cls: type, name: str) -> str:
    """The help a settings dataclass declares for one of its fields."""
    from distillbench.fields import help_of

    return next(help_of(item) for item in dataclasses.fields(cls) if item.name == name)


def add_executor_arguments(parser: argparse.ArgumentParser, what: str) -> None:
    """Where the work runs (``executors.py``); Slurm's resources as sbatch names them."""
    parser.add_argument("--executor", default="inline", help=f"where to run {what}")
    parser.add_argument(
        "--workers", type=int, default=1, help="parallel workers: sweep --executor local processes, tune Slurm jobs"
    )
    parser.add_argument("--wait", action="store_true", help="with slurm: wait for the jobs, with a progress bar")
    parser.add_argument("--slurm-partition", help="sbatch --partition (default: the cluster's default)")
    parser.add_argument("--slurm-time", default="60", help="time limit per job: minutes, HH:MM:SS or D-HH:MM:SS")
    parser.add_argument("--slurm-gpus-per-task", type=int, default=0, help="GPUs per job")
    parser.add_argument("--slurm-cpus-per-task", type=int, default=1, help="CPUs per job")
    parser.add_argument("--slurm-mem", help="memory per job, as sbatch --mem takes it (e.g. 16G)")
    parser.add_argument(
        "--slurm-option", action="append", default=[], help="any other sbatch option as NAME=VALUE (repeatable)"
    )


def executor_of(args: argparse.Namespace, kinds: tuple[str, ...], workers_with: str):
    """The chosen executor, checked (with Slurm's options parsed) before anything runs or is submitted;
    ``workers_with``: the one executor whose parallelism ``--workers`` sets."""
    from distillbench.executors import SlurmOptions, check_slurm, check_writable

    if args.executor not in kinds:
        raise UserError(f"--executor {args.executor!r}: choose one of {', '.join(kinds)}")
    if args.workers < 1:
        raise UserError(f"--workers {args.workers}: at least 1")
    if args.workers > 1 and args.executor != workers_with:
        raise UserError(f"--workers sets the parallelism of --executor {workers_with}, not of {args.executor}")
    if args.wait and args.executor != "slurm":
        raise UserError("--wait is for --executor slurm (the other executors return when the work is done)")
    check_writable(args.results_dir)
    if args.executor != "slurm":
        return None
    check_slurm(args.slurm_partition)
    return SlurmOptions.parse(
        args.slurm_partition,
        args.slurm_time,
        args.slurm_gpus_per_task,
        args.slurm_cpus_per_task,
        args.slurm_mem,
        args.slurm_option,
    )


def build_parser() -> argparse.ArgumentParser:
    from distillbench.bench_settings import BenchSettings

    parser = OneLineParser(
        prog="distillbench",
        description=__doc__.splitlines()[0],
        epilog="--plugin FILE.py (anywhere, repeatable; or DISTILLBENCH_PLUGINS) loads methods/tasks from a file; "
        "--verbose (anywhere) shows the libraries' own warnings and progress bars",
    )
    commands = parser.add_subparsers(dest="command", required=True, parser_class=OneLineParser)
    run = commands.add_parser("run", help="fine-tune the teacher (cached) and distil a student")
    add_run_arguments(run)
    run.add_argument(
        "--dry-run", action="store_true", help="validate the pair, stages and settings, print the plan, train nothing"
    )
    run.add_argument("--params", help="'best': start from results/best/<method>-<task>.json (from tune)")
    tune = commands.add_parser("tune", help="Optuna search over the method's declared space")
    add_run_arguments(tune)
    tune.add_argument("--trials", type=int, default=20, help="finished trials the study should end with")
    tune.add_argument("--storage", help="Optuna RDB URL (default: sqlite under results/studies/)")
    tune.add_argument("--study-name", help="default: <method>-<task>")
    tune.add_argument("--pruner", default="median", help="median, hyperband or none")
    tune.add_argument("--timeout", type=float, help="stop claiming new trials after this many seconds")
    tune.add_argument(
        "--common",
        default="learning_rate,batch_size,warmup_steps,epochs",
        help="common training knobs to search too (comma list, or none)",
    )
    tune.add_argument("--heartbeat", type=int, default=30, help="trial heartbeat interval (s)")
    tune.add_argument("--grace", type=int, default=90, help="a trial without heartbeat this long is retried")
    tune.add_argument("--report", action="store_true", help="print best value/params/importances, save plots")
    add_executor_arguments(tune, "the workers: inline (this process) or slurm (--workers jobs on --storage)")
    sweep = commands.add_parser(
        "sweep",
        help="a resumable grid of runs (methods × tasks × seeds); other run flags pass through to every cell",
    )
    sweep.add_argument("--file", dest="spec", type=Path, help="a sweep file (e.g. sweeps/cpu-glue.toml)")
    sweep.add_argument("--methods", help="comma list (replaces the file's)")
    sweep.add_argument("--tasks", help="comma list (replaces the file's)")
    sweep.add_argument("--seeds", help="comma list of integers (replaces the file's)")
    sweep.add_argument("--dry-run", action="store_true", help="print the cells, which are done, the estimated time")
    sweep.add_argument("--results-dir", type=Path, help=WRITE_HELP + "; the sweep file's results_dir when it names one")
    sweep.add_argument("--no-progress", action="store_true", help="no progress bars (the sweep's nor the runs')")
    sweep.add_argument(
        "--status", action="store_true", help="per cell: done, running (where, since when), failed (why, log), to do"
    )
    add_executor_arguments(sweep, "the cells: inline (this process), local (--workers processes) or slurm")
    study = commands.add_parser(
        "teacher-study",
        help="choose the teacher's settings on a held-out part of train (grid); run flags pass through",
    )
    study.add_argument("--task", required=True, help="a registered task")
    study.add_argument(
        "--grid",
        action="append",
        default=[],
        metavar="KEY=V1,V2",
        help="a teacher setting and its values, repeatable: e.g. teacher_learning_rate=2e-5,3e-5,5e-5",
    )
    study.add_argument("--holdout", type=float, default=0.1, help="the part of train held out and scored")
    study.add_argument("--dry-run", action="store_true", help="print the grid points and which are cached")
    study.add_argument(
        "--no-dev-check", action="store_true", help="skip training the chosen and the default teacher on all of train"
    )
    study.add_argument("--results-dir", type=Path, help=WRITE_HELP)
    study.add_argument("--no-progress", action="store_true", help="no progress bars")
    show = commands.add_parser("show", help="a method's or task's settings: help, defaults, ranges, search space")
    show.add_argument("name", help="a method or task name")
    show.add_argument("--data-dir", help="for a task: the data folder to describe (default: $DISTILLBENCH_DATA)")
    listing = commands.add_parser("list", help="registered methods and tasks")
    listing.add_argument("pattern", nargs="?", default="*")
    table = commands.add_parser("table", help="a paper-style leaderboard from run records")
    table.add_argument("--tasks", help="comma-separated task names (default: all with records)")
    table.add_argument("--methods", help="comma-separated method names (default: all)")
    table.add_argument("--format", default="md", help="md, latex, csv or html")
    table.add_argument("--score", default="final", help="final (last epoch) or best (best epoch, as TED reports)")
    table.add_argument("--reference", action="store_true", help="add the TED reference block with deltas")
    table.add_argument("--include-dirty", action="store_true", help="keep records from a dirty git tree")
    table.add_argument("--include-bounded", action="store_true", help=BOUNDED_HELP)
    table.add_argument("--experiment", type=int, metavar="N", help="only experiment N (numbered as listed)")
    table.add_argument("--history", action="store_true", help="the single-seed and bounded runs instead")
    table.add_argument(
        "--significance",
        action="store_true",
        help="mark cells better/worse than the baselines (paired bootstrap, Holm-corrected); legend below",
    )
    table.add_argument("--resamples", type=int, default=10_000, help="bootstrap resamples (--significance)")
    table.add_argument("--strict", action="store_true", help=STRICT_HELP)
    table.add_argument("--results-dir", type=Path, help=READ_HELP)
    table.add_argument("--out", type=Path, help="write here instead of stdout")
    compare = commands.add_parser("compare", help="is method A better than method B on a task? (bootstrap + seeds)")
    compare.add_argument("method", help="method A")
    compare.add_argument("baseline", help="method B")
    compare.add_argument("--task", required=True)
    compare.add_argument("--teacher", help="only A's rows whose teacher label contains this (e.g. ensemble)")
    compare.add_argument("--student", help="only A's rows whose student label contains this")
    compare.add_argument("--baseline-teacher", help="only B's rows whose teacher label contains this")
    compare.add_argument("--baseline-student", help="only B's rows whose student label contains this")
    compare.add_argument("--budget", help="only A's rows of exactly this budget (e.g. '3 ep, length-grouped')")
    compare.add_argument("--baseline-budget", help="only B's rows of exactly this budget")
    compare.add_argument("--score", default="final", help="final or best epoch")
    compare.add_argument("--metric", default=None, help="a score of the task other than its main one (see `show TASK`)")
    compare.add_argument("--setting", default="task-specific", help="e.g. 'after kd pre-training'")
    compare.add_argument("--resamples", type=int, default=10_000)
    compare.add_argument("--seed", type=int, default=0, help="bootstrap seed")
    compare.add_argument("--results-dir", type=Path, help=READ_HELP)
    compare.add_argument("--include-dirty", action="store_true", help="keep records from a dirty git tree")
    compare.add_argument("--include-bounded", action="store_true", help=BOUNDED_HELP)
    plot = commands.add_parser("plot", help="seaborn figures (PNG + SVG) from records or a study")
    plot.add_argument("kind", help="methods (one figure per experiment), loss (curves of one run) or study")
    plot.add_argument("--run", type=Path, help="the run record for `loss`")
    plot.add_argument("--score", default="final", help="final or best, for `methods`")
    plot.add_argument("--storage", help="Optuna storage URL, for `study`")
    plot.add_argument("--study-name", help="Optuna study name, for `study`")
    plot.add_argument("--results-dir", type=Path, help=READ_HELP)
    plot.add_argument("--out-dir", type=Path, help="where the figures go (default: the workspace's plots/)")
    plot.add_argument("--include-bounded", action="store_true", help=BOUNDED_HELP)
    leaderboard = commands.add_parser(
        "leaderboard",
        help="the leaderboard of a results folder: headline, experiments, history (printed; files only when told)",
    )
    leaderboard.add_argument("--results-dir", type=Path, help=READ_HELP)
    leaderboard.add_argument(
        "--write",
        action="store_true",
        help="rewrite <results-dir>/leaderboard.md, its experiment figures and the generated README sections",
    )
    leaderboard.add_argument(
        "--readme",
        type=Path,
        action="append",
        help="with --write: another file whose generated sections to rewrite too (repeatable)",
    )
    leaderboard.add_argument(
        "--html", type=Path, metavar="DIR", help="write the page as DIR/index.html (nothing else is written)"
    )
    leaderboard.add_argument("--strict", action="store_true", help=STRICT_HELP)
    leaderboard.add_argument(
        "--include-bounded", action="store_true", help=BOUNDED_HELP + "; in the history, never a ranked table"
    )
    leaderboard.add_argument(
        "--screenshot", action="store_true", help="with --html: DIR/screenshot.png by headless Chromium (selenium)"
    )
    efficiency = commands.add_parser("efficiency", help="parameters, latency and FLOPs of every model in the records")
    efficiency.add_argument(
        "--results-dir", type=Path, help="records to measure; efficiency records go there (default: the workspace)"
    )
    efficiency.add_argument("--data-dir", help="the data folder (default: $DISTILLBENCH_DATA, else hub)")
    efficiency.add_argument("--teacher", help="the teacher architecture, when the records' one is not on this machine")
    bench = commands.add_parser("bench", help="harness vs plain PyTorch, teacher cache, eval throughput, memory")
    add_flags(bench, BenchSettings, skip=("end_to_end_epochs",))
    bench.add_argument(
        "--end-to-end",
        dest="end_to_end_epochs",
        type=float,
        default=0.0,
        metavar="EPOCHS",
        help=field_help(BenchSettings, "end_to_end_epochs"),
    )
    bench.add_argument(
        "--reading",
        action="store_true",
        help="time reading instead: list/show start-up, leaderboard cold and warm, on <results-dir>'s records",
    )
    bench.add_argument("--results-dir", type=Path, help="the record goes to <dir>/bench/ (default: the workspace)")
    bench.add_argument("--cache-dir", type=Path, help="teacher-output cache (default: $DISTILLBENCH_CACHE)")
    return parser


def build_run(args: argparse.Namespace, train_extra: dict | None = None, method_extra: dict | None = None):
    """RunConfig and Paths from run arguments; ``*_extra`` (tuned values) sit below explicit --set."""
    from distillbench.config import RunConfig, build_train_config, flag_fields, parse_overrides
    from distillbench.method import get_method
    from distillbench.setting_checks import check_settings
    from distillbench.task import get_task
    from distillbench.workspace import Paths, cache_root

    method_cls, task_cls = get_method(args.method), get_task(args.task)
    train_extra, method_extra = dict(train_extra or {}), dict(method_extra or {})
    params, tuned_from = getattr(args, "params", None), None
    if params == "best":
        from distillbench.tuning import load_best

        best, tuned_from = load_best(args.results_dir, args.method, args.task)
        fields = method_cls.hparam_fields()
        method_extra = {k: v for k, v in best.items() if k in fields} | method_extra
        train_extra = {k: v for k, v in best.items() if k not in fields} | train_extra
    elif params:
        raise UserError(f"--params {params!r}: only 'best' is supported")
    run_level = [pair for pair in args.overrides if pair.startswith("teacher_weights=")]
    train_overrides, method_overrides, task_options = parse_overrides(
        [pair for pair in args.overrides if pair not in run_level], method_cls.hparam_fields(), task_cls.option_fields()
    )
    if args.epochs is not None:
        train_overrides["epochs"] = args.epochs
    if args.max_steps is not None:  # a bound on every stage: the teacher's too, unless --set says otherwise
        train_overrides["max_steps"] = args.max_steps
        train_overrides.setdefault("teacher_max_steps", args.max_steps)
    if args.teacher_cache is not None:
        train_overrides["teacher_cache"] = args.teacher_cache
    if args.report_to is not None:
        train_overrides["report_to"] = args.report_to
    if tuned_from:  # as in the study's trials: the teacher keeps the settings it has without tuned values
        from distillbench.tuning import teacher_pins

        untuned = build_train_config(task_cls.train_defaults, args.preset, train_overrides).for_role("teacher")
        train_extra = teacher_pins(untuned) | train_extra
    teacher_chosen_by = None
    if getattr(args, "teacher_settings", None):
        from distillbench.teacher_study import load_choice

        chosen, teacher_chosen_by = load_choice(args.results_dir, args.task, args.teacher_settings)
        clash = sorted(set(chosen) & set(train_overrides))
        if clash:
            raise UserError(f"--teacher-settings and --set {clash[0]}: the study chose it; give one or the other")
        train_extra = train_extra | chosen
    flags = {item.name: getattr(args, item.name) for item in flag_fields()}
    if flags["teacher"] is None:  # not given: the task's default teacher, else the package's
        flags["teacher"] = task_cls.default_teacher or RunConfig.teacher
    config = RunConfig(
        **flags | {"teacher_seeds": parse_numbers(args.teacher_seeds, int, "--teacher-seeds")},
        teacher_weights=parse_numbers(run_level[-1].partition("=")[2] if run_level else None, float, "teacher_weights"),
        tuned_from=tuned_from,
        teacher_chosen_by=teacher_chosen_by,
        method_overrides=method_extra | method_overrides,
        task_options=task_options,
        train=build_train_config(task_cls.train_defaults, args.preset, train_extra | train_overrides),
    )
    check_settings(config)  # a value out of range is told before the training stack is imported
    paths = Paths(
        results_dir=args.results_dir,
        output_dir=args.output_dir,
        cache_dir=args.cache_dir or cache_root(),
        show_progress=not args.no_progress,
    )
    return config, paths


def parse_numbers(text: str | None, kind: type, what: str) -> tuple | None:
    """``1,2,3`` → (1, 2, 3) typed as ``kind``; None when not given."""
    if text is None:
        return None
    try:
        return tuple(kind(part) for part in text.split(","))
    except ValueError:
        raise UserError(f"{what} {text}: expected comma-separated {kind.__name__} values") from None


def plan_from_arguments(args: argparse.Namespace, build_standins: bool = False):
    """The validated plan of run arguments; a step bound that ``--max-steps`` put on the teacher gives way
    to a teacher already fine-tuned at the full budget in the cache. ``build_standins``: pre-train a
    stand-in teacher (``--teacher scratch:<preset>``) first when this text has none."""
    config, paths = build_run(args)  # first: a mistake in the arguments is told before the slow imports
    from distillbench.harness import plan_run
    from distillbench.stages import with_cached_full_teacher

    if build_standins:
        prepare_standins(config, paths)
    plan = plan_run(config, paths)
    if args.max_steps is not None and not any(o.startswith("teacher_max_steps=") for o in args.overrides):
        plan = with_cached_full_teacher(plan)
    return plan


def run_planner(build_standins: bool):
    """``argv`` of one run (a sweep's cell, a study's setting) → its plan, parsed as ``run`` would."""
    run_parser = build_parser()

    def plan(argv: list[str]):
        return plan_from_arguments(run_parser.parse_args(["run", *argv]), build_standins=build_standins)

    return plan


def prepare_standins(config, paths) -> None:
    """Pre-train the run's stand-in teachers that this text has none of yet (each once; later runs read it)."""
    from distillbench.planning import task_of
    from distillbench.standin_pretraining import ensure_standin
    from distillbench.standins import is_standin

    for spec in {spec.strip() for spec in config.teacher.split(",")}:
        if is_standin(spec):
            ensure_standin(spec, task_of(config), paths.cache_dir, paths.show_progress)


def command_run(args: argparse.Namespace) -> int:
    plan = plan_from_arguments(args, build_standins=not args.dry_run)
    from distillbench.harness import Runner
    from distillbench.summary import plan_summary, run_summary

    if args.dry_run:
        print(plan_summary(plan))
        return 0
    record = Runner(plan).run()
    if record["_path"]:  # the process that wrote the record (rank 0 of a multi-process run)
        print(run_summary(record))
    return 0


def command_tune(args: argparse.Namespace) -> int:
    from distillbench import tuning
    from distillbench.atomic import write_json_atomic
    from distillbench.harness import Runner, plan_run
    from distillbench.history import main_metric_key
    from distillbench.method import get_method
    from distillbench.task import get_task

    method_cls, task_cls = get_method(args.method), get_task(args.task)
    name = args.study_name or f"{args.method}-{args.task}"
    storage = args.storage or f"sqlite:///{(args.results_dir / 'studies' / f'{name}.db').resolve()}"
    if args.report:
        text, paths = tuning.report(tuning.load_study(storage, name), args.results_dir / "studies" / "plots")
        print(text, *map(str, paths), sep="\n")
        return 0
    if args.pruner not in tuning.PRUNERS:
        raise UserError(f"unknown pruner {args.pruner!r}; choose one of {', '.join(tuning.PRUNERS)}")
    if args.trials < 1:
        raise UserError("--trials must be at least 1")
    slurm = executor_of(args, ("inline", "slurm"), workers_with="slurm")
    common = () if args.common == "none" else tuple(n for n in args.common.split(",") if n)
    tuning.check_common(common)
    base, _ = build_run(args)  # validates the run arguments before the storage is touched
    # Trials vary the student's settings only: the teacher keeps the base settings (one cached teacher).
    pinned = tuning.teacher_pins(base.train.for_role("teacher"))
    if slurm is not None:
        return submit_tune_jobs(args, slurm, storage, name)
    if storage.startswith("sqlite:///"):
        Path(storage.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    metric = main_metric_key(task_cls(None))

    def objective(trial, origin, train, method, callback) -> float:
        config, paths = build_run(args, pinned | train, method)
        tags = {"study": name, "trial": trial.number, "origin_trial": origin}
        plan = plan_run(config, paths, identity={"study": name, "trial": origin})
        record = Runner(plan, callbacks=(callback,), tags=tags).run()
        if callback.pruned:
            stored = {k: v for k, v in record.items() if k != "_path"}
            write_json_atomic(Path(record["_path"]), stored | {"status": "pruned"})
        return record["metrics"][metric]

    settings = tuning.TuneSettings(
        study_name=name,
        storage=storage,
        trials=args.trials,
        pruner=args.pruner,
        timeout=args.timeout,
        common=common,
        seed=args.seed,
        heartbeat_interval=args.heartbeat,
        grace_period=args.grace,
    )
    direction = "maximize" if task_cls.greater_is_better else "minimize"
    study = tuning.run_worker(settings, direction, method_cls.search_space, metric, objective)
    best = tuning.save_best(study, args.results_dir, args.method, args.task)
    done = sum(t.state.name == "COMPLETE" for t in study.trials)
    print(f"study {name} ({storage}): {done} finished trials" + (f"; best parameters in {best}" if best else ""))
    return 0


def build_teacher_stage(run_argv: list[str]) -> str:
    """The teacher stage of a run's arguments, built (or found) in the cache: a Slurm sweep's first job."""
    from distillbench.harness import Runner

    plan = plan_from_arguments(build_parser().parse_args(["run", *run_argv]))
    return str(Runner(plan).stages.finetuned("teacher")[0])


def submit_tune_jobs(args: argparse.Namespace, slurm, storage: str, name: str) -> int:
    """``--workers`` Slurm jobs, each this tune command on the shared storage (a server: SQLite's file
    locking across jobs and machines is what Optuna warns against)."""
    from distillbench.executors import submit_tune, wait_for, without_executor_options

    if storage.startswith("sqlite"):
        raise UserError("--executor slurm needs an RDB server the jobs share: --storage postgresql://…")
    jobs = submit_tune(main, without_executor_options(args.argv), args.results_dir, slurm, args.workers)
    print(f"submitted {len(jobs)} Optuna worker job(s) for study {name}: {', '.join(j.job_id for j in jobs)}")
    if not args.wait:
        return 0
    failed = wait_for([(f"worker {j.job_id}", j) for j in jobs], show_progress=not args.no_progress)
    for label, reason in failed:
        print(f"  failed: {label}: {reason}")
    return EXIT_FAILED if failed else 0


def sweep_spec(args: argparse.Namespace):
    from distillbench.sweep import SweepSpec, names_of, parse_list, seeds_of

    spec = SweepSpec.from_toml(args.spec) if args.spec else SweepSpec(methods=[], tasks=[], seeds=[])
    if args.methods:
        spec.methods = names_of(parse_list(args.methods, "methods"), "--methods")
    if args.tasks:
        spec.tasks = names_of(parse_list(args.tasks, "tasks"), "--tasks")
    if args.seeds:
        try:
            seeds = [int(s) for s in parse_list(args.seeds, "seeds")]
        except ValueError:
            raise UserError(f"--seeds {args.seeds}: expected comma-separated integers") from None
        spec.seeds = seeds_of(seeds, "--seeds")
    for kind, values in (("methods", spec.methods), ("tasks", spec.tasks), ("seeds", spec.seeds)):
        if not values:
            raise UserError(f"sweep needs --{kind} (or a sweep file that lists them)")
    if args.results_dir is not None:
        spec.results_dir = args.results_dir
    elif spec.results_dir is None:
        from distillbench.workspace import workspace

        spec.results_dir = workspace()
    return spec


def command_sweep(args: argparse.Namespace) -> int:
    from distillbench.claims import read_failure
    from distillbench.executors import EXECUTORS, run_local_workers, submit_sweep, wait_for, without_executor_options
    from distillbench.harness import Runner
    from distillbench.sweep import dry_run_text, plan_cells, run_cells, status_text

    spec = sweep_spec(args)
    common = ["--results-dir", str(spec.results_dir), *(["--no-progress"] if args.no_progress else [])]
    plan = run_planner(build_standins=not (args.dry_run or args.status))
    cells = plan_cells(spec, [*args.passthrough, *common], plan, spec.results_dir)
    args.results_dir = spec.results_dir
    slurm = None if args.dry_run or args.status else executor_of(args, EXECUTORS, workers_with="local")
    print(f"records go to {spec.results_dir}", file=sys.stderr)
    if args.dry_run:
        print(dry_run_text(cells))
        return 0
    if args.status:
        print(status_text(cells, spec.results_dir))
        return 0
    todo = [cell for cell in cells if not cell.done]
    if args.executor == "local":
        logs = run_local_workers(
            args.workers,
            without_executor_options(args.argv),
            spec.results_dir,
            [c.plan.run_name for c in cells],
            show_progress=not args.no_progress,
        )
        print(status_text(cells, spec.results_dir))
        print(f"worker logs: {', '.join(map(str, logs))}")
        return EXIT_FAILED if any(read_failure(spec.results_dir, c.plan.run_name) for c in todo) else 0
    if slurm is not None:
        jobs = submit_sweep(todo, spec.results_dir, slurm, main, build_teacher_stage)
        ids = ", ".join(job.job_id for _, job in jobs)
        print(f"submitted {len(jobs)} Slurm job(s) for {len(todo)} cell(s): {ids or 'none'}")
        if not args.wait:
            print("follow them with this sweep command and --status (or wait: --wait)")
            return 0
        failed = wait_for(jobs, show_progress=not args.no_progress)
        print(status_text(cells, spec.results_dir))
        for label, reason in failed:
            print(f"  failed: {label}: {reason}")
        return EXIT_FAILED if failed else 0
    outcome = run_cells(cells, lambda cell: Runner(cell.plan).run(), not args.no_progress, spec.results_dir)
    print(outcome.summary())
    return EXIT_FAILED if outcome.failed else 0


def command_teacher_study(args: argparse.Namespace) -> int:
    from distillbench.harness import Runner
    from distillbench.method import get_method, list_methods
    from distillbench.stages import finetune_folder, finetune_settings, teacher_stages_cached
    from distillbench.task import get_task
    from distillbench.teacher_study import as_overrides, grid_points, parse_grid, run_study

    grid = parse_grid(args.grid)
    if not get_task(args.task).rows_scorable:
        raise UserError(f"teacher-study: {args.task} is scored from raw examples; it cannot hold out part of train")
    if not 0 < args.holdout < 1:
        raise UserError(f"--holdout {args.holdout}: must be between 0 and 1")
    rest = [*args.passthrough, "--results-dir", str(args.results_dir)]
    rest += ["--no-progress"] if args.no_progress else []
    # The teacher stage is the same whichever method reads it: the first method that distils (in table
    # order, baselines first) and accepts this task names it.
    distilling = sorted(
        (n for n in list_methods() if get_method(n).uses_teacher), key=lambda n: get_method(n).table_order
    )
    check = run_planner(build_standins=False)
    method = first_accepting(distilling, lambda name: check(["--method", name, "--task", args.task, *rest]))
    base = ["--method", method, "--task", args.task, *rest]
    plan = run_planner(build_standins=not args.dry_run)

    if args.dry_run:
        for settings in grid_points(grid):
            point = plan([*base, *as_overrides(settings), "--set", f"holdout_fraction={args.holdout}"])
            folder = finetune_folder(point, finetune_settings(point, "teacher"))
            state = "cached" if teacher_stages_cached(point) else "to train"
            print(f"{state:<9} {', '.join(f'{k}={v}' for k, v in settings.items())}  ({folder.name})")
        return 0

    def build(argv: list[str]):
        point = plan(argv)
        return point, Runner(point).stages.finetuned("teacher")[1]

    print(f"records go to {args.results_dir}", file=sys.stderr)
    run_study(args.task, base, grid, args.holdout, args.results_dir, build, not args.no_dev_check, args.passthrough)
    return 0


def first_accepting(methods: list[str], plan_with: Callable[[str], Any]) -> str:
    """The first of ``methods`` whose run plans (``plan_with(name)`` raises :class:`UserError` for a method
    that refuses the task, e.g. one that samples text on a classification task); else the first refusal,
    which is also the user's own mistake when every method refuses alike."""
    refusals = []
    for name in methods:
        try:
            plan_with(name)
        except UserError as refusal:
            refusals.append(refusal)
        else:
            return name
    raise refusals[0] if refusals else UserError("no registered method distils from a teacher")


def command_show(args: argparse.Namespace) -> int:
    from distillbench.show import show

    print(show(args.name, args.data_dir))
    return 0


def command_list(args: argparse.Namespace) -> int:
    from distillbench.method import get_method, list_methods
    from distillbench.task import get_task, list_tasks

    methods, tasks = list_methods(args.pattern), list_tasks(args.pattern)
    width = max(map(len, [*methods, *tasks, "x" * 12]))
    print("methods:")
    for name in methods:
        print(f"  {name:<{width}} {get_method(name).summary()}")
    print("tasks:")
    for name in tasks:
        print(f"  {name:<{width}} {get_task(name).summary()}")
    return 0


def _names(text: str | None, known: list[str], kind: str) -> list[str] | None:
    if not text:
        return None
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in known]
    if unknown:
        raise UserError(f"unknown {kind} {unknown[0]!r}; known {kind}s: {', '.join(known)}")
    return names


def check_reading_options(args: argparse.Namespace) -> None:
    """``--score`` (and ``--format``, ``--resamples`` where the command has them), before the heavy imports."""
    from distillbench.labels import FORMATS, SCORES

    if args.score not in SCORES:
        raise UserError(f"unknown score {args.score!r}; choose one of {', '.join(SCORES)}")
    if getattr(args, "format", None) is not None and args.format not in FORMATS:
        raise UserError(f"unknown format {args.format!r}; choose one of {', '.join(FORMATS)}")
    if getattr(args, "resamples", None) is not None and args.resamples < 1000:
        raise UserError("--resamples must be at least 1000")


def command_table(args: argparse.Namespace) -> int:
    check_reading_options(args)
    from distillbench.efficiency import fill_budgets
    from distillbench.experiments import (
        BUDGET_COLUMN,
        BUDGET_LEGEND,
        experiment_significance,
        findings_legend,
        findings_table,
        group_experiments,
        history,
        history_table,
        n_legend,
        ranked,
        score_table,
    )
    from distillbench.leaderboard import aggregate, render, render_within
    from distillbench.method import list_methods
    from distillbench.reference import reference_table
    from distillbench.selection import collect
    from distillbench.task import eval_set_note, list_tasks, scale_note

    tasks = _names(args.tasks, list_tasks(), "task")
    methods = _names(args.methods, list_methods(), "method")
    announce(args)
    selection = collect(args.results_dir, args.include_dirty, args.include_bounded)
    fill_budgets(selection.records, args.results_dir)  # counted as the leaderboard counts them
    print(_wrap(selection.report()), file=sys.stderr)
    records = [
        r
        for r in selection.records
        if (not tasks or r["task"] in tasks) and (not methods or r.get("role") == "teacher" or r["method"] in methods)
    ]
    experiments = group_experiments(records, numbered_among=selection.records)
    shown, past = ranked(experiments, args.include_bounded), history(experiments, args.include_bounded)
    if args.experiment is not None:
        chosen = [e for e in experiments if e.number == args.experiment]
        if not chosen:
            numbers = ", ".join(str(e.number) for e in experiments) or "none"
            raise UserError(f"--experiment {args.experiment}: not one of this selection's experiments ({numbers})")
        shown, past = chosen, []
    blocks, skipped = [], 0
    for experiment in [] if args.history else shown:
        marks = None
        if args.significance:
            marks = experiment_significance(experiment, args.score, args.resamples, progress=True)
            skipped += len(marks.skipped)
        scored = f"{eval_set_note(experiment.tasks)}; mean ± std over seeds, {scale_note(experiment.tasks)}"
        block = f"{_wrap(experiment.title())}\n{args.score} epoch, {scored}\n\n"
        table = score_table(experiment, args.score, marks)
        terminal = args.format == "md" and args.out is None
        block += render_within(table, TERMINAL_WIDTH) if terminal else render(table, args.format)
        legend = f"{n_legend(table.cells)}." + (f" {BUDGET_LEGEND}" if BUDGET_COLUMN in table.cells else "")
        block += f"\n{_wrap(legend)}\n"
        hand_set = experiment.hand_set()
        if hand_set:
            block += f"\n{_wrap(hand_set)}\n"
        if marks:
            block += f"\n{_wrap(marks.legend())}\n"
            findings = findings_table(marks)
            if len(findings):
                block += "\n" + _render_frame(findings, args.format) + f"\n{_wrap(findings_legend(marks))}\n"
        blocks.append(block)
    if past and (args.history or not shown):
        # one small table per experiment under its title: a teacher and student column each would pass 120
        tables = [
            f"{_wrap(e.title())}\n\n"
            + _render_frame(history_table([e], args.score).drop(columns=["teacher", "student"]), args.format)
            for e in past
        ]
        blocks.append(
            "Single runs and history (one seed or a bounded budget: no error bar, no test)\n\n" + "\n\n".join(tables)
        )
    elif past:
        blocks.append(f"{len(past)} single-seed or bounded experiment(s) not shown: add --history to see them.")
    if args.reference:
        reference = reference_table(aggregate(records, "best"), tasks)
        blocks.append(
            "TED reference (not measured here; measured best epoch - reference):\n"
            + _render_frame(reference, args.format)
        )
    filters = (("task", tasks), ("method", methods))
    asked = ", ".join(f"{name} {', '.join(values)}" for name, values in filters if values)
    text = "\n\n".join(blocks) if blocks else _wrap(nothing_to_show(args, selection, asked))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    else:
        print(text)
    return strict_exit(args.strict, skipped)


def nothing_to_show(args: argparse.Namespace, selection: Any, asked: str) -> str:
    """What an empty table says instead: the counts are on the line above it, so this says what to try."""
    from distillbench.selection import EXCLUDED_BOUNDED

    where = f"{args.results_dir}" + (f" for {asked}" if asked and selection.records else "")
    tries = []
    if EXCLUDED_BOUNDED in selection.excluded:
        tries.append("its bounded runs (smoke tests such as the demo): --include-bounded")
    if args.source.published_flag:  # the workspace was read: the published campaign is elsewhere
        tries.append(f"the published campaign: {args.source.published_flag}")
    return f"Nothing to show from {where}." + (f" To see {'; '.join(tries)}." if tries else "")


def strict_exit(strict: bool, skipped: int) -> int:
    """Under ``--strict``, a comparison that could not be made fails the command (after its output)."""
    if strict and skipped:
        print(f"error: {skipped} comparison(s) could not be made (listed under their tables)", file=sys.stderr)
        return EXIT_FAILED
    return 0


TERMINAL_WIDTH = 120  # what the tables, titles and legends `table` prints keep to


def _wrap(text: str) -> str:
    """Titles and legends within the columns the tables keep to."""
    import textwrap

    return textwrap.fill(text, TERMINAL_WIDTH, break_on_hyphens=False, break_long_words=False)


def _render_frame(frame, fmt: str) -> str:
    """A plain pandas table in the chosen format (the score tables go through ``render`` for bold cells)."""
    if fmt == "md":
        return frame.to_markdown(index=False, disable_numparse=True, missingval="")
    if fmt == "latex":
        return frame.to_latex(index=False)
    if fmt == "html":
        return frame.to_html(index=False)
    return frame.to_csv(index=False)


def command_compare(args: argparse.Namespace) -> int:
    check_reading_options(args)
    from distillbench.labels import EXPERIMENT, method_label, row_key
    from distillbench.selection import collect
    from distillbench.significance import compare_records, describe
    from distillbench.task import get_task

    task = get_task(args.task)
    selection = collect(args.results_dir, args.include_dirty, args.include_bounded)
    records = [r for r in selection.records if r["task"] == args.task and r.get("role") == "student"]
    scores = sorted({key.split("/")[-1] for r in records for key in r.get("metrics", {})})
    if args.metric is not None and records and args.metric not in scores:
        raise UserError(f"--metric {args.metric}: {args.task} records score {', '.join(scores)}")
    labels = sorted({method_label(r) for r in records})
    for name in (args.method, args.baseline):
        if name not in labels:
            import difflib

            close = difflib.get_close_matches(name, labels, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise UserError(
                f"no {args.task} records of method {name!r} in {args.results_dir}{hint} "
                f"(methods with {args.task} records there: {', '.join(labels) or 'none'})"
            )
    sides = [
        (args.method, args.teacher, args.student, args.budget),
        (args.baseline, args.baseline_teacher, args.baseline_student, args.baseline_budget),
    ]
    chosen = []
    for method, teacher, student, budget in sides:
        mine = [
            r
            for r in records
            if method_label(r) == method
            and r.get("setting") == args.setting
            and (teacher is None or teacher in row_key(r)[2])
            and (student is None or student in row_key(r)[3])
            and (budget is None or budget == row_key(r)[5])
        ]
        if not mine:
            wanted = "".join(f", {k} containing {v!r}" for k, v in (("teacher", teacher), ("student", student)) if v)
            wanted += f", budget {budget!r}" if budget else ""
            raise UserError(f"no usable {args.task} records of method {method!r} (setting {args.setting!r}{wanted})")
        chosen.append(mine)
    announce(args)

    def of(side: int, experiment: tuple) -> list[dict]:
        return [r for r in chosen[side] if row_key(r)[2:] == experiment]

    if any(value for _, *filters in sides for value in filters):
        # Rows picked by label: each side must be one experiment; the two may differ (that is the question).
        picked = []
        for side, (method, *_) in enumerate(sides):
            experiments = sorted({row_key(r)[2:] for r in chosen[side]})
            if len(experiments) > 1:
                names = "; ".join(", ".join(map(str, e)) for e in experiments)
                raise UserError(f"{method}: several experiments match ({names}); narrow --teacher/--student/--budget")
            picked.append(experiments[0])
        a, b = of(0, picked[0]), of(1, picked[1])
        for name, experiment in zip("AB", picked, strict=True):
            print(f"{name}: " + ", ".join(f"{k} {v}" for k, v in zip(EXPERIMENT, experiment, strict=True)))
        print(describe(compare_records(a, b, args.score, args.resamples, args.seed, args.metric), task))
        return 0

    def common_seeds(experiment: tuple) -> int:
        return len({r["seed"] for r in of(0, experiment)} & {r["seed"] for r in of(1, experiment)})

    shared = {row_key(r)[2:] for r in chosen[0]} & {row_key(r)[2:] for r in chosen[1]}
    if not shared:
        raise UserError(f"{args.method} and {args.baseline} share no experiment (teacher, student, budget)")

    def rank(experiment: tuple) -> tuple[bool, int]:  # stored predictions first, then the most seed pairs
        records = of(0, experiment) + of(1, experiment)
        return all(r.get("predictions") for r in records), common_seeds(experiment)

    experiment = max(sorted(shared), key=rank)
    a, b = of(0, experiment), of(1, experiment)
    print("experiment: " + ", ".join(f"{k} {v}" for k, v in zip(EXPERIMENT, experiment, strict=True)))
    print(describe(compare_records(a, b, args.score, args.resamples, args.seed, args.metric), task))
    return 0


def command_plot(args: argparse.Namespace) -> int:
    import json

    if args.kind == "methods":
        check_reading_options(args)
    from distillbench import plots
    from distillbench.selection import collect
    from distillbench.workspace import workspace

    out_dir = args.out_dir or workspace() / "plots"
    if args.kind == "methods":
        from distillbench.experiments import group_experiments

        announce(args)
        experiments = group_experiments(collect(args.results_dir, include_bounded=args.include_bounded).records)
        if not experiments:
            raise UserError(f"no usable run records under {args.results_dir}")
        paths = plots.experiment_plots(experiments, out_dir, args.score)
    elif args.kind == "loss":
        if not args.run or not args.run.is_file():
            raise UserError("plot loss needs --run PATH of an existing run record")
        try:
            record = json.loads(args.run.read_text()) | {"_path": str(args.run)}
            record["loss_history"]
        except (json.JSONDecodeError, UnicodeDecodeError, TypeError, KeyError):
            raise UserError(f"{args.run} is not a readable run record with a loss history") from None
        paths = plots.loss_curves(record, out_dir)
    elif args.kind == "study":
        from distillbench.tuning import load_study

        study = load_study(args.storage, args.study_name)
        paths = plots.study_history(
            study.trials_dataframe(attrs=("number", "value", "state")),
            study.direction.name.lower(),
            out_dir,
            study.study_name,
        )
    else:
        raise UserError(f"unknown plot {args.kind!r}; choose methods, loss or study")
    for path in paths:
        print(path)
    return 0


def command_leaderboard(args: argparse.Namespace) -> int:
    readmes = [args.results_dir / "README.md", *(args.readme or [])]
    check_output_paths(args.html, readmes if args.write else [])  # before the slow imports: a bad path is quick
    if args.screenshot and not args.html:
        raise UserError("--screenshot needs --html DIR")
    from distillbench.plots import experiment_plots
    from distillbench.report import figure_paths, fill_sections, generated_sections, read_results

    announce(args)
    reading = read_results(args.results_dir, progress=True, include_bounded=args.include_bounded)
    sections = generated_sections(args.results_dir, reading)
    if args.write:
        (args.results_dir / "leaderboard.md").write_text(f"# Leaderboard\n\n{sections['results']}")
        plots = args.results_dir / "plots"
        for stale in [*plots.glob("methods-*.svg"), *plots.glob("experiment-*.svg")]:
            stale.unlink()  # an experiment that is no longer ranked leaves no figure behind
        experiment_plots(reading.ranked, plots)
        for readme in readmes:
            if readme.is_file():
                readme.write_text(fill_sections(readme.read_text(), sections))
        print(
            f"wrote {args.results_dir / 'leaderboard.md'}, {sum(map(len, figure_paths(reading).values()))} figure(s)",
            file=sys.stderr,
        )
    if args.html:
        from distillbench.site import write_site

        page = write_site(reading, args.html)
        print(f"page {page}", file=sys.stderr)
        if args.screenshot:
            import shutil

            from distillbench.site import screenshot

            binary, driver = shutil.which("chromium"), shutil.which("chromedriver")
            if not (binary and driver):
                raise UserError(
                    "--screenshot needs chromium and chromedriver on PATH (Debian: chromium chromium-driver)"
                )
            print(f"screenshot {screenshot(page, args.html / 'screenshot.png', binary, driver)}", file=sys.stderr)
    # with files written, the terminal shows the headline (the page and leaderboard.md hold the rest)
    print(sections["headline"] if args.write or args.html else sections["results"])
    return strict_exit(args.strict, sum(len(marks.skipped) for marks in reading.marks.values()))


def check_output_paths(html: Path | None, files: list[Path]) -> None:
    """Every place a command will write, checked before it writes anything: a page folder that is a
    file, lies under a file or cannot be created, or a README that is a folder, is one error."""
    if html is not None:
        if html.exists() and not html.is_dir():
            raise UserError(f"--html {html}: is a file, not a folder")
        parent = next((p for p in html.parents if p.exists()), Path("."))
        if not parent.is_dir():
            raise UserError(f"--html {html}: {parent} is a file, not a folder")
        if not os.access(parent, os.W_OK):
            raise UserError(f"--html {html}: cannot create it under {parent}")
    for path in files:
        if path.exists() and not path.is_file():
            raise UserError(f"--readme {path}: not a file")


def command_efficiency(args: argparse.Namespace) -> int:
    from distillbench.efficiency import measure_records
    from distillbench.selection import collect

    records = collect(args.results_dir).records
    if not records:
        raise UserError(f"no usable run records under {args.results_dir}")
    written = measure_records(
        records, args.results_dir, args.data_dir, args.teacher, lambda m: print(m, file=sys.stderr)
    )
    for path in written:
        print(path)
    print(f"{len(written)} new efficiency records (existing ones are kept)")
    return 0


def command_bench(args: argparse.Namespace) -> int:
    import dataclasses
    import sys

    from distillbench.bench import run_bench
    from distillbench.bench_report import whole_runs_line
    from distillbench.bench_settings import BenchSettings
    from distillbench.workspace import cache_root

    if args.reading:
        from distillbench.reading_bench import run_reading_bench
        from distillbench.workspace import has_records

        if not has_records(args.results_dir):
            raise UserError(f"bench --reading: no run records under {args.results_dir} to read")
        record = run_reading_bench(args.results_dir, echo=lambda m: print(m, file=sys.stderr))
        print(f"record {record['_path']}")
        return 0
    if not args.task:
        raise UserError("bench needs --task (or --reading)")
    if (args.steps and args.steps <= args.warmup) or args.warmup < 1 or args.rounds < 1:
        raise UserError("bench needs --steps > --warmup ≥ 1 (or --steps 0: one epoch) and --rounds ≥ 1")
    if args.end_to_end_epochs < 0:
        raise UserError(f"--end-to-end {args.end_to_end_epochs}: epochs must be ≥ 0")
    settings = BenchSettings(**{f.name: getattr(args, f.name) for f in dataclasses.fields(BenchSettings)})
    record = run_bench(settings, args.results_dir, args.cache_dir or cache_root(), lambda m: print(m, file=sys.stderr))
    for name, figures in record["phases"].items():
        print(f"{name:20s} {figures['seconds_per_step']:.3f} s/step  peak RSS {figures['peak_rss_mib']:.0f} MiB")
    for name, value in record["ratios"].items():
        print(f"{name:28s} {value:.3f}")
    if record["end_to_end"]:
        print(whole_runs_line(record))
    print(f"record {record['_path']}")
    return 0


WRITING_COMMANDS = ("run", "tune", "teacher-study", "bench", "efficiency")
READING_COMMANDS = ("table", "compare", "plot", "leaderboard")


def choose_results_dir(args: argparse.Namespace) -> None:
    """Writers default to the workspace; readers to the workspace when it has runs, else the published
    results, and say which first (a sweep's folder may come from its file: see ``sweep_spec``)."""
    from distillbench.workspace import reading_folder, workspace

    if args.command in WRITING_COMMANDS and args.results_dir is None:
        args.results_dir = workspace()
    elif args.command in READING_COMMANDS:
        args.source = reading_folder(args.results_dir)
        args.results_dir = args.source.path


def announce(args: argparse.Namespace) -> None:
    """The first line a reading command prints, once its arguments are valid: which folder it reads."""
    if not args.results_dir.is_dir():
        raise UserError(f"results directory {args.results_dir} does not exist")
    print(args.source.line(), file=sys.stderr)


COMMANDS = {
    "run": command_run,
    "tune": command_tune,
    "sweep": command_sweep,
    "teacher-study": command_teacher_study,
    "show": command_show,
    "list": command_list,
    "table": command_table,
    "compare": command_compare,
    "plot": command_plot,
    "leaderboard": command_leaderboard,
    "bench": command_bench,
    "efficiency": command_efficiency,
}


def quiet_libraries(verbose: bool) -> None:
    """Without ``--verbose``, the libraries' own chatter stays out of the output: transformers' load report
    of a freshly initialised task head (expected: the head is new), datasets' per-split progress bars
    (the run has its own) and the Trainer's log dict every few steps (the record keeps the loss terms).
    An environment that sets any of these variables wins."""
    from distillbench.workspace import VERBOSE_ENV

    if verbose:
        os.environ[VERBOSE_ENV] = "1"
        return
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # "Writing model shards" of every saved model
    if "transformers" in sys.modules:  # a plug-in imported it before the environment was read
        from transformers.utils import logging

        logging.set_verbosity_error()


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    quiet_libraries(verbose="--verbose" in argv)
    argv = [a for a in argv if a != "--verbose"]
    try:
        command_line = list(argv)  # what a local worker or a Slurm job runs again (plug-ins included)
        plugins, argv = take_plugin_arguments(argv)
        for path in plugins:
            load_plugin(path)
        parser = build_parser()
        args, passthrough = parser.parse_known_args(argv)
        if passthrough and args.command not in ("sweep", "teacher-study"):
            parser.error(f"unrecognized arguments: {' '.join(passthrough)}")
        args.passthrough = passthrough
        args.argv = command_line
        choose_results_dir(args)
        return COMMANDS[args.command](args)
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_USAGE
    except RunFailed as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_FAILED
    except BrokenPipeError:  # the output went to `head` or a pager that closed: no traceback
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
