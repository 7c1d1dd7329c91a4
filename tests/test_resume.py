"""A killed run, started again with the same command, resumes and ends with the same numbers."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from conftest import tiny_run_args


def run_cli(args: list[str], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "distillbench.cli", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600
    )


def student_record(results: Path) -> dict:
    records = [json.loads(p.read_text()) for p in (results / "runs").glob("*.json")]
    return next(r for r in records if r["role"] == "student")


def test_last_complete_checkpoint_skips_a_half_written_one(tmp_path):
    from distillbench.training import last_complete_checkpoint

    assert last_complete_checkpoint(tmp_path / "missing") is None
    states = {3: "{}", 12: '{"global_step": 12}', 15: None, 18: "", 21: '{"global_st'}  # None: not written yet
    for step, state in states.items():
        (tmp_path / f"checkpoint-{step}").mkdir()
        if state is not None:  # 18 and 21: killed while the Trainer was writing the file
            (tmp_path / f"checkpoint-{step}" / "trainer_state.json").write_text(state)
    assert last_complete_checkpoint(tmp_path) == str(tmp_path / "checkpoint-12")


def test_kill_and_resume_matches_an_uninterrupted_run(tiny_bert, glue_dir, tmp_path):
    env = {**os.environ, "DISTILLBENCH_CACHE": str(tmp_path / "cache")}
    args = [*tiny_run_args(tiny_bert, glue_dir, "kd"), "--max-steps", "12", "--set", "save_steps=3"]

    reference_dir = tmp_path / "reference"
    reference_dir.mkdir()
    result = run_cli(args, reference_dir, env)
    assert result.returncode == 0, result.stderr[-2000:]
    reference = student_record(reference_dir / "results")

    work = tmp_path / "interrupted"
    work.mkdir()
    process = subprocess.Popen(
        [sys.executable, "-m", "distillbench.cli", *args],
        cwd=work,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 300
    while not list(work.glob("outputs/*/checkpoint-6/*")) and time.time() < deadline:
        assert process.poll() is None, "the run ended before it could be interrupted"
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not (work / "results").exists()

    result = run_cli(args, work, env)
    assert result.returncode == 0, result.stderr[-2000:]
    resumed = student_record(work / "results")
    # killed while checkpoint-6 was being written: it resumes from checkpoint-3 (mid-epoch) or 6
    assert resumed["resumed_from"] and resumed["resumed_from"].endswith(("checkpoint-3", "checkpoint-6"))
    assert resumed["resumed_from"].startswith("output:")  # named by the run's output folder, no machine path
    assert resumed["metrics"] == reference["metrics"]
    assert resumed["loss_terms"] == reference["loss_terms"]
    assert resumed["run_id"] == reference["run_id"]


def test_a_run_killed_after_an_epoch_keeps_that_epochs_predictions(tiny_bert, glue_dir, tmp_path):
    """Evaluations made before the checkpoint a run resumes from are not made again; their predictions
    come back from the run's output folder, so the record's file holds every epoch's, as an uninterrupted
    run's does (else a best epoch before the kill would have none)."""
    import numpy as np

    from conftest import launch_cli

    args = [*tiny_run_args(tiny_bert, glue_dir, "kd"), "--max-steps", "-1", "--epochs", "3"]
    reference_dir, work = tmp_path / "reference", tmp_path / "interrupted"
    reference_dir.mkdir(), work.mkdir()
    assert launch_cli(args, reference_dir, tmp_path / "cache-a").wait() == 0
    reference = student_record(reference_dir / "results")
    assert len(reference["predictions"]["evaluations"]) == 3  # 48 examples, batches of 8: steps 6, 12, 18

    process = launch_cli(args, work, tmp_path / "cache-b")
    deadline = time.time() + 300
    while time.time() < deadline and not list(work.glob("outputs/*/checkpoint-8/trainer_state.json")):
        assert process.poll() is None, "the run ended before it could be interrupted"
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not list(work.glob("results/runs/mrpc-kd-*.json"))

    assert launch_cli(args, work, tmp_path / "cache-b").wait() == 0
    resumed = student_record(work / "results")
    assert int(resumed["resumed_from"].rpartition("-")[2]) >= 8  # epoch 1's evaluation was not run again
    assert resumed["predictions"]["evaluations"] == reference["predictions"]["evaluations"]
    with (
        np.load(work / "results" / resumed["predictions"]["path"]) as got,
        np.load(reference_dir / "results" / reference["predictions"]["path"]) as expected,
    ):
        assert sorted(got.files) == sorted(expected.files)
        for key in expected.files:
            np.testing.assert_array_equal(got[key], expected[key])
