"""Token-level divergences against independent formulas (fp64, limits, padding masks, chunking, the top-k
cache), the divergence methods through the harness, and on-policy GKD: samples fixed by the seed, λ = 0
equal to its off-policy method, bad settings as one line."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.spatial.distance import jensenshannon
from scipy.special import rel_entr, softmax
from transformers import AutoModelForCausalLM

from conftest import clm_run_args, tiny_run_args
from distillbench import DISTILL_MASK, UserError, get_method, get_task
from distillbench.cli import main
from distillbench.divergence_method import DivergenceMethod
from distillbench.divergences import DIVERGENCES, divergence_rows, token_divergence
from distillbench.losses import soft_kl, top_k_teacher
from distillbench.method import ModelPair

DIVERGENCE_METHODS = ["reverse_kl", "jsd", "tvd", "skew_kl", "skew_reverse_kl", "gkd"]


def by_hand(p: np.ndarray, q: np.ndarray, kind: str, c: float) -> np.ndarray:
    """Each divergence per row from its definition on probabilities, with scipy's relative entropy."""

    def kl(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return rel_entr(a, b).sum(-1)

    if kind == "forward_kl":
        return kl(p, q)
    if kind == "reverse_kl":
        return kl(q, p)
    if kind == "jsd":
        m = c * p + (1 - c) * q
        return c * kl(p, m) + (1 - c) * kl(q, m)
    if kind == "tvd":
        return 0.5 * np.abs(p - q).sum(-1)
    if kind == "skew_kl":
        return kl(p, c * p + (1 - c) * q)
    return kl(q, (1 - c) * p + c * q)  # skew_reverse_kl


@pytest.fixture
def logits() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    student = torch.randn(3, 5, 11, generator=generator, dtype=torch.float64) * 2
    teacher = torch.randn(3, 5, 11, generator=generator, dtype=torch.float64) * 2
    mask = (torch.rand(3, 5, generator=generator) > 0.3).to(torch.float64)
    return student, teacher, mask


@pytest.mark.parametrize("kind", DIVERGENCES)
@pytest.mark.parametrize("coefficient", [0.1, 0.5, 0.9])
def test_each_divergence_equals_its_definition_over_kept_positions(kind, coefficient, logits):
    student, teacher, mask = logits
    temperature = 1.7
    p, q = softmax(teacher.numpy() / temperature, -1), softmax(student.numpy() / temperature, -1)
    rows = by_hand(p, q, kind, coefficient)
    expected = (rows * mask.numpy()).sum() / mask.numpy().sum()
    ours = token_divergence(student, teacher, kind, coefficient, temperature, mask)
    assert float(ours) == pytest.approx(expected, rel=1e-10, abs=1e-12)


def test_symmetric_jsd_is_scipys_jensen_shannon_distance_squared(logits):
    student, teacher, _ = logits
    p, q = softmax(teacher.numpy(), -1), softmax(student.numpy(), -1)
    rows = divergence_rows(torch.log(torch.tensor(p)), torch.log(torch.tensor(q)), "jsd", 0.5).numpy()
    assert rows == pytest.approx(jensenshannon(p, q, axis=-1) ** 2, rel=1e-9)


def test_limits_are_as_trl_defines_them(logits):
    """β = 0: forward KL, β = 1: reverse KL (TRL's end points); α = 0 of the skew divergences: the plain
    KLs; α = 1: zero. Forward KL at T = 1 is KD's soft term (T² = 1)."""
    student, teacher, mask = logits
    value = {kind: token_divergence(student, teacher, kind, 0.5, 1.0, mask) for kind in ("forward_kl", "reverse_kl")}

    def at(kind: str, c: float) -> torch.Tensor:
        return token_divergence(student, teacher, kind, c, 1.0, mask)

    torch.testing.assert_close(at("jsd", 0.0), value["forward_kl"])
    torch.testing.assert_close(at("jsd", 1.0), value["reverse_kl"])
    torch.testing.assert_close(at("skew_kl", 0.0), value["forward_kl"])
    torch.testing.assert_close(at("skew_reverse_kl", 0.0), value["reverse_kl"])
    assert float(at("skew_kl", 1.0)) == 0 and float(at("skew_reverse_kl", 1.0)) == 0
    # just inside the ends the bounded JSD is near 0, not near the KLs: the end points are a definition
    assert float(at("jsd", 1e-6)) < 1e-4 * float(value["forward_kl"])
    everywhere = token_divergence(student, teacher, "forward_kl", temperature=1.0)
    torch.testing.assert_close(everywhere, soft_kl(student, teacher, 1.0))


@pytest.mark.parametrize("kind", DIVERGENCES)
def test_padding_positions_add_nothing_and_get_no_gradient(kind, logits):
    student, teacher, mask = logits
    student = student.clone().requires_grad_(True)
    changed = teacher.clone()
    changed[mask == 0] = torch.randn_like(changed[mask == 0]) * 10
    loss = token_divergence(student, teacher, kind, 0.3, 1.0, mask)
    other = token_divergence(student, changed, kind, 0.3, 1.0, mask)
    assert float(loss.detach()) == pytest.approx(float(other.detach()), rel=1e-12)
    (gradient,) = torch.autograd.grad(loss, student)
    assert gradient[mask == 0].abs().max() == 0 and gradient[mask == 1].abs().max() > 0


@pytest.mark.parametrize("kind", DIVERGENCES)
def test_chunked_value_and_gradient_equal_one_chunk_and_pass_gradcheck(kind, logits, monkeypatch):
    """Chunks of two positions (checkpointed) against one chunk of all; and the gradient against finite
    differences (torch.autograd.gradcheck, fp64)."""
    from distillbench import divergences

    student, teacher, mask = logits
    student = student.clone().requires_grad_(True)
    whole = token_divergence(student, teacher, kind, 0.3, 2.0, mask)
    (whole_grad,) = torch.autograd.grad(whole, student)
    monkeypatch.setattr(divergences, "VOCABULARY_CHUNK_ELEMENTS", 4 * 2 * student.shape[-1])
    chunked = token_divergence(student, teacher, kind, 0.3, 2.0, mask)
    (chunked_grad,) = torch.autograd.grad(chunked, student)
    torch.testing.assert_close(chunked, whole, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(chunked_grad, whole_grad, rtol=1e-10, atol=1e-14)
    if kind != "tvd":  # |p − q| has a kink where p = q; away from it the check below still holds for TVD
        assert torch.autograd.gradcheck(lambda s: token_divergence(s, teacher, kind, 0.3, 2.0, mask), (student,))


@pytest.mark.parametrize("kind", DIVERGENCES)
def test_a_top_k_teacher_with_all_but_one_word_is_the_exact_divergence(kind, logits):
    """Coarsening to the teacher's top k words and one bucket loses nothing when the bucket is one word."""
    student, teacher, mask = logits
    cached = top_k_teacher(teacher, teacher.shape[-1] - 1, 1.5)
    exact = token_divergence(student, teacher, kind, 0.3, 1.5, mask)
    torch.testing.assert_close(token_divergence(student, cached, kind, 0.3, 1.5, mask), exact)


def test_divergence_peak_memory_stays_near_the_lm_losss():
    """Forward and backward of the JSD over 2,048 positions × 32,000 words in a fresh process: chunked and
    checkpointed, its peak (in logits-sized buffers) stays below the cross-entropy LM loss's (its gradient
    and the chunks' gradients before they are joined, where the unchunked JSD would hold several)."""
    from distillbench.bench import vocabulary_loss_peaks

    peaks = vocabulary_loss_peaks(2048, 32000, ("lm_loss", "jsd"))
    assert peaks["jsd"] <= peaks["lm_loss"], peaks


# The methods ------------------------------------------------------------------------------------------
def test_every_divergence_method_is_listed_with_its_settings(capsys):
    assert main(["list"]) == 0
    listed = capsys.readouterr().out
    for name in DIVERGENCE_METHODS:
        assert f"  {name} " in listed
        assert main(["show", name]) == 0
        shown = capsys.readouterr().out
        assert "div_alpha = 1.0" in shown and "temperature = 1.0" in shown
        if name != "gkd":
            assert "teacher-output cache: can read one" in shown
    assert main(["show", "gkd"]) == 0
    shown = capsys.readouterr().out
    assert "lmbda = 0.5  [≥ 0, ≤ 1]" in shown and "teacher-output cache: no (live teacher)" in shown


@pytest.mark.parametrize("name", DIVERGENCE_METHODS[:-1])
def test_the_method_loss_is_task_plus_weighted_divergence(name, logits):
    student, teacher, _ = logits
    task = get_task("clm")(None)
    method_cls = get_method(name)
    hp = method_cls.hparams_for("clm", {"div_alpha": 2.5, "temperature": 1.3})
    method = method_cls(hp, task, ModelPair(None, None))
    from distillbench import Outputs

    class Raw:
        loss = torch.tensor(0.7, dtype=torch.float64)

    terms = method.loss(Outputs(Raw(), [student]), Outputs(None, [teacher]), {})
    c = {"jsd": 0.5, "skew_kl": 0.1, "skew_reverse_kl": 0.1}.get(name, 0.5)  # the documented defaults
    expected = 2.5 * token_divergence(student, teacher, method.divergence, c, 1.3)
    assert set(terms) == {"task", method.divergence}
    torch.testing.assert_close(terms[method.divergence], expected)


def test_a_divergence_method_on_a_regression_task_is_one_line(tiny_bert, glue_dir, workdir, capsys):
    assert main(tiny_run_args(tiny_bert, glue_dir, "jsd", "stsb")) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("error: jsd compares distributions, and stsb predicts a number")
    assert not (workdir / "results").exists()


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ("beta=1.5", "jsd: beta=1.5: must be ≤ 1"),
        ("beta=-0.1", "beta=-0.1: must be ≥ 0"),
    ],
)
def test_beta_outside_zero_one_is_one_line(setting, message, tiny_gpt2, text_dir, workdir, capsys):
    assert main([*clm_run_args(tiny_gpt2, text_dir, "jsd"), "--set", setting]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("error: ") and message in line
    assert not (workdir / "results").exists()


@pytest.mark.parametrize("method", ["skew_kl", "skew_reverse_kl"])
def test_alpha_outside_zero_one_is_one_line(method, tiny_gpt2, text_dir, workdir, capsys):
    assert main([*clm_run_args(tiny_gpt2, text_dir, method), "--set", "skew_alpha=2"]) == 2
    assert "skew_alpha=2.0: must be" in capsys.readouterr().err
    assert not (workdir / "results").exists()


# On-policy distillation -------------------------------------------------------------------------------
def gkd_args(tiny_gpt2: Path, text_dir: Path, *extra: str) -> list[str]:
    settings = ["--set", "prompt_tokens=16", "--set", "max_new_tokens=8"]
    return clm_run_args(tiny_gpt2, text_dir, "gkd", "--student-layers", "2", *settings, *extra)


def student_record(results: Path) -> dict:
    records = [json.loads(p.read_text()) for p in (results / "runs").glob("*.json")]
    (record,) = [r for r in records if r["role"] != "teacher"]
    return record


def test_gkd_runs_on_a_causal_lm_and_one_seed_gives_one_run(tiny_gpt2, text_dir, workdir):
    """λ = 1: every step distils on samples; two runs with one seed give the same loss terms and weights."""
    for folder in ("a", "b"):
        args = gkd_args(tiny_gpt2, text_dir, "--set", "lmbda=1", "--results-dir", f"{folder}/results")
        assert main([*args, "--output-dir", f"{folder}/out"]) == 0
    first, second = student_record(Path("a/results")), student_record(Path("b/results"))
    assert first["status"] == "complete" and set(first["loss_terms"]) >= {"loss/task", "loss/jsd"}
    assert first["loss_terms"] == second["loss_terms"]
    assert all(math.isfinite(v) for v in first["loss_terms"].values())
    budget = first["budget"]  # every step sampled: as many drawn rows as the distillation's, 16 + 8 tokens each
    assert budget["sampling"] == {"share": 1.0, "tokens_per_row": 24}
    assert budget["sampled_rows"] == budget["stages"][-1]["examples"] > 0


def test_gkd_with_lambda_zero_is_its_off_policy_method(tiny_gpt2, text_dir, workdir):
    common = ["--student-layers", "2", "--set", "beta=0.5"]
    off = clm_run_args(tiny_gpt2, text_dir, "jsd", *common, "--results-dir", "off")
    on = gkd_args(tiny_gpt2, text_dir, *common, "--set", "lmbda=0", "--results-dir", "on")
    assert main(off) == 0 and main(on) == 0
    assert student_record(Path("off"))["loss_terms"] == student_record(Path("on"))["loss_terms"]


def small_gkd(tiny_gpt2: Path, **settings) -> tuple:
    task = get_task("clm")(None)
    student = AutoModelForCausalLM.from_pretrained(str(tiny_gpt2))
    hp = get_method("gkd").hparams_for("clm", {"prompt_tokens": 6, "max_new_tokens": 5} | settings)
    return get_method("gkd")(hp, task, ModelPair(student.config, student.config)), student


def test_the_samples_continue_the_prompts_and_the_mask_marks_their_predictions(tiny_gpt2):
    method, student = small_gkd(tiny_gpt2)
    batch = {"input_ids": torch.randint(1, 50, (3, 12)), "attention_mask": torch.ones(3, 12, dtype=torch.long)}
    student.train()
    torch.manual_seed(4)
    sampled = method.sampled_batch(batch, student)
    torch.manual_seed(4)
    again = method.sampled_batch(batch, student)
    assert student.training  # sampling in eval mode, training mode given back
    assert sampled["input_ids"].equal(again["input_ids"]) and sampled["input_ids"].shape == (3, 11)
    assert sampled["input_ids"][:, :6].equal(batch["input_ids"][:, :6])
    assert sampled[DISTILL_MASK].tolist() == [[0] * 5 + [1] * 5 + [0]] * 3
    assert "labels" not in sampled and sampled["attention_mask"].shape == (3, 11)


def test_the_divergence_of_an_on_policy_step_reads_the_samples_and_the_task_term_the_text(tiny_gpt2):
    """Through the Distiller: task = the student's loss on the text; jsd = the masked JSD between the
    teacher's and the student's distributions on the sampled sequences, computed here independently."""
    from distillbench.distiller import Distiller

    method, student = small_gkd(tiny_gpt2, lmbda=1.0)
    for module in student.modules():  # no dropout: the step and the computation here see one student
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    teacher = AutoModelForCausalLM.from_pretrained(str(tiny_gpt2))
    with torch.no_grad():
        for parameter in teacher.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.05)
    distiller = Distiller(student, teacher, method, method.task).train()
    batch = {"input_ids": torch.randint(1, 50, (2, 12))}
    batch |= {"attention_mask": torch.ones(2, 12, dtype=torch.long), "labels": batch["input_ids"].clone()}
    torch.manual_seed(9)
    terms = distiller(**batch)["terms"]
    torch.manual_seed(9)
    sampled = method.sampled_batch(batch, student)
    with torch.no_grad():
        text_loss = student(**batch).loss
        inputs = {"input_ids": sampled["input_ids"], "attention_mask": sampled["attention_mask"]}
        s, t = student(**inputs).logits.double(), teacher(**inputs).logits.double()
    p, q = softmax(t.numpy(), -1), softmax(s.numpy(), -1)
    rows = by_hand(p, q, "jsd", 0.5)[:, 5:10]  # positions 5..9 predict the sampled tokens 6..10
    assert float(terms["task"].detach()) == pytest.approx(float(text_loss), rel=1e-5)
    assert float(terms["jsd"].detach()) == pytest.approx(rows.mean(), rel=1e-4)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--set", "lmbda=1.5"], "lmbda=1.5: must be ≤ 1"),
        (["--set", "max_new_tokens=0"], "max_new_tokens=0: must be > 0"),
        (["--set", "max_new_tokens=200"], "prompt_tokens + max_new_tokens = 216 is beyond the student's 128 positions"),
        (["--set", "prompt_tokens=32"], "prompt_tokens=32 is not shorter than the training blocks (32 tokens)"),
        (["--set", "divergence=hellinger"], "divergence=hellinger: must be one of forward_kl"),
        (["--teacher-cache", "on"], "method gkd needs live teacher outputs"),
    ],
)
def test_bad_gkd_settings_are_one_line(extra, message, tiny_gpt2, text_dir, workdir, capsys):
    assert main(gkd_args(tiny_gpt2, text_dir, *extra)) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("error: ") and message in line, line
    assert not (workdir / "results").exists() and not (workdir / "cache").exists()


def test_gkd_on_a_classification_task_is_one_line(tiny_bert, glue_dir, workdir, capsys):
    assert main(tiny_run_args(tiny_bert, glue_dir, "gkd")) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line == (
        "error: gkd samples continuations from a causal language model, and mrpc is not a causal-LM task; "
        "use clm or generation"
    )
    assert not (workdir / "results").exists()


def test_gkd_validation_needs_a_causal_lm_task():
    with pytest.raises(UserError, match="not a causal-LM task"):
        get_method("gkd")(get_method("gkd").HParams(), get_task("mrpc")(None), ModelPair(None, None))
    assert issubclass(get_method("gkd"), DivergenceMethod)


def test_a_divergence_method_reads_a_top_k_cache(tiny_gpt2, text_dir, workdir):
    """From the cache: the distributions coarsened to the teacher's top k, at the method's temperature."""
    args = clm_run_args(tiny_gpt2, text_dir, "skew_reverse_kl", "--student-layers", "2")
    assert main([*args, "--set", "teacher_cache_top_k=8", "--set", "temperature=1.5"]) == 0
    record = student_record(workdir / "results")
    assert record["teacher_cache"]["top_k"] == 8 and record["teacher_cache"]["temperature"] == 1.5
    assert math.isfinite(record["loss_terms"]["loss/skew_reverse_kl"])
