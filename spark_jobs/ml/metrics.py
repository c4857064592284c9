"""Metrics of a model's collected test predictions, by scikit-learn: classification reports and
confusion matrices, and an anomaly model's AUROC and alarm rates.

A test row whose label the model does not know counts as wrong, in an extra ``(unknown)`` class.
Conventions are ``classification_report``'s: a class with no predictions has precision 0, one with
no support recall 0 (``zero_division=0``), and the macro averages run over the classes that occur
in the labels or the predictions.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import pandas as pd

    from spark_jobs.ml.cards import ModelCard

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


def classifier_metrics(predictions: pd.DataFrame, classes: list[str]) -> tuple[dict[str, Any], np.ndarray]:
    """The classification report (:func:`report`) and confusion matrix of collected
    ``label``/``prediction`` rows; labels the model does not know count as wrong, in an extra
    ``(unknown)`` row."""
    actual, labels = encoded(predictions["label"].tolist(), classes)
    predicted = predictions["prediction"].to_numpy(dtype=np.int64)
    return report(actual, predicted, labels), confusion(actual, predicted, len(labels))


def anomaly_metrics(scored: pd.DataFrame, card: ModelCard) -> tuple[dict[str, Any], list[tuple[float, int]]]:
    """AUROC of normal vs held-out class (``label``, ``score`` rows), the share flagged at the
    card's threshold; and the ``(score, is_anomaly)`` pairs for the ROC plot."""
    from sklearn.metrics import roc_auc_score

    holdout = card.exclude_classes
    is_anomaly = scored["label"].isin(holdout).to_numpy()
    score = scored["score"].to_numpy(dtype=float)
    threshold = card.threshold
    n, anomalies = len(scored), int(is_anomaly.sum())
    flagged = score > threshold
    auroc = float(roc_auc_score(is_anomaly, score)) if 0 < anomalies < n else None
    normal = n - anomalies
    return {
        "auroc": auroc,
        "holdout_classes": holdout,
        "threshold": threshold,
        "test_rows": n,
        "anomalies": anomalies,
        "false_alarm_rate": int((flagged & ~is_anomaly).sum()) / normal if normal else None,
        "detection_rate": int((flagged & is_anomaly).sum()) / anomalies if anomalies else None,
    }, list(zip(score.tolist(), is_anomaly.astype(int).tolist(), strict=True))


CELLS = ("cell_x0", "cell_y0", "cell_x1", "cell_y1")


def covered(box: Sequence[int], cell: Sequence[int]) -> float:
    """The share of ``cell``'s area that ``box`` covers (both ``(x0, y0, x1, y1)``, exclusive ends)."""
    width = max(0, min(box[2], cell[2]) - max(box[0], cell[0]))
    height = max(0, min(box[3], cell[3]) - max(box[1], cell[1]))
    area = (cell[2] - cell[0]) * (cell[3] - cell[1])
    return width * height / area if area > 0 else 0.0


def pointing_accuracy(predictions: pd.DataFrame, cells: pd.DataFrame) -> dict[str, Any]:
    """How often a model that attends points at the evidence: of the test images whose label one
    cell decides (a row of ``cells``, ``image_id`` and the cell's box :data:`CELLS`; images
    without such a cell have empty boxes and do not count), the share whose most-weighted tile
    (``top_tiles[0]`` of ``predictions``) covers most (over half) of that cell. Test images
    missing from ``cells`` are counted (``pointing_unknown``), never guessed."""
    known = set(cells["image_id"])
    located = cells.dropna(subset=list(CELLS)).drop_duplicates("image_id").set_index("image_id")
    hits = total = unknown = 0
    for image, top in zip(predictions["image_id"], predictions["top_tiles"], strict=True):
        if image not in located.index:
            unknown += image not in known
            continue
        cell = [int(located.at[image, c]) for c in CELLS]
        best = top[0]
        total += 1
        hits += covered([best["box_x0"], best["box_y0"], best["box_x1"], best["box_y1"]], cell) > 0.5
    return {
        "pointing_accuracy": hits / total if total else None,
        "pointing_images": total,
        "pointing_unknown": unknown,
    }
