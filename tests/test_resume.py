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
