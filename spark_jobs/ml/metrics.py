"""Classification metrics of a model's collected test predictions, by scikit-learn.

A test row whose label the model does not know counts as wrong, in an extra ``(unknown)`` class.
Conventions are ``classification_report``'s: a class with no predictions has precision 0, one with
no support recall 0 (``zero_division=0``), and the macro averages run over the classes that occur
in the labels or the predictions.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

UNKNOWN = "(unknown)"


def encoded(labels: Sequence[Any], classes: list[str]) -> tuple[np.ndarray, list[str]]:
    """``labels`` as class indexes, and the class names they index: ``classes``, plus
    :data:`UNKNOWN` (index ``len(classes)``) when a label is not one of them."""
    index = {c: i for i, c in enumerate(classes)}
    actual = np.fromiter((index.get(label, len(classes)) for label in labels), dtype=np.int64, count=len(labels))
    return actual, [*classes, UNKNOWN] if (actual == len(classes)).any() else list(classes)


def confusion(actual: np.ndarray, predicted: np.ndarray, k: int) -> np.ndarray:
    """``(k, k)`` counts, rows = actual class index, columns = predicted."""
    from sklearn.metrics import confusion_matrix

    if not len(actual):
        return np.zeros((k, k), dtype=np.int64)
    return confusion_matrix(actual, predicted, labels=list(range(k))).astype(np.int64)


def report(actual: np.ndarray, predicted: np.ndarray, classes: list[str]) -> dict[str, Any]:
    """Accuracy, macro precision/recall/F1 and per-class precision, recall, F1 and support of
    class indexes ``predicted`` against ``actual`` (both indexing ``classes``)."""
    from sklearn.metrics import accuracy_score, precision_recall_fscore_support

    labels = list(range(len(classes)))
    if not len(actual):
        zero = {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}
        return {
            **dict.fromkeys(("accuracy", "macro_precision", "macro_recall", "macro_f1")),
            "test_rows": 0,
            "per_class": {c: dict(zero) for c in classes},
        }
    precision, recall, f1, support = precision_recall_fscore_support(actual, predicted, labels=labels, zero_division=0)
    macro = precision_recall_fscore_support(actual, predicted, average="macro", zero_division=0)
    return {
        "accuracy": float(accuracy_score(actual, predicted)),
        "macro_precision": float(macro[0]),
        "macro_recall": float(macro[1]),
        "macro_f1": float(macro[2]),
        "test_rows": len(actual),
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
