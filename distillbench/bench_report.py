"""The performance figures shown in the READMEs, rendered from the newest bench record of each device.

Speed figures go stale with every change of code or machine, so none is typed by hand: ``distillbench
leaderboard`` renders them from ``results/bench/*.json`` into the generated sections, and a test checks
the committed text against the committed records.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

PHASES = {
    "plain_kd": "plain PyTorch KD loop",
    "harness_kd_live": "harness KD, live teacher",
    "harness_kd_cached": "harness KD, cached teacher",
    "harness_finetune": "harness, student only",
    "stage_one_live": "Stage I, live frozen backbone",
    "stage_one_cached": "Stage I, cached features",
}
RATIOS = {
    "harness_vs_plain_kd": "harness KD ÷ plain KD (goal ≤ 1.05)",
    "cached_kd_vs_student_only": "cached KD ÷ student only (goal ≤ 1.05)",
    "cached_vs_live_kd": "cached KD ÷ live KD",
    "stage_one_cached_vs_live": "Stage I cached ÷ live",
    "eval_harness_vs_trainer": "harness evaluation ÷ `Trainer.evaluate` throughput",
    "vocabulary_kd_vs_lm_loss_memory": "vocabulary KD ÷ LM loss, peak memory at 8 × 512 × 50,257 (goal ≤ 1.2)",
}
# A causal LM's cached phase reads a top-k cache and computes a KL over the vocabulary: its own goal.
TOP_K_RATIOS = RATIOS | {"cached_kd_vs_student_only": "top-k cached KD ÷ student only (goal ≤ 1.10)"}


def ratio_labels(record: dict[str, Any]) -> dict[str, str]:
    """The ratios a bench record reports and their labels (with the goal each was held to)."""
    return TOP_K_RATIOS if record.get("top_k_cache") else RATIOS


def newest_benches(results_dir: Path) -> list[tuple[str, dict[str, Any]]]:
    """(file name, record) of the most recently finished bench record of each device and model kind, CPU
    first: a GPU's figures differ from the CPU's in kind (launch overhead against arithmetic), and a causal
    LM's (a vocabulary at every position, the only benches that measure its memory) from an encoder's, so
    one never hides the other."""
    newest: dict[tuple[str, str], tuple[str, str, dict[str, Any]]] = {}
    for path in sorted((results_dir / "bench").glob("*.json")):
        record = json.loads(path.read_text())
        candidate = (record.get("finished_at", ""), path.name, record)
        group = (record.get("device", "cpu"), "decoder" if record.get("vocabulary_loss_memory") else "encoder")
        if group not in newest or candidate[:2] > newest[group][:2]:
            newest[group] = candidate
    return [(name, record) for _, name, record in (newest[g] for g in sorted(newest))]


def _setup(name: str, record: dict[str, Any]) -> str:
    settings, hardware = record["settings"], record.get("hardware", {})
    steps = settings["steps"] or "one epoch of"
    threads = record.get("torch_threads")
    where = hardware.get("gpu") or f"{hardware.get('cpu', 'CPU')}, {threads} thread{'' if threads == 1 else 's'}"
    return (
        f"`results/bench/{name}`: {settings['task']}, {steps} batches of {settings['batch_size']}, max length "
        f"{settings['max_seq_length']}, best of {settings['rounds']} rounds per step; {where}."
    )


def whole_runs_line(record: dict[str, Any]) -> str:
    whole = record.get("end_to_end")
    if not whole:
        return ""
    runs = {k: v for k, v in whole.items() if not k.startswith("ratio")}
    (base, _), (staged, staged_run) = runs.items()
    parts = [f"{name} {run['wall_seconds'] / 60:.1f} min" for name, run in runs.items()]
    epochs = next(iter(runs.values()))["epochs"]
    found = {name: run["seed_stages_found_cached"] for name, run in runs.items() if run.get("seed_stages_found_cached")}
    if found:  # an earlier run on that machine paid for them: the times say nothing of what a new seed costs
        cached = "; ".join(f"{name} ({', '.join(stages)})" for name, stages in found.items())
        return (
            f"Whole {epochs:g}-epoch runs not comparable: stages of the bench's seed were found cached from an "
            f"earlier run in {cached}."
        )
    text = f"Whole {epochs:g}-epoch runs, teacher stage cached: {', '.join(parts)}; ratio {whole['ratio']:.2f}"
    if "ratio_standalone" in whole:
        shared = ", ".join(staged_run["shared_with_baseline"])
        text += (
            f" with {staged} reading the stage it shares with the {base} run ({shared}), as in a campaign of both; "
            f"{whole['ratio_standalone']:.2f} for {staged} alone, building that stage too"
        )
    return text + "."


def bench_markdown(results_dir: Path) -> str:
    """The full table of the newest bench record of each device (results/README.md)."""
    newest = newest_benches(results_dir)
    if not newest:
        return "No bench record yet (`distillbench bench --task TASK`)."
    return "\n\n".join(_bench_table(name, record) for name, record in newest)


def _bench_table(name: str, record: dict[str, Any]) -> str:
    lines = [_setup(name, record), "", "| phase | s/step | peak RSS (MiB) |", "|---|---|---|"]
    for key, label in PHASES.items():
        if key in record["phases"]:
            phase = record["phases"][key]
            lines.append(f"| {label} | {phase['seconds_per_step']:.3f} | {phase['peak_rss_mib']:.0f} |")
    lines += ["", "| ratio | value |", "|---|---|"]
    labels = ratio_labels(record)
    lines += [f"| {label} | {record['ratios'][key]:.3f} |" for key, label in labels.items() if key in record["ratios"]]
    whole = whole_runs_line(record)
    return "\n".join([*lines, *(["", whole] if whole else []), *top_k_table(record), *on_policy_table(record)])


def on_policy_table(record: dict[str, Any]) -> list[str]:
    """On-policy methods (GKD): a step against the same method's off-policy step, and the share of the
    training time spent sampling (``model.generate`` with the KV cache)."""
    rows = record.get("on_policy") or {}
    if not rows:
        return []
    header = "| on-policy method | λ | steps sampled | step ÷ off-policy step | time sampling |"
    lines = ["", header, "|---|---|---|---|---|"]
    for name, row in rows.items():
        lmbda = row["hparams"].get("lmbda", "–")
        lines.append(
            f"| {name} | {lmbda} | {row['sampled_steps']} of {row['steps']} | {row['on_vs_off_policy_step']:.2f} | "
            f"{row['sampling_share']:.0%} |"
        )
    return lines


def top_k_table(record: dict[str, Any]) -> list[str]:
    """A causal LM's bench: what a top-k teacher cache keeps, and the KD it gives against the live teacher,
    per student (untrained, trained) and temperature (records before both were measured: the untrained
    student at the KD temperature)."""
    rows = record.get("top_k_cache")
    if not rows:
        return []
    temperature = record.get("teacher_cache", {}).get("temperature")
    lines = [
        "",
        "| student | T | top-k cache | bytes per token | KD, live teacher | KD, from the cache | relative error |",
    ]
    lines.append("|---|---|---|---|---|---|---|")
    for row in rows:
        lines.append(
            f"| {row.get('student', 'untrained')} | {row.get('temperature', temperature)} | k = {row['k']} | "
            f"{row['bytes_per_token']} | {row['kd_live']:.4f} | {row['kd_top_k']:.4f} | {row['relative_error']:.1%} |"
        )
    return lines


def performance_summary(results_dir: Path) -> str:
    """A few lines per device for the project README."""
    newest = newest_benches(results_dir)
    if not newest:
        return "No bench record yet."
    return "\n\n".join(_summary(name, record) for name, record in newest)


def _summary(name: str, record: dict[str, Any]) -> str:
    ratios = record["ratios"]
    shown = [f"{label.split(' (')[0]}: {ratios[k]:.2f}" for k, label in ratio_labels(record).items() if k in ratios]
    whole = whole_runs_line(record)
    return "\n".join([_setup(name, record), "", "; ".join(shown) + ".", *([whole] if whole else [])])


def newest_tables(results_dir: Path, table: Callable[[dict[str, Any]], list[str]], none: str) -> str:
    """``table`` of the newest bench of each device that has one, under its set-up line; else ``none``."""
    tables = [[_setup(name, record), *table(record)] for name, record in newest_benches(results_dir)]
    return "\n\n".join("\n".join(lines) for lines in tables if len(lines) > 1) or none


def on_policy_markdown(results_dir: Path) -> str:
    """The on-policy table of the newest bench of each device that timed one (docs/generative.md)."""
    return newest_tables(
        results_dir, on_policy_table, "No bench record of an on-policy method yet (`distillbench bench --task clm`)."
    )


def top_k_markdown(results_dir: Path) -> str:
    """The top-k cache table of the newest causal-LM bench of each device (docs/performance.md)."""
    return newest_tables(results_dir, top_k_table, "No causal-LM bench record yet (`distillbench bench --task clm`).")
