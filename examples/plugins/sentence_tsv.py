"""A task from one file: single-sentence classification read from ``<data>/sentences/{train,dev}.tsv``.

Each file has a header row ``sentence<TAB>label`` and labels ``0``/``1``. Everything else — tokenising,
the [CLS] head of TED's Stage I, accuracy, stored predictions, paired significance — comes from the
GLUE task family this class extends, so the file only says where the data is and how it is scored.

Loaded with ``distillbench --plugin examples/plugins/sentence_tsv.py run --method kd --task sentence-tsv
--data-dir DATA`` (or ``DISTILLBENCH_PLUGINS``): no project file changes.
"""

from __future__ import annotations

from distillbench.task import register_task
from distillbench.tasks.glue import GlueSpec, GlueTask


@register_task("sentence-tsv")
class SentenceTSV(GlueTask):
    """Single-sentence binary classification from a local TSV pair (accuracy)."""

    spec = GlueSpec("sentence-tsv", "sentences", ("sentence",), "label", ("0", "1"), ("accuracy",))
    description = "single-sentence binary classification from <data>/sentences/{train,dev}.tsv (accuracy)"
    benchmark = ""  # not a GLUE task: it gets no GLUE average column
    main_metric = "accuracy"
    paper_metrics = ("accuracy",)
    column_label = "Sentences acc"
    train_defaults = {"epochs": 3, "batch_size": 32}
