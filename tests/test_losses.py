"""Loss pieces against hand-computed values on small tensors."""

from __future__ import annotations

import math

import pytest
import torch

from distillbench import UserError
from distillbench.losses import kl_between_log_distributions, mse, relation_kl, soft_kl, uniform_layer_map


def test_soft_kl_matches_hand_computation():
    student = torch.tensor([[0.0, 0.0]])
    teacher = torch.tensor([[math.log(3.0), 0.0]])
    # T = 1: p_t = (3/4, 1/4), p_s = (1/2, 1/2)
    expected_t1 = 0.75 * math.log(0.75 / 0.5) + 0.25 * math.log(0.25 / 0.5)
    assert soft_kl(student, teacher, 1.0).item() == pytest.approx(expected_t1, rel=1e-5)
    # T = 2: p_t = (√3, 1) / (√3 + 1), times T² = 4
    p = math.sqrt(3) / (math.sqrt(3) + 1)
    expected_t2 = 4 * (p * math.log(p / 0.5) + (1 - p) * math.log((1 - p) / 0.5))
    assert soft_kl(student, teacher, 2.0).item() == pytest.approx(expected_t2, rel=1e-5)


def test_soft_kl_is_a_batch_mean_and_zero_for_equal_logits():
    a = torch.tensor([[0.0, 0.0], [math.log(3.0), 0.0]])
    b = torch.tensor([[math.log(3.0), 0.0], [math.log(3.0), 0.0]])
    single = soft_kl(a[:1], b[:1], 1.0)
    assert soft_kl(a, b, 1.0).item() == pytest.approx(single.item() / 2, rel=1e-6)
    assert soft_kl(b, b, 2.0).item() == pytest.approx(0.0, abs=1e-6)


def test_mse_with_and_without_padding_mask():
    student = torch.tensor([[[1.0, 2.0], [3.0, 4.0]]])
    teacher = torch.zeros_like(student)
    assert mse(student, teacher).item() == pytest.approx((1 + 4 + 9 + 16) / 4)
    mask = torch.tensor([[1, 0]])
    assert mse(student, teacher, mask).item() == pytest.approx((1 + 4) / 2)


def test_uniform_layer_map():
    assert uniform_layer_map(3, 6) == [1, 3, 5]
    assert uniform_layer_map(2, 6) == [2, 5]
    assert uniform_layer_map(12, 12) == list(range(12))
    with pytest.raises(UserError, match="multiple"):
        uniform_layer_map(4, 6)


def test_kl_between_distributions_by_hand_and_masked_queries():
    teacher = torch.tensor([[[[0.75, 0.25], [0.5, 0.5]]]])
    student = torch.tensor([[[[0.5, 0.5], [0.5, 0.5]]]])
    first = 0.75 * math.log(1.5) + 0.25 * math.log(0.5)
    both = kl_between_log_distributions(teacher.log(), student.log(), torch.tensor([[1, 1]]))
    assert both.item() == pytest.approx(first / 2, rel=1e-6)
    only_first = kl_between_log_distributions(teacher.log(), student.log(), torch.tensor([[1, 0]]))
    assert only_first.item() == pytest.approx(first, rel=1e-6)


def test_relation_kl_by_hand():
    # one head, two tokens, width 1: relations softmax(x_i x_j / 1)
    student = torch.tensor([[[0.0], [0.0]]])  # uniform relations
    teacher = torch.tensor([[[1.0], [0.0]]])  # row 0: softmax(1, 0); row 1: softmax(0, 0)
    mask = torch.ones(1, 2, dtype=torch.long)
    p = math.e / (math.e + 1)
    expected = (p * math.log(p / 0.5) + (1 - p) * math.log((1 - p) / 0.5)) / 2
    assert relation_kl((student, student), (teacher, teacher), 1, mask).item() == pytest.approx(expected, rel=1e-5)
    assert relation_kl((teacher, teacher), (teacher, teacher), 1, mask).item() == pytest.approx(0.0, abs=1e-6)


def test_relation_kl_ignores_padding_keys():
    states = torch.tensor([[[1.0], [0.5], [9.0]]])
    padded_other = torch.tensor([[[1.0], [0.5], [-4.0]]])
    mask = torch.tensor([[1, 1, 0]])
    assert relation_kl((states, states), (padded_other, padded_other), 1, mask).item() == pytest.approx(0, abs=1e-6)


def test_relation_kl_is_exact_where_student_probabilities_underflow():
    """Peaked student relations: a probability of e^-60 is far below the old 1e-12 clamp. The exact KL
    (here by hand, in float64) counts the teacher mass there; the clamped formula under-estimated it and
    had no gradient through the underflowed entry."""
    teacher = torch.tensor([[[[0.5, 0.5]]]], dtype=torch.float64)
    student_log = torch.tensor([[[[0.0, -60.0]]]], dtype=torch.float64, requires_grad=True)
    mask = torch.ones(1, 1, dtype=torch.long)
    exact = 0.5 * (math.log(0.5) - 0.0) + 0.5 * (math.log(0.5) + 60.0)
    loss = kl_between_log_distributions(teacher.log(), student_log, mask)
    assert loss.item() == pytest.approx(exact, rel=1e-9)
    clamped_student = student_log.detach().exp().clamp_min(1e-12)
    clamped = (teacher * (teacher.log() - clamped_student.log())).sum()
    assert clamped.item() < exact / 2  # what the clamp version gave: less than half the true KL
    loss.backward()
    assert student_log.grad[0, 0, 0, 1].item() == pytest.approx(-0.5)  # d/ds of -p_t·s


def test_losses_upcast_half_precision_and_leave_float64_alone():
    """float64 inputs stay float64 (a gradient check needs them); fp16/bf16 are computed in float32."""
    from distillbench.losses import at_least_float32, soft_kl

    logits = torch.randn(4, 3, dtype=torch.float64)
    assert soft_kl(logits, logits.flip(0), 2.0).dtype == torch.float64
    assert mse(logits, logits + 1).dtype == torch.float64
    for half in (torch.float16, torch.bfloat16):
        assert at_least_float32(logits.to(half)).dtype == torch.float32
        assert soft_kl(logits.to(half), logits.flip(0).to(half), 2.0).dtype == torch.float32
