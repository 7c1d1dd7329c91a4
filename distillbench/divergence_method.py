"""The shape every token-level divergence method shares: the task loss plus a weighted divergence.

    L = L_task + div_alpha · D_T(teacher ‖ student),

D one of :data:`~distillbench.divergences.DIVERGENCES`, averaged over the positions of the distillable
outputs (a causal LM's next-token distributions at every position; a classifier's class distribution).
The task term is the same for every such method, and for ``kd`` (forward KL with a T² factor): only the
divergence differs between them, which is what a comparison of divergences needs. A method file names
its divergence and, where it has one, the coefficient's setting (β, α).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from torch import Tensor

from distillbench.divergences import token_divergence
from distillbench.errors import UserError
from distillbench.fields import setting
from distillbench.method import DISTILL_MASK, Method, Outputs


class DivergenceMethod(Method):
    """Base of the token-level divergence methods (reverse KL, JSD, TVD, skew KL, GKD)."""

    divergence: ClassVar[str]
    table_order = 200  # after the paper's methods, in tables and in the colour order

    @dataclass
    class HParams(Method.HParams):
        div_alpha: float = setting(1.0, ge=0, help="weight of the divergence term (0: off)")
        temperature: float = setting(1.0, gt=0, help="softmax temperature of both distributions")

    @staticmethod
    def search_space(trial) -> dict:
        return {
            "div_alpha": trial.suggest_float("div_alpha", 0.1, 10.0, log=True),
            "temperature": trial.suggest_float("temperature", 0.5, 4.0),
        }

    def coefficient(self) -> float:
        """β of the generalised JSD or α of a skew divergence (unused by the others)."""
        return 0.5

    def divergence_kind(self) -> str:
        return self.divergence

    def validate(self) -> None:
        if self.task.output_type == "regression":
            raise UserError(
                f"{self.name} compares distributions, and {self.task.name} predicts a number; use kd (MSE to the "
                "teacher) or a classification task"
            )

    def cached_teacher_layers(self) -> tuple[int, ...]:
        return ()  # the teacher's logits only (a top-k cache: the distributions coarsened to its k words)

    def loss(self, student: Outputs, teacher: Outputs | None, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        assert teacher is not None
        terms = {"task": student.loss}
        if self.hp.div_alpha:
            mask = batch.get(DISTILL_MASK)
            divergences = [
                token_divergence(s, t, self.divergence_kind(), self.coefficient(), self.hp.temperature, mask)
                for s, t in zip(student.distill, teacher.distill, strict=True)
            ]
            terms[self.divergence_kind()] = self.hp.div_alpha * sum(divergences) / len(divergences)
        return terms
