"""What evaluate draws: the tables dvc plots reads, and the confusion picture."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from spark_jobs.ml import plots


def _rows(path: Path) -> list[list[str]]:
    with path.open() as f:
        return list(csv.reader(f))


def test_classifier_plots_are_one_row_per_test_image_and_per_class(tmp_path: Path) -> None:
    predictions = pd.DataFrame({"label": ["b", "a", "a"], "prediction": [1, 1, 0]})
    result = {"per_class": {"a": {"precision": 1.0, "recall": 0.5, "f1": 2 / 3, "support": 2}}}
    plots.write_classifier_plots(tmp_path, "cnn", predictions, result, ["a", "b"])
    assert _rows(tmp_path / "plots" / "cnn" / "confusion.csv") == [
        ["actual", "predicted"],
        ["a", "a"],
        ["a", "b"],
        ["b", "b"],
    ]
    assert _rows(tmp_path / "plots" / "cnn" / "classes.csv") == [
        ["class", "precision", "recall", "f1", "support"],
        ["a", "1.0", "0.5", "0.666667", "2"],
    ]


def test_an_roc_needs_both_sides(tmp_path: Path) -> None:
    plots.write_roc(tmp_path, "autoencoder", [(0.1, 0), (0.2, 0)])
    assert not (tmp_path / "plots" / "autoencoder" / "roc.csv").exists()
    plots.write_roc(tmp_path, "autoencoder", [(0.1, 0), (0.9, 1), (0.4, 0)])
    rows = _rows(tmp_path / "plots" / "autoencoder" / "roc.csv")
    assert rows[0] == ["fpr", "tpr"]
    assert rows[-1] == ["1.0", "1.0"]


def test_the_confusion_picture_is_an_image(tmp_path: Path) -> None:
    path = plots.confusion_png(tmp_path / "figures" / "c.png", np.array([[3, 1], [0, 4]]), ["a", "b"], "a title")
    with Image.open(path) as picture:
        assert picture.format == "PNG"
        assert min(picture.size) >= 300
