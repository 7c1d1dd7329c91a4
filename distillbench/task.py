"""The task API: data, preprocessing, head, task loss, distillable outputs and metric.

A task never knows which method runs. It tells the harness how to turn raw examples into tensors,
which ``AutoModelFor…`` head to load (and with which arguments), what a method may distil
(``distill_targets``), how to build an extra head on any hidden representation (TED's per-filter heads)
and how to score predictions.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
from torch import Tensor, nn

from distillbench.errors import UserError
from distillbench.registry import Registry

if TYPE_CHECKING:
    from datasets import DatasetDict
    from transformers import PretrainedConfig, PreTrainedTokenizerBase

DATA_ENV = "DISTILLBENCH_DATA"


class Task:
    """Base class of every task family; a concrete task is registered with :func:`register_task`."""

    name: ClassVar[str]
    description: ClassVar[str] = ""
    model_class: ClassVar[str] = "AutoModelForSequenceClassification"
    # How logit-level KD compares outputs: "categorical", "regression", or "vocabulary" (a next-token
    # distribution at every position: a chunked KL).
    output_type: ClassVar[str] = "categorical"
    model_kind: ClassVar[str] = "encoder"  # or "decoder": the models its head and data suit (families.kind)
    default_teacher: ClassVar[str] = ""  # the teacher when --teacher is not given ("": minilm-l6)
    main_metric: ClassVar[str]
    greater_is_better: ClassVar[bool] = True
    eval_splits: ClassVar[tuple[str, ...]] = ("validation",)
    label_keys: ClassVar[tuple[str, ...]] = ("labels",)  # batch keys that are targets, not model inputs
    train_defaults: ClassVar[dict[str, Any]] = {}
    paper_metrics: ClassVar[tuple[str, ...]] = ()  # record metric keys a table shows, in paper order
    column_label: ClassVar[str] = ""  # a table's column header, e.g. "MRPC acc/F1"
    short_label: ClassVar[str] = ""  # in titles and figures, e.g. "MRPC" (default: column_label's first word)
    benchmark: ClassVar[str] = ""  # tasks of one benchmark share an average column ("GLUE")
    label_names: ClassVar[tuple[str, ...] | None] = None  # a classification task's labels, as its data spells them
    display_scale: ClassVar[float] = 100.0  # tables show metric × scale (GLUE fractions → %, SQuAD already %)
    display_decimals: ClassVar[int] = 1
    metric_decimals: ClassVar[dict[str, int]] = {}  # per metric where one width does not fit all (bits per byte)
    eval_set_label: ClassVar[str] = "dev set"  # what its scores are measured on, in table legends
    eval_unit: ClassVar[str] = "dev examples"  # what a paired bootstrap resamples
    deterministic_inputs: ClassVar[bool] = True  # False when the collator randomises inputs (MLM masking)
    per_token_distill: ClassVar[bool] = False  # True when distill_targets has a sequence axis (QA logits)
    vocabulary_distill: ClassVar[bool] = False  # its distilled outputs are vocabulary logits at every position
    # One distilled output per example (sentence classification/regression), so teacher and student may
    # tokenise the text differently: their outputs line up by example, not by token.
    distill_per_example: ClassVar[bool] = False
    head_reads_first_position: ClassVar[bool] = False  # make_head's head reads states[:, 0] alone ([CLS])
    pretraining: ClassVar[bool] = False  # its students are general models: later runs start "after pre-training"
    # Its dev split is scored from the tokenised rows alone, so a held-out part of train can stand in for it
    # (``holdout_fraction``); False where scoring needs the raw examples (SQuAD's answer spans).
    rows_scorable: ClassVar[bool] = False
    # Its last evaluation also generates from the model and has a scorer model (the teacher) score that
    # (:meth:`generation_arrays`): the harness hands each evaluation the run's teacher as the scorer.
    scores_generations: ClassVar[bool] = False

    @dataclass
    class Options:
        """Task options settable with ``--set`` (none by default; SQuAD has doc_stride etc.)."""

    def __init__(self, data_dir: Path | None, options: Any = None) -> None:
        self.data_dir = data_dir
        self.options = options if options is not None else self.Options()

    @classmethod
    def option_fields(cls) -> dict[str, dataclasses.Field]:
        return {f.name: f for f in dataclasses.fields(cls.Options)}

    @classmethod
    def options_for(cls, overrides: dict[str, Any]) -> Any:
        return cls.Options(**overrides)

    @classmethod
    def decimals(cls, metric: str) -> int:
        """How many decimals a metric is shown to (ROUGE-L's students differ in the third, perplexities in
        the first)."""
        return cls.metric_decimals.get(metric, cls.display_decimals)

    @classmethod
    def display(cls, metric: str, value: float) -> str:
        """One score as tables show it: scaled, to its metric's own decimals."""
        return f"{value * cls.display_scale:.{cls.decimals(metric)}f}"

    @classmethod
    def cell(cls, stats: dict[str, tuple[float, float, int]]) -> str:
        """A table cell: each paper metric present as mean(±std when several seeds), scaled for display,
        each to its own number of decimals, joined by "/"."""
        parts = []
        for metric in (m for m in cls.paper_metrics if m in stats):
            mean, std, n = stats[metric]
            parts.append(cls.display(metric, mean) + (f"±{cls.display(metric, std)}" if n > 1 else ""))
        return "/".join(parts)

    @classmethod
    def summary(cls) -> str:
        return cls.description

    def load(self) -> DatasetDict:
        """Raw ``train`` + evaluation splits. Bad or missing files raise :class:`UserError`."""
        raise NotImplementedError

    def local_files(self) -> dict[str, Path]:
        """Split name → file under the data directory (tasks that read local files override this)."""
        return {}

    def checked_files(self) -> dict[str, Path]:
        """:meth:`local_files`, each of which must exist."""
        files = self.local_files()
        for path in files.values():
            if not path.is_file():
                raise UserError(f"missing data file {path}")
        return files

    def data_files(self) -> list[Path]:
        """The local files the data came from, hashed into every cache key and record."""
        return [] if self.data_dir is None else list(self.checked_files().values())

    def data_sha256(self) -> str:
        """sha256 over the data files (name + bytes), or over the task name when read from the hub."""
        digest = hashlib.sha256()
        files = self.data_files()
        if not files:
            digest.update(f"hub:{self.name}".encode())
        for path in files:
            digest.update(path.name.encode())
            digest.update(path.read_bytes())
        return digest.hexdigest()

    def preprocess(self, raw: DatasetDict, tokenizer: PreTrainedTokenizerBase, max_seq_length: int) -> DatasetDict:
        """Tokenised splits with only model inputs and ``labels`` (padding is left to the collator)."""
        raise NotImplementedError

    def collator(self, tokenizer: PreTrainedTokenizerBase) -> Any:
        """Batches examples; dynamic padding by default (MLM masks here)."""
        from transformers import DataCollatorWithPadding

        return DataCollatorWithPadding(tokenizer)

    def prepare_model(self, model: nn.Module, role: str) -> None:
        """Adjust a freshly loaded model before a fine-tuning stage (e.g. freeze a backbone); no-op."""

    def check_sequence_length(self, max_seq_length: int) -> None:
        """Raise :class:`UserError` when the task cannot cut its examples to this many tokens (checked at
        plan time)."""

    reduce_eval_logits = None  # optional (logits, labels) → small per-example summary for metrics

    def generation_arrays(
        self, model: Any, scorer: Any, dataset: Any, batch_size: int, progress: bool = True
    ) -> dict[str, np.ndarray]:
        """Per dev row, what a task that ``scores_generations`` measures of the model's generations."""
        raise NotImplementedError

    def model_kwargs(self) -> dict[str, Any]:
        """Arguments for ``model_class.from_pretrained`` (``num_labels``, ``problem_type`` …)."""
        return {}

    def distill_targets(self, outputs: Any, batch: dict[str, Tensor]) -> list[Tensor]:
        """The outputs logit-level KD compares (classification logits by default)."""
        return [outputs.logits]

    def make_head(self, config: PretrainedConfig, input_dim: int) -> nn.Module:
        """A fresh task head on top of ``input_dim``-wide token states (TED Stage I filter heads)."""
        raise NotImplementedError

    def head_loss(self, head_output: Any, batch: dict[str, Tensor]) -> Tensor:
        """The task loss of a :meth:`make_head` head."""
        raise NotImplementedError

    def compute_metrics(self, predictions: np.ndarray, labels: np.ndarray) -> dict[str, float]:
        raise NotImplementedError

    def prediction_arrays(self, predictions: Any, labels: Any) -> dict[str, np.ndarray]:
        """What a run stores per dev example (see predictions.py): by default the model's outputs (the
        logits, or their reduction) and the labels, row i being dev example i."""
        return {"predictions": np.asarray(predictions), "labels": np.asarray(labels)}

    def metric_on(self, arrays: dict[str, np.ndarray], rows: np.ndarray) -> dict[str, float]:
        """The task's metrics on a subset (or resample) ``rows`` of stored predictions: what a paired
        bootstrap recomputes for each resample."""
        return self.compute_metrics(arrays["predictions"][rows], arrays["labels"][rows])

    def majority_baseline(self, splits: DatasetDict) -> dict[str, float] | None:
        """Dev metrics (first dev split) of always answering the most frequent training label, the floor
        a trained classifier must clear; ``None`` where a constant answer means nothing (regression,
        spans, language modelling)."""
        return None

    def metric_rows(self, arrays: dict[str, np.ndarray], rows: np.ndarray, metric: str) -> np.ndarray:
        """``metric`` for every row of ``rows`` ([R, n] example indices): a paired bootstrap's inner loop.
        Tasks override it with array operations; this default calls :meth:`metric_on` per row."""
        return np.array([self.metric_on(arrays, r)[metric] for r in rows])


def scale_note(tasks: list[str]) -> str:
    """How a table's cells relate to the scores: "×100" (GLUE fractions), "as scored" (perplexities), or
    both, naming the tasks shown as scored."""
    as_scored = [short_label(t) for t in tasks if get_task(t).display_scale == 1]
    if not as_scored:
        return "×100"
    return "as scored" if len(as_scored) == len(tasks) else f"×100 ({', '.join(as_scored)}: as scored)"


def eval_set_note(tasks: list[str]) -> str:
    """What a table's scores are measured on: "dev set", or each task's own held-out set."""
    return ", ".join(dict.fromkeys(get_task(t).eval_set_label for t in tasks))


def short_label(task_name: str) -> str:
    """How titles, headlines and figures name a task: ``MRPC``, ``SQuAD v2``, ``MLM``."""
    task = get_task(task_name)
    return task.short_label or task.column_label.split(" ")[0] or task_name


def resolve_data_dir(data_dir: str | os.PathLike | None) -> Path | None:
    """``--data-dir`` wins, then ``$DISTILLBENCH_DATA``; ``None`` means: use the hub."""
    value = data_dir or os.environ.get(DATA_ENV)
    if not value:
        return None
    path = Path(value).expanduser()
    if not path.is_dir():
        raise UserError(f"data directory {path} does not exist (set --data-dir or {DATA_ENV})")
    return path


task_registry: Registry[type[Task]] = Registry("task", "distillbench.tasks", "distillbench.tasks", Task)
register_task = task_registry.register


get_task = task_registry.get
list_tasks = task_registry.list
