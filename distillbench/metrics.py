"""Task metrics computed locally (``evaluate.load`` needs the hub), exactly as GLUE defines them."""

from __future__ import annotations

import numpy as np
from scipy.stats import pearsonr, rankdata, spearmanr
from sklearn.metrics import f1_score, matthews_corrcoef


def accuracy(predictions: np.ndarray, labels: np.ndarray) -> float:
    return float((np.asarray(predictions) == np.asarray(labels)).mean())


def binary_f1(predictions: np.ndarray, labels: np.ndarray) -> float:
    """F1 of the positive class (label 1), as GLUE scores MRPC and QQP."""
    return float(f1_score(labels, predictions, pos_label=1, average="binary", zero_division=0.0))


def matthews(predictions: np.ndarray, labels: np.ndarray) -> float:
    return float(matthews_corrcoef(labels, predictions))


def pearson(predictions: np.ndarray, labels: np.ndarray) -> float:
    return float(pearsonr(predictions, labels)[0])


def spearman(predictions: np.ndarray, labels: np.ndarray) -> float:
    return float(spearmanr(predictions, labels)[0])


def perplexity(mean_nll: float) -> float:
    """exp of the mean negative log-likelihood per predicted token (nats)."""
    return float(np.exp(mean_nll))


# Row-wise versions: one metric value per row of [R, n] arrays (R bootstrap resamples of n examples), so
# a 10,000-resample bootstrap is a few array operations instead of 10,000 calls. Each equals its scalar
# counterpart above on every row (tested).
def _confusion(predictions: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, ...]:
    p, y = predictions == 1, labels == 1
    return (p & y).sum(-1), (~p & ~y).sum(-1), (p & ~y).sum(-1), (~p & y).sum(-1)


def _safe_divide(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    return np.divide(numerator, denominator, out=np.zeros_like(numerator, dtype=float), where=denominator != 0)


def accuracy_rows(predictions: np.ndarray, labels: np.ndarray) -> np.ndarray:
    return (predictions == labels).mean(-1)


def binary_f1_rows(predictions: np.ndarray, labels: np.ndarray) -> np.ndarray:
    tp, _, fp, fn = _confusion(predictions, labels)
    return _safe_divide(2.0 * tp, 2.0 * tp + fp + fn)


def matthews_rows(predictions: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Binary MCC (CoLA); 0 where a row's denominator is 0, as scikit-learn returns."""
    tp, tn, fp, fn = (c.astype(float) for c in _confusion(predictions, labels))
    return _safe_divide(tp * tn - fp * fn, np.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn)))


def pearson_rows(predictions: np.ndarray, labels: np.ndarray) -> np.ndarray:
    x = predictions - predictions.mean(-1, keepdims=True)
    y = labels - labels.mean(-1, keepdims=True)
    return _safe_divide((x * y).sum(-1), np.sqrt((x * x).sum(-1) * (y * y).sum(-1)))


def spearman_rows(predictions: np.ndarray, labels: np.ndarray) -> np.ndarray:
    return pearson_rows(rankdata(predictions, axis=-1), rankdata(labels, axis=-1))
