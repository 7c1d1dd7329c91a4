"""Several teachers as one (``--teacher a,b,c`` / ``--teacher-seeds``): the ensemble's own dev score.

Each member is an ordinary cached teacher stage — a member fine-tuned with seed 1 is the very stage a
single-teacher run with ``--teacher-seed 1`` uses — with its own teacher-output cache; during
distillation the method combines their outputs (:meth:`~distillbench.method.Method.ensemble`). The
ensemble's own prediction on the dev set, the weighted mean of the members' probabilities
(regression: of their predictions), is scored like any model's: it is the upper reference the student
is compared with, and the record's teacher score.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn
from transformers import PreTrainedModel

from distillbench.losses import ensemble_logits

if TYPE_CHECKING:
    from distillbench.training import Training


class EnsembleModel(nn.Module):
    """The members as one model: every output named ``*logits`` is combined at temperature 1, so the
    Trainer's evaluation and the task's metric read it exactly as they read one model's output."""

    def __init__(self, members: list[PreTrainedModel], weights: list[float], output_type: str) -> None:
        super().__init__()
        self.members = nn.ModuleList(members)
        self.weights = weights
        self.output_type = output_type

    def forward(self, **batch: torch.Tensor) -> Any:
        outputs = [member(**batch) for member in self.members]
        combined = {}
        for key, value in outputs[0].items():
            parts = [output[key] for output in outputs]
            if key.endswith("logits"):
                combined[key] = ensemble_logits(parts, self.weights, self.output_type, 1.0)
            elif key == "loss":
                combined[key] = sum(w * part for w, part in zip(self.weights, parts, strict=True))
            else:
                combined[key] = value
        return type(outputs[0])(**combined)


def score_ensemble(training: Training, members: list[PreTrainedModel], folder: Path) -> dict[str, float]:
    """The ensemble's own dev metrics: its members' weighted mean prediction, scored as any model is."""
    plan = training.plan
    model = EnsembleModel(members, plan.teacher_weights, plan.task.output_type)
    args = training.arguments(folder, plan.config.train, evaluate=True)
    return training.evaluate(training.trainer(model, args, None))


def ensemble_record(members: list[dict[str, Any]], weights: list[float], metrics: dict[str, float]) -> dict[str, Any]:
    """The record's ``teacher`` field for an ensemble: every member's stage info, the weights, the
    ensemble's own dev metrics."""
    return {
        "members": members,
        "weights": weights,
        "combination": "weighted mean of the members' softened probabilities (regression: predictions)",
        "metrics": metrics,
    }
