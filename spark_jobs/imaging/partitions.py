"""A listing cut into tasks, and the fetch + decode those tasks run on the executors.

The driver lists the source (:mod:`spark_jobs.core.store`); :func:`plan_chunks` packs the files
into one chunk per task by bytes; each task fetches and decodes its chunk of the broadcast listing
in Arrow batches (:func:`decode`). Ingest and scoring both read images this way.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any

import pandas as pd

from spark_jobs.core import store
from spark_jobs.core.config import SparkConfig
from spark_jobs.core.ingest_config import IngestConfig
from spark_jobs.core.tables import DECODED_FIELDS, DECODED_SCHEMA
from spark_jobs.imaging import images

if TYPE_CHECKING:
    from pyspark import Accumulator, Broadcast
    from pyspark.sql import DataFrame, SparkSession


def decode_frame(entries: list[tuple[str, str | None]], cfg: IngestConfig) -> pd.DataFrame:
    """Decode one batch of ``(source_uri, label)``: the bytes are fetched here, on the executor."""
    contents = store.fetch_each([uri for uri, _ in entries], cfg.fetch_threads, cfg.max_file_bytes)
    # Each file's bytes are dropped once decoded: a batch of large photos is never held whole.
    records = [images.decode_record(u, lab, c, cfg) for (u, lab), c in zip(entries, contents, strict=True)]
    return pd.DataFrame.from_records(records, columns=DECODED_FIELDS)


def chunk_slices(chunk_ids: Iterable[int], listing: Broadcast, batch_rows: int) -> Iterator[list]:
    """The ``(source_uri, label)`` entries of the listed chunks, in slices of ``batch_rows``."""
    for chunk_id in chunk_ids:
        entries = listing.value[chunk_id]
        for start in range(0, len(entries), batch_rows):
            yield entries[start : start + batch_rows]


def decode_chunks(
    frames: Iterator[pd.DataFrame],
    listing: Broadcast,
    cfg: IngestConfig,
    batch_rows: int,
    handled: Accumulator | None = None,
) -> Iterator[pd.DataFrame]:
    """For each chunk id in the input, decode that chunk of the broadcast listing, in batches
    (each added to ``handled``, the stage's progress count: :mod:`spark_jobs.core.progress`)."""
    for frame in frames:
        for entries in chunk_slices(frame["id"], listing, batch_rows):
            yield decode_frame(entries, cfg)
            if handled is not None:
                handled.add(len(entries))


def plan_chunks(spark: SparkSession, files: list[store.SourceFile], spark_cfg: SparkConfig) -> list[list]:
    """The listing cut into one chunk per task, packed by bytes (:func:`store.plan_partitions`)."""
    plan = store.plan_partitions(
        [f.size for f in files],
        spark_cfg.files_max_partition_bytes,
        spark_cfg.files_open_cost_bytes,
        spark.sparkContext.defaultParallelism,
    )
    rows = iter((f.uri, f.label) for f in files)
    return [[next(rows) for _ in range(n)] for n in plan]


def chunk_tasks(spark: SparkSession, chunks: list[list]) -> tuple[DataFrame, Broadcast]:
    """``(one row per chunk id, one partition each; the listing broadcast once)``: task ``i``
    reads chunk ``i`` (no per-row trip of the listing through the JVM)."""
    listing = spark.sparkContext.broadcast(chunks)
    return spark.range(len(chunks), numPartitions=max(len(chunks), 1)), listing


def decode(
    spark: SparkSession, chunks: list[list], cfg: IngestConfig, batch_rows: int, handled: Accumulator | None = None
) -> DataFrame:
    """Fetch + decode every listed file: DECODED_SCHEMA rows, good and bad alike, in Arrow batches
    of ``batch_rows``: one Python stage (counting the files into ``handled``)."""
    ids, listing = chunk_tasks(spark, chunks)
    return ids.mapInPandas(lambda it: decode_chunks(it, listing, cfg, batch_rows, handled), DECODED_SCHEMA)


def describe(source: str, kind: str, files: list[store.SourceFile]) -> dict[str, Any]:
    """What was read, for the manifest (never credentials)."""
    uri = source if store.is_s3(source) else store.canonical_uri(source)
    description = {"uri": uri, "kind": kind, "files": len(files), "bytes": sum(f.size for f in files)}
    if store.is_s3(source):
        description["endpoint"] = store.s3_endpoint()
    return description
