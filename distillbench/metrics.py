"""Task metrics computed locally (``evaluate.load`` needs the hub), exactly as GLUE defines them."""

from __future__ import annotations

import numpy as np
from scipy.stats import pearsonr, spearmanr
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
