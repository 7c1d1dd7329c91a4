"""The output caches of one run: which cache it reads for its teacher or a frozen stage backbone, keyed
by what the run's plan says, built on first use when it pays.

Storage (the files, their manifest, reading rows back) and the policy (which methods and tasks can read
a cache) are :mod:`teacher_cache`'s; this module is where a run's ``Plan`` and tokenised data meet them.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any

from torch import nn

from distillbench import distributed
from distillbench.cached import stable_key
from distillbench.teacher_cache import CacheSpec, TeacherCache, build_cache, cache_refusal, estimated_bytes, with_index

if TYPE_CHECKING:
    from distillbench.config import TrainConfig
    from distillbench.planning import Plan
    from distillbench.training import RunData


class OutputCaches:
    """The output caches of one run: the teacher's for distillation, a frozen backbone's for a stage."""

    def __init__(self, plan: Plan, data: RunData) -> None:
        self.plan = plan
        self.data = data

    def for_teacher(self, teacher: nn.Module, teacher_info: dict[str, Any]) -> TeacherCache | None:
        """The teacher-output cache this run reads, built on first use; ``None`` when switched off, when
        the method or the task needs a live teacher, or (``auto``) when a new cache would not pay."""
        cfg, method = self.plan.config.train, self.plan.method
        if cfg.teacher_cache == "off" or cache_refusal(self.plan.config, method, self.plan.task):
            return None
        model_key = teacher_info.get("key") or teacher_info.get("weights_sha256")
        return self.build(teacher, model_key, method.cached_teacher_layers() or (), cfg)

    def build(
        self,
        model: nn.Module,
        model_key: str,
        layers: tuple[int, ...],
        cfg: TrainConfig,
        first_position_only: bool = False,
    ) -> TeacherCache | None:
        """The outputs of a frozen, eval-mode ``model`` over the training set (its distillable outputs and
        the hidden states ``layers``), cached under a key of its weights and built on first use. ``auto``
        skips a new cache that would not pay — more than ``teacher_cache_max_gb`` of disk (hidden states
        of a large task), or a stage shorter than the one pass that builds it (a bounded demo) — and says
        so on stderr. ``first_position_only``: the reader looks at each state's first position alone (a
        [CLS] head), so only that is stored."""
        plan, task, train = self.plan, self.plan.task, self.data.splits["train"]
        layers = tuple(sorted(set(layers)))
        top_k = cfg.teacher_cache_top_k if task.vocabulary_distill else 0
        temperature = float(getattr(plan.method.hp, "temperature", 1.0)) if top_k else 1.0
        spec = CacheSpec(
            layers, cfg.teacher_cache_dtype, task.per_token_distill, first_position_only, top_k, temperature
        )
        task_options = plan.config.task_options
        settings = {
            "teacher": model_key,
            "task": plan.config.task,
            "data": plan.data_sha256,
            "tokenizer": plan.identity(plan.teacher_source),
            "max_seq_length": cfg.max_seq_length,
            "layers": list(spec.layers),
            "dtype": spec.dtype,
            **({"task_options": task_options} if task_options else {}),
            **({"first_position_only": True} if first_position_only else {}),
            **({"top_k": top_k, "temperature": temperature} if top_k else {}),
        }
        folder = plan.paths.cache_dir / "teacher-outputs" / f"{plan.config.task}-{stable_key(settings)}"
        lengths = [len(ids) for ids in train["input_ids"]]
        size = estimated_bytes(lengths, spec, model.config.hidden_size)
        skip = None
        if size > cfg.teacher_cache_max_gb * 2**30:
            skip = f"caching them would take {size / 2**30:.1f} GiB > teacher_cache_max_gb={cfg.teacher_cache_max_gb}"
        elif self.data.rows_to_train(cfg) < len(lengths):
            skip = "this short run reads fewer training rows than caching the whole set would"
        # Across tokenizers, and for a top-k objective, the cache is how the teacher reaches the student.
        if cfg.teacher_cache == "auto" and not folder.is_dir() and skip and not plan.cross_tokenizer and not top_k:
            print(
                f"teacher outputs computed on the fly, not cached: {skip} (--teacher-cache on caches anyway)",
                file=sys.stderr,
            )
            return None
        show = plan.paths.show_progress
        with distributed.main_first():  # rank 0 runs the teacher over the data; the others read its cache
            cache = build_cache(
                folder, model, with_index(train), task, self.data.tokenizer, spec, cfg.eval_batch_size, show
            )
        print(
            f"output cache {folder.name} ({cache.disk_bytes / 2**20:.1f} MiB, {spec.dtype}, "
            f"max rounding error {cache.meta['max_abs_rounding_error']:.2e})",
            file=sys.stderr,
        )
        return cache


def cache_entry(caches: list[TeacherCache]) -> dict[str, Any]:
    """The record's ``teacher_cache``: the cache read (one per member of an ensemble)."""
    entries = [cache.meta | {"key": cache.folder.name} for cache in caches]
    return entries[0] if len(entries) == 1 else {"members": entries}
