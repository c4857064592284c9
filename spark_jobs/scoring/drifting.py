"""The drift test of a scoring run and of a stream's window (:mod:`spark_jobs.ml.drift`): a
seeded sample of the embeddings the scan's forward pass computed (the :data:`heads.EMBEDDING`
column; an mllib model's PCA vectors, from the descriptors the scan kept), gathered on the driver
and tested against the reference the model keeps beside it; and what its verdict shows: the
manifest's drift record, the predictions gate's check (``gate.predictions.drift: fail``) and the
report page's pictures (the batch against the reference in two dimensions, the images most unlike
it)."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa

from spark_jobs.core import store
from spark_jobs.core.manifest import DriftRecord
from spark_jobs.ml import drift, mllib
from spark_jobs.ml.exhibits import file_thumbnail
from spark_jobs.quality import suites
from spark_jobs.quality.report import Gallery, Thumb, short_name
from spark_jobs.scoring import heads, tables
from spark_jobs.scoring.config import ScoreParams
from spark_jobs.scoring.model import Scorer

if TYPE_CHECKING:
    from pyspark.sql import DataFrame

    from spark_jobs.quality.gate import Batch

log = logging.getLogger(__name__)

SAMPLED = pa.schema([("image_id", pa.string()), ("source_uri", pa.string()), heads.EMBEDDING])
MOST_UNLIKE = 12  # thumbnails of the rows the domain classifier found most unlike the reference


@dataclass(frozen=True)
class Reference:
    """The reference a run tests against: the embeddings of the model that embeds every image
    (the cascade's light one), or None with why there is none."""

    embeddings: np.ndarray | None
    layer: str
    why: str = ""

    @property
    def rows(self) -> int:
        return 0 if self.embeddings is None else len(self.embeddings)


def reference(scorer: Scorer) -> Reference:
    """The drift reference of ``scorer``'s embedding model, read and checked against its card."""
    folder, card = scorer.embedder
    if card.reference is None:
        return Reference(None, "", f"model {card.version} keeps no drift reference (trained before drift tests)")
    try:
        embeddings, _labels = drift.read_reference(folder, card.reference)
    except (OSError, drift.ReferenceError) as exc:
        return Reference(None, card.reference.layer, f"its drift reference cannot be read: {exc}")
    return Reference(embeddings, card.reference.layer)


def sample(usable: DataFrame, scorer: Scorer, cfg: ScoreParams) -> pa.Table:
    """At most ``drift.sample_rows`` of the scan's usable rows (:data:`SAMPLED`), the same ones for
    the same ids and ``drift.seed``: their embeddings as the scan computed them, or for an mllib
    embedding model its saved scaler + PCA applied to the descriptors of only these rows."""
    from pyspark.sql import functions as F

    folder, card = scorer.embedder
    column = "raw" if card.kind == "mllib" else heads.EMBEDDING.name
    if column not in usable.columns or cfg.gate.predictions.drift == "off" or card.reference is None:
        return SAMPLED.empty_table()
    order = F.xxhash64("image_id", F.lit(cfg.drift.seed))
    chosen = usable.where(F.col(column).isNotNull()).orderBy(order).limit(cfg.drift.sample_rows)
    if card.kind == "mllib":
        from pyspark.ml import PipelineModel

        transform = PipelineModel.load(store.spark_path(folder / mllib.TRANSFORM))
        chosen = mllib.apply_transform(transform, chosen.select("image_id", "source_uri", "raw"))
        column = "features"
    rows = chosen.select("image_id", "source_uri", F.col(column).alias(heads.EMBEDDING.name)).toArrow()
    return tables.without_copies(rows.cast(SAMPLED))[0]  # copies of one content: one image


def matrix(rows: pa.Table) -> np.ndarray:
    """The ``(N, D)`` float32 embeddings of :data:`SAMPLED` rows."""
    if rows.num_rows == 0:
        return np.zeros((0, 0), np.float32)
    flat = rows.column(heads.EMBEDDING.name).combine_chunks()
    return flat.values.to_numpy(zero_copy_only=False).reshape(rows.num_rows, -1).astype(np.float32)


@dataclass
class Checked:
    """A drift test's verdict: the manifest's record, the gate's check (only when its verdict
    fails the gate), and what the report page shows."""

    record: DriftRecord
    batches: list[Batch] = field(default_factory=list)
    galleries: list[Gallery] = field(default_factory=list)

    def shown(self) -> dict[str, Any]:
        """The verdict in the report page's counts."""
        r = self.record
        said = {"outcome": r.outcome, "consequence": r.consequence, "rows tested": r.batch_rows}
        if r.statistic is not None:
            said |= {"domain classifier AUC": r.statistic, "threshold": r.threshold}
        return said | ({"why": r.note} if r.note else {})


def check(ref: Reference, rows: pa.Table, cfg: ScoreParams, window: bool = False, pictures: bool = True) -> Checked:
    """The drift test of ``rows`` (:data:`SAMPLED`) against ``ref``: its record (with what
    ``gate.predictions.drift`` makes of it), the gate's check when that is ``fail`` and the batch
    was tested, and the report's galleries (without ``pictures``, only for a drifted batch)."""
    consequence = cfg.gate.predictions.drift
    if consequence == "off" or ref.embeddings is None:
        why = "gate.predictions.drift: off" if consequence == "off" else ref.why
        record = drift.not_tested(cfg.drift, ref.layer, ref.rows, rows.num_rows, why)
        return Checked(record.model_copy(update={"consequence": consequence, "window": window}))
    batch = matrix(rows)
    record, domain = drift.judged(cfg.drift, ref.layer, ref.embeddings, batch)
    record = record.model_copy(update={"consequence": consequence, "window": window})
    checked = Checked(record)
    if domain is None:
        return checked
    if consequence == "fail":
        checked.batches.append(suites.drift_batch(domain.auc, cfg.drift.threshold))
    if record.drifted:
        log.warning("embedding drift: domain classifier AUC %.4f > %s (%s)", domain.auc, record.threshold, consequence)
    if pictures or record.drifted:
        checked.galleries = galleries(ref.embeddings, batch, rows, domain, record)
    return checked


def galleries(
    reference: np.ndarray, batch: np.ndarray, rows: pa.Table, domain: drift.Domain, record: DriftRecord
) -> list[Gallery]:
    """The batch's embeddings against the reference (PCA), and the :data:`MOST_UNLIKE` images the
    domain classifier found least like it, each with its probability of being the batch's."""
    said = f"{record.outcome}: domain classifier AUC {record.statistic}, threshold {record.threshold}"
    caption = (f"{record.reference_rows} reference rows (grey)", f"{record.batch_rows} batch rows")
    plot = Thumb(caption, drift.picture(reference, batch, domain.scores, said))
    order = np.argsort(-domain.scores, kind="stable")[:MOST_UNLIKE]
    uris, ids = rows.column("source_uri").to_pylist(), rows.column("image_id").to_pylist()
    unlike = tuple(
        Thumb((short_name(uris[i]), ids[i][:12], f"P(batch) {domain.scores[i]:.3f}"), file_thumbnail(uris[i]))
        for i in order
    )
    note = f"{record.layer} embeddings in the reference's first two principal components; colour: the domain "
    note += "classifier's out-of-fold probability that a row is the batch's"
    return [
        Gallery(f"Embedding drift ({said})", (plot,), 1, note, counted=False),
        Gallery("Images most unlike the reference", unlike, record.batch_rows, "by the domain classifier"),
    ]


class EmbeddingWindow:
    """A stream's last ``size`` published rows' embeddings (:data:`SAMPLED`): what each
    micro-batch's drift test reads with its own rows; emptied when the model changes."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.rows = SAMPLED.empty_table()
        self.version: str | None = None

    def with_batch(self, rows: pa.Table, version: str) -> pa.Table:
        """The window's rows once ``rows`` (of model ``version``) join it: at most ``size``, newest last."""
        kept = [self.rows] if version == self.version else []
        joined = pa.concat_tables([*kept, rows.cast(SAMPLED)])
        return joined.slice(max(joined.num_rows - self.size, 0))

    def add(self, rows: pa.Table, version: str) -> None:
        self.rows, self.version = self.with_batch(rows, version), version
