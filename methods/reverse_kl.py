"""Reverse KL (MiniLLM, Gu et al. 2024, arXiv 2306.08543), token-level.

    L = L_task + div_alpha · mean over positions of KL( softmax(z_s / T) ‖ softmax(z_t / T) )

The student's own distribution weighs the log-ratio, so words the teacher finds unlikely cost the most
where the student puts mass: reverse KL is mode-seeking, where forward KL (``kd``) is mass-covering and
pushes a small student to spread probability over everything the teacher allows. MiniLLM optimises it
over the student's own samples with a policy gradient; this is its token-level form on fixed text, as
DistiLLM and TRL compute it (on the student's samples: ``gkd`` with ``divergence=reverse_kl``).
"""

from __future__ import annotations

from distillbench import register_method
from distillbench.divergence_method import DivergenceMethod


@register_method("reverse_kl")
class ReverseKL(DivergenceMethod):
    """Reverse KL (MiniLLM): task + div_alpha · KL(p_s ‖ p_t) per token (mode-seeking)."""

    divergence = "reverse_kl"
