"""Layer-wise distillation (LWD), the TED reference's baseline (Liang et al. 2023, §5; cf. Sun et al. 2019).

    L = L_task + α_kl · T² · KL(p_t/T ‖ p_s/T) + α_mse · (1/M) Σ_i MSE( W_i h_s^(i), h_t^(m(i)) )

Every student layer i is pulled towards teacher layer m(i) = (i+1)·k − 1 (k = teacher/student layers)
through a trainable linear projection W_i to the teacher's width. The reference always inserts W_i (a
randomly initialised "filter"); ``projection="auto"`` inserts it only when the widths differ.
MSE over all positions, padding included, as in the reference code.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor, nn

from distillbench import Method, Outputs, register_method
from distillbench.errors import UserError
from distillbench.fields import setting
from distillbench.losses import layerwise_task_defaults, mse, uniform_layer_map


def parse_layer_map(spec: str, student_layers: int, teacher_layers: int) -> list[int]:
    """``uniform`` or an explicit comma list of teacher layers (0-based), one per student layer."""
    if spec == "uniform":
        return uniform_layer_map(student_layers, teacher_layers)
    try:
        mapping = [int(x) for x in spec.split(",")]
    except ValueError:
        raise UserError(f"layer_map {spec!r}: expected 'uniform' or comma-separated integers") from None
    if len(mapping) != student_layers or not all(0 <= m < teacher_layers for m in mapping):
        raise UserError(f"layer_map {spec!r}: need {student_layers} teacher layers in [0, {teacher_layers})")
    return mapping


@register_method("lwd")
class LWD(Method):
    """Layer-wise MSE distillation: task + kl_alpha·KD + mse_alpha·mean_i MSE(W_i h_s^i, h_t^m(i))."""

    table_order = 20

    needs = frozenset({"hidden_states"})

    @dataclass
    class HParams(Method.HParams):
        kl_alpha: float = setting(1.0, ge=0, help="weight of the logit KD term (0: off)")
        mse_alpha: float = setting(1.0, ge=0, help="weight of the hidden-state MSE term")
        temperature: float = setting(2.0, gt=0, help="softmax temperature of logit KD")
        layer_map: str = setting("uniform", help="uniform, or comma-separated teacher layers per student layer")
        projection: str = setting(
            "always",
            choices=("always", "auto"),
            help="always project student states (reference), or only when widths differ",
        )

    task_defaults = layerwise_task_defaults(
        {
            "mnli": 100.0,
            "qqp": 20.0,
            "qnli": 10.0,
            "sst2": 20.0,
            "rte": 20.0,
            "cola": 5.0,
            "mrpc": 5.0,
            "stsb": 5.0,
            "squad": 100.0,
            "squad_v2": 100.0,
        }
    )

    @staticmethod
    def search_space(trial) -> dict:
        return {
            "kl_alpha": trial.suggest_float("kl_alpha", 0.1, 50.0, log=True),
            "mse_alpha": trial.suggest_float("mse_alpha", 0.1, 500.0, log=True),
        }

    def validate(self) -> None:
        student, teacher = self.pair.student, self.pair.teacher
        self.layer_map = parse_layer_map(self.hp.layer_map, student.num_hidden_layers, teacher.num_hidden_layers)

    def build_modules(self) -> dict[str, nn.Module]:
        s_width, t_width = self.pair.student.hidden_size, self.pair.teacher.hidden_size
        if self.hp.projection == "auto" and s_width == t_width:
            return {}
        return {"projections": nn.ModuleList(nn.Linear(s_width, t_width) for _ in self.layer_map)}

    def cached_teacher_layers(self) -> tuple[int, ...]:
        return tuple(m + 1 for m in self.layer_map)

    def project(self, index: int, state: Tensor) -> Tensor:
        return self.modules["projections"][index](state) if "projections" in self.modules else state

    def loss(self, student: Outputs, teacher: Outputs | None, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        assert teacher is not None
        pairs = [
            (self.project(i, student.hidden_states[i + 1]), teacher.hidden_states[m + 1])
            for i, m in enumerate(self.layer_map)
        ]
        layerwise = sum(mse(s, t.detach()) for s, t in pairs) / len(pairs)
        terms = {"task": student.loss, "mse": self.hp.mse_alpha * layerwise}
        return self.with_logit_kd(terms, student, teacher)
