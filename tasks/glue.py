"""GLUE (Wang et al. 2019): the nine sentence(-pair) tasks, read from the official TSV layout.

Files are read from ``<data_dir>/glue/<TASK>/`` (or ``<data_dir>/<TASK>/``) with ``QUOTE_NONE``, since
GLUE text contains unbalanced ``"``; without a data directory the hub's ``nyu-mll/glue`` is used.
Metrics follow the GLUE definitions: accuracy; F1 + accuracy for MRPC/QQP; Matthews correlation for
CoLA; Pearson + Spearman for STS-B; MNLI on dev matched and mismatched.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor, nn

from distillbench.errors import UserError
from distillbench.families import hidden_dropout
from distillbench.task import Task, register_task
from distillbench.tasks import metrics

if TYPE_CHECKING:  # datasets and transformers take seconds to import: `distillbench list` needs neither
    from datasets import DatasetDict


@dataclass(frozen=True)
class GlueSpec:
    """Where a GLUE task's data lives and how it is scored."""

    name: str
    folder: str
    text_columns: tuple[str, ...]
    label_column: str
    labels: tuple[str, ...] | None  # None: regression
    metric_names: tuple[str, ...]
    eval_files: dict[str, str] = field(default_factory=lambda: {"validation": "dev.tsv"})
    column_names: tuple[str, ...] | None = None  # for files without a header row (CoLA)
    hub_text_columns: tuple[str, ...] | None = None
    train_defaults: dict[str, Any] = field(default_factory=dict)


# Per-task training defaults follow the TED reference scripts (../shared/reference/TED.md).
SPECS = (
    GlueSpec(
        "cola",
        "CoLA",
        ("sentence",),
        "label",
        ("0", "1"),
        ("mcc",),
        column_names=("source", "label", "original_label", "sentence"),
        train_defaults={"learning_rate": 6e-5, "teacher_learning_rate": 2e-5, "epochs": 6, "batch_size": 32},
    ),
    GlueSpec(
        "sst2",
        "SST-2",
        ("sentence",),
        "label",
        ("0", "1"),
        ("accuracy",),
        train_defaults={"learning_rate": 4e-5, "teacher_learning_rate": 2e-5, "epochs": 6, "batch_size": 32},
    ),
    GlueSpec(
        "mrpc",
        "MRPC",
        ("#1 String", "#2 String"),
        "Quality",
        ("0", "1"),
        ("accuracy", "f1"),
        hub_text_columns=("sentence1", "sentence2"),
        train_defaults={"learning_rate": 7e-5, "teacher_learning_rate": 3e-5, "epochs": 6, "batch_size": 32},
    ),
    GlueSpec(
        "stsb",
        "STS-B",
        ("sentence1", "sentence2"),
        "score",
        None,
        ("pearson", "spearman"),
        train_defaults={
            "learning_rate": 1e-4,
            "teacher_learning_rate": 2e-5,
            "epochs": 6,
            "batch_size": 16,
            "warmup_steps": 100,
        },
    ),
    GlueSpec(
        "qqp",
        "QQP",
        ("question1", "question2"),
        "is_duplicate",
        ("0", "1"),
        ("accuracy", "f1"),
        train_defaults={
            "learning_rate": 6e-5,
            "teacher_learning_rate": 2e-5,
            "epochs": 8,
            "batch_size": 64,
            "warmup_steps": 5000,
        },
    ),
    GlueSpec(
        "mnli",
        "MNLI",
        ("sentence1", "sentence2"),
        "gold_label",
        ("entailment", "neutral", "contradiction"),
        ("accuracy",),
        eval_files={"validation_matched": "dev_matched.tsv", "validation_mismatched": "dev_mismatched.tsv"},
        hub_text_columns=("premise", "hypothesis"),
        train_defaults={
            "learning_rate": 7e-5,
            "teacher_learning_rate": 2e-5,
            "epochs": 3,
            "batch_size": 64,
            "warmup_steps": 1500,
        },
    ),
    GlueSpec(
        "qnli",
        "QNLI",
        ("question", "sentence"),
        "label",
        ("entailment", "not_entailment"),
        ("accuracy",),
        train_defaults={
            "learning_rate": 5e-5,
            "teacher_learning_rate": 1e-5,
            "epochs": 3,
            "batch_size": 32,
            "warmup_steps": 500,
        },
    ),
    GlueSpec(
        "rte",
        "RTE",
        ("sentence1", "sentence2"),
        "label",
        ("entailment", "not_entailment"),
        ("accuracy",),
        train_defaults={"learning_rate": 6e-5, "teacher_learning_rate": 3e-5, "epochs": 6, "batch_size": 16},
    ),
    GlueSpec(
        "wnli",
        "WNLI",
        ("sentence1", "sentence2"),
        "label",
        ("0", "1"),
        ("accuracy",),
        train_defaults={"learning_rate": 6e-5, "teacher_learning_rate": 3e-5, "epochs": 6, "batch_size": 32},
    ),
)

METRIC_FUNCTIONS = {
    "accuracy": metrics.accuracy,
    "f1": metrics.binary_f1,
    "mcc": metrics.matthews,
    "pearson": metrics.pearson,
    "spearman": metrics.spearman,
}
# (predictions, labels, rows) → the metric on every resample ``rows`` [R, n] of the examples
ROW_METRIC_FUNCTIONS = {
    "accuracy": lambda p, y, rows: metrics.accuracy_rows(p[rows], y[rows]),
    "f1": lambda p, y, rows: metrics.binary_f1_rows(p[rows], y[rows]),
    "mcc": lambda p, y, rows: metrics.matthews_rows(p[rows], y[rows]),
    "pearson": lambda p, y, rows: metrics.pearson_rows(p[rows], y[rows]),
    "spearman": metrics.spearman_resampled,
}


class SequenceHead(nn.Module):
    """BERT's classification head on any token states: first token → dense → tanh → dropout → linear."""

    def __init__(self, input_dim: int, num_labels: int, dropout: float) -> None:
        super().__init__()
        self.dense = nn.Linear(input_dim, input_dim)
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(input_dim, num_labels)

    def forward(self, states: Tensor) -> Tensor:
        pooled = torch.tanh(self.dense(states[:, 0]))
        return self.classifier(self.dropout(pooled))


class GlueTask(Task):
    """One GLUE task; concrete classes are generated from :data:`SPECS` below."""

    distill_per_example = True
    rows_scorable = True

    spec: GlueSpec
    benchmark = "GLUE"
    head_reads_first_position = True  # SequenceHead: first token → dense → tanh → classifier

    @property
    def is_regression(self) -> bool:
        return self.spec.labels is None

    @property
    def num_labels(self) -> int:
        return 1 if self.spec.labels is None else len(self.spec.labels)

    def _folder(self) -> Path:
        assert self.data_dir is not None
        for candidate in (self.data_dir / "glue" / self.spec.folder, self.data_dir / self.spec.folder):
            if candidate.is_dir():
                return candidate
        raise UserError(f"no {self.spec.folder} folder under {self.data_dir} (expected glue/{self.spec.folder}/)")

    def local_files(self) -> dict[str, Path]:
        folder = self._folder()
        return {"train": folder / "train.tsv"} | {s: folder / f for s, f in self.spec.eval_files.items()}

    def load(self) -> DatasetDict:
        from datasets import DatasetDict

        if self.data_dir is None:
            return self._load_hub()
        files = self.checked_files()
        raw = DatasetDict({split: self._read_tsv(path) for split, path in files.items()})
        return raw.map(self._encode_label, desc="labels")

    def _read_tsv(self, path: Path):
        spec = self.spec
        columns = self._check_tsv(path)
        header: dict[str, Any] = {"header": None, "column_names": list(spec.column_names)} if spec.column_names else {}
        from datasets import load_dataset

        data = load_dataset(
            "csv",
            data_files=str(path),
            split="train",
            delimiter="\t",
            quoting=3,
            encoding="utf-8-sig",
            keep_default_na=False,
            **header,
        )
        needed = (*spec.text_columns, spec.label_column)
        missing = [c for c in needed if c not in columns]
        if missing:
            raise UserError(f"malformed TSV {path}: missing column(s) {', '.join(missing)}")
        data = data.select_columns(list(needed))
        return data.rename_columns({c: f"text{i}" for i, c in enumerate(spec.text_columns)})

    def _check_tsv(self, path: Path) -> list[str]:
        """Every row must have the header's field count (QUOTE_NONE) and a valid label; the file must be
        UTF-8 and hold at least one row: each a clear error naming file and line before parsing."""
        try:
            with path.open(encoding="utf-8-sig", newline="") as handle:
                rows = csv.reader(handle, delimiter="\t", quoting=csv.QUOTE_NONE)
                columns = list(self.spec.column_names) if self.spec.column_names else next(rows, [])
                if not columns:
                    raise UserError(f"malformed TSV {path}: the file is empty")
                label = columns.index(self.spec.label_column) if self.spec.label_column in columns else None
                count = 0
                for line, row in enumerate(rows, start=1 if self.spec.column_names else 2):
                    if len(row) != len(columns):
                        raise UserError(
                            f"malformed TSV {path}: line {line} has {len(row)} fields, expected {len(columns)}"
                        )
                    if label is not None:
                        self._check_label(row[label], path, line)
                    count += 1
        except UnicodeDecodeError as error:
            raise UserError(f"malformed TSV {path}: not UTF-8 text (byte {error.start})") from None
        if not count:
            raise UserError(f"malformed TSV {path}: no data rows")
        return columns

    def _check_label(self, value: str, path: Path, line: int) -> None:
        if self.spec.labels is None:
            try:
                score = float(value)
            except ValueError:
                raise UserError(f"malformed TSV {path}: line {line} has a non-numeric score {value!r}") from None
            if score != score:
                raise UserError(f"malformed TSV {path}: line {line} has a non-numeric score {value!r}")
        elif value not in self.spec.labels:
            raise UserError(
                f"malformed TSV {path}: line {line} has label {value!r}, expected one of {self.spec.labels}"
            )

    def _encode_label(self, row: dict[str, Any]) -> dict[str, Any]:
        value = str(row.pop(self.spec.label_column))
        if self.spec.labels is None:
            return {"labels": float(value)}
        if value not in self.spec.labels:
            raise UserError(f"{self.name}: unknown label {value!r} (expected one of {self.spec.labels})")
        return {"labels": self.spec.labels.index(value)}

    def _load_hub(self) -> DatasetDict:
        from datasets import DatasetDict, load_dataset

        spec = self.spec
        raw = load_dataset("nyu-mll/glue", self.name)
        columns = spec.hub_text_columns or spec.text_columns
        splits = {"train": raw["train"]} | {s: raw[s] for s in spec.eval_files}
        renamed = {c: f"text{i}" for i, c in enumerate(columns)} | {"label": "labels"}
        return DatasetDict({s: d.select_columns(list(renamed)).rename_columns(renamed) for s, d in splits.items()})

    def preprocess(self, raw: DatasetDict, tokenizer, max_seq_length: int) -> DatasetDict:
        text_columns = [f"text{i}" for i in range(len(self.spec.text_columns))]

        def tokenize(batch: dict[str, list]) -> dict[str, list]:
            texts = [batch[c] for c in text_columns]
            return tokenizer(*texts, truncation=True, max_length=max_seq_length)

        return raw.map(tokenize, batched=True, remove_columns=text_columns, desc=f"tokenising {self.name}")

    def model_kwargs(self) -> dict[str, Any]:
        problem = "regression" if self.is_regression else "single_label_classification"
        return {"num_labels": self.num_labels, "problem_type": problem}

    def make_head(self, config, input_dim: int) -> nn.Module:
        return SequenceHead(input_dim, self.num_labels, hidden_dropout(config))

    def head_loss(self, head_output: Tensor, batch: dict[str, Tensor]) -> Tensor:
        labels = batch["labels"]
        if self.is_regression:
            return nn.functional.mse_loss(head_output.squeeze(-1), labels.to(head_output.dtype))
        return nn.functional.cross_entropy(head_output, labels)

    def _point_predictions(self, predictions: np.ndarray) -> np.ndarray:
        return predictions.squeeze(-1) if self.is_regression else predictions.argmax(-1)

    def compute_metrics(self, predictions: np.ndarray, labels: np.ndarray) -> dict[str, float]:
        predictions = self._point_predictions(predictions)
        return {name: METRIC_FUNCTIONS[name](predictions, labels) for name in self.spec.metric_names}

    def majority_baseline(self, splits: DatasetDict) -> dict[str, float] | None:
        """Dev metrics of always answering the most frequent training label."""
        if self.is_regression:
            return None
        majority = int(np.bincount(np.asarray(splits["train"]["labels"])).argmax())
        labels = np.asarray(splits[self.eval_splits[0]]["labels"])
        return self.compute_metrics(np.full(len(labels), majority)[:, None] == np.arange(self.num_labels), labels)

    def metric_rows(self, arrays: dict[str, np.ndarray], rows: np.ndarray, metric: str) -> np.ndarray:
        points = self._point_predictions(arrays["predictions"])
        return ROW_METRIC_FUNCTIONS[metric](points, arrays["labels"], rows)


SHORT_NAMES = {"accuracy": "acc", "f1": "F1", "mcc": "MCC", "pearson": "Pearson", "spearman": "Spearman"}


def _paper_metrics(spec: GlueSpec) -> tuple[str, ...]:
    """Record keys shown in tables, in paper order (MNLI: matched then mismatched)."""
    if len(spec.eval_files) == 1:
        return spec.metric_names
    return tuple(f"{split}/{m}" for m in spec.metric_names for split in spec.eval_files)


def _register(spec: GlueSpec) -> None:
    cls = type(
        f"Glue_{spec.name}",
        (GlueTask,),
        {
            "spec": spec,
            "description": f"GLUE {spec.folder} ({'/'.join(spec.metric_names)})",
            "output_type": "regression" if spec.labels is None else "categorical",
            "main_metric": spec.metric_names[-1] if spec.labels is None else spec.metric_names[0],
            "eval_splits": tuple(spec.eval_files),
            "train_defaults": spec.train_defaults,
            "paper_metrics": _paper_metrics(spec),
            "label_names": spec.labels,
            "column_label": f"{spec.folder} {'/'.join(SHORT_NAMES[m] for m in spec.metric_names)}"
            + (" m/mm" if len(spec.eval_files) > 1 else ""),
            "__module__": __name__,
        },
    )
    register_task(spec.name)(cls)


for _spec in SPECS:
    _register(_spec)
