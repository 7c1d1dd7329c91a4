"""SQuAD EM/F1 exactly as the official scripts compute them (evaluate-v1.1.py, evaluate-v2.0.py).

The two scripts differ in small ways that change numbers, so both are reproduced: v1.1 scores an empty
normalised prediction 0 F1, v2.0 scores it 1 when the gold answer is empty too, and v2.0 drops gold
answers that normalise to nothing. ``examples`` are ``(question id, gold answer texts)`` pairs;
unanswerable questions have no gold answers. A test runs the official scripts and compares every figure.
"""

from __future__ import annotations

import collections
import re
import string
from collections.abc import Iterable

ARTICLES = re.compile(r"\b(a|an|the)\b", re.UNICODE)
PUNCTUATION = set(string.punctuation)


def normalize_answer(text: str) -> str:
    """Lower case, drop punctuation, articles and extra whitespace (both scripts)."""
    text = "".join(ch for ch in text.lower() if ch not in PUNCTUATION)
    return " ".join(ARTICLES.sub(" ", text).split())


def f1_v1(prediction: str, gold: str) -> float:
    prediction_tokens = normalize_answer(prediction).split()
    gold_tokens = normalize_answer(gold).split()
    same = sum((collections.Counter(prediction_tokens) & collections.Counter(gold_tokens)).values())
    if same == 0:
        return 0.0
    precision, recall = same / len(prediction_tokens), same / len(gold_tokens)
    return 2 * precision * recall / (precision + recall)


def f1_v2(gold: str, prediction: str) -> float:
    gold_tokens = normalize_answer(gold).split() if gold else []
    prediction_tokens = normalize_answer(prediction).split() if prediction else []
    if not gold_tokens or not prediction_tokens:
        return float(gold_tokens == prediction_tokens)  # no-answer: 1 if both empty
    same = sum((collections.Counter(gold_tokens) & collections.Counter(prediction_tokens)).values())
    if same == 0:
        return 0.0
    precision, recall = same / len(prediction_tokens), same / len(gold_tokens)
    return 2 * precision * recall / (precision + recall)


def per_question_v1(
    examples: Iterable[tuple[str, list[str]]], predictions: dict[str, str]
) -> tuple[dict[str, float], dict[str, float]]:
    """evaluate-v1.1.py's per-question EM and F1: max over gold answers; a missing prediction scores 0."""
    exact, f1 = {}, {}
    for qid, golds in examples:
        prediction = predictions.get(qid)
        exact[qid] = (
            0.0
            if prediction is None
            else max(float(normalize_answer(prediction) == normalize_answer(g)) for g in golds)
        )
        f1[qid] = 0.0 if prediction is None else max(f1_v1(prediction, g) for g in golds)
    return exact, f1


def score_v1(examples: Iterable[tuple[str, list[str]]], predictions: dict[str, str]) -> dict[str, float]:
    """evaluate-v1.1.py: the mean of the per-question scores, ×100."""
    exact, f1 = per_question_v1(examples, predictions)
    total = len(exact)
    return {"exact_match": 100.0 * sum(exact.values()) / total, "f1": 100.0 * sum(f1.values()) / total}


def per_question_v2(
    examples: Iterable[tuple[str, list[str]]], predictions: dict[str, str]
) -> tuple[dict[str, float], dict[str, float]]:
    """evaluate-v2.0.py's raw per-question EM and F1 (before the no-answer threshold); gold answers that
    normalise to nothing are dropped, an unanswerable question's gold is the empty answer."""
    exact_raw, f1_raw = {}, {}
    for qid, golds in examples:
        golds = [g for g in golds if normalize_answer(g)] or [""]
        if qid not in predictions:
            continue
        prediction = predictions[qid]
        exact_raw[qid] = max(float(normalize_answer(g) == normalize_answer(prediction)) for g in golds)
        f1_raw[qid] = max(f1_v2(g, prediction) for g in golds)
    return exact_raw, f1_raw


def _summary(exact: dict[str, float], f1: dict[str, float], qids: list[str]) -> dict[str, float]:
    return {
        "exact": 100.0 * sum(exact[q] for q in qids) / len(qids),
        "f1": 100.0 * sum(f1[q] for q in qids) / len(qids),
        "total": len(qids),
    }


def _best_threshold(
    predictions: dict[str, str], scores: dict[str, float], na_probs: dict[str, float], has_answer: dict[str, bool]
) -> tuple[float, float]:
    """The no-answer probability threshold that maximises the score (evaluate-v2.0.py)."""
    current = best = sum(1 for q in has_answer if not has_answer[q])
    threshold = 0.0
    for qid in sorted(na_probs, key=lambda k: na_probs[k]):
        if qid not in scores:
            continue
        if has_answer[qid]:
            current += scores[qid]
        else:
            current += -1 if predictions[qid] else 0
        if current > best:
            best, threshold = current, na_probs[qid]
    return 100.0 * best / len(scores), threshold


def score_v2(
    examples: Iterable[tuple[str, list[str]]],
    predictions: dict[str, str],
    na_probs: dict[str, float] | None = None,
    na_prob_thresh: float = 1.0,
) -> dict[str, float]:
    """evaluate-v2.0.py: EM/F1, HasAns_*/NoAns_*, and best-threshold figures when ``na_probs`` is given."""
    examples = list(examples)
    has_answer = {qid: bool(golds) for qid, golds in examples}
    probabilities = na_probs if na_probs is not None else {k: 0.0 for k in predictions}
    exact_raw, f1_raw = per_question_v2(examples, predictions)

    def thresholded(scores: dict[str, float]) -> dict[str, float]:
        return {q: float(not has_answer[q]) if probabilities[q] > na_prob_thresh else s for q, s in scores.items()}

    exact, f1 = thresholded(exact_raw), thresholded(f1_raw)
    result = _summary(exact, f1, list(exact))
    for prefix, wanted in (("HasAns", True), ("NoAns", False)):
        qids = [q for q, has in has_answer.items() if has is wanted]
        if qids:
            result |= {f"{prefix}_{k}": v for k, v in _summary(exact, f1, qids).items()}
    if na_probs is not None:
        result["best_exact"], result["best_exact_thresh"] = _best_threshold(
            predictions, exact_raw, na_probs, has_answer
        )
        result["best_f1"], result["best_f1_thresh"] = _best_threshold(predictions, f1_raw, na_probs, has_answer)
    return result
