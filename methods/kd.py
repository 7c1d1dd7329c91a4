"""Knowledge distillation (Hinton, Vinyals & Dean 2015, arXiv 1503.02531).

    L = L_task + α · T² · KL( softmax(z_t / T) ‖ softmax(z_s / T) )

The temperature T softens both distributions so the student sees the teacher's "dark knowledge" (the
relative probabilities of wrong classes); T² keeps the soft term's gradient scale independent of T.
For a regression task (STS-B) there is no distribution to soften, so the soft term becomes the MSE
between student and teacher predictions. For QA it applies to start and end logits alike (as in the TED
reference), for MLM to the vocabulary logits at masked positions: the task says what is distillable.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from distillbench import Method, Outputs, register_method
from distillbench.fields import setting
from distillbench.losses import REFERENCE_KL_ALPHA


@register_method("kd")
class KD(Method):
    """Hinton KD: task loss + kl_alpha · KL(teacher/T ‖ student/T) · T² (MSE to teacher for regression)."""

    is_baseline = True
    table_order = 10

    @dataclass
    class HParams(Method.HParams):
        kl_alpha: float = setting(1.0, ge=0, help="weight of the logit KD term (0: off)")
        temperature: float = setting(2.0, gt=0, help="softmax temperature of logit KD")

    # reference's weight multiplies a term that is identically zero, so its own weight applies (losses.py).
    task_defaults = {task: {"kl_alpha": alpha} for task, alpha in REFERENCE_KL_ALPHA.items()}

    @staticmethod
    def search_space(trial) -> dict:
        return {
            "kl_alpha": trial.suggest_float("kl_alpha", 0.1, 50.0, log=True),
            "temperature": trial.suggest_float("temperature", 1.0, 8.0),
        }

    def cached_teacher_layers(self) -> tuple[int, ...]:
        return ()  # the teacher's logits only

    def loss(self, student: Outputs, teacher: Outputs | None, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        assert teacher is not None
        return self.with_logit_kd({"task": student.loss}, student, teacher)
