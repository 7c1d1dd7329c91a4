"""Runs side by side share what they build once; damaged caches are detected and rebuilt."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from conftest import launch_cli, tiny_run_args
from distillbench.cli import main


def students(results: Path) -> dict[tuple[str, int], dict]:
    records = [json.loads(p.read_text()) for p in (results / "runs").glob("*.json")]
    return {(r["method"], r["seed"]): r for r in records if r["role"] == "student"}


def test_concurrent_runs_build_shared_stages_once_and_match_their_solo_runs(tiny_bert, glue_dir, workdir):
    cells = [
        [*tiny_run_args(tiny_bert, glue_dir, "kd"), "--seed", "1"],
        [*tiny_run_args(tiny_bert, glue_dir, "kd"), "--seed", "2"],
        [*tiny_run_args(tiny_bert, glue_dir, "lwd"), "--seed", "1"],
    ]
    common = ["--teacher-seed", "7", "--teacher-cache", "on"]
    solo_dir, together_dir = workdir / "solo", workdir / "together"
    solo_dir.mkdir()
    together_dir.mkdir()
    for args in cells:
        process = launch_cli([*args, *common], solo_dir, solo_dir / "cache")
        assert process.wait(timeout=300) == 0, process.stderr.read()[-2000:]
    processes = [launch_cli([*args, *common], together_dir, together_dir / "cache") for args in cells]
    for process in processes:
        assert process.wait(timeout=300) == 0, process.stderr.read()[-2000:]
    alone, together = students(solo_dir / "results"), students(together_dir / "results")
    assert sorted(together) == [("kd", 1), ("kd", 2), ("lwd", 1)]
    for key, record in alone.items():
        assert together[key]["metrics"] == record["metrics"] and together[key]["loss_terms"] == record["loss_terms"]
    teacher_stages = list((together_dir / "cache" / "stages").glob("mrpc-teacher-finetune-*/done.json"))
    assert len(teacher_stages) == 1  # built by one process, read by the other two
    kd_caches = {together[("kd", s)]["teacher_cache"]["key"] for s in (1, 2)}
    assert len(kd_caches) == 1


def test_the_same_run_twice_at_once_is_refused_not_clobbered(tiny_bert, glue_dir, workdir):
    from distillbench.cached import exclusive

    args = tiny_run_args(tiny_bert, glue_dir, "kd")
    (workdir / "outputs").mkdir()
    # hold the run's lock as a first process would while it trains
    from distillbench.cli import build_parser, build_run
    from distillbench.planning import plan_run

    name = plan_run(*build_run(build_parser().parse_args(args))).run_name
    with exclusive(workdir / "outputs" / f"{name}.lock"):
        second = launch_cli(args, workdir, workdir / "cache")
        assert second.wait(timeout=300) == 2
        err = second.stderr.read().strip().splitlines()
        assert err[-1].startswith("error: another process holds") and "already running" in err[-1]
    assert not (workdir / "results" / "runs").is_dir() or not list((workdir / "results" / "runs").glob("mrpc-kd-*"))


def test_damaged_caches_are_detected_and_rebuilt(tiny_bert, glue_dir, workdir, capsys):
    args = [*tiny_run_args(tiny_bert, glue_dir, "ted"), "--teacher-cache", "on"]
    assert main(args) == 0
    first = students(workdir / "results")[("ted", 42)]
    capsys.readouterr()
    stages = workdir / "cache" / "stages"
    teacher_model = next(stages.glob("mrpc-teacher-finetune-*/model/model.safetensors"))
    outputs = workdir / "cache" / "teacher-outputs" / first["teacher_cache"]["key"]  # what Stage II reads
    filters_marker = next(stages.glob("mrpc-ted-filters-student-*/done.json"))
    damages = {
        "truncated model": (
            lambda: teacher_model.write_bytes(teacher_model.read_bytes()[:1000]),
            "model.safetensors has",
        ),
        "changed .npy": (lambda: flip_a_byte(next(outputs.glob("hidden_*.npy"))), "differs from its recorded sha256"),
        "truncated .npy": (lambda: truncate(next(outputs.glob("distill_*.npy"))), "bytes, expected"),
        "truncated marker": (lambda: filters_marker.write_text('{"key": '), "done.json is unreadable"),
    }
    for name, (damage, message) in damages.items():
        damage()
        for path in (workdir / "results" / "runs").glob("mrpc-ted-*"):
            path.unlink()  # a fresh run of the same command, not a resume of a finished one
        for folder in (workdir / "outputs").glob("mrpc-ted-*/"):
            shutil.rmtree(folder)
        assert main(args) == 0, name
        err = capsys.readouterr().err
        assert message in err and "rebuilding" in err, name
        again = students(workdir / "results")[("ted", 42)]
        assert again["metrics"] == first["metrics"], name


def flip_a_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:100])
