"""The checks of a run's settings that need no model, data or training stack.

They run twice: first when the command line is read, so ``--epochs -1`` or ``--set temperature=-2`` is one
``error:`` line before the harness (models, ``Trainer``, ``datasets``) is imported — seconds on a small
machine — and again in :func:`distillbench.planning.plan_run`, which other entrances (sweeps, studies,
tuning trials) reach without the command line.
"""

from __future__ import annotations

from typing import Any

from distillbench.config import RunConfig
from distillbench.errors import UserError
from distillbench.fields import check_fields
from distillbench.method import get_method
from distillbench.task import Task, get_task
from distillbench.tracking import parse_report_to

# training settings that `run` takes as flags of their own: an error names the flag the user typed
TRAIN_FLAGS = {"epochs": "--epochs", "max_steps": "--max-steps", "teacher_cache": "--teacher-cache"}


def check_settings(config: RunConfig) -> None:
    """Raise one :class:`UserError` for the first seed, training setting, hyper-parameter or task option
    that is out of its declared range or contradicts another."""
    task_cls = get_task(config.task)
    check_seeds(config)
    check_fields(config.train, "--set", TRAIN_FLAGS)
    if config.train.holdout_fraction and not task_cls.rows_scorable:
        raise UserError(f"--set holdout_fraction: {config.task} is scored from raw examples; it cannot hold out")
    parse_report_to(config.train.report_to)
    if config.train.bf16 and config.train.fp16:
        raise UserError("--set bf16=true and fp16=true: choose one mixed precision")
    check_fields(get_method(config.method).hparams_for(config.task, config.method_overrides), config.method)
    task_options(task_cls, config)


def check_seeds(config: RunConfig) -> None:
    """Seeds are non-negative integers (numpy and the Trainer refuse negative ones mid-run)."""
    given = [("--seed", config.seed), ("--teacher-seed", config.teacher_seed)]
    given += [("--teacher-seeds", seed) for seed in config.teacher_seeds or ()]
    for flag, seed in given:
        if seed is not None and seed < 0:
            raise UserError(f"{flag} {seed}: seeds are non-negative integers")


def task_options(task_cls: type[Task], config: RunConfig) -> Any:
    """The task's options (its defaults ← ``--set``), each checked against its declared range."""
    try:
        options = task_cls.options_for(config.task_options)
    except (TypeError, ValueError) as error:
        raise UserError(f"{config.task}: {error}") from None
    check_fields(options, f"{config.task} option")
    return options
