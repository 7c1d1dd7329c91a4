"""Training any module of a run with ``transformers.Trainer``: the run's tokenised data, the Trainer's
arguments for a stage, and one factory for the Trainer every stage uses.

The teacher's fine-tuning, a method's own stage (TED's filters) and the distillation itself are all
trained here, on the same data, with the same arguments built from a :class:`TrainConfig`: what one
stage gains (resume from the last complete checkpoint, mixed precision, per-term loss logging, stored
predictions) every stage gains.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from datasets import Dataset, DatasetDict
from transformers import AutoTokenizer, TrainerCallback, TrainingArguments
from transformers.trainer_callback import PrinterCallback, ProgressCallback

from distillbench.config import TrainConfig
from distillbench.distiller import DistillTrainer
from distillbench.errors import UserError
from distillbench.history import epoch_history, flatten_metrics
from distillbench.predictions import EvalCapture
from distillbench.teacher_cache import with_index
from distillbench.tracking import callbacks as tracking_callbacks
from distillbench.tracking import parse_report_to, trainer_arguments
from distillbench.workspace import VERBOSE_ENV

if TYPE_CHECKING:
    from distillbench.planning import Plan


# Beside a training's checkpoints: its evaluations' predictions, one file each (EvalCapture.keep_in).
EVALUATIONS_FOLDER = "evaluations"


def last_complete_checkpoint(folder: Path) -> str | None:
    """The newest ``checkpoint-N`` whose trainer state was written whole (the Trainer writes it last), so
    a run killed in the middle of saving — even in the middle of that file — resumes from the previous,
    complete checkpoint."""
    if not folder.is_dir():
        return None
    complete = [p for p in folder.glob("checkpoint-*") if _readable_state(p / "trainer_state.json")]
    return str(max(complete, key=lambda p: int(p.name.split("-")[1]))) if complete else None


def _readable_state(path: Path) -> bool:
    try:
        return isinstance(json.loads(path.read_text()), dict)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return False


class RunData:
    """The task's splits tokenised once, shared by every stage of a run: with the teacher's tokenizer
    (``tokenizer_source`` None), or with the student's own when the two differ (the teacher side then has
    its own ``RunData``)."""

    def __init__(self, plan: Plan, tokenizer_source: str | None = None) -> None:
        self.plan = plan
        self.task = plan.task
        self.tokenizer = AutoTokenizer.from_pretrained(tokenizer_source or plan.teacher_source)
        max_length = plan.config.train.max_seq_length
        self.splits: DatasetDict = self.task.preprocess(self.task.load(), self.tokenizer, max_length)
        self.held_out = hold_out(self.splits, plan.config.train.holdout_fraction, plan.task)

    def train_split(self, max_train_samples: int | None, indexed: bool = False) -> Dataset:
        """The training set, or a seeded random subset of it (a student-side budget); ``indexed``
        adds each row's position in the full set (the teacher cache's key)."""
        train = with_index(self.splits["train"]) if indexed else self.splits["train"]
        if max_train_samples is None or max_train_samples >= len(train):
            return train
        return train.shuffle(seed=self.plan.config.seed).select(range(max_train_samples))

    def eval_data(self) -> Dataset | dict[str, Dataset]:
        """The dev split, or a dict of them when a task scores several (MNLI matched/mismatched)."""
        splits = self.task.eval_splits
        return self.splits[splits[0]] if len(splits) == 1 else {s: self.splits[s] for s in splits}

    def rows_to_train(self, cfg: TrainConfig) -> float:
        """How many training rows a stage under ``cfg`` draws (its teacher forwards without a cache)."""
        if cfg.max_steps > 0:
            return cfg.max_steps * cfg.batch_size
        return cfg.epochs * len(self.train_split(cfg.max_train_samples))


HOLDOUT_SEED = 0  # one split for every run and seed: the settings a study compares see the same rows


def hold_out(splits: DatasetDict, fraction: float, task: Any) -> dict[str, Any] | None:
    """With ``fraction`` > 0, carve a seeded part of train out and score on it instead of the dev split(s),
    in place, so a study choosing settings never sees the dev set its students are scored on. Returns
    what the record says about it (None: the dev set is scored)."""
    if fraction <= 0:
        return None
    parts = splits["train"].train_test_split(test_size=fraction, seed=HOLDOUT_SEED)
    splits["train"] = parts["train"]
    for name in task.eval_splits:
        splits[name] = parts["test"]
    return {"fraction": fraction, "seed": HOLDOUT_SEED, "examples": len(parts["test"]), "scored_on": "held-out train"}


class Training:
    """Builds and runs the Trainer of any stage of one run."""

    def __init__(self, plan: Plan, data: RunData) -> None:
        self.plan = plan
        self.data = data
        self.task = plan.task

    def arguments(
        self, out_dir: Path, cfg: TrainConfig, evaluate: bool, seed: int | None = None, tracking: dict | None = None
    ) -> TrainingArguments:
        """The Trainer's arguments for one stage under ``cfg``; ``seed`` (default: the run's) seeds its
        data order and dropout: a teacher-side stage passes the teacher seed, so it is the same stage
        whichever student seed's run happens to build it."""
        return TrainingArguments(
            output_dir=str(out_dir),
            per_device_train_batch_size=cfg.batch_size,
            per_device_eval_batch_size=cfg.eval_batch_size,
            learning_rate=cfg.learning_rate,
            num_train_epochs=cfg.epochs,
            max_steps=cfg.max_steps,
            warmup_steps=cfg.warmup_steps,
            weight_decay=cfg.weight_decay,
            eval_strategy="epoch" if evaluate and cfg.eval_strategy == "epoch" else "no",
            save_strategy="steps",
            save_steps=cfg.save_steps,
            save_total_limit=1,
            logging_steps=cfg.logging_steps,
            seed=self.plan.config.seed if seed is None else seed,
            **(tracking or {"report_to": "none"}),
            remove_unused_columns=False,
            label_names=list(self.task.label_keys),
            disable_tqdm=not self.plan.paths.show_progress,
            use_cpu=not torch.cuda.is_available(),
            train_sampling_strategy="group_by_length" if cfg.group_by_length else "random",
            bf16=cfg.bf16,
            fp16=cfg.fp16,
            gradient_accumulation_steps=cfg.gradient_accumulation_steps,
            torch_compile=cfg.torch_compile,
            dataloader_num_workers=cfg.dataloader_num_workers,
        )

    def trainer(
        self,
        module: torch.nn.Module,
        args: TrainingArguments,
        train_dataset: Any,
        data_collator: Any = None,
        callbacks: tuple[TrainerCallback, ...] = (),
        capture: EvalCapture | None = None,
        stage: str | None = None,
    ) -> DistillTrainer:
        """A :class:`DistillTrainer` evaluating on the task's dev split(s) with the task's metric;
        ``capture`` keeps every evaluation's per-example predictions; ``stage`` names its progress bars."""
        trainer = DistillTrainer(
            model=module,
            args=args,
            train_dataset=train_dataset,
            eval_dataset=self.data.eval_data(),
            data_collator=data_collator or self.task.collator(self.data.tokenizer),
            compute_metrics=capture or (lambda p: self.task.compute_metrics(p.predictions, p.label_ids)),
            preprocess_logits_for_metrics=self.task.reduce_eval_logits,
            callbacks=list(callbacks),
        )
        if capture is not None:
            capture.attach(trainer)
        if not os.environ.get(VERBOSE_ENV):
            quiet_logs(trainer, stage)
        return trainer

    def train(
        self,
        module: torch.nn.Module,
        out_dir: Path,
        cfg: TrainConfig,
        evaluate: bool,
        stage: tuple[str, str | None] = ("training", None),
        callbacks: tuple[TrainerCallback, ...] = (),
        indexed: bool = False,
        capture: EvalCapture | None = None,
        seed: int | None = None,
    ) -> DistillTrainer:
        """Train any module under ``cfg``, resuming from the last complete checkpoint in ``out_dir``.
        ``stage`` = (stage name, record id) names the stage in experiment trackers."""
        name, record_id = stage
        trackers = parse_report_to(cfg.report_to)
        args = self.arguments(out_dir, cfg, evaluate, seed, tracking=trainer_arguments(trackers, record_id))
        train = self.data.train_split(cfg.max_train_samples, indexed)
        tracker_callbacks = tracking_callbacks(trackers, self.plan.output_folder / "tensorboard" / name)
        trainer = self.trainer(
            module, args, train, callbacks=(*callbacks, *tracker_callbacks), capture=capture, stage=name
        )
        checkpoint = last_complete_checkpoint(out_dir)
        if capture is not None:
            capture.keep_in(out_dir / EVALUATIONS_FOLDER, checkpoint and int(Path(checkpoint).name.split("-")[1]))
        trainer.train(resume_from_checkpoint=checkpoint)
        return trainer

    def evaluate(self, trainer: DistillTrainer) -> dict[str, float]:
        """Final dev metrics, reusing the last per-epoch evaluation when it ran at the last step."""
        history = epoch_history(trainer.state.log_history, self.task)
        if history and history[-1]["step"] == trainer.state.global_step:
            return history[-1]["metrics"]
        return flatten_metrics(trainer.evaluate(), self.task)


class StageProgress(ProgressCallback):
    """The Trainer's progress bars named after their stage (a run trains several stages, each with its
    evaluations, and unnamed bars do not say which is which), without the log dict it prints under them
    every ``logging_steps``: the loss terms go to the record, the trackers and the run's summary instead."""

    def __init__(self, stage: str | None = None) -> None:
        super().__init__()
        self.stage = stage

    def on_train_begin(self, args, state, control, **kwargs):
        super().on_train_begin(args, state, control, **kwargs)
        if self.stage and self.training_bar is not None:
            self.training_bar.set_description(self.stage)

    def on_prediction_step(self, args, state, control, eval_dataloader=None, **kwargs):
        opened = self.prediction_bar is None
        super().on_prediction_step(args, state, control, eval_dataloader=eval_dataloader, **kwargs)
        if opened and self.prediction_bar is not None:
            self.prediction_bar.set_description(f"{self.stage}: evaluating" if self.stage else "evaluating")

    def on_log(self, args, state, control, logs=None, **kwargs):
        return None


def quiet_logs(trainer: DistillTrainer, stage: str | None = None) -> None:
    """Unless ``--verbose``: no log dicts on the terminal (the bar stays, named, when progress is shown)."""
    if trainer.pop_callback(PrinterCallback) is None and trainer.pop_callback(ProgressCallback) is not None:
        trainer.add_callback(StageProgress(stage))


def check_aligned(student: RunData, teacher: RunData) -> None:
    """The two tokenisations of one task must hold the same examples in the same order: the teacher's
    cached outputs reach the student by example index."""
    for split in student.splits:
        a, b = student.splits[split], teacher.splits[split]
        labels = [key for key in student.task.label_keys if key in a.column_names]
        if len(a) != len(b) or any(list(a[key]) != list(b[key]) for key in labels):
            raise UserError(f"{split}: the student's and the teacher's tokenisations hold different examples")
