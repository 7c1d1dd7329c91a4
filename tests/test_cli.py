"""End-to-end runs on tiny models through the CLI, and every bad-input case."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import tiny_run_args, write_tsv
from distillbench import list_methods
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


@pytest.mark.parametrize("method", ["finetune", "kd", "lwd", "minilm", "minilmv2", "ted"])
def test_every_method_runs_end_to_end(method, tiny_bert, glue_dir, workdir, capsys):
    assert main(tiny_run_args(tiny_bert, glue_dir, method)) == 0
    record = only_record(workdir / "results")
    assert record["method"] == method
    assert record["model"]["student"]["layer_ids"] == [1, 3]
    assert all(v == v for v in record["loss_terms"].values())  # no NaN


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
    assert record["model"]["student_start"] == "finetuned"


BAD_INPUTS = {
    "unknown method": (["--method", "tde"], "unknown method 'tde'. Did you mean 'ted'?"),
    "unknown task": (["--task", "mrcp"], "unknown task 'mrcp'"),
    "unknown hparam": (["--set", "kl_alpa=2"], "--set kl_alpa: unknown hyper-parameter"),
    "wrong type": (["--set", "kl_alpha=lots"], "expected a value of type float"),
    "not key=value": (["--set", "kl_alpha"], "--set expects key=value"),
    "unmappable pair": (["--method", "lwd", "--student-layers", "3"], "cannot map a 3-layer student"),
    "ted unmappable": (["--method", "ted", "--set", "num_filters=3"], "cannot place 3 filters"),
    "bad student_start": (["--set", "student_start=half"], "student_start must be one of"),
    "missing teacher": (["--teacher", "./no-such-model"], "model folder ./no-such-model does not exist"),
    "unknown preset": (["--preset", "huge"], "unknown preset 'huge'"),
}


def run_bad(args: list[str], capsys) -> tuple[int, str]:
    code = main(args)
    return code, capsys.readouterr().err


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_is_one_line_exit_2_nothing_written(case, tiny_bert, glue_dir, workdir, capsys):
    change, message = BAD_INPUTS[case]
    args = tiny_run_args(tiny_bert, glue_dir, "kd")
    for flag, value in zip(change[::2], change[1::2], strict=True):
        if flag in args and flag != "--set":
            args[args.index(flag) + 1] = value
        else:
            args += [flag, value]
    code, err = run_bad(args, capsys)
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("error: ") and message in err
    assert not (workdir / "results").exists() and not (workdir / "outputs").exists()


def test_missing_data_dir_and_file(tiny_bert, glue_dir, workdir, capsys, tmp_path):
    code, err = run_bad(tiny_run_args(tiny_bert, tmp_path / "nowhere", "kd"), capsys)
    assert code == 2 and "data directory" in err and "does not exist" in err
    partial = tmp_path / "partial"
    (partial / "glue" / "MRPC").mkdir(parents=True)
    (partial / "glue" / "MRPC" / "train.tsv").write_text((glue_dir / "glue" / "MRPC" / "train.tsv").read_text())
    code, err = run_bad(tiny_run_args(tiny_bert, partial, "kd"), capsys)
    assert code == 2 and err.startswith("error: missing data file") and "dev.tsv" in err
    assert not (workdir / "results").exists()


def test_malformed_tsv_row(tiny_bert, glue_dir, workdir, capsys, tmp_path):
    bad = tmp_path / "bad"
    rows = [["1", "1", "2", "a cat sat .", "a dog sat ."], ["0", "3", "4", "a cat", "the dog", "extra"]]
    for split in ("train", "dev"):
        write_tsv(bad / "glue" / "MRPC" / f"{split}.tsv", ["Quality", "#1 ID", "#2 ID", "#1 String", "#2 String"], rows)
    code, err = run_bad(tiny_run_args(tiny_bert, bad, "kd"), capsys)
    assert code == 2 and err.startswith("error: malformed TSV") and err.count("\n") == 1
    short = tmp_path / "short"
    for split in ("train", "dev"):
        write_tsv(
            short / "glue" / "MRPC" / f"{split}.tsv",
            ["Quality", "#1 ID", "#2 ID", "#1 String", "#2 String"],
            [rows[0], ["1", "5", "6", "only one sentence"]],
        )
    code, err = run_bad(tiny_run_args(tiny_bert, short, "kd"), capsys)
    assert code == 2 and "malformed TSV" in err and "line 3 has 4 fields, expected 5" in err
    assert not (workdir / "results").exists()


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
