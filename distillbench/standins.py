"""A stand-in decoder teacher pre-trained from scratch here, for machines that cannot download GPT-2.

``--teacher scratch:<preset>`` names a GPT-2-shaped causal LM that distillbench pre-trains on the task's
own training text: a byte-level BPE tokenizer trained with ``tokenizers`` on that text, then a randomly
initialised ``GPT2LMHeadModel`` of the preset's shape trained with the causal-LM objective by the
``transformers`` Trainer. It is built once per (preset, text) into the stage cache (resumable, under a
lock, with a manifest like every stage) and afterwards is an ordinary local teacher folder. Its
``standin.json`` says what it is — a stand-in for GPT-2, not GPT-2 — with its held-out scores beside a
unigram model's (the floor a language model must clear by far). Users with the hub run the real pairs
(``--teacher gpt2 --student distilgpt2``) instead.

This module names the presets and where a built stand-in lives (what planning reads);
``standin_pretraining.py`` builds one.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from distillbench.cached import read_marker, stable_key
from distillbench.errors import UserError

if TYPE_CHECKING:
    from distillbench.task import Task

PREFIX = "scratch:"
STANDIN_FILE = "standin.json"


@dataclass(frozen=True)
class Preset:
    """The stand-in's shape, tokenizer and pre-training budget."""

    layers: int
    width: int
    heads: int
    vocab_size: int
    block_size: int
    epochs: float
    learning_rate: float
    batch_size: int
    warmup_fraction: float = 0.05
    weight_decay: float = 0.01
    seed: int = 0
    note: str = ""


PRESETS: dict[str, Preset] = {
    # About an hour on two CPU cores over the ~1M training tokens of the data folder's text: 6 blocks (a
    # 3-block student is half its depth), width 256, a vocabulary of 8,192 byte-level BPE tokens.
    "gpt2-cpu": Preset(6, 256, 4, 8192, 128, 3.0, 1e-3, 16, note="GPT-2-shaped, 6 × 256, pre-trained here"),
    # Seconds: the test suite's.
    "gpt2-tiny": Preset(2, 32, 2, 300, 32, 1.0, 3e-3, 8, note="GPT-2-shaped, 2 × 32, for tests"),
}


def is_standin(spec: str | None) -> bool:
    return bool(spec) and spec.startswith(PREFIX)


def preset_of(spec: str) -> tuple[str, Preset]:
    name = spec.removeprefix(PREFIX)
    if name not in PRESETS:
        raise UserError(f"--teacher {spec}: no such stand-in preset (known: {', '.join(sorted(PRESETS))})")
    return name, PRESETS[name]


def standin_folder(spec: str, task: Task, cache_dir: Path) -> Path:
    """Where the stand-in of this preset, pre-trained on this task's text, lives in the stage cache."""
    name, preset = preset_of(spec)
    if task.model_kind != "decoder":
        raise UserError(f"--teacher {spec}: a causal-LM stand-in; task {task.name} needs an encoder")
    key = stable_key({"preset": name, "settings": asdict(preset), "data": task.data_sha256()})
    return cache_dir / "standins" / f"{name}-{key}"


def built_standin(spec: str, task: Task, cache_dir: Path) -> str:
    """The folder of a stand-in already pre-trained on this text, or one error saying how to build it."""
    folder = standin_folder(spec, task, cache_dir)
    if read_marker(folder) is None and not task.data_files():
        raise UserError(
            f"--teacher {spec}: no data folder given (--data-dir or DISTILLBENCH_DATA); the stand-in is "
            "pre-trained on its text, and none was pre-trained on the hub's copy"
        )
    if read_marker(folder) is None:
        raise UserError(
            f"--teacher {spec}: not pre-trained on this text yet; `distillbench run` (without --dry-run) or "
            "`distillbench sweep` pre-trains it first"
        )
    return str(folder / "model")
