"""The method API: what a distillation method declares, and nothing about how it is trained.

A method is a class registered with :func:`register_method`. It declares

* ``HParams`` — a dataclass of hyper-parameters with defaults (``--set`` is typed against it),
* ``task_defaults`` — per-task overrides of those defaults (e.g. the TED reference's alphas),
* ``search_space(trial)`` — its Optuna space, next to the parameters it tunes,
* ``needs`` — which internals the harness must expose (``hidden_states``, ``attentions``, ``qkv``),
* ``build_modules()`` — extra trainable (or frozen) modules: projections, filters,
* ``stages()`` — extra training stages that must run first (TED Stage I), as data,
* ``loss(student, teacher, batch)`` — a dict of named loss terms that the harness sums and logs,
* ``distillation_batch(batch, student)`` — optionally, a batch of its own drawing to distil on (GKD's
  student samples), with ``sampling()`` saying what it costs.

The training loop, devices, checkpoints and logging belong to the harness (``transformers.Trainer``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from torch import Tensor, nn

from distillbench.errors import UserError
from distillbench.fields import setting
from distillbench.losses import ensemble_logits, logit_kd
from distillbench.registry import Registry

if TYPE_CHECKING:
    import optuna
    from transformers import PretrainedConfig, PreTrainedModel

    from distillbench.task import Task

STUDENT_STARTS = ("pretrained", "finetuned")
# The model internals the harness knows how to expose to a loss; a method needing anything else is
# refused when its class is defined, not halfway through a run.
NEEDS = frozenset({"hidden_states", "attentions", "qkv"})

# The batch key under which a batch carries its rows' training-set indices, when a stage or the
# distillation reads a frozen model's outputs from a cache instead of running it: a method's stage pops
# it before the model sees the batch (TED's Stage I does).
EXAMPLE_INDEX = "example_index"

# The batch key of a batch a method distils on instead of the training batch (GKD's student samples):
# [B, L], 1 where a position's next-token distribution is compared; the models never see it.
DISTILL_MASK = "distill_mask"


@dataclass
class Outputs:
    """What one forward pass of a model exposes to a method's loss.

    ``raw`` is the Hugging Face model output (``loss``, ``logits``, optional ``hidden_states`` /
    ``attentions``); ``qkv`` holds, per layer, the (query, key, value) projections captured by forward
    hooks when the method ``needs`` them; ``distill`` is the task's list of distillable outputs
    (classification logits, QA start/end logits, MLM logits at masked positions).
    """

    raw: Any
    distill: list[Tensor]
    qkv: list[tuple[Tensor, Tensor, Tensor]] | None = None
    # Set when these outputs are on a batch the method distils on instead of the training batch (GKD's
    # student samples): the training batch's task loss, since the samples' own would score the student
    # against its own tokens.
    task_loss: Tensor | None = None

    @property
    def loss(self) -> Tensor:
        return self.raw.loss if self.task_loss is None else self.task_loss

    @property
    def hidden_states(self) -> tuple[Tensor, ...]:
        return self.raw.hidden_states

    @property
    def attentions(self) -> tuple[Tensor, ...]:
        return self.raw.attentions


@dataclass(frozen=True)
class Stage:
    """A training stage a method needs before distillation, declared as data.

    The harness fine-tunes ``model`` (``"teacher"`` or ``"student"``) on the task first (cached), hands
    it to ``build`` which returns a module whose ``forward(**batch)`` returns ``{"loss", "terms"}`` and
    which exposes the trained parts as ``.extra`` (an ``nn.ModuleDict``). The harness trains it with the
    same Trainer path as every other stage, caches ``extra``'s state dict under a key of everything that
    changes it (``hparams`` included), and gives it back to the method as ``stage_states[name]``.
    ``learning_rate`` picks the model's own learning rate when ``None``.

    ``frozen_layers``: the ``hidden_states`` indices the module reads from a backbone that stays frozen
    and in eval mode. Then those states are a function of the input alone, and the harness may compute
    them once (an output cache, as for the Stage II teacher) and set the module's ``features`` to it; the
    module then reads them by the batch's ``example_index`` instead of running the backbone.
    """

    name: str
    model: str
    build: Callable[[PreTrainedModel, Task], nn.Module]
    hparams: dict[str, Any] = field(default_factory=dict)
    learning_rate: float | None = None
    frozen_layers: tuple[int, ...] | None = None


@dataclass(frozen=True)
class ModelPair:
    """The configurations of the student and the teacher a method will see (no weights needed)."""

    student: PretrainedConfig
    teacher: PretrainedConfig | None


class Method:
    """Base class of every distillation method; subclasses read like a page of their paper."""

    name: ClassVar[str]
    needs: ClassVar[frozenset[str]] = frozenset()
    uses_teacher: ClassVar[bool] = True
    # A baseline every other method is tested against (``table --significance``); finetune and kd say so.
    is_baseline: ClassVar[bool] = False
    # Where the method's rows sit in tables (lower first; ties by name): baselines first, then the others.
    table_order: ClassVar[int] = 100
    # The method is the student's fine-tune on the labels alone, the very stage that methods starting from
    # a fine-tuned student (``student_start = "finetuned"``, e.g. TED) build first: its run reads that
    # cached stage instead of training the same student again, so a campaign pays for it once per seed.
    is_label_finetune: ClassVar[bool] = False
    task_defaults: ClassVar[dict[str, dict[str, Any]]] = {}

    @dataclass
    class HParams:
        """Every method's hyper-parameters extend this (``@dataclass class HParams(Method.HParams)``)."""

        START_HELP: ClassVar[str] = "start from the pretrained or the task-fine-tuned student"
        student_start: str = setting("pretrained", choices=STUDENT_STARTS, help=START_HELP)

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        unknown = set(cls.needs) - NEEDS
        if unknown:
            raise UserError(f"{cls.__name__}.needs: unknown {sorted(unknown)} (the harness exposes {sorted(NEEDS)})")

    def __init__(self, hp: Any, task: Task, pair: ModelPair) -> None:
        """Validate the pair before anything trains; modules come later, from :meth:`setup`."""
        self.hp = hp
        self.task = task
        self.pair = pair
        self.stage_states: dict[str, dict[str, Tensor]] = {}
        self.modules = nn.ModuleDict()
        self.validate()

    def setup(self, stage_states: dict[str, dict[str, Tensor]]) -> None:
        """Build the extra modules once the stages have run (their trained states are passed in)."""
        self.stage_states = stage_states
        self.modules = nn.ModuleDict(self.build_modules())

    @classmethod
    def summary(cls) -> str:
        """First line of the docstring: what ``distillbench list`` prints."""
        return (cls.__doc__ or "").strip().splitlines()[0] if cls.__doc__ else ""

    @classmethod
    def hparams_for(cls, task_name: str, overrides: dict[str, Any]) -> Any:
        """Defaults ← per-task defaults ← user overrides, as an ``HParams`` instance."""
        values = {**cls.task_defaults.get(task_name, {}), **overrides}
        try:
            return cls.HParams(**values)
        except (TypeError, ValueError) as error:
            raise UserError(f"{cls.name}: {error}") from None

    @classmethod
    def hparam_fields(cls) -> dict[str, dataclasses.Field]:
        return {f.name: f for f in dataclasses.fields(cls.HParams)}

    @staticmethod
    def search_space(trial: optuna.Trial) -> dict[str, Any]:
        """Optuna search space over this method's hyper-parameters (none by default)."""
        return {}

    @property
    def student_start(self) -> str:
        """``pretrained``: the student starts from its initial weights; ``finetuned``: from the student
        fine-tuned on the task (the TED reference's choice for TED, not for KD/LWD)."""
        return getattr(self.hp, "student_start", "pretrained")

    def validate(self) -> None:
        """Raise :class:`UserError` when the student/teacher pair cannot be mapped by this method."""

    def cached_teacher_layers(self) -> tuple[int, ...] | None:
        """Indices into the teacher's ``hidden_states`` that :meth:`loss` reads, when every teacher
        signal it reads (those states and ``distill``) depends on the input alone, so the harness may
        serve them from a teacher-output cache. ``None`` (the default): the loss needs the live teacher
        (attention relations, Q/K/V captures, anything a cache does not hold)."""
        return None

    def check_sequence_length(self, max_seq_length: int) -> None:
        """Raise :class:`UserError` when the method cannot work on inputs of this many tokens (checked at
        plan time, beside the model pair)."""

    def distillation_batch(self, batch: dict[str, Tensor], student: PreTrainedModel) -> dict[str, Tensor] | None:
        """A batch to compare student and teacher on instead of the training batch, drawn anew each step
        (GKD: with probability λ, the student's own continuations of the batch's prompts), with a
        :data:`DISTILL_MASK` of the positions that count. ``None`` (the default): the training batch. The
        task term stays the training batch's (``Outputs.task_loss``), and the teacher scores the new batch
        live: a teacher-output cache holds only the training set's outputs."""
        return None

    @classmethod
    def sampling(cls, hp: Any) -> dict[str, float] | None:
        """What :meth:`distillation_batch` draws under hyper-parameters ``hp``, for the budget: the
        expected ``share`` of steps that distil on a drawn batch and the ``tokens_per_row`` of its rows
        (each generated by the student, then trained on and scored by the teacher). None: it draws none.
        A class method, so a record's budget can be counted again from its stored hyper-parameters."""
        return None

    def stages(self) -> list[Stage]:
        """Stages to run before distillation (none by default)."""
        return []

    def build_modules(self) -> dict[str, nn.Module]:
        """Extra modules (projections, filters); the harness trains, saves and places them."""
        return {}

    def loss(self, student: Outputs, teacher: Outputs | None, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        """Named loss terms; the harness optimises their sum and logs each one."""
        raise NotImplementedError

    def ensemble(self, members: list[Outputs], weights: list[float]) -> Outputs:
        """Several teachers as one (``--teacher a,b,c`` / ``--teacher-seeds``): the weighted mean of their
        softened distributions at this method's temperature (regression: of their predictions), as
        logits. Only the distillable outputs are combined, which is why several teachers are allowed
        only for methods that read nothing else of the teacher (``needs`` empty, no teacher stage)."""
        temperature = getattr(self.hp, "temperature", 1.0)
        combined = [
            ensemble_logits([member.distill[j] for member in members], weights, self.task.output_type, temperature)
            for j in range(len(members[0].distill))
        ]
        return Outputs(raw=None, distill=combined)

    def with_logit_kd(self, terms: dict[str, Tensor], student: Outputs, teacher: Outputs) -> dict[str, Tensor]:
        """``terms`` plus ``kd = kl_alpha · logit_kd`` when the method's ``kl_alpha`` is non-zero (KD, and
        the logit term that LWD, TED and MiniLM add on top of their own)."""
        if self.hp.kl_alpha:
            kd = logit_kd(student.distill, teacher.distill, self.task.output_type, self.hp.temperature)
            terms["kd"] = self.hp.kl_alpha * kd
        return terms


method_registry: Registry[type[Method]] = Registry("method", "distillbench.methods", "distillbench.methods", Method)
register_method = method_registry.register


get_method = method_registry.get
list_methods = method_registry.list


def is_built_in(name: str) -> bool:
    """Whether a registered method ships with distillbench (``methods/``) rather than a plug-in."""
    return get_method(name).__module__.startswith("distillbench.methods.")


def baseline_methods() -> list[str]:
    """The methods that declare themselves baselines (``is_baseline``), in table order: what tables test
    every other method against, and what ``bench`` times the harness on."""
    baselines = [name for name in list_methods() if get_method(name).is_baseline]
    return sorted(baselines, key=lambda name: (get_method(name).table_order, name))
