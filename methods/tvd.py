"""Total variation distance, token-level (as DistiLLM's and Wen et al.'s f-divergence comparisons use it).

    L = L_task + div_alpha · mean over positions of ½ Σ_w | softmax(z_t / T)_w − softmax(z_s / T)_w |

Bounded (in [0, 1]) and symmetric; unlike either KL it does not blow up where one distribution has
almost no mass, so a weak student is not pushed hard toward the teacher's rare words nor away from its own.
"""

from __future__ import annotations

from distillbench import register_method
from distillbench.divergence_method import DivergenceMethod


@register_method("tvd")
class TotalVariation(DivergenceMethod):
    """Total variation distance: task + div_alpha · ½ Σ |p_t − p_s| per token."""

    divergence = "tvd"
