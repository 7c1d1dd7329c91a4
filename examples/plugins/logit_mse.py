"""Logit regression (Ba & Caruana 2014, "Do Deep Nets Really Need to be Deep?"), as a file plug-in.

    L = L_task + α · MSE(z_s, z_t)

The student regresses the teacher's logits directly instead of matching softened distributions.
Loaded with ``distillbench --plugin examples/plugins/logit_mse.py run --method logit-mse …`` (or
``DISTILLBENCH_PLUGINS=examples/plugins/logit_mse.py``): no project file changes.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch.nn.functional as F
from torch import Tensor

from distillbench import Method, Outputs, register_method
from distillbench.fields import setting


@register_method("logit-mse")
class LogitMSE(Method):
    """Logit regression: task loss + mse_alpha · MSE(student logits, teacher logits)."""

    @dataclass
    class HParams(Method.HParams):
        mse_alpha: float = setting(1.0, ge=0, help="weight of the logit MSE term")

    @staticmethod
    def search_space(trial) -> dict:
        return {"mse_alpha": trial.suggest_float("mse_alpha", 0.01, 10.0, log=True)}

    def cached_teacher_layers(self) -> tuple[int, ...]:
        return ()  # the teacher's logits only

    def loss(self, student: Outputs, teacher: Outputs | None, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        assert teacher is not None
        pairs = zip(student.distill, teacher.distill, strict=True)
        mse = sum(F.mse_loss(s.float(), t.float()) for s, t in pairs) / len(student.distill)
        return {"task": student.loss, "mse": self.hp.mse_alpha * mse}
