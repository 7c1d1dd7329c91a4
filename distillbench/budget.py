"""What a student's result cost: labelled examples, optimizer steps, teacher forwards and training FLOPs.

Methods differ in more than their loss: TED's Stage II starts from a student already fine-tuned on the
labels, a method may train modules of its own first, a teacher-output cache turns every epoch's teacher
forward into one pass. A comparison a reviewer accepts states those budgets, so every record carries
them (:func:`count`), computed from the record's own fields, and a reader can compute them for records
written before the field existed. The counts cover the student's side only: the teacher's own fine-tuning
is the same for every distilling method and is left out.

Training FLOPs are an estimate: a forward pass at the task's typical (median dev) length costs
``F_student`` / ``F_teacher`` (counted once per run, or read from ``distillbench efficiency``), a
training step ≈ 3 × forward (forward + backward), a stage that trains a method's own modules on a
frozen model costs that model's forward; the modules a method adds (TED's filters) cost 2 FLOPs per
parameter per token, forward, ×3 when trained. Padding is not counted.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

TRAINING_FACTOR = 3  # forward + backward ≈ three forwards
STUDENT_FINETUNE = "student-finetune"  # the harness's stage name of the student fine-tuned on the labels


def stage_steps(examples: int, batch: int, epochs: float, max_steps: int | None) -> tuple[int, int]:
    """(examples read, optimizer steps) of a stage, as the Trainer schedules it."""
    if max_steps and max_steps > 0:
        return max_steps * batch, max_steps
    steps = math.ceil(math.ceil(examples / batch) * epochs)
    return round(examples * epochs), steps


def reads_labels(loss_terms: dict[str, Any]) -> bool:
    """A stage whose loss has a task term reads the labels (every distillation loss here mixes one in)."""
    return any(name.rsplit("/", 1)[-1] in ("task", "filter_task") for name in loss_terms)


def count(record: dict[str, Any]) -> dict[str, Any]:
    """The student's budget in a run record: per stage and in total. A record of a teacher stage has none."""
    if record.get("role") == "teacher":
        return {}
    train = record.get("train") or {}
    n = (record.get("data") or {}).get("train_examples") or 0
    batch = (record.get("distributed") or {}).get("global_batch_size") or train.get("batch_size") or 1
    stages: list[dict[str, Any]] = []
    # The fine-tuned student is a stage before the run only for a run that starts from it (TED, a
    # control); a fine-tune run from the pretrained student *is* that stage (read from the cache).
    starts_finetuned = (record.get("model") or {}).get("student_start") == "finetuned"
    for name, stage in (record.get("stages") or {}).items():
        settings = stage.get("settings") or {}
        if name == STUDENT_FINETUNE and not starts_finetuned:
            continue
        if name == STUDENT_FINETUNE:
            examples, steps = stage_steps(
                n, settings["train"]["batch_size"], settings["epochs"], settings.get("max_steps")
            )
            stages.append({"stage": name, "examples": examples, "steps": steps, "labelled": True, "trains": "student"})
        elif "base" in settings:  # a method's own stage on the fine-tuned student or teacher (frozen model)
            model = "teacher" if "-teacher-finetune-" in str(settings["base"]) else "student"
            examples, steps = stage_steps(n, settings["batch_size"], settings["epochs"], settings.get("max_steps"))
            forwards = n if stage.get("read_cache") else examples  # a feature cache: one pass over train
            stages.append(
                {
                    "stage": name,
                    "examples": examples if model == "student" else 0,
                    "steps": steps if model == "student" else 0,
                    "labelled": model == "student" and reads_labels(stage.get("loss_terms") or {}),
                    "trains": "modules",
                    "module_examples": examples,
                    "frozen_forwards": {model: forwards},
                }
            )
    examples, steps = stage_steps(n, batch, train.get("epochs") or 0, train.get("max_steps"))
    teacher = record.get("teacher") or {}
    members = len(teacher.get("members") or [teacher]) if teacher else 0
    cache = record.get("teacher_cache") or {}
    teacher_forwards = members * (cache.get("examples", n) if cache else examples)
    stages.append(
        {
            "stage": "distillation",
            "examples": examples,
            "steps": steps,
            "labelled": reads_labels(record.get("loss_terms") or {}),
            "trains": "student",
            "frozen_forwards": {"teacher": teacher_forwards} if teacher_forwards else {},
        }
    )
    return {
        "student_labelled_examples": sum(s["examples"] for s in stages if s["labelled"]),
        "student_optimizer_steps": sum(s["steps"] for s in stages if s["trains"] == "student"),
        "teacher_forwards": sum(s.get("frozen_forwards", {}).get("teacher", 0) for s in stages),
        "stages": stages,
    }


def training_flops(
    budget: dict[str, Any],
    student_gflops: float | None,
    teacher_gflops: float | None,
    extra_params: int = 0,
    typical_length: int = 0,
) -> float | None:
    """Estimated training FLOPs of a budget (see the module's note); None when a model's cost is unknown."""
    if not budget or student_gflops is None:
        return None
    extra = 2 * extra_params * typical_length / 1e9  # GFLOPs per example of the method's own modules
    total = 0.0
    for stage in budget["stages"]:
        forwards = stage.get("frozen_forwards", {})
        if stage["trains"] == "student":
            total += TRAINING_FACTOR * (student_gflops + extra) * stage["examples"]
        else:
            total += student_gflops * forwards.get("student", 0) + TRAINING_FACTOR * extra * stage["module_examples"]
        if forwards.get("teacher"):
            if teacher_gflops is None:
                return None
            total += teacher_gflops * forwards["teacher"]
    return total * 1e9


def with_flops(budget: dict[str, Any]) -> dict[str, Any]:
    """A budget with its ``training_flops`` estimated from the per-example costs it holds."""
    costs = budget.get("gflops_per_example") or {}
    flops = training_flops(
        budget,
        costs.get("student"),
        costs.get("teacher"),
        budget.get("extra_params", 0),
        budget.get("typical_length", 0),
    )
    return budget | {"training_flops": flops}


def typical_row(rows: Any) -> int:
    """The index of the median-length row: FLOPs are quoted at the task's typical length."""
    lengths = [len(row["input_ids"]) for row in rows]
    return sorted(range(len(lengths)), key=lengths.__getitem__)[len(lengths) // 2]


INPUT_KEYS = ("input_ids", "attention_mask", "token_type_ids")


def forward_gflops(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> float:
    """Forward GFLOPs of ``model`` on ``batch``, counted by ``FlopCounterMode`` on the eager attention
    (it cannot see inside SDPA kernels; the matmuls are the same arithmetic), the model's own restored."""
    device = next(model.parameters()).device  # the collator builds the batch on the CPU
    inputs = {k: v.to(device) for k, v in batch.items() if k in INPUT_KEYS}
    config = getattr(model, "config", None)
    restore = getattr(config, "_attn_implementation", None)
    if restore is not None:
        model.set_attn_implementation("eager")
    # FlopCounterMode's module tracker hooks the gradient of every tensor a module receives that requires
    # one: a parameter passed between modules (DeBERTa's relative embeddings) has no gradient function
    # there, so the pass runs with gradients off and parameters frozen, then everything is restored.
    training, frozen = model.training, [p for p in model.parameters() if p.requires_grad]
    model.eval()
    for parameter in frozen:
        parameter.requires_grad_(False)
    counter = FlopCounterMode(display=False)
    try:
        with counter, torch.no_grad():
            model(**inputs)
    finally:
        model.train(training)
        for parameter in frozen:
            parameter.requires_grad_(True)
        if restore is not None:
            model.set_attn_implementation(restore)
    return counter.get_total_flops() / 1e9
