"""One run as two processes (torchrun, gloo on CPU) against the same run as one process.

With the whole training set in every step (48 examples: one process with batch 48, two with 24 each)
and no dropout, data parallelism changes only the order of floating-point sums: the two runs must reach
the same student, the same dev predictions and the same metrics. Only rank 0 writes.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file

from conftest import make_tiny_bert

TOLERANCE = 1e-5  # absolute, on weights and dev logits after 3 optimiser steps at lr 1e-3 (measured: 7e-7)


def launch(processes: int, batch_size: int, teacher: Path, data: Path, folder: Path) -> subprocess.CompletedProcess:
    args = ["run", "--method", "kd", "--task", "mrpc", "--teacher", str(teacher), "--data-dir", str(data)]
    args += ["--max-steps", "3", "--results-dir", str(folder / "results"), "--output-dir", str(folder / "out")]
    for setting in (
        f"batch_size={batch_size}",
        "teacher_max_steps=3",
        "learning_rate=1e-3",
        "teacher_learning_rate=1e-3",
        "logging_steps=1",
        "eval_batch_size=8",
    ):
        args += ["--set", setting]
    launcher = [
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={processes}",
        "-m",
        "distillbench.cli",
    ]
    command = [sys.executable, *(launcher if processes > 1 else ["-m", "distillbench.cli"]), *args, "--no-progress"]
    env = {**os.environ, "DISTILLBENCH_CACHE": str(folder / "cache"), "OMP_NUM_THREADS": "1"}
    return subprocess.run(command, cwd=folder, env=env, capture_output=True, text=True, timeout=600)


def records(folder: Path) -> dict[str, dict]:
    loaded = [json.loads(p.read_text()) for p in (folder / "results" / "runs").glob("*.json")]
    return {record["role"]: record for record in loaded} | {"count": len(loaded)}  # type: ignore[dict-item]


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory: pytest.TempPathFactory, glue_dir: Path) -> tuple[Path, Path]:
    teacher = make_tiny_bert(tmp_path_factory.mktemp("no-dropout-bert"), dropout=0.0)
    single, double = tmp_path_factory.mktemp("one-process"), tmp_path_factory.mktemp("two-processes")
    for folder, processes, batch in ((single, 1, 48), (double, 2, 24)):
        result = launch(processes, batch, teacher, glue_dir, folder)
        assert result.returncode == 0, result.stderr[-3000:]
        (folder / "stdout.txt").write_text(result.stdout)
    return single, double


def test_two_processes_write_one_record_with_every_process_and_the_global_batch(two_runs):
    _, double = two_runs
    found = records(double)
    assert found["count"] == 2  # the student record and its teacher stage's record, once each
    student = found["student"]
    assert student["distributed"] == {"processes": 2, "global_batch_size": 48}
    assert [p["rank"] for p in student["hardware"]["processes"]] == [0, 1]
    assert found["teacher"]["distributed"] == {"processes": 2, "global_batch_size": 48}
    assert (double / "stdout.txt").read_text().count("distillbench  kd on mrpc") == 1  # one summary


def test_two_processes_match_one_process_with_the_same_global_batch(two_runs):
    single, double = two_runs
    one, two = records(single)["student"], records(double)["student"]
    assert one["distributed"] == {"processes": 1, "global_batch_size": 48}
    assert one["run_id"] != two["run_id"]  # a different launch is a different experiment key
    assert one["metrics"] == pytest.approx(two["metrics"], abs=TOLERANCE)
    for a, b in zip(one["loss_history"], two["loss_history"], strict=True):
        assert a["step"] == b["step"] and a["loss"] == pytest.approx(b["loss"], abs=TOLERANCE)
    weights = [load_file(str(folder / "out" / "student" / "model.safetensors")) for folder in (single, double)]
    assert weights[0].keys() == weights[1].keys()
    assert max(float(np.abs(weights[0][k] - weights[1][k]).max()) for k in weights[0]) < TOLERANCE
    predictions = [
        np.load(folder / "results" / record["predictions"]["path"]) for folder, record in ((single, one), (double, two))
    ]
    for key in predictions[0].files:
        np.testing.assert_allclose(predictions[0][key], predictions[1][key], atol=TOLERANCE)


def test_accelerate_launch_runs_a_staged_method_as_two_processes(tiny_bert, glue_dir, tmp_path):
    """``accelerate launch --multi_gpu`` hands the processes to torchrun; on CPUs they join over gloo.
    TED's cached stages (fine-tunes, filters) are trained by both processes and written once."""
    args = ["run", "--method", "ted", "--task", "mrpc", "--teacher", str(tiny_bert), "--data-dir", str(glue_dir)]
    args += ["--max-steps", "2", "--set", "teacher_max_steps=2", "--set", "batch_size=8", "--no-progress"]
    launcher = ["-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes=2", "--num_machines=1"]
    launcher += ["--mixed_precision=no", "--dynamo_backend=no", "-m", "distillbench.cli"]
    env = {**os.environ, "DISTILLBENCH_CACHE": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, *launcher, *args], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stderr[-3000:]
    found = records(tmp_path)
    assert found["count"] == 2 and found["student"]["distributed"]["processes"] == 2
    stages = found["student"]["stages"]
    assert {"teacher-finetune", "ted-filters-teacher", "student-finetune", "ted-filters-student"} <= set(stages)
    assert len(list((tmp_path / "cache" / "stages").glob("*/done.json"))) == 4


def test_tables_never_average_seeds_launched_with_different_process_counts():
    from distillbench.selection import config_fingerprint

    record = {"hparams": {}, "train": {"batch_size": 24}, "data": {"sha256": "x"}}
    assert config_fingerprint(record) == config_fingerprint(record | {"distributed": {"processes": 1}})
    assert config_fingerprint(record) != config_fingerprint(record | {"distributed": {"processes": 2}})
