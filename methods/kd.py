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

import torch.nn.functional as F
from torch import Tensor

from distillbench import Method, Outputs, register_method
from distillbench.losses import soft_kl


def logit_kd(student: Outputs, teacher: Outputs, output_type: str, temperature: float) -> Tensor:
    """Mean over the task's distillable outputs of softened KL (categorical) or MSE (regression)."""
    terms = [
        F.mse_loss(s, t) if output_type == "regression" else soft_kl(s, t, temperature)
        for s, t in zip(student.distill, teacher.distill, strict=True)
    ]
    return sum(terms) / len(terms)


def with_logit_kd(terms: dict[str, Tensor], student: Outputs, teacher: Outputs, hp, output_type: str) -> dict:
    """Add ``kd = kl_alpha · logit_kd`` to a method's terms when its ``kl_alpha`` is non-zero."""
    if hp.kl_alpha:
        terms["kd"] = hp.kl_alpha * logit_kd(student, teacher, output_type, hp.temperature)
    return terms


@register_method("kd")
class KD(Method):
    """Hinton KD: task loss + kl_alpha · KL(student/T ‖ teacher/T) · T² (MSE to teacher for regression)."""

    @dataclass
    class HParams:
        kl_alpha: float = 1.0
        temperature: float = 2.0
        student_start: str = "pretrained"

    # The TED reference's KD weights per task (../shared/reference/TED.md).
    task_defaults = {t: {"kl_alpha": 20.0} for t in ("qqp", "qnli", "sst2", "rte", "cola", "mrpc", "stsb")} | {
        "mnli": {"kl_alpha": 5.0},
        "squad": {"kl_alpha": 10.0},
        "squad_v2": {"kl_alpha": 10.0},
    }

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
        return with_logit_kd({"task": student.loss}, student, teacher, self.hp, self.task.output_type)
