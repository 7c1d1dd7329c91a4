"""Skew reverse KL (DistiLLM, Ko et al. 2024, arXiv 2402.03898), token-level.

    L = L_task + div_alpha · mean over positions of KL( p_s ‖ (1 − α) · p_t + α · p_s ),   p = softmax(z / T)

The mode-seeking reverse KL with a little of the student mixed into the teacher, so that words the
teacher rules out do not give an unbounded gradient (α = 0 is reverse KL; α = 1 makes it vanish).
"""

from __future__ import annotations

from dataclasses import dataclass

from distillbench import register_method
from distillbench.divergence_method import DivergenceMethod
from distillbench.fields import setting


@register_method("skew_reverse_kl")
class SkewReverseKL(DivergenceMethod):
    """Skew reverse KL (DistiLLM): task + div_alpha · KL(p_s ‖ (1−α) p_t + α p_s) per token."""

    divergence = "skew_reverse_kl"

    @dataclass
    class HParams(DivergenceMethod.HParams):
        skew_alpha: float = setting(
            0.1, ge=0, le=1, help="skew α: the student's share of the mixture (0: reverse KL; 1: no term)"
        )

    @staticmethod
    def search_space(trial) -> dict:
        return DivergenceMethod.search_space(trial) | {"skew_alpha": trial.suggest_float("skew_alpha", 0.0, 0.5)}

    def coefficient(self) -> float:
        return self.hp.skew_alpha
