"""A newcomer's first hour: their runs land in a workspace and never touch the published results, reading
commands say which folder they read, re-reading is cached, and each first mistake is one error line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from scipy import stats
from test_leaderboard import record

from conftest import tiny_run_args
from distillbench import significance as significance_module
from distillbench.cli import main, quiet_libraries
from distillbench.experiments import group_experiments
from distillbench.markers import significance
from distillbench.predictions import FOLDER, reference_to
from distillbench.records import write_json_atomic
from distillbench.selection import collect
from distillbench.significance import format_p, smallest_permutation_p
from distillbench.workspace import DEFAULT_WORKSPACE, WORKSPACE_ENV

ROOT = Path(__file__).resolve().parents[1]


def cli(args: list[str], cwd: Path, **env: str) -> subprocess.CompletedProcess:
    """``python -m distillbench`` as a user types it, with this suite's environment less the workspace
    override (a newcomer has none) plus ``env``."""
    environment = {k: v for k, v in os.environ.items() if k != WORKSPACE_ENV} | {"OMP_NUM_THREADS": "1"} | env
    return subprocess.run(
        [sys.executable, "-m", "distillbench", *args], cwd=cwd, env=environment, capture_output=True, text=True
    )


def test_a_users_run_leaves_a_fresh_clones_results_and_leaderboard_untouched(tiny_bert, glue_dir, tmp_path):
    """The issue's check: in a fresh clone, a 5-step run of a task lands in ./distillbench-runs, the
    leaderboard reads that workspace and says so, and git sees no change at all."""
    clone = tmp_path / "clone"
    try:
        subprocess.run(["git", "clone", "--quiet", str(ROOT), str(clone)], check=True, capture_output=True)
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout")
    args = tiny_run_args(tiny_bert, glue_dir, "kd")
    steps = args.index("--max-steps")
    args[steps + 1] = "5"
    run = cli(args, clone, DISTILLBENCH_CACHE=str(tmp_path / "cache"))
    assert run.returncode == 0, run.stderr[-2000:]
    assert "bounded        max_steps=5, teacher_max_steps=3" in run.stdout
    assert "{'loss'" not in run.stdout and "LOAD REPORT" not in run.stderr  # quiet unless --verbose
    (record_path,) = (clone / DEFAULT_WORKSPACE / "runs").glob("mrpc-kd-*.json")
    assert json.loads(record_path.read_text())["train"]["max_steps"] == 5
    assert list(clone.glob("outputs/*/student")) and not list(clone.glob("outputs/*/checkpoint-*"))
    board = cli(["leaderboard", "--html", str(tmp_path / "page")], clone)
    assert board.returncode == 0, board.stderr[-2000:]
    first = board.stderr.splitlines()[0]  # the folder read first, then where the published campaign is
    assert first.startswith(f"reading your workspace: {DEFAULT_WORKSPACE} (") and "--results-dir results" in first
    assert sorted(p.name for p in (tmp_path / "page").iterdir()) == ["index.html"]
    table = cli(["table"], clone)  # after a smoke test the workspace ranks nothing: the output says what to try
    said = " ".join(table.stdout.split())
    assert said.startswith(f"Nothing to show from {DEFAULT_WORKSPACE}.") and "--include-bounded" in said
    assert said.endswith("the published campaign: --results-dir results.") and table.returncode == 0
    status = subprocess.run(["git", "status", "--porcelain"], cwd=clone, capture_output=True, text=True).stdout
    assert status == ""  # results/, the leaderboard, the READMEs: all as committed; the workspace is ignored


def test_without_a_workspace_readers_read_the_published_results(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv(WORKSPACE_ENV, raising=False)
    assert main(["table", "--experiment", "1"]) == 0
    captured = capsys.readouterr()
    assert captured.err.splitlines()[0].startswith("reading the published results")
    assert captured.out.startswith("Experiment 1: ")
    assert main(["table", "--experiment", "1", "--results-dir", str(ROOT / "results")]) == 0
    assert capsys.readouterr().out == captured.out  # the published results, not some other folder
    assert not (tmp_path / DEFAULT_WORKSPACE).exists()


def test_a_filtered_table_keeps_the_leaderboards_experiment_numbers(capsys):
    """`table --tasks generation` titles its experiment with the number the full leaderboard gives it, and
    `--experiment` takes that number, so a reader can go from one view to the other."""
    results = ["--results-dir", str(ROOT / "results")]
    (expected,) = [
        e.number
        for e in group_experiments(collect(ROOT / "results").records)
        if any(r["task"] == "generation" for r in e.students)
    ]
    assert expected > 1  # else this test could not tell renumbering apart
    assert main(["table", "--tasks", "generation", *results]) == 0
    titles = [line for line in capsys.readouterr().out.splitlines() if line.startswith("Experiment ")]
    assert titles[0].startswith(f"Experiment {expected}: ")
    assert main(["table", "--tasks", "generation", "--experiment", str(expected), *results]) == 0
    assert capsys.readouterr().out.startswith(titles[0])
    assert main(["table", "--tasks", "generation", "--experiment", "1", *results]) == 2
    assert capsys.readouterr().err.splitlines()[-1] == (
        f"error: --experiment 1: not one of this selection's experiments ({expected})"
    )


def test_the_terminal_table_keeps_to_120_columns(capsys):
    assert main(["table", "--results-dir", str(ROOT / "results"), "--significance", "--strict"]) == 0
    out = capsys.readouterr().out
    assert "| p examples (Holm)" in out and "(min 0.1)" in out and "< 1e-4" in out and "0.0000" not in out
    assert max(len(line) for line in out.splitlines()) <= 120
    assert main(["table", "--results-dir", str(ROOT / "results"), "--history"]) == 0
    assert max(len(line) for line in capsys.readouterr().out.splitlines()) <= 120


def test_leaderboard_html_writes_only_its_folder_and_checks_it_first(tmp_path, capsys):
    results = tmp_path / "results"
    for seed in (1, 2):
        for method, accuracy in (("kd", 0.8), ("finetune", 0.7)):
            r = record(method, "mrpc", seed, {"accuracy": accuracy + seed / 100, "f1": 0.8})
            write_json_atomic(results / "runs" / f"{method}{seed}.json", r)
    before = sorted(str(p.relative_to(results)) for p in results.rglob("*"))
    assert main(["leaderboard", "--results-dir", str(results), "--html", str(tmp_path / "page")]) == 0
    assert sorted(str(p.relative_to(results)) for p in results.rglob("*")) == before
    assert sorted(p.name for p in (tmp_path / "page").iterdir()) == ["index.html"]
    capsys.readouterr()
    (tmp_path / "a-file").write_text("")
    for bad in (tmp_path / "a-file", tmp_path / "a-file" / "below"):
        assert main(["leaderboard", "--results-dir", str(results), "--write", "--html", str(bad)]) == 2
        assert capsys.readouterr().err.count("error:") == 1
    assert sorted(str(p.relative_to(results)) for p in results.rglob("*")) == before  # --write wrote nothing
    assert main(["leaderboard", "--results-dir", str(results), "--write"]) == 0
    assert (results / "leaderboard.md").read_text().startswith("# Leaderboard")
    assert (results / "plots" / "experiment-1.svg").is_file()


def predictions_board(results: Path, tamper: bool = False) -> list[dict]:
    """kd and finetune on MRPC, seeds 1 and 2, each with a stored predictions file and its sha256."""
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 120)
    records = []
    for seed in (1, 2):
        for method, accuracy in (("kd", 0.8), ("finetune", 0.7)):
            correct = rng.random(120) < accuracy
            predicted = np.where(correct, labels, 1 - labels)
            logits = np.stack([predicted == 0, predicted == 1], axis=1).astype(np.float32)
            name = f"{method}{seed}"
            (results / FOLDER).mkdir(parents=True, exist_ok=True)
            np.savez_compressed(
                results / FOLDER / f"{name}.npz",
                **{"validation/step20/predictions": logits, "validation/step20/labels": labels},
            )
            r = record(method, "mrpc", seed, {"accuracy": float(correct.mean()), "f1": 0.8}, run_id=name)
            r["predictions"] = reference_to(results, name, ["validation/step20"])
            write_json_atomic(results / "runs" / f"{name}.json", r)
            records.append(r)
    return records


def test_bootstraps_are_cached_by_the_predictions_and_rechecked(tmp_path, monkeypatch):
    monkeypatch.setenv("DISTILLBENCH_CACHE", str(tmp_path / "cache"))
    results = tmp_path / "results"
    predictions_board(results)
    records = collect(results).records
    first = significance(records, "final", 1000)
    assert len(first.findings) == 1 and not first.skipped

    def refuse(*args, **kwargs):
        raise AssertionError("a cached bootstrap was recomputed")

    monkeypatch.setattr(significance_module, "paired_bootstrap", refuse)
    again = significance(records, "final", 1000)
    assert again.findings[0].comparison == first.findings[0].comparison
    # a changed predictions file is refused even though its bootstrap is cached: never dropped in silence
    (results / FOLDER / "kd1.npz").write_bytes(b"changed")
    tampered = significance(records, "final", 1000)
    assert not tampered.findings and len(tampered.skipped) == 1
    assert "differs from the sha256 its record holds" in tampered.legend()
    assert "1 comparison(s) could not be made" in tampered.legend()
    # the table lists it; --strict (as CI runs the committed results) fails on it
    table = ["table", "--results-dir", str(results), "--significance", "--resamples", "1000"]
    assert main(table) == 0
    assert main([*table, "--strict"]) == 1


@pytest.mark.parametrize(("n_a", "n_b"), [(3, 3), (5, 5), (2, 4), (2, 2)])
def test_the_smallest_across_seed_p_is_what_the_exact_test_gives_at_full_separation(n_a, n_b):
    separated = stats.permutation_test(
        (np.arange(n_a) + 100.0, np.arange(n_b) * 1.0),
        lambda x, y, axis=-1: np.mean(x, axis=axis) - np.mean(y, axis=axis),
        permutation_type="independent",
        n_resamples=np.inf,
    ).pvalue
    assert smallest_permutation_p(n_a, n_b) == pytest.approx(separated)


def test_p_values_are_never_printed_as_zero():
    assert format_p(0.0) == "< 1e-4" and format_p(0.00004) == "< 1e-4"
    assert format_p(0.0123) == "0.012" and format_p(1.0) == "1"


def test_experiments_keep_a_smoke_run_out_of_a_campaign():
    """A 5-step run of another task is its own (bounded) experiment: the campaign's table is unchanged."""
    campaign = [record(m, "mrpc", s, {"accuracy": 0.7, "f1": 0.8}) for m in ("kd", "finetune") for s in (1, 2, 3)]
    smoke = record("kd", "stsb", 1, {"pearson": 0.1, "spearman": 0.1}, train={"epochs": 3, "max_steps": 5})
    experiments = group_experiments([*campaign, smoke])
    assert [(e.tasks, e.bounded) for e in experiments] == [(["mrpc"], False), (["stsb"], True)]


def test_no_data_folder_and_no_hub_is_one_line_and_nothing_written(tmp_path):
    result = cli(["run", "--method", "kd", "--task", "mrpc"], tmp_path, HF_HUB_OFFLINE="1", DISTILLBENCH_DATA="")
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("error: ")
    assert "--data-dir" in result.stderr and "DISTILLBENCH_DATA" in result.stderr
    assert list(tmp_path.iterdir()) == []


RUN, READ = "distillbench.harness", "pandas"  # what `run` and the reading commands take seconds to import


@pytest.mark.parametrize(
    "mistake, told, heavy",
    [
        (["run", "--method", "nope", "--task", "mrpc"], "error: unknown method", RUN),
        (["run", "--method", "kd", "--task", "nope"], "error: unknown task", RUN),
        (
            ["run", "--method", "kd", "--task", "mrpc", "--epochs", "-1"],
            "error: --epochs: epochs=-1.0: must be > 0",
            RUN,
        ),
        (["run", "--method", "kd", "--task", "mrpc", "--set", "temperature=0"], "error: kd: temperature=0.0", RUN),
        (["run", "--method", "kd", "--task", "mrpc", "--seed", "-3"], "error: --seed -3: seeds are non-negative", RUN),
        (["table", "--format", "xml"], "error: unknown format 'xml'", READ),
        (["table", "--score", "worst"], "error: unknown score 'worst'", READ),
        (["compare", "kd", "finetune", "--task", "mrpc", "--resamples", "10"], "error: --resamples must be", READ),
        (["plot", "methods", "--score", "worst"], "error: unknown score 'worst'", READ),
    ],
)
def test_a_mistake_in_the_arguments_is_told_before_the_heavy_imports(mistake, told, heavy):
    """The harness (models, Trainer, datasets) and the readers (pandas and what they draw with) take
    seconds to import on a small machine: a typo in a name or a value out of its range is answered before
    them, as `list` and `show` are."""
    probe = (
        "import sys; from distillbench.cli import main; "
        f"code = main({mistake!r}); print(code, {heavy!r} in sys.modules)"
    )
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=ROOT)
    assert result.stdout.split() == ["2", "False"], result.stderr[-2000:]
    assert result.stderr.startswith(told), result.stderr


def test_a_dry_run_checks_the_pair_before_the_data(tiny_bert, workdir, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("DISTILLBENCH_DATA", raising=False)
    args = ["run", "--method", "kd", "--task", "mrpc", "--teacher", str(tiny_bert), "--dry-run"]
    assert main([*args, "--student-layer-ids", "0,9"]) == 2
    err = capsys.readouterr().err
    assert "9" in err and "data" not in err  # the pair's mistake, not the missing data


def test_max_steps_bounds_the_teacher_unless_a_full_teacher_is_cached(tiny_bert, glue_dir, workdir, capsys):
    from distillbench.cached import MARKER, stable_key
    from distillbench.cli import build_parser, plan_from_arguments
    from distillbench.stages import finetune_settings, with_cached_full_teacher

    base = ["run", "--method", "kd", "--task", "mrpc", "--teacher", str(tiny_bert), "--data-dir", str(glue_dir)]
    parser = build_parser()
    plan = plan_from_arguments(parser.parse_args([*base, "--max-steps", "5"]))
    assert (plan.config.train.max_steps, plan.config.train.teacher_max_steps) == (5, 5)
    explicit = plan_from_arguments(parser.parse_args([*base, "--max-steps", "5", "--set", "teacher_max_steps=-1"]))
    assert explicit.config.train.teacher_max_steps == -1
    with pytest.raises(SystemExit):
        main(["run", "--help"])
    assert "a smoke-test bound on every stage, the teacher's too" in " ".join(capsys.readouterr().out.split())
    # a teacher fine-tuned at the full budget is in the cache: the bounded run reads it
    full = plan_from_arguments(parser.parse_args([*base, "--set", "teacher_max_steps=-1", "--max-steps", "5"]))
    capsys.readouterr()
    assert main([*base, "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "teacher fine-tune → kd on the student" in out
    where = Path("outputs") / plan_from_arguments(parser.parse_args(base)).run_name / "student"
    assert f"student model  {where}" in out  # where the trained student will be
    assert max(map(len, out.splitlines())) <= 120  # settings wrap under their label, not mid-word
    folder = full.paths.cache_dir / "stages" / f"mrpc-teacher-finetune-{stable_key(finetune_settings(full, 'teacher'))}"
    folder.mkdir(parents=True)
    (folder / MARKER).write_text("{}")
    assert main([*base, "--dry-run"]) == 0
    assert "teacher fine-tune (cached) → kd on the student" in capsys.readouterr().out
    assert with_cached_full_teacher(plan).config.train.teacher_max_steps == -1
    assert plan_from_arguments(parser.parse_args([*base, "--max-steps", "5"])).config.train.teacher_max_steps == -1


def test_python_dash_m_distillbench_is_the_cli(tmp_path):
    result = cli(["list"], tmp_path)
    assert result.returncode == 0 and "methods:" in result.stdout and "ted" in result.stdout


def test_show_a_task_gives_its_data_labels_sizes_and_majority_class(glue_dir, capsys, monkeypatch):
    monkeypatch.delenv("DISTILLBENCH_DATA", raising=False)  # the suite may run with it set (the SQuAD checks)
    assert main(["show", "mrpc", "--data-dir", str(glue_dir)]) == 0
    out = capsys.readouterr().out
    assert "labels: 0, 1" in out and "examples: train 48, validation 16" in out
    assert "majority class (the most frequent training label, scored on dev): accuracy" in out
    assert main(["show", "mrpc", "--data-dir", ""]) == 0
    assert "--data-dir or set DISTILLBENCH_DATA" in capsys.readouterr().out


def test_kd_reads_kl_of_teacher_against_student(capsys):
    assert main(["list", "kd"]) == 0
    assert "KL(teacher/T ‖ student/T)" in capsys.readouterr().out


def test_the_libraries_are_quiet_unless_verbose(monkeypatch):
    for name in ("TRANSFORMERS_VERBOSITY", "HF_DATASETS_DISABLE_PROGRESS_BARS"):
        monkeypatch.delenv(name, raising=False)
    quiet_libraries(verbose=True)
    assert "TRANSFORMERS_VERBOSITY" not in os.environ
    quiet_libraries(verbose=False)
    assert os.environ["TRANSFORMERS_VERBOSITY"] == "error" and os.environ["HF_DATASETS_DISABLE_PROGRESS_BARS"] == "1"


def test_progress_bars_name_the_stage_they_train_or_evaluate(tiny_bert, glue_dir, workdir, capfd):
    """A run trains the teacher (its own cache: not read from a stage another test trained), then the
    student, each with its evaluations: each bar says which."""
    args = [a for a in tiny_run_args(tiny_bert, glue_dir, "kd") if a != "--no-progress"]
    assert main(args) == 0
    bars = capfd.readouterr().err
    assert "teacher-finetune: 100%" in bars and "kd-student: 100%" in bars
    assert "teacher-finetune: evaluating" in bars and "kd-student: evaluating" in bars
