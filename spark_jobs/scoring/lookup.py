"""What a model version has already scored, read on the driver (pyarrow: two short columns, no
Spark job) and handed to the scanning tasks as an :class:`~spark_jobs.scoring.scan.IdSet`, so a
file scored before is skipped before it is decoded; and which bad files earlier runs reported.

A batch run and a stream read the same lookup (the batch table, and the stream table's last
``score.stream.dedupe_hours``), so switching between the two scores nothing twice."""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from spark_jobs.scoring import tables
from spark_jobs.scoring.scan import IdSet

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

REBUILD_IDS = 50_000  # ids scored since the lookup was read, before a stream reads it again (and prunes)


def _published_rows(folder: Path, columns: list[str], where: Any = None) -> pa.Table | None:
    """Columns of every published run of a batch predictions or quarantine table; None before
    the first run."""
    import pyarrow.dataset as ds

    if not tables.committed_runs(folder):
        return None
    dataset = ds.dataset(str(folder), format="parquet", partitioning="hive")  # skips _manifest.json
    return dataset.to_table(columns=columns, filter=where)


def scored_ids(folder: Path, version: str) -> list[str]:
    """``image_id`` of every image the model ``version`` has already scored in a batch table (the
    published predictions' ``image_id`` and ``model_version`` columns only)."""
    import pyarrow.dataset as ds

    table = _published_rows(folder, ["image_id"], ds.field("model_version") == version)
    return [] if table is None else table.column("image_id").to_pylist()


def recorded_quarantine(folder: Path) -> set[tuple[str, str]]:
    """``(source_uri, image_id)`` of every file an earlier batch run quarantined (with content)."""
    table = _published_rows(folder, ["source_uri", "image_id"])
    if table is None:
        return set()
    uris, ids = (table.column(c).to_pylist() for c in ("source_uri", "image_id"))
    return {(u, i) for u, i in zip(uris, ids, strict=True) if i}


def stream_scored_ids(root: Path, version: str, now: float, hours: int) -> list[str]:
    """``image_id`` of the images ``version`` scored in the stream table's last ``hours`` hours
    (only those partitions are read: the lookup does not grow with the stream's age)."""
    import pyarrow.dataset as ds

    table = tables.stream_dir(root) / tables.PREDICTIONS
    folders = [table / h for h in sorted(tables.recent_hours(now, hours)) if (table / h).is_dir()]
    files = [str(f) for folder in folders for f in sorted(folder.glob("part-*.parquet"))]
    if not files:
        return []
    got = ds.dataset(files, format="parquet").to_table(
        columns=["image_id"], filter=ds.field("model_version") == version
    )
    return got.column("image_id").to_pylist()


def already_scored(root: str | Path, version: str, dedupe_hours: int) -> IdSet:
    """What ``version`` has scored: the batch table's ids, and the stream table's of its last
    ``dedupe_hours``."""
    root = Path(root)
    batch = scored_ids(tables.predictions_dir(root), version)
    streamed = stream_scored_ids(root, version, time.time(), dedupe_hours)
    return IdSet([*batch, *streamed])


class Lookup:
    """The already-scored lookup of a stream, for one model version: :func:`already_scored`
    broadcast once, plus the ids scored since (broadcast with each micro-batch); read again every
    :data:`REBUILD_IDS` new ids."""

    def __init__(self, spark: SparkSession, root: str | Path, version: str, dedupe_hours: int) -> None:
        self.spark, self.root, self.version, self.hours = spark, root, version, dedupe_hours
        self.recent: set[str] = set()
        self.base: Any = None
        self.read()

    def read(self) -> None:
        ids = already_scored(self.root, self.version, self.hours)
        if self.base is not None:
            self.base.unpersist()
        self.base, self.recent = self.spark.sparkContext.broadcast(ids), set()

    def add(self, ids: list[str]) -> None:
        self.recent.update(ids)
        if len(self.recent) > REBUILD_IDS:
            self.read()

    def close(self) -> None:
        if self.base is not None:
            self.base.unpersist()
