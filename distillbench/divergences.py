"""Token-level divergences between a teacher's and a student's next-token (or class) distributions.

With p the teacher's and q the student's distribution at temperature T (softmax(z / T)), per position:

* ``forward_kl``       KL(p ‖ q) = Σ p (log p − log q)                  (Hinton KD; mass-covering)
* ``reverse_kl``       KL(q ‖ p) = Σ q (log q − log p)                  (MiniLLM; mode-seeking)
* ``jsd``  (β)         β KL(p ‖ m) + (1 − β) KL(q ‖ m),  m = β p + (1 − β) q   (GKD's generalised JSD)
* ``tvd``              ½ Σ |p − q|                                       (total variation distance)
* ``skew_kl``  (α)     KL(p ‖ α p + (1 − α) q)                           (DistiLLM's skew KL)
* ``skew_reverse_kl`` (α)  KL(q ‖ (1 − α) p + α q)                       (DistiLLM's skew reverse KL)

The generalised JSD tends to 0 at β → 0 and β → 1; as TRL's ``generalized_jsd_loss`` defines its end
points, β = 0 *is* forward KL and β = 1 reverse KL (the GKD paper: JSD(β) behaves like forward KL for
small β and like reverse KL for β near 1). Skew KL at α = 0 is forward KL, skew reverse KL at α = 0
reverse KL; both vanish at α = 1.

The mean over positions is taken over the positions a mask keeps (all by default) and computed in chunks
of positions, each under activation checkpointing: a chunk's softmaxes exist only while that chunk is
computed, in the forward pass and again in the backward pass, so no positions × vocabulary temporary of
the whole batch is ever held (as TRL's chunked JSD). No T² factor (as TRL's GKD); at T = 1 ``forward_kl``
equals KD's soft term.

From a top-k teacher cache (:class:`~distillbench.losses.TopKTeacher`) both distributions are coarsened
to the teacher's k words and one bucket for the rest, and the divergence is taken between those.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.checkpoint import checkpoint

from distillbench.losses import VOCABULARY_CHUNK_ELEMENTS, TopKTeacher, at_least_float32

DIVERGENCES = ("forward_kl", "reverse_kl", "jsd", "tvd", "skew_kl", "skew_reverse_kl")


def _kl_rows(log_a: Tensor, log_b: Tensor) -> Tensor:
    """Σ a (log a − log b) per row; a word with a = 0 adds 0 (even where b = 0 too)."""
    present = ~torch.isneginf(log_a)  # the absent words are replaced first: 0 · ∞ would make the gradient NaN
    safe_a, safe_b = torch.where(present, log_a, 0.0), torch.where(present, log_b, 0.0)
    return torch.where(present, safe_a.exp() * (safe_a - safe_b), 0.0).sum(-1)


def _mixture(log_a: Tensor, log_b: Tensor, weight_a: float) -> Tensor:
    """log(w a + (1 − w) b), stable in log space (0 < w < 1)."""
    return torch.logaddexp(log_a + math.log(weight_a), log_b + math.log1p(-weight_a))


def divergence_rows(log_p: Tensor, log_q: Tensor, kind: str, coefficient: float = 0.5) -> Tensor:
    """Per row the divergence ``kind`` between teacher log-probabilities ``log_p`` and student ``log_q``
    (last dimension: the distribution); ``coefficient`` is β for ``jsd`` and α for the skew divergences."""
    if kind == "forward_kl" or (kind == "jsd" and coefficient == 0) or (kind == "skew_kl" and coefficient == 0):
        return _kl_rows(log_p, log_q)
    if kind == "reverse_kl" or (kind == "jsd" and coefficient == 1) or (kind == "skew_reverse_kl" and coefficient == 0):
        return _kl_rows(log_q, log_p)
    if kind == "jsd":
        log_m = _mixture(log_p, log_q, coefficient)
        return coefficient * _kl_rows(log_p, log_m) + (1 - coefficient) * _kl_rows(log_q, log_m)
    if kind == "tvd":
        return 0.5 * (log_p.exp() - log_q.exp()).abs().sum(-1)
    if kind in ("skew_kl", "skew_reverse_kl") and coefficient == 1:
        return torch.zeros(log_p.shape[:-1], dtype=log_p.dtype, device=log_p.device)
    if kind == "skew_kl":
        return _kl_rows(log_p, _mixture(log_p, log_q, coefficient))
    if kind == "skew_reverse_kl":
        return _kl_rows(log_q, _mixture(log_q, log_p, coefficient))
    raise ValueError(f"unknown divergence {kind!r}; known: {', '.join(DIVERGENCES)}")


def _coarsened(student: Tensor, teacher: TopKTeacher, rows: slice) -> tuple[Tensor, Tensor]:
    """Teacher and student log-probabilities over the teacher's top k words and one bucket for the rest."""
    log_q_all = F.log_softmax(at_least_float32(student) / teacher.temperature, dim=-1)
    index = teacher.indices.reshape(-1, teacher.indices.shape[-1])[rows].long()
    log_q_top = log_q_all.gather(-1, index)
    log_q_rest = log_q_all.scatter(-1, index, -math.inf).logsumexp(-1, keepdim=True)
    log_p = torch.cat(
        [
            teacher.log_probs.reshape(index.shape)[rows].float(),
            teacher.log_rest.reshape(-1, 1)[rows].float(),
        ],
        dim=-1,
    ).to(log_q_all.dtype)
    return log_p, torch.cat([log_q_top, log_q_rest], dim=-1)


def token_divergence(
    student_logits: Tensor,
    teacher: Tensor | TopKTeacher,
    kind: str,
    coefficient: float = 0.5,
    temperature: float = 1.0,
    mask: Tensor | None = None,
) -> Tensor:
    """Mean over the kept positions (``mask`` over the leading dimensions, 1 = kept; default all) of the
    divergence ``kind`` between softmax(teacher / T) and softmax(student / T), chunked over positions."""
    vocabulary = student_logits.shape[-1]
    student = student_logits.reshape(-1, vocabulary)
    rows = student.shape[0]
    weights = torch.ones(rows, device=student.device) if mask is None else mask.reshape(rows).to(student.device)
    weights = weights.to(at_least_float32(student[:0]).dtype)
    # a quarter of KD's chunk: these are autograd-built, with several chunk-sized temporaries each
    chunk = max(1, VOCABULARY_CHUNK_ELEMENTS // 4 // vocabulary)
    if isinstance(teacher, TopKTeacher):
        if teacher.temperature != temperature:
            raise ValueError(f"top-k cache at temperature {teacher.temperature}, divergence at {temperature}")

        def part(s: Tensor, w: Tensor, start: int) -> Tensor:
            log_p, log_q = _coarsened(s, teacher, slice(start, start + s.shape[0]))
            return (divergence_rows(log_p, log_q, kind, coefficient) * w).sum()

    else:
        teacher_rows = teacher.detach().reshape(rows, vocabulary)

        def part(s: Tensor, w: Tensor, start: int) -> Tensor:
            log_q = F.log_softmax(at_least_float32(s) / temperature, dim=-1)
            log_p = F.log_softmax(at_least_float32(teacher_rows[start : start + s.shape[0]]) / temperature, dim=-1)
            return (divergence_rows(log_p, log_q.to(log_p.dtype), kind, coefficient) * w).sum()

    total = sum(
        _checkpointed(part, s, w, start)
        for start, s, w in zip(range(0, rows, chunk), student.split(chunk), weights.split(chunk), strict=True)
    )
    return total / weights.sum().clamp_min(1.0)


def _checkpointed(fn: Callable[[Tensor, Tensor, int], Tensor], s: Tensor, w: Tensor, start: int) -> Tensor:
    """``fn`` under activation checkpointing when a gradient is wanted (its temporaries are recomputed in
    the backward pass instead of kept), plainly otherwise."""
    if not s.requires_grad:
        return fn(s, w, start)
    return checkpoint(fn, s, w, start, use_reentrant=False)
