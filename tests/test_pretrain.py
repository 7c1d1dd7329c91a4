"""Continual pre-training: blocks, fixed held-out masking, perplexity math, every method, downstream."""

from __future__ import annotations

import json
import math

import pytest
import torch
from transformers import AutoModelForMaskedLM, AutoTokenizer, DataCollatorForLanguageModeling

from conftest import tiny_run_args
from distillbench import get_task
from distillbench.cli import main
from distillbench.labels import student_label


def pretrain_args(tiny_bert, corpus, method: str, *extra: str) -> list[str]:
    args = tiny_run_args(tiny_bert, corpus.parent, method, "pretrain")
    return [*args, "--set", f"corpus={corpus}", "--set", "max_seq_length=32", *extra]


def records(workdir) -> list[dict]:
    return [json.loads(p.read_text()) for p in (workdir / "results" / "runs").glob("*.json")]


@pytest.fixture
def task_and_data(tiny_bert, corpus):
    task = get_task("pretrain")(None, get_task("pretrain").Options(corpus=str(corpus)))
    tokenizer = AutoTokenizer.from_pretrained(str(tiny_bert))
    return task, tokenizer, task.preprocess(task.load(), tokenizer, 32)


def test_blocks_and_a_fixed_held_out_split(task_and_data):
    _, _, data = task_and_data
    assert all(len(ids) == 32 for ids in data["train"]["input_ids"])
    total = len(data["train"]) + len(data["validation"])
    assert len(data["validation"]) == max(1, int(total * 0.05))
    assert "labels" not in data["train"].column_names  # masked on the fly


def test_held_out_masking_is_reproducible_and_about_15_percent(task_and_data):
    task, tokenizer, data = task_and_data
    again = task.preprocess(task.load(), tokenizer, 32)
    assert data["validation"]["input_ids"] == again["validation"]["input_ids"]
    assert data["validation"]["labels"] == again["validation"]["labels"]
    labels = torch.tensor(data["validation"]["labels"])
    assert 0.05 < (labels != -100).float().mean().item() < 0.3
    collator = DataCollatorForLanguageModeling(tokenizer, mlm_probability=0.15)
    rows = [dict(r) for r in data["train"].select(range(4))]
    torch.manual_seed(3)
    first = collator(rows)["labels"]
    torch.manual_seed(3)
    assert torch.equal(first, collator(rows)["labels"])  # training masks follow the seed


def test_perplexity_by_hand(task_and_data):
    task, _, _ = task_and_data
    # one block, vocabulary of 2, two masked positions: p(correct) = 0.5 and e/(1+e)
    logits = torch.tensor([[[0.0, 0.0], [1.0, 0.0], [5.0, 5.0]]])
    labels = torch.tensor([[1, 0, -100]])
    summary = task.reduce_eval_logits(logits, labels)
    nll = -math.log(0.5) - math.log(math.e / (1 + math.e))
    assert summary[0].tolist() == pytest.approx([nll, 2.0])
    result = task.compute_metrics(summary.numpy(), None)
    assert result["mlm_loss"] == pytest.approx(nll / 2)
    assert result["perplexity"] == pytest.approx(math.exp(nll / 2))


@pytest.mark.parametrize("method", ["finetune", "kd", "lwd", "minilm", "minilmv2", "ted"])
def test_every_method_distils_on_text(method, tiny_bert, corpus, workdir, capsys):
    args = pretrain_args(tiny_bert, corpus, method)
    assert main(args) == 0
    student = next(r for r in records(workdir) if r["role"] == "student")
    assert set(student["metrics"]) == {"mlm_loss", "perplexity"}
    assert student["greater_is_better"] is False
    # independently: the saved student's mean NLL over the fixed masked tokens of the held-out blocks
    from distillbench.cli import build_parser, build_run
    from distillbench.harness import Runner, plan_run

    runner = Runner(plan_run(*build_run(build_parser().parse_args(args))))
    held_out = runner.data.eval_data()
    model = AutoModelForMaskedLM.from_pretrained(str(workdir / student["model"]["output_dir"])).eval()
    total = count = 0.0
    with torch.no_grad():
        for row in held_out:
            labels = torch.tensor(row["labels"])[None]
            logits = model(input_ids=torch.tensor(row["input_ids"])[None]).logits
            nll = torch.nn.functional.cross_entropy(logits[0], labels[0], ignore_index=-100, reduction="sum")
            total, count = total + float(nll), count + float((labels != -100).sum())
    assert student["metrics"]["mlm_loss"] == pytest.approx(total / count, rel=1e-4)
    assert student["metrics"]["perplexity"] == pytest.approx(math.exp(total / count), rel=1e-4)


def test_teacher_stage_trains_the_tied_mlm_head_only(tiny_bert, corpus, workdir, capsys):
    assert main(pretrain_args(tiny_bert, corpus, "kd")) == 0
    folder = next((workdir / "cache" / "stages").glob("pretrain-teacher-*/done.json")).parent / "model"
    teacher = AutoModelForMaskedLM.from_pretrained(str(folder))
    original = AutoModelForMaskedLM.from_pretrained(str(tiny_bert))
    assert all(
        torch.equal(a, b)
        for a, b in zip(
            teacher.base_model.state_dict().values(), original.base_model.state_dict().values(), strict=True
        )
    )
    assert (
        teacher.cls.predictions.decoder.weight.data_ptr() == teacher.bert.embeddings.word_embeddings.weight.data_ptr()
    )
    assert main([*pretrain_args(tiny_bert, corpus, "kd"), "--set", "teacher_backbone=true"]) == 0
    assert len(list((workdir / "cache" / "stages").glob("pretrain-teacher-*/done.json"))) == 2


def test_downstream_finetune_links_the_pretrain_record(tiny_bert, corpus, glue_dir, workdir, capsys):
    assert main(pretrain_args(tiny_bert, corpus, "kd")) == 0
    pretrain = next(p for p in (workdir / "results" / "runs").glob("pretrain-kd-*.json"))
    assert main([*tiny_run_args(tiny_bert, glue_dir, "finetune"), "--student", str(pretrain)]) == 0
    downstream = next(r for r in records(workdir) if r["task"] == "mrpc")
    assert downstream["setting"] == "after kd pre-training"
    origin = downstream["model"]["student"]["origin"]
    assert origin["run_id"] == json.loads(pretrain.read_text())["run_id"] and origin["method"] == "kd"
    assert student_label(downstream["model"]) == "kd-pretrain student"


def test_missing_corpus_is_a_clear_error(tiny_bert, corpus, workdir, capsys):
    assert main(pretrain_args(tiny_bert, corpus, "kd", "--set", "corpus=/no/such.txt")) == 2
    assert capsys.readouterr().err.startswith("error: missing corpus file /no/such.txt")
