"""Statistics against known answers: bootstrap power and calibration, permutation and Holm, row metrics."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import pearsonr, spearmanr

from distillbench.significance import holm, paired_bootstrap, permutation_across_seeds
from distillbench.task import get_task
from distillbench.tasks import metrics

MRPC = get_task("mrpc")(None)


def predictions(correct: np.ndarray, labels: np.ndarray) -> dict[str, np.ndarray]:
    """Two-class logits that predict the label where ``correct`` and the other class elsewhere."""
    predicted = np.where(correct, labels, 1 - labels)
    logits = np.stack([1.0 - predicted, predicted.astype(float)], axis=1)
    return {"predictions": logits, "labels": labels}


def accuracy_rows(arrays, rows):
    return MRPC.metric_rows(arrays, rows, "accuracy")


def test_a_known_difference_is_detected():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 400)
    good = predictions(rng.random(400) < 0.85, labels)
    weak = predictions(rng.random(400) < 0.65, labels)
    result = paired_bootstrap(accuracy_rows, [(good, weak)], 400, resamples=2000, seed=1)
    observed = (good["predictions"].argmax(1) == labels).mean() - (weak["predictions"].argmax(1) == labels).mean()
    assert result.difference == pytest.approx(observed)
    assert result.p_value < 0.01 and result.low > 0 and result.high > result.low


def test_identical_predictions_are_never_significant():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 200)
    same = predictions(rng.random(200) < 0.7, labels)
    result = paired_bootstrap(accuracy_rows, [(same, same), (same, same)], 200, resamples=2000)
    assert result.p_value == 1.0 and result.difference == 0.0


def test_p_values_under_the_null_are_not_systematically_small():
    """200 seeded trials where both methods are right with the same probability: a calibrated test
    rejects at 0.05 in about 5 % of them; fewer than 10 % must."""
    rng = np.random.default_rng(123)
    small = 0
    for trial in range(200):
        labels = rng.integers(0, 2, 150)
        a = predictions(rng.random(150) < 0.7, labels)
        b = predictions(rng.random(150) < 0.7, labels)
        small += paired_bootstrap(accuracy_rows, [(a, b)], 150, resamples=1000, seed=trial).p_value < 0.05
    assert small / 200 < 0.10


def test_same_seed_same_numbers():
    rng = np.random.default_rng(5)
    labels = rng.integers(0, 2, 100)
    a, b = predictions(rng.random(100) < 0.8, labels), predictions(rng.random(100) < 0.7, labels)
    first = paired_bootstrap(accuracy_rows, [(a, b)], 100, resamples=1000, seed=3)
    assert paired_bootstrap(accuracy_rows, [(a, b)], 100, resamples=1000, seed=3) == first
    assert paired_bootstrap(accuracy_rows, [(a, b)], 100, resamples=1000, seed=4) != first


def test_exact_permutation_test_across_three_seeds():
    # [1,2,3] vs [4,5,6]: of the 20 ways to split six scores into two triples, the observed split and its
    # mirror are the most extreme: two-sided p = 2/20.
    result = permutation_across_seeds([1.0, 2.0, 3.0], [4.0, 5.0, 6.0])
    assert result.p_value == pytest.approx(0.1) and result.statistic == pytest.approx(-3.0)
    assert permutation_across_seeds([1.0, 2.0, 3.0], [1.0, 2.0, 3.0]).p_value == pytest.approx(1.0)


def test_holm_known_answer():
    # sorted 0.01, 0.03, 0.04 → 3·0.01, max(0.03, 2·0.03), max(0.06, 1·0.04)
    assert holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    assert holm([0.5, 0.9]) == pytest.approx([1.0, 1.0])
    assert holm([]) == []


@pytest.mark.parametrize("name", ["accuracy", "f1", "mcc", "pearson", "spearman"])
def test_row_metrics_equal_the_scalar_metrics(name):
    rng = np.random.default_rng(7)
    rows = rng.integers(0, 60, size=(25, 60))
    if name in ("pearson", "spearman"):
        predicted, labels = rng.normal(size=60), rng.normal(size=60).round(1)  # ties for Spearman
        scalar = {"pearson": lambda p, y: pearsonr(p, y)[0], "spearman": lambda p, y: spearmanr(p, y)[0]}[name]
    else:
        predicted, labels = rng.integers(0, 2, 60), rng.integers(0, 2, 60)
        scalar = {"accuracy": metrics.accuracy, "f1": metrics.binary_f1, "mcc": metrics.matthews}[name]
    row_function = getattr(metrics, {"f1": "binary_f1", "mcc": "matthews"}.get(name, name) + "_rows")
    expected = [scalar(predicted[r], labels[r]) for r in rows]
    assert row_function(predicted[rows], labels[rows]) == pytest.approx(expected, abs=1e-12)


def test_spearman_from_draw_counts_equals_ranking_every_resample():
    """The fast path ranks once and weights by how often each example was drawn; it must give exactly
    what sorting each resample gives, ties in both predictions and labels included."""
    rng = np.random.default_rng(11)
    predicted, labels = rng.normal(size=80).round(1), rng.integers(0, 6, 80).astype(float)
    rows = rng.integers(0, 80, size=(40, 80))
    expected = [spearmanr(predicted[r], labels[r])[0] for r in rows]
    assert metrics.spearman_resampled(predicted, labels, rows) == pytest.approx(expected, abs=1e-12)
    everything = np.arange(80)[None, :]
    fast = metrics.spearman_resampled(predicted, labels, everything)[0]
    assert fast == pytest.approx(spearmanr(predicted, labels)[0])


def test_a_bootstrap_p_carries_its_monte_carlo_error_and_says_when_it_is_borderline():
    from distillbench.significance import BootstrapResult

    near = BootstrapResult(0.01, 0.0, 0.02, 0.051, 3, 1000)
    # two-sided p = 2q with q a proportion of 1,000 draws: se = 2·sqrt(q(1−q)/1000)
    assert near.p_error == pytest.approx(2 * (0.0255 * 0.9745 / 1000) ** 0.5)
    assert near.borderline
    assert not BootstrapResult(0.05, 0.02, 0.08, 0.3, 3, 1000).borderline
    assert not BootstrapResult(0.05, 0.02, 0.08, 0.0002, 3, 10_000).borderline
    assert BootstrapResult(0.0, 0.0, 0.0, 1.0, 3, 0).p_error == 0.0  # identical predictions: no draws


def test_a_marker_needs_its_holm_p_below_005_by_more_than_its_monte_carlo_error():
    """Holm multiplies a p (here by 12), and with it the p's Monte-Carlo error: 0.0035 × 12 = 0.042 from
    10,000 draws is unsettled; the same p from a million draws, or a p far from the threshold, is not."""
    from types import SimpleNamespace

    from distillbench.markers import Finding
    from distillbench.significance import BootstrapResult

    def finding(p: float, adjusted: float, resamples: int) -> Finding:
        comparison = SimpleNamespace(bootstrap=BootstrapResult(0.01, 0.0, 0.02, p, 3, resamples))
        return Finding(("stsb", "kd"), comparison, 0, adjusted)

    near = finding(0.0035, 0.042, 10_000)  # error 2·sqrt(0.00175·0.99825/10⁴)·12 ≈ 0.010: 0.042 is 0.8 errors off
    assert near.unsettled and not near.significant
    settled = finding(0.0035, 0.042, 1_000_000)  # error ≈ 0.0010: 8 errors off
    assert not settled.unsettled and settled.significant
    assert finding(0.0001, 0.0012, 10_000).significant and not finding(0.2, 1.0, 10_000).unsettled
