"""The module the Trainer trains, and the Trainer that logs each loss term.

``Distiller`` holds the student, the frozen teacher and the method's modules, so the optimizer,
checkpoints and device placement see every trainable piece without extra code. Its forward asks the
models only for what the method ``needs`` (or reads the teacher's part from a teacher-output cache) and
returns the method's named terms and their sum. In eval mode it is just the student, so evaluation
costs no teacher forward.
"""

from __future__ import annotations

import math
import os
from collections import defaultdict
from typing import Any

import torch
from safetensors.torch import save_model
from torch import Tensor, nn
from torch.utils.data import Sampler, SequentialSampler
from transformers import PreTrainedModel, Trainer
from transformers.utils import SAFE_WEIGHTS_NAME

from distillbench.errors import NonFiniteLoss
from distillbench.method import DISTILL_MASK, EXAMPLE_INDEX, Method, Outputs
from distillbench.models import QKVCapture, freeze
from distillbench.task import Task
from distillbench.teacher_cache import TeacherCache


class Distiller(nn.Module):
    """Student + frozen teacher + method modules; ``forward`` returns ``{"loss", "terms"}`` in training."""

    def __init__(
        self,
        student: PreTrainedModel,
        teacher: PreTrainedModel | list[PreTrainedModel] | None,
        method: Method,
        task: Task,
        teacher_cache: TeacherCache | list[TeacherCache] | None = None,
        teacher_weights: list[float] | None = None,
    ) -> None:
        """``teacher`` (and ``teacher_cache``) may be a list: an ensemble, combined by the method's
        :meth:`~distillbench.method.Method.ensemble` with ``teacher_weights`` (default equal)."""
        super().__init__()
        members = teacher if isinstance(teacher, list) else [] if teacher is None else [teacher]
        self.student = student
        self.teacher = freeze(members[0]) if members else None
        self.other_teachers = nn.ModuleList(freeze(member) for member in members[1:])
        self.method_modules = method.modules
        self.method = method
        self.task = task
        if teacher_cache is None:
            teacher_cache = []
        self.teacher_caches = teacher_cache if isinstance(teacher_cache, list) else [teacher_cache]
        self.teacher_weights = teacher_weights or [1 / len(members) for _ in members]
        needs = method.needs
        self._model_kwargs = {
            "output_hidden_states": "hidden_states" in needs,
            "output_attentions": "attentions" in needs,
        }
        self._student_qkv = QKVCapture(student) if "qkv" in needs else None
        self._teacher_qkv = QKVCapture(self.teacher) if "qkv" in needs and self.teacher is not None else None

    def train(self, mode: bool = True) -> Distiller:
        """Keep the teacher and every fully frozen method module in eval mode (no dropout noise)."""
        super().train(mode)
        frozen = [m for m in self.method_modules.values() if not any(p.requires_grad for p in m.parameters())]
        for module in [self.teacher, *self.other_teachers, *frozen]:
            if module is not None:
                module.eval()
        return self

    def _run(self, model: PreTrainedModel, capture: QKVCapture | None, batch: dict[str, Tensor]) -> Outputs:
        raw = model(**{k: v for k, v in batch.items() if k != DISTILL_MASK}, **self._model_kwargs)
        return Outputs(
            raw=raw, distill=self.task.distill_targets(raw, batch), qkv=capture.collect() if capture else None
        )

    def forward(self, **batch: Tensor) -> Any:
        index = batch.pop(EXAMPLE_INDEX, None)
        if not self.training:
            return self.student(**batch)
        student = self._run(self.student, self._student_qkv, batch)
        other = self.method.distillation_batch(batch, self.student)
        if other is not None:  # distilled on another batch (the student's samples); the task term stays this one's
            task_loss, batch, index = student.loss, other, None
            student = self._run(self.student, self._student_qkv, batch)
            student.task_loss = task_loss
        members: list[Outputs] = []
        if self.teacher_caches and index is not None:
            length = batch["input_ids"].shape[1]
            members = [cache.lookup(index, length, index.device) for cache in self.teacher_caches]
        elif self.teacher is not None:
            with torch.no_grad():
                members = [self._run(self.teacher, self._teacher_qkv, batch)]
                members += [self._run(other, None, batch) for other in self.other_teachers]
        teacher = members[0] if len(members) == 1 else None
        if len(members) > 1:
            teacher = self.method.ensemble(members, self.teacher_weights)
        terms = self.method.loss(student, teacher, batch)
        return {"loss": torch.stack(list(terms.values())).sum(), "terms": terms}


class DistillTrainer(Trainer):
    """``transformers.Trainer`` that also logs every named loss term (``loss/<term>``) it sees.

    Any module whose training forward returns ``{"loss", "terms"}`` (the Distiller, a method stage)
    is trained by this one class; a plain Hugging Face model (a fine-tune stage) logs its loss as the
    ``task`` term.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._term_sums: dict[str, float] = defaultdict(float)
        self._term_counts = 0

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        outputs = model(**inputs)
        # a plain model (a fine-tune stage) is trained on its own loss: the task term, named as in a Distiller
        terms = outputs["terms"] if "terms" in outputs else {"task": outputs["loss"]}
        values = {k: float(v.detach()) for k, v in terms.items()}
        values["total"] = float(outputs["loss"].detach())
        bad = next((name for name, value in values.items() if not math.isfinite(value)), None)
        if bad is not None:
            # At once: the Trainer would otherwise leave the step's loss out of its log and go on training
            # on non-finite gradients, ending with a record that looks real.
            raise NonFiniteLoss(
                f"loss term {bad!r} became {values[bad]} at step {self.state.global_step + 1}; "
                "training stopped, the last good checkpoint is kept and no record is written"
            )
        for name in terms:
            self._term_sums[name] += values[name]
        self._term_counts += 1
        loss = outputs["loss"]
        return (loss, outputs) if return_outputs else loss

    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        """Save a Distiller or a stage module with ``safetensors.torch.save_model``, which writes tied
        weights (an MLM decoder sharing the word embeddings) once; the Trainer's default refuses them."""
        if isinstance(self.model, PreTrainedModel):
            return super()._save(output_dir, state_dict)
        folder = output_dir or self.args.output_dir
        os.makedirs(folder, exist_ok=True)
        save_model(self.model, os.path.join(folder, SAFE_WEIGHTS_NAME), metadata={"format": "pt"})

    def _issue_warnings_after_load(self, load_result: Any) -> None:
        """Resuming a Distiller or stage module: a tied weight (a decoder's LM head sharing the word
        embeddings) was saved once under its first name (:meth:`_save`), and is loaded through it, so its
        other name is "missing" by design; any other missing weight means a wrong checkpoint."""
        if isinstance(self.model, PreTrainedModel):
            return super()._issue_warnings_after_load(load_result)
        names_of: dict[int, list[str]] = defaultdict(list)
        for name, tensor in self.model.state_dict(keep_vars=True).items():
            names_of[id(tensor)].append(name)
        aliases = {name for names in names_of.values() if len(names) > 1 for name in names}
        missing = set(load_result.missing_keys) - aliases
        if missing or load_result.unexpected_keys:
            raise RuntimeError(
                f"checkpoint does not match the module: missing {sorted(missing)}, "
                f"unexpected {sorted(load_result.unexpected_keys)}"
            )

    def _get_eval_sampler(self, eval_dataset: Any) -> Sampler | None:
        """Dev batches in dataset order. ``transformers`` also length-groups evaluation when training is
        length-grouped; SQuAD maps predictions back to questions by position, so that would score the
        wrong windows, and stored predictions would not line up with their examples. Several processes
        read the same order: accelerate shards it by batch and its gather puts it back together."""
        return SequentialSampler(eval_dataset)

    def evaluate(self, eval_dataset: Any = None, ignore_keys: Any = None, metric_key_prefix: str = "eval"):
        """Evaluation leaves the RNG untouched (its DataLoader draws a seed from it), so training after
        an evaluation is the same whether or not it was resumed from a checkpoint saved at that step.
        ``eval_prefix`` tells a metrics callback which dev split it is scoring (MNLI has two)."""
        state = torch.get_rng_state()
        self.eval_prefix = metric_key_prefix
        try:
            return super().evaluate(eval_dataset, ignore_keys, metric_key_prefix)
        finally:
            torch.set_rng_state(state)

    def log(self, logs: dict[str, float], *args: Any, **kwargs: Any) -> None:
        if "loss" in logs and self._term_counts:
            logs.update({f"loss/{k}": v / self._term_counts for k, v in self._term_sums.items()})
            self._term_sums.clear()
            self._term_counts = 0
        super().log(logs, *args, **kwargs)
