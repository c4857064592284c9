"""Ingest: a folder, ``s3://bucket/prefix`` or manifest CSV of images -> a gated image table.

Outputs under ``<data.root>/ingest/``: ``images.parquet`` (one row per usable image, normalised
uint8 RGB pixels, content hash ``image_id``, stable ``split``), ``quarantine.parquet`` (every
file that could not be used, with a ``reason`` from :data:`spark_jobs.images.REASONS`) and
``_manifest.json``. Files seen = images + quarantined, always.

    python -m spark_jobs.ingest [--params params.yaml] [--set ingest.source=s3://bucket/raw]
    spark-submit spark_jobs/ingest.py --set ingest.image_size=64
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from spark_jobs import gate, images, manifest, session, store, suites
from spark_jobs.config import Config, IngestConfig, SparkConfig
from spark_jobs.jobs import run_stage

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

log = logging.getLogger(__name__)

STAGE = "ingest"

DECODED_SCHEMA = (
    "image_id string, source_uri string, label string, split string, reason string, detail string, "
    "size_bytes long, orig_width int, orig_height int, orig_format string, orig_mode string, "
    "height int, width int, pixels binary"
)
IMAGE_COLUMNS = (
    "image_id",
    "source_uri",
    "label",
    "split",
    "size_bytes",
    "orig_width",
    "orig_height",
    "orig_format",
    "orig_mode",
    "height",
    "width",
    "pixels",
)
QUARANTINE_COLUMNS = ("source_uri", "reason", "detail", "image_id", "label", "size_bytes")
_DECODED_FIELDS = [f.split()[0] for f in DECODED_SCHEMA.split(", ")]


def decode_record(uri: str, label: str | None, data: bytes | Exception, cfg: IngestConfig) -> dict[str, Any]:
    """One decoded row: pixels and split for a usable image, otherwise ``reason`` and ``detail``."""
    row: dict[str, Any] = dict.fromkeys(_DECODED_FIELDS)
    row.update(source_uri=uri, label=label)
    if isinstance(data, Exception):
        return {**row, "reason": images.FETCH_FAILED, "detail": str(data), "size_bytes": 0}
    row.update(image_id=images.image_id(data), size_bytes=len(data))
    if not images.has_extension(uri, cfg.extensions):
        return {**row, "reason": images.UNSUPPORTED_EXTENSION, "detail": f"extension not in {list(cfg.extensions)}"}
    try:
        decoded = images.decode(data, cfg)
    except images.Rejected as exc:
        return {**row, "reason": exc.reason, "detail": exc.detail[:500]}
    if label is None:
        return {**row, "reason": images.UNLABELLED, "detail": "file is directly under the source root, not in a class folder"}
    row.update(
        split=images.assign_split(row["image_id"], cfg.split.fractions(), cfg.split.seed),
        orig_width=decoded.orig_width,
        orig_height=decoded.orig_height,
        orig_format=decoded.orig_format,
        orig_mode=decoded.orig_mode,
        height=decoded.height,
        width=decoded.width,
        pixels=decoded.pixels,
    )
    return row


def decode_frame(frame: pd.DataFrame, cfg: IngestConfig) -> pd.DataFrame:
    """Decode one Arrow batch of ``(source_uri, label)``: fetch the bytes here, on the executor."""
    uris = list(frame["source_uri"])
    labels = [None if pd.isna(v) else v for v in frame["label"]]
    contents = store.fetch_many(uris, cfg.fetch_threads)
    records = [decode_record(u, lab, c, cfg) for u, lab, c in zip(uris, labels, contents, strict=True)]
    return pd.DataFrame.from_records(records, columns=_DECODED_FIELDS)


def decode_partitions(frames: Iterator[pd.DataFrame], cfg: IngestConfig) -> Iterator[pd.DataFrame]:
    for frame in frames:
        yield decode_frame(frame, cfg)


def listed_frame(spark: SparkSession, files: list[store.SourceFile], spark_cfg: SparkConfig) -> DataFrame:
    """A listing as ``(source_uri, label)`` rows, partitioned by bytes (:func:`store.plan_partitions`)."""
    plan = store.plan_partitions(
        [f.size for f in files],
        spark_cfg.files_max_partition_bytes,
        spark_cfg.files_open_cost_bytes,
        spark.sparkContext.defaultParallelism,
    )
    rows = iter((f.uri, f.label) for f in files)
    chunks = [[next(rows) for _ in range(n)] for n in plan]
    rdd = spark.sparkContext.parallelize(chunks, len(chunks)).flatMap(lambda chunk: chunk)
    return spark.createDataFrame(rdd, "source_uri string, label string")


def decode(frame: DataFrame, cfg: IngestConfig) -> DataFrame:
    """Arrow-batched fetch + decode of every listed file: DECODED_SCHEMA rows, good and bad alike."""
    return frame.mapInPandas(lambda it: decode_partitions(it, cfg), DECODED_SCHEMA)


def deduplicate(decoded: DataFrame) -> DataFrame:
    """``decoded`` with exact duplicates marked: one copy kept (smallest URI) when all copies agree
    on the label, every copy ``label_conflict`` when they do not. Only hashes are shuffled."""
    from pyspark.sql import functions as F

    good = decoded.where(F.col("reason").isNull())
    groups = (
        good.groupBy("image_id")
        .agg(
            F.countDistinct("label").alias("_labels"),
            F.count("*").alias("_copies"),
            F.min("source_uri").alias("_keep"),
            F.concat_ws(",", F.array_sort(F.collect_set("label"))).alias("_label_set"),
        )
        .where(F.col("_copies") > 1)
    )
    marked = decoded.join(F.broadcast(groups), "image_id", "left")
    conflict = F.col("reason").isNull() & (F.col("_labels") > 1)
    duplicate = F.col("reason").isNull() & F.col("_copies").isNotNull() & (F.col("source_uri") != F.col("_keep"))
    reason = (
        F.when(conflict, F.lit(images.LABEL_CONFLICT))
        .when(duplicate, F.lit(images.DUPLICATE))
        .otherwise(F.col("reason"))
    )
    detail = (
        F.when(conflict, F.concat(F.lit("same content carries labels "), F.col("_label_set")))
        .when(duplicate, F.concat(F.lit("same content as "), F.col("_keep")))
        .otherwise(F.col("detail"))
    )
    # One projection: both expressions must see the reason as decoded, not as rewritten.
    columns = {"reason": reason, "detail": detail}
    return marked.select(*(columns.get(c, F.col(c)).alias(c) for c in _DECODED_FIELDS))


def image_rows(marked: DataFrame) -> DataFrame:
    from pyspark.sql import functions as F

    return marked.where(F.col("reason").isNull()).select(*IMAGE_COLUMNS)


def quarantine_rows(marked: DataFrame) -> DataFrame:
    from pyspark.sql import functions as F

    return marked.where(F.col("reason").isNotNull()).select(*QUARANTINE_COLUMNS)


def describe(source: str, kind: str, files: list[store.SourceFile]) -> dict[str, Any]:
    """What was read, for the manifest (never credentials)."""
    uri = source if store.is_s3(source) else store.canonical_uri(source)
    description = {"uri": uri, "kind": kind, "files": len(files), "bytes": sum(f.size for f in files)}
    if store.is_s3(source):
        description["endpoint"] = store.s3_endpoint()
    return description


def discovered_classes(files: list[store.SourceFile], extensions: tuple[str, ...]) -> list[str]:
    """Class names in the source: labels of files with an image extension, usable or not."""
    return sorted({f.label for f in files if f.label is not None and images.has_extension(f.uri, extensions)})


def run(cfg: Config, spark: SparkSession) -> Path:
    """Ingest ``cfg.ingest.source`` under ``cfg.data.root``; returns the published folder."""
    from pyspark import StorageLevel
    from pyspark.sql import functions as F

    started, t0 = manifest.now(), time.perf_counter()
    kind, files = store.list_source(cfg.ingest.source)
    source = describe(cfg.ingest.source, kind, files)
    files_seen, classes = len(files), discovered_classes(files, cfg.ingest.extensions)
    # Decode once: the duplicate check and both output tables read this cache.
    decoded = decode(listed_frame(spark, files, cfg.spark), cfg.ingest).persist(StorageLevel.MEMORY_AND_DISK)
    marked = deduplicate(decoded)
    out = gate.StagedOutput(cfg.data.root, STAGE)
    try:
        image_rows(marked).write.parquet(out.path("images.parquet"))
        quarantine_rows(marked).write.parquet(out.path("quarantine.parquet"))
        decoded_at = time.perf_counter()
    except BaseException:
        out.discard()
        raise
    finally:
        decoded.unpersist()

    staged = spark.read.parquet(out.path("images.parquet"))
    quarantine = spark.read.parquet(out.path("quarantine.parquet"))
    reasons = {r["reason"]: r["n"] for r in quarantine.groupBy("reason").agg(F.count("*").alias("n")).collect()}
    per_class = {r["label"]: r["n"] for r in staged.groupBy("label").agg(F.count("*").alias("n")).collect()}
    per_split = {r["split"]: r["n"] for r in staged.groupBy("split").agg(F.count("*").alias("n")).collect()}
    quarantined = sum(reasons.values())
    batches = suites.raw_batches(
        spark,
        staged,
        classes,
        files_seen,
        quarantined,
        cfg.ingest.image_size,
        cfg.ingest.split.fractions(),
        cfg.gate.raw,
    )
    result = gate.validate(STAGE, batches, out.report_dir)
    rows = sum(per_class.values())
    counts = {
        "files_seen": files_seen,
        "rows": rows,
        "quarantined": quarantined,
        "quarantine_by_reason": reasons,
        "classes": classes,
        "rows_by_class": per_class,
        "rows_by_split": per_split,
    }
    timings = {
        "started_at": started,
        "finished_at": manifest.now(),
        "duration_s": round(time.perf_counter() - t0, 3),
        "decode_and_write_s": round(decoded_at - t0, 3),
        "images_per_s": round(files_seen / max(decoded_at - t0, 1e-9), 1),
    }
    doc = manifest.build(
        STAGE,
        cfg.section("ingest", "gate.raw", "data"),
        inputs={"source": source},
        counts=counts,
        gate=result.for_manifest(),
        timings=timings,
        spark=session.spark_metrics(spark),
    )
    published = out.finish(result, doc)
    log.info("%d files seen: %d images, %d quarantined %s", files_seen, rows, quarantined, reasons)
    return published


def _precheck(cfg: Config) -> None:
    store.describe_source(cfg.ingest.source)


def main(argv: list[str] | None = None) -> int:
    return run_stage(STAGE, argv, run, description=__doc__, precheck=_precheck)


if __name__ == "__main__":
    sys.exit(main())
