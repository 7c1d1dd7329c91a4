"""SQuAD v1.1 and v2.0 (Rajpurkar et al. 2016, 2018): extractive question answering.

Preprocessing and post-processing follow the Hugging Face question-answering examples (``run_qa.py``,
``utils_qa.py``): long contexts become overlapping windows (``doc_stride``), answers become start/end
token positions (the CLS token when unanswerable or outside the window); predictions take the n best
start/end pairs over every window of a question, and for v2.0 the empty answer wins when its score
beats the best span by more than ``null_score_diff_threshold``. EM/F1 are computed exactly as the
official scripts do (``distillbench.tasks.squad_eval``). Logit-level KD applies to start and end logits.
"""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch.nn.functional as F
from torch import Tensor, nn

from distillbench.errors import UserError
from distillbench.fields import setting
from distillbench.task import Task, register_task
from distillbench.tasks.squad_eval import per_question_v1, per_question_v2, score_v1, score_v2

if TYPE_CHECKING:  # datasets and transformers take seconds to import: `distillbench list` needs neither
    from datasets import DatasetDict


def read_squad_json(path: Path) -> list[dict[str, Any]]:
    """Flatten the official nested JSON into one row per question (HF ``squad`` columns)."""
    try:
        articles = json.loads(path.read_text(encoding="utf-8"))["data"]
        rows = []
        for article in articles:
            for paragraph in article["paragraphs"]:
                for qa in paragraph["qas"]:
                    rows.append(
                        {
                            "id": qa["id"],
                            "title": article.get("title", ""),
                            "context": paragraph["context"],
                            "question": qa["question"],
                            "answers": {
                                "text": [a["text"] for a in qa["answers"]],
                                "answer_start": [int(a["answer_start"]) for a in qa["answers"]],
                            },
                        }
                    )
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as error:
        raise UserError(f"malformed SQuAD file {path}: {type(error).__name__} {error}") from None
    if not rows:
        raise UserError(f"malformed SQuAD file {path}: no questions")
    return rows


class SpanHead(nn.Module):
    """Start/end logits from token states (the ``AutoModelForQuestionAnswering`` head)."""

    def __init__(self, input_dim: int) -> None:
        super().__init__()
        self.qa_outputs = nn.Linear(input_dim, 2)

    def forward(self, states: Tensor) -> tuple[Tensor, Tensor]:
        start, end = self.qa_outputs(states).split(1, dim=-1)
        return start.squeeze(-1), end.squeeze(-1)


class SquadTask(Task):
    """Shared SQuAD logic; the two registered versions differ in files, null answers and scoring."""

    version: str
    hub_name: str
    model_class = "AutoModelForQuestionAnswering"
    label_keys = ("start_positions", "end_positions")
    per_token_distill = True  # start/end logits over the window's tokens
    main_metric = "f1"
    display_scale = 1.0  # the official scripts already report percentages
    # The TED reference's SQuAD v2 settings (student lr, teacher lr, epochs, batch), max length 384.
    train_defaults = {
        "learning_rate": 5e-5,
        "teacher_learning_rate": 3e-5,
        "epochs": 3,
        "batch_size": 8,
        "max_seq_length": 384,
    }

    @dataclass
    class Options:
        doc_stride: int = setting(128, ge=1, help="tokens shared by consecutive windows of a long context")
        max_answer_length: int = setting(30, ge=1, help="longest answer span in tokens")
        n_best_size: int = setting(20, ge=1, help="start/end candidates per window")
        null_score_diff_threshold: float = setting(
            0.0, help="predict no answer when null score − best span score exceeds this (v2.0)"
        )
        # Other files of the same format under <data-dir>/squad/, e.g. a training subset: named here,
        # they are named in the record and hashed into its data key, which a symlink would hide.
        train_file: str | None = setting(None, help="train file in <data-dir>/squad/ (default train-v<version>.json)")
        dev_file: str | None = setting(None, help="dev file in <data-dir>/squad/ (default dev-v<version>.json)")

    @property
    def with_negative(self) -> bool:
        return self.version == "2.0"

    def local_files(self) -> dict[str, Path]:
        assert self.data_dir is not None
        folder = self.data_dir / "squad"
        return {
            "train": folder / (self.options.train_file or f"train-v{self.version}.json"),
            "validation": folder / (self.options.dev_file or f"dev-v{self.version}.json"),
        }

    def data_files(self) -> list[Path]:
        if self.data_dir is None and (self.options.train_file or self.options.dev_file):
            raise UserError("train_file/dev_file name files under --data-dir; the hub's SQuAD has its own splits")
        return super().data_files()

    def load(self) -> DatasetDict:
        from datasets import Dataset, DatasetDict, load_dataset

        if self.data_dir is None:
            raw = load_dataset(self.hub_name)
            return DatasetDict({"train": raw["train"], "validation": raw["validation"]})
        return DatasetDict(
            {split: Dataset.from_list(read_squad_json(path)) for split, path in self.checked_files().items()}
        )

    # preprocessing ------------------------------------------------------------------------------
    def _windows(self, batch: dict[str, list], tokenizer, max_seq_length: int) -> dict[str, list]:
        """Tokenise question + context into overlapping windows with start/end positions."""
        tokenized = tokenizer(
            [q.lstrip() for q in batch["question"]],
            batch["context"],
            truncation="only_second",
            max_length=max_seq_length,
            stride=self.options.doc_stride,
            return_overflowing_tokens=True,
            return_offsets_mapping=True,
            padding=False,
        )
        sample_map = tokenized.pop("overflow_to_sample_mapping")
        starts, ends, example_ids, context_offsets = [], [], [], []
        for i, offsets in enumerate(tokenized["offset_mapping"]):
            ids = tokenized["input_ids"][i]
            cls_index = ids.index(tokenizer.cls_token_id) if tokenizer.cls_token_id in ids else 0
            sequence_ids = tokenized.sequence_ids(i)
            sample = sample_map[i]
            answers = batch["answers"][sample]
            start = end = cls_index
            if answers["answer_start"]:
                start_char = answers["answer_start"][0]
                end_char = start_char + len(answers["text"][0])
                first = sequence_ids.index(1)
                last = len(sequence_ids) - 1 - sequence_ids[::-1].index(1)
                if offsets[first][0] <= start_char and offsets[last][1] >= end_char:
                    while first < len(offsets) and offsets[first][0] <= start_char:
                        first += 1
                    while offsets[last][1] >= end_char:
                        last -= 1
                    start, end = first - 1, last + 1
            starts.append(start)
            ends.append(end)
            example_ids.append(batch["id"][sample])
            context_offsets.append([o if s == 1 else None for o, s in zip(offsets, sequence_ids, strict=True)])
        tokenized.pop("offset_mapping")
        return {
            **tokenized,
            "start_positions": starts,
            "end_positions": ends,
            "example_id": example_ids,
            "offset_mapping": context_offsets,
        }

    def preprocess(self, raw: DatasetDict, tokenizer, max_seq_length: int) -> DatasetDict:
        if not getattr(tokenizer, "is_fast", False):
            raise UserError(
                f"{self.name} needs a fast tokenizer (offset mappings); {type(tokenizer).__name__} is not one"
            )
        if self.options.doc_stride >= max_seq_length:
            raise UserError(f"doc_stride ({self.options.doc_stride}) must be below max_seq_length ({max_seq_length})")
        from datasets import DatasetDict

        features = DatasetDict(
            {
                split: data.map(
                    self._windows,
                    batched=True,
                    remove_columns=data.column_names,
                    fn_kwargs={"tokenizer": tokenizer, "max_seq_length": max_seq_length},
                    desc=f"windows {self.name} {split}",
                )
                for split, data in raw.items()
            }
        )
        # Dev windows shortest first: evaluation runs in dataset order, so each batch pads little (SQuAD's
        # dev set is 10k windows of very different lengths); post-processing finds windows by id.
        dev = features["validation"]
        lengths = [len(ids) for ids in dev["input_ids"]]
        features["validation"] = dev.select(np.argsort(lengths, kind="stable")).flatten_indices()
        self.eval_examples = raw["validation"]
        self.eval_features = features["validation"].select_columns(["example_id", "offset_mapping"])
        return features.remove_columns(["example_id", "offset_mapping"])

    def model_kwargs(self) -> dict[str, Any]:
        return {}

    def distill_targets(self, outputs: Any, batch: dict[str, Tensor]) -> list[Tensor]:
        return [outputs.start_logits, outputs.end_logits]

    def make_head(self, config, input_dim: int) -> nn.Module:
        return SpanHead(input_dim)

    def head_loss(self, head_output: tuple[Tensor, Tensor], batch: dict[str, Tensor]) -> Tensor:
        start_logits, end_logits = head_output
        ignored = start_logits.size(1)
        start = batch["start_positions"].clamp(0, ignored)
        end = batch["end_positions"].clamp(0, ignored)
        return (
            F.cross_entropy(start_logits, start, ignore_index=ignored)
            + F.cross_entropy(end_logits, end, ignore_index=ignored)
        ) / 2

    # post-processing and metrics ------------------------------------------------------------------
    def postprocess(self, start_logits: np.ndarray, end_logits: np.ndarray) -> tuple[dict[str, str], dict[str, float]]:
        """Answer text per question (and, for v2.0, the null-score margin per question)."""
        options = self.options
        by_example = defaultdict(list)
        for index, example_id in enumerate(self.eval_features["example_id"]):
            by_example[example_id].append(index)
        offsets_of = self.eval_features["offset_mapping"]
        answers, null_margins = {}, {}
        for example in self.eval_examples:
            candidates, null_score = [], None
            for index in by_example[example["id"]]:
                starts, ends, offsets = start_logits[index], end_logits[index], offsets_of[index]
                feature_null = float(starts[0] + ends[0])
                if null_score is None or feature_null < null_score:
                    null_score = feature_null
                top_starts = np.argsort(starts)[-1 : -options.n_best_size - 1 : -1]
                top_ends = np.argsort(ends)[-1 : -options.n_best_size - 1 : -1]
                for s in top_starts:
                    for e in top_ends:
                        if s >= len(offsets) or e >= len(offsets) or offsets[s] is None or offsets[e] is None:
                            continue
                        if e < s or e - s + 1 > options.max_answer_length:
                            continue
                        candidates.append((float(starts[s] + ends[e]), offsets[s][0], offsets[e][1]))
            best = max(candidates, default=None)
            text = example["context"][best[1] : best[2]] if best else ""
            if not self.with_negative:
                answers[example["id"]] = text if best else "empty"
                continue
            margin = (null_score if null_score is not None else 0.0) - (best[0] if best else float("-inf"))
            null_margins[example["id"]] = margin
            answers[example["id"]] = "" if margin > options.null_score_diff_threshold else text
        return answers, null_margins

    def _answers(self, predictions: Any) -> tuple[list[tuple[str, list[str]]], dict[str, str], dict[str, float]]:
        """Gold (id, answer texts), predicted answer per id, and (v2.0) no-answer probability per id."""
        start_logits, end_logits = predictions
        answers, margins = self.postprocess(start_logits, end_logits)
        gold = [(e["id"], e["answers"]["text"]) for e in self.eval_examples]
        # The null-score margin through a sigmoid is the no-answer probability the official script's
        # best-threshold search sorts by (monotone, and never above its default 1.0 cut-off).
        na_probs = {qid: float(1 / (1 + np.exp(-np.clip(m, -50, 50)))) for qid, m in margins.items()}
        return gold, answers, na_probs

    def compute_metrics(self, predictions: Any, labels: Any) -> dict[str, float]:
        gold, answers, na_probs = self._answers(predictions)
        return score_v2(gold, answers, na_probs) if self.with_negative else score_v1(gold, answers)

    def prediction_arrays(self, predictions: Any, labels: Any) -> dict[str, np.ndarray]:
        """Per question: id, answer text (what the official script reads), v2.0's no-answer probability,
        and the official per-question EM/F1 (what a bootstrap resamples)."""
        gold, answers, na_probs = self._answers(predictions)
        per_question = per_question_v2 if self.with_negative else per_question_v1
        exact, f1 = per_question(gold, answers)
        ids = [qid for qid, _ in gold]
        arrays = {
            "id": np.array(ids, dtype=str),
            "answer": np.array([answers.get(q, "") for q in ids], dtype=str),
            "exact": np.array([exact.get(q, 0.0) for q in ids]),
            "f1": np.array([f1.get(q, 0.0) for q in ids]),
        }
        if self.with_negative:
            arrays["na_prob"] = np.array([na_probs[q] for q in ids])
        return arrays

    def metric_rows(self, arrays: dict[str, np.ndarray], rows: np.ndarray, metric: str) -> np.ndarray:
        return 100.0 * arrays["f1" if metric == "f1" else "exact"][rows].mean(-1)

    def metric_on(self, arrays: dict[str, np.ndarray], rows: np.ndarray) -> dict[str, float]:
        exact_name = self.paper_metrics[0]
        return {exact_name: 100.0 * float(arrays["exact"][rows].mean()), "f1": 100.0 * float(arrays["f1"][rows].mean())}


def _register(name: str, version: str, hub_name: str, metrics: tuple[str, str]) -> None:
    cls = type(
        f"Squad_{name}",
        (SquadTask,),
        {
            "version": version,
            "hub_name": hub_name,
            "description": f"SQuAD v{version} (EM/F1, official scoring)",
            "paper_metrics": metrics,
            "column_label": f"SQuAD{' v2' if version == '2.0' else ''} EM/F1",
            "short_label": f"SQuAD{' v2' if version == '2.0' else ''}",
            "__module__": __name__,
        },
    )
    register_task(name)(cls)


_register("squad", "1.1", "rajpurkar/squad", ("exact_match", "f1"))
_register("squad_v2", "2.0", "rajpurkar/squad_v2", ("exact", "f1"))
