"""End-to-end runs on tiny models through the CLI, and every bad-input case."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import CAUSAL_LM_ONLY_METHODS, tiny_run_args
from distillbench import get_method, list_methods
from distillbench.cli import main

REQUIRED_RECORD_KEYS = {
    "method",
    "task",
    "hparams",
    "train",
    "seed",
    "metrics",
    "best_epoch",
    "epochs",
    "loss_terms",
    "teacher",
    "git",
    "packages",
    "data",
    "model",
    "wall_time_s",
    "hardware",
    "status",
}


def only_record(results: Path) -> dict:
    records = [json.loads(p.read_text()) for p in (results / "runs").glob("*.json")]
    students = [r for r in records if r["role"] == "student"]
    assert len(students) == 1
    return students[0]


def test_cli_subprocess_run_writes_a_complete_record(tiny_bert, glue_dir, workdir):
    env = {**os.environ, "DISTILLBENCH_CACHE": str(workdir / "cache")}
    args = tiny_run_args(tiny_bert, glue_dir, "kd")
    result = subprocess.run(
        [sys.executable, "-m", "distillbench.cli", *args],
        cwd=workdir,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "student final" in result.stdout
    record = only_record(workdir / "results")
    assert set(record) >= REQUIRED_RECORD_KEYS
    assert record["method"] == "kd" and record["task"] == "mrpc" and record["seed"] == 42
    assert set(record["metrics"]) == {"accuracy", "f1"}
    assert {"loss", "loss/task", "loss/kd"} <= set(record["loss_terms"])
    assert record["hparams"]["kl_alpha"] == 20.0  # the TED reference's MRPC default
    assert record["teacher"]["metrics"]["accuracy"] >= 0
    assert len(record["data"]["sha256"]) == 64 and record["model"]["teacher_source_sha256"]
    teacher_records = [
        p for p in (workdir / "results" / "runs").glob("*.json") if json.loads(p.read_text())["role"] == "teacher"
    ]
    assert len(teacher_records) == 1


@pytest.mark.parametrize("method", [m for m in list_methods() if m not in CAUSAL_LM_ONLY_METHODS])
def test_every_method_runs_end_to_end(method, tiny_bert, glue_dir, workdir, capsys):
    assert main(tiny_run_args(tiny_bert, glue_dir, method)) == 0
    record = only_record(workdir / "results")
    assert record["method"] == method and record["status"] == "complete"
    assert record["model"]["student"]["layer_ids"] == [1, 3]
    terms = {k.removeprefix("loss/"): v for k, v in record["loss_terms"].items() if k.startswith("loss/")}
    hp = record["hparams"]
    expected = {"task"} | ({"kd"} if hp.get("kl_alpha") else set()) | ({"mse"} if "mse_alpha" in hp else set())
    expected |= {"relation"} if "minilm_alpha" in hp else set()
    expected |= {get_method(method).divergence} if "div_alpha" in hp else set()
    assert set(terms) == expected
    # the optimised loss is the sum of the named terms (last logged step, logging_steps=1)
    assert record["loss_terms"]["loss"] == pytest.approx(sum(terms.values()), rel=1e-4)
    # the task term is the student's own cross-entropy: at most log(2)+ε early on for a 2-class task
    assert 0 < terms["task"] < 1.0
    assert record["predictions"]["evaluations"] and record["epochs"][-1]["step"] == 3


def test_ted_stage_one_is_cached_and_reused(tiny_bert, glue_dir, workdir, capsys):
    assert main(tiny_run_args(tiny_bert, glue_dir, "ted")) == 0
    stages = sorted(p.name for p in (workdir / "cache" / "stages").iterdir())
    assert [s.split("-", 1)[1].rsplit("-", 1)[0] for s in stages] == [
        "student-finetune",
        "teacher-finetune",
        "ted-filters-student",
        "ted-filters-teacher",
    ]
    before = {p: p.stat().st_mtime_ns for p in (workdir / "cache" / "stages").rglob("*.safetensors")}
    assert main([*tiny_run_args(tiny_bert, glue_dir, "ted"), "--set", "mse_alpha=3"]) == 0
    after = {p: p.stat().st_mtime_ns for p in (workdir / "cache" / "stages").rglob("*.safetensors")}
    assert after == before  # Stage II with other alphas reuses every earlier stage untouched


def test_regression_task_and_string_labels_run(tiny_bert, glue_dir, workdir, capsys):
    assert main(tiny_run_args(tiny_bert, glue_dir, "kd", "stsb")) == 0
    assert set(only_record(workdir / "results")["metrics"]) == {"pearson", "spearman"}


def test_set_overrides_are_typed_and_recorded(tiny_bert, glue_dir, workdir, capsys):
    args = tiny_run_args(tiny_bert, glue_dir, "ted", "mrpc", "--set", "kl_alpha=3", "--set", "filter_nonlinear=true")
    assert main(args) == 0
    record = only_record(workdir / "results")
    assert record["hparams"]["kl_alpha"] == 3.0 and record["hparams"]["filter_nonlinear"] is True
    assert record["hparams_given"] == ["filter_nonlinear", "kl_alpha"]  # the rest: the method's task defaults
    assert record["model"]["student_start"] == "finetuned"


def test_list_prints_every_method_and_task(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    for name in list_methods():
        assert f"  {name} " in out
    assert "GLUE STS-B (pearson/spearman)" in out


def test_record_names_the_commit_the_run_started_from(tiny_bert, glue_dir, workdir, monkeypatch):
    """A checkout moved while a run trains must not re-label the code that ran; the move is recorded."""
    from distillbench import provenance

    states = iter([{"commit": "start", "dirty": False}])
    monkeypatch.setattr(provenance, "git_state", lambda: next(states, {"commit": "moved", "dirty": False}))
    assert main(tiny_run_args(tiny_bert, glue_dir, "finetune")) == 0
    git = only_record(workdir / "results")["git"]
    assert git == {"commit": "start", "dirty": False, "at_end": {"commit": "moved", "dirty": False}}


@pytest.mark.parametrize("name", [*list_methods(), "mrpc", "squad", "pretrain"])
def test_show_prints_every_setting_with_its_help(name, capsys):
    import dataclasses

    from distillbench import get_method, get_task
    from distillbench.fields import help_of

    assert main(["show", name]) == 0
    out = capsys.readouterr().out
    declared = get_method(name).HParams if name in list_methods() else get_task(name).Options
    for item in dataclasses.fields(declared):
        assert f"  {item.name} = {item.default!r}" in out and help_of(item) and help_of(item) in out, item.name


def test_show_ted_lists_its_search_space_and_per_task_defaults(capsys):
    assert main(["show", "ted"]) == 0
    out = capsys.readouterr().out
    assert "search: float in [1, 10000] (log)" in out and "mrpc: {'kl_alpha': 20.0, 'mse_alpha': 100.0}" in out
    assert "L_II = L_task" in out and "teacher-output cache: can read one" in out
    assert main(["show", "tde"]) == 2
    assert "no method or task named 'tde'" in capsys.readouterr().err
