"""GLUE loading (local layout and hub fallback), MNLI's two dev splits, every way to make a student."""

from __future__ import annotations

import json

import pytest
import torch
from datasets import Dataset, DatasetDict

from conftest import make_tiny_bert, tiny_run_args
from distillbench import get_task
from distillbench.cli import main
from distillbench.losses import logit_kd


def student_record(workdir) -> dict:
    records = [json.loads(p.read_text()) for p in (workdir / "results" / "runs").glob("*.json")]
    return next(r for r in records if r["role"] == "student")


def test_glue_reading_keeps_quotes_and_handles_bom_and_headerless_files(glue_dir):
    mrpc = get_task("mrpc")(glue_dir).load()
    assert mrpc["train"].column_names == ["text0", "text1", "labels"] and len(mrpc["train"]) == 48
    assert any('"' in text for text in list(mrpc["train"]["text0"]) + list(mrpc["train"]["text1"]))
    cola = get_task("cola")(glue_dir).load()
    assert cola["validation"].column_names == ["text0", "labels"] and set(list(cola["train"]["labels"])) == {0, 1}
    rte = get_task("rte")(glue_dir).load()
    assert set(list(rte["train"]["labels"])) == {0, 1}
    stsb = get_task("stsb")(glue_dir).load()
    assert isinstance(stsb["train"][1]["labels"], float)


def test_hub_fallback_maps_hub_columns(monkeypatch):
    fake = DatasetDict(
        {
            split: Dataset.from_dict({"premise": ["a cat ."], "hypothesis": ["a dog ."], "label": [2], "idx": [0]})
            for split in ("train", "validation_matched", "validation_mismatched")
        }
    )
    calls = []

    def load_dataset(*args, **kwargs):
        calls.append(args)
        return fake

    monkeypatch.setattr("datasets.load_dataset", load_dataset)  # the task imports it when it loads
    data = get_task("mnli")(None).load()
    assert calls == [("nyu-mll/glue", "mnli")]
    assert set(data) == {"train", "validation_matched", "validation_mismatched"}
    assert data["train"][0] == {"text0": "a cat .", "text1": "a dog .", "labels": 2}


def test_mnli_reports_matched_and_mismatched(tiny_bert, glue_dir, workdir, capsys):
    assert main(tiny_run_args(tiny_bert, glue_dir, "kd", "mnli")) == 0
    record = student_record(workdir)
    assert set(record["metrics"]) == {"validation_matched/accuracy", "validation_mismatched/accuracy"}
    assert record["main_metric"] == "validation_matched/accuracy"
    assert record["data"]["eval_examples"] == {"validation_matched": 16, "validation_mismatched": 16}


def test_given_finetuned_teacher_skips_the_teacher_stage(tiny_bert, glue_dir, workdir, capsys):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    finetuned = workdir / "ft-teacher"
    AutoModelForSequenceClassification.from_pretrained(str(tiny_bert), num_labels=2).save_pretrained(finetuned)
    AutoTokenizer.from_pretrained(str(tiny_bert)).save_pretrained(finetuned)
    assert main([*tiny_run_args(tiny_bert, glue_dir, "kd"), "--teacher-finetuned", str(finetuned)]) == 0
    record = student_record(workdir)
    assert (
        record["teacher"]["trained"] is False and record["teacher"]["source"] == "ft-teacher"
    )  # relative to the working folder
    assert not list((workdir / "cache").glob("stages/*teacher*"))


def test_pretrained_and_random_students(tiny_bert, glue_dir, workdir, capsys):
    small = make_tiny_bert(workdir / "small", layers=2)
    assert main([*tiny_run_args(tiny_bert, glue_dir, "lwd"), "--student", str(small)]) == 0
    record = student_record(workdir)
    assert record["model"]["student"] == {"kind": "pretrained", "source": "small", "layer_ids": [], "num_layers": 0}
    for path in (workdir / "results" / "runs").glob("*.json"):
        path.unlink()
    assert main([*tiny_run_args(tiny_bert, glue_dir, "minilmv2"), "--student", "random:1"]) == 0
    assert student_record(workdir)["model"]["student"]["num_layers"] == 1


def test_kd_soft_term_is_kl_for_classes_and_mse_for_regression():
    student = [torch.tensor([[1.0], [3.0]])]
    teacher = [torch.tensor([[2.0], [1.0]])]
    assert logit_kd(student, teacher, "regression", 2.0).item() == pytest.approx((1 + 4) / 2)
    student = [torch.zeros(1, 2)]
    teacher = [torch.tensor([[torch.log(torch.tensor(3.0)), 0.0]])]
    expected = 0.75 * torch.log(torch.tensor(1.5)) + 0.25 * torch.log(torch.tensor(0.5))
    assert logit_kd(student, teacher, "categorical", 1.0).item() == pytest.approx(expected.item(), rel=1e-5)
