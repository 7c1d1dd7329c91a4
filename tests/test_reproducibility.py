"""Same command, same seed → same weights, for every registered method; no non-finite record."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from safetensors.torch import load_file

from conftest import tiny_run_args
from distillbench import list_methods
from distillbench.cli import main


def run_into(tiny_bert: Path, glue_dir: Path, method: str, folder: str) -> tuple[dict, dict]:
    args = tiny_run_args(tiny_bert, glue_dir, method)
    assert main([*args, "--output-dir", f"{folder}/out", "--results-dir", f"{folder}/results"]) == 0
    records = [json.loads(p.read_text()) for p in Path(folder, "results", "runs").glob("*.json")]
    student = next(r for r in records if r["role"] == "student")
    return student, load_file(Path(folder, "out", "student", "model.safetensors"))


@pytest.mark.parametrize("method", list_methods())
def test_two_runs_with_one_seed_give_identical_weights(method, tiny_bert, glue_dir, workdir, capsys):
    first, first_weights = run_into(tiny_bert, glue_dir, method, "a")
    second, second_weights = run_into(tiny_bert, glue_dir, method, "b")
    assert first["loss_terms"] == second["loss_terms"]
    assert first_weights.keys() == second_weights.keys()
    for name, tensor in first_weights.items():
        assert tensor.equal(second_weights[name]), f"{method}: {name} differs between two runs with one seed"


def test_a_diverging_loss_stops_the_run_with_one_line_and_no_record(tiny_bert, glue_dir, workdir, capsys):
    code = main([*tiny_run_args(tiny_bert, glue_dir, "kd"), "--set", "learning_rate=1e9"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1
    assert err[-1].startswith("error: loss term 'task' became nan at step ")
    runs = workdir / "results" / "runs"
    students = (
        [p for p in runs.glob("*.json") if json.loads(p.read_text())["role"] == "student"] if runs.is_dir() else []
    )
    assert students == []
