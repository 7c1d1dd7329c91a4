"""``distillbench tune``: Optuna over the space a method declares (plus common training knobs).

Each trial is an ordinary ``distillbench run`` (same harness, same record, tagged with the study and
trial number); per-epoch dev scores are reported to the trial so a pruner can stop it. Studies live in
any Optuna RDB storage (SQLite under ``results/studies/`` by default). Several workers may share one
study: claiming a trial is serialised by a storage lock, so the study ends with exactly the requested
number of trials; a worker that dies mid-trial stops sending heartbeats, its trial is failed and retried
by the next worker (``RetryHeartbeatStaleTrialCallback``, the successor of the deprecated
``RetryFailedTrialCallback``), resuming from that trial's last checkpoint.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import time
import warnings
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import optuna
from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback, fail_stale_trials
from optuna.trial import TrialState
from sqlalchemy import create_engine, text
from transformers import TrainerCallback

from distillbench.atomic import write_json_atomic
from distillbench.config import TrainConfig
from distillbench.errors import UserError
from distillbench.periodic import repeating

# Heartbeats and stale-trial retries are Optuna's "experimental" features, used on purpose: their
# warning would be printed on every command, before any real message.
warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)

PRUNERS = ("median", "hyperband", "none")
CLAIMED_STATES = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING)


COMMON_SUGGESTIONS: dict[str, Callable[[optuna.Trial], Any]] = {
    "learning_rate": lambda trial: trial.suggest_float("learning_rate", 1e-5, 3e-4, log=True),
    "batch_size": lambda trial: trial.suggest_categorical("batch_size", [16, 32]),
    "warmup_steps": lambda trial: trial.suggest_int("warmup_steps", 0, 200, step=50),
    "epochs": lambda trial: trial.suggest_int("epochs", 2, 6),
}


def check_common(names: tuple[str, ...]) -> None:
    unknown = [n for n in names if n not in COMMON_SUGGESTIONS]
    if unknown:
        raise UserError(f"unknown common search parameter {unknown[0]!r}; known: {', '.join(COMMON_SUGGESTIONS)}")


def common_space(trial: optuna.Trial, names: tuple[str, ...]) -> dict[str, Any]:
    """The training knobs every method shares (TrainConfig fields); ``names`` picks which are searched."""
    check_common(names)
    return {name: COMMON_SUGGESTIONS[name](trial) for name in names}


def make_storage(url: str, heartbeat_interval: int, grace_period: int) -> RDBStorage:
    """Open (and on first use create) the study database; creation is serialised across workers, since
    two processes creating Optuna's schema at once collide in PostgreSQL's catalogue."""
    try:
        with storage_lock(url, "schema"):
            return RDBStorage(
                url,
                heartbeat_interval=heartbeat_interval,
                grace_period=grace_period,
                heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=3),
            )
    except Exception as error:  # bad URL, missing driver, unreachable server
        raise UserError(f"cannot open Optuna storage {url}: {str(error).splitlines()[0]}") from None


def make_pruner(name: str) -> optuna.pruners.BasePruner:
    if name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=0)
    if name == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1)
    if name == "none":
        return optuna.pruners.NopPruner()
    raise UserError(f"unknown pruner {name!r}; choose one of {', '.join(PRUNERS)}")


def load_study(storage: str | None, study_name: str | None) -> optuna.Study:
    """An existing study; a missing SQLite file is an error, never created empty."""
    if not storage or not study_name:
        raise UserError("--storage and --study-name are both needed to load a study")
    if storage.startswith("sqlite:///") and not Path(storage.removeprefix("sqlite:///")).is_file():
        raise UserError(f"no study database at {storage.removeprefix('sqlite:///')} (tune writes one there)")
    try:
        return optuna.load_study(study_name=study_name, storage=storage)
    except KeyError:
        raise UserError(f"no study {study_name!r} in {storage}") from None


@contextlib.contextmanager
def storage_lock(url: str, name: str) -> Iterator[None]:
    """A lock shared by every worker of one storage: a PostgreSQL advisory lock, or a file lock beside a
    SQLite database (other back-ends: none). Serialises schema creation and 'count trials, then ask'."""
    if url.startswith("postgresql"):
        key = int(hashlib.sha256(name.encode()).hexdigest()[:15], 16)
        engine = create_engine(url)
        try:
            with engine.connect() as connection:
                connection.execute(text("SELECT pg_advisory_lock(:k)"), {"k": key})
                try:
                    yield
                finally:
                    connection.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": key})
        finally:
            engine.dispose()
    elif url.startswith("sqlite:///"):
        with open(f"{url.removeprefix('sqlite:///')}.lock", "w") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)
    else:
        yield


@contextlib.contextmanager
def heartbeat(storage: RDBStorage, trial: optuna.Trial, interval: int) -> Iterator[None]:
    """Record the trial's heartbeat while it runs, so a killed worker's trial is detected as stale."""
    trial_id = trial._trial_id  # Optuna exposes no public id for ask()-ed trials
    with repeating(lambda: storage.record_heartbeat(trial_id), interval, "trial-heartbeat"):
        yield


class PruningCallback(TrainerCallback):
    """Reports each dev evaluation to the trial; stops training gracefully when the pruner says so."""

    def __init__(self, trial: optuna.Trial, metric: str) -> None:
        self.trial = trial
        self.metric = metric
        self.pruned = False
        self.reports = 0

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        value = (metrics or {}).get(f"eval_{self.metric.replace('/', '_')}")
        if value is None:
            return
        self.reports += 1
        self.trial.report(float(value), step=self.reports)
        if self.trial.should_prune():
            self.pruned = True
            control.should_training_stop = True


@dataclass
class TuneSettings:
    study_name: str
    storage: str
    trials: int
    pruner: str = "median"
    timeout: float | None = None
    common: tuple[str, ...] = tuple(COMMON_SUGGESTIONS)
    seed: int = 42
    heartbeat_interval: int = 30
    grace_period: int = 90


Objective = Callable[[optuna.Trial, int, dict[str, Any], dict[str, Any], PruningCallback], float]


def run_worker(
    settings: TuneSettings, direction: str, method_space: Callable, metric: str, objective: Objective
) -> optuna.Study:
    """Claim and run trials until the study holds ``settings.trials`` of them (or the timeout)."""
    storage = make_storage(settings.storage, settings.heartbeat_interval, settings.grace_period)
    study = optuna.create_study(
        study_name=settings.study_name,
        storage=storage,
        direction=direction,
        pruner=make_pruner(settings.pruner),
        load_if_exists=True,
    )
    train_names = {f.name for f in fields(TrainConfig)}
    started = time.time()
    while settings.timeout is None or time.time() - started < settings.timeout:
        fail_stale_trials(study)  # a dead worker's trial → FAIL, and a WAITING copy to retry
        with storage_lock(settings.storage, settings.study_name):
            counts = Counter(t.state for t in study.get_trials(deepcopy=False))
            claimed = sum(counts[state] for state in CLAIMED_STATES)
            trial = None
            if counts[TrialState.WAITING] or claimed < settings.trials:
                # Re-seeded per claim: reproducible for one worker, yet two workers (or a restarted one)
                # never replay the same random start-up trials. ``ask`` takes a WAITING retry first.
                study.sampler = optuna.samplers.TPESampler(seed=settings.seed + len(study.trials))
                trial = study.ask()
        if trial is None:
            if not counts[TrialState.RUNNING]:
                break
            # Enough trials are claimed but some still run: in another worker, or in one that died and
            # whose heartbeat has not gone stale yet. Wait, so that a dead worker's trial is retried here.
            time.sleep(settings.heartbeat_interval)
            continue
        history = RetryHeartbeatStaleTrialCallback.retry_history(storage.get_trial(trial._trial_id))
        origin = history[0] if history else trial.number  # a retried trial continues its original's run
        params = {**method_space(trial), **common_space(trial, settings.common)}
        train = {k: v for k, v in params.items() if k in train_names}
        method = {k: v for k, v in params.items() if k not in train_names}
        callback = PruningCallback(trial, metric)
        with heartbeat(storage, trial, settings.heartbeat_interval):
            try:
                value = objective(trial, origin, train, method, callback)
            except Exception:
                study.tell(trial, state=TrialState.FAIL)
                raise
        if callback.pruned:
            study.tell(trial, state=TrialState.PRUNED)
        else:
            study.tell(trial, value)
    return study


def teacher_pins(teacher: TrainConfig) -> dict[str, Any]:
    """The teacher stages' effective settings as explicit ``teacher_*`` values: tuned values are the
    student's, so a trial (or a run from the best trial) distils from the same cached teacher."""
    return {
        "teacher_batch_size": teacher.batch_size,
        "teacher_warmup_steps": teacher.warmup_steps,
        "teacher_epochs": teacher.epochs,
    }


def best_params_path(results_dir: Path, method: str, task: str) -> Path:
    return results_dir / "best" / f"{method}-{task}.json"


def save_best(study: optuna.Study, results_dir: Path, method: str, task: str) -> Path | None:
    """The best finished trial's parameters, for ``distillbench run --params best``."""
    finished = [t for t in study.trials if t.state == TrialState.COMPLETE]
    if not finished:
        return None
    best = study.best_trial
    path = best_params_path(results_dir, method, task)
    write_json_atomic(
        path,
        {
            "method": method,
            "task": task,
            "study": study.study_name,
            "trial": best.number,
            "value": best.value,
            "direction": study.direction.name.lower(),
            "params": best.params,
            "finished_trials": len(finished),
        },
    )
    return path


def load_best(results_dir: Path, method: str, task: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """The best parameters a study saved, and where they come from (study, trial, its score): a run
    started from them records that origin, and the tables give it a row of its own ("kd (tuned)")."""
    path = best_params_path(results_dir, method, task)
    if not path.is_file():
        raise UserError(f"no tuned parameters at {path}; run `distillbench tune --method {method} --task {task}`")
    best = json.loads(path.read_text())
    return best["params"], {key: best[key] for key in ("study", "trial", "value")}


def report(study: optuna.Study, out_dir: Path) -> tuple[str, list[Path]]:
    """Best value/params, parameter importances, and Optuna's plots saved as images."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from optuna.visualization import matplotlib as optuna_plots

    finished = [t for t in study.trials if t.state == TrialState.COMPLETE]
    if not finished:
        raise UserError(f"study {study.study_name} has no finished trials yet")
    states = {
        s.name: sum(t.state == s for t in study.trials) for s in TrialState if any(t.state == s for t in study.trials)
    }
    lines = [
        f"study {study.study_name}: {states}",
        f"best value {study.best_value:.4f} (trial {study.best_trial.number})",
        f"best params {json.dumps(study.best_params, sort_keys=True)}",
    ]
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    axes = optuna_plots.plot_optimization_history(study)
    paths.append(out_dir / f"{study.study_name}-history.png")
    axes.figure.savefig(paths[-1], bbox_inches="tight")
    plt.close(axes.figure)
    if len(finished) >= 2:
        try:
            importances = optuna.importance.get_param_importances(study)
            lines.append("importances " + ", ".join(f"{k}={v:.3f}" for k, v in importances.items()))
            axes = optuna_plots.plot_param_importances(study)
            paths.append(out_dir / f"{study.study_name}-importances.png")
            axes.figure.savefig(paths[-1], bbox_inches="tight")
            plt.close(axes.figure)
        except (RuntimeError, ValueError) as error:
            lines.append(f"importances unavailable: {error}")
    return "\n".join(lines), paths
