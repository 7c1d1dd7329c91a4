"""Continual (task-agnostic) pre-training: distil on raw text with the masked-LM objective.

As Hugging Face's ``run_mlm``: lines are tokenised, concatenated and cut into blocks of
``max_seq_length`` tokens; the last ``validation_fraction`` of the blocks is a fixed held-out split.
Training masks 15 % of tokens on the fly (80 % [MASK], 10 % random, 10 % kept, via
``DataCollatorForLanguageModeling``); the held-out blocks are masked once, with a fixed seed, so every
evaluation scores the same positions. Metric: masked-LM loss (nats per masked token) and perplexity.

The pretrained MiniLM has no MLM head: the teacher stage trains one (decoder tied to the word
embeddings, as ``BertForMaskedLM``), with the backbone frozen unless ``teacher_backbone=true``
(continual pre-training of the teacher itself). Logit KD compares the vocabulary distributions at the
masked positions. The trained student is saved, and ``distillbench run --task mrpc --student
<this run's record>`` fine-tunes it downstream.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from distillbench.errors import UserError
from distillbench.families import layer_norm_eps
from distillbench.fields import setting
from distillbench.task import Task, register_task
from distillbench.tasks import metrics
from distillbench.tasks.clm import pack_blocks

if TYPE_CHECKING:  # datasets and transformers take seconds to import: `distillbench list` needs neither
    from datasets import Dataset, DatasetDict

DEFAULT_CORPUS = "text/wikitext-2-raw/wiki.test.raw"
EVAL_MASK_SEED = 1234


class MaskingCollator:
    """Masks training blocks on the fly; held-out blocks arrive already masked and are only stacked."""

    def __init__(self, tokenizer, mlm_probability: float) -> None:
        from transformers import DataCollatorForLanguageModeling, DataCollatorWithPadding

        self.mask = DataCollatorForLanguageModeling(tokenizer, mlm_probability=mlm_probability)
        self.pad = DataCollatorWithPadding(tokenizer)

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, Tensor]:
        return self.pad(features) if "labels" in features[0] else self.mask(features)


class MLMHead(nn.Module):
    """BERT's MLM head on any token states: dense → GELU → LayerNorm → vocabulary logits."""

    def __init__(self, input_dim: int, vocab_size: int, eps: float) -> None:
        super().__init__()
        self.transform = nn.Sequential(nn.Linear(input_dim, input_dim), nn.GELU(), nn.LayerNorm(input_dim, eps=eps))
        self.decoder = nn.Linear(input_dim, vocab_size)

    def forward(self, states: Tensor) -> Tensor:
        return self.decoder(self.transform(states))


@register_task("pretrain")
class ContinualPretraining(Task):
    """Masked-LM continual pre-training on raw text (WikiText-2 by default); held-out perplexity."""

    description = "masked-LM continual pre-training on raw text (perplexity)"
    model_class = "AutoModelForMaskedLM"
    main_metric = "perplexity"
    greater_is_better = False
    pretraining = True
    deterministic_inputs = False  # training blocks are masked anew every step: no teacher-output cache
    paper_metrics = ("perplexity",)
    column_label = "MLM ppl"
    display_scale = 1.0
    display_decimals = 2
    eval_set_label = "held-out text"
    train_defaults = {
        "learning_rate": 1e-4,
        "teacher_learning_rate": 1e-4,
        "epochs": 1,
        "batch_size": 32,
        "max_seq_length": 128,
    }

    @dataclass
    class Options:
        corpus: str = setting("", help="comma-separated text files (default: WikiText-2 raw test split)")
        validation_fraction: float = setting(0.05, gt=0, lt=1, help="held-out fraction of the text blocks")
        mlm_probability: float = setting(0.15, gt=0, lt=1, help="fraction of tokens masked")
        teacher_backbone: bool = setting(False, help="also train the teacher's backbone while its MLM head trains")

    def _files(self) -> list[Path]:
        if self.options.corpus:
            files = [Path(p).expanduser() for p in self.options.corpus.split(",") if p]
        elif self.data_dir is not None:
            files = [self.data_dir / DEFAULT_CORPUS]
        else:
            return []
        for path in files:
            if not path.is_file():
                raise UserError(f"missing corpus file {path}")
        return files

    def data_files(self) -> list[Path]:
        return self._files()

    def load(self) -> DatasetDict:
        from datasets import Dataset, DatasetDict, load_dataset

        files = self._files()
        if files:
            lines = [line for path in files for line in path.read_text(encoding="utf-8").splitlines()]
            text = Dataset.from_dict({"text": [line for line in lines if line.strip()]})
        else:
            text = load_dataset("Salesforce/wikitext", "wikitext-2-raw-v1", split="train")
            text = text.filter(lambda row: bool(row["text"].strip()))
        if not 0 < self.options.validation_fraction < 1:
            raise UserError("validation_fraction must be between 0 and 1")
        return DatasetDict({"train": text})

    def preprocess(self, raw: DatasetDict, tokenizer, max_seq_length: int) -> DatasetDict:
        tokenized = raw["train"].map(
            lambda b: tokenizer(b["text"], return_special_tokens_mask=True),
            batched=True,
            remove_columns=["text"],
            desc="tokenising corpus",
        )
        from datasets import DatasetDict

        blocks = tokenized.map(
            pack_blocks,
            fn_kwargs={"block_size": max_seq_length},
            batched=True,
            batch_size=1000,
            desc="grouping into blocks",
        )
        held_out = max(1, int(len(blocks) * self.options.validation_fraction))
        if len(blocks) <= held_out:
            raise UserError(f"corpus too small: {len(blocks)} block(s) of {max_seq_length} tokens")
        train = blocks.select(range(len(blocks) - held_out)).remove_columns("special_tokens_mask")
        validation = self.mask_fixed(blocks.select(range(len(blocks) - held_out, len(blocks))), tokenizer)
        return DatasetDict({"train": train, "validation": validation})

    def mask_fixed(self, blocks: Dataset, tokenizer) -> Dataset:
        """Mask the held-out blocks once with a fixed seed: every evaluation scores the same positions."""
        from datasets import Dataset
        from transformers import DataCollatorForLanguageModeling

        collator = DataCollatorForLanguageModeling(tokenizer, mlm_probability=self.options.mlm_probability)
        state = torch.get_rng_state()
        torch.manual_seed(EVAL_MASK_SEED)
        try:
            masked = collator([dict(row) for row in blocks])
        finally:
            torch.set_rng_state(state)
        columns = {k: v.tolist() for k, v in masked.items()}
        return Dataset.from_dict(
            {k: columns[k] for k in ("input_ids", "attention_mask", "token_type_ids", "labels") if k in columns}
        )

    def collator(self, tokenizer):
        return MaskingCollator(tokenizer, self.options.mlm_probability)

    def prepare_model(self, model: nn.Module, role: str) -> None:
        """The teacher stage trains the MLM head only, unless ``teacher_backbone`` is set."""
        if role == "teacher" and not self.options.teacher_backbone:
            for parameter in model.base_model.parameters():
                parameter.requires_grad_(False)

    def distill_targets(self, outputs: Any, batch: dict[str, Tensor]) -> list[Tensor]:
        return [outputs.logits[batch["labels"] != -100]]

    def make_head(self, config, input_dim: int) -> nn.Module:
        return MLMHead(input_dim, config.vocab_size, layer_norm_eps(config))

    def head_loss(self, head_output: Tensor, batch: dict[str, Tensor]) -> Tensor:
        return F.cross_entropy(head_output.flatten(0, 1), batch["labels"].flatten(), ignore_index=-100)

    def reduce_eval_logits(self, logits: Tensor, labels: Tensor) -> Tensor:
        """Per block: (sum of masked-token NLL, masked-token count); the full logits never leave the batch."""
        nll = F.cross_entropy(logits.flatten(0, 1).float(), labels.flatten(), ignore_index=-100, reduction="none")
        nll = nll.view(labels.shape).sum(-1)
        return torch.stack([nll, (labels != -100).sum(-1).to(nll.dtype)], dim=-1)

    def prediction_arrays(self, predictions: Any, labels: Any) -> dict[str, np.ndarray]:
        """Per held-out block: masked-token NLL sum and count (the token labels are the fixed masks)."""
        return {"predictions": np.asarray(predictions)}

    def metric_on(self, arrays: dict[str, np.ndarray], rows: np.ndarray) -> dict[str, float]:
        return self.compute_metrics(arrays["predictions"][rows], None)

    def compute_metrics(self, predictions: np.ndarray, labels: np.ndarray | None) -> dict[str, float]:
        total_nll, count = predictions[:, 0].sum(), predictions[:, 1].sum()
        mean_nll = float(total_nll / max(count, 1.0))
        return {"mlm_loss": mean_nll, "perplexity": metrics.perplexity(mean_nll)}
