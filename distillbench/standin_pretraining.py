"""Pre-training a stand-in decoder teacher from scratch (``--teacher scratch:<preset>``; standins.py):
a byte-level BPE tokenizer, then a GPT-2-shaped model, trained on the task's own training text."""

from __future__ import annotations

import json
import math
import os
import shutil
import sys
import time
from collections import Counter
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from distillbench.cached import cached_folder, read_marker
from distillbench.provenance import git_state, hardware, package_versions
from distillbench.standins import STANDIN_FILE, preset_of, standin_folder
from distillbench.training import last_complete_checkpoint, quiet_logs
from distillbench.workspace import VERBOSE_ENV

if TYPE_CHECKING:
    from distillbench.task import Task


def ensure_standin(spec: str, task: Task, cache_dir: Path, show_progress: bool) -> str:
    """The stand-in's model folder, pre-training it first when this text has none (resumable)."""
    folder = standin_folder(spec, task, cache_dir)
    if read_marker(folder) is None:
        print(f"pre-training the stand-in teacher {spec} on the task's training text first", file=sys.stderr)
    cached_folder(folder, lambda target: pretrain(spec, task, target, show_progress))
    return str(folder / "model")


def train_tokenizer(texts: list[str], vocab_size: int) -> Any:
    """A byte-level BPE tokenizer (GPT-2's kind) trained on ``texts``, as a ``transformers`` tokenizer."""
    from tokenizers import ByteLevelBPETokenizer
    from transformers import PreTrainedTokenizerFast

    trainer = ByteLevelBPETokenizer()
    trainer.train_from_iterator(texts, vocab_size=vocab_size, special_tokens=["<|endoftext|>"], show_progress=False)
    return PreTrainedTokenizerFast(tokenizer_object=trainer._tokenizer, eos_token="<|endoftext|>")


def unigram_scores(task: Task, train_ids: list[list[int]], heldout: Any, vocab_size: int) -> dict[str, float]:
    """The held-out scores of a unigram model of the training tokens (add-one smoothed): what a language
    model that ignores context achieves."""
    import numpy as np
    import torch

    counts = Counter(token for block in train_ids for token in block)
    total = sum(counts.values()) + vocab_size
    log_prob = np.log(np.array([(counts.get(i, 0) + 1) / total for i in range(vocab_size)]))
    ids = np.array(heldout["input_ids"])
    nll = -log_prob[ids[:, 1:]].sum(-1)
    byte_count, words = task.token_text.counts(torch.tensor(ids))
    rows = np.stack([nll, np.full(len(ids), ids.shape[1] - 1), byte_count.numpy(), words.numpy()], axis=-1)
    return task.compute_metrics(rows, None)


def pretrain(spec: str, task: Task, folder: Path, show_progress: bool) -> dict[str, Any]:
    """Train the tokenizer, then the model from scratch; save both and say what they are."""
    from transformers import GPT2Config, GPT2LMHeadModel, Trainer, TrainingArguments, set_seed

    name, preset = preset_of(spec)
    started = time.time()
    raw = task.load()
    tokenizer = train_tokenizer(list(raw["train"]["text"]), preset.vocab_size)
    splits = task.preprocess(raw, tokenizer, preset.block_size)
    set_seed(preset.seed)
    config = GPT2Config(
        vocab_size=len(tokenizer),
        n_positions=max(preset.block_size, 512),
        n_embd=preset.width,
        n_layer=preset.layers,
        n_head=preset.heads,
        bos_token_id=tokenizer.eos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        use_cache=False,
    )
    model = GPT2LMHeadModel(config)
    steps = math.ceil(len(splits["train"]) / preset.batch_size) * preset.epochs
    args = TrainingArguments(
        output_dir=str(folder / "trainer"),
        per_device_train_batch_size=preset.batch_size,
        per_device_eval_batch_size=16,
        learning_rate=preset.learning_rate,
        num_train_epochs=preset.epochs,
        warmup_steps=int(steps * preset.warmup_fraction),
        lr_scheduler_type="cosine",
        weight_decay=preset.weight_decay,
        save_strategy="steps",
        save_steps=200,
        save_total_limit=1,
        logging_steps=50,
        seed=preset.seed,
        report_to="none",
        disable_tqdm=not show_progress,
        use_cpu=not _cuda(),
        remove_unused_columns=False,
    )
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=splits["train"],
        eval_dataset=splits["validation"],
        data_collator=task.collator(tokenizer),
        compute_metrics=lambda p: task.compute_metrics(p.predictions, p.label_ids),
        preprocess_logits_for_metrics=task.reduce_eval_logits,
    )
    if not os.environ.get(VERBOSE_ENV):
        quiet_logs(trainer, "teacher-pretraining")
    trainer.train(resume_from_checkpoint=last_complete_checkpoint(folder / "trainer"))
    scores = {k.removeprefix("eval_"): v for k, v in trainer.evaluate().items() if k.removeprefix("eval_") in
              ("perplexity", "bits_per_byte", "word_perplexity", "nll")}  # fmt: skip
    model.save_pretrained(folder / "model")
    tokenizer.save_pretrained(folder / "model")
    shutil.rmtree(folder / "trainer")
    info = {
        "what": f"a stand-in for GPT-2 ({preset.note}), not GPT-2: pre-trained from scratch on the task's text",
        "preset": name,
        "settings": asdict(preset),
        "data_sha256": task.data_sha256(),
        "train_blocks": len(splits["train"]),
        "train_tokens": len(splits["train"]) * preset.block_size,
        "heldout": scores,
        "unigram_heldout": unigram_scores(task, splits["train"]["input_ids"], splits["validation"], len(tokenizer)),
        "wall_time_s": time.time() - started,
        "git": git_state(),  # the code that pre-trained it, as run records name theirs
        "packages": package_versions(),
        "hardware": hardware(),
    }
    (folder / STANDIN_FILE).write_text(json.dumps(info, indent=2) + "\n")
    return info


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()
