"""The classification report is scikit-learn's, and it gives the same figures as the hand-written
report it replaced (kept below as the reference) on the same predictions."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from sklearn.metrics import accuracy_score, f1_score, precision_recall_fscore_support

from spark_jobs.ml import metrics


def _before(actual: list[int], predicted: list[int], classes: list[str]) -> dict[str, Any]:
    """The report as the project computed it before scikit-learn did (numpy on a confusion matrix)."""
    k = len(classes)
    matrix = np.zeros((k, k), dtype=np.int64)
    for a, p in zip(actual, predicted, strict=True):
        matrix[a, p] += 1

    def ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
        return np.divide(num, den, out=np.zeros(num.shape, dtype=np.float64), where=den > 0)

    tp = np.diag(matrix).astype(np.float64)
    support, predicted_n = matrix.sum(axis=1).astype(np.float64), matrix.sum(axis=0).astype(np.float64)
    precision, recall = ratio(tp, predicted_n), ratio(tp, support)
    f1 = ratio(2 * precision * recall, precision + recall)
    present = (support > 0) | (predicted_n > 0)
    total = matrix.sum()
    return {
        "accuracy": float(tp.sum() / total) if total else None,
        "macro_precision": float(precision[present].mean()) if present.any() else None,
        "macro_recall": float(recall[present].mean()) if present.any() else None,
        "macro_f1": float(f1[present].mean()) if present.any() else None,
        "test_rows": int(total),
        "per_class": {
            c: {"precision": precision[i], "recall": recall[i], "f1": f1[i], "support": int(support[i])}
            for i, c in enumerate(classes)
        },
    }


def _report(labels: list[str | None], predicted: list[int], classes: list[str]) -> dict[str, Any]:
    actual, names = metrics.encoded(labels, classes)
    return metrics.report(actual, np.asarray(predicted, dtype=np.int64), names)


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_the_same_figures_as_before_on_the_same_predictions(seed: int) -> None:
    rng = np.random.default_rng(seed)
    classes = [f"c{i}" for i in range(6)]
    # mostly right, some noise; class c5 never predicted, c4 never in the labels, a few labels the
    # model does not know (the "(unknown)" row)
    labels = [classes[i] for i in rng.integers(0, 4, 400)] + ["c5"] * 7 + ["other"] * (seed * 3)
    predicted = [
        int(rng.integers(0, 5)) if rng.random() < 0.3 else min(classes.index(x), 4) if x in classes else 0
        for x in labels
    ]
    got = _report(labels, predicted, classes)
    actual, names = metrics.encoded(labels, classes)
    want = _before(actual.tolist(), predicted, names)
    assert list(got["per_class"]) == names == classes + (["(unknown)"] if seed else [])
    for key in ("accuracy", "macro_precision", "macro_recall", "macro_f1"):
        assert got[key] == pytest.approx(want[key]), key
    assert got["test_rows"] == want["test_rows"] == len(labels)
    for c in names:
        for key in ("precision", "recall", "f1", "support"):
            assert got["per_class"][c][key] == pytest.approx(want["per_class"][c][key]), (c, key)
    assert (
        metrics.confusion(actual, np.asarray(predicted), len(names)).sum(axis=1)
        == [want["per_class"][c]["support"] for c in names]
    ).all()


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_report_matches_scikit_learn(seed: int) -> None:
    rng = np.random.default_rng(seed)
    k = 5
    actual = rng.integers(0, k, 300).tolist()
    # mostly right, some noise, and class 4 never predicted (precision 0 by convention)
    predicted = [a if rng.random() < 0.8 else int(rng.integers(0, k - 1)) for a in actual]
    predicted = [min(p, 3) for p in predicted]
    classes = [f"c{i}" for i in range(k)]

    got = metrics.report(np.asarray(actual), np.asarray(predicted), classes)

    assert got["accuracy"] == pytest.approx(accuracy_score(actual, predicted))
    assert got["macro_f1"] == pytest.approx(f1_score(actual, predicted, average="macro", zero_division=0))
    p, r, f, s = precision_recall_fscore_support(actual, predicted, labels=list(range(k)), zero_division=0)
    for i, c in enumerate(classes):
        assert got["per_class"][c]["precision"] == pytest.approx(p[i])
        assert got["per_class"][c]["recall"] == pytest.approx(r[i])
        assert got["per_class"][c]["f1"] == pytest.approx(f[i])
        assert got["per_class"][c]["support"] == s[i]
    assert got["per_class"]["c4"]["precision"] == 0.0


def test_macro_average_skips_classes_absent_from_labels_and_predictions() -> None:
    actual, predicted = [0, 0, 1, 1], [0, 1, 1, 1]
    got = metrics.report(np.asarray(actual), np.asarray(predicted), ["a", "b", "c"])
    assert got["macro_f1"] == pytest.approx(f1_score(actual, predicted, average="macro"))
    assert got["per_class"]["c"]["support"] == 0


def test_empty_matrix_has_no_accuracy() -> None:
    got = metrics.report(np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64), ["a", "b"])
    assert got["accuracy"] is None
    assert got["macro_f1"] is None
    assert metrics.confusion(np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64), 2).tolist() == [[0, 0], [0, 0]]


def test_pointing_counts_a_top_tile_covering_most_of_the_deciding_cell() -> None:
    import pandas as pd

    cells = pd.DataFrame(
        {
            "image_id": ["hit", "half", "miss", "none", "gone"],
            "cell_x0": [32, 32, 32, None, 0],
            "cell_y0": [0, 0, 0, None, 0],
            "cell_x1": [64, 64, 64, None, 32],
            "cell_y1": [32, 32, 32, None, 32],
        }
    )

    def top(x0: int, y0: int) -> list[dict[str, float]]:
        return [{"box_x0": x0, "box_y0": y0, "box_x1": x0 + 32, "box_y1": y0 + 32, "weight": 0.9}]

    predictions = pd.DataFrame(
        {
            "image_id": ["hit", "half", "miss", "none", "stranger"],
            # 24 of 32 columns (75 %) | exactly half: not most | elsewhere | no target: not counted
            "top_tiles": [top(40, 0), top(48, 0), top(0, 64), top(0, 0), top(0, 0)],
        }
    )
    result = metrics.pointing_accuracy(predictions, cells)
    assert result == {"pointing_accuracy": pytest.approx(1 / 3), "pointing_images": 3, "pointing_unknown": 1}
    assert metrics.covered((0, 0, 32, 32), (16, 16, 48, 48)) == 0.25
