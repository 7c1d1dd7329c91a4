"""Loss pieces shared by methods, written once: softened KL, MSE, relation KL, layer maps.

Every function takes plain tensors so each can be checked against a hand-computed value, and computes in
float32 whatever the inputs' dtype: under bf16/fp16 autocast a softened KL over half-precision logits
can come out negative.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from distillbench.errors import UserError


def at_least_float32(tensor: Tensor) -> Tensor:
    """Half precision (fp16/bf16 autocast outputs) up to float32 for a stable loss; float32 and float64
    stay as they are (``.float()`` would downcast float64 inputs, e.g. in a float64 gradient check)."""
    return tensor.float() if tensor.dtype in (torch.float16, torch.bfloat16) else tensor


def soft_kl(student_logits: Tensor, teacher_logits: Tensor, temperature: float) -> Tensor:
    """Hinton et al.: KL(softmax(t/T) ‖ softmax(s/T)) averaged over rows ('batchmean'), times T².

    The T² keeps the gradient scale of the soft term independent of T. Identical to the TED reference
    (``F.kl_div(log_softmax(s/T), softmax(t/T), reduction="batchmean") * T**2``); rows are the leading
    dimensions, classes the last.
    """
    s = at_least_float32(student_logits).reshape(-1, student_logits.shape[-1]) / temperature
    t = at_least_float32(teacher_logits).reshape(-1, teacher_logits.shape[-1]) / temperature
    kl = F.kl_div(F.log_softmax(s, dim=-1), F.softmax(t, dim=-1), reduction="batchmean")
    return kl * temperature**2


# Positions of a vocabulary KL handled at once: the float32 temporaries of one chunk (a few × rows ×
# vocabulary) stay near 64 MB whatever the batch, block size and vocabulary.
VOCABULARY_CHUNK_ELEMENTS = 1 << 24


class _ChunkedSoftKL(torch.autograd.Function):
    """:func:`soft_kl` over many rows of a large vocabulary, one chunk of rows at a time.

    Autograd would keep each chunk's softmaxes for the backward pass (a few × rows × vocabulary floats
    in all); here each chunk's gradient, T/N · (softmax(s/T) − softmax(t/T)), is written into one buffer
    the size of the student's logits during the forward pass, and the backward pass scales it in place
    and hands it on. The teacher is a constant (no gradient)."""

    @staticmethod
    def forward(ctx: Any, student: Tensor, teacher: Tensor, temperature: float, chunk_rows: int) -> Tensor:
        rows = student.shape[0]
        gradient = torch.empty_like(student)
        total = torch.zeros((), dtype=at_least_float32(student[:0]).dtype, device=student.device)
        for start in range(0, rows, chunk_rows):
            part = slice(start, start + chunk_rows)
            log_q = F.log_softmax(at_least_float32(student[part]) / temperature, dim=-1)
            log_p = F.log_softmax(at_least_float32(teacher[part]) / temperature, dim=-1)
            p = log_p.exp()
            total += (p * (log_p - log_q)).sum()
            gradient[part] = log_q.exp_().sub_(p)
        ctx.save_for_backward(gradient)
        ctx.factor = temperature / rows
        return total * temperature**2 / rows

    @staticmethod
    def backward(ctx: Any, grad_output: Tensor) -> tuple[Tensor | None, ...]:
        (gradient,) = ctx.saved_tensors
        # scaled in place: the buffer becomes the gradient (no second logits-sized tensor); a second backward
        # pass through a retained graph is refused by autograd's version check of the saved buffer
        return gradient.mul_((grad_output * ctx.factor).to(gradient.dtype)), None, None, None


@dataclass(frozen=True)
class TopKTeacher:
    """A teacher's next-token distributions at temperature T as a top-k cache keeps them: per position the
    k largest log-probabilities, their word indices, and the log of the mass left over (``log_rest``)."""

    log_probs: Tensor  # [..., k]
    indices: Tensor  # [..., k], int
    log_rest: Tensor  # [...]
    temperature: float


# Below this much student mass outside the teacher's top k, 1 − Σ top is too inexact (cancellation) and
# the position's leftover is summed word by word instead; likewise where a top-k probability underflows.
EXACT_REST_BELOW = 1e-3


def _softmax_into(out: Tensor, student: Tensor, temperature: float) -> Tensor:
    """softmax(student / T) written into ``out`` without a new rows × vocabulary tensor: on CPU a fresh
    buffer of that size costs more in page faults than the softmax itself."""
    torch.div(at_least_float32(student), temperature, out=out)
    return torch.ops.aten._softmax.out(out, -1, False, out=out)


class _ChunkedTopKKL(torch.autograd.Function):
    """KL between the teacher's and the student's distributions coarsened to the teacher's top k words and
    one bucket for the rest, chunk by chunk, its gradient written during the forward pass (as
    :class:`_ChunkedSoftKL`). With q the student's softmax(s/T), p̂ the teacher's top-k probabilities and,
    outside them, the leftover mass r spread as the student spreads its own (r · q_j / q_R), the
    gradient per position is T/N · (q − p̂). Only q is ever vocabulary-sized, computed in the gradient
    buffer itself: the loss needs q at the k cached words and the student's leftover q_R = 1 − Σ top."""

    @staticmethod
    def forward(ctx: Any, student: Tensor, teacher: TopKTeacher, chunk_rows: int) -> Tensor:
        temperature, rows = teacher.temperature, student.shape[0]
        log_probs = teacher.log_probs.reshape(rows, -1).float()
        indices = teacher.indices.reshape(rows, -1).long()
        log_rest = teacher.log_rest.reshape(rows).float()
        gradient = torch.empty_like(student, dtype=at_least_float32(student[:0]).dtype)
        ctx.factor = temperature / rows
        total = torch.zeros((), dtype=gradient.dtype, device=student.device)
        for start in range(0, rows, chunk_rows):
            part = slice(start, start + chunk_rows)
            index, q = indices[part], _softmax_into(gradient[part], student[part], temperature)
            q_top = q.gather(-1, index)
            log_q_top, log_q_rest = q_top.log(), (1 - q_top.double().sum(-1)).clamp_min(0).log().to(q.dtype)
            inexact = ((log_q_rest < math.log(EXACT_REST_BELOW)) | (q_top.amin(-1) == 0)).nonzero().squeeze(-1)
            if inexact.numel():  # word by word, from the logits, for the few positions that need it
                log_q = F.log_softmax(at_least_float32(student[part][inexact]) / temperature, dim=-1)
                log_q_top[inexact] = log_q.gather(-1, index[inexact])
                log_q_rest[inexact] = log_q.scatter_(-1, index[inexact], -math.inf).logsumexp(-1)
            p_top, rest = log_probs[part].exp(), log_rest[part].exp()
            total += (p_top * (log_probs[part] - log_q_top)).sum() + (rest * (log_rest[part] - log_q_rest)).sum()
            # outside the top k: q − r·q/q_R; inside: q − p (both × T/N, so the backward pass scales by the
            # upstream gradient only)
            q.mul_(((1 - (log_rest[part] - log_q_rest).exp()) * ctx.factor).unsqueeze(-1))
            q.scatter_(-1, index, (log_q_top.exp() - p_top) * ctx.factor)
        ctx.save_for_backward(gradient)
        return total * temperature**2 / rows

    @staticmethod
    def backward(ctx: Any, grad_output: Tensor) -> tuple[Tensor | None, ...]:
        (gradient,) = ctx.saved_tensors
        if grad_output.device.type != "cpu" or float(grad_output) != 1.0:  # a weighted term; 1 needs no pass
            gradient.mul_(grad_output.to(gradient.dtype))
        return gradient, None, None


def vocabulary_kl(student_logits: Tensor, teacher: Tensor | TopKTeacher, temperature: float) -> Tensor:
    """:func:`soft_kl` for next-token distributions ([..., vocabulary] at every position), computed in
    chunks of positions so that no more than one chunk × vocabulary of temporaries exists at once (as
    TRL's chunked JSD does): token-level forward KL, averaged over positions, times T².

    From a top-k cache (:class:`TopKTeacher`) it is the KL of the distributions coarsened to the teacher's
    k words and the rest. The chain rule of KL gives, per position, exactly

        KL(p ‖ q) = KL_coarse + r · KL(p_rest/r ‖ q_rest/q_R),

    so 0 ≤ live − cached, and, since no word outside the top k has more teacher probability than the
    k-th, p_(k), and none less student probability than the smallest outside, q_min,

        live − cached ≤ r · [ log(p_(k) / r) + log(q_R / q_min) ]  per position (then × T², averaged),

    where r is the teacher's mass outside its top k and q_R the student's (tests check both sides)."""
    vocabulary = student_logits.shape[-1]
    student = student_logits.reshape(-1, vocabulary)
    chunk_rows = max(1, VOCABULARY_CHUNK_ELEMENTS // vocabulary)
    if isinstance(teacher, TopKTeacher):
        if teacher.temperature != temperature:
            raise ValueError(f"top-k cache at temperature {teacher.temperature}, KD at {temperature}")
        return _ChunkedTopKKL.apply(student, teacher, chunk_rows)
    return _ChunkedSoftKL.apply(student, teacher.detach().reshape(-1, vocabulary), temperature, chunk_rows)


def top_k_teacher(logits: Tensor, k: int, temperature: float) -> TopKTeacher:
    """What a top-k cache keeps of a teacher's logits: the k largest log-probabilities at temperature T,
    their indices, and the log of the mass outside them."""
    log_probs = F.log_softmax(at_least_float32(logits) / temperature, dim=-1)
    values, indices = log_probs.topk(k, dim=-1)
    log_rest = log_probs.scatter(-1, indices, -math.inf).logsumexp(-1)
    return TopKTeacher(values, indices, log_rest, temperature)


def ensemble_logits(members: list[Tensor], weights: list[float], output_type: str, temperature: float) -> Tensor:
    """Several teachers' outputs for one distillable output, as one teacher's.

    Classification: logits z = T · log Σ_k w_k softmax(t_k / T), so that softmax(z / T) — what
    :func:`soft_kl` reads at temperature T — is exactly the weighted mean of the teachers' softened
    distributions. Regression: the weighted mean prediction. Weights sum to one.
    """
    if output_type == "regression":
        return sum(w * at_least_float32(t) for w, t in zip(weights, members, strict=True))
    log_probs = torch.stack(
        [
            math.log(w) + F.log_softmax(at_least_float32(t) / temperature, dim=-1)
            for w, t in zip(weights, members, strict=True)
        ]
    )
    return temperature * torch.logsumexp(log_probs, dim=0)


# Logit KD on a regression task (STS-B) is the MSE between student and teacher predictions, on the scale
# of the task's own MSE loss; weight 1 gives the teacher's prediction the weight of the label. The TED
# reference's per-task weight (20) multiplies a KL over one logit, which is identically zero, so it says
# nothing about this term; carrying it over would make the teacher outweigh the label twenty to one.
REGRESSION_KD_ALPHA = 1.0

# The TED reference scripts' per-task weight of the logit KD term: one table for every method with the
# term. Their layer-wise scripts (LWD, TED) switch the term off on CoLA.
REFERENCE_KL_ALPHA: dict[str, float] = {
    "mnli": 5.0,
    "qqp": 20.0,
    "qnli": 20.0,
    "sst2": 20.0,
    "rte": 20.0,
    "cola": 20.0,
    "mrpc": 20.0,
    "stsb": REGRESSION_KD_ALPHA,
    "squad": 10.0,
    "squad_v2": 10.0,
}
LAYERWISE_KL_ALPHA: dict[str, float] = REFERENCE_KL_ALPHA | {"cola": 0.0}


def layerwise_task_defaults(mse_alpha: dict[str, float]) -> dict[str, dict[str, float]]:
    """Per-task defaults of a layer-wise method (LWD, TED): the reference's shared logit weight beside the
    method's own hidden-state weight."""
    return {task: {"kl_alpha": LAYERWISE_KL_ALPHA[task], "mse_alpha": alpha} for task, alpha in mse_alpha.items()}


def logit_kd(student: list[Tensor], teacher: list[Tensor], output_type: str, temperature: float) -> Tensor:
    """Mean over a task's distillable outputs (classification logits; QA start and end logits; MLM
    logits at masked positions; a causal LM's next-token logits, chunked) of softened KL, or of the MSE
    between predictions for regression."""
    kl = vocabulary_kl if output_type == "vocabulary" else soft_kl
    terms = [
        F.mse_loss(at_least_float32(s), at_least_float32(t)) if output_type == "regression" else kl(s, t, temperature)
        for s, t in zip(student, teacher, strict=True)
    ]
    return sum(terms) / len(terms)


def mse(student: Tensor, teacher: Tensor, mask: Tensor | None = None) -> Tensor:
    """Mean squared error; with ``mask`` ([B, L], 1 = real token) only real tokens count.

    The TED reference averages over all positions, padding included; ``mask=None`` reproduces that.
    """
    student, teacher = (
        at_least_float32(student),
        at_least_float32(teacher),
    )  # losses in float32, also under bf16/fp16 autocast
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


def split_heads(states: Tensor, heads: int) -> Tensor:
    """[B, L, D] → [B, heads, L, D/heads]; MiniLMv2 re-splits Q/K/V into ``heads`` relation heads."""
    batch, length, width = states.shape
    if width % heads:
        raise UserError(f"hidden width {width} is not divisible into {heads} relation heads")
    return states.view(batch, length, heads, width // heads).transpose(1, 2)


def relation_log_probs(left: Tensor, right: Tensor, heads: int, attention_mask: Tensor, causal: bool = False) -> Tensor:
    """log softmax(A Bᵀ / √d) per head, padding keys masked (and, in a causal decoder, later keys):
    [B, heads, L, L].

    With A = Q, B = K this is the attention distribution itself; with A = B = X (Q, K or V) it is
    MiniLM's self-relation. A decoder's position attends to itself and earlier positions only, so its
    relations are taken over those keys, as its attention is.
    """
    a, b = split_heads(at_least_float32(left), heads), split_heads(at_least_float32(right), heads)
    scores = a @ b.transpose(-1, -2) / math.sqrt(a.shape[-1])
    key_mask = attention_mask[:, None, None, :].bool()
    if causal:
        length = scores.shape[-1]
        key_mask = key_mask & torch.ones(length, length, dtype=torch.bool, device=scores.device).tril()
    scores = scores.masked_fill(~key_mask, torch.finfo(scores.dtype).min)
    return F.log_softmax(scores, dim=-1)


def relation_kl(
    student: tuple[Tensor, Tensor],
    teacher: tuple[Tensor, Tensor],
    heads: int,
    attention_mask: Tensor,
    causal: bool = False,
) -> Tensor:
    """KL(teacher relation ‖ student relation) of (left, right) pairs, averaged over batch, heads and
    real query positions (MiniLM's attention and self-relation transfer)."""
    teacher_log = relation_log_probs(*teacher, heads, attention_mask, causal)
    student_log = relation_log_probs(*student, heads, attention_mask, causal)
    return kl_between_log_distributions(teacher_log, student_log, attention_mask)


def kl_between_log_distributions(teacher_log: Tensor, student_log: Tensor, query_mask: Tensor) -> Tensor:
    """KL(teacher ‖ student) over the last dim of [B, H, L, L] log-distributions, averaged over batch,
    heads and real query positions (``query_mask`` [B, L]), as MiniLM scores attention maps.

    Computed in log space: exact where a student probability underflows (clamping probabilities at
    1e-12 would under-estimate the KL there and zero its gradient). Keys with teacher probability 0
    (padding) contribute 0."""
    per_key = F.kl_div(student_log, teacher_log, log_target=True, reduction="none")
    per_key = per_key.masked_fill(~torch.isfinite(teacher_log) | (teacher_log.exp() == 0), 0.0)
    per_query = per_key.sum(-1)  # [B, H, L]
    weights = query_mask.to(per_query.dtype).unsqueeze(1).expand_as(per_query)
    return (per_query * weights).sum() / weights.sum().clamp_min(1.0)
