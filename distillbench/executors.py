"""Where a sweep's cells run: in this process, in N local worker processes, or as Slurm jobs (submitit).

Every executor runs the same cells through the same claims (``claims.py``), so any mix of them started
on one results folder runs each cell once. Local workers are this very command again with ``--executor
inline``, one process per GPU where there are several; Slurm gets one job per cell through submitit, after
one job per teacher that the cells would otherwise all wait for (``afterok``), and a cell job that times
out or is preempted is requeued by submitit and resumes from the run's last checkpoint.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from distillbench.claims import claims_dir, record_complete, run_claimed
from distillbench.errors import UserError, one_line

EXECUTORS = ("inline", "local", "slurm")
SUBMITIT_LOG_ENV = "SUBMITIT_LOG_LEVEL"  # submitit's own: "NOCONFIG" skips its logging set-up
# sweep options that choose the executor: a local worker or Slurm job runs the rest of the command line
EXECUTOR_OPTIONS = {
    "--executor": 1,
    "--workers": 1,
    "--wait": 0,
    "--slurm-partition": 1,
    "--slurm-time": 1,
    "--slurm-gpus-per-task": 1,
    "--slurm-cpus-per-task": 1,
    "--slurm-mem": 1,
    "--slurm-option": 1,
}


def without_executor_options(argv: list[str]) -> list[str]:
    """The command line minus the options that chose the executor (both ``--opt v`` and ``--opt=v``)."""
    kept, skip = [], 0
    for item in argv:
        if skip:
            skip -= 1
            continue
        name = item.split("=", 1)[0]
        if name in EXECUTOR_OPTIONS:
            skip = 0 if "=" in item else EXECUTOR_OPTIONS[name]
            continue
        kept.append(item)
    return kept


def check_writable(results_dir: Path) -> None:
    """Claims, logs and records go there: a folder no worker can write fails before anything starts."""
    try:
        claims_dir(results_dir).mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise UserError(f"results folder {results_dir} is not writable: {error.strerror}") from None
    if not os.access(claims_dir(results_dir), os.W_OK):
        raise UserError(f"results folder {results_dir} is not writable")


def cuda_devices() -> int:
    import torch

    return torch.cuda.device_count()


def run_local_workers(
    workers: int, worker_argv: list[str], results_dir: Path, run_names: list[str], show_progress: bool
) -> list[Path]:
    """Start ``workers`` processes of this command with ``--executor inline``, each pinned to one GPU
    when there are several; show the overall progress from the records while they run; return their logs."""
    from tqdm.auto import tqdm

    logs_dir = claims_dir(results_dir) / "logs"
    logs_dir.mkdir(parents=True, exist_ok=True)
    gpus = cuda_devices()
    processes, logs = [], []
    for index in range(workers):
        env = dict(os.environ)
        if gpus > 1:
            env["CUDA_VISIBLE_DEVICES"] = str(index % gpus)
        log = logs_dir / f"worker-{index}.log"
        command = [sys.executable, "-m", "distillbench", *worker_argv, "--executor", "inline", "--no-progress"]
        with log.open("w") as handle:
            processes.append(subprocess.Popen(command, stdout=handle, stderr=subprocess.STDOUT, env=env))
        logs.append(log)
    bar = tqdm(total=len(run_names), unit="cell", desc=f"sweep ({workers} workers)", disable=not show_progress)
    with bar:
        while True:
            finished = all(process.poll() is not None for process in processes)
            done = sum(record_complete(results_dir, name) for name in run_names)
            bar.update(done - bar.n)
            if finished:
                return logs
            time.sleep(1.0)


@dataclass
class SlurmOptions:
    partition: str | None = None
    time_min: int = 60
    gpus_per_task: int = 0
    cpus_per_task: int = 1
    mem: str | None = None
    extra: dict[str, str] = field(default_factory=dict)

    @classmethod
    def parse(cls, partition: str | None, time: str, gpus: int, cpus: int, mem: str | None, extra: list[str]):
        if gpus < 0 or cpus < 1:
            raise UserError("--slurm-gpus-per-task must be ≥ 0 and --slurm-cpus-per-task ≥ 1")
        options = {}
        for item in extra:
            key, sep, value = item.partition("=")
            if not sep or not key:
                raise UserError(f"--slurm-option {item!r}: expected NAME=VALUE (an sbatch option without its dashes)")
            options[key] = value
        return cls(partition, parse_minutes(time), gpus, cpus, mem, options)


def parse_minutes(text: str) -> int:
    """Slurm's ``MM``, ``HH:MM:SS`` or ``D-HH:MM:SS`` time limit as whole minutes (at least 1)."""
    try:
        days, _, clock = text.rpartition("-")
        parts = [int(p) for p in clock.split(":")]
        if len(parts) == 1:
            minutes = parts[0]
        else:
            parts = [0] * (3 - len(parts)) + parts
            minutes = parts[0] * 60 + parts[1] + (1 if parts[2] else 0)
        minutes += int(days or 0) * 24 * 60
    except ValueError:
        raise UserError(f"--slurm-time {text!r}: expected minutes, HH:MM:SS or D-HH:MM:SS") from None
    if minutes < 1:
        raise UserError(f"--slurm-time {text!r}: at least one minute")
    return minutes


def check_slurm(partition: str | None) -> None:
    """sbatch on PATH and, when one is named, a partition Slurm knows: checked before anything is submitted."""
    if shutil.which("sbatch") is None:
        raise UserError("--executor slurm: no sbatch on PATH (run it where Slurm's client commands are)")
    if partition:
        known = subprocess.run(["sinfo", "-h", "-o", "%R"], capture_output=True, text=True, check=False).stdout.split()
        if partition not in known:
            raise UserError(
                f"--slurm-partition {partition!r}: not a partition here (Slurm has: {', '.join(known) or 'none'})"
            )


def import_submitit() -> Any:
    """submitit, imported without the ``logging.config.dictConfig`` it runs at import: that call shuts down
    every logging handler the process already holds, attached or not (a caller's log file; absl's handler,
    which then closes the stream it was made on — under pytest, the captured stderr, whose loss crashed the
    test run). Its warnings reach stderr through logging's last resort. The variable is set for this
    import only: the jobs it submits import submitit afresh and configure their logs as usual."""
    if "submitit" not in sys.modules:
        previous = os.environ.get(SUBMITIT_LOG_ENV)
        os.environ[SUBMITIT_LOG_ENV] = "NOCONFIG"
        try:
            import submitit  # noqa: F401
        finally:
            if previous is None:
                del os.environ[SUBMITIT_LOG_ENV]
            else:
                os.environ[SUBMITIT_LOG_ENV] = previous
    return sys.modules["submitit"]


def slurm_executor(folder: Path, options: SlurmOptions, name: str):
    submitit = import_submitit()
    executor = submitit.AutoExecutor(folder=folder / "%j", cluster="slurm")
    parameters: dict[str, Any] = {
        "name": name,
        "timeout_min": options.time_min,
        "cpus_per_task": options.cpus_per_task,
        "tasks_per_node": 1,
        "nodes": 1,
        "slurm_additional_parameters": dict(options.extra),
    }
    if options.partition:
        parameters["slurm_partition"] = options.partition
    if options.gpus_per_task:
        parameters["slurm_gpus_per_task"] = options.gpus_per_task
    if options.mem:
        parameters["slurm_mem"] = options.mem
    executor.update_parameters(**parameters)
    return executor


def run_cli(command: Callable[[list[str]], int], argv: list[str]) -> None:
    """A ``distillbench`` command line inside a job (``command`` is the CLI's ``main``, passed in so this
    module sits below the CLI); a non-zero exit is the job's failure."""
    code = command(argv)
    if code:
        raise RuntimeError(f"distillbench {' '.join(argv)} exited with {code}")


def job_log() -> str | None:
    """The submitit log of the job this runs in (for the failure record), relative to nothing: a path."""
    try:
        environment = import_submitit().JobEnvironment()
        return str(environment.paths.stderr)
    except RuntimeError:  # not inside a submitit job
        return None


class CellJob:
    """One sweep cell as a Slurm job: claim, run, release. Requeued on timeout or preemption (submitit's
    ``checkpoint``), it takes over its own claim and the run resumes from its last checkpoint."""

    def __init__(
        self, command: Callable[[list[str]], int], run_argv: list[str], results_dir: Path, run_name: str
    ) -> None:
        self.command, self.run_argv, self.results_dir, self.run_name = command, run_argv, results_dir, run_name

    def __call__(self) -> str:
        if record_complete(self.results_dir, self.run_name):
            return "already complete"
        run = ["run", *self.run_argv]
        ran = run_claimed(self.results_dir, self.run_name, lambda: run_cli(self.command, run), job_log())
        return "ran" if ran else "held by another worker"

    def checkpoint(self, *args: Any, **kwargs: Any):
        return import_submitit().helpers.DelayedSubmission(
            CellJob(self.command, self.run_argv, self.results_dir, self.run_name)
        )


def submit_sweep(
    cells: list[Any],
    results_dir: Path,
    options: SlurmOptions,
    command: Callable[[list[str]], int],
    build_teacher: Callable[[list[str]], str],
) -> list[tuple[str, Any]]:
    """Submit the teacher jobs (``build_teacher`` of a cell's run arguments), then one job per cell to do,
    after its teacher's job; (label, job) pairs."""
    from distillbench.stages import finetune_folder, finetune_settings, teacher_stages_cached

    executor = slurm_executor(claims_dir(results_dir) / "slurm", options, "distillbench")
    teachers: dict[Path, Any] = {}
    jobs = []
    for cell in cells:
        plan = cell.plan
        folder = None
        if plan.teachers and not teacher_stages_cached(plan):
            folder = finetune_folder(plan, finetune_settings(plan, "teacher"))
            if folder not in teachers:
                executor.update_parameters(slurm_additional_parameters=dict(options.extra))
                teachers[folder] = executor.submit(build_teacher, cell.argv)
                jobs.append((f"{cell.task} teacher", teachers[folder]))
        extra = dict(options.extra)
        if folder is not None:
            extra["dependency"] = f"afterok:{teachers[folder].job_id}"
        executor.update_parameters(slurm_additional_parameters=extra)
        jobs.append((cell.label, executor.submit(CellJob(command, cell.argv, results_dir, plan.run_name))))
    return jobs


def submit_tune(
    command: Callable[[list[str]], int], argv: list[str], results_dir: Path, options: SlurmOptions, workers: int
) -> list[Any]:
    """``workers`` Optuna workers as Slurm jobs, each this ``tune`` command on the shared storage."""
    executor = slurm_executor(claims_dir(results_dir) / "slurm", options, "distillbench-tune")
    return [executor.submit(run_cli, command, argv) for _ in range(workers)]


def queued(job_ids: list[str]) -> set[str]:
    """The jobs Slurm still holds (pending, running, requeued). Asked of ``squeue`` rather than through
    submitit's ``sacct``, which a cluster without accounting storage cannot answer."""
    listed = subprocess.run(["squeue", "-h", "-o", "%i"], capture_output=True, text=True, check=False).stdout.split()
    return {job_id.split("_")[0] for job_id in listed} & set(job_ids)


def outcome_of(job: Any) -> str | None:
    """None for a job that returned; else why not, with its log."""
    if not job.paths.result_pickle.exists():
        return f"ended without a result (cancelled, killed or out of time); log {job.paths.stderr}"
    error = job.exception()
    return None if error is None else f"{one_line(error)}; log {job.paths.stderr}"


def wait_for(jobs: list[tuple[str, Any]], show_progress: bool) -> list[tuple[str, str]]:
    """Block until every job has left the queue; (label, reason with log path) of those that failed."""
    import logging

    from tqdm.auto import tqdm

    logging.getLogger("submitit").setLevel(logging.ERROR)  # its sacct fallbacks are not the user's concern
    pending = dict(jobs)
    failed = []
    with tqdm(total=len(jobs), unit="job", desc="slurm", disable=not show_progress) as bar:
        while pending:
            still = queued([job.job_id for job in pending.values()])
            for label, job in list(pending.items()):
                if job.job_id not in still:
                    del pending[label]
                    bar.update(1)
                    reason = outcome_of(job)
                    if reason is not None:
                        failed.append((label, reason))
            if pending:
                time.sleep(2.0)
    return failed
