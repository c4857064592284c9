"""Classification metrics from a confusion matrix (pure numpy; the matrix is counted by Spark).

Conventions follow scikit-learn's ``classification_report``: a class with no predictions has
precision 0, one with no support recall 0 (``zero_division=0``), and the macro averages run over
the classes that occur in the labels or the predictions.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np


def confusion(counts: Iterable[tuple[int, int, int]], k: int) -> np.ndarray:
    """``(k, k)`` matrix, rows = actual class index, columns = predicted, from ``(actual, predicted, n)``."""
    matrix = np.zeros((k, k), dtype=np.int64)
    for actual, predicted, n in counts:
        matrix[actual, predicted] += n
    return matrix


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    return np.divide(num, den, out=np.zeros(num.shape, dtype=np.float64), where=den > 0)


def report(matrix: np.ndarray, classes: list[str]) -> dict[str, Any]:
    """Accuracy, macro precision/recall/F1 and per-class precision, recall, F1 and support."""
    tp = np.diag(matrix).astype(np.float64)
    support = matrix.sum(axis=1).astype(np.float64)
    predicted = matrix.sum(axis=0).astype(np.float64)
    precision, recall = _ratio(tp, predicted), _ratio(tp, support)
    f1 = _ratio(2 * precision * recall, precision + recall)
    present = (support > 0) | (predicted > 0)
    total = matrix.sum()
    return {
        "accuracy": float(tp.sum() / total) if total else None,
        "macro_precision": float(precision[present].mean()) if present.any() else None,
        "macro_recall": float(recall[present].mean()) if present.any() else None,
        "macro_f1": float(f1[present].mean()) if present.any() else None,
        "test_rows": int(total),
        "per_class": {
            c: {
                "precision": float(precision[i]),
                "recall": float(recall[i]),
                "f1": float(f1[i]),
                "support": int(support[i]),
            }
            for i, c in enumerate(classes)
        },
    }
