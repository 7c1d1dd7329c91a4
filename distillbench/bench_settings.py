"""What one ``distillbench bench`` measures: its own small module, so the command line builds its flags
(help declared once, here) without importing the bench's models and trainers."""

from __future__ import annotations

from dataclasses import dataclass

from distillbench.config import option


@dataclass
class BenchSettings:
    """What one bench measures; each field is a flag of ``distillbench bench`` with the help given here."""

    task: str | None = option(None, help="a registered task (see `distillbench list`); not with --reading")
    teacher: str = option("minilm-l6", help="the teacher model, as for run")
    steps: int = option(0, help="batches per phase, the same in every phase (default 0: one epoch)")
    warmup: int = option(3, help="untimed first steps of every phase")
    rounds: int = option(2, help="alternating rounds of plain vs harness")
    batch_size: int = option(32, help="training batch size of every phase")
    max_seq_length: int = option(128, help="tokens per example")
    seed: int = option(42, help="seed of the student and its batches")
    data_dir: str | None = option(None, help="folder with glue/ (default: $DISTILLBENCH_DATA, else hub)")
    end_to_end_epochs: float = option(
        0.0,
        help="also time whole runs (student-only baseline vs the staged method) of this many epochs on the full "
        "training set (0: none)",
    )
    bf16: bool = option(False, help="every phase (the plain loop too) under bfloat16 autocast (GPU check)")
    teacher_seed: int | None = option(1, help="seed of the shared teacher of the whole runs")
    top_k: int = option(64, help="vocabulary tasks (clm): the k of the top-k teacher cache the cached phase reads")
    top_k_student: str | None = option(
        None,
        help="vocabulary tasks: also measure the top-k cache's KD error for this trained student (a saved model "
        "folder, e.g. a kd run's outputs/<run>/student); the untrained student is always measured",
    )
