"""The drift reference kept with every model: a bounded sample of its training inputs' embeddings,
the layer a drift test reads (the penultimate layer of a torch model, the PCA vectors of an MLlib
model), stratified by class and drawn with the run's seed (``drift.reference_rows``).

It is computed by the train stage from what training already reads (the ingested pixels, the
tile or PCA vectors of the features table: no training image is decoded again), written beside the
model as ``reference.npz`` (``embeddings`` float32 ``(N, D)``, ``labels``, no pickled object) and
recorded in its card with its sha256 (:class:`ReferenceRecord`). Promotion copies it with the model.

Pure functions; the reading and the forward passes are the train stage's.
"""

from __future__ import annotations

import hashlib
import io
from collections import Counter
from pathlib import Path

import numpy as np
from pydantic import Field

from spark_jobs.core import atomic
from spark_jobs.core.config import Section
from spark_jobs.ml import models
from spark_jobs.ml.cards import ReferenceRecord

REFERENCE = "reference.npz"


class DriftConfig(Section):
    """``drift``."""

    reference_rows: int = Field(1000, ge=10, le=1_000_000)


def stratified(ids: list[str], labels: list[str], rows: int, seed: int) -> list[str]:
    """At most ``rows`` of ``ids``, each class's share as in ``labels`` (largest remainders; every
    class present keeps at least one row when ``rows`` allows), drawn with ``seed``; sorted."""
    order = sorted(zip(ids, labels, strict=True))
    if len(order) <= rows:
        return [i for i, _ in order]
    by_class: dict[str, list[str]] = {}
    for image, label in order:
        by_class.setdefault(label, []).append(image)
    classes = sorted(by_class)
    exact = np.array([len(by_class[c]) * rows / len(order) for c in classes])
    take = np.maximum(np.floor(exact).astype(int), 1 if rows >= len(classes) else 0)
    for k in np.argsort(-(exact - np.floor(exact)), kind="stable"):
        if take.sum() >= rows:
            break
        take[k] += 1
    while take.sum() > rows:  # the floors of one row a class overshot: trim the largest
        take[int(np.argmax(take))] -= 1
    rng = np.random.default_rng(seed)
    chosen: list[str] = []
    for c, n in zip(classes, take, strict=True):
        members = by_class[c]
        chosen += [members[i] for i in rng.choice(len(members), size=min(int(n), len(members)), replace=False)]
    return sorted(chosen)


def write_reference(folder: Path, embeddings: np.ndarray, labels: list[str], layer: str) -> ReferenceRecord:
    """``folder/reference.npz`` and its record."""
    out = io.BytesIO()
    np.savez(out, embeddings=np.ascontiguousarray(embeddings, dtype=np.float32), labels=np.asarray(labels, dtype=str))
    data = out.getvalue()
    atomic.write_file(folder / REFERENCE, data)
    per_class = Counter(labels)
    return ReferenceRecord(
        file=REFERENCE,
        sha256=hashlib.sha256(data).hexdigest(),
        rows=int(embeddings.shape[0]),
        dim=int(embeddings.shape[1]) if embeddings.ndim == 2 else 0,
        layer=layer,
        per_class=dict(sorted(per_class.items())),
    )


class ReferenceError(ValueError):
    """A drift reference that is not the one its card records, or not a reference at all."""


def read_reference(folder: Path, record: ReferenceRecord) -> tuple[np.ndarray, list[str]]:
    """``(embeddings, labels)`` of ``folder``'s reference, checked against its card's sha256; no
    pickled object is ever loaded."""
    path = folder / record.file
    data = path.read_bytes()
    if hashlib.sha256(data).hexdigest() != record.sha256:
        raise ReferenceError(f"{path} is not the drift reference its card records (sha256 differs)")
    try:
        with models.load_array(data) as arrays:
            return arrays["embeddings"].astype(np.float32), [str(v) for v in arrays["labels"]]
    except (ValueError, KeyError, OSError) as exc:
        raise ReferenceError(f"{path} is not a drift reference: {exc}") from None


def domain_auc(reference: np.ndarray, batch: np.ndarray, seed: int = 0, folds: int = 5) -> float:
    """How well new embeddings can be told from the reference: the cross-validated ROC AUC of a
    logistic regression (a domain classifier, Evidently's default embedding-drift test) trained
    to say which rows are the batch's. 0.5: indistinguishable; 1.0: always told apart. Each side
    is standardised by the reference's mean and spread first."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import StratifiedKFold, cross_val_predict

    mean, spread = reference.mean(axis=0), reference.std(axis=0) + 1e-6
    x = (np.vstack([reference, batch]).astype(np.float64) - mean) / spread
    y = np.r_[np.zeros(len(reference)), np.ones(len(batch))]
    folds = max(2, min(folds, len(reference), len(batch)))
    split = StratifiedKFold(folds, shuffle=True, random_state=seed)
    p = cross_val_predict(LogisticRegression(max_iter=2000), x, y, cv=split, method="predict_proba")[:, 1]
    return float(roc_auc_score(y, p))
