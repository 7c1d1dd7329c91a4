"""GLUE metrics against values computed by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

from distillbench import get_task
from distillbench.tasks import metrics


def test_accuracy_and_binary_f1():
    predictions = np.array([1, 0, 1, 1, 0, 1])
    labels = np.array([1, 0, 0, 1, 1, 1])
    assert metrics.accuracy(predictions, labels) == pytest.approx(4 / 6)
    # positive class: tp=3, fp=1, fn=1 → precision 3/4, recall 3/4, F1 3/4
    assert metrics.binary_f1(predictions, labels) == pytest.approx(0.75)


def test_matthews_correlation():
    predictions = np.array([1, 0, 1, 1, 0, 1])
    labels = np.array([1, 0, 0, 1, 1, 1])
    tp, tn, fp, fn = 3, 1, 1, 1
    expected = (tp * tn - fp * fn) / math.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))
    assert metrics.matthews(predictions, labels) == pytest.approx(expected)


def test_pearson_and_spearman():
    x = np.array([1.0, 2.0, 3.0, 4.0])
    y = np.array([1.0, 3.0, 2.0, 5.0])
    mx, my = x.mean(), y.mean()
    pearson = ((x - mx) * (y - my)).sum() / math.sqrt(((x - mx) ** 2).sum() * ((y - my) ** 2).sum())
    assert metrics.pearson(x, y) == pytest.approx(pearson)
    # ranks of y: 1, 3, 2, 4 → d = 0, 1, 1, 0 → rho = 1 - 6·2 / (4·15)
    assert metrics.spearman(x, y) == pytest.approx(1 - 6 * 2 / (4 * 15))


def test_perplexity_is_exp_of_mean_nll():
    assert metrics.perplexity(math.log(7.0)) == pytest.approx(7.0)


def test_task_metrics_use_argmax_or_regression_output():
    mrpc = get_task("mrpc")(None)
    logits = np.array([[0.1, 0.9], [2.0, -1.0], [0.0, 1.0]])
    assert mrpc.compute_metrics(logits, np.array([1, 0, 0])) == {
        "accuracy": pytest.approx(2 / 3),
        "f1": pytest.approx(2 / 3),
    }
    stsb = get_task("stsb")(None)
    result = stsb.compute_metrics(np.array([[1.0], [2.0], [3.0]]), np.array([1.0, 2.5, 2.9]))
    assert set(result) == {"pearson", "spearman"} and result["spearman"] == pytest.approx(1.0)
    assert get_task("cola").main_metric == "mcc" and get_task("stsb").main_metric == "spearman"


def test_majority_baseline_answers_the_most_frequent_training_label():
    from datasets import Dataset, DatasetDict

    from distillbench.task import get_task

    splits = DatasetDict(
        {"train": Dataset.from_dict({"labels": [1, 1, 0]}), "validation": Dataset.from_dict({"labels": [1, 0, 1, 1]})}
    )
    baseline = get_task("mrpc")(None).majority_baseline(splits)
    assert baseline == {"accuracy": 0.75, "f1": pytest.approx(6 / 7)}  # F1 = 2·3 / (2·3 + 1 false positive)
    assert get_task("stsb")(None).majority_baseline(splits) is None  # regression: no constant answer


def test_run_summary_puts_the_gap_and_the_majority_baseline_beside_the_scores():
    from distillbench.summary import run_summary

    record = {
        "method": "kd",
        "task": "sst2",
        "seed": 1,
        "main_metric": "accuracy",
        "metrics": {"accuracy": 0.70},
        "teacher": {"metrics": {"accuracy": 0.80}},
        "majority_baseline": {"accuracy": 0.51},
        "wall_time_s": 100.0,
        "run_id": "x",
    }
    text = run_summary(record)
    assert "teacher − student accuracy = +0.1000" in text and "above the majority class: teacher, student" in text
    assert "student model" not in text  # an older record that does not say where its student went
    # a bounded run's best evaluation is named by its step first: "epoch 0.05" alone reads as a mistake
    record |= {"best_epoch": {"epoch": 0.0512, "step": 100, "metrics": {"accuracy": 0.7}}}
    record |= {"model": {"output_dir": "outputs/sst2-kd-seed1-x/student"}}
    text = run_summary(record)
    assert "(step 100, epoch 0.05)" in text and "student model  outputs/sst2-kd-seed1-x/student" in text
    record["metrics"] = {"accuracy": 0.5}
    assert "above the majority class: teacher" in run_summary(record)
    # lower is better (perplexity): the gap reads student − teacher, positive when the student is behind;
    # a language model has no majority class, and no line says so
    lm = record | {"main_metric": "perplexity", "greater_is_better": False, "majority_baseline": None}
    lm |= {"metrics": {"perplexity": 340.0}, "teacher": {"metrics": {"perplexity": 300.0}}}
    text = run_summary(lm)
    assert "student − teacher perplexity = +40.0000" in text and "majority class" not in text
