"""distillbench tune: a tiny study end to end, pruning, resume after a killed worker, multi-worker."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time

import optuna
import pytest
from optuna.storages import RetryHeartbeatStaleTrialCallback

from conftest import launch_cli, tiny_run_args
from distillbench.cli import main

optuna.logging.set_verbosity(optuna.logging.WARNING)


def tune_args(tiny_bert, glue_dir, storage: str, trials: int, *extra: str) -> list[str]:
    run = tiny_run_args(tiny_bert, glue_dir, "kd")
    return [
        "tune",
        *run[1:],
        "--trials",
        str(trials),
        "--storage",
        storage,
        "--study-name",
        "s",
        "--common",
        "learning_rate",
        *extra,
    ]


def load(storage: str) -> optuna.Study:
    return optuna.load_study(study_name="s", storage=storage)


def states(study: optuna.Study) -> list[str]:
    return sorted(t.state.name for t in study.trials)


def test_tiny_study_records_best_params_and_run_params_best(tiny_bert, glue_dir, workdir, capsys):
    storage = f"sqlite:///{workdir / 'study.db'}"
    common = "learning_rate,warmup_steps,batch_size,epochs"
    assert main(tune_args(tiny_bert, glue_dir, storage, 3, "--common", common)) == 0
    study = load(storage)
    assert states(study) == ["COMPLETE"] * 3
    assert len({t.params["epochs"] for t in study.trials}) > 1
    # whatever epochs a trial draws, every trial distils from one teacher
    assert len(list((workdir / "cache" / "stages").glob("mrpc-teacher-*/done.json"))) == 1
    records = [json.loads(p.read_text()) for p in (workdir / "results" / "runs").glob("mrpc-kd-*.json")]
    assert len({r["teacher"]["key"] for r in records}) == 1
    assert sorted(r["tags"]["trial"] for r in records) == [0, 1, 2]
    assert {r["tags"]["study"] for r in records} == {"s"}
    best = json.loads((workdir / "results" / "best" / "kd-mrpc.json").read_text())
    assert best["params"] == study.best_params and best["trial"] == study.best_trial.number
    assert {"kl_alpha", "temperature", "learning_rate", "warmup_steps", "batch_size", "epochs"} == set(best["params"])

    tuned = ["--params", "best", "--seed", "7", "--teacher-seed", "42"]  # the trials' teacher (seed 42)
    assert main([*tiny_run_args(tiny_bert, glue_dir, "kd"), *tuned]) == 0
    rerun = next(json.loads(p.read_text()) for p in (workdir / "results" / "runs").glob("mrpc-kd-seed7-*.json"))
    assert rerun["hparams"]["kl_alpha"] == best["params"]["kl_alpha"]
    assert rerun["train"]["learning_rate"] == best["params"]["learning_rate"]
    assert rerun["tuned_from"] == {"study": "s", "trial": best["trial"], "value": best["value"]}
    # the tuned warm-up, batch size and epochs are the student's: it distils from the trials' teacher
    assert rerun["teacher"]["key"] == records[0]["teacher"]["key"]
    assert len(list((workdir / "cache" / "stages").glob("mrpc-teacher-*/done.json"))) == 1

    # the tuned run is a row of its own beside the reference settings, and compare names it
    assert main([*tiny_run_args(tiny_bert, glue_dir, "kd"), "--seed", "7", "--teacher-seed", "42"]) == 0
    results = ["--results-dir", str(workdir / "results"), "--include-dirty", "--include-bounded"]
    capsys.readouterr()
    assert main(["table", "--tasks", "mrpc", "--experiment", "1", *results]) == 0
    rows = [line.split("|")[1].strip() for line in capsys.readouterr().out.splitlines() if line.startswith("| ")]
    assert rows[1:] == ["teacher", "majority class", "kd", "kd (tuned)"]
    assert main(["compare", "kd (tuned)", "kd", "--task", "mrpc", "--resamples", "1000", *results]) == 0
    assert re.search(r"mrpc accuracy: kd \(tuned\) [\d.]+ vs kd [\d.]+", capsys.readouterr().out)

    assert (
        main(
            [
                "tune",
                "--method",
                "kd",
                "--task",
                "mrpc",
                "--storage",
                storage,
                "--study-name",
                "s",
                "--report",
                "--results-dir",
                str(workdir / "results"),
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "best value" in out and "importances" in out
    plots = list((workdir / "results" / "studies" / "plots").glob("*.png"))
    assert len(plots) == 2 and all(p.stat().st_size > 1000 for p in plots)

    assert main(["plot", "study", "--storage", storage, "--study-name", "s", "--results-dir", "results"]) == 0
    figures = sorted(p.name for p in (workdir / "results" / "plots").iterdir())
    assert figures == ["study-s.png", "study-s.svg"]
    assert main(["plot", "study", "--storage", storage, "--study-name", "nope"]) == 2


def test_pruner_stops_a_trial_that_trails_the_median(tiny_bert, glue_dir, workdir, capsys):
    storage = f"sqlite:///{workdir / 'study.db'}"
    study = optuna.create_study(study_name="s", storage=storage, direction="maximize")
    for _ in range(2):  # two finished trials that were perfect at every epoch
        study.add_trial(optuna.trial.create_trial(value=1.0, intermediate_values={1: 1.0, 2: 1.0, 3: 1.0}))
    args = tune_args(tiny_bert, glue_dir, storage, 3, "--epochs", "3")
    del args[args.index("--max-steps") : args.index("--max-steps") + 2]  # full epochs: evaluations to report
    assert main(args) == 0
    trial = load(storage).trials[-1]
    assert trial.state.name == "PRUNED" and list(trial.intermediate_values) == [1]
    record = next(json.loads(p.read_text()) for p in (workdir / "results" / "runs").glob("mrpc-kd-*.json"))
    assert record["status"] == "pruned" and len(record["epochs"]) == 1


def test_killed_worker_trial_is_retried_and_resumes(tiny_bert, glue_dir, tmp_path):
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    env = {**os.environ, "DISTILLBENCH_CACHE": str(tmp_path / "cache")}
    args = [
        *tune_args(tiny_bert, glue_dir, storage, 2, "--heartbeat", "1", "--grace", "2"),
        "--max-steps",
        "12",
        "--set",
        "save_steps=3",
    ]
    command = [sys.executable, "-m", "distillbench.cli", *args]
    worker = subprocess.Popen(command, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while not list(tmp_path.glob("outputs/*/checkpoint-6/trainer_state.json")) and time.time() < deadline:
        assert worker.poll() is None
        time.sleep(0.05)
    worker.send_signal(signal.SIGKILL)
    worker.wait()
    # rerun at once: the killed trial still looks RUNNING until its heartbeat goes stale; the new worker
    # must wait for that and finish the retry, not stop with the retry left WAITING
    result = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    study = load(storage)
    assert states(study) == ["COMPLETE", "COMPLETE", "FAIL"]
    failed = next(t for t in study.trials if t.state.name == "FAIL")
    retried = next(t for t in study.trials if RetryHeartbeatStaleTrialCallback.retried_trial_number(t) == failed.number)
    assert retried.state.name == "COMPLETE" and retried.params == failed.params
    records = [json.loads(p.read_text()) for p in (tmp_path / "results" / "runs").glob("mrpc-kd-*.json")]
    resumed = next(r for r in records if r["tags"]["trial"] == retried.number)
    assert resumed["resumed_from"].endswith(("checkpoint-6", "checkpoint-9"))
    assert resumed["resumed_from"].startswith("output:")  # no machine path in a record
    # the kill did not cost the study its teacher: every trial, the retried one too, read the one stage
    assert len({r["teacher"]["key"] for r in records}) == 1
    assert len(list((tmp_path / "cache" / "stages").glob("mrpc-teacher-*/done.json"))) == 1


POSTGRES = os.environ.get("DISTILLBENCH_TEST_POSTGRES")


@pytest.mark.skipif(
    not POSTGRES and os.environ.get("CI") != "true",
    reason="no PostgreSQL here: set DISTILLBENCH_TEST_POSTGRES=postgresql://… (.ci/run starts one)",
)
def test_two_workers_share_one_postgres_study(tiny_bert, glue_dir, tmp_path):
    assert POSTGRES, "CI must provide DISTILLBENCH_TEST_POSTGRES (.ci/run starts a PostgreSQL server)"
    name = f"s{int(time.time() * 1000)}"
    args = [a if a != "s" else name for a in tune_args(tiny_bert, glue_dir, POSTGRES, 5)]
    workers = [launch_cli(args, tmp_path, tmp_path / "cache") for _ in range(2)]
    for worker in workers:
        _, err = worker.communicate(timeout=900)
        assert worker.returncode == 0, err[-2000:]
    study = optuna.load_study(study_name=name, storage=POSTGRES)
    assert [t.state.name for t in study.trials] == ["COMPLETE"] * 5
    records = [json.loads(p.read_text()) for p in (tmp_path / "results" / "runs").glob("mrpc-kd-*.json")]
    assert sorted(r["tags"]["trial"] for r in records) == list(range(5))
