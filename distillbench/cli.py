"""``distillbench`` command line: run, list (and the tools built on run records).

Every user error is one ``error: …`` line on stderr and exit code 2; nothing is written before the
whole run has been validated.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import NoReturn

from distillbench.errors import UserError

EXIT_USAGE = 2


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a usage error is a single line (no usage block) with exit code 2."""

    def error(self, message: str) -> NoReturn:
        raise UserError(f"{self.prog}: {message}")


def add_run_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--method", required=True, help="a registered method (see `distillbench list`)")
    parser.add_argument("--task", required=True, help="a registered task (see `distillbench list`)")
    parser.add_argument(
        "--teacher",
        default="minilm-l6",
        help="pretrained teacher: minilm-l6 (PyPI package), a local folder or a hub id",
    )
    parser.add_argument("--teacher-finetuned", help="an already fine-tuned teacher folder: skip the teacher stage")
    parser.add_argument("--student", help="pretrained student folder/hub id, or random:N for N random layers")
    parser.add_argument("--student-layers", type=int, help="copy N teacher layers, uniformly spaced (default: half)")
    parser.add_argument("--student-layer-ids", help="copy exactly these teacher layers, e.g. 1,3,5 (0-based)")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a method or training hyper-parameter (typed), repeatable",
    )
    parser.add_argument("--epochs", type=float, help="training epochs of every stage")
    parser.add_argument("--max-steps", type=int, help="stop the student stages after this many steps")
    parser.add_argument("--preset", help="a named bounded budget, e.g. demo (see README)")
    parser.add_argument("--data-dir", help="folder with glue/, squad/, text/ (default: $DISTILLBENCH_DATA, else hub)")
    parser.add_argument("--output-dir", type=Path, help="checkpoints and the trained student (default: outputs/…)")
    parser.add_argument("--results-dir", type=Path, default=Path("results"), help="where run records go")
    parser.add_argument("--cache-dir", type=Path, help="stage cache (default: $DISTILLBENCH_CACHE or ~/.cache)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="distillbench", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True, parser_class=OneLineParser)
    add_run_arguments(commands.add_parser("run", help="fine-tune the teacher (cached) and distil a student"))
    listing = commands.add_parser("list", help="registered methods and tasks")
    listing.add_argument("pattern", nargs="?", default="*")
    table = commands.add_parser("table", help="a paper-style leaderboard from run records")
    table.add_argument("--tasks", help="comma-separated task names (default: all with records)")
    table.add_argument("--methods", help="comma-separated method names (default: all)")
    table.add_argument("--format", default="md", help="md, latex, csv or html")
    table.add_argument("--score", default="final", help="final (last epoch) or best (best epoch, as TED reports)")
    table.add_argument("--reference", action="store_true", help="add the TED reference block with deltas")
    table.add_argument("--include-dirty", action="store_true", help="keep records from a dirty git tree")
    table.add_argument("--results-dir", type=Path, default=Path("results"))
    table.add_argument("--out", type=Path, help="write here instead of stdout")
    plot = commands.add_parser("plot", help="seaborn figures (PNG + SVG) from records or a study")
    plot.add_argument("kind", help="methods (bars per task × method), loss (curves of one run) or study")
    plot.add_argument("--run", type=Path, help="the run record for `loss`")
    plot.add_argument("--score", default="final", help="final or best, for `methods`")
    plot.add_argument("--storage", help="Optuna storage URL, for `study`")
    plot.add_argument("--study-name", help="Optuna study name, for `study`")
    plot.add_argument("--results-dir", type=Path, default=Path("results"))
    plot.add_argument("--out-dir", type=Path, help="default: <results-dir>/plots")
    leaderboard = commands.add_parser("leaderboard", help="regenerate results/leaderboard.md and the README section")
    leaderboard.add_argument("--results-dir", type=Path, default=Path("results"))
    leaderboard.add_argument("--readme", type=Path, default=Path("README.md"))
    return parser


def command_run(args: argparse.Namespace) -> int:
    from distillbench.config import RunConfig, build_train_config, parse_overrides
    from distillbench.harness import Paths, Runner, cache_root, plan_run
    from distillbench.method import get_method
    from distillbench.summary import run_summary
    from distillbench.task import get_task

    method_cls, task_cls = get_method(args.method), get_task(args.task)
    train_overrides, method_overrides = parse_overrides(args.overrides, method_cls.hparam_fields())
    if args.epochs is not None:
        train_overrides["epochs"] = args.epochs
    if args.max_steps is not None:
        train_overrides["max_steps"] = args.max_steps
    config = RunConfig(
        method=args.method,
        task=args.task,
        teacher=args.teacher,
        teacher_finetuned=args.teacher_finetuned,
        student=args.student,
        student_layers=args.student_layers,
        student_layer_ids=args.student_layer_ids,
        seed=args.seed,
        data_dir=args.data_dir,
        preset=args.preset,
        method_overrides=method_overrides,
        train=build_train_config(task_cls.train_defaults, args.preset, train_overrides),
    )
    paths = Paths(
        results_dir=args.results_dir,
        output_dir=args.output_dir,
        cache_dir=args.cache_dir or cache_root(),
        show_progress=not args.no_progress,
    )
    record = Runner(plan_run(config, paths)).run()
    print(run_summary(record))
    return 0


def command_list(args: argparse.Namespace) -> int:
    from distillbench.method import get_method, list_methods
    from distillbench.task import get_task, list_tasks

    print("methods:")
    for name in list_methods(args.pattern):
        print(f"  {name:<12} {get_method(name).summary()}")
    print("tasks:")
    for name in list_tasks(args.pattern):
        print(f"  {name:<12} {get_task(name).summary()}")
    return 0


def _names(text: str | None, known: list[str], kind: str) -> list[str] | None:
    if not text:
        return None
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in known]
    if unknown:
        raise UserError(f"unknown {kind} {unknown[0]!r}; known {kind}s: {', '.join(known)}")
    return names


def command_table(args: argparse.Namespace) -> int:
    from distillbench.leaderboard import FORMATS, SCORES, aggregate, build_table, collect, reference_table, render
    from distillbench.method import list_methods
    from distillbench.task import list_tasks

    if args.format not in FORMATS:
        raise UserError(f"unknown format {args.format!r}; choose one of {', '.join(FORMATS)}")
    if args.score not in SCORES:
        raise UserError(f"unknown score {args.score!r}; choose one of {', '.join(SCORES)}")
    tasks = _names(args.tasks, list_tasks(), "task")
    methods = _names(args.methods, list_methods(), "method")
    selection = collect(args.results_dir, args.include_dirty)
    print(selection.report(), file=sys.stderr)
    stats = aggregate(selection.records, args.score)
    title = f"dev set, {args.score} epoch"
    text = render(build_table(stats, tasks, methods, title), args.format)
    if args.reference:
        reference = reference_table(aggregate(selection.records, "best"), tasks)
        block = reference.to_markdown(index=False) if args.format == "md" else reference.to_csv(index=False)
        text += f"\nTED reference (not measured here; measured best epoch - reference):\n{block}\n"
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
    else:
        print(text)
    return 0


def command_plot(args: argparse.Namespace) -> int:
    import json

    from distillbench import plots
    from distillbench.leaderboard import SCORES, collect

    out_dir = args.out_dir or args.results_dir / "plots"
    if args.kind == "methods":
        if args.score not in SCORES:
            raise UserError(f"unknown score {args.score!r}; choose one of {', '.join(SCORES)}")
        paths = plots.method_bars(collect(args.results_dir).records, out_dir, args.score)
    elif args.kind == "loss":
        if not args.run or not args.run.is_file():
            raise UserError("plot loss needs --run PATH of an existing run record")
        record = json.loads(args.run.read_text()) | {"_path": str(args.run)}
        paths = plots.loss_curves(record, out_dir)
    elif args.kind == "study":
        from distillbench.tuning import load_study

        study = load_study(args.storage, args.study_name)
        paths = plots.study_history(study.trials_dataframe(attrs=("number", "value", "state")),
                                    study.direction.name.lower(), out_dir, study.study_name)
    else:
        raise UserError(f"unknown plot {args.kind!r}; choose methods, loss or study")
    for path in paths:
        print(path)
    return 0


def command_leaderboard(args: argparse.Namespace) -> int:
    from distillbench.report import leaderboard_markdown, replace_readme_section

    body = leaderboard_markdown(args.results_dir)
    (args.results_dir / "leaderboard.md").write_text(f"# Leaderboard\n\n{body}")
    if args.readme.is_file():
        args.readme.write_text(replace_readme_section(args.readme.read_text(), body))
    print(body)
    return 0


COMMANDS = {"run": command_run, "list": command_list, "table": command_table, "plot": command_plot,
            "leaderboard": command_leaderboard}


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
        return COMMANDS[args.command](args)
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
