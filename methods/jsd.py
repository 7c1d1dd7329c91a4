"""Generalised Jensen-Shannon divergence (GKD, Agarwal et al. 2024, arXiv 2306.13649), token-level.

    m = β · p_t + (1 − β) · p_s,   JSD(β) = β · KL(p_t ‖ m) + (1 − β) · KL(p_s ‖ m)
    L = L_task + div_alpha · mean over positions of JSD(β),   p = softmax(z / T)

β interpolates between mass-covering and mode-seeking: as TRL's ``generalized_jsd_loss`` defines its end
points, β = 0 is forward KL and β = 1 reverse KL (the bounded JSD itself tends to 0 at both ends).
β = 0.5 is the symmetric Jensen-Shannon divergence, bounded by log 2.
"""

from __future__ import annotations

from dataclasses import dataclass

from distillbench import register_method
from distillbench.divergence_method import DivergenceMethod
from distillbench.fields import setting


@register_method("jsd")
class GeneralisedJSD(DivergenceMethod):
    """Generalised JSD(β) (GKD): task + div_alpha · JSD_β(p_t, p_s) per token."""

    divergence = "jsd"

    @dataclass
    class HParams(DivergenceMethod.HParams):
        beta: float = setting(0.5, ge=0, le=1, help="JSD interpolation: 0 = forward KL, 1 = reverse KL")

    @staticmethod
    def search_space(trial) -> dict:
        return DivergenceMethod.search_space(trial) | {"beta": trial.suggest_float("beta", 0.0, 1.0)}

    def coefficient(self) -> float:
        return self.hp.beta
