"""MiniLM v1 (Wang et al. 2020, arXiv 2002.10957) and v2 (Wang et al. 2021, arXiv 2012.15828).

v1 — deep self-attention distillation of the last layer, per attention head a:

    L_AT = (1/(A·|x|)) Σ_a Σ_t KL( A_t^(a) ‖ A_s^(a) ),   A = softmax(Q Kᵀ / √d_k)
    L_VR = (1/(A·|x|)) Σ_a Σ_t KL( VR_t^(a) ‖ VR_s^(a) ), VR = softmax(V Vᵀ / √d_k)

which needs equal head counts. v2 — multi-head self-relation distillation: queries, keys and values of
one teacher layer and the student's last layer are each re-split into R relation heads (so head counts
and widths may differ), and

    L = Σ_{X ∈ {Q, K, V}} (1/(R·|x|)) Σ_r Σ_t KL( softmax(X_t X_tᵀ/√d_r) ‖ softmax(X_s X_sᵀ/√d_r) ).

Both are task-agnostic in their papers; here they run in the harness's task-specific setting too, so
the task loss (and optionally logit KD) is added. Q/K/V come from forward hooks on the models' own
projections, and the attention distribution is recomputed from them (Hugging Face's returned eager
``attentions`` are taken after dropout in training mode, so they are not distributions there).

On a causal decoder every relation is taken over the keys a position attends to (itself and earlier
positions); with grouped-query attention each K/V head is repeated for the query heads of its group, as
the model does; on rotary models (Llama, Qwen, GPT-NeoX) Q and K are compared before the rotation
(distillbench/families.py). Widths below are the attention width, heads × head width.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from distillbench import Method, Outputs, register_method
from distillbench.errors import UserError
from distillbench.families import attention_width, is_causal
from distillbench.fields import setting
from distillbench.losses import relation_kl


class _RelationMethod(Method):
    """Shared pieces of MiniLM v1/v2: Q/K/V capture, task loss, optional logit KD."""

    needs = frozenset({"qkv"})

    @staticmethod
    def search_space(trial) -> dict:
        return {
            "minilm_alpha": trial.suggest_float("minilm_alpha", 0.1, 100.0, log=True),
            "kl_alpha": trial.suggest_float("kl_alpha", 0.0, 20.0),
        }

    def relation_loss(self, student: Outputs, teacher: Outputs, mask: Tensor) -> Tensor:
        raise NotImplementedError

    @property
    def causal(self) -> bool:
        """Relations over earlier keys only: the pair is a causal decoder (planning refuses a mixed pair)."""
        return is_causal(self.pair.teacher)

    def loss(self, student: Outputs, teacher: Outputs | None, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        assert teacher is not None
        terms = {
            "task": student.loss,
            "relation": self.hp.minilm_alpha * self.relation_loss(student, teacher, batch["attention_mask"]),
        }
        return self.with_logit_kd(terms, student, teacher)


@register_method("minilm")
class MiniLM(_RelationMethod):
    """MiniLM v1: last-layer attention-distribution KL + value-relation KL (equal head counts)."""

    table_order = 30

    @dataclass
    class HParams(Method.HParams):
        minilm_alpha: float = setting(1.0, ge=0, help="weight of the relation KL term")
        kl_alpha: float = setting(0.0, ge=0, help="weight of the logit KD term (0: off)")
        temperature: float = setting(2.0, gt=0, help="softmax temperature of logit KD")

    def validate(self) -> None:
        s_heads, t_heads = self.pair.student.num_attention_heads, self.pair.teacher.num_attention_heads
        if s_heads != t_heads:
            raise UserError(
                f"minilm needs equal attention head counts (student {s_heads}, teacher {t_heads}); "
                "use minilmv2, whose relation heads are configurable"
            )

    def relation_loss(self, student: Outputs, teacher: Outputs, mask: Tensor) -> Tensor:
        heads = self.pair.student.num_attention_heads
        (s_q, s_k, s_v), (t_q, t_k, t_v) = student.qkv[-1], teacher.qkv[-1]
        attention = relation_kl((s_q, s_k), (t_q, t_k), heads, mask, self.causal)
        value = relation_kl((s_v, s_v), (t_v, t_v), heads, mask, self.causal)
        return attention + value


@register_method("minilmv2")
class MiniLMv2(_RelationMethod):
    """MiniLM v2: Q-Q, K-K, V-V self-relation KL with R relation heads from one teacher layer."""

    table_order = 40

    @dataclass
    class HParams(Method.HParams):
        minilm_alpha: float = setting(1.0, ge=0, help="weight of the relation KL term")
        kl_alpha: float = setting(0.0, ge=0, help="weight of the logit KD term (0: off)")
        temperature: float = setting(2.0, gt=0, help="softmax temperature of logit KD")
        relation_heads: int = setting(0, ge=0, help="relation heads R (0: the teacher's head count)")
        teacher_layer: int = setting(-1, help="which teacher layer's Q/K/V (negative counts from the top)")

    def validate(self) -> None:
        student, teacher = self.pair.student, self.pair.teacher
        self.heads = self.hp.relation_heads or teacher.num_attention_heads
        for name, config in (("student", student), ("teacher", teacher)):
            width = attention_width(config)
            if width % self.heads:
                raise UserError(
                    f"minilmv2: {name} attention width {width} is not divisible by {self.heads} relation heads"
                )
        if not -teacher.num_hidden_layers <= self.hp.teacher_layer < teacher.num_hidden_layers:
            raise UserError(
                f"minilmv2: teacher_layer {self.hp.teacher_layer} is outside the teacher's "
                f"{teacher.num_hidden_layers} layers"
            )

    def relation_loss(self, student: Outputs, teacher: Outputs, mask: Tensor) -> Tensor:
        s_qkv, t_qkv = student.qkv[-1], teacher.qkv[self.hp.teacher_layer]
        return sum(
            relation_kl((s, s), (t, t), self.heads, mask, self.causal) for s, t in zip(s_qkv, t_qkv, strict=True)
        )
