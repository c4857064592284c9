"""Metrics from a confusion matrix agree with scikit-learn on the same predictions."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import accuracy_score, f1_score, precision_recall_fscore_support

from spark_jobs.ml import metrics


def _counts(actual: list[int], predicted: list[int]) -> list[tuple[int, int, int]]:
    pairs: dict[tuple[int, int], int] = {}
    for a, p in zip(actual, predicted, strict=True):
        pairs[(a, p)] = pairs.get((a, p), 0) + 1
    return [(a, p, n) for (a, p), n in pairs.items()]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_report_matches_scikit_learn(seed: int) -> None:
    rng = np.random.default_rng(seed)
    k = 5
    actual = rng.integers(0, k, 300).tolist()
    # mostly right, some noise, and class 4 never predicted (precision 0 by convention)
    predicted = [a if rng.random() < 0.8 else int(rng.integers(0, k - 1)) for a in actual]
    predicted = [min(p, 3) for p in predicted]
    classes = [f"c{i}" for i in range(k)]

    got = metrics.report(metrics.confusion(_counts(actual, predicted), k), classes)

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
    got = metrics.report(metrics.confusion(_counts(actual, predicted), 3), ["a", "b", "c"])
    assert got["macro_f1"] == pytest.approx(f1_score(actual, predicted, average="macro"))
    assert got["per_class"]["c"]["support"] == 0


def test_empty_matrix_has_no_accuracy() -> None:
    got = metrics.report(np.zeros((2, 2), dtype=np.int64), ["a", "b"])
    assert got["accuracy"] is None
    assert got["macro_f1"] is None
