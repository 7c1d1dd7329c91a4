"""`distillbench teacher-study`: settings chosen on held-out train, never the dev set; runs read the choice."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from datasets import Dataset, DatasetDict

from conftest import tiny_run_args
from distillbench.cli import first_accepting, main
from distillbench.errors import UserError
from distillbench.labels import STUDIED, row_key, teacher_label
from distillbench.records import read_records
from distillbench.selection import select
from distillbench.teacher_study import best_point, parse_grid, read_studies, studies_markdown
from distillbench.training import hold_out


def one_epoch(tiny_bert: Path, glue_dir: Path) -> list[str]:
    """The tiny fixtures' run flags at one full epoch (six steps): a study compares full budgets."""
    sets = ["batch_size=8", "save_steps=2", "logging_steps=1", "eval_batch_size=16"]
    return ["--teacher", str(tiny_bert), "--data-dir", str(glue_dir), "--no-progress", "--epochs", "1"] + [
        arg for pair in sets for arg in ("--set", pair)
    ]


def study_args(tiny_bert: Path, glue_dir: Path, *extra: str) -> list[str]:
    """A two-point grid of one-epoch teachers on the tiny MRPC (48 training rows, a quarter held out)."""
    return [
        "teacher-study",
        "--task",
        "mrpc",
        "--grid",
        "teacher_learning_rate=1e-4,3e-3",
        "--holdout",
        "0.25",
        *one_epoch(tiny_bert, glue_dir),
        "--teacher-seed",
        "3",
        *extra,
    ]


def test_hold_out_replaces_the_dev_split_by_a_disjoint_seeded_part_of_train():
    class Task:
        eval_splits = ("validation",)

    rows = {"sentence": [f"s{i}" for i in range(40)], "labels": [i % 2 for i in range(40)]}
    dev = Dataset.from_dict({"sentence": ["dev"], "labels": [0]})
    splits = DatasetDict(train=Dataset.from_dict(rows), validation=dev)
    info = hold_out(splits, 0.25, Task())
    train, held = set(splits["train"]["sentence"]), set(splits["validation"]["sentence"])
    assert len(held) == 10 and len(train) == 30 and not train & held and "dev" not in held
    assert info == {"fraction": 0.25, "seed": 0, "examples": 10, "scored_on": "held-out train"}
    again = DatasetDict(train=Dataset.from_dict(rows), validation=Dataset.from_dict({"sentence": ["x"], "labels": [0]}))
    hold_out(again, 0.25, Task())
    assert set(again["validation"]["sentence"]) == held  # one split for every run: the points see the same rows
    assert hold_out(splits, 0.0, Task()) is None


def test_best_point_follows_the_metric_direction_and_breaks_ties_by_grid_order():
    trials = [{"held_out_score": 0.5, "n": 0}, {"held_out_score": 0.7, "n": 1}, {"held_out_score": 0.7, "n": 2}]
    assert best_point(trials, greater_is_better=True)["n"] == 1
    assert best_point(trials, greater_is_better=False)["n"] == 0


def test_study_chooses_on_held_out_train_and_a_run_reads_its_choice(tiny_bert, glue_dir, workdir, capsys):
    assert main(study_args(tiny_bert, glue_dir)) == 0
    out = capsys.readouterr().out
    study = json.loads((workdir / "results" / "studies" / "teacher-mrpc.json").read_text())
    assert [t["settings"]["teacher_learning_rate"] for t in study["trials"]] == [1e-4, 3e-3]
    scores = [t["held_out_score"] for t in study["trials"]]
    assert study["chosen_held_out_score"] == max(scores) and "chose" in out
    assert set(study["dev"]) == {"chosen", "defaults"}
    assert study["dev"]["defaults"]["settings"] == {"teacher_learning_rate": 3e-5}  # MRPC's default
    assert study["dev"]["chosen"]["settings"] == study["chosen"] and "--teacher-seed" in study["arguments"]
    text = studies_markdown(read_studies(workdir / "results"))
    assert "(chosen)" in text and f"chosen (learning_rate {study['chosen']['teacher_learning_rate']})" in text
    records = read_records(workdir / "results")
    held = [r for r in records if (r["data"].get("held_out") or {}).get("examples") == 12]
    assert len(held) == 2 and all(r["data"]["train_examples"] == 36 for r in held)
    assert {r["run_id"] for r in held} == {t["stage"] for t in study["trials"]}
    assert not [r for r in select(records).records if r["run_id"] in {t["stage"] for t in study["trials"]}]
    chosen = next(r for r in records if r["run_id"] == study["dev"]["chosen"]["stage"])
    assert chosen["chosen_by"] == {
        "study": "studies/teacher-mrpc.json",
        "metric": "accuracy",
        "held_out_score": study["chosen_held_out_score"],
    }
    assert chosen["data"]["train_examples"] == 48 and "held_out" not in chosen["data"]
    assert chosen["metrics"] == study["dev"]["chosen"]["metrics"]

    run = ["run", "--method", "kd", "--task", "mrpc", "--teacher-seed", "3", "--teacher-settings", "study"]
    assert main([*run, *one_epoch(tiny_bert, glue_dir)]) == 0
    student = next(r for r in read_records(workdir / "results") if r["method"] == "kd")
    assert student["teacher"]["key"] == chosen["run_id"]  # the study's dev-checked teacher, read from the cache
    assert student["teacher"]["chosen_by"]["study"] == "studies/teacher-mrpc.json"
    assert STUDIED in teacher_label(student) and STUDIED in teacher_label(chosen)
    # fine-tuning reads no teacher, yet it is the baseline of that teacher's experiment: same row key
    run[2] = "finetune"
    assert main([*run, *one_epoch(tiny_bert, glue_dir)]) == 0
    baseline = next(r for r in read_records(workdir / "results") if r["method"] == "finetune")
    assert row_key(baseline)[2:] == row_key(student)[2:]


def test_study_dry_run_lists_the_points_and_trains_nothing(tiny_bert, glue_dir, workdir, capsys):
    assert main(study_args(tiny_bert, glue_dir, "--dry-run")) == 0
    out = capsys.readouterr().out
    assert out.count("to train") == 2 and "teacher_learning_rate=0.003" in out
    assert not (workdir / "results").exists()


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--grid", "learning_rate=1e-4"], "not a teacher setting"),
        (["--grid", "teacher_cache=on"], "not a teacher setting"),  # how fast, not what it computes
        (["--grid", "teacher_learning_rate"], "expects KEY=V1,V2"),
        (["--grid", "teacher_learning_rate=fast"], "expected a value of type float"),
    ],
)
def test_study_errors_are_one_line(argv, message):
    with pytest.raises(Exception, match=message):
        parse_grid(argv[1:])


def test_run_errors_name_the_missing_study_and_a_clash(tiny_bert, glue_dir, workdir, capsys):
    run = tiny_run_args(tiny_bert, glue_dir, "kd", "mrpc", "--teacher-settings", "study")
    assert main(run) == 2
    assert "no teacher study at" in capsys.readouterr().err
    study = workdir / "results" / "studies" / "teacher-mrpc.json"
    study.parent.mkdir(parents=True)
    study.write_text(json.dumps({"task": "mrpc", "metric": "accuracy", "chosen": {"teacher_learning_rate": 1e-4}}))
    assert main(run) == 2
    assert "is not a teacher study file" in capsys.readouterr().err
    complete = {"task": "mrpc", "metric": "accuracy", "chosen": {"teacher_learning_rate": 1e-4}}
    study.write_text(json.dumps(complete | {"chosen_held_out_score": 1}))
    assert main([*run, "--set", "teacher_learning_rate=2e-5"]) == 2
    assert "the study chose it" in capsys.readouterr().err
    assert main(["run", "--method", "kd", "--task", "squad", "--set", "holdout_fraction=0.1", "--dry-run"]) == 2
    assert "cannot hold out" in capsys.readouterr().err
    assert main(["teacher-study", "--task", "squad", "--grid", "teacher_learning_rate=1e-4"]) == 2
    assert "squad is scored from raw examples" in capsys.readouterr().err


def test_the_study_names_its_teacher_through_a_method_that_accepts_the_task(tiny_bert, glue_dir, workdir, capsys):
    """Methods that refuse a task (text sampling on a classification task, token divergences on a
    regression task) are passed over; a mistake of the user's own is reported as the first method saw it."""
    for task in ("mrpc", "stsb"):
        argv = ["teacher-study", "--task", task, *one_epoch(tiny_bert, glue_dir), "--dry-run"]
        assert main([*argv, "--grid", "teacher_learning_rate=1e-4,2e-4"]) == 0, capsys.readouterr().err
        assert capsys.readouterr().out.count("to train") == 2
    assert main([*argv, "--grid", "teacher_learning_rate=1e-4", "--set", "no_such_setting=1"]) == 2
    assert capsys.readouterr().err.startswith("error: ")


def test_first_accepting_returns_the_first_method_that_plans_or_the_first_refusal():
    def plan_with(name: str) -> None:
        if name != "accepts":
            raise UserError(f"{name} refuses")

    assert first_accepting(["refuses", "accepts", "also"], plan_with) == "accepts"
    with pytest.raises(UserError, match="first refuses"):
        first_accepting(["first", "second"], plan_with)
