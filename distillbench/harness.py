"""One run, end to end: the orchestrator that reads like the architecture.

    plan (planning.py) → data (training.RunData) → cached stages (stages.py) → distillation
    (distiller.py, trained by training.py, teacher outputs from teacher_cache.py) → record (records.py)

The harness knows the method and task APIs only: no method or task is named here.
"""

from __future__ import annotations

import contextlib
import shutil
import time
from pathlib import Path
from typing import Any

from transformers import AutoConfig, PretrainedConfig, PreTrainedModel, TrainerCallback, set_seed

from distillbench import distributed, provenance
from distillbench.atomic import write_json_atomic
from distillbench.budget import INPUT_KEYS, count, forward_gflops, typical_row, with_flops
from distillbench.cached import exclusive
from distillbench.distiller import Distiller
from distillbench.ensemble import ensemble_record, score_ensemble
from distillbench.errors import UserError
from distillbench.families import architecture
from distillbench.history import train_runtime
from distillbench.models import load_for_task, state_sha256, weights_sha256
from distillbench.output_caches import OutputCaches, cache_entry
from distillbench.planning import Plan, plan_run
from distillbench.portable import portable_path
from distillbench.predictions import EvalCapture, publish_predictions, write_predictions
from distillbench.records import student_record
from distillbench.stages import STAGE_PREDICTIONS, Stages
from distillbench.training import RunData, Training, check_aligned, last_complete_checkpoint
from distillbench.workspace import Paths, cache_root

__all__ = ["Paths", "Plan", "Runner", "cache_root", "plan_run"]


class Runner:
    """Executes a :class:`Plan`: shared data, cached stages, the distillation stage, the record."""

    def __init__(self, plan: Plan, callbacks: tuple[TrainerCallback, ...] = (), tags: dict | None = None) -> None:
        """``callbacks`` join the distillation stage's Trainer (e.g. Optuna pruning); ``tags`` go into
        the record (e.g. study name and trial number)."""
        self.plan = plan
        self.task = plan.task
        self.callbacks = callbacks
        self.tags = tags or {}
        # The code that runs is the code imported now: a checkout that moves later must not re-label it.
        self.git_at_start = provenance.git_state()
        distributed.start(provenance.hardware())  # launched as several processes: join them (no-op alone)
        self.data = RunData(plan, plan.student_tokenizer)  # the student's side
        self.training = Training(plan, self.data)
        # The teacher's side: the same data, or its own tokenisation when the tokenizers differ.
        self.teacher_data = RunData(plan) if plan.cross_tokenizer else self.data
        self.teacher_training = Training(plan, self.teacher_data) if plan.cross_tokenizer else self.training
        if plan.cross_tokenizer:
            check_aligned(self.data, self.teacher_data)
        self.caches = OutputCaches(plan, self.teacher_data)
        teacher_side = (self.teacher_data, self.teacher_training)
        self.stages = Stages(plan, self.data, self.training, self.caches, self.git_at_start, teacher_side)

    def run(self) -> dict[str, Any]:
        """Stages, distillation and record, holding the run's lock: a second process started with the
        same run (same key, same output folder) is refused at once instead of clobbering it."""
        out_dir = self.plan.output_folder
        lock = out_dir.with_name(out_dir.name + ".lock")
        with exclusive(lock, wait=False) if distributed.is_main() else contextlib.nullcontext():
            return self._run(out_dir)

    def _run(self, out_dir: Path) -> dict[str, Any]:
        started = time.time()
        plan, method = self.plan, self.plan.method
        if method.is_label_finetune and method.student_start == "pretrained" and not self.callbacks:
            shared = self._finetune_stage_run(out_dir, started)
            if shared is not None:
                return shared
        teachers, members = self._teachers()
        teacher_info = members[0] if len(members) == 1 else None
        if len(members) > 1:
            metrics = score_ensemble(self.teacher_training, teachers, plan.output_folder / "ensemble")
            teacher_info = ensemble_record(members, plan.teacher_weights, metrics)
        stage_states = {stage.name: self.stages.method_stage(stage) for stage in method.stages()}
        set_seed(plan.config.seed)  # the method's own modules (projections, filters) are part of the seeded run
        method.setup(stage_states)
        set_seed(plan.config.seed)
        student = self._student()
        student_init_sha = state_sha256(student)
        resumed_from = last_complete_checkpoint(out_dir)
        caches = [self.caches.for_teacher(model, info) for model, info in zip(teachers, members, strict=True)]
        live = not caches or None in caches  # every member from its cache, or every member live
        if live and teachers and plan.cross_tokenizer:
            raise UserError("the student's tokenizer differs from the teacher's, and no teacher-output cache was built")
        capture = EvalCapture(self.task, teachers[0] if teachers else self.stages.scorer())
        trainer = self.training.train(
            Distiller(student, teachers, method, self.task, None if live else caches, plan.teacher_weights),
            out_dir,
            plan.config.train,
            evaluate=True,
            stage=(f"{plan.config.method}-student", plan.run_name),
            callbacks=self.callbacks,
            indexed=not live,
            capture=capture,
        )
        metrics = self.training.evaluate(trainer)
        if not distributed.is_main():  # rank 0 writes the student, its predictions and the record
            distributed.barrier()
            return {"metrics": metrics, "_path": None}
        student.save_pretrained(out_dir / "student")
        self.data.tokenizer.save_pretrained(out_dir / "student")
        teacher_config = teachers[0].config if teachers else None
        extra_params = sum(p.numel() for p in method.modules.parameters())
        return self._write_record(
            out_dir,
            started,
            trainer.state.log_history,
            costs=self._costs(student, teachers[0] if teachers else None, extra_params),
            metrics=metrics,
            teacher=teacher_info,
            teacher_cache=None if live else cache_entry(caches),
            model=self._model_fields(out_dir, student.config, student_init_sha, teacher_config),
            predictions=write_predictions(plan.paths.results_dir, plan.run_name, capture),
            resumed_from=resumed_from and portable_path(resumed_from, plan.roots | {"output": plan.output_folder}),
        )

    def _finetune_stage_run(self, out_dir: Path, started: float) -> dict[str, Any] | None:
        """A run of the label fine-tune method is the cached ``student-finetune`` stage (built here or
        by an earlier run, e.g. TED's of the same seed): its model, dev evaluations and training log become
        the run's. None when the cached stage predates stored training logs: the run then trains as any."""
        folder, info = self.stages.finetuned("student")
        if "log_history" not in info:
            return None
        if not distributed.is_main():
            distributed.barrier()
            return {"metrics": info["metrics"], "_path": None}
        shutil.copytree(folder, out_dir / "student", dirs_exist_ok=True)
        initial_sha = info["settings"]["init"].get("initial_state_sha256")
        student = load_for_task(str(folder), self.task.model_class, self.task.model_kwargs(), False)
        return self._write_record(
            out_dir,
            started,
            info["log_history"],
            costs=self._costs(student, None, 0),
            metrics=info["metrics"],
            teacher=None,
            teacher_cache=None,
            model=self._model_fields(out_dir, AutoConfig.from_pretrained(folder), initial_sha, None),
            predictions=publish_predictions(
                self.plan.paths.results_dir, self.plan.run_name, folder.parent / STAGE_PREDICTIONS
            ),
            resumed_from=None,
        )

    def _model_fields(
        self, out_dir: Path, student: PretrainedConfig, initial_sha: str | None, teacher: PretrainedConfig | None
    ) -> dict[str, Any]:
        """The record's ``model``: what the student is, where it started and where it was saved."""
        plan = self.plan
        return {
            "student": self.stages.student_description(),
            "student_start": plan.method.student_start,
            # a start other than the method's own is a control of it ("kd (from fine-tuned)")
            "student_start_default": type(plan.method).hparams_for(plan.config.task, {}).student_start,
            "student_architecture": architecture(student),
            **({"teacher_architecture": architecture(teacher)} if teacher is not None else {}),
            "initial_state_sha256": initial_sha,
            "teacher_source": plan.identity(plan.teacher_source),
            **({"student_tokenizer": plan.identity(plan.student_tokenizer)} if plan.cross_tokenizer else {}),
            "teacher_source_sha256": weights_sha256(plan.teacher_source),
            "output_dir": portable_path((out_dir / "student").absolute(), plan.roots),
        }

    def _costs(self, student: PreTrainedModel, teacher: PreTrainedModel | None, extra_params: int) -> dict[str, Any]:
        """Forward GFLOPs of the student and the teacher on the median-length dev example (each on its
        own tokenisation), and the parameters of the method's own modules: what the budget's FLOPs need."""

        def gflops(model: PreTrainedModel, data: RunData) -> tuple[float, int]:
            rows = data.splits[self.task.eval_splits[0]]
            row = {k: v for k, v in rows[typical_row(rows)].items() if k in INPUT_KEYS}
            return forward_gflops(model, self.task.collator(data.tokenizer)([row])), len(row["input_ids"])

        student_gflops, length = gflops(student, self.data)
        return {
            "gflops_per_example": {
                "student": student_gflops,
                **({"teacher": gflops(teacher, self.teacher_data)[0]} if teacher is not None else {}),
            },
            "typical_length": length,
            "extra_params": extra_params,
            **({"sampling": sampling} if (sampling := self.plan.method.sampling(self.plan.method.hp)) else {}),
        }

    def _write_record(
        self, out_dir: Path, started: float, history: list[dict], costs: dict[str, Any], **fields: Any
    ) -> dict[str, Any]:
        """The student's record (rank 0), after the student and its predictions are written; its budget
        counted from the record's own fields (budget.py) with the ``costs`` measured in this run."""
        plan = self.plan
        record = student_record(
            plan,
            self.data,
            self._git_record(),
            history,
            majority_baseline=self.task.majority_baseline(self.data.splits),
            stages=self.stages.log,
            wall_time_s=time.time() - started,
            train_runtime_s=train_runtime(history),
            tags=self.tags,
            **fields,
        )
        record["budget"] = with_flops(count(record) | costs)
        path = plan.paths.results_dir / "runs" / f"{plan.run_name}.json"
        write_json_atomic(path, record)
        for checkpoint in out_dir.glob("checkpoint-*"):  # resuming is done: the saved student stays
            shutil.rmtree(checkpoint, ignore_errors=True)
        distributed.barrier()
        return dict(record) | {"_path": str(path)}

    def _teachers(self) -> tuple[list[PreTrainedModel], list[dict[str, Any]]]:
        """The fine-tuned teachers (cached stages, one per ensemble member) when the method distils."""
        if not self.plan.method.uses_teacher:
            return [], []
        task, attentions = self.task, "attentions" in self.plan.method.needs
        models, infos = [], []
        for member in range(max(1, len(self.plan.teachers))):
            folder, info = self.stages.finetuned("teacher", member)
            models.append(load_for_task(str(folder), task.model_class, task.model_kwargs(), attentions))
            infos.append(info)
        return models, infos

    def _student(self) -> PreTrainedModel:
        """The student the distillation starts from: fine-tuned first (cached) or as built."""
        task, attentions = self.task, "attentions" in self.plan.method.needs
        if self.plan.method.student_start == "finetuned":
            student_dir, _ = self.stages.finetuned("student")
            return load_for_task(str(student_dir), task.model_class, task.model_kwargs(), attentions)
        return self.stages.fresh_model("student", attentions)

    def _git_record(self) -> dict[str, Any]:
        """The commit at the start of the run, and the state at its end when the checkout changed meanwhile."""
        at_end = provenance.git_state()
        return self.git_at_start if at_end == self.git_at_start else {**self.git_at_start, "at_end": at_end}
