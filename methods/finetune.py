"""Fine-tuning baseline: the student learns from the labels alone; no teacher is consulted."""

from __future__ import annotations

from torch import Tensor

from distillbench import Method, Outputs, register_method


@register_method("finetune")
class FineTune(Method):
    """Student trained on labels alone (the baseline every method must beat): L = L_task."""

    uses_teacher = False
    is_baseline = True
    is_label_finetune = True  # its run is the cached student-finetune stage TED's Stage II starts from
    table_order = 0

    def loss(self, student: Outputs, teacher: Outputs | None, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        return {"task": student.loss}
