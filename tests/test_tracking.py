"""``--report-to``: the Trainer's tracker integrations, one tracker run per trained stage."""

from __future__ import annotations

import json

import pytest

from conftest import tiny_run_args
from distillbench.cli import main
from distillbench.tracking import parse_report_to, trainer_arguments


def scalar_tags(folder) -> set[str]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(folder))
    events.Reload()
    return set(events.Tags()["scalars"])


def test_tensorboard_gets_every_loss_term_of_every_stage(tiny_bert, glue_dir, workdir):
    pytest.importorskip("tensorboard")
    args = tiny_run_args(tiny_bert, glue_dir, "ted", "mrpc", "--report-to", "tensorboard", "--output-dir", "out")
    assert main(args) == 0
    (path,) = [p for p in (workdir / "results" / "runs").glob("mrpc-ted-*.json")]
    record = json.loads(path.read_text())
    boards = workdir / "out" / "tensorboard"
    stages = {"teacher-finetune", "ted-filters-teacher", "student-finetune", "ted-filters-student", "ted-student"}
    assert {folder.name for folder in boards.iterdir()} == stages
    assert all(list(folder.glob("events.out.tfevents.*")) for folder in boards.iterdir())
    terms = {name for name in record["loss_terms"] if name.startswith("loss/")}
    assert terms == {"loss/task", "loss/kd", "loss/mse"}
    assert {f"train/{term}" for term in terms} <= scalar_tags(boards / "ted-student")
    assert "train/loss/filter_task" in scalar_tags(boards / "ted-filters-teacher")
    assert "eval/accuracy" in scalar_tags(boards / "teacher-finetune")


def test_trackers_leave_the_run_key_alone(tiny_bert, glue_dir, workdir, capsys):
    """A tracker changes where logs go, not the result: same run key, so a sweep finds the run done."""
    common = tiny_run_args(tiny_bert, glue_dir, "kd", "mrpc", "--dry-run")
    assert main(common) == 0
    plain = capsys.readouterr().out
    assert main([*common, "--report-to", "tensorboard"]) == 0
    tracked = capsys.readouterr().out
    record_line = [line for line in plain.splitlines() if "record" in line]
    assert record_line and record_line == [line for line in tracked.splitlines() if "record" in line]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("foo", "unknown tracker 'foo'"),
        ("tensorboard,nope", "unknown tracker 'nope'"),
    ],
)
def test_bad_trackers_are_one_error_before_anything_runs(text, message, tiny_bert, glue_dir, workdir, capsys):
    assert main(tiny_run_args(tiny_bert, glue_dir, "kd", "mrpc", "--report-to", text)) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("error: --report-to") and message in line
    assert not (workdir / "results").exists() and not (workdir / "cache").exists()


def test_a_tracker_that_is_not_installed_says_what_to_install(monkeypatch):
    monkeypatch.setattr("distillbench.tracking.installed", lambda tracker: tracker != "wandb")
    with pytest.raises(Exception, match=r"--report-to wandb: the wandb package is not installed \(pip install wandb\)"):
        parse_report_to("wandb")
    assert "wandb" not in parse_report_to("all")


def test_trainer_arguments_name_the_run_and_keep_tensorboard_for_the_callback():
    assert trainer_arguments((), "mrpc-kd-seed1-abc") == {"report_to": "none", "run_name": "mrpc-kd-seed1-abc"}
    assert trainer_arguments(("tensorboard", "mlflow"), "x") == {"report_to": ["mlflow"], "run_name": "x"}
    assert parse_report_to("none") == () and parse_report_to("tensorboard,tensorboard") == ("tensorboard",)
