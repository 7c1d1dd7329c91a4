"""TED — task-aware layer-wise distillation (Liang et al., ICML 2023, arXiv 2210.01351).

Layer-wise distillation makes a small student copy *all* of the teacher's hidden knowledge, much of
it irrelevant to the task. TED puts a task-aware filter g after selected layers of both models.

Stage I (once per model, backbone frozen): every filter gets its own task head, and the filters learn
to keep what the task needs,

    L_I = (1/M) Σ_i L_task( head_i( g_i(h^(i)) ) ).

Stage II (teacher and its filters frozen; student backbone and student filters train):

    L_II = L_task + α_kl · T² · KL(p_t/T ‖ p_s/T) + α_mse · (1/M) Σ_i MSE( g_s,i(h_s^(i)), g_t,i(h_t^(i)) ).

A filter sits after layer ``idx`` where (idx+1) % interval == 0; the teacher's interval is chosen so
both models get M filters (6-layer teacher, 3-layer student: teacher interval 2, student interval 1).
A filter is Linear(hidden → d) or Linear-act-Linear; the student's projects to the teacher's width d.
As in the reference, Stage II starts from the fine-tuned student that Stage I filtered
(``student_start="finetuned"``), while KD/LWD start from the pretrained student.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any

from torch import Tensor, nn

from distillbench import EXAMPLE_INDEX, Method, Outputs, Stage, Task, register_method
from distillbench.errors import UserError
from distillbench.families import activation
from distillbench.fields import setting
from distillbench.losses import layerwise_task_defaults, mse, uniform_layer_map
from distillbench.method import STUDENT_STARTS

if TYPE_CHECKING:
    from transformers import PreTrainedModel


def make_filter(width: int, output_dim: int, nonlinear: bool, activation: str) -> nn.Module:
    """The reference filter: Linear, or Linear(width→width) → act → Linear(width→output_dim)."""
    if nonlinear:
        from transformers.activations import ACT2FN

        return nn.Sequential(nn.Linear(width, width), ACT2FN[activation], nn.Linear(width, output_dim))
    return nn.Linear(width, output_dim)


def filter_layers(num_layers: int, num_filters: int) -> list[int]:
    """Layers (0-based) followed by a filter: every ``num_layers / num_filters``-th layer."""
    if num_filters <= 0 or num_layers % num_filters:
        raise UserError(
            f"ted: cannot place {num_filters} filters evenly on {num_layers} layers "
            "(the layer count must be a multiple of the filter count)"
        )
    # The reference's ``(idx + 1) % interval == 0`` is the uniform map of the filters onto the layers.
    return uniform_layer_map(num_filters, num_layers)


def filter_bank(config: Any, count: int, output_dim: int, nonlinear: bool) -> nn.ModuleList:
    return nn.ModuleList(
        make_filter(config.hidden_size, output_dim, nonlinear, activation(config)) for _ in range(count)
    )


class FilterLearner(nn.Module):
    """Stage I: a frozen fine-tuned backbone, trainable filters, one task head per filter.

    The backbone stays in eval mode (the reference leaves dropout on in its frozen backbone, which only
    adds noise to the filters' inputs): its hidden states are then a function of the input alone, so the
    harness can serve them from an output cache (``features``) instead of running the backbone every step.
    """

    features = None  # a TeacherCache of the backbone's states, set by the harness when it built one

    def __init__(self, model: PreTrainedModel, task: Task, layers: list[int], output_dim: int, nonlinear: bool) -> None:
        super().__init__()
        self.backbone = model.base_model
        for parameter in self.backbone.parameters():
            parameter.requires_grad_(False)
        self.layers = layers
        self.task = task
        self.extra = nn.ModuleDict(
            {
                "filters": filter_bank(model.config, len(layers), output_dim, nonlinear),
                "heads": nn.ModuleList(task.make_head(model.config, output_dim) for _ in layers),
            }
        )

    def train(self, mode: bool = True) -> FilterLearner:
        super().train(mode)
        self.backbone.eval()
        return self

    def forward(self, **batch: Tensor) -> dict[str, Any]:
        index = batch.pop(EXAMPLE_INDEX, None)
        if self.features is not None and index is not None:
            hidden = self.features.lookup(index, batch["input_ids"].shape[1], index.device).hidden_states
        else:
            inputs = {k: v for k, v in batch.items() if k not in self.task.label_keys}
            hidden = self.backbone(**inputs, output_hidden_states=True).hidden_states
        losses = [
            self.task.head_loss(head(filt(hidden[layer + 1])), batch)
            for layer, filt, head in zip(self.layers, self.extra["filters"], self.extra["heads"], strict=True)
        ]
        loss = sum(losses) / len(losses)
        return {"loss": loss, "terms": {"filter_task": loss.detach()}}


@register_method("ted")
class TED(Method):
    """TED: Stage I task-aware filters, Stage II task + kl_alpha·KD + mse_alpha·filtered-state MSE."""

    table_order = 50

    needs = frozenset({"hidden_states"})

    @dataclass
    class HParams(Method.HParams):
        kl_alpha: float = setting(1.0, ge=0, help="weight of the logit KD term (0: off)")
        mse_alpha: float = setting(1.0, ge=0, help="weight of the hidden-state MSE term")
        temperature: float = setting(2.0, gt=0, help="softmax temperature of logit KD")
        num_filters: int = setting(0, ge=0, help="filters per model (0: one per student layer)")
        filter_output_dim: int = setting(0, ge=0, help="filter output width (0: the teacher's hidden width)")
        filter_nonlinear: bool = setting(False, help="Linear-act-Linear filters instead of one Linear")
        student_start: str = setting("finetuned", choices=STUDENT_STARTS, help=Method.HParams.START_HELP)

    task_defaults = layerwise_task_defaults(
        {
            "mnli": 7500.0,
            "qqp": 1000.0,
            "qnli": 100.0,
            "sst2": 20.0,
            "rte": 50.0,
            "cola": 10.0,
            "mrpc": 100.0,
            "stsb": 50.0,
            "squad": 5000.0,
            "squad_v2": 5000.0,
        }
    )

    @staticmethod
    def search_space(trial) -> dict:
        return {
            "kl_alpha": trial.suggest_float("kl_alpha", 0.1, 50.0, log=True),
            "mse_alpha": trial.suggest_float("mse_alpha", 1.0, 10000.0, log=True),
        }

    def validate(self) -> None:
        student, teacher = self.pair.student, self.pair.teacher
        count = self.hp.num_filters or student.num_hidden_layers
        self.student_layers = filter_layers(student.num_hidden_layers, count)
        self.teacher_layers = filter_layers(teacher.num_hidden_layers, count)
        self.output_dim = self.hp.filter_output_dim or teacher.hidden_size
        if self.hp.filter_nonlinear:
            activation(student), activation(teacher)  # each model's own activation must be readable

    def stages(self) -> list[Stage]:
        settings = {"output_dim": self.output_dim, "nonlinear": self.hp.filter_nonlinear, "backbone": "eval"}
        return [
            Stage(
                "ted-filters-teacher",
                "teacher",
                partial(self._learner, layers=self.teacher_layers),
                {**settings, "layers": self.teacher_layers},
                frozen_layers=tuple(t + 1 for t in self.teacher_layers),
            ),
            Stage(
                "ted-filters-student",
                "student",
                partial(self._learner, layers=self.student_layers),
                {**settings, "layers": self.student_layers},
                frozen_layers=tuple(s + 1 for s in self.student_layers),
            ),
        ]

    def _learner(self, model: PreTrainedModel, task: Task, layers: list[int]) -> FilterLearner:
        return FilterLearner(model, task, layers, self.output_dim, self.hp.filter_nonlinear)

    def build_modules(self) -> dict[str, nn.Module]:
        modules = {}
        for role, config, layers in (
            ("teacher", self.pair.teacher, self.teacher_layers),
            ("student", self.pair.student, self.student_layers),
        ):
            bank = filter_bank(config, len(layers), self.output_dim, self.hp.filter_nonlinear)
            state = self.stage_states[f"ted-filters-{role}"]
            bank.load_state_dict({k.removeprefix("filters."): v for k, v in state.items() if k.startswith("filters.")})
            modules[f"{role}_filters"] = bank
        modules["teacher_filters"].requires_grad_(False)
        return modules

    def cached_teacher_layers(self) -> tuple[int, ...]:
        """The states the frozen teacher filters read; the filters themselves are cheap and run live."""
        return tuple(t + 1 for t in self.teacher_layers)

    def loss(self, student: Outputs, teacher: Outputs | None, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        assert teacher is not None
        s_filters, t_filters = self.modules["student_filters"], self.modules["teacher_filters"]
        pairs = [
            (s_filter(student.hidden_states[s + 1]), t_filter(teacher.hidden_states[t + 1]).detach())
            for s, t, s_filter, t_filter in zip(
                self.student_layers, self.teacher_layers, s_filters, t_filters, strict=True
            )
        ]
        terms = {"task": student.loss, "mse": self.hp.mse_alpha * sum(mse(s, t) for s, t in pairs) / len(pairs)}
        return self.with_logit_kd(terms, student, teacher)
