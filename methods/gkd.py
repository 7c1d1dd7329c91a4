"""On-policy distillation: Generalised Knowledge Distillation (GKD, Agarwal et al. 2024, arXiv 2306.13649).

With probability λ a step distils on the student's own continuations of the batch's prompts instead of
on the text itself:

    y ~ p_s( · | x_prompt)  (sampled at temperature τ, ``max_new_tokens`` tokens)   with probability λ
    L = L_task(text) + div_alpha · mean over the continuation's positions of D( p_t ‖ p_s )( · | x_prompt, y_<i)

else, with probability 1 − λ, the step is the off-policy method of divergence D on the text. The
prompts are the first ``prompt_tokens`` tokens of each training block; D is any token-level divergence
(GKD's default: the generalised JSD with β = 0.5). The task term always reads the training text, so an
on-policy run sees as many labelled examples as every other method and differs from its off-policy
counterpart only in the data its divergence is measured on (GKD's own loss has no task term).

What the released GKD (TRL's ``GKDTrainer``) does, and what this does differently:
* sampling goes through ``model.generate`` with the KV cache; the student samples in eval mode (no
  dropout) and the end-of-text token is suppressed so every continuation has ``max_new_tokens`` tokens
  (running text has no document end inside a block);
* the coin and the samples are drawn from the run's seeded RNG: the same seed gives the same samples;
* the teacher scores the samples live; a teacher-output cache holds only the training text's outputs.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from distillbench import DISTILL_MASK, UserError, get_task, list_tasks, register_method
from distillbench.divergence_method import DivergenceMethod
from distillbench.divergences import DIVERGENCES
from distillbench.fields import setting


def samples_text(task) -> bool:
    """Whether a task's model is a causal LM over text, whose continuations a student can sample."""
    return task.vocabulary_distill and task.model_kind == "decoder"


@register_method("gkd")
class GKD(DivergenceMethod):
    """GKD, on-policy: with probability λ the divergence reads the student's own samples."""

    @dataclass
    class HParams(DivergenceMethod.HParams):
        lmbda: float = setting(0.5, ge=0, le=1, help="λ: the share of steps distilled on the student's own samples")
        divergence: str = setting("jsd", choices=DIVERGENCES, help="the token-level divergence D")
        beta: float = setting(0.5, ge=0, le=1, help="β of divergence=jsd (0 = forward KL, 1 = reverse KL)")
        skew_alpha: float = setting(0.1, ge=0, le=1, help="α of divergence=skew_kl / skew_reverse_kl")
        sample_temperature: float = setting(1.0, gt=0, help="τ: the student's sampling temperature")
        prompt_tokens: int = setting(64, gt=0, help="prompt: the first tokens of each training block")
        max_new_tokens: int = setting(64, gt=0, help="tokens sampled after each prompt")

    @staticmethod
    def search_space(trial) -> dict:
        return DivergenceMethod.search_space(trial) | {
            "lmbda": trial.suggest_float("lmbda", 0.0, 1.0),
            "beta": trial.suggest_float("beta", 0.0, 1.0),
        }

    def divergence_kind(self) -> str:
        return self.hp.divergence

    def coefficient(self) -> float:
        return self.hp.beta if self.hp.divergence == "jsd" else self.hp.skew_alpha

    def cached_teacher_layers(self) -> None:
        return None  # the teacher scores the student's samples, which no cache holds

    def validate(self) -> None:
        if not samples_text(self.task):
            usable = " or ".join(name for name in list_tasks() if samples_text(get_task(name)))
            raise UserError(
                f"gkd samples continuations from a causal language model, and {self.task.name} is not a causal-LM "
                f"task; use {usable}"
            )
        config = self.pair.student
        positions = getattr(config, "n_positions", None) or getattr(config, "max_position_embeddings", None)
        needed = self.hp.prompt_tokens + self.hp.max_new_tokens
        if positions and needed > positions:
            raise UserError(
                f"gkd: prompt_tokens + max_new_tokens = {needed} is beyond the student's {positions} positions"
            )

    def check_sequence_length(self, max_seq_length: int) -> None:
        if self.hp.prompt_tokens >= max_seq_length:
            raise UserError(
                f"gkd: prompt_tokens={self.hp.prompt_tokens} is not shorter than the training blocks "
                f"({max_seq_length} tokens); the prompt is cut from a block"
            )

    @classmethod
    def sampling(cls, hp) -> dict[str, float]:
        return {"share": hp.lmbda, "tokens_per_row": hp.prompt_tokens + hp.max_new_tokens}

    def distillation_batch(self, batch: dict[str, Tensor], student) -> dict[str, Tensor] | None:
        on_policy = self.hp.lmbda == 1 or (self.hp.lmbda > 0 and float(torch.rand(())) < self.hp.lmbda)
        return self.sampled_batch(batch, student) if on_policy else None

    def sampled_batch(self, batch: dict[str, Tensor], student) -> dict[str, Tensor]:
        """The prompts with the student's sampled continuations, and the positions that predict them."""
        from transformers import GenerationConfig

        prompts = batch["input_ids"][:, : self.hp.prompt_tokens]
        attention = batch.get("attention_mask")
        attention = torch.ones_like(prompts) if attention is None else attention[:, : self.hp.prompt_tokens]
        end = student.config.eos_token_id
        generation = GenerationConfig(
            do_sample=True,
            temperature=self.hp.sample_temperature,
            top_k=0,
            top_p=1.0,
            max_new_tokens=self.hp.max_new_tokens,
            min_new_tokens=self.hp.max_new_tokens,
            use_cache=True,
            pad_token_id=end if end is not None else 0,
            eos_token_id=end,
        )
        was_training = student.training
        student.eval()
        try:
            with torch.no_grad():
                sequences = student.generate(input_ids=prompts, attention_mask=attention, generation_config=generation)
        finally:
            student.train(was_training)
        mask = torch.zeros_like(sequences)
        mask[:, prompts.shape[1] - 1 : -1] = 1  # position i predicts token i + 1: the sampled ones
        return {
            "input_ids": sequences,
            "attention_mask": torch.cat([attention, torch.ones_like(sequences[:, prompts.shape[1] :])], dim=1),
            DISTILL_MASK: mask,
        }
