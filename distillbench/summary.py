"""The one-screen summary printed at the end of a run (read from its record), and before one (``--dry-run``)."""

from __future__ import annotations

import dataclasses
import textwrap
from typing import TYPE_CHECKING, Any

from distillbench.config import result_settings
from distillbench.families import architecture
from distillbench.models import load_config, student_config
from distillbench.selection import bounded_by

if TYPE_CHECKING:
    from distillbench.planning import Plan


def _format_metrics(metrics: dict[str, float] | None, first: str = "") -> str:
    """``k=v`` pairs, the metric named ``first`` (the main one) leading."""
    if not metrics:
        return "-"
    ordered = sorted(metrics.items(), key=lambda item: item[0] != first.split("/")[-1] and item[0] != first)
    return "  ".join(f"{k}={v:.4f}" for k, v in ordered)


def _gap(record: dict[str, Any]) -> str:
    """How far the student is behind the teacher on the main metric (teacher − student where higher is
    better, student − teacher where lower is, as perplexity: positive means behind), and whether both
    clear the majority-class baseline."""
    key = record["main_metric"]
    teacher = (record.get("teacher") or {}).get("metrics") or {}
    student = record["metrics"]
    if key not in student:
        return "-"
    higher = record.get("greater_is_better", True)
    first, second = ("teacher", "student") if higher else ("student", "teacher")
    values = {"teacher": teacher.get(key), "student": student[key]}
    gap = f"{first} − {second} {key} = {values[first] - values[second]:+.4f}" if key in teacher else None
    parts = [gap] if gap else []
    majority = (record.get("majority_baseline") or {}).get(key)
    if majority is not None:
        above = [name for name, m in (("teacher", teacher), ("student", student)) if key in m and m[key] > majority]
        parts.append(f"above the majority class: {', '.join(above) or 'neither'}")
    return "; ".join(parts) or "-"


def _when(best: dict[str, Any]) -> str:
    """Where the best evaluation fell: the step leads, because a bounded run (``--max-steps``) ends a small
    fraction into its first epoch and "epoch 0.05" alone reads as a mistake."""
    if best.get("epoch") is None:
        return ""
    return (
        f"  (step {best['step']}, epoch {best['epoch']:.2f})"
        if best.get("step") is not None
        else f"  (epoch {best['epoch']:.2f})"
    )


def run_summary(record: dict[str, Any]) -> str:
    teacher, main = record.get("teacher") or {}, record.get("main_metric", "")
    best = record.get("best_epoch") or {}
    lines = [
        "",
        f"distillbench  {record['method']} on {record['task']}  (seed {record['seed']})",
        f"  teacher        {_format_metrics(teacher.get('metrics'), main)}",
        f"  student final  {_format_metrics(record['metrics'], main)}",
        f"  student best   {_format_metrics(best.get('metrics'), main)}{_when(best)}",
        *(
            [f"  majority class {_format_metrics(record['majority_baseline'])}"]
            if record.get("majority_baseline")
            else []
        ),
        f"  gap            {_gap(record)}",
        f"  loss terms     {_format_metrics(record.get('loss_terms'))}",
        f"  wall time      {record['wall_time_s']:.0f} s",
        f"  record         {record.get('_path', record['run_id'])}",
        *(
            [f"  student model  {saved}  (with its tokenizer)"]
            if (saved := (record.get("model") or {}).get("output_dir"))
            else []
        ),
    ]
    bounded = bounded_by(record)
    if bounded:
        lines.append(
            f"  bounded        {', '.join(bounded)}: a smoke test, left out of tables (--include-bounded shows it)"
        )
    return "\n".join(lines)


def _shape(config: Any) -> str:
    shape = architecture(config)
    return (
        f"{shape['model_type']}, {shape['num_hidden_layers']} layers, width {shape['hidden_size']}, "
        f"{shape['num_attention_heads']} heads"
    )


def plan_summary(plan: Plan) -> str:
    """What ``run --dry-run`` prints: the validated pair, stages, hyper-parameters and record path, read
    from the configurations alone (no weights are loaded — a teacher's are hashed to find its cached stage —,
    nothing is trained or written)."""
    from distillbench.stages import teacher_stages_cached  # a dry run only: the stages import the models

    config, method = plan.config, plan.method
    teacher = load_config(plan.teacher_source)
    student = student_config(plan.student_spec, teacher)
    stages: list[str] = []

    def fine_tuned(role: str) -> None:  # a role's fine-tuning runs once, before the first stage that needs it
        if not any(s.startswith(f"{role} fine-tune") for s in stages):
            cached = role == "teacher" and teacher_stages_cached(plan)
            stages.append(f"{role} fine-tune" + (" (cached)" if cached else ""))

    if method.uses_teacher:
        fine_tuned("teacher")
    for stage in method.stages():
        fine_tuned(stage.model)
        stages.append(stage.name)
    if method.student_start == "finetuned":
        fine_tuned("student")
    stages.append(f"{config.method} on the student")
    hparams = dataclasses.asdict(method.hp)
    training = result_settings(config.train)
    lines = [
        "",
        f"distillbench  {config.method} on {config.task}  (seed {config.seed})  plan only: nothing trained or written",
        f"  teacher        {_teacher_text(plan)}  ({_shape(teacher)})" if method.uses_teacher else "  teacher        -",
        f"  student        {_student_text(plan)}  ({_shape(student)})",
        *(
            ["  tokenizers     each model its own; the teacher's outputs reach the student by example"]
            * plan.cross_tokenizer
        ),
        f"  stages         {' → '.join(stages)}",
        _settings_line("hyper-params", hparams),
        _settings_line("training", {k: v for k, v in training.items() if v is not None}),
        f"  record         {plan.paths.results_dir / 'runs' / f'{plan.run_name}.json'}",
        f"  student model  {plan.output_folder / 'student'}  (checkpoints beside it, for resuming)",
    ]
    return "\n".join(lines)


def _settings_line(label: str, settings: dict[str, Any]) -> str:
    """``k=v`` pairs after a label, wrapped at 120 columns under the first pair: a line of fifteen
    settings would otherwise wrap mid-word in the terminal."""
    pairs = "  ".join(f"{k}={v}" for k, v in settings.items())
    indent = " " * 17
    return textwrap.fill(pairs, 120, initial_indent=f"  {label:<15}", subsequent_indent=indent, break_on_hyphens=False)


def _teacher_text(plan: Plan) -> str:
    if not plan.ensemble:
        return plan.config.teacher
    members = ", ".join(
        f"{m.spec} (seed {m.seed if m.seed is not None else plan.config.seed}, weight {m.weight:.3g})"
        for m in plan.teachers
    )
    return f"{len(plan.teachers)}-teacher ensemble: {members}"


def _student_text(plan: Plan) -> str:
    spec = plan.student_spec
    if spec.kind == "layers":
        return f"teacher layers {','.join(map(str, spec.layer_ids))}"
    if spec.kind == "random":
        return f"random weights, {spec.num_layers} layers of the teacher's shape"
    return plan.config.student or str(spec.source)
