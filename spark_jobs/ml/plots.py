"""What evaluate draws for a model: the plot data ``dvc plots`` reads (a confusion table, per-class
figures, an ROC curve) and a confusion-matrix picture."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd


def write_classifier_plots(
    reports: Path, kind: str, predictions: pd.DataFrame, result: dict[str, Any], classes: list[str]
) -> None:
    """``plots/<kind>/confusion.csv`` (actual, predicted per test row) and ``classes.csv``."""
    folder = reports / "plots" / kind
    folder.mkdir(parents=True, exist_ok=True)
    rows = predictions[["label", "prediction"]].sort_values(["label", "prediction"], kind="stable")
    with (folder / "confusion.csv").open("w", newline="") as f:
        out = csv.writer(f)
        out.writerow(["actual", "predicted"])
        out.writerows([label, classes[p]] for label, p in rows.itertuples(index=False))
    with (folder / "classes.csv").open("w", newline="") as f:
        out = csv.writer(f)
        out.writerow(["class", "precision", "recall", "f1", "support"])
        for c, m in result["per_class"].items():
            out.writerow([c, round(m["precision"], 6), round(m["recall"], 6), round(m["f1"], 6), m["support"]])


def write_roc(reports: Path, kind: str, pairs: list[tuple[float, int]]) -> None:
    """``plots/<kind>/roc.csv`` of ``(score, is_anomaly)`` pairs (nothing when one side is missing)."""
    from sklearn.metrics import roc_curve

    folder = reports / "plots" / kind
    folder.mkdir(parents=True, exist_ok=True)
    labels = [p[1] for p in pairs]
    if len(set(labels)) < 2:
        return
    fpr, tpr, _ = roc_curve(labels, [p[0] for p in pairs])
    with (folder / "roc.csv").open("w", newline="") as f:
        out = csv.writer(f)
        out.writerow(["fpr", "tpr"])
        out.writerows(zip(fpr.round(6), tpr.round(6), strict=True))


def confusion_png(path: Path, matrix: np.ndarray, labels: list[str], title: str) -> Path:
    """A confusion-matrix picture (scikit-learn's display, drawn by matplotlib off-screen)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.metrics import ConfusionMatrixDisplay

    size = max(4.0, 0.55 * len(labels) + 2)
    fig, ax = plt.subplots(figsize=(size, size))
    try:
        ConfusionMatrixDisplay(matrix, display_labels=labels).plot(ax=ax, cmap="Blues", colorbar=False)
        ax.set_title(title)
        fig.tight_layout()
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=100)
    finally:
        plt.close(fig)
    return path
