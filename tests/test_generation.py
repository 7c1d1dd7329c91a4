"""The generation task: its scores against the library metric and independent computations on hand-made
examples, a run end to end (teacher scorer, stored per-prompt rows, paired comparison), bad options."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from rouge_score import rouge_scorer
from transformers import AutoModelForCausalLM, AutoTokenizer

from conftest import clm_run_args
from distillbench import get_task
from distillbench.cli import main
from distillbench.predictions import evaluation_of
from distillbench.tasks.generation import GENERATED, distinct_bigrams


def generation_task(tokenizer, **options):
    task_cls = get_task("generation")
    task = task_cls(None, task_cls.options_for({"prompt_length": 4, "continuation_length": 5} | options))
    task.tokenizer = tokenizer
    return task


def test_distinct_bigrams_by_hand():
    assert distinct_bigrams([1, 2, 1, 2, 1]) == (2, 4)  # (1,2), (2,1) repeated
    assert distinct_bigrams([5, 6, 7]) == (2, 2) and distinct_bigrams([3]) == (0, 0)


def test_metrics_of_hand_made_rows():
    """ROUGE-L: the mean over prompts; teacher NLL: per token over all; distinct-2: distinct over all bigrams."""
    task = generation_task(None)
    rows = np.array([[0.5, 6.0, 3, 2, 2], [0.25, 3.0, 3, 1, 2]])
    assert task.generation_metrics(rows) == pytest.approx({"rouge_l": 0.375, "teacher_nll": 9 / 6, "distinct_2": 3 / 4})
    resamples = np.array([[0, 0], [1, 1]])
    arrays = {GENERATED: rows, "predictions": np.array([[10.0, 7, 30, 5], [4.0, 7, 20, 3]])}
    assert task.metric_rows(arrays, resamples, "rouge_l") == pytest.approx([0.5, 0.25])
    assert task.metric_rows(arrays, resamples, "teacher_nll") == pytest.approx([2.0, 1.0])
    assert task.metric_on(arrays, np.array([0, 1]))["distinct_2"] == pytest.approx(0.75)


def test_generation_rows_match_the_library_and_the_scorers_own_loss(tiny_gpt2):
    """Per prompt: ROUGE-L as rouge-score computes it on the decoded texts, the scorer's NLL as its own
    causal-LM loss over the continuation, distinct bigrams of the generated tokens, greedy decoding."""
    tokenizer = AutoTokenizer.from_pretrained(str(tiny_gpt2))
    model = AutoModelForCausalLM.from_pretrained(str(tiny_gpt2))
    scorer = AutoModelForCausalLM.from_pretrained(str(tiny_gpt2))
    with torch.no_grad():
        for parameter in scorer.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.05)
    task = generation_task(tokenizer)
    blocks = torch.randint(1, len(tokenizer), (3, 9))
    rows = task.generation_arrays(model, scorer, {"input_ids": blocks.tolist()}, batch_size=2)[GENERATED]
    assert rows.shape == (3, 5)
    rouge = rouge_scorer.RougeScorer(["rougeL"])
    for block, row in zip(blocks, rows, strict=True):
        greedy = model.generate(block[None, :4], max_new_tokens=5, min_new_tokens=5, do_sample=False, pad_token_id=0)
        continuation = greedy[0, 4:].tolist()
        expected = rouge.score(tokenizer.decode(block[4:].tolist()), tokenizer.decode(continuation))["rougeL"].fmeasure
        labels = greedy.clone()
        labels[:, :4] = -100
        with torch.no_grad():
            mean_nll = float(scorer(input_ids=greedy, labels=labels).loss)
        pairs = list(itertools.pairwise(continuation))
        assert row[0] == pytest.approx(expected) and row[2] == 5
        assert row[1] / row[2] == pytest.approx(mean_nll, rel=1e-5)
        assert (row[3], row[4]) == (len(set(pairs)), len(pairs))


def test_rouge_l_of_hand_made_texts_is_the_librarys():
    rouge = rouge_scorer.RougeScorer(["rougeL"])
    # LCS of "the cat sat on the mat" and "the cat lay on a mat": the cat on mat (4 of 6 each way)
    assert rouge.score("the cat sat on the mat", "the cat lay on a mat")["rougeL"].fmeasure == pytest.approx(4 / 6)


def records(results: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted((results / "runs").glob("*.json"))]


def generation_args(tiny_gpt2: Path, text_dir: Path, method: str, *extra: str) -> list[str]:
    args = clm_run_args(tiny_gpt2, text_dir, method, "--student-layers", "2", *extra)
    args[args.index("clm")] = "generation"
    return [*args, "--set", "prompt_length=16", "--set", "continuation_length=16", "--set", "max_prompts=6"]


def test_a_run_scores_generations_once_with_the_teacher_and_stores_each_prompt(tiny_gpt2, text_dir, workdir, capsys):
    assert main(generation_args(tiny_gpt2, text_dir, "kd")) == 0
    assert main(generation_args(tiny_gpt2, text_dir, "finetune")) == 0
    runs = records(workdir / "results")
    by_role = {(r["role"], r["method"]): r for r in runs}
    teacher = next(r for r in runs if r["role"] == "teacher")
    for key in (("student", "kd"), ("student", "finetune")):
        record = by_role[key]
        assert record["main_metric"] == "rouge_l" and len(record["epochs"]) == 1
        assert set(record["metrics"]) >= {"rouge_l", "teacher_nll", "distinct_2", "perplexity"}
        arrays = evaluation_of(record, workdir / "results")
        assert arrays[GENERATED].shape == (6, 5) and arrays["predictions"].shape == (6, 4)
        task = get_task("generation")(None)
        recomputed = task.metric_on(arrays, np.arange(6))
        assert recomputed["rouge_l"] == pytest.approx(record["metrics"]["rouge_l"])
        assert recomputed["teacher_nll"] == pytest.approx(record["metrics"]["teacher_nll"])
    assert "teacher_nll" in teacher["metrics"]
    compare = ["compare", "kd", "finetune", "--task", "generation", "--include-bounded", "--include-dirty"]
    assert main(compare) == 0
    assert main([*compare, "--metric", "teacher_nll"]) == 0
    out = capsys.readouterr().out
    assert "generation rouge_l: kd" in out and "generation teacher_nll: kd" in out
    assert "over held-out prompts (would the gap survive another held-out text?)" in out
    assert main([*compare, "--metric", "bleu"]) == 2
    wanted = "error: --metric bleu: generation records score bits_per_byte, distinct_2, nll, perplexity, rouge_l"
    assert wanted in capsys.readouterr().err


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--set", "prompt_length=30"], "prompt_length + continuation_length = 46 is longer than a block (32 tokens)"),
        (["--set", "max_prompts=0"], "max_prompts=0: must be > 0 (or -1)"),
    ],
)
def test_bad_generation_options_are_one_line(extra, message, tiny_gpt2, text_dir, workdir, capsys):
    assert main([*generation_args(tiny_gpt2, text_dir, "kd"), *extra]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("error: ") and message in line, line
    assert not (workdir / "results" / "runs").exists()
