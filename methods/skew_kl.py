"""Skew KL (DistiLLM, Ko et al. 2024, arXiv 2402.03898), token-level.

    L = L_task + div_alpha · mean over positions of KL( p_t ‖ α · p_t + (1 − α) · p_s ),   p = softmax(z / T)

Mixing a little of the teacher into the student's distribution keeps the log-ratio finite where the
student has almost no mass, which DistiLLM shows stabilises the gradient of forward KL (α = 0 is forward
KL; α = 1 makes it vanish). DistiLLM's default α is 0.1.
"""

from __future__ import annotations

from dataclasses import dataclass

from distillbench import register_method
from distillbench.divergence_method import DivergenceMethod
from distillbench.fields import setting


@register_method("skew_kl")
class SkewKL(DivergenceMethod):
    """Skew KL (DistiLLM): task + div_alpha · KL(p_t ‖ α p_t + (1−α) p_s) per token."""

    divergence = "skew_kl"

    @dataclass
    class HParams(DivergenceMethod.HParams):
        skew_alpha: float = setting(
            0.1, ge=0, le=1, help="skew α: the teacher's share of the mixture (0: forward KL; 1: no term)"
        )

    @staticmethod
    def search_space(trial) -> dict:
        return DivergenceMethod.search_space(trial) | {"skew_alpha": trial.suggest_float("skew_alpha", 0.0, 0.5)}

    def coefficient(self) -> float:
        return self.hp.skew_alpha
