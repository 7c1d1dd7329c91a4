"""The cached stages a run may need before distillation: the teacher or the student fine-tuned on the
task's labels, and the stages a method declares (TED's filters).

A stage's folder is named by a key of everything that changes its result and built once under a lock
(:func:`cached.cached_folder`), so a teacher fine-tuned for one method is the teacher of every method,
and every student seed of a campaign with a pinned ``--teacher-seed`` shares it.
"""

from __future__ import annotations

import dataclasses
import shutil
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from safetensors.torch import load_file, save_file
from transformers import PreTrainedModel, set_seed

from distillbench import distributed
from distillbench.atomic import write_json_atomic
from distillbench.cached import MARKER, cached_folder, stable_key
from distillbench.config import BEFORE_INTRODUCED, TrainConfig
from distillbench.history import epoch_history, final_loss_terms, train_runtime
from distillbench.method import Stage
from distillbench.models import build_student, load_for_task, resolve_model, state_sha256, weights_sha256
from distillbench.output_caches import OutputCaches
from distillbench.portable import portable_path
from distillbench.predictions import EvalCapture, save_evaluations, write_predictions
from distillbench.records import stage_record

if TYPE_CHECKING:
    from distillbench.planning import Plan
    from distillbench.training import RunData, Training


STAGE_PREDICTIONS = "predictions.npz"  # a student fine-tune stage's dev evaluations, beside its model


def optional_stage_settings(cfg: TrainConfig) -> dict[str, Any]:
    """Settings added after stages were first cached enter a stage key only when they differ from their
    old behaviour (length grouping on, mixed precision, gradient accumulation), so older stages stay valid."""
    changed = {k: getattr(cfg, k) for k, before in BEFORE_INTRODUCED.items() if getattr(cfg, k) != before}
    return changed | distributed.key_part()


def stage_seed(plan: Plan, role: str, member: int = 0) -> int:
    """The seed of a stage that trains ``role``: the teacher side may be pinned (``--teacher-seed``) so
    that every student seed of a campaign distils from one teacher; each teacher of an ensemble has its
    own (``--teacher-seeds``)."""
    teacher_seed = plan.teachers[member].seed if plan.teachers else plan.config.teacher_seed
    return teacher_seed if role == "teacher" and teacher_seed is not None else plan.config.seed


def teacher_source(plan: Plan, member: int = 0) -> str:
    return plan.teachers[member].source if plan.teachers else plan.teacher_source


def finetune_settings(plan: Plan, role: str, member: int = 0, student: dict[str, Any] | None = None) -> dict[str, Any]:
    """Everything that changes a label fine-tune stage's result: its cache key. ``student``: the student
    spec as records name it (the student role only)."""
    config = plan.config
    if role == "teacher":
        init: dict[str, Any] = {
            "source": plan.identity(teacher_source(plan, member)),
            "weights_sha256": weights_sha256(teacher_source(plan, member)),
        }
    else:
        init = {"student": student, "teacher_source": plan.identity(plan.teacher_source)}
    cfg = config.train.for_role(role)
    return {
        "role": role,
        "init": init,
        "task": config.task,
        "data": plan.data_sha256,
        "lr": cfg.learning_rate,
        "epochs": cfg.epochs,
        "max_steps": cfg.max_steps,
        "seed": stage_seed(plan, role, member),
        "train": {
            k: getattr(cfg, k)
            for k in ("batch_size", "warmup_steps", "weight_decay", "max_seq_length", "max_train_samples")
        },
        **({"task_options": config.task_options} if config.task_options else {}),
        # a student with its own tokenizer trains on another tokenisation (the teacher's key is unchanged)
        **({"tokenizer": plan.identity(plan.student_tokenizer)} if role == "student" and plan.cross_tokenizer else {}),
        **optional_stage_settings(cfg),
    }


def finetune_folder(plan: Plan, settings: dict[str, Any]) -> Path:
    """Where a label fine-tune stage with these settings is cached."""
    return plan.paths.cache_dir / "stages" / f"{plan.config.task}-{settings['role']}-finetune-{stable_key(settings)}"


def teacher_stages_cached(plan: Plan) -> bool:
    """Whether the fine-tuned teacher (every member of an ensemble) is already complete in the cache."""
    if plan.config.teacher_finetuned:
        return True
    members = range(len(plan.teachers)) if plan.ensemble else [0]
    folders = [finetune_folder(plan, finetune_settings(plan, "teacher", member)) for member in members]
    return all((folder / MARKER).is_file() for folder in folders)


def with_cached_full_teacher(plan: Plan) -> Plan:
    """A step-bounded run (``--max-steps``) bounds its teacher stage too — unless the teacher fine-tuned
    at the full budget is already in the cache: then the run reads it, as it costs nothing."""
    train = plan.config.train
    if train.teacher_max_steps <= 0 or plan.config.teacher_finetuned:
        return plan
    full = dataclasses.replace(
        plan, config=dataclasses.replace(plan.config, train=dataclasses.replace(train, teacher_max_steps=-1))
    )
    return full if teacher_stages_cached(full) else plan


class Stages:
    """Builds (or finds) the cached stages of one run; ``log`` collects what each stage reported."""

    def __init__(
        self,
        plan: Plan,
        data: RunData,
        training: Training,
        caches: OutputCaches,
        git: dict,
        teacher_side: tuple[RunData, Training] | None = None,
    ) -> None:
        """``git``: the code's state when the run started, for the records of the stages it builds;
        ``teacher_side``: the teacher's own data and training when it tokenises differently."""
        self.plan = plan
        self.git = git
        self.sides = {"student": (data, training), "teacher": teacher_side or (data, training)}
        self.caches = caches
        self.task = plan.task
        self.log: dict[str, Any] = {}

    def _log(self, name: str, info: dict[str, Any], built: bool) -> None:
        """Record a stage; one built earlier in this run stays ``built_here`` when it is asked for again
        (TED's Stage I builds the fine-tuned student that Stage II then loads from the cache)."""
        built_before = self.log.get(name, {}).get("built_here", False)
        self.log[name] = info | {"built_here": built or built_before}

    def seed_of(self, role: str, member: int = 0) -> int:
        return stage_seed(self.plan, role, member)

    def teacher_source(self, member: int = 0) -> str:
        return teacher_source(self.plan, member)

    def student_description(self) -> dict[str, Any]:
        """The student spec with its source and origin named portably."""
        described = self.plan.student_spec.describe()
        if described.get("source"):
            described["source"] = self.plan.identity(described["source"])
        if described.get("origin"):
            origin = described["origin"]
            described["origin"] = origin | {"record": portable_path(origin["record"], self.plan.roots)}
        return described

    def fresh_model(self, role: str, attentions: bool = False, member: int = 0) -> PreTrainedModel:
        """The pretrained teacher (``member`` of an ensemble) or the initial student, with the task's head."""
        plan, task = self.plan, self.task
        if role == "teacher":
            return load_for_task(self.teacher_source(member), task.model_class, task.model_kwargs(), attentions)
        return build_student(plan.student_spec, plan.teacher_source, task.model_class, task.model_kwargs(), attentions)

    def finetuned(self, role: str, member: int = 0) -> tuple[Path, dict[str, Any]]:
        """The teacher (``member`` of an ensemble) or the student fine-tuned on the task's labels, cached;
        returns (folder, info)."""
        config = self.plan.config
        data, training = self.sides[role]
        if role == "teacher" and config.teacher_finetuned:
            source = resolve_model(config.teacher_finetuned)
            info = {"source": self.plan.identity(source), "weights_sha256": weights_sha256(source), "trained": False}
            return Path(source), info
        settings = finetune_settings(self.plan, role, member, self.student_description())
        init = settings["init"]
        cfg = config.train.for_role(role)
        folder = finetune_folder(self.plan, settings)
        name = f"teacher-{member + 1}-finetune" if role == "teacher" and self.plan.ensemble else f"{role}-finetune"

        def build(folder: Path) -> dict[str, Any]:
            started = time.time()
            set_seed(self.seed_of(role, member))
            model = self.fresh_model(role, member=member)
            self.task.prepare_model(model, role)
            init["initial_state_sha256"] = state_sha256(model)
            capture = EvalCapture(self.task, self.scorer() if role == "student" else None)
            seed = self.seed_of(role, member)
            stage = (name, folder.name)
            trainer = training.train(
                model, folder / "trainer", cfg, evaluate=True, stage=stage, capture=capture, seed=seed
            )
            metrics = training.evaluate(trainer)
            info = {"key": folder.name, "settings": settings, "metrics": metrics}
            if not distributed.is_main():
                return info  # rank 0 saves the model and writes the marker; this process reads it
            model.save_pretrained(folder / "model")
            data.tokenizer.save_pretrained(folder / "model")
            shutil.rmtree(folder / "trainer")  # the finished model is kept; its resume checkpoints are not
            info = {
                "key": folder.name,
                "settings": settings,
                "metrics": metrics,
                "epochs": epoch_history(trainer.state.log_history, self.task),
                "wall_time_s": time.time() - started,
                "weights_sha256": weights_sha256(str(folder / "model")),
            }
            if role == "student":  # what a run of the label fine-tune method reports (Runner._finetune_stage_run)
                info["log_history"] = trainer.state.log_history
                if capture.evaluations:
                    save_evaluations(folder / STAGE_PREDICTIONS, capture)
            if role == "teacher" and config.teacher_chosen_by:  # not in the key: the settings it chose are
                info["chosen_by"] = config.teacher_chosen_by
            if role == "teacher":
                predictions = write_predictions(self.plan.paths.results_dir, info["key"], capture)
                history = trainer.state.log_history
                record = stage_record(self.plan, data, self.git, role, seed, info, history, predictions)
                write_json_atomic(self.plan.paths.results_dir / "runs" / f"{info['key']}.json", record)
            return info

        info, built = cached_folder(folder, build)
        self._log(name, info, built)
        return folder / "model", info

    def scorer(self) -> PreTrainedModel | None:
        """The fine-tuned teacher, which scores a student's generations on a task that generates (built
        first if no run built it yet); None for every other task."""
        if not self.task.scores_generations:
            return None
        folder, _ = self.finetuned("teacher")
        return load_for_task(str(folder), self.task.model_class, self.task.model_kwargs(), False)

    def method_stage(self, stage: Stage) -> dict[str, torch.Tensor]:
        """Run one declared method stage on the fine-tuned model it names, cached by its key."""
        base_dir, base_info = self.finetuned(stage.model)
        training = self.sides[stage.model][1]
        cfg = self.plan.config.train.for_role(stage.model)
        if stage.learning_rate is not None:
            cfg = dataclasses.replace(cfg, learning_rate=stage.learning_rate)
        seed = self.seed_of(stage.model)
        settings = {
            "stage": stage.name,
            "base": base_info.get("key", str(base_dir)),
            "hparams": stage.hparams,
            "lr": cfg.learning_rate,
            "epochs": cfg.epochs,
            "max_steps": cfg.max_steps,
            "seed": seed,
            "data": self.plan.data_sha256,
            "batch_size": cfg.batch_size,
            "max_train_samples": cfg.max_train_samples,
            **optional_stage_settings(cfg),
        }
        folder = self.plan.paths.cache_dir / "stages" / f"{self.plan.config.task}-{stage.name}-{stable_key(settings)}"

        def build(folder: Path) -> dict[str, Any]:
            started = time.time()
            model = load_for_task(str(base_dir), self.task.model_class, self.task.model_kwargs(), False)
            features = None
            if stage.frozen_layers is not None and cfg.teacher_cache != "off" and self.task.deterministic_inputs:
                base_key = base_info.get("key") or base_info.get("weights_sha256")
                first_only = self.task.head_reads_first_position  # a [CLS] head needs no other position
                features = self.caches.build(model, base_key, stage.frozen_layers, cfg, first_only)
            set_seed(seed)
            module = stage.build(model, self.task)
            module.features = features
            indexed = features is not None
            trainer = training.train(
                module,
                folder / "trainer",
                cfg,
                evaluate=False,
                stage=(stage.name, folder.name),
                indexed=indexed,
                seed=seed,
            )
            if not distributed.is_main():
                return {"key": folder.name}  # rank 0 saves the filters and writes the marker
            save_file({k: v.contiguous() for k, v in module.extra.state_dict().items()}, folder / "extra.safetensors")
            shutil.rmtree(folder / "trainer")
            return {
                "key": folder.name,
                "settings": settings,
                "wall_time_s": time.time() - started,
                "train_runtime_s": train_runtime(trainer.state.log_history),
                "loss_terms": final_loss_terms(trainer.state.log_history),
                "read_cache": features.folder.name if features is not None else None,
            }

        info, built = cached_folder(folder, build)
        self._log(stage.name, info, built)
        return load_file(folder / "extra.safetensors")
