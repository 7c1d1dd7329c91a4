"""Per-example dev predictions of every evaluation, stored beside the run record.

A score alone cannot be tested against another score; the predictions behind it can (a paired bootstrap
over dev examples). Every evaluation a run makes is captured while the Trainer scores it, written as one
compressed ``.npz`` under ``<results>/predictions/`` and referenced from the record with its sha256, so
a reader can tell a file that changed after the run. What the arrays hold is the task's choice
(:meth:`Task.prediction_arrays`: GLUE logits and labels, SQuAD question ids, answers and per-question
EM/F1); array names are ``<split>/step<N>/<name>``.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, unquote

import numpy as np

from distillbench.atomic import write_atomic
from distillbench.cached import sha256_of
from distillbench.errors import UserError

if TYPE_CHECKING:
    from transformers import EvalPrediction, Trainer

    from distillbench.task import Task

FOLDER = "predictions"


class EvalCapture:
    """The Trainer's ``compute_metrics``: scores an evaluation and keeps its per-example predictions.

    Kept in memory for the record, and (after :meth:`keep_in`) also each in its own file as it happens:
    a run killed after some epochs resumes from a checkpoint, and the evaluations before it are not run
    again — without those files its best epoch could have no predictions."""

    def __init__(self, task: Task, scorer: Any = None) -> None:
        """``scorer``: the model that scores generations, for a task that generates (default: the model
        being evaluated scores its own)."""
        self.task = task
        self.scorer = scorer
        self.trainer: Trainer | None = None
        self.evaluations: dict[str, dict[str, np.ndarray]] = {}
        self.folder: Path | None = None

    def attach(self, trainer: Trainer) -> None:
        """The trainer whose step and current dev split label each evaluation."""
        self.trainer = trainer

    def keep_in(self, folder: Path, resumed_step: int | None) -> None:
        """Write each evaluation into ``folder``; resuming from the checkpoint at ``resumed_step``, take
        back those made up to it (later ones are made again). A fresh start (None) clears the folder."""
        self.folder = folder
        if resumed_step is None:
            shutil.rmtree(folder, ignore_errors=True)
            return
        for path in sorted(folder.glob("*.npz")):
            label = unquote(path.stem)
            if int(label.rpartition("/step")[2]) <= resumed_step:
                with np.load(path, allow_pickle=False) as stored:
                    self.evaluations[label] = {key: stored[key] for key in stored.files}

    def __call__(self, prediction: EvalPrediction) -> dict[str, float]:
        assert self.trainer is not None, "attach the trainer first"
        prefix = getattr(self.trainer, "eval_prefix", "eval")
        split = prefix.removeprefix("eval_") if prefix != "eval" else self.task.eval_splits[0]
        label = f"{split}/step{self.trainer.state.global_step}"
        arrays = self.task.prediction_arrays(prediction.predictions, prediction.label_ids)
        metrics = self.task.compute_metrics(prediction.predictions, prediction.label_ids)
        if self.task.scores_generations and self.trainer.state.global_step >= self.trainer.state.max_steps:
            arrays |= self._generations()  # once, for the model the run ends with: generating is the cost
            metrics |= self.task.metric_on(arrays, np.arange(len(arrays["predictions"])))
        self.evaluations[label] = arrays
        if self.folder is not None:
            path = self.folder / f"{quote(label, safe='')}.npz"
            write_atomic(path, lambda file: np.savez_compressed(file, **arrays))
        return metrics

    def _generations(self) -> dict[str, np.ndarray]:
        trainer = self.trainer
        model = getattr(trainer.model, "student", trainer.model)  # a Distiller evaluates its student
        dataset = trainer.eval_dataset
        batch_size, progress = trainer.args.per_device_eval_batch_size, not trainer.args.disable_tqdm
        return self.task.generation_arrays(model, self.scorer or model, dataset, batch_size, progress)


def save_evaluations(path: Path, capture: EvalCapture) -> None:
    """The captured evaluations as one compressed file, written atomically."""
    arrays = {f"{label}/{key}": value for label, named in capture.evaluations.items() for key, value in named.items()}
    write_atomic(path, lambda file: np.savez_compressed(file, **arrays))


def reference_to(results_dir: Path, name: str, evaluations: list[str]) -> dict[str, Any]:
    """The record's reference to ``<results>/predictions/<name>.npz``: its path, sha256 and evaluations."""
    path = results_dir / FOLDER / f"{name}.npz"
    return {"path": f"{FOLDER}/{name}.npz", "sha256": sha256_of(path), "evaluations": sorted(evaluations)}


def stored_evaluations(path: Path) -> list[str]:
    """The evaluation labels (``<split>/step<N>``) a predictions file holds."""
    with np.load(path, allow_pickle=False) as stored:
        return sorted({key.rpartition("/")[0] for key in stored.files})


def write_predictions(results_dir: Path, name: str, capture: EvalCapture) -> dict[str, Any] | None:
    """Write the captured evaluations atomically; the record's reference to them (None: nothing ran)."""
    if not capture.evaluations:
        return None
    save_evaluations(results_dir / FOLDER / f"{name}.npz", capture)
    return reference_to(results_dir, name, list(capture.evaluations))


def publish_predictions(results_dir: Path, name: str, stored: Path) -> dict[str, Any] | None:
    """A cached stage's stored evaluations as a run's predictions file (a copy: the results folder is
    committed, the cache is not); the record's reference to it (None: the stage evaluated nothing)."""
    if not stored.is_file():
        return None
    path = results_dir / FOLDER / f"{name}.npz"
    write_atomic(path, lambda file: file.write(stored.read_bytes()))
    return reference_to(results_dir, name, stored_evaluations(path))


def checked_predictions_file(record: dict[str, Any], results_dir: Path) -> Path:
    """The record's predictions file, present and with the sha256 the record holds (else one error)."""
    reference = record.get("predictions")
    if not reference:
        raise UserError(f"record {record.get('run_id')} has no stored predictions")
    path = results_dir / reference["path"]
    if not path.is_file():
        raise UserError(f"predictions file {path} of record {record.get('run_id')} is missing")
    if sha256_of(path) != reference["sha256"]:
        raise UserError(f"predictions file {path} differs from the sha256 its record holds")
    return path


def load_predictions(record: dict[str, Any], results_dir: Path) -> dict[str, dict[str, np.ndarray]]:
    """``{"<split>/step<N>": {name: array}}`` of a record, after checking the file's sha256."""
    path = checked_predictions_file(record, results_dir)
    evaluations: dict[str, dict[str, np.ndarray]] = {}
    with np.load(path, allow_pickle=False) as stored:
        for key in stored.files:
            label, _, name = key.rpartition("/")
            evaluations.setdefault(label, {})[name] = stored[key]
    return evaluations


def evaluation_step(record: dict[str, Any], score: str = "final") -> int | None:
    """The training step of the evaluation a score reads: the last one (``final``) or the best epoch's."""
    chosen = record.get("best_epoch") if score == "best" else None
    return (chosen or (record.get("epochs") or [{}])[-1]).get("step")


def evaluation_of(record: dict[str, Any], results_dir: Path, score: str = "final") -> dict[str, np.ndarray]:
    """The main split's predictions at the record's last evaluation (``final``) or its best epoch."""
    evaluations = load_predictions(record, results_dir)
    split = record["main_metric"].split("/")[0] if "/" in record["main_metric"] else None
    step = evaluation_step(record, score)
    candidates = [k for k in evaluations if (split is None or k.startswith(f"{split}/"))]
    wanted = [k for k in candidates if k.endswith(f"/step{step}")]
    if not wanted:
        raise UserError(f"record {record.get('run_id')} stored no predictions for step {step}")
    return evaluations[wanted[0]]
