"""Planning a run: resolve and validate everything a run needs, and write nothing.

Every user error (an unknown name, a setting out of range, a missing data file, a teacher/student pair
that cannot work) surfaces here, before a model is loaded or a folder is created, so a bad command
costs seconds and leaves no trace. The result, a :class:`Plan`, names the run (its key is a hash of
everything that changes its result) and is what every later piece of the run reads.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from distillbench import distributed
from distillbench.cached import stable_key
from distillbench.config import RunConfig, key_settings
from distillbench.errors import UserError
from distillbench.families import family_of, kind
from distillbench.hub import require_hub_for_data
from distillbench.method import Method, ModelPair, get_method
from distillbench.models import StudentSpec, load_config, resolve_model, student_config
from distillbench.portable import model_identity
from distillbench.setting_checks import check_settings, task_options
from distillbench.standins import built_standin, is_standin
from distillbench.task import Task, get_task, resolve_data_dir, task_registry
from distillbench.teacher_cache import check_teacher_cache
from distillbench.workspace import Paths

if TYPE_CHECKING:
    from transformers import PretrainedConfig


@dataclass(frozen=True)
class TeacherMember:
    """One teacher of a run: its spec as given, the resolved source, the seed of its fine-tuning
    (None: the run's seed) and its weight in an ensemble."""

    spec: str
    source: str
    seed: int | None
    weight: float


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
    teachers: tuple[TeacherMember, ...] = ()
    student_tokenizer: str = ""  # where the student's tokenizer comes from ("": the teacher's)

    @property
    def ensemble(self) -> bool:
        return len(self.teachers) > 1

    @property
    def teacher_weights(self) -> list[float]:
        """The members' normalised weights, in member order."""
        return [member.weight for member in self.teachers]

    @property
    def cross_tokenizer(self) -> bool:
        """Teacher and student tokenise differently: the student reads its own tokenisation, the teacher
        its own, and the teacher's outputs reach the student through the output cache, by example."""
        return bool(self.student_tokenizer) and self.student_tokenizer != self.teacher_source

    @property
    def run_name(self) -> str:
        return f"{self.config.task}-{self.config.method}-seed{self.config.seed}-{self.key}"

    @property
    def roots(self) -> dict[str, Path | None]:
        """The named folders a record's paths are stored relative to (see portable.py)."""
        return {"data": self.task.data_dir, "results": self.paths.results_dir, "cache": self.paths.cache_dir}

    @property
    def setting(self) -> str:
        """``task-specific``, or where the student came from when an earlier run pre-trained it (a run of
        a task that declares ``pretraining``)."""
        origin = self.student_spec.origin or {}
        task = origin.get("task")
        if task in task_registry and get_task(task).pretraining:
            return f"after {origin['method']} pre-training"
        return "task-specific"

    @property
    def output_folder(self) -> Path:
        """Checkpoints, the trained student and tracker logs of this run."""
        return self.paths.output_dir or Path("outputs") / self.run_name

    def identity(self, source: str) -> str:
        """How records and stage keys name a model: the same on every machine."""
        return model_identity(source, self.roots)


def plan_run(config: RunConfig, paths: Paths, identity: dict[str, Any] | None = None) -> Plan:
    """Resolve names, models, data and hyper-parameters; every user error surfaces here.

    ``identity`` separates runs that share a configuration on purpose (e.g. the trials of a study);
    it enters the run key, hence the output folder and the record name."""
    method_cls = get_method(config.method)
    check_settings(config)
    for what, folder in (("results", paths.results_dir), ("cache", paths.cache_dir), ("output", paths.output_dir)):
        if folder is not None and folder.exists() and not folder.is_dir():
            raise UserError(f"{what} folder {folder} is a file")
    task = task_of(config)
    teachers = teacher_members(config, lambda spec: resolve_teacher(spec, task, paths.cache_dir))
    teacher_source = teachers[0].source
    if config.teacher_finetuned:
        load_config(resolve_model(config.teacher_finetuned))
    teacher_config = load_config(teacher_source)
    top_k, vocabulary = config.train.teacher_cache_top_k, teacher_config.vocab_size
    if top_k and top_k >= vocabulary:
        raise UserError(f"--set teacher_cache_top_k={top_k}: the teacher's vocabulary has {vocabulary} words")
    positions = getattr(teacher_config, "max_position_embeddings", None)
    if positions and config.train.max_seq_length > positions:
        raise UserError(f"--set max_seq_length={config.train.max_seq_length}: the teacher has {positions} positions")
    student_spec = StudentSpec.parse(
        config.student, config.student_layers, config.student_layer_ids, teacher_config.num_hidden_layers
    )
    s_config = student_config(student_spec, teacher_config)
    for member in teachers[1:]:
        if not same_tokenizer(member.source, teacher_source):
            raise UserError(
                f"the teachers {teachers[0].spec} and {member.spec} tokenise differently; an ensemble shares one"
            )
    cross = student_spec.kind == "pretrained" and not same_tokenizer(student_spec.source, teacher_source)
    check_model_kinds(config, task, teacher_config, s_config)
    if student_spec.kind == "layers":
        family_of(teacher_config, "a student of copied teacher layers (--student-layers/--student-layer-ids)")
    if "qkv" in method_cls.needs:
        for model_config in (s_config, teacher_config):
            family_of(model_config, f"{config.method} (Q/K/V capture)")
    hp = method_cls.hparams_for(config.task, config.method_overrides)
    method = method_cls(hp, task, ModelPair(student=s_config, teacher=teacher_config))
    method.check_sequence_length(config.train.max_seq_length)
    task.check_sequence_length(config.train.max_seq_length)
    if len(teachers) > 1:
        check_ensemble(config, method)
    if cross:
        check_cross_tokenizer(config, method, task)
    check_teacher_cache(config, method, task)
    # the data last, so a dry run checks the model pair first; missing files raise before anything is written
    task.data_files()
    if task.data_dir is None:
        require_hub_for_data(config.task)
    data_sha = task.data_sha256()
    key = stable_key(
        {
            "method": config.method,
            "task": config.task,
            "hparams": dataclasses.asdict(hp),
            "train": key_settings(config.train),
            "seed": config.seed,
            **({"teacher_seed": config.teacher_seed} if config.teacher_seed is not None else {}),
            **({"teacher_seeds": list(config.teacher_seeds)} if config.teacher_seeds else {}),
            **({"teacher_weights": [m.weight for m in teachers]} if config.teacher_weights else {}),
            "teacher": teacher_identity(config),
            "student": student_spec.describe(),
            "data": data_sha,
            **({"identity": identity} if identity else {}),
            **distributed.key_part(),
            **({"task_options": config.task_options} if config.task_options else {}),
        }
    )
    student_tokenizer = student_spec.source if cross else teacher_source
    return Plan(
        config, paths, task, method, teacher_source, student_spec, data_sha, key, tuple(teachers), student_tokenizer
    )


def task_of(config: RunConfig) -> Task:
    """The run's task with its options checked and its data folder resolved (nothing read yet)."""
    task_cls = get_task(config.task)
    return task_cls(resolve_data_dir(config.data_dir), task_options(task_cls, config))


def check_model_kinds(config: RunConfig, task: Task, teacher: PretrainedConfig, student: PretrainedConfig) -> None:
    """Encoders and causal decoders do not mix: a task's head and data suit one kind (``clm`` decoders,
    GLUE/SQuAD/``pretrain`` encoders), and teacher and student must be of the same kind."""
    kinds = {"teacher": kind(teacher), "student": kind(student)}
    if kinds["teacher"] != kinds["student"]:
        raise UserError(
            f"the teacher ({teacher.model_type}) is {an(kinds['teacher'])} and the student ({student.model_type}) "
            f"{an(kinds['student'])}; distil within one kind"
        )
    if kinds["teacher"] != task.model_kind:
        other = "clm" if task.model_kind == "encoder" else "a GLUE, SQuAD or pretrain task"
        raise UserError(
            f"task {config.task} needs {an(task.model_kind)} model, and {config.teacher} ({teacher.model_type}) is "
            f"{an(kinds['teacher'])}; use {other}"
        )


def an(model_kind: str) -> str:
    return {"encoder": "an encoder", "decoder": "a causal decoder"}[model_kind]


def resolve_teacher(spec: str, task: Task, cache_dir: Path) -> str:
    """A teacher spec → its folder or hub id; a stand-in (``scratch:<preset>``) must be pre-trained on the
    task's text already (``run`` and ``sweep`` do that before planning)."""
    return built_standin(spec, task, cache_dir) if is_standin(spec) else resolve_model(spec)


def teacher_identity(config: RunConfig) -> dict[str, Any]:
    return {"source": config.teacher, "finetuned": config.teacher_finetuned}


def teacher_members(config: RunConfig, resolve: Callable[[str], str] = resolve_model) -> list[TeacherMember]:
    """The run's teachers: ``--teacher a,b,c`` (one seed each), or one model with ``--teacher-seeds``."""
    specs = [spec.strip() for spec in config.teacher.split(",")]
    if not any(specs):
        raise UserError("--teacher: no model given")
    if not all(specs):
        raise UserError(f"--teacher {config.teacher}: an empty member (a stray comma?)")
    seeds = list(config.teacher_seeds or ())
    if len(specs) > 1 and seeds:
        raise UserError(
            "give several teachers (--teacher a,b) or one teacher with several seeds (--teacher-seeds), not both"
        )
    if len(set(seeds)) < len(seeds):
        raise UserError(f"--teacher-seeds {','.join(map(str, seeds))}: a seed is repeated")
    pairs = [(specs[0], seed) for seed in seeds] if seeds else [(spec, config.teacher_seed) for spec in specs]
    weights = list(config.teacher_weights or [1.0] * len(pairs))
    if len(weights) != len(pairs):
        raise UserError(f"teacher_weights: {len(weights)} weights for {len(pairs)} teachers")
    if any(w <= 0 for w in weights):
        raise UserError("teacher_weights: every weight must be positive")
    total = sum(weights)
    return [
        TeacherMember(spec, resolve(spec), seed, weight / total)
        for (spec, seed), weight in zip(pairs, weights, strict=True)
    ]


def teacher_reads(method: Method) -> list[str]:
    """What a method reads of the teacher beyond its distillable outputs."""
    return sorted(method.needs) + [f"its {s.name} stage" for s in method.stages() if s.model == "teacher"]


def check_ensemble(config: RunConfig, method: Method) -> None:
    """Several teachers combine into one signal only through the distillable outputs (logits,
    predictions): a method that reads anything else of the teacher cannot take an ensemble."""
    if not method.uses_teacher:
        raise UserError(f"{config.method} uses no teacher; several teachers apply to methods that distil")
    reads = teacher_reads(method)
    if reads:
        raise UserError(
            f"{config.method} reads the teacher's {', '.join(reads)}; an ensemble of teachers combines only "
            "their logits (use a logit method such as kd, or one teacher)"
        )
    if config.teacher_finetuned:
        raise UserError("--teacher-finetuned names one fine-tuned teacher; an ensemble fine-tunes each of its own")
    if config.train.teacher_cache_top_k:
        raise UserError("--set teacher_cache_top_k: several teachers' top-k lists do not combine; use one teacher")


TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "vocab.json", "spm.model", "spiece.model")


def same_tokenizer(source: str, other: str) -> bool:
    """Whether two models tokenise alike: the same folder, or tokenizers with one vocabulary. A model
    folder without a tokenizer of its own reads the other's, as it always has."""
    if source == other:
        return True
    folder = Path(source)
    if folder.is_dir() and not any((folder / name).is_file() for name in TOKENIZER_FILES):
        sizes = load_config(source).vocab_size, load_config(other).vocab_size
        if sizes[0] != sizes[1]:
            raise UserError(
                f"{source} has no tokenizer of its own, and its vocabulary ({sizes[0]}) differs from "
                f"{other}'s ({sizes[1]})"
            )
        return True
    from transformers import AutoTokenizer

    try:
        vocabularies = [AutoTokenizer.from_pretrained(s).get_vocab() for s in (source, other)]
    except (OSError, ValueError) as error:
        raise UserError(f"cannot load the tokenizers of {source} and {other}: {str(error).splitlines()[0]}") from None
    return vocabularies[0] == vocabularies[1]


def check_cross_tokenizer(config: RunConfig, method: Method, task: Task) -> None:
    """Teacher and student tokenise differently: only per-example outputs can be matched, and the
    teacher reaches the student through its output cache (built on the teacher's own tokenisation)."""
    what = "the student's tokenizer differs from the teacher's"
    if not task.distill_per_example:
        raise UserError(f"{what}, and {config.task}'s distilled outputs are per token; both must share one tokenizer")
    if not method.uses_teacher:
        return
    reads = teacher_reads(method)
    if reads:
        raise UserError(
            f"{what}, and {config.method} reads the teacher's {', '.join(reads)}, which has no alignment across "
            "tokenizers; use a logit method such as kd"
        )
    if config.train.teacher_cache == "off":
        raise UserError(
            f"{what}: the student reads the teacher's outputs from its cache, so --teacher-cache off cannot be used"
        )
