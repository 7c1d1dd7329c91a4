"""The path of one run: plan (validate everything, write nothing) → cached stages → distill → record.

Stages are cached under a key of everything that changes their result, so a teacher fine-tuned once is
reused by every method; every stage is trained by the same ``train_module`` (``transformers.Trainer``).
The harness knows the method and task APIs only: no method or task is named here.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from datasets import DatasetDict
from safetensors.torch import load_file, save_file
from transformers import AutoTokenizer, TrainerCallback, TrainingArguments, set_seed

from distillbench import provenance
from distillbench.cached import cached_folder, exclusive
from distillbench.config import BEFORE_INTRODUCED, RunConfig, TrainConfig, result_settings
from distillbench.distiller import Distiller, DistillTrainer
from distillbench.errors import UserError
from distillbench.fields import check_fields
from distillbench.method import Method, ModelPair, Stage, get_method
from distillbench.models import (
    StudentSpec,
    build_student,
    load_config,
    load_for_task,
    resolve_model,
    state_sha256,
    student_config,
    weights_sha256,
)
from distillbench.portable import model_identity, portable_command, portable_path
from distillbench.predictions import EvalCapture, write_predictions
from distillbench.records import RECORD_VERSION, write_json_atomic
from distillbench.task import Task, get_task, resolve_data_dir
from distillbench.teacher_cache import CacheSpec, TeacherCache, build_cache, estimated_bytes, with_index

CACHE_ENV = "DISTILLBENCH_CACHE"


def cache_root() -> Path:
    return Path(os.environ.get(CACHE_ENV, Path.home() / ".cache" / "distillbench")).expanduser()


def last_complete_checkpoint(folder: Path) -> str | None:
    """The newest ``checkpoint-N`` whose trainer state was written (the Trainer writes it last), so a
    run killed in the middle of saving resumes from the previous, complete checkpoint."""
    if not folder.is_dir():
        return None
    complete = [p for p in folder.glob("checkpoint-*") if (p / "trainer_state.json").is_file()]
    return str(max(complete, key=lambda p: int(p.name.split("-")[1]))) if complete else None


def stable_key(parts: dict[str, Any]) -> str:
    """16 hex digits of sha256 over the canonical JSON of ``parts``."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


@dataclass
class Paths:
    results_dir: Path = Path("results")
    output_dir: Path | None = None
    cache_dir: Path = field(default_factory=cache_root)
    show_progress: bool = True


@dataclass
class Plan:
    """A validated run: everything resolved, nothing written yet."""

    config: RunConfig
    paths: Paths
    task: Task
    method: Method
    teacher_source: str
    student_spec: StudentSpec
    data_sha256: str
    key: str

    @property
    def run_name(self) -> str:
        return f"{self.config.task}-{self.config.method}-seed{self.config.seed}-{self.key}"

    @property
    def roots(self) -> dict[str, Path | None]:
        """The named folders a record's paths are stored relative to (see portable.py)."""
        return {"data": self.task.data_dir, "results": self.paths.results_dir, "cache": self.paths.cache_dir}

    def identity(self, source: str) -> str:
        """How records and stage keys name a model: the same on every machine."""
        return model_identity(source, self.roots)


def plan_run(config: RunConfig, paths: Paths, identity: dict[str, Any] | None = None) -> Plan:
    """Resolve names, models, data and hyper-parameters; every user error surfaces here.

    ``identity`` separates runs that share a configuration on purpose (e.g. the trials of a study);
    it enters the run key, hence the output folder and the record name."""
    method_cls = get_method(config.method)
    task_cls = get_task(config.task)
    for what, folder in (("results", paths.results_dir), ("cache", paths.cache_dir), ("output", paths.output_dir)):
        if folder is not None and folder.exists() and not folder.is_dir():
            raise UserError(f"{what} folder {folder} is a file")
    check_fields(config.train, "--set")
    if config.train.bf16 and config.train.fp16:
        raise UserError("--set bf16=true and fp16=true: choose one mixed precision")
    try:
        options = task_cls.options_for(config.task_options)
    except (TypeError, ValueError) as error:
        raise UserError(f"{config.task}: {error}") from None
    check_fields(options, f"{config.task} option")
    task = task_cls(resolve_data_dir(config.data_dir), options)
    task.data_files()  # raises on missing files before anything is written
    teacher_source = resolve_model(config.teacher)
    if config.teacher_finetuned:
        load_config(resolve_model(config.teacher_finetuned))
    teacher_config = load_config(teacher_source)
    positions = getattr(teacher_config, "max_position_embeddings", None)
    if positions and config.train.max_seq_length > positions:
        raise UserError(f"--set max_seq_length={config.train.max_seq_length}: the teacher has {positions} positions")
    student_spec = StudentSpec.parse(
        config.student, config.student_layers, config.student_layer_ids, teacher_config.num_hidden_layers
    )
    s_config = student_config(student_spec, teacher_config)
    if s_config.vocab_size != teacher_config.vocab_size:
        raise UserError(
            f"student vocabulary ({s_config.vocab_size}) differs from the teacher's "
            f"({teacher_config.vocab_size}); both must share one tokenizer"
        )
    hp = method_cls.hparams_for(config.task, config.method_overrides)
    check_fields(hp, config.method)
    method = method_cls(hp, task, ModelPair(student=s_config, teacher=teacher_config))
    check_teacher_cache(config, method, task)
    data_sha = task.data_sha256()
    key = stable_key(
        {
            "method": config.method,
            "task": config.task,
            "hparams": dataclasses.asdict(hp),
            "train": result_settings(config.train),
            "seed": config.seed,
            **({"teacher_seed": config.teacher_seed} if config.teacher_seed is not None else {}),
            "teacher": teacher_identity(config),
            "student": student_spec.describe(),
            "data": data_sha,
            **({"identity": identity} if identity else {}),
            **({"task_options": config.task_options} if config.task_options else {}),
        }
    )
    return Plan(config, paths, task, method, teacher_source, student_spec, data_sha, key)


def teacher_identity(config: RunConfig) -> dict[str, Any]:
    return {"source": config.teacher, "finetuned": config.teacher_finetuned}


class Runner:
    """Executes a :class:`Plan`: shared data, cached stages, the distillation stage, the record."""

    def __init__(self, plan: Plan, callbacks: tuple[TrainerCallback, ...] = (), tags: dict | None = None) -> None:
        """``callbacks`` join the distillation stage's Trainer (e.g. Optuna pruning); ``tags`` go into
        the record (e.g. study name and trial number)."""
        self.plan = plan
        self.callbacks = callbacks
        self.tags = tags or {}
        self.config = plan.config
        self.train_cfg: TrainConfig = plan.config.train
        self.task = plan.task
        # The code that runs is the code imported now: a checkout that moves later must not re-label it.
        self.git_at_start = provenance.git_state()
        self.tokenizer = AutoTokenizer.from_pretrained(plan.teacher_source)
        self.data = self._tokenised_data()
        self.stage_log: dict[str, Any] = {}

    # data ---------------------------------------------------------------------------------------
    def _tokenised_data(self) -> DatasetDict:
        return self.task.preprocess(self.task.load(), self.tokenizer, self.train_cfg.max_seq_length)

    def train_split(self, max_train_samples: int | None, indexed: bool = False):
        """The training set, or a seeded random subset of it (a student-side budget); ``indexed``
        adds each row's position in the full set (the teacher cache's key)."""
        train = with_index(self.data["train"]) if indexed else self.data["train"]
        if max_train_samples is None or max_train_samples >= len(train):
            return train
        return train.shuffle(seed=self.config.seed).select(range(max_train_samples))

    def eval_data(self):
        """The dev split, or a dict of them when a task scores several (MNLI matched/mismatched)."""
        splits = self.task.eval_splits
        return self.data[splits[0]] if len(splits) == 1 else {s: self.data[s] for s in splits}

    # training -----------------------------------------------------------------------------------
    def training_arguments(
        self, out_dir: Path, cfg: TrainConfig, evaluate: bool, seed: int | None = None
    ) -> TrainingArguments:
        """The Trainer's arguments for one stage under ``cfg``; ``seed`` (default: the run's) seeds its
        data order and dropout: a teacher-side stage passes the teacher seed, so it is the same stage
        whichever student seed's run happens to build it."""
        return TrainingArguments(
            output_dir=str(out_dir),
            per_device_train_batch_size=cfg.batch_size,
            per_device_eval_batch_size=cfg.eval_batch_size,
            learning_rate=cfg.learning_rate,
            num_train_epochs=cfg.epochs,
            max_steps=cfg.max_steps,
            warmup_steps=cfg.warmup_steps,
            weight_decay=cfg.weight_decay,
            eval_strategy="epoch" if evaluate and cfg.eval_strategy == "epoch" else "no",
            save_strategy="steps",
            save_steps=cfg.save_steps,
            save_total_limit=1,
            logging_steps=cfg.logging_steps,
            seed=self.config.seed if seed is None else seed,
            report_to="none",
            remove_unused_columns=False,
            label_names=list(self.task.label_keys),
            disable_tqdm=not self.plan.paths.show_progress,
            use_cpu=not torch.cuda.is_available(),
            train_sampling_strategy="group_by_length" if cfg.group_by_length else "random",
            bf16=cfg.bf16,
            fp16=cfg.fp16,
            gradient_accumulation_steps=cfg.gradient_accumulation_steps,
            torch_compile=cfg.torch_compile,
            dataloader_num_workers=cfg.dataloader_num_workers,
        )

    def trainer(
        self,
        module: torch.nn.Module,
        args: TrainingArguments,
        train_dataset: Any,
        data_collator: Any = None,
        callbacks: tuple[TrainerCallback, ...] = (),
        capture: EvalCapture | None = None,
    ) -> DistillTrainer:
        """A :class:`DistillTrainer` evaluating on the task's dev split(s) with the task's metric;
        ``capture`` keeps every evaluation's per-example predictions."""
        trainer = DistillTrainer(
            model=module,
            args=args,
            train_dataset=train_dataset,
            eval_dataset=self.eval_data(),
            data_collator=data_collator or self.task.collator(self.tokenizer),
            compute_metrics=capture or (lambda p: self.task.compute_metrics(p.predictions, p.label_ids)),
            preprocess_logits_for_metrics=self.task.reduce_eval_logits,
            callbacks=list(callbacks),
        )
        if capture is not None:
            capture.attach(trainer)
        return trainer

    def train_module(
        self,
        module: torch.nn.Module,
        out_dir: Path,
        cfg: TrainConfig,
        evaluate: bool,
        callbacks: tuple[TrainerCallback, ...] = (),
        indexed: bool = False,
        capture: EvalCapture | None = None,
        seed: int | None = None,
    ) -> DistillTrainer:
        """Train any module with the Trainer under ``cfg``, resuming from the last checkpoint in ``out_dir``."""
        args = self.training_arguments(out_dir, cfg, evaluate, seed)
        train = self.train_split(cfg.max_train_samples, indexed)
        trainer = self.trainer(module, args, train, callbacks=callbacks, capture=capture)
        trainer.train(resume_from_checkpoint=last_complete_checkpoint(out_dir))
        return trainer

    def evaluate(self, trainer: DistillTrainer) -> dict[str, float]:
        """Final dev metrics, reusing the last per-epoch evaluation when it ran at the last step."""
        history = epoch_history(trainer.state.log_history, self.task)
        if history and history[-1]["step"] == trainer.state.global_step:
            return history[-1]["metrics"]
        return flatten_metrics(trainer.evaluate(), self.task)

    # stages -------------------------------------------------------------------------------------
    def finetuned(self, role: str) -> tuple[Path, dict[str, Any]]:
        """The teacher or the student fine-tuned on the task's labels, cached; returns (folder, info)."""
        cfg, config = self.train_cfg, self.config
        if role == "teacher" and config.teacher_finetuned:
            source = resolve_model(config.teacher_finetuned)
            info = {"source": self.plan.identity(source), "weights_sha256": weights_sha256(source), "trained": False}
            return Path(source), info
        if role == "teacher":
            init: dict[str, Any] = {
                "source": self.plan.identity(self.plan.teacher_source),
                "weights_sha256": weights_sha256(self.plan.teacher_source),
            }
        else:
            init = {
                "student": self.student_description(),
                "teacher_source": self.plan.identity(self.plan.teacher_source),
            }
        role_cfg = cfg.for_role(role)
        settings = {
            "role": role,
            "init": init,
            "task": config.task,
            "data": self.plan.data_sha256,
            "lr": role_cfg.learning_rate,
            "epochs": role_cfg.epochs,
            "max_steps": role_cfg.max_steps,
            "seed": self.seed_of(role),
            "train": {
                k: getattr(role_cfg, k)
                for k in ("batch_size", "warmup_steps", "weight_decay", "max_seq_length", "max_train_samples")
            },
            **({"task_options": config.task_options} if config.task_options else {}),
            **optional_stage_settings(role_cfg),
        }
        folder = self.plan.paths.cache_dir / "stages" / f"{config.task}-{role}-finetune-{stable_key(settings)}"

        def build(folder: Path) -> dict[str, Any]:
            started = time.time()
            set_seed(self.seed_of(role))
            if role == "teacher":
                model = load_for_task(self.plan.teacher_source, self.task.model_class, self.task.model_kwargs(), False)
            else:
                model = build_student(
                    self.plan.student_spec,
                    self.plan.teacher_source,
                    self.task.model_class,
                    self.task.model_kwargs(),
                    False,
                )
            self.task.prepare_model(model, role)
            init["initial_state_sha256"] = state_sha256(model)
            capture = EvalCapture(self.task)
            trainer = self.train_module(
                model, folder / "trainer", role_cfg, evaluate=True, capture=capture, seed=self.seed_of(role)
            )
            metrics = self.evaluate(trainer)
            model.save_pretrained(folder / "model")
            self.tokenizer.save_pretrained(folder / "model")
            shutil.rmtree(folder / "trainer")  # the finished model is kept; its resume checkpoints are not
            info = {
                "key": folder.name,
                "settings": settings,
                "metrics": metrics,
                "epochs": epoch_history(trainer.state.log_history, self.task),
                "wall_time_s": time.time() - started,
                "weights_sha256": weights_sha256(str(folder / "model")),
            }
            if role == "teacher":
                self._write_stage_record(role, info, trainer, capture)
            return info

        info, _ = cached_folder(folder, build)
        self.stage_log[f"{role}-finetune"] = info
        return folder / "model", info

    def seed_of(self, role: str) -> int:
        """The seed of a stage that trains ``role``: the teacher side may be pinned (``--teacher-seed``) so
        that every student seed of a campaign distils from one teacher."""
        teacher_seed = self.config.teacher_seed
        return teacher_seed if role == "teacher" and teacher_seed is not None else self.config.seed

    def student_description(self) -> dict[str, Any]:
        """The student spec with its source and origin named portably."""
        described = self.plan.student_spec.describe()
        if described.get("source"):
            described["source"] = self.plan.identity(described["source"])
        if described.get("origin"):
            origin = described["origin"]
            described["origin"] = origin | {"record": portable_path(origin["record"], self.plan.roots)}
        return described

    def _write_stage_record(
        self, role: str, info: dict[str, Any], trainer: DistillTrainer, capture: EvalCapture
    ) -> None:
        record = self._base_record(method="finetune", role=role, key=info["key"])
        record["seed"] = self.seed_of(role)
        record.update(
            {
                "metrics": info["metrics"],
                "epochs": info["epochs"],
                "best_epoch": best_epoch(info["epochs"], self.task),
                "loss_terms": final_loss_terms(trainer.state.log_history),
                "train": dataclasses.asdict(self.train_cfg.for_role(role)),
                "hparams": {},
                "model": info["settings"]["init"] | {"finetuned_sha256": info["weights_sha256"]},
                "wall_time_s": info["wall_time_s"],
                "predictions": write_predictions(self.plan.paths.results_dir, info["key"], capture),
            }
        )
        write_json_atomic(self.plan.paths.results_dir / "runs" / f"{info['key']}.json", record)

    def method_stage(self, stage: Stage) -> dict[str, torch.Tensor]:
        """Run one declared method stage on the fine-tuned model it names, cached by its key."""
        base_dir, base_info = self.finetuned(stage.model)
        cfg = self.train_cfg.for_role(stage.model)
        if stage.learning_rate is not None:
            cfg = dataclasses.replace(cfg, learning_rate=stage.learning_rate)
        settings = {
            "stage": stage.name,
            "base": base_info.get("key", str(base_dir)),
            "hparams": stage.hparams,
            "lr": cfg.learning_rate,
            "epochs": cfg.epochs,
            "max_steps": cfg.max_steps,
            "seed": self.seed_of(stage.model),
            "data": self.plan.data_sha256,
            "batch_size": cfg.batch_size,
            "max_train_samples": cfg.max_train_samples,
            **optional_stage_settings(cfg),
        }
        folder = self.plan.paths.cache_dir / "stages" / f"{self.config.task}-{stage.name}-{stable_key(settings)}"

        def build(folder: Path) -> dict[str, Any]:
            started = time.time()
            model = load_for_task(str(base_dir), self.task.model_class, self.task.model_kwargs(), False)
            features = None
            if stage.frozen_layers is not None and cfg.teacher_cache != "off" and self.task.deterministic_inputs:
                base_key = base_info.get("key") or base_info.get("weights_sha256")
                first_only = self.task.head_reads_first_position  # a [CLS] head needs no other position
                features = self.output_cache(model, base_key, stage.frozen_layers, cfg, first_only)
            set_seed(self.seed_of(stage.model))
            module = stage.build(model, self.task)
            module.features = features
            trainer = self.train_module(
                module,
                folder / "trainer",
                cfg,
                evaluate=False,
                indexed=features is not None,
                seed=self.seed_of(stage.model),
            )
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

        self.stage_log[stage.name], _ = cached_folder(folder, build)
        return load_file(folder / "extra.safetensors")

    def teacher_cache(self, teacher: torch.nn.Module, teacher_info: dict[str, Any]) -> TeacherCache | None:
        """The teacher-output cache this run reads, built on first use; ``None`` when switched off, when
        the method or the task needs a live teacher, or (``auto``) when a new cache would not pay."""
        cfg, method, task = self.train_cfg, self.plan.method, self.task
        if cfg.teacher_cache == "off" or cache_refusal(self.config, method, task):
            return None
        model_key = teacher_info.get("key") or teacher_info.get("weights_sha256")
        return self.output_cache(teacher, model_key, method.cached_teacher_layers() or (), cfg)

    def output_cache(
        self,
        model: torch.nn.Module,
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
        task = self.task
        layers = tuple(sorted(set(layers)))
        spec = CacheSpec(layers, cfg.teacher_cache_dtype, task.per_token_distill, first_position_only)
        settings = {
            "teacher": model_key,
            "task": self.config.task,
            "data": self.plan.data_sha256,
            "tokenizer": self.plan.identity(self.plan.teacher_source),
            "max_seq_length": cfg.max_seq_length,
            "layers": list(spec.layers),
            "dtype": spec.dtype,
            **({"task_options": self.config.task_options} if self.config.task_options else {}),
            **({"first_position_only": True} if first_position_only else {}),
        }
        folder = self.plan.paths.cache_dir / "teacher-outputs" / f"{self.config.task}-{stable_key(settings)}"
        lengths = [len(ids) for ids in self.data["train"]["input_ids"]]
        size = estimated_bytes(lengths, spec, model.config.hidden_size)
        skip = None
        if size > cfg.teacher_cache_max_gb * 2**30:
            skip = f"it would take {size / 2**30:.1f} GiB > teacher_cache_max_gb={cfg.teacher_cache_max_gb}"
        elif self.rows_to_train(cfg) < len(lengths):
            skip = "this run trains on fewer rows than building it would run the teacher on"
        if cfg.teacher_cache == "auto" and not folder.is_dir() and skip:
            print(f"teacher cache skipped: {skip} (--teacher-cache on builds it anyway)", file=sys.stderr)
            return None
        cache = build_cache(
            folder,
            model,
            with_index(self.data["train"]),
            task,
            self.tokenizer,
            spec,
            cfg.eval_batch_size,
            self.plan.paths.show_progress,
        )
        print(
            f"output cache {folder.name} ({cache.disk_bytes / 2**20:.1f} MiB, {spec.dtype}, "
            f"max rounding error {cache.meta['max_abs_rounding_error']:.2e})",
            file=sys.stderr,
        )
        return cache

    def rows_to_train(self, cfg: TrainConfig) -> float:
        """How many training rows the student stage will draw (its teacher forwards without a cache)."""
        if cfg.max_steps > 0:
            return cfg.max_steps * cfg.batch_size
        return cfg.epochs * len(self.train_split(cfg.max_train_samples))

    # the run ------------------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        """Stages, distillation and record, holding the run's lock: a second process started with the
        same run (same key, same output folder) is refused at once instead of clobbering it."""
        out_dir = self.plan.paths.output_dir or Path("outputs") / self.plan.run_name
        with exclusive(out_dir.with_name(out_dir.name + ".lock"), wait=False):
            return self._run(out_dir)

    def _run(self, out_dir: Path) -> dict[str, Any]:
        started = time.time()
        plan, config, method, task = self.plan, self.config, self.plan.method, self.task
        attentions = "attentions" in method.needs
        teacher = teacher_info = None
        if method.uses_teacher:
            teacher_dir, teacher_info = self.finetuned("teacher")
            teacher = load_for_task(str(teacher_dir), task.model_class, task.model_kwargs(), attentions)
        stage_states = {stage.name: self.method_stage(stage) for stage in method.stages()}
        set_seed(config.seed)  # the method's own modules (projections, filters) are part of the seeded run
        method.setup(stage_states)
        set_seed(config.seed)
        if method.student_start == "finetuned":
            student_dir, _ = self.finetuned("student")
            student = load_for_task(str(student_dir), task.model_class, task.model_kwargs(), attentions)
        else:
            student = build_student(
                plan.student_spec, plan.teacher_source, task.model_class, task.model_kwargs(), attentions
            )
        student_init_sha = state_sha256(student)
        resumed_from = last_complete_checkpoint(out_dir)
        cfg = self.train_cfg
        cache = self.teacher_cache(teacher, teacher_info) if teacher is not None else None
        distiller = Distiller(student, teacher, method, task, cache)
        capture = EvalCapture(task)
        trainer = self.train_module(
            distiller, out_dir, cfg, evaluate=True, callbacks=self.callbacks, indexed=cache is not None, capture=capture
        )
        metrics = self.evaluate(trainer)
        student.save_pretrained(out_dir / "student")
        self.tokenizer.save_pretrained(out_dir / "student")
        epochs = epoch_history(trainer.state.log_history, task)
        record = self._base_record(method=config.method, role="student", key=plan.key)
        record.update(
            {
                "hparams": dataclasses.asdict(method.hp),
                "train": dataclasses.asdict(cfg),
                "metrics": metrics,
                "epochs": epochs,
                "best_epoch": best_epoch(epochs, task),
                "loss_terms": final_loss_terms(trainer.state.log_history),
                "loss_history": loss_history(trainer.state.log_history),
                "teacher": teacher_info,
                "teacher_cache": cache.meta | {"key": cache.folder.name} if cache else None,
                "stages": self.stage_log,
                "model": {
                    "student": self.student_description(),
                    "student_start": method.student_start,
                    "initial_state_sha256": student_init_sha,
                    "teacher_source": plan.identity(plan.teacher_source),
                    "teacher_source_sha256": weights_sha256(plan.teacher_source),
                    "output_dir": portable_path((out_dir / "student").absolute(), plan.roots),
                },
                "predictions": write_predictions(plan.paths.results_dir, plan.run_name, capture),
                "resumed_from": resumed_from,
                "wall_time_s": time.time() - started,
                "train_runtime_s": train_runtime(trainer.state.log_history),
                "tags": self.tags,
            }
        )
        path = plan.paths.results_dir / "runs" / f"{plan.run_name}.json"
        write_json_atomic(path, record)
        return record | {"_path": str(path)}

    def _setting(self) -> str:
        """``task-specific``, or where the student came from when an earlier run pre-trained it."""
        origin = self.plan.student_spec.origin
        if origin and origin.get("task") == "pretrain":
            return f"after {origin['method']} pre-training"
        return "task-specific"

    def _git_record(self) -> dict[str, Any]:
        """The commit at the start of the run, and the state at its end when the checkout changed meanwhile."""
        at_end = provenance.git_state()
        return self.git_at_start if at_end == self.git_at_start else {**self.git_at_start, "at_end": at_end}

    def _base_record(self, method: str, role: str, key: str) -> dict[str, Any]:
        plan = self.plan
        return {
            "kind": "run",
            "version": RECORD_VERSION,
            "status": "complete",
            "run_id": key,
            "method": method,
            "task": self.config.task,
            "role": role,
            "setting": self._setting() if role == "student" else "task-specific",
            "seed": self.config.seed,
            "teacher_seed": self.config.teacher_seed,  # None: each seed's own teacher; else pinned
            "preset": self.config.preset,
            "main_metric": main_metric_key(self.task),
            "task_options": dataclasses.asdict(self.task.options),
            "greater_is_better": self.task.greater_is_better,
            "data": {
                "sha256": plan.data_sha256,
                "files": [portable_path(p, plan.roots) for p in self.task.data_files()],
                "train_examples": len(self.train_split(self.train_cfg.for_role(role).max_train_samples)),
                "eval_examples": {s: len(self.data[s]) for s in self.task.eval_splits},
            },
            "git": self._git_record(),
            "packages": provenance.package_versions(),
            "hardware": provenance.hardware(),
            "command": portable_command(sys.argv, plan.roots),
            "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }


def cache_refusal(config: RunConfig, method: Method, task: Task) -> str | None:
    """Why this run cannot read its teacher from a cache (``None``: it can)."""
    if method.cached_teacher_layers() is None:
        return f"method {config.method} needs live teacher outputs"
    if not task.deterministic_inputs:
        return f"task {config.task} randomises its training inputs"
    return None


def check_teacher_cache(config: RunConfig, method: Method, task: Task) -> None:
    """Reject a bad ``teacher_cache`` setting before anything trains."""
    mode = config.train.teacher_cache
    reason = cache_refusal(config, method, task) if method.uses_teacher else "the method uses no teacher"
    if mode == "on" and reason:
        raise UserError(f"--teacher-cache on: {reason}")


def optional_stage_settings(cfg: TrainConfig) -> dict[str, Any]:
    """Settings added after stages were first cached enter a stage key only when they differ from their
    old behaviour (length grouping on, mixed precision, gradient accumulation), so older stages stay valid."""
    return {k: getattr(cfg, k) for k, before in BEFORE_INTRODUCED.items() if getattr(cfg, k) != before}


# history helpers ---------------------------------------------------------------------------------
def main_metric_key(task: Task) -> str:
    splits = task.eval_splits
    return task.main_metric if len(splits) == 1 else f"{splits[0]}/{task.main_metric}"


TRAINER_EVAL_KEYS = {"loss", "runtime", "samples_per_second", "steps_per_second", "epoch"}


def flatten_metrics(logs: dict[str, Any], task: Task) -> dict[str, float]:
    """Trainer's ``eval_[split_]name`` keys → ``name`` (one split) or ``split/name`` (several); the
    Trainer's own bookkeeping (eval loss, runtime, throughput) is left out."""
    result: dict[str, float] = {}
    splits = task.eval_splits
    for key, value in logs.items():
        if not key.startswith("eval_"):
            continue
        name = key.removeprefix("eval_")
        split = None
        if len(splits) > 1:
            split = next((s for s in splits if name.startswith(f"{s}_")), None)
            if split is None:
                continue
            name = name.removeprefix(f"{split}_")
        if name not in TRAINER_EVAL_KEYS:
            result[f"{split}/{name}" if split else name] = float(value)
    return result


def epoch_history(log_history: list[dict[str, Any]], task: Task) -> list[dict[str, Any]]:
    """One entry per evaluation (epoch, step, metrics); several splits of one step are merged."""
    by_step: dict[int, dict[str, Any]] = {}
    for entry in log_history:
        metrics = flatten_metrics(entry, task)
        if metrics:
            row = by_step.setdefault(entry["step"], {"epoch": entry.get("epoch"), "step": entry["step"], "metrics": {}})
            row["metrics"].update(metrics)
    return [by_step[s] for s in sorted(by_step)]


def best_epoch(history: list[dict[str, Any]], task: Task) -> dict[str, Any] | None:
    """The evaluation with the best main metric (the TED reference reports this, via --save_best)."""
    key = main_metric_key(task)
    scored = [h for h in history if key in h["metrics"]]
    if not scored:
        return None
    pick = max if task.greater_is_better else min
    return pick(scored, key=lambda h: h["metrics"][key])


def final_loss_terms(log_history: list[dict[str, Any]]) -> dict[str, float]:
    """The last logged value of the total loss and of every named term."""
    last: dict[str, float] = {}
    for entry in log_history:
        for key, value in entry.items():
            if key == "loss" or key.startswith("loss/"):
                last[key] = float(value)
    return last


def train_runtime(log_history: list[dict[str, Any]]) -> float | None:
    """Seconds the Trainer spent in this stage's training loop (this process only, if resumed)."""
    return next((e["train_runtime"] for e in reversed(log_history) if "train_runtime" in e), None)


def loss_history(log_history: list[dict[str, Any]]) -> list[dict[str, float]]:
    return [
        {k: v for k, v in e.items() if k in ("step", "epoch", "loss") or k.startswith("loss/")}
        for e in log_history
        if "loss" in e
    ]
