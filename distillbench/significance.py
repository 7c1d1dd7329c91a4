"""Is a difference between two methods real? Paired bootstrap over dev examples, tests across seeds, Holm.

Two sources of chance separate two table cells: which dev examples happen to be in the dev set, and which
seed each run drew. The **paired bootstrap** resamples dev example indices (the same resample for both
methods), recomputes the task's metric for each method of each seed pair on it, and averages the
differences over seed pairs: its percentile interval and two-sided p-value answer "would this gap
survive another dev set of the same kind?". **Across seeds**, Almost Stochastic Order (Dror et al.,
2019; the optional ``deepsig`` package) gives ε_min (below 0.5: the first method is almost stochastically
larger); without it, an exact permutation test of the per-seed scores (scipy) is used — with 3 seeds
per side its smallest two-sided p-value is 0.1, which is the honest answer of so few seeds. **Holm's**
step-down correction controls the family-wise error over the comparisons of one table.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from scipy import stats

from distillbench.errors import UserError
from distillbench.labels import method_label, score_of

DEFAULT_RESAMPLES = 10_000
ALPHA = 0.05
# Enters every cached bootstrap's key: bump it when the computation changes, so no stale result is read.
BOOTSTRAP_VERSION = 1


@dataclass(frozen=True)
class BootstrapResult:
    difference: float  # mean over seed pairs of metric(A) − metric(B) on the full dev set
    low: float  # 95 % percentile interval of that difference
    high: float
    p_value: float  # two-sided: how often a resampled difference lies on the other side of 0
    pairs: int
    resamples: int

    @property
    def p_error(self) -> float:
        """The Monte-Carlo standard error of ``p_value``: it is twice a binomial proportion estimated from
        ``resamples`` draws, so another bootstrap seed moves it by about this much."""
        if not self.resamples:
            return 0.0
        tail = self.p_value / 2
        return 2 * math.sqrt(tail * (1 - tail) / self.resamples)

    @property
    def borderline(self) -> bool:
        """Within twice its Monte-Carlo error of the 5 % threshold: another seed could flip the verdict."""
        return abs(self.p_value - ALPHA) < 2 * self.p_error


def paired_bootstrap(
    metric_on_rows,
    pairs: list[tuple[Any, Any]],
    n_examples: int,
    resamples: int = DEFAULT_RESAMPLES,
    seed: int = 0,
    batch: int = 500,
) -> BootstrapResult:
    """Bootstrap over dev examples of the seed-averaged difference ``metric(A) − metric(B)``.

    ``metric_on_rows(predictions, rows)`` returns the main metric for each row of ``rows`` (an [R, n]
    array of example indices); ``pairs`` are (A, B) predictions of one seed each. scipy's ``bootstrap``
    draws the resamples (same indices for both methods of every pair: a paired design)."""

    def statistic(rows: np.ndarray, axis: int = -1) -> np.ndarray:
        rows = np.atleast_2d(rows.astype(np.int64))
        differences = [metric_on_rows(a, rows) - metric_on_rows(b, rows) for a, b in pairs]
        return np.mean(differences, axis=0)

    everything = np.arange(n_examples)[None, :]
    observed = float(statistic(everything)[0])
    if all(_same(a, b) for a, b in pairs):
        return BootstrapResult(0.0, 0.0, 0.0, 1.0, len(pairs), 0)
    result = stats.bootstrap(
        (np.arange(n_examples),),
        statistic,
        n_resamples=resamples,
        batch=batch,
        vectorized=True,
        paired=False,
        confidence_level=0.95,
        method="percentile",
        rng=np.random.default_rng(seed),
    )
    distribution = np.asarray(result.bootstrap_distribution)
    below, above = float(np.mean(distribution <= 0)), float(np.mean(distribution >= 0))
    p_value = min(1.0, 2 * min(below, above))
    low, high = result.confidence_interval
    return BootstrapResult(observed, float(low), float(high), p_value, len(pairs), resamples)


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
    return np.array_equal(a, b)


@dataclass(frozen=True)
class SeedTest:
    name: str  # "aso" or "permutation"
    statistic: float  # ASO: ε_min; permutation: mean(A) − mean(B)
    p_value: float | None  # permutation p (ASO has no p-value: ε_min < 0.5 reads as "A better")


def across_seeds(scores_a: list[float], scores_b: list[float], seed: int = 0) -> SeedTest:
    """ASO ε_min when ``deepsig`` is installed, else an exact two-sided permutation test of the means."""
    try:
        from deepsig import aso
    except ImportError:
        aso = None
    if aso is not None and len(scores_a) > 1 and len(scores_b) > 1:
        epsilon = aso(np.asarray(scores_a), np.asarray(scores_b), seed=seed, show_progress=False)
        return SeedTest("aso", float(epsilon), None)
    return permutation_across_seeds(scores_a, scores_b)


def permutation_across_seeds(scores_a: list[float], scores_b: list[float]) -> SeedTest:
    a, b = np.asarray(scores_a, dtype=float), np.asarray(scores_b, dtype=float)
    difference = float(a.mean() - b.mean())
    if len(a) < 2 or len(b) < 2:
        return SeedTest("permutation", difference, None)
    result = stats.permutation_test(
        (a, b),
        lambda x, y, axis=-1: np.mean(x, axis=axis) - np.mean(y, axis=axis),
        permutation_type="independent",
        alternative="two-sided",
        vectorized=True,
        n_resamples=np.inf,  # exact: every split of the seeds
    )
    return SeedTest("permutation", difference, float(result.pvalue))


def smallest_permutation_p(n_a: int, n_b: int) -> float:
    """The smallest two-sided p-value an exact permutation test of n_a against n_b seeds can give: both
    complete separations of the seeds, out of every split (3 vs 3: 2/20 = 0.1; 5 vs 5: 2/252 ≈ 0.008)."""
    return min(1.0, 2 / math.comb(n_a + n_b, n_a))


def format_p(p_value: float) -> str:
    """``< 1e-4`` rather than ``0.0000`` (a bootstrap p of zero is below one in its resamples), else two
    significant digits."""
    return "< 1e-4" if p_value < 1e-4 else f"{p_value:.2g}"


def holm(p_values: list[float]) -> list[float]:
    """Holm–Bonferroni adjusted p-values (step-down; monotone; capped at 1), in the input order."""
    order = np.argsort(p_values)
    m = len(p_values)
    adjusted = np.empty(m)
    running = 0.0
    for rank, index in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p_values[index]))
        adjusted[index] = running
    return adjusted.tolist()


@dataclass(frozen=True)
class Comparison:
    """Method A against method B on one task and one experiment (teacher, student, setting)."""

    task: str
    method: str
    baseline: str
    metric: str
    seeds: list[int]
    mean_a: float
    mean_b: float
    bootstrap: BootstrapResult
    across_seeds: SeedTest
    seed_counts: tuple[int, int] = (0, 0)  # seeds of A and of B the across-seed test compares


def cached_bootstrap(key: dict[str, Any], compute: Callable[[], BootstrapResult]) -> BootstrapResult:
    """A paired bootstrap read from ``<cache>/bootstrap/`` when one with this key (the predictions'
    sha256 and evaluation steps, metric, resamples, seed) was computed before: re-reading unchanged
    records takes seconds instead of recomputing 10,000 resamples per comparison."""
    from distillbench.atomic import write_json_atomic
    from distillbench.cached import stable_key
    from distillbench.workspace import cache_root

    path = cache_root() / "bootstrap" / f"{stable_key(key)}.json"
    try:
        return BootstrapResult(**json.loads(path.read_text())["result"])
    except (OSError, ValueError, KeyError, TypeError):
        result = compute()
        write_json_atomic(path, {"key": key, "result": dataclasses.asdict(result)})
        return result


def results_dir_of(record: dict[str, Any]) -> Path:
    """A record lives at ``<results>/runs/<name>.json``; its predictions are relative to ``<results>``."""
    return Path(record["_path"]).parent.parent


def compare_records(
    records_a: list[dict[str, Any]],
    records_b: list[dict[str, Any]],
    score: str = "final",
    resamples: int = DEFAULT_RESAMPLES,
    seed: int = 0,
    metric_name: str | None = None,
) -> Comparison:
    """Paired bootstrap over the seeds both methods ran (seed i of A against seed i of B), and the
    across-seed test over all of each method's seeds; on the main metric, or on ``metric_name``."""
    from distillbench.predictions import checked_predictions_file, evaluation_of, evaluation_step
    from distillbench.task import get_task

    task_name = records_a[0]["task"]
    task = get_task(task_name)(None)
    main = records_a[0]["main_metric"]
    if metric_name is not None:
        prefix = main.rpartition("/")[0]
        main = f"{prefix}/{metric_name}" if prefix else metric_name
    metric = main.split("/")[-1]
    by_seed_b = {r["seed"]: r for r in records_b}
    common = sorted({r["seed"] for r in records_a} & set(by_seed_b))
    if not common:
        raise UserError(f"{task_name}: {records_a[0]['method']} and {records_b[0]['method']} share no seed")
    by_seed_a = {r["seed"]: r for r in records_a}
    sides = [(by_seed_a[s], by_seed_b[s]) for s in common]
    for record in (r for pair in sides for r in pair):
        checked_predictions_file(record, results_dir_of(record))  # missing or altered: an error, cached or not

    def compute() -> BootstrapResult:
        pairs = [tuple(evaluation_of(r, results_dir_of(r), score) for r in pair) for pair in sides]
        n_examples = len(next(iter(pairs[0][0].values())))
        return paired_bootstrap(
            lambda arrays, rows: task.metric_rows(arrays, rows, metric), pairs, n_examples, resamples, seed
        )

    key = {
        "version": BOOTSTRAP_VERSION,
        "task": task_name,
        "metric": metric,
        "resamples": resamples,
        "seed": seed,
        "pairs": [[(r["predictions"]["sha256"], evaluation_step(r, score)) for r in pair] for pair in sides],
    }
    bootstrap = cached_bootstrap(key, compute)
    scores_a = [score_of(r, score)[main] for r in records_a]
    scores_b = [score_of(r, score)[main] for r in records_b]
    return Comparison(
        task=task_name,
        method=method_label(records_a[0]),
        baseline=method_label(records_b[0]),
        metric=main,
        seeds=common,
        mean_a=float(np.mean(scores_a)),
        mean_b=float(np.mean(scores_b)),
        bootstrap=bootstrap,
        across_seeds=across_seeds(scores_a, scores_b, seed),
        seed_counts=(len(scores_a), len(scores_b)),
    )


def describe(comparison: Comparison, task: Any) -> str:
    """The lines ``distillbench compare`` prints: each test says which question it answers; in the task's
    display scale, over what its scores are measured on."""
    b, s = comparison.bootstrap, comparison.across_seeds
    n_a, n_b = comparison.seed_counts
    scale, unit = task.display_scale, task.eval_unit
    d = max(2, task.metric_decimals.get(comparison.metric.split("/")[-1], 0))  # ROUGE-L differs in the third
    lines = [
        f"{comparison.task} {comparison.metric}: {comparison.method} {scale * comparison.mean_a:.{d}f} vs "
        f"{comparison.baseline} {scale * comparison.mean_b:.{d}f} (mean over their seeds)",
        f"  over {unit} (would the gap survive another {task.eval_set_label}?): paired bootstrap, "
        f"{b.pairs} seed pair(s) "
        f"{comparison.seeds}, {b.resamples:,} resamples: difference {scale * b.difference:+.{d}f}, "
        f"95% CI [{scale * b.low:+.{d}f}, {scale * b.high:+.{d}f}], p {_p_text(b.p_value)}"
        + (f" ± {format_p(b.p_error)} (Monte-Carlo error)" if b.p_error else "")
        + (f"; borderline: within twice that error of {ALPHA}, more --resamples decide it" if b.borderline else ""),
    ]
    question = "  across seeds (would it survive other training seeds?)"
    if s.name == "aso":
        lines.append(
            f"{question}: ASO ε_min = {s.statistic:.3f} (< 0.5: {comparison.method} almost stochastically larger)"
        )
    elif s.p_value is None:
        lines.append(f"{question}: needs at least 2 seeds per method")
    else:
        lines.append(
            f"{question}: exact permutation test of {n_a} vs {n_b} seeds, difference {scale * s.statistic:+.{d}f}, "
            f"p {_p_text(s.p_value)} (the smallest it can give with these seeds: "
            f"{format_p(smallest_permutation_p(n_a, n_b))})"
        )
    return "\n".join(lines)


def _p_text(p_value: float) -> str:
    text = format_p(p_value)
    return text if text.startswith("<") else f"= {text}"
