"""Generation: continue held-out prompts, scored against the true text and by the teacher.

The task the generative objectives (reverse KL, JSD, skew KL, on-policy GKD) claim to improve. Training is
the ``clm`` task's (continual pre-training on blocks of raw text); each held-out block is cut into a
prompt (its first ``prompt_length`` tokens) and the true continuation (the next ``continuation_length``).
At the end of training the model continues every prompt greedily (``model.generate`` with the KV cache),
and per prompt:

* ``rouge_l`` — ROUGE-L F-measure of the continuation's text against the true one (``rouge-score``'s
  scorer, its default tokenisation: lower-cased alphanumeric words); the main metric;
* ``teacher_nll`` — the scorer's mean negative log-likelihood per token of the model's own continuation
  given the prompt: how well the student stays where the teacher puts its mass (lower is better); the
  scorer is the run's fine-tuned teacher (for the teacher's own row, the teacher itself);
* ``distinct_2`` — distinct token bigrams over all bigrams of the continuation (1: no repetition);
* ``perplexity`` (with bits per byte and word perplexity) — the ``clm`` scores on the same held-out blocks.

Each prompt's row is stored with the evaluation's predictions, so ``compare`` gives paired bootstrap CIs
over prompts for every one of these. Earlier evaluations (per epoch) score perplexity only: generating
is the expensive part, done once, for the model the run ends with.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from distillbench.errors import UserError
from distillbench.fields import setting
from distillbench.task import register_task
from distillbench.tasks.clm import CausalLanguageModeling, next_token_nll

if TYPE_CHECKING:
    from datasets import DatasetDict

GENERATION_COLUMNS = ("rouge_l", "nll", "tokens", "distinct_bigrams", "bigrams")  # one prompt's row
GENERATED = "generation"  # the evaluation's array of those rows, beside the clm task's "predictions"


def distinct_bigrams(tokens: list[int]) -> tuple[int, int]:
    """(distinct bigrams, bigrams) of one token sequence."""
    pairs = list(itertools.pairwise(tokens))
    return len(set(pairs)), len(pairs)


@register_task("generation")
class ContinuationGeneration(CausalLanguageModeling):
    """Continuations of held-out prompts: ROUGE-L, the teacher's NLL of them, distinct-2, and perplexity."""

    description = "continue held-out prompts (ROUGE-L, teacher NLL, distinct-2; clm perplexity)"
    main_metric = "rouge_l"
    greater_is_better = True
    scores_generations = True
    paper_metrics = ("rouge_l", "teacher_nll", "distinct_2")  # perplexity: in the record, and `compare --metric`
    column_label = "GEN ROUGE-L/teacher NLL/dist-2"
    short_label = "GEN"
    display_scale = 1.0
    display_decimals = 1
    metric_decimals = {"rouge_l": 3, "teacher_nll": 2, "distinct_2": 3, "bits_per_byte": 3}
    eval_set_label = "held-out text"
    eval_unit = "held-out prompts"
    # one evaluation, at the end: generating is what costs, and the main metric exists only there
    train_defaults = CausalLanguageModeling.train_defaults | {"eval_strategy": "end"}

    @dataclass
    class Options(CausalLanguageModeling.Options):
        prompt_length: int = setting(64, gt=0, help="prompt: the first tokens of a held-out block")
        continuation_length: int = setting(64, gt=0, help="tokens generated and compared after each prompt")
        max_prompts: int = setting(512, gt=0, help="held-out blocks scored (the first ones), -1: all", allow=(-1,))

    tokenizer: Any = None  # set by preprocess: continuations are compared as text

    def check_sequence_length(self, max_seq_length: int) -> None:
        needed = self.options.prompt_length + self.options.continuation_length
        if needed > max_seq_length:
            raise UserError(
                f"generation: prompt_length + continuation_length = {needed} is longer than a block "
                f"({max_seq_length} tokens); the true continuation is cut from the block"
            )

    def preprocess(self, raw: DatasetDict, tokenizer, max_seq_length: int) -> DatasetDict:
        self.check_sequence_length(max_seq_length)
        blocks = super().preprocess(raw, tokenizer, max_seq_length)
        self.tokenizer = tokenizer
        if self.options.max_prompts > 0 and len(blocks["validation"]) > self.options.max_prompts:
            blocks["validation"] = blocks["validation"].select(range(self.options.max_prompts))
        return blocks

    def generation_arrays(
        self, model: Any, scorer: Any, dataset: Any, batch_size: int, progress: bool = True
    ) -> dict[str, np.ndarray]:
        """Per held-out block: ROUGE-L, the scorer's NLL sum and token count of the model's continuation,
        its distinct and total bigrams (:data:`GENERATION_COLUMNS`)."""
        from rouge_score import rouge_scorer
        from tqdm.auto import tqdm
        from transformers import GenerationConfig

        prompt, length = self.options.prompt_length, self.options.continuation_length
        rouge = rouge_scorer.RougeScorer(["rougeL"])
        end = model.config.eos_token_id
        generation = GenerationConfig(
            do_sample=False,
            max_new_tokens=length,
            min_new_tokens=length,
            use_cache=True,
            pad_token_id=end if end is not None else 0,
            eos_token_id=end,
        )
        device = next(model.parameters()).device
        rows = []
        ids = torch.tensor(dataset["input_ids"])
        was_training = model.training
        model.eval()
        try:
            batches = tqdm(
                range(0, len(ids), batch_size), desc="generating continuations", leave=False, disable=not progress
            )
            for start in batches:
                block = ids[start : start + batch_size].to(device)
                with torch.no_grad():
                    sequences = model.generate(
                        input_ids=block[:, :prompt],
                        attention_mask=torch.ones_like(block[:, :prompt]),
                        generation_config=generation,
                    )
                    logits = scorer(input_ids=sequences).logits
                nll = next_token_nll(logits, sequences)[:, prompt - 1 :].sum(-1)
                for i, sequence in enumerate(sequences.cpu()):
                    continuation = sequence[prompt:].tolist()
                    truth = block[i, prompt : prompt + length].tolist()
                    text, true_text = self.tokenizer.decode(continuation), self.tokenizer.decode(truth)
                    score = rouge.score(true_text, text)["rougeL"].fmeasure
                    rows.append([score, float(nll[i]), len(continuation), *distinct_bigrams(continuation)])
        finally:
            model.train(was_training)
        return {GENERATED: np.asarray(rows, dtype=np.float64).reshape(-1, len(GENERATION_COLUMNS))}

    def metric_on(self, arrays: dict[str, np.ndarray], rows: np.ndarray) -> dict[str, float]:
        metrics = super().metric_on(arrays, rows)
        if GENERATED in arrays:
            metrics |= self.generation_metrics(arrays[GENERATED][rows])
        return metrics

    def metric_rows(self, arrays: dict[str, np.ndarray], rows: np.ndarray, metric: str) -> np.ndarray:
        if metric in ("rouge_l", "teacher_nll", "distinct_2"):
            totals = arrays[GENERATED][rows].sum(axis=1)  # [R, columns]
            return self._generation(*totals.T, count=rows.shape[1])[metric]
        return super().metric_rows(arrays, rows, metric)

    def generation_metrics(self, generated: np.ndarray) -> dict[str, float]:
        totals = np.asarray(generated, np.float64).sum(axis=0)
        return {k: float(v) for k, v in self._generation(*totals, count=len(generated)).items()}

    @staticmethod
    def _generation(rouge: Any, nll: Any, tokens: Any, distinct: Any, bigrams: Any, count: int) -> dict[str, Any]:
        return {
            "rouge_l": rouge / max(count, 1),
            "teacher_nll": nll / np.maximum(tokens, 1),
            "distinct_2": distinct / np.maximum(bigrams, 1),
        }
