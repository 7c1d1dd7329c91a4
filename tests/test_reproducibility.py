"""Same command, same seed → same weights, for every registered method; no non-finite record."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from safetensors.torch import load_file

from conftest import CAUSAL_LM_ONLY_METHODS, tiny_run_args
from distillbench import list_methods
from distillbench.cli import main


def run_into(tiny_bert: Path, glue_dir: Path, method: str, folder: str) -> tuple[dict, dict]:
    args = tiny_run_args(tiny_bert, glue_dir, method)
    assert main([*args, "--output-dir", f"{folder}/out", "--results-dir", f"{folder}/results"]) == 0
    records = [json.loads(p.read_text()) for p in Path(folder, "results", "runs").glob("*.json")]
    student = next(r for r in records if r["role"] == "student")
    return student, load_file(Path(folder, "out", "student", "model.safetensors"))


@pytest.mark.parametrize("method", [m for m in list_methods() if m not in CAUSAL_LM_ONLY_METHODS])
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


@pytest.mark.parametrize("method", ["kd", "ted"])
def test_bf16_on_cpu_keeps_loss_terms_finite_and_close_to_fp32(method, tiny_bert, glue_dir, workdir, capsys):
    fp32, _ = run_into(tiny_bert, glue_dir, method, "fp32")
    args = [*tiny_run_args(tiny_bert, glue_dir, method), "--set", "bf16=true"]
    assert main([*args, "--output-dir", "bf16/out", "--results-dir", "bf16/results"]) == 0
    bf16 = next(
        r
        for r in (json.loads(p.read_text()) for p in Path("bf16", "results", "runs").glob("*.json"))
        if r["role"] == "student"
    )
    assert bf16["train"]["bf16"] is True and bf16["run_id"] != fp32["run_id"]
    assert set(bf16["loss_terms"]) == set(fp32["loss_terms"]) and len(fp32["loss_terms"]) > 2
    for name, value in fp32["loss_terms"].items():
        assert bf16["loss_terms"][name] == pytest.approx(value, rel=0.05, abs=1e-3), name


def test_gradient_accumulation_runs_and_is_recorded(tiny_bert, glue_dir, workdir, capsys):
    args = [*tiny_run_args(tiny_bert, glue_dir, "kd"), "--set", "gradient_accumulation_steps=2"]
    assert main(args) == 0
    record = next(
        r for r in (json.loads(p.read_text()) for p in Path("results", "runs").glob("*.json")) if r["role"] == "student"
    )
    assert record["train"]["gradient_accumulation_steps"] == 2 and record["epochs"][-1]["step"] == 3


def test_execution_only_settings_leave_the_run_key(tiny_bert, glue_dir, workdir):
    from distillbench.cli import build_parser, build_run
    from distillbench.planning import plan_run

    def key(*extra: str) -> str:
        args = build_parser().parse_args([*tiny_run_args(tiny_bert, glue_dir, "kd"), *extra])
        return plan_run(*build_run(args)).key

    base = key()
    for extra in (
        ("--teacher-cache", "off"),
        ("--set", "teacher_cache_dtype=float16"),
        ("--set", "logging_steps=7"),
        ("--set", "save_steps=9"),
        ("--set", "dataloader_num_workers=1"),
        ("--set", "torch_compile=true"),
        ("--set", "eval_batch_size=3"),
    ):
        assert key(*extra) == base, extra
    for extra in (("--set", "bf16=true"), ("--set", "gradient_accumulation_steps=2"), ("--set", "batch_size=4")):
        assert key(*extra) != base, extra
