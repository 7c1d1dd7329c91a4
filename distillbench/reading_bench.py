"""How long reading takes: CLI start-up and the leaderboard, cold and warm, timed as a user runs them.

Each command is a fresh ``python -m distillbench`` process, as typed in a terminal, and its wall time is
what a user waits. "Cold" gives the leaderboard an empty cache (every bootstrap computed); "warm" runs it
again on the same cache. The record goes to ``<results>/bench/reading/`` and docs/performance.md shows
the newest one (a generated section): no figure of this machine is typed by hand.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from distillbench.atomic import write_json_atomic
from distillbench.cached import stable_key

FOLDER = Path("bench") / "reading"
TARGETS_S = {  # what a user should wait at most on 2 cores, from the issue that asked for these timings
    "list": 3.0,
    "show ted": 3.0,
    "leaderboard (cold cache)": 60.0,
    "leaderboard (warm cache)": 10.0,
    "table --significance (warm cache)": 20.0,
}


def _timed(args: list[str], environment: dict[str, str]) -> float:
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "distillbench", *args], env=environment, check=True, capture_output=True)
    return time.perf_counter() - started


def run_reading_bench(results_dir: Path, repeats: int = 3, echo: Callable[[str], None] = print) -> dict[str, Any]:
    """Time every reading command on the records under ``results_dir``; write and return the record."""
    from distillbench.provenance import git_state, hardware

    reading = ["--results-dir", str(results_dir)]
    timings: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as cache:
        environment = os.environ | {"DISTILLBENCH_CACHE": cache}
        for name, args in (("list", ["list"]), ("show ted", ["show", "ted"])):
            timings[name] = min(_timed(args, environment) for _ in range(repeats))
            echo(f"{name:36s} {timings[name]:6.1f} s")
        for name, args in (
            ("leaderboard (cold cache)", ["leaderboard", *reading]),
            ("leaderboard (warm cache)", ["leaderboard", *reading]),
            ("table --significance (warm cache)", ["table", "--significance", *reading]),
        ):
            timings[name] = _timed(args, environment)
            echo(f"{name:36s} {timings[name]:6.1f} s")
    record = {
        "kind": "reading-bench",
        "records": len(list((results_dir / "runs").glob("*.json"))),
        "timings_s": timings,
        "hardware": hardware(),
        "git": git_state(),
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    path = results_dir / FOLDER / f"reading-{stable_key(record)}.json"
    write_json_atomic(path, record)
    return record | {"_path": str(path)}


def reading_markdown(results_dir: Path) -> str:
    """The newest reading record as a table: each command, its wall time and the target."""
    found = sorted(
        (json.loads(p.read_text()) | {"_name": p.name} for p in (results_dir / FOLDER).glob("*.json")),
        key=lambda r: r["finished_at"],
    )
    if not found:
        return "No reading record yet: `distillbench bench --reading --results-dir results` writes one."
    record = found[-1]
    hardware = record["hardware"]
    lines = [
        f"`results/{FOLDER}/{record['_name']}`: {record['records']} run records; {hardware.get('cpu', 'CPU')}, "
        f"{hardware.get('cpu_count')} cores. Each command is a fresh process, timed as a user waits for it.",
        "",
        "| command | seconds | target |",
        "|:--|--:|--:|",
    ]
    timings = record["timings_s"]
    for name in sorted(timings, key=lambda n: list(TARGETS_S).index(n) if n in TARGETS_S else len(TARGETS_S)):
        seconds, target = timings[name], TARGETS_S.get(name)
        lines.append(f"| `{name}` | {seconds:.1f} | {'≤ ' + format(target, 'g') if target else ''} |")
    return "\n".join(lines)
