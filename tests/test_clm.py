"""The causal-LM task: its held-out scores against independent computations, the chunked vocabulary KL
(value, gradient, peak memory), the stand-in teacher pre-trained from scratch, paired comparisons."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from conftest import clm_run_args
from distillbench import get_task
from distillbench.cli import main
from distillbench.losses import soft_kl, vocabulary_kl
from distillbench.predictions import evaluation_of


def records(results: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted((results / "runs").glob("*.json"))]


def student_of(results: Path, method: str) -> dict:
    return next(r for r in records(results) if r["role"] != "teacher" and r["method"] == method)


def heldout_blocks(text_dir: Path, tokenizer, block: int) -> torch.Tensor:
    """The held-out text cut into blocks, written out here: lines with their newlines, no special tokens,
    concatenated, the last partial block dropped."""
    lines = [line for line in (text_dir / "text/heldout.txt").read_text().splitlines(keepends=True) if line.strip()]
    ids = [i for line in lines for i in tokenizer(line, add_special_tokens=False)["input_ids"]]
    usable = len(ids) // block * block
    return torch.tensor(ids[:usable]).view(-1, block)


def test_byte_and_word_counts_equal_the_decoded_text(tiny_gpt2):
    """A block's bytes and words (of the predicted tokens: all but the first) as read from the text itself."""
    tokenizer = AutoTokenizer.from_pretrained(str(tiny_gpt2))
    task = get_task("clm")(None)
    from distillbench.tasks.clm import TokenText

    counts = TokenText.of(tokenizer, len(tokenizer))
    text = 'the cat sat on the mat .\n " a dog ran under   the tree .\nthe bird flew'
    ids = torch.tensor([tokenizer(text, add_special_tokens=False)["input_ids"]])
    byte_count, words = counts.counts(ids)
    full = tokenizer.decode(ids[0])
    start = len(tokenizer.decode(ids[0, :1]))
    assert full == text and int(byte_count[0]) == len(full[start:].encode())
    expected_words = sum(1 for p in range(max(start, 1), len(full)) if full[p - 1].isspace() and not full[p].isspace())
    assert int(words[0]) == expected_words
    assert task.main_metric == "perplexity" and not task.greater_is_better


def test_metrics_from_block_rows_by_hand():
    task = get_task("clm")(None)
    rows = np.array([[10.0, 7, 30, 5], [4.0, 7, 20, 3]])  # nll, tokens, bytes, words
    metrics = task.compute_metrics(rows, None)
    assert metrics["perplexity"] == pytest.approx(math.exp(14 / 14))
    assert metrics["bits_per_byte"] == pytest.approx(14 / math.log(2) / 50)
    assert metrics["word_perplexity"] == pytest.approx(math.exp(14 / 8))
    resamples = np.array([[0, 0], [0, 1], [1, 1]])
    by_row = task.metric_rows({"predictions": rows}, resamples, "perplexity")
    assert by_row == pytest.approx([task.metric_on({"predictions": rows}, r)["perplexity"] for r in resamples])


def test_recorded_perplexity_equals_the_saved_students_own_loss(tiny_gpt2, text_dir, workdir):
    """The record's held-out perplexity is exp of the mean next-token loss the saved student's own
    ``transformers`` loss gives on the held-out blocks, and its stored predictions hold one row per block."""
    assert main(clm_run_args(tiny_gpt2, text_dir, "kd", "--student-layers", "2")) == 0
    record = student_of(workdir / "results", "kd")
    model = AutoModelForCausalLM.from_pretrained(str(workdir / record["model"]["output_dir"])).eval()
    blocks = heldout_blocks(text_dir, AutoTokenizer.from_pretrained(str(tiny_gpt2)), 32)
    with torch.no_grad():
        losses = [model(input_ids=b[None], labels=b[None]).loss for b in blocks]
    assert record["metrics"]["perplexity"] == pytest.approx(math.exp(float(torch.stack(losses).mean())), rel=1e-4)
    stored = evaluation_of(record, workdir / "results")
    assert stored["predictions"].shape == (len(blocks), 4)


def test_compare_gives_a_paired_interval_over_heldout_blocks(tiny_gpt2, text_dir, workdir, capsys):
    for method in ("kd", "finetune"):
        assert (
            main([*clm_run_args(tiny_gpt2, text_dir, method, "--student-layers", "2"), "--set", "learning_rate=1e-3"])
            == 0
        )
    capsys.readouterr()
    assert main(["compare", "kd", "finetune", "--task", "clm", "--include-bounded", "--include-dirty"]) == 0
    out = capsys.readouterr().out
    assert "perplexity" in out and "95% CI" in out


def test_vocabulary_kl_equals_soft_kl_in_value_and_gradient():
    torch.manual_seed(0)
    student = torch.randn(3, 9, 50, dtype=torch.float64, requires_grad=True)
    teacher = torch.randn(3, 9, 50, dtype=torch.float64)
    import distillbench.losses as losses

    chunk = losses.VOCABULARY_CHUNK_ELEMENTS
    losses.VOCABULARY_CHUNK_ELEMENTS = 50 * 4  # chunks of 4 positions, the last one short
    try:
        ours = vocabulary_kl(student, teacher, 2.0)
        (ours_grad,) = torch.autograd.grad(3 * ours, student)
    finally:
        losses.VOCABULARY_CHUNK_ELEMENTS = chunk
    reference = soft_kl(student, teacher, 2.0)
    (reference_grad,) = torch.autograd.grad(3 * reference, student)
    torch.testing.assert_close(ours, reference, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(ours_grad, reference_grad, rtol=1e-10, atol=1e-14)


def test_vocabulary_kl_peak_memory_is_within_the_lm_losss():
    """Forward and backward of the KD loss over 2,048 positions × 32,000 words, each in a fresh process:
    its peak memory (in logits-sized buffers) is within 1.2× of the cross-entropy LM loss's, where the
    unchunked KL needs several times more."""
    from distillbench.bench import vocabulary_loss_peaks

    ballast = torch.ones(2**28)  # 1 GiB here: a child must measure its own peak, not start from its parent's
    peaks = vocabulary_loss_peaks(2048, 32000)
    del ballast
    assert peaks["kd"] <= 1.2 * peaks["lm_loss"], peaks
    assert peaks["unchunked_kd"] > 1.5 * peaks["kd"]


def test_a_standin_teacher_is_pretrained_once_and_labelled(text_dir, workdir, capsys):
    """``--teacher scratch:gpt2-tiny``: a dry run before it exists is one line; the first run pre-trains
    it (tokenizer and model) and says what it is; a second run reads it from the cache."""
    args = clm_run_args(Path("unused"), text_dir, "kd", "--student-layers", "1")
    args[args.index("--teacher") + 1] = "scratch:gpt2-tiny"
    assert main([*args, "--dry-run"]) == 2
    assert "not pre-trained on this text yet" in capsys.readouterr().err
    assert main(args) == 0
    err = capsys.readouterr().err
    assert "pre-training the stand-in teacher scratch:gpt2-tiny" in err
    (standin,) = (workdir / "cache" / "standins").glob("gpt2-tiny-*/standin.json")
    info = json.loads(standin.read_text())
    assert info["what"].startswith("a stand-in for GPT-2") and "not GPT-2" in info["what"]
    assert set(info["heldout"]) >= {"perplexity", "bits_per_byte"} and "perplexity" in info["unigram_heldout"]
    assert "commit" in info["git"] and "torch" in info["packages"]  # how it was made, as run records say
    record = student_of(workdir / "results", "kd")
    assert record["model"]["teacher_source"].startswith("cache:standins/gpt2-tiny-")
    from distillbench.labels import teacher_label

    assert teacher_label(record) == "gpt2-tiny stand-in"  # tables never call it GPT-2
    assert main([*args, "--seed", "7"]) == 0
    assert "pre-training the stand-in" not in capsys.readouterr().err


# The top-k teacher cache ---------------------------------------------------------------------------
def coarse_kl_by_hand(student: torch.Tensor, teacher: torch.Tensor, k: int, temperature: float) -> torch.Tensor:
    """T² · mean over positions of KL between the two distributions coarsened to the teacher's top k words
    and one bucket for the rest, written out with masks."""
    p, q = torch.softmax(teacher / temperature, -1), torch.softmax(student / temperature, -1)
    top = torch.zeros_like(p, dtype=torch.bool).scatter_(-1, p.topk(k, -1).indices, True)

    def coarse(x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x.masked_fill(~top, 0), x.masked_fill(top, 0).sum(-1, keepdim=True)], -1)

    pc, qc = coarse(p), coarse(q)
    return torch.where(pc > 0, pc * (pc.log() - qc.log()), torch.zeros_like(pc)).sum(-1).mean() * temperature**2


@pytest.mark.parametrize("k", [1, 8, 40])
def test_top_k_kd_is_the_coarsened_kl_and_within_the_stated_bound(k):
    """KD from a top-k cache equals the KL of the coarsened distributions (value and gradient), is never
    above the live KD, and the gap is within the bound the docstring states, position by position."""
    from distillbench.losses import top_k_teacher

    torch.manual_seed(k)
    vocabulary, temperature = 60, 2.0
    student = (3 * torch.randn(2, 5, vocabulary, dtype=torch.float64)).requires_grad_()
    teacher = 3 * torch.randn(2, 5, vocabulary, dtype=torch.float64)
    cached = vocabulary_kl(student, top_k_teacher(teacher, k, temperature), temperature)
    (cached_grad,) = torch.autograd.grad(cached, student)
    expected = coarse_kl_by_hand(student, teacher, k, temperature)
    (expected_grad,) = torch.autograd.grad(expected, student)
    torch.testing.assert_close(cached.double(), expected, rtol=1e-6, atol=1e-8)
    torch.testing.assert_close(cached_grad, expected_grad, rtol=1e-5, atol=1e-9)
    with torch.no_grad():  # per position: 0 ≤ live − cached ≤ r · [log(p_(k) / r) + log(q_R / q_min)]
        p, q = torch.softmax(teacher / temperature, -1), torch.softmax(student / temperature, -1)
        live = (p * (p.log() - q.log())).sum(-1)
        values, indices = p.topk(k, -1)
        top = torch.zeros_like(p, dtype=torch.bool).scatter_(-1, indices, True)
        r, q_rest = p.masked_fill(top, 0).sum(-1), q.masked_fill(top, 0).sum(-1)
        pc = torch.cat([values, r[..., None]], -1)
        qc = torch.cat([q.gather(-1, indices), q_rest[..., None]], -1)
        coarse = (pc * (pc.log() - qc.log())).sum(-1)
        q_min = q.masked_fill(top, math.inf).amin(-1)
        bound = r * ((values[..., -1] / r).log() + (q_rest / q_min).log())
        gap = live - coarse
        assert bool((gap >= -1e-12).all()) and bool((gap <= bound + 1e-12).all())
        assert float(cached) <= float(live.mean() * temperature**2) + 1e-9


def test_top_k_kd_in_float32_is_exact_where_little_is_left_or_a_top_word_underflows():
    """The float32 path takes the student's leftover as 1 − Σ top; positions where that cancels (a peaked
    student leaving almost nothing outside the teacher's top k) or where a top-k probability underflows
    are summed word by word. Both kinds sit beside ordinary positions here; value and gradient match a
    float64 computation by hand."""
    from distillbench.losses import top_k_teacher

    torch.manual_seed(0)
    vocabulary, k, temperature = 50, 8, 1.0
    teacher = 3 * torch.randn(3, vocabulary, dtype=torch.float64)
    student = torch.randn(3, vocabulary, dtype=torch.float64)
    top = teacher.topk(k, -1).indices
    student[1] = student[1].scatter(-1, top[1], 30.0)  # q_R ≈ e^-30: nothing left outside the top k
    student[2] = student[2].scatter(-1, top[2][:1], -200.0)  # one top word at e^-200: below float32
    student32 = student.float().requires_grad_()
    cached = vocabulary_kl(student32, top_k_teacher(teacher.float(), k, temperature), temperature)
    (cached_grad,) = torch.autograd.grad(cached, student32)
    student64 = student.clone().requires_grad_()
    expected = coarse_kl_by_hand(student64, teacher, k, temperature)
    (expected_grad,) = torch.autograd.grad(expected, student64)
    torch.testing.assert_close(cached.double(), expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(cached_grad.double(), expected_grad, rtol=1e-4, atol=1e-7)


def test_a_top_k_cache_run_reads_the_cache_and_is_its_own_experiment(tiny_gpt2, text_dir, workdir):
    common = clm_run_args(tiny_gpt2, text_dir, "kd", "--student-layers", "2")
    assert main([*common, "--set", "teacher_cache_top_k=8", "--set", "teacher_cache_dtype=float16"]) == 0
    assert main(common) == 0
    runs = [r for r in records(workdir / "results") if r["role"] != "teacher"]
    by_cache = {bool(r.get("teacher_cache")): r for r in runs}
    assert set(by_cache) == {True, False} and len({r["run_id"] for r in runs}) == 2  # the top-k run has its own key
    meta = by_cache[True]["teacher_cache"]
    assert meta["top_k"] == 8 and meta["temperature"] == 2.0 and meta["dtype"] == "float16"
    assert all(math.isfinite(v) for v in by_cache[True]["loss_terms"].values())


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--set", "teacher_cache_top_k=500"], "teacher_cache_top_k=500: the teacher's vocabulary has"),
        (["--method", "minilm", "--set", "teacher_cache_top_k=8"], "method minilm needs live teacher outputs"),
        (["--set", "teacher_cache_top_k=8", "--teacher-cache", "off"], "the top-k objective reads the cache"),
    ],
)
def test_bad_top_k_settings_are_one_line(extra, message, tiny_gpt2, text_dir, workdir, capsys):
    assert main([*clm_run_args(tiny_gpt2, text_dir, "kd"), *extra]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("error: ") and message in line
    assert not (workdir / "results").exists()


def test_top_k_on_a_task_without_a_vocabulary_is_one_line(tiny_bert, glue_dir, workdir, capsys):
    from conftest import tiny_run_args

    assert main([*tiny_run_args(tiny_bert, glue_dir, "kd"), "--set", "teacher_cache_top_k=8"]) == 2
    assert "mrpc does not distil a vocabulary (clm does)" in capsys.readouterr().err


def test_clm_without_a_teacher_uses_the_standin(text_dir, workdir, capsys, monkeypatch):
    """No decoder weights ship with distillbench: ``run --task clm`` without --teacher means the stand-in."""
    args = ["run", "--method", "ted", "--task", "clm", "--data-dir", str(text_dir), "--dry-run"]
    assert main([*args, "--set", "corpus=text/train.txt", "--set", "heldout=text/heldout.txt"]) == 2
    assert "--teacher scratch:gpt2-cpu: not pre-trained on this text yet" in capsys.readouterr().err
    monkeypatch.delenv("DISTILLBENCH_DATA", raising=False)
    no_data = ["run", "--method", "kd", "--task", "clm", "--dry-run"]  # the likely cause, said as such
    assert main(no_data) == 2
    assert "no data folder given (--data-dir or DISTILLBENCH_DATA)" in capsys.readouterr().err
