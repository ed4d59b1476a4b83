"""Scoring: class probabilities and true labels -> metrics. Pure NumPy, no model calls."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

EPSILON = 1e-7  # probabilities are clipped to [EPSILON, 1 - EPSILON], as Keras's cross-entropy does


def cross_entropy(labels: np.ndarray, probabilities: np.ndarray) -> float:
    """Mean categorical cross-entropy of integer `labels` under `probabilities` (n, k)."""
    picked = probabilities[np.arange(len(labels)), labels.astype(np.int64)]
    return float(-np.mean(np.log(np.clip(picked.astype(np.float64), EPSILON, 1 - EPSILON))))


def confusion_matrix(labels: np.ndarray, predicted: np.ndarray, num_classes: int) -> np.ndarray:
    """Counts (num_classes, num_classes): row = true class, column = predicted class."""
    matrix = np.zeros((num_classes, num_classes), np.int64)
    np.add.at(matrix, (labels.astype(np.int64), predicted.astype(np.int64)), 1)
    return matrix


def calibration_error(labels: np.ndarray, probabilities: np.ndarray, bins: int = 15) -> float:
    """Expected calibration error: mean |confidence - accuracy| over equal-width confidence bins."""
    confidence = probabilities.max(axis=1)
    correct = probabilities.argmax(axis=1) == labels
    edges = np.linspace(0.0, 1.0, bins + 1)
    index = np.clip(np.digitize(confidence, edges[1:-1]), 0, bins - 1)
    error = 0.0
    for b in range(bins):
        members = index == b
        if members.any():
            error += members.mean() * abs(confidence[members].mean() - correct[members].mean())
    return float(error)


def score(
    labels: np.ndarray, probabilities: np.ndarray, class_names: Sequence[str]
) -> dict[str, Any]:
    """All metrics of one prediction set, as plain JSON-ready Python values.

    `labels` are integers (n,), `probabilities` (n, k) rows that sum to 1.
    """
    predicted = probabilities.argmax(axis=1)
    matrix = confusion_matrix(labels, predicted, len(class_names))
    true_positive = np.diag(matrix).astype(np.float64)
    predicted_count = matrix.sum(axis=0)
    support = matrix.sum(axis=1)
    precision = np.divide(true_positive, predicted_count, out=np.zeros_like(true_positive), where=predicted_count > 0)
    recall = np.divide(true_positive, support, out=np.zeros_like(true_positive), where=support > 0)
    total = precision + recall
    f1 = np.divide(2 * precision * recall, total, out=np.zeros_like(total), where=total > 0)
    per_class = [
        {
            "class": name,
            "precision": float(precision[i]),
            "recall": float(recall[i]),
            "f1": float(f1[i]),
            "support": int(support[i]),
        }
        for i, name in enumerate(class_names)
    ]
    return {
        "accuracy": float(np.mean(predicted == labels)),
        "loss": cross_entropy(labels, probabilities),
        "macro_f1": float(f1.mean()),
        "calibration_error": calibration_error(labels, probabilities),
        "images": int(len(labels)),
        "per_class": per_class,
        "confusion_matrix": matrix.tolist(),
    }
