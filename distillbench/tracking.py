"""Experiment trackers (``--report-to``): the Trainer's own integrations, one tracker run per stage.

Every stage a run trains (the teacher's fine-tuning when it is not cached yet, a method's stages, the
distillation itself) reports to the chosen trackers under the id of the record that stage produces —
the run id for the distillation, the stage key for a cached stage (which is its record's id) — with
every loss term logged under its own name (``loss/<term>``). TensorBoard's event files go to
``<output folder>/tensorboard/<stage>``, beside the run's checkpoints: a cached stage's own folder keeps
only its final model. Only rank 0 of a multi-process run writes them.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from distillbench import distributed
from distillbench.errors import UserError

TRACKERS = {"tensorboard": "tensorboard", "wandb": "wandb", "mlflow": "mlflow"}  # name → the package it needs
CHOICES = ("none", *TRACKERS, "all")


def installed(tracker: str) -> bool:
    return importlib.util.find_spec(TRACKERS[tracker]) is not None


def parse_report_to(text: str) -> tuple[str, ...]:
    """``none``, ``all`` (every installed tracker) or a comma list of trackers, each one installed."""
    names = [name.strip() for name in text.split(",") if name.strip()]
    if names in ([], ["none"]):
        return ()
    if names == ["all"]:
        return tuple(tracker for tracker in TRACKERS if installed(tracker))
    for name in names:
        if name not in TRACKERS:
            raise UserError(f"--report-to {text}: unknown tracker {name!r}; choose from {', '.join(CHOICES)}")
        if not installed(name):
            raise UserError(f"--report-to {name}: the {TRACKERS[name]} package is not installed (pip install {name})")
    return tuple(dict.fromkeys(names))


def trainer_arguments(trackers: tuple[str, ...], run_name: str | None) -> dict[str, Any]:
    """``report_to``/``run_name`` for TrainingArguments; TensorBoard is attached by :func:`callbacks`
    instead, so its folder can be chosen."""
    others = [tracker for tracker in trackers if tracker != "tensorboard"]
    return {"report_to": others or "none", "run_name": run_name}


def callbacks(trackers: tuple[str, ...], folder: Path) -> list[TrainerCallback]:
    """The Trainer's TensorBoard callback writing to ``folder`` (rank 0 only), when it was asked for."""
    if "tensorboard" not in trackers or not distributed.is_main():
        return []
    from torch.utils.tensorboard import SummaryWriter
    from transformers.integrations import TensorBoardCallback

    return [TensorBoardCallback(SummaryWriter(log_dir=str(folder)))]
