"""Continual pre-training of a causal (GPT-style) language model on raw text: the TED paper's first scenario.

As Hugging Face's ``run_clm``: the text is tokenised line by line (newlines kept, no special tokens),
concatenated and cut into blocks of ``max_seq_length`` tokens (the block size; a last partial block is
dropped); a block's labels are its own tokens, and the model predicts each token from the ones before it
in the block. Training text and held-out text are separate files (WikiText-2's raw test split by default),
or, without them, the last ``validation_fraction`` of the blocks.

Scores over the held-out blocks (every token but a block's first is predicted):

* ``perplexity`` — exp(mean negative log-likelihood per predicted token); the main metric, lower is better;
* ``bits_per_byte`` — total NLL in bits over the UTF-8 bytes of the predicted text: independent of the
  tokenizer, so students with other vocabularies compare;
* ``word_perplexity`` — exp(total NLL over the number of words), words being runs of non-space
  characters, as the GPT-2 paper reports WikiText.

Each held-out block keeps its (NLL, tokens, bytes, words) as its prediction, so ``compare`` resamples
blocks for a paired bootstrap. Logit KD compares the next-token distributions at every position (a
chunked KL over the vocabulary); TED's filters each get an LM head of their own (LayerNorm → vocabulary).
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from distillbench.errors import UserError
from distillbench.fields import setting
from distillbench.task import Task, register_task

if TYPE_CHECKING:  # datasets and transformers take seconds to import: `distillbench list` needs neither
    from datasets import Dataset, DatasetDict

# The training text this repository's data folder holds (WikiText-2's own train split is not there), and the
# WikiText-2 raw test split held out from it.
DEFAULT_TRAIN = "text/squad-contexts/contexts.txt,text/wikitext-2/wiki.valid.tokens,text/grimm/tales.txt"
DEFAULT_HELDOUT = "text/wikitext-2-raw/wiki.test.raw"
HUB_DATASET = "Salesforce/wikitext:wikitext-2-raw-v1"
SUMMARY_COLUMNS = ("nll", "tokens", "bytes", "words")  # a held-out block's prediction row


def pack_blocks(batch: dict[str, list], block_size: int) -> dict[str, list]:
    """Tokenised rows concatenated and cut into blocks of ``block_size`` (a last partial block is dropped), every
    column alike, as ``run_clm``/``run_mlm`` group texts."""
    joined = {k: list(itertools.chain.from_iterable(rows)) for k, rows in batch.items()}
    usable = len(joined["input_ids"]) // block_size * block_size
    return {k: [v[i : i + block_size] for i in range(0, usable, block_size)] for k, v in joined.items()}


class BlockCollator:
    """Stacks equal-length blocks; the labels are the inputs (the model shifts them itself)."""

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, Tensor]:
        batch = {key: torch.tensor([f[key] for f in features]) for key in features[0]}
        batch["labels"] = batch["input_ids"].clone()
        return batch


class LMHead(nn.Module):
    """An LM head on any token states: LayerNorm → vocabulary logits (GPT-2's ``ln_f`` + ``lm_head``)."""

    def __init__(self, input_dim: int, vocab_size: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(input_dim)
        self.decoder = nn.Linear(input_dim, vocab_size, bias=False)

    def forward(self, states: Tensor) -> Tensor:
        return self.decoder(self.norm(states))


def next_token_nll(logits: Tensor, labels: Tensor) -> Tensor:
    """Per position, −log p(token t+1 | tokens ≤ t): [B, L − 1], in float32."""
    shifted = logits[:, :-1].flatten(0, 1).float()
    return F.cross_entropy(shifted, labels[:, 1:].flatten(), reduction="none").view(labels.shape[0], -1)


@dataclass(frozen=True)
class TokenText:
    """Per vocabulary entry, what its text adds to a held-out count: UTF-8 bytes, whether it starts or
    ends with white space, and how many words start inside it (after white space within the token)."""

    bytes: Tensor
    starts_space: Tensor
    ends_space: Tensor
    inner_word_starts: Tensor

    @classmethod
    def of(cls, tokenizer: Any, vocab_size: int) -> TokenText:
        texts = token_bytes(tokenizer, vocab_size)
        space = b" \t\n\r\x0b\x0c"

        def inner(text: bytes) -> int:
            return sum(1 for a, b in itertools.pairwise(text) if a in space and b not in space)

        return cls(
            bytes=torch.tensor([len(t) for t in texts]),
            starts_space=torch.tensor([bool(t) and t[0] in space for t in texts]),
            ends_space=torch.tensor([bool(t) and t[-1] in space for t in texts]),
            inner_word_starts=torch.tensor([inner(t) for t in texts]),
        )

    def counts(self, ids: Tensor) -> tuple[Tensor, Tensor]:
        """Bytes and words of each block's predicted tokens (all but the first, which is context): a word
        starts where a non-space byte follows a space byte, within a token or across two."""
        ids = ids.cpu()
        predicted = ids[:, 1:]
        byte_count = self.bytes[predicted].sum(-1)
        across = self.ends_space[ids[:, :-1]] & ~self.starts_space[predicted] & (self.bytes[predicted] > 0)
        words = self.inner_word_starts[predicted].sum(-1) + across.sum(-1)
        return byte_count, words


def byte_level_alphabet() -> dict[int, str]:
    """GPT-2's byte → character map of byte-level BPE: printable bytes stand for themselves, the others
    for the characters from U+0100 on, in byte order (``bytes_to_unicode`` in GPT-2's encoder.py)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    others = [b for b in range(256) if b not in printable]
    return {b: chr(b) for b in printable} | {b: chr(256 + n) for n, b in enumerate(others)}


def token_bytes(tokenizer: Any, vocab_size: int) -> list[bytes]:
    """The UTF-8 bytes each token id stands for. Byte-level BPE (GPT-2, Llama 3, Qwen, Pythia) is exact:
    each character of a token is one byte; otherwise the token's decoded text ("▁" as a space)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    decoder_kind = type(backend.decoder).__name__ if backend is not None and backend.decoder is not None else ""
    tokens = tokenizer.convert_ids_to_tokens(list(range(min(vocab_size, len(tokenizer)))))
    special = set(getattr(tokenizer, "all_special_tokens", []))
    if decoder_kind == "ByteLevel":
        byte_of = {char: byte for byte, char in byte_level_alphabet().items()}
        texts = [b"" if t in special else bytes(byte_of.get(c, 0) for c in t) for t in tokens]
    else:
        texts = [b"" if t in special else t.replace("▁", " ").encode() for t in tokens]
    return texts + [b""] * (vocab_size - len(texts))


@register_task("clm")
class CausalLanguageModeling(Task):
    """Causal-LM continual pre-training on raw text: held-out perplexity, bits per byte, word perplexity."""

    description = "causal-LM continual pre-training on raw text (perplexity, bits per byte)"
    model_class = "AutoModelForCausalLM"
    model_kind = "decoder"
    default_teacher = "scratch:gpt2-cpu"  # no decoder weights ship with distillbench: the stand-in pre-trained here
    output_type = "vocabulary"
    main_metric = "perplexity"
    greater_is_better = False
    pretraining = True
    per_token_distill = True
    vocabulary_distill = True
    paper_metrics = ("perplexity", "bits_per_byte")
    column_label = "CLM ppl/bpb"
    short_label = "CLM"
    display_scale = 1.0
    display_decimals = 1
    metric_decimals = {"bits_per_byte": 3}  # students differ in the third decimal
    eval_set_label = "held-out text"
    eval_unit = "held-out blocks"
    train_defaults = {
        "learning_rate": 1e-4,
        "teacher_learning_rate": 1e-4,
        "epochs": 1,
        "batch_size": 8,
        "eval_batch_size": 16,
        "max_seq_length": 128,
    }

    @dataclass
    class Options:
        corpus: str = setting(DEFAULT_TRAIN, help="comma-separated training text files (relative: to the data folder)")
        heldout: str = setting(DEFAULT_HELDOUT, help="comma-separated held-out text files ('': hold out blocks)")
        validation_fraction: float = setting(0.05, gt=0, lt=1, help="held-out fraction of the blocks without heldout")
        dataset: str = setting(HUB_DATASET, help="without a data folder: a datasets name[:config] (train, test)")

    token_text: TokenText | None = None  # set by preprocess: what reduce_eval_logits counts bytes and words with

    def _paths(self, spec: str) -> list[Path]:
        paths = []
        for part in (p.strip() for p in spec.split(",")):
            if part:
                path = Path(part).expanduser()
                paths.append(path if path.is_absolute() or self.data_dir is None else self.data_dir / path)
        for path in paths:
            if not path.is_file():
                raise UserError(f"missing text file {path}")
        return paths

    def data_files(self) -> list[Path]:
        if self.data_dir is None and not Path(self.options.corpus.split(",")[0]).expanduser().is_absolute():
            return []  # the hub dataset
        return self._paths(self.options.corpus) + self._paths(self.options.heldout)

    def load(self) -> DatasetDict:
        from datasets import DatasetDict

        if not self.data_files():
            from datasets import load_dataset

            name, _, config = self.options.dataset.partition(":")
            hub = load_dataset(name, config or None)
            return DatasetDict({"train": hub["train"], "validation": hub["test"]})
        splits = {"train": self._lines(self._paths(self.options.corpus))}
        if self.options.heldout:
            splits["validation"] = self._lines(self._paths(self.options.heldout))
        return DatasetDict(splits)

    @staticmethod
    def _lines(paths: list[Path]) -> Dataset:
        from datasets import Dataset

        lines = [line for path in paths for line in path.read_text(encoding="utf-8").splitlines(keepends=True)]
        return Dataset.from_dict({"text": [line for line in lines if line.strip()]})

    def preprocess(self, raw: DatasetDict, tokenizer, max_seq_length: int) -> DatasetDict:
        from datasets import DatasetDict

        self.token_text = TokenText.of(tokenizer, len(tokenizer))
        blocks = {name: self._blocks(split, tokenizer, max_seq_length, name) for name, split in raw.items()}
        if "validation" not in blocks:
            train = blocks["train"]
            held_out = max(1, int(len(train) * self.options.validation_fraction))
            if len(train) <= held_out:
                raise UserError(f"text too small: {len(train)} block(s) of {max_seq_length} tokens")
            blocks = {
                "train": train.select(range(len(train) - held_out)),
                "validation": train.select(range(len(train) - held_out, len(train))),
            }
        for name, split in blocks.items():
            if len(split) == 0:
                raise UserError(f"{name} text too small: no whole block of {max_seq_length} tokens")
        return DatasetDict(blocks)

    @staticmethod
    def _blocks(text: Dataset, tokenizer, block_size: int, name: str) -> Dataset:
        tokenized = text.map(
            lambda b: tokenizer(b["text"], add_special_tokens=False),
            batched=True,
            remove_columns=text.column_names,
            desc=f"tokenising {name} text",
        )

        columns = [c for c in tokenized.column_names if c not in ("input_ids", "attention_mask")]
        # one batch: blocks run across line boundaries, so only the text's very end is dropped
        return tokenized.remove_columns(columns).map(
            pack_blocks, fn_kwargs={"block_size": block_size}, batched=True, batch_size=None, desc="packing blocks"
        )

    def model_kwargs(self) -> dict[str, Any]:
        """No generation cache: training and scoring never reuse one, and the Trainer's evaluation cannot
        gather it from a module that is not itself a Hugging Face model (the distiller)."""
        return {"use_cache": False}

    def collator(self, tokenizer) -> BlockCollator:
        return BlockCollator()

    def distill_targets(self, outputs: Any, batch: dict[str, Tensor]) -> list[Tensor]:
        return [outputs.logits]

    def make_head(self, config, input_dim: int) -> nn.Module:
        return LMHead(input_dim, config.vocab_size)

    def head_loss(self, head_output: Tensor, batch: dict[str, Tensor]) -> Tensor:
        return next_token_nll(head_output, batch["labels"]).mean()

    def reduce_eval_logits(self, logits: Any, labels: Tensor) -> Tensor:
        """Per block: (NLL sum, predicted tokens, their bytes, their words); the full logits never leave
        the batch."""
        logits = logits[0] if isinstance(logits, tuple) else logits  # (logits, past key values)
        if self.token_text is None:
            raise RuntimeError("clm: reduce_eval_logits before preprocess counted the vocabulary's bytes")
        nll = next_token_nll(logits, labels).sum(-1)
        byte_count, words = self.token_text.counts(labels)
        tokens = torch.full_like(nll, labels.shape[1] - 1)
        return torch.stack([nll, tokens, byte_count.to(nll), words.to(nll)], dim=-1)

    def prediction_arrays(self, predictions: Any, labels: Any) -> dict[str, np.ndarray]:
        """Per held-out block: NLL sum, predicted tokens, bytes and words (the labels are the text)."""
        return {"predictions": np.asarray(predictions, dtype=np.float64)}

    def metric_on(self, arrays: dict[str, np.ndarray], rows: np.ndarray) -> dict[str, float]:
        return self.compute_metrics(arrays["predictions"][rows], None)

    def metric_rows(self, arrays: dict[str, np.ndarray], rows: np.ndarray, metric: str) -> np.ndarray:
        totals = arrays["predictions"][rows].sum(axis=1)  # [R, 4]
        return self._metrics(*totals.T)[metric]

    def compute_metrics(self, predictions: np.ndarray, labels: np.ndarray | None) -> dict[str, float]:
        return {k: float(v) for k, v in self._metrics(*np.asarray(predictions, np.float64).sum(axis=0)).items()}

    @staticmethod
    def _metrics(nll: Any, tokens: Any, byte_count: Any, words: Any) -> dict[str, Any]:
        return {
            "nll": nll / np.maximum(tokens, 1),  # nats per predicted token
            "perplexity": np.exp(nll / np.maximum(tokens, 1)),
            "bits_per_byte": nll / math.log(2) / np.maximum(byte_count, 1),
            "word_perplexity": np.exp(nll / np.maximum(words, 1)),
        }
