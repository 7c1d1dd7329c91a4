"""`distillbench sweep`: the plan, resuming after a kill with every cell exactly once, failing cells."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import tiny_run_args
from distillbench.cli import main
from distillbench.errors import UserError
from distillbench.sweep import SweepSpec

GRID = ("--methods", "finetune,kd", "--tasks", "mrpc", "--seeds", "1,2")


def sweep_args(tiny_bert: Path, glue_dir: Path, *extra: str, grid: tuple[str, ...] = GRID) -> list[str]:
    """The tiny run's flags (less ``run --method M --task T``) after the grid, four steps per cell."""
    run_flags = tiny_run_args(tiny_bert, glue_dir, "kd")[5:]
    return ["sweep", *grid, *run_flags, "--teacher-seed", "7", "--max-steps", "4", *extra]


def student_records(results: Path) -> list[dict]:
    records = [json.loads(p.read_text()) for p in (results / "runs").glob("*.json")]
    return [r for r in records if r["role"] == "student"]


def test_dry_run_lists_the_cells_and_writes_nothing(tiny_bert, glue_dir, workdir, capsys):
    assert main(sweep_args(tiny_bert, glue_dir, "--dry-run")) == 0
    out = capsys.readouterr().out
    assert out.count(" todo ") == 4 and "4 cells: 0 done, 4 to run" in out
    assert not (workdir / "results").exists() and not (workdir / "cache").exists()


def test_sweep_runs_each_cell_once_then_skips_them(tiny_bert, glue_dir, workdir, capsys):
    assert main(sweep_args(tiny_bert, glue_dir)) == 0
    assert "sweep: 4 ran, 0 already complete, 0 running elsewhere, 0 failed" in capsys.readouterr().out
    records = student_records(workdir / "results")
    assert sorted((r["method"], r["seed"]) for r in records) == [("finetune", 1), ("finetune", 2), ("kd", 1), ("kd", 2)]
    teachers = {r["teacher"]["key"] for r in records if r["teacher"]}
    assert len(teachers) == 1  # the pinned teacher seed: one teacher for every student seed
    assert all(r["teacher_seed"] == 7 for r in records)
    assert main(sweep_args(tiny_bert, glue_dir, "--dry-run")) == 0
    assert "4 cells: 4 done, 0 to run" in capsys.readouterr().out
    assert main(sweep_args(tiny_bert, glue_dir)) == 0
    assert "sweep: 0 ran, 4 already complete, 0 running elsewhere, 0 failed" in capsys.readouterr().out


def test_sweep_killed_mid_cell_and_rerun_ends_with_each_cell_once(tiny_bert, glue_dir, workdir):
    env = {**os.environ, "DISTILLBENCH_CACHE": str(workdir / "cache")}
    command = [sys.executable, "-m", "distillbench.cli", *sweep_args(tiny_bert, glue_dir)]
    process = subprocess.Popen(command, cwd=workdir, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while time.time() < deadline and process.poll() is None:
        if len(student_records(workdir / "results") if (workdir / "results" / "runs").is_dir() else []) >= 1:
            break
        time.sleep(0.2)
    process.send_signal(signal.SIGKILL)
    process.wait()
    killed_with = len(student_records(workdir / "results"))
    assert killed_with < 4  # killed before the end of the sweep
    result = subprocess.run(command, cwd=workdir, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert f"{killed_with} already complete" in result.stdout
    records = student_records(workdir / "results")
    assert sorted((r["method"], r["seed"]) for r in records) == [("finetune", 1), ("finetune", 2), ("kd", 1), ("kd", 2)]


def test_a_failing_cell_does_not_stop_the_others(tiny_bert, glue_dir, workdir, capsys):
    spec = workdir / "diverging-kd.toml"
    spec.write_text(
        'methods = ["kd", "finetune"]\ntasks = ["mrpc"]\nseeds = [1]\n'
        '[method_args]\nkd = ["--set", "learning_rate=1e9"]\n'
    )
    args = sweep_args(tiny_bert, glue_dir, "--file", str(spec), grid=())
    assert main(args) == 1
    out = capsys.readouterr().out
    assert "sweep: 1 ran, 0 already complete, 0 running elsewhere, 1 failed" in out
    assert "failed: mrpc kd seed 1: NonFiniteLoss: loss term 'task' became nan" in out
    assert [r["method"] for r in student_records(workdir / "results")] == ["finetune"]


def test_a_bad_cell_fails_the_sweep_before_anything_runs(tiny_bert, glue_dir, workdir, capsys):
    assert main(sweep_args(tiny_bert, glue_dir, "--set", "bogus=1")) == 2
    assert "unknown hyper-parameter" in capsys.readouterr().err
    assert not (workdir / "results").exists()


def test_sweep_file(tmp_path):
    path = tmp_path / "s.toml"
    path.write_text(
        'methods = ["kd"]\ntasks = ["mrpc"]\nseeds = [1, 2]\nargs = ["--epochs", "3"]\n'
        '[task_args]\nmrpc = ["--set", "batch_size=16"]\n'
    )
    spec = SweepSpec.from_toml(path)
    assert [c[:3] for c in spec.cells()] == [("mrpc", "kd", 1), ("mrpc", "kd", 2)]
    assert spec.cells()[0][3][-4:] == ["--epochs", "3", "--set", "batch_size=16"]
    path.write_text('methods = ["kd"]\ntasks = ["mrpc"]\nseed = [1]\n')
    with pytest.raises(UserError, match="unknown key 'seed'"):
        SweepSpec.from_toml(path)


def test_table_significance_and_compare_read_a_sweeps_records(tiny_bert, glue_dir, workdir, capsys):
    grid = ("--methods", "finetune,kd,lwd", "--tasks", "mrpc", "--seeds", "1,2")
    assert main(sweep_args(tiny_bert, glue_dir, grid=grid)) == 0
    capsys.readouterr()
    # the sweep's runs are step-bounded smoke tests: left out unless asked
    assert main(["table", "--significance", "--include-dirty", "--resamples", "1000"]) == 0
    empty = " ".join(capsys.readouterr().out.split())  # what to try, not the counts of the line above again
    assert (
        empty.startswith("Nothing to show from")
        and "bounded runs (smoke tests such as the demo): --include-bounded" in empty
    )
    bounded = ["--include-dirty", "--include-bounded", "--resamples", "1000"]
    assert main(["table", "--task", "stsb", *bounded]) == 0  # records used, none of the task asked for
    empty = capsys.readouterr().out
    assert "for task stsb" in empty and "--include-bounded" not in empty  # nothing bounded was left out
    assert main(["table", "--significance", *bounded]) == 0
    out = capsys.readouterr().out
    assert out.startswith("Experiment 1: MRPC")
    assert "Holm-corrected over the 3 comparisons of this" in out  # kd, lwd vs finetune; lwd vs kd
    assert "† / ‡: better / worse than finetune; ⁺ / ⁻: better / worse than kd" in out
    assert "avg" not in out  # one task: no average column
    assert "| p seeds (min)" in out and "(min 0.33)" in out  # 2 vs 2 seeds: the smallest p is 2/6
    assert main(["compare", "lwd", "finetune", "--task", "mrpc", *bounded]) == 0
    out = capsys.readouterr().out
    assert "paired bootstrap, 2 seed pair(s) [1, 2], 1,000 resamples" in out
    assert "would the gap survive another dev set?" in out and "would it survive other training seeds?" in out
    assert "exact permutation test of 2 vs 2 seeds" in out and "the smallest it can give with these seeds: 0.33" in out
    assert main(["compare", "lwd", "minilm", "--task", "mrpc", *bounded]) == 2
    err = capsys.readouterr().err
    assert "no mrpc records of method 'minilm'" in err and "did you mean 'minilmv2'?" not in err
    assert main(["compare", "lwdd", "finetune", "--task", "mrpc", *bounded]) == 2
    assert "did you mean 'lwd'?" in capsys.readouterr().err
