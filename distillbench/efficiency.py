"""``distillbench efficiency``: what every model in the records costs — parameters, latency, FLOPs.

A distilled student is chosen for its size and speed as much as for its score, so the tables show both,
and neither is typed by hand. Cost depends on the architecture and the input length, not on what the
weights learned, so each distinct (task, architecture) of the records is measured once, with freshly
initialised weights of that architecture, on the task's own dev examples:

* parameters, in all and without the embeddings (the part that scales with depth and width);
* CPU latency per example at batch 1 and at batch 32 — the median over several timed passes after a
  warm-up, with the thread count recorded (on a shared machine only ratios within one file compare);
* forward FLOPs per example at the task's typical (median dev) length, from
  ``torch.utils.flop_counter.FlopCounterMode`` on eager attention (it cannot see inside SDPA kernels).

Each measurement is a side record ``results/efficiency/<task>-<key>.json`` naming the models it
describes by the labels the tables use.
"""

from __future__ import annotations

import copy
import hashlib
import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd
import torch
import transformers
from transformers import AutoTokenizer, DataCollatorWithPadding, PretrainedConfig

from distillbench import provenance
from distillbench.atomic import write_json_atomic
from distillbench.budget import count, forward_gflops, typical_row, with_flops
from distillbench.errors import UserError
from distillbench.labels import model_label, row_key, teacher_label
from distillbench.models import StudentSpec, load_config, resolve_model, student_config
from distillbench.portable import packaged_alias
from distillbench.records import RECORD_VERSION
from distillbench.task import Task, get_task, resolve_data_dir

BATCH_SIZES = (1, 32)
ROWS = 32  # dev examples timed (batch 1: each alone; batch 32: all at once)
WARMUP_PASSES = 2
TIMED_PASSES = 5


def teacher_source(record: dict[str, Any], override: str | None) -> str:
    """Where the record's teacher architecture can be loaded from on this machine."""
    if override:
        return resolve_model(override)
    model = record.get("model") or {}
    identity = model.get("teacher_source") or model.get("source") or ""
    alias = packaged_alias(identity)
    return resolve_model(alias) if alias else identity.removeprefix("local:")


def architecture(record: dict[str, Any], by_run_id: dict[str, dict], teacher: str | None) -> PretrainedConfig:
    """The record's model architecture: the teacher's, or the student built from the teacher as its spec
    says (a student that an earlier run pre-trained has that run's student architecture)."""
    teacher_config = load_config(teacher_source(record, teacher))
    if record.get("role") == "teacher":
        return teacher_config
    spec = dict((record.get("model") or {}).get("student") or {})
    origin = spec.pop("origin", None)
    if origin and origin.get("run_id") in by_run_id:
        return architecture(by_run_id[origin["run_id"]], by_run_id, teacher)
    spec["layer_ids"] = tuple(spec.get("layer_ids") or ())
    return student_config(StudentSpec(**spec), teacher_config)


def config_key(config: PretrainedConfig) -> str:
    return hashlib.sha256(config.to_json_string(use_diff=False).encode()).hexdigest()[:16]


def parameter_counts(model: torch.nn.Module) -> dict[str, int]:
    total = sum(p.numel() for p in model.parameters())
    embeddings = getattr(model.base_model, "embeddings", None)
    embedded = sum(p.numel() for p in embeddings.parameters()) if embeddings is not None else 0
    return {"params_total": total, "params_non_embedding": total - embedded}


def median_seconds(run: Callable[[], Any]) -> float:
    """Median wall time of ``TIMED_PASSES`` calls after ``WARMUP_PASSES`` untimed ones."""
    for _ in range(WARMUP_PASSES):
        run()
    times = []
    for _ in range(TIMED_PASSES):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def measure(model: torch.nn.Module, rows: list[dict[str, Any]], collate: Callable) -> dict[str, Any]:
    """Latency per example at each batch size and FLOPs per example at the median length of ``rows``."""
    model.eval()
    inputs = [{k: v for k, v in row.items() if k in ("input_ids", "attention_mask", "token_type_ids")} for row in rows]
    result: dict[str, Any] = parameter_counts(model)
    with torch.inference_mode():
        for size in BATCH_SIZES:
            batches = [collate(inputs[i : i + size]) for i in range(0, min(len(inputs), ROWS), size)]

            def run(batches: list[dict] = batches) -> None:
                for batch in batches:
                    model(**batch)

            examples = sum(len(b["input_ids"]) for b in batches)
            result[f"latency_ms_batch{size}"] = 1000 * median_seconds(run) / examples
    typical = typical_row(inputs)
    result["gflops_per_example"] = forward_gflops(model, collate([inputs[typical]]))
    result["typical_length"] = len(inputs[typical]["input_ids"])
    return result


def dev_rows(
    task_name: str, records: list[dict[str, Any]], data_dir: str | None, teacher: str | None
) -> tuple[Task, list[dict[str, Any]], Any]:
    """The task, ``ROWS`` dev examples spread over its dev split, tokenised as its records were (length,
    task options), and the tokenizer."""
    first = next(r for r in records if r["task"] == task_name)
    task_cls = get_task(task_name)
    task = task_cls(resolve_data_dir(data_dir), task_cls.options_for(first.get("task_options") or {}))
    tokenizer = AutoTokenizer.from_pretrained(teacher_source(first, teacher))
    max_length = (first.get("train") or {}).get("max_seq_length", 128)
    dev = task.preprocess(task.load(), tokenizer, max_length)[task.eval_splits[0]]
    # spread over the split: a task may order its dev rows (SQuAD sorts windows by length)
    picked = (
        sorted({round(i * (len(dev) - 1) / (ROWS - 1)) for i in range(ROWS)}) if len(dev) > ROWS else range(len(dev))
    )
    return task, [dev[i] for i in picked], tokenizer


def measure_records(
    records: list[dict[str, Any]],
    results_dir: Path,
    data_dir: str | None = None,
    teacher: str | None = None,
    echo: Callable[[str], None] = print,
) -> list[Path]:
    """Measure every (task, architecture) of ``records`` not measured yet; returns the files written."""
    by_run_id = {r["run_id"]: r for r in records}
    groups: dict[tuple[str, str], dict[str, Any]] = {}
    for record in records:
        try:
            config = architecture(record, by_run_id, teacher)
        except UserError as error:
            echo(f"efficiency: {record['_path']}: {error}; not measured")
            continue
        entry = groups.setdefault((record["task"], config_key(config)), {"config": config, "labels": set()})
        key = row_key(record)
        entry["labels"].add(teacher_label(record) if key[1] == "teacher" else key[3])
    written = []
    prepared: dict[str, tuple[Task, list[dict[str, Any]], Any] | None] = {}  # one tokenisation per task
    for (task_name, key), entry in sorted(groups.items()):
        path = results_dir / "efficiency" / f"{task_name}-{key}.json"
        if path.is_file():
            continue
        echo(f"efficiency: {task_name} {', '.join(sorted(entry['labels']))} …")
        if task_name not in prepared:
            try:
                prepared[task_name] = dev_rows(task_name, records, data_dir, teacher)
            except UserError as error:
                echo(f"efficiency: {task_name}: {error}; not measured")
                prepared[task_name] = None
        if prepared[task_name] is None:
            continue
        task, rows, tokenizer = prepared[task_name]
        torch.manual_seed(0)
        config = copy.deepcopy(entry["config"])
        config.update(task.model_kwargs())  # the task's head (labels, problem type)
        model = getattr(transformers, task.model_class).from_config(config)
        figures = measure(model, rows, DataCollatorWithPadding(tokenizer))
        record = {
            "kind": "efficiency",
            "version": RECORD_VERSION,
            "task": task_name,
            "models": sorted(entry["labels"]),
            "architecture": key,
            "layers": entry["config"].num_hidden_layers,
            "hidden_size": entry["config"].hidden_size,
            **figures,
            "batch_sizes": list(BATCH_SIZES),
            "timed_passes": TIMED_PASSES,
            "torch_threads": torch.get_num_threads(),
            "hardware": provenance.hardware(),
            "packages": provenance.package_versions(),
            "git": provenance.git_state(),
            "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        write_json_atomic(path, record)
        written.append(path)
    return written


def read_efficiency(results_dir: Path) -> dict[tuple[str, str], dict[str, Any]]:
    """(task, model label) → its efficiency record."""
    found = {}
    for path in sorted((results_dir / "efficiency").glob("*.json")):
        record = json.loads(path.read_text())
        for label in record["models"]:
            found[(record["task"], label)] = record
    return found


def efficiency_table(results_dir: Path) -> pd.DataFrame:
    """One row per measured (task, architecture): the models it is, size, latency and FLOPs."""
    rows = []
    for path in sorted((results_dir / "efficiency").glob("*.json")):
        r = json.loads(path.read_text())
        rows.append(
            {
                "task": r["task"],
                "models": "; ".join(r["models"]),
                "layers × width": f"{r['layers']} × {r['hidden_size']}",
                "params (M)": f"{r['params_total'] / 1e6:.1f}",
                "non-embedding (M)": f"{r['params_non_embedding'] / 1e6:.1f}",
                "ms/example, batch 1": f"{r['latency_ms_batch1']:.2f}",
                "ms/example, batch 32": f"{r['latency_ms_batch32']:.2f}",
                "GFLOPs/example": f"{r['gflops_per_example']:.2f}",
                "at length": r["typical_length"],
                "threads": r["torch_threads"],
            }
        )
    return pd.DataFrame(rows)


def declared_sampling(record: dict[str, Any]) -> dict[str, float] | None:
    """What the record's method declares it draws under the record's hyper-parameters (None: nothing,
    or a method or setting this installation does not know)."""
    from distillbench.method import get_method

    try:
        method = get_method(record.get("method", ""))
        return method.sampling(method.HParams(**record.get("hparams", {})))
    except (UserError, TypeError, ValueError):
        return None


def fill_budgets(records: list[dict[str, Any]], results_dir: Path) -> None:
    """Every student record's budget counted afresh from its own fields (so a counting fix reaches records
    already written), with the per-example costs its run measured; a record written before the ``budget``
    field takes FLOPs from the efficiency records of its student and teacher architectures (by the labels
    the tables use; without them the FLOPs stay unknown; a method's own modules are not sized there)."""
    costs = read_efficiency(results_dir)
    for record in records:
        if record.get("role") == "teacher":
            continue
        if record.get("budget", {}).get("gflops_per_example"):
            kept = ("gflops_per_example", "typical_length", "extra_params", "sampling")
            measured = {k: record["budget"][k] for k in kept if k in record["budget"]}
            sampling = declared_sampling(record)  # records written before budgets counted sampled rows
            if sampling and "sampling" not in measured:
                measured["sampling"] = sampling
            record["budget"] = with_flops(count(record) | measured)
            continue
        task = record["task"]
        student = costs.get((task, row_key(record)[3]), {})
        model = record.get("model") or {}
        teacher = costs.get((task, model_label(model.get("teacher_source"))), {}) if record.get("teacher") else {}
        gflops = {"student": student.get("gflops_per_example"), "teacher": teacher.get("gflops_per_example")}
        estimate = {"gflops_per_example": {k: v for k, v in gflops.items() if v is not None}, "extra_params": 0}
        record["budget"] = with_flops(
            count(record) | estimate | {"derived": "read from the record; method modules not sized"}
        )
