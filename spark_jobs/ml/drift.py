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
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydantic import Field, model_validator

from spark_jobs.core import atomic
from spark_jobs.core.config import Section
from spark_jobs.core.manifest import DriftRecord
from spark_jobs.ml import models
from spark_jobs.ml.cards import ReferenceRecord

REFERENCE = "reference.npz"


class DriftConfig(Section):
    """``drift``: the reference kept with a model (the train stage reads ``reference_rows``) and
    the test each scoring run and stream window makes against it (the score stage reads the rest;
    what a verdict does: ``gate.predictions.drift``)."""

    reference_rows: int = Field(1000, ge=10, le=1_000_000)
    # The domain classifier's cross-validated ROC AUC above which a batch has drifted: an effect
    # size, chosen on bench/drift.py's inboxes (README: "Drift").
    threshold: float = Field(0.97, gt=0.5, le=1.0)
    min_rows: int = Field(100, ge=5)  # a batch (a stream's window) with fewer rows is "not tested"
    sample_rows: int = Field(1000, ge=10)  # a batch's rows tested at most: a seeded sample by image_id
    window_rows: int = Field(1000, ge=10)  # the stream's rolling window: its last N rows are tested
    seed: int = 0  # the batch sample and the folds

    @model_validator(mode="after")
    def _sizes(self) -> DriftConfig:
        if self.min_rows > min(self.sample_rows, self.window_rows):
            raise ValueError(
                f"drift.min_rows ({self.min_rows}) is more than drift.sample_rows ({self.sample_rows}) or "
                f"drift.window_rows ({self.window_rows}): no batch could ever be tested"
            )
        return self


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


@dataclass(frozen=True)
class Domain:
    """A domain classifier's verdict on a batch of embeddings against the reference: its
    cross-validated ROC AUC (0.5: indistinguishable; 1.0: always told apart) and, for each batch
    row, its out-of-fold probability of being the batch's (high: unlike the reference)."""

    auc: float
    scores: np.ndarray


def domain_classifier(reference: np.ndarray, batch: np.ndarray, seed: int = 0, folds: int = 5) -> Domain:
    """How well new embeddings can be told from the reference: a logistic regression (Evidently's
    default embedding-drift test) trained to say which rows are the batch's, scored on the rows
    each fold held out. Each side is standardised by the reference's mean and spread first."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import StratifiedKFold, cross_val_predict

    mean, spread = reference.mean(axis=0), reference.std(axis=0) + 1e-6
    x = (np.vstack([reference, batch]).astype(np.float64) - mean) / spread
    y = np.r_[np.zeros(len(reference)), np.ones(len(batch))]
    folds = max(2, min(folds, len(reference), len(batch)))
    split = StratifiedKFold(folds, shuffle=True, random_state=seed)
    p = cross_val_predict(LogisticRegression(max_iter=2000), x, y, cv=split, method="predict_proba")[:, 1]
    return Domain(float(roc_auc_score(y, p)), p[len(reference) :])


METHOD = "domain_classifier_auc"


def not_tested(cfg: DriftConfig, layer: str, reference_rows: int, batch_rows: int, why: str) -> DriftRecord:
    """The record of a batch the test did not judge (too few rows, no reference): never a pass."""
    return DriftRecord(
        method=METHOD,
        layer=layer,
        threshold=cfg.threshold,
        reference_rows=reference_rows,
        batch_rows=batch_rows,
        outcome="not tested",
        note=why,
    )


def judged(cfg: DriftConfig, layer: str, reference: np.ndarray, batch: np.ndarray) -> tuple[DriftRecord, Domain | None]:
    """The drift test of ``batch``'s embeddings (at most ``drift.sample_rows`` of them, chosen by
    the caller) against the ``reference``: drifted when the domain classifier's AUC exceeds
    ``drift.threshold``; "not tested" below ``drift.min_rows`` rows."""
    rows = len(batch)
    if rows < cfg.min_rows:
        why = f"{rows} rows, fewer than drift.min_rows ({cfg.min_rows})"
        return not_tested(cfg, layer, len(reference), rows, why), None
    if batch.shape[1] != reference.shape[1]:
        why = f"embeddings of {batch.shape[1]} values against a reference of {reference.shape[1]}"
        return not_tested(cfg, layer, len(reference), rows, why), None
    domain = domain_classifier(reference, batch, cfg.seed)
    drifted = domain.auc > cfg.threshold
    record = DriftRecord(
        method=METHOD,
        layer=layer,
        statistic=round(domain.auc, 4),
        threshold=cfg.threshold,
        reference_rows=len(reference),
        batch_rows=rows,
        drifted=drifted,
        outcome="drifted" if drifted else "passed",
    )
    return record, domain


def picture(reference: np.ndarray, batch: np.ndarray, scores: np.ndarray | None, title: str) -> bytes:
    """A PNG of the batch's embeddings against the reference in two dimensions (the first two
    principal components of the reference): reference grey, batch coloured by how unlike the
    reference the domain classifier found each row."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.decomposition import PCA

    pca = PCA(2, random_state=0).fit(reference)
    ref, new = pca.transform(reference), pca.transform(batch)
    fig, ax = plt.subplots(figsize=(5.5, 4.5))
    try:
        ax.scatter(ref[:, 0], ref[:, 1], s=6, c="#b0b0b0", label=f"reference ({len(ref)})")
        colour = scores if scores is not None else "#1f77b4"
        label = f"batch ({len(new)})"
        shown = ax.scatter(new[:, 0], new[:, 1], s=8, c=colour, cmap="plasma", vmin=0, vmax=1, label=label)
        if scores is not None:
            fig.colorbar(shown, ax=ax, label="domain classifier: P(batch)")
        ax.set(title=title, xlabel="PC 1 of the reference", ylabel="PC 2")
        ax.legend(loc="best", fontsize=8)
        fig.tight_layout()
        out = io.BytesIO()
        fig.savefig(out, format="png", dpi=90)
    finally:
        plt.close(fig)
    return out.getvalue()
