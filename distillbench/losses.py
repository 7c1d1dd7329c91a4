"""Loss pieces shared by methods, written once: softened KL, MSE, relation KL, layer maps.

Every function takes plain tensors so each can be checked against a hand-computed value.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from distillbench.errors import UserError


def soft_kl(student_logits: Tensor, teacher_logits: Tensor, temperature: float) -> Tensor:
    """Hinton et al.: KL(softmax(t/T) ‖ softmax(s/T)) averaged over rows ('batchmean'), times T².

    The T² keeps the gradient scale of the soft term independent of T. Identical to the TED reference
    (``F.kl_div(log_softmax(s/T), softmax(t/T), reduction="batchmean") * T**2``); rows are the leading
    dimensions, classes the last.
    """
    s = student_logits.reshape(-1, student_logits.shape[-1]) / temperature
    t = teacher_logits.reshape(-1, teacher_logits.shape[-1]) / temperature
    kl = F.kl_div(F.log_softmax(s, dim=-1), F.softmax(t, dim=-1), reduction="batchmean")
    return kl * temperature**2


def mse(student: Tensor, teacher: Tensor, mask: Tensor | None = None) -> Tensor:
    """Mean squared error; with ``mask`` ([B, L], 1 = real token) only real tokens count.

    The TED reference averages over all positions, padding included; ``mask=None`` reproduces that.
    """
    if mask is None:
        return F.mse_loss(student, teacher)
    weights = mask.to(student.dtype).unsqueeze(-1)
    squared = (student - teacher).pow(2) * weights
    return squared.sum() / (weights.sum() * student.shape[-1]).clamp_min(1.0)


def uniform_layer_map(student_layers: int, teacher_layers: int) -> list[int]:
    """Student layer i (0-based) ↔ teacher layer (i+1)·k − 1 with k = teacher/student layers."""
    if student_layers <= 0 or teacher_layers % student_layers:
        raise UserError(
            f"cannot map a {student_layers}-layer student onto a {teacher_layers}-layer teacher uniformly "
            "(the teacher's layer count must be a multiple of the student's)"
        )
    k = teacher_layers // student_layers
    return [(i + 1) * k - 1 for i in range(student_layers)]


def kl_between_distributions(teacher_probs: Tensor, student_probs: Tensor, query_mask: Tensor) -> Tensor:
    """KL(teacher ‖ student) over the last dim of [B, H, L, L] distributions, averaged over batch,
    heads and real query positions (``query_mask`` [B, L]), as MiniLM scores attention maps."""
    log_ratio = torch.log(teacher_probs.clamp_min(1e-12)) - torch.log(student_probs.clamp_min(1e-12))
    per_query = (teacher_probs * log_ratio).sum(-1)  # [B, H, L]
    weights = query_mask.to(per_query.dtype).unsqueeze(1).expand_as(per_query)
    return (per_query * weights).sum() / weights.sum().clamp_min(1.0)


def split_heads(states: Tensor, heads: int) -> Tensor:
    """[B, L, D] → [B, heads, L, D/heads]; MiniLMv2 re-splits Q/K/V into ``heads`` relation heads."""
    batch, length, width = states.shape
    if width % heads:
        raise UserError(f"hidden width {width} is not divisible into {heads} relation heads")
    return states.view(batch, length, heads, width // heads).transpose(1, 2)


def relation_log_probs(left: Tensor, right: Tensor, heads: int, attention_mask: Tensor) -> Tensor:
    """log softmax(A Bᵀ / √d) per head, padding keys masked: [B, heads, L, L].

    With A = Q, B = K this is the attention distribution itself; with A = B = X (Q, K or V) it is
    MiniLM's self-relation.
    """
    a, b = split_heads(left, heads), split_heads(right, heads)
    scores = a @ b.transpose(-1, -2) / math.sqrt(a.shape[-1])
    key_mask = attention_mask[:, None, None, :].bool()
    scores = scores.masked_fill(~key_mask, torch.finfo(scores.dtype).min)
    return F.log_softmax(scores, dim=-1)


def relation_kl(
    student: tuple[Tensor, Tensor], teacher: tuple[Tensor, Tensor], heads: int, attention_mask: Tensor
) -> Tensor:
    """KL(teacher relation ‖ student relation) of (left, right) pairs, averaged over batch, heads and
    real query positions (MiniLM's attention and self-relation transfer)."""
    teacher_log = relation_log_probs(*teacher, heads, attention_mask)
    student_log = relation_log_probs(*student, heads, attention_mask)
    return kl_between_distributions(teacher_log.exp(), student_log.exp(), attention_mask)
