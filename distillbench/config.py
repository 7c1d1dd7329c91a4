"""Run configuration: training settings, method hyper-parameters, and typed ``--set`` overrides."""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from typing import Any

from distillbench.errors import UserError
from distillbench.fields import setting


@dataclass
class TrainConfig:
    """Settings of the Trainer stages; per-task defaults come from the task (TED reference scripts).

    ``teacher_*`` fields set the stages that train the teacher (fine-tuning, TED Stage I); left at
    ``None`` they follow the student's value.
    """

    def for_role(self, role: str) -> TrainConfig:
        """The effective settings of a stage training the ``teacher`` or the ``student``."""
        if role == "student":
            return self
        return dataclasses.replace(
            self,
            learning_rate=self.teacher_learning_rate,
            epochs=self.teacher_epochs or self.epochs,
            max_steps=self.teacher_max_steps,
            batch_size=self.teacher_batch_size or self.batch_size,
            warmup_steps=self.warmup_steps if self.teacher_warmup_steps is None else self.teacher_warmup_steps,
            max_train_samples=None,
        )

    learning_rate: float = setting(5e-5, gt=0, help="student learning rate")
    teacher_learning_rate: float = setting(2e-5, gt=0, help="learning rate of stages that train the teacher")
    epochs: float = setting(3.0, gt=0, help="training epochs of every stage")
    teacher_epochs: float | None = setting(None, gt=0, help="teacher stages' epochs (None: same as epochs)")
    max_steps: int = setting(-1, gt=0, allow=(-1,), help="stop the student stage after this many steps (-1: epochs)")
    teacher_max_steps: int = setting(-1, gt=0, allow=(-1,), help="the same for teacher stages")
    batch_size: int = setting(32, ge=1, help="training batch size")
    teacher_batch_size: int | None = setting(None, ge=1, help="teacher stages' batch size (None: batch_size)")
    teacher_warmup_steps: int | None = setting(None, ge=0, help="teacher stages' warm-up (None: warmup_steps)")
    eval_batch_size: int = setting(128, ge=1, help="dev-set batch size")
    warmup_steps: int = setting(0, ge=0, help="linear warm-up steps")
    weight_decay: float = setting(0.0, ge=0, help="AdamW weight decay")
    max_seq_length: int = setting(128, ge=8, help="tokens per example (at most the model's position limit)")
    max_train_samples: int | None = setting(None, ge=1, help="a student-side budget: the teacher sees all of train")
    save_steps: int = setting(200, ge=1, help="checkpoint every this many steps (resume after a kill)")
    logging_steps: int = setting(20, ge=1, help="log the loss terms every this many steps")
    group_by_length: bool = setting(
        False, help="batches of similar lengths: less padding, but it changed results (measured: docs/performance.md)"
    )
    holdout_fraction: float = setting(
        0.0, ge=0, lt=1, help="train on the rest of train and score on this held-out part of it, not the dev set"
    )
    teacher_cache: str = setting("auto", choices=("on", "off", "auto"), help="read teacher outputs from a disk cache")
    teacher_cache_dtype: str = setting(
        "float32", choices=("float32", "float16", "bfloat16"), help="cache storage dtype"
    )
    teacher_cache_max_gb: float = setting(4.0, ge=0, help="auto skips a new cache larger than this")
    teacher_cache_top_k: int = setting(
        0, ge=0, help="vocabulary tasks (clm): KD from a cache of the teacher's top-k log-probabilities (0: live)"
    )
    eval_strategy: str = setting("epoch", choices=("epoch", "end"), help="score the dev set every epoch or once")
    bf16: bool = setting(False, help="bfloat16 autocast (the teacher runs under the same autocast)")
    fp16: bool = setting(False, help="float16 autocast with loss scaling (CUDA)")
    gradient_accumulation_steps: int = setting(1, ge=1, help="optimizer step once per this many batches")
    torch_compile: bool = setting(False, help="torch.compile the trained module")
    dataloader_num_workers: int = setting(0, ge=0, help="data-loading worker processes")
    report_to: str = setting("none", help="experiment trackers: none, tensorboard, wandb, mlflow (comma list) or all")


# Settings that change how fast a run goes, not what it computes: they stay out of run keys, stage keys and
# the leaderboard's configuration fingerprint, so two records differing only in them are one experiment.
EXECUTION_ONLY = frozenset(
    {
        "teacher_cache",
        "teacher_cache_dtype",
        "teacher_cache_max_gb",
        "save_steps",
        "logging_steps",
        "eval_batch_size",
        "torch_compile",
        "dataloader_num_workers",
        "report_to",
    }
)


# Result-changing settings added after records and stages existed, with the behaviour they had before
# (no length grouping, full precision, no accumulation): a record or stage key without one had that value.
BEFORE_INTRODUCED: dict[str, Any] = {
    "group_by_length": False,
    "holdout_fraction": 0.0,
    "bf16": False,
    "fp16": False,
    "gradient_accumulation_steps": 1,
    "teacher_cache_top_k": 0,
}


# Result-changing settings added after run keys existed: a run key names them only when set, so every
# earlier run keeps its key (a sweep still finds its cells done).
KEYED_WHEN_SET: dict[str, Any] = {"holdout_fraction": 0.0, "teacher_cache_top_k": 0}


def key_settings(train: TrainConfig) -> dict[str, Any]:
    """The training settings that enter a run key: :func:`result_settings` less later fields left unset."""
    return {k: v for k, v in result_settings(train).items() if KEYED_WHEN_SET.get(k, object()) != v}


def result_settings(train: TrainConfig | dict[str, Any]) -> dict[str, Any]:
    """The training settings that can change a result: what keys a run and what seeds of one experiment
    must agree on. An older record's missing settings take the value they had before they existed."""
    values = dataclasses.asdict(train) if isinstance(train, TrainConfig) else train
    defaults = dataclasses.asdict(TrainConfig()) | BEFORE_INTRODUCED
    return {k: v for k, v in {**defaults, **values}.items() if k not in EXECUTION_ONLY}


# Bounded presets: named, documented budgets. "demo" is the README's: on SST-2 it takes about two minutes
# on two cores, and teacher and student both clear the majority class (the higher learning rates make
# 80 and 100 steps enough).
PRESETS: dict[str, dict[str, Any]] = {
    "demo": {
        "max_steps": 100,
        "teacher_max_steps": 80,
        "learning_rate": 1e-4,
        "teacher_learning_rate": 1e-4,
        "batch_size": 32,
        "max_seq_length": 64,
        "logging_steps": 10,
    },
}


def option(default: Any = dataclasses.MISSING, *, help: str) -> Any:
    """A settings field that is also a command-line flag, with its help (no default: required)."""
    return field(default=default, metadata={"help": help, "flag": True})


def flag_fields(cls: type | None = None) -> list[dataclasses.Field]:
    """The fields of ``cls`` (default :class:`RunConfig`) a command line spells as flags, in order."""
    return [item for item in dataclasses.fields(cls or RunConfig) if item.metadata.get("flag")]


@dataclass
class RunConfig:
    """Everything one ``distillbench run`` needs; its content (minus paths) keys the run and its record.
    A field declared with :func:`option` is a command-line flag of every command that runs (``--teacher-seed``
    for ``teacher_seed``), its help written once, here."""

    method: str = option(help="a registered method (see `distillbench list`)")
    task: str = option(help="a registered task (see `distillbench list`)")
    teacher: str = option(
        "minilm-l6",
        help="pretrained teacher: minilm-l6 (PyPI package), scratch:<preset> (a decoder pre-trained here), a local "
        "folder or a hub id; a comma list is an ensemble",
    )
    teacher_finetuned: str | None = option(None, help="an already fine-tuned teacher folder: skip the teacher stage")
    student: str | None = option(
        None,
        help="pretrained student folder/hub id, a run record (.json) whose saved student to start from, "
        "or random:N for N random layers",
    )
    student_layers: int | None = option(None, help="copy N teacher layers, uniformly spaced (default: half)")
    student_layer_ids: str | None = option(None, help="copy exactly these teacher layers, e.g. 1,3,5 (0-based)")
    seed: int = option(42, help="the run's seed (a non-negative integer)")
    teacher_seed: int | None = option(
        None, help="seed of the teacher-side stages (default: --seed); pin it so all student seeds share one teacher"
    )
    teacher_seeds: tuple[int, ...] | None = option(
        None, help="an ensemble: the teacher fine-tuned with each seed, e.g. 1,2,3 (weights: --set teacher_weights=…)"
    )
    teacher_weights: tuple[float, ...] | None = None  # the ensemble's weights (None: equal), set with --set
    data_dir: str | None = option(None, help="folder with glue/, squad/, text/ (default: $DISTILLBENCH_DATA, else hub)")
    # the data folder is not part of the run key: the data's sha256 is
    train: TrainConfig = field(default_factory=TrainConfig)
    method_overrides: dict[str, Any] = field(default_factory=dict)
    task_options: dict[str, Any] = field(default_factory=dict)
    preset: str | None = option(None, help="a named bounded budget, e.g. demo (see README)")
    # the study whose best parameters the run starts from (``--params best``): {study, trial, value}.
    # Not part of the run key (the parameters themselves are); it names the run's table row.
    tuned_from: dict[str, Any] | None = None
    teacher_settings: str | None = option(
        None, help="'study': the teacher settings `distillbench teacher-study` chose for the task (or its file)"
    )
    # where those settings come from ({study, metric, held_out_score}); the teacher's record names it.
    teacher_chosen_by: dict[str, Any] | None = None


def _coerce(text: str, annotation: Any, key: str) -> Any:
    """Parse ``text`` as the field's declared type (int, float, bool, str, their Optionals)."""
    if isinstance(annotation, str):
        annotation = eval(annotation, vars(typing))  # dataclass annotations are strings under PEP 563
    options = typing.get_args(annotation) if typing.get_origin(annotation) in (typing.Union, types.UnionType) else ()
    if options:
        if text.lower() in ("none", "null") and type(None) in options:
            return None
        annotation = next(o for o in options if o is not type(None))
    try:
        if annotation is bool:
            if text.lower() not in ("true", "false", "1", "0", "yes", "no"):
                raise ValueError
            return text.lower() in ("true", "1", "yes")
        if annotation is int:
            return int(text)
        if annotation is float:
            return float(text)
        return annotation(text)
    except (TypeError, ValueError):
        name = getattr(annotation, "__name__", str(annotation))
        raise UserError(f"--set {key}={text}: expected a value of type {name}") from None


def parse_overrides(
    pairs: list[str],
    method_fields: dict[str, dataclasses.Field],
    task_fields: dict[str, dataclasses.Field] | None = None,
) -> tuple[dict, dict, dict]:
    """Split ``key=value`` pairs into (training, method, task-option) overrides, typed by their fields."""
    namespaces = {
        "method": method_fields,
        "task": task_fields or {},
        "train": {f.name: f for f in dataclasses.fields(TrainConfig)},
    }
    parsed: dict[str, dict[str, Any]] = {name: {} for name in namespaces}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise UserError(f"--set expects key=value, got {pair!r}")
        namespace = next((name for name, fields in namespaces.items() if key in fields), None)
        if namespace is None:
            known = ", ".join(sorted(k for fields in namespaces.values() for k in fields))
            raise UserError(f"--set {key}: unknown hyper-parameter (known: {known})")
        parsed[namespace][key] = _coerce(value, namespaces[namespace][key].type, key)
    return parsed["train"], parsed["method"], parsed["task"]


def build_train_config(task_defaults: dict[str, Any], preset: str | None, overrides: dict[str, Any]) -> TrainConfig:
    """Dataclass defaults ← task defaults ← preset ← explicit overrides (CLI flags and ``--set``)."""
    if preset is not None and preset not in PRESETS:
        raise UserError(f"unknown preset {preset!r}; known presets: {', '.join(PRESETS)}")
    values = {**task_defaults, **(PRESETS[preset] if preset else {}), **overrides}
    return TrainConfig(**values)
