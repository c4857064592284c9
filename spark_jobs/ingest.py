"""Ingest: a folder, ``s3://bucket/prefix`` or manifest CSV of images -> a gated image table.

Outputs under ``<data.root>/ingest/``: ``images.parquet`` (one row per usable image, normalised
uint8 RGB pixels, content hash ``image_id``, stable ``split``), ``quarantine.parquet`` (every
file that could not be used, with a ``reason`` from :data:`spark_jobs.imaging.images.REASONS`) and
``_manifest.json``. Files seen = images + quarantined, always.

Pixels are decoded and written exactly once (no cache of decoded images, so memory does not grow
with the dataset): both tables come out of one partitioned write and physically share the decode
schema; their documented columns are ``IMAGE_COLUMNS`` and ``QUARANTINE_COLUMNS`` (read them with
:func:`read_images` / :func:`read_quarantine`). Exact duplicates are found afterwards from ids and
labels alone, and only the Parquet files holding them are rewritten.

    python -m spark_jobs.ingest [--params params.yaml] [--set ingest.source=s3://bucket/raw]
    spark-submit spark_jobs/ingest.py --set ingest.image_size=64
"""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import pyarrow as pa
import pyarrow.parquet as pq

from spark_jobs.core import atomic, launch, progress, runner, session, store
from spark_jobs.core.config import Params
from spark_jobs.core.ingest_config import IngestConfig
from spark_jobs.core.jobs import exit_process, run_stage
from spark_jobs.core.store import spark_path
from spark_jobs.core.tables import (
    DECODED_FIELDS,
    DECODED_SCHEMA,
    SIGNATURE_COLUMNS,
    read_images,
    read_quarantine,
)
from spark_jobs.imaging import images, near_duplicates
from spark_jobs.imaging.partitions import decode, describe, plan_chunks
from spark_jobs.ml import exhibits
from spark_jobs.quality import gate, report, suites
from spark_jobs.quality.thresholds import GateConfig

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, Row, SparkSession

log = logging.getLogger(__name__)

STAGE = "ingest"
PAIRS = "near_duplicates.parquet"  # the verified near-duplicate pairs, beside the two tables
MAX_QUARANTINED = 12  # quarantined files shown per reason on the gate's page

_TABLE = "_table"


def write_decoded(decoded: DataFrame, folder: str) -> None:
    """One pass over the pixels: every decoded row written once, usable rows under
    ``_table=images`` and the rest under ``_table=quarantine`` (no cache of decoded images)."""
    from pyspark.sql import functions as F

    table = F.when(F.col("reason").isNull(), F.lit("images")).otherwise(F.lit("quarantine"))
    decoded.withColumn(_TABLE, table).write.partitionBy(_TABLE).parquet(spark_path(folder))


def settle_tables(spark: SparkSession, staging: Path) -> tuple[Path, Path]:
    """Turn the partitioned decode output into ``images.parquet`` and ``quarantine.parquet``
    (an empty table with the schema where a side has no rows)."""
    from pyspark.sql.pandas.types import to_arrow_schema

    decoded = staging / "_decoded"
    tables = []
    for name in ("images", "quarantine"):
        target = staging / f"{name}.parquet"
        part = decoded / f"{_TABLE}={name}"
        if part.exists():
            part.rename(target)
        else:  # no rows on this side: an empty table with the schema, without a Spark job
            target.mkdir()
            schema = to_arrow_schema(spark.createDataFrame([], DECODED_SCHEMA).schema)
            pq.write_table(schema.empty_table(), target / "part-00000-empty.parquet")
        tables.append(target)
    shutil.rmtree(decoded)
    return tables[0], tables[1]


def duplicate_fates(spark: SparkSession, images_dir: Path) -> DataFrame:
    """``(source_uri, reason, detail, file)`` of each copy that must leave the image table
    ``images_dir``: every copy of content carrying different labels (``label_conflict``), else
    all but the smallest URI (``duplicate``); ``file`` is the Parquet file holding it. Never
    reads pixels."""
    from pyspark.sql import functions as F

    rows = (
        spark.read.schema(DECODED_SCHEMA)
        .parquet(spark_path(images_dir))
        .select("image_id", "label", "source_uri", F.input_file_name().alias("file"))
    )
    groups = (
        rows.groupBy("image_id")
        .agg(
            F.countDistinct("label").alias("_labels"),
            F.count("*").alias("_copies"),
            F.min("source_uri").alias("_keep"),
            F.concat_ws(",", F.array_sort(F.collect_set("label"))).alias("_label_set"),
        )
        .where(F.col("_copies") > 1)
    )
    conflict = F.col("_labels") > 1
    reason = F.when(conflict, F.lit(images.LABEL_CONFLICT)).when(
        F.col("source_uri") != F.col("_keep"), F.lit(images.DUPLICATE)
    )
    detail = F.when(conflict, F.concat(F.lit("same content carries labels "), F.col("_label_set"))).otherwise(
        F.concat(F.lit("same content as "), F.col("_keep"))
    )
    fates = rows.join(groups, "image_id").select("source_uri", reason.alias("reason"), detail.alias("detail"), "file")
    return fates.where(F.col("reason").isNotNull())


def move_to_quarantine(spark: SparkSession, images_dir: Path, quarantine_dir: Path, fates: list[Row]) -> None:
    """Move the rows named in ``fates`` (from :func:`duplicate_fates`) from the image table to
    the quarantine table, rewriting only the Parquet files that hold them."""
    from pyspark.sql import functions as F

    if not fates:
        return
    moving = F.broadcast(
        spark.createDataFrame(
            [(r["source_uri"], r["reason"], r["detail"]) for r in fates],
            "source_uri string, _reason string, _detail string",
        )
    )

    def kept(affected: DataFrame) -> DataFrame:
        moved = affected.join(moving, "source_uri").withColumns(
            {
                "reason": F.col("_reason"),
                "detail": F.col("_detail"),
                "split": F.lit(None).cast("string"),
                "pixels": F.lit(None).cast("binary"),
            }
        )
        moved.select(*DECODED_FIELDS).write.mode("append").parquet(spark_path(quarantine_dir))
        return affected.join(moving, "source_uri", "left_anti")

    replace_files(spark, images_dir, sorted({r["file"] for r in fates}), kept)


def replace_files(
    spark: SparkSession, images_dir: Path, files: list[str], rows: Callable[[DataFrame], DataFrame]
) -> None:
    """Rewrite the Parquet ``files`` of the image table (``input_file_name()`` URIs) as ``rows``
    makes them of their content; the table's other files stay as they are."""
    # input_file_name() gives URIs (%-escaped): read back as the paths they name
    affected = spark.read.schema(DECODED_SCHEMA).parquet(*[spark_path(store.local_path(f)) for f in files])
    rewrite = images_dir.with_name("_rewrite")
    rows(affected).select(*DECODED_FIELDS).write.parquet(spark_path(rewrite))
    swap_files(images_dir, files, rewrite)


def swap_files(images_dir: Path, files: list[str], rewrite: Path) -> None:
    """Replace the table's ``files`` (URIs) by the Parquet files written under ``rewrite``."""
    for uri in files:
        path = store.local_path(uri)
        path.unlink()
        path.with_name(f".{path.name}.crc").unlink(missing_ok=True)
    for path in rewrite.iterdir():
        if path.name.startswith(("part-", ".part-")):
            path.rename(images_dir / path.name)
    shutil.rmtree(rewrite)


def relabel_file(source: str, target: str, labels: dict[str, tuple[str, str | None]]) -> None:
    """Write Parquet file ``source`` to ``target`` with ``labels`` (``{image_id: (cluster_id,
    split or None to keep it)}``) applied to its ``cluster_id`` and ``split`` columns: row group by
    row group, the schema, the row groups and the codec kept. Every other column goes through
    Arrow untouched: Spark's own rewrite would copy each pixel value through its rows (3x the
    time on 224 px photographs). Written atomically (:func:`atomic.atomic_file`): a retried task
    never leaves half a file behind."""
    parquet = pq.ParquetFile(source)
    meta = parquet.metadata
    codec = meta.row_group(0).column(0).compression if meta.num_row_groups else "ZSTD"
    compression = _WRITE_CODECS.get(codec, codec.lower())
    with (
        atomic.atomic_file(Path(target)) as sink,
        pq.ParquetWriter(sink, parquet.schema_arrow, compression=compression) as out,
    ):
        for group in range(meta.num_row_groups):
            rows = parquet.read_row_group(group)
            ids = rows.column("image_id").to_pylist()
            for column, at in (("cluster_id", 0), ("split", 1)):
                old = rows.column(column).to_pylist()
                new = [
                    labels[i][at] if i in labels and labels[i][at] is not None else v
                    for i, v in zip(ids, old, strict=True)
                ]
                index = rows.schema.get_field_index(column)
                rows = rows.set_column(index, rows.schema.field(index), pa.array(new, pa.string()))
            out.write_table(rows, row_group_size=rows.num_rows)


_WRITE_CODECS = {"UNCOMPRESSED": "none", "LZ4_RAW": "lz4"}  # Parquet's codec names -> pyarrow's


def find_near_duplicates(
    spark: SparkSession, images_dir: Path, target: Path, cfg: IngestConfig
) -> list[tuple[str, str, float]]:
    """Write the image table's verified near-duplicate pairs to ``target``
    (:data:`near_duplicates.PAIRS_SCHEMA`) and return them as ``(image_id_a, image_id_b, score)``."""
    signatures = (
        spark.read.schema(DECODED_SCHEMA)
        .parquet(spark_path(images_dir))
        .select("image_id", "source_uri", *SIGNATURE_COLUMNS)
    )
    with session.sql_conf(spark, "spark.sql.execution.arrow.maxRecordsPerBatch", str(near_duplicates.BATCH_ROWS)):
        pairs = near_duplicates.verified(signatures, near_duplicates.candidates(signatures, cfg.audit), cfg.audit)
        pairs.repartition(1).write.parquet(spark_path(target))  # few rows: one file (the scoring stays parallel)
    found = spark.read.schema(near_duplicates.PAIRS_SCHEMA).parquet(spark_path(target))
    return [(r[0], r[1], r[2]) for r in found.select("image_id_a", "image_id_b", "score").collect()]


def assign_clusters(spark: SparkSession, images_dir: Path, clusters: dict[str, str], cfg: IngestConfig) -> None:
    """Give every image in a near-duplicate cluster its ``cluster_id`` and, with ``split.by:
    cluster``, the split of that id. Only the Parquet files holding them are rewritten, one Spark
    task per file (:func:`relabel_file`)."""
    from pyspark.sql import functions as F

    changed = {i: c for i, c in clusters.items() if i != c}
    if not changed:
        return
    by_cluster = cfg.split.by == "cluster"
    fractions, seed = cfg.split.fractions(), cfg.split.seed
    labels = {i: (c, images.assign_split(c, fractions, seed) if by_cluster else None) for i, c in changed.items()}
    ids = F.broadcast(spark.createDataFrame([(i,) for i in changed], "image_id string"))
    table = spark.read.schema(DECODED_SCHEMA).parquet(spark_path(images_dir))
    holding = table.join(ids, "image_id").select(F.input_file_name().alias("f")).distinct()
    files = sorted(r["f"] for r in holding.collect())
    rewrite = images_dir.with_name("_rewrite")
    rewrite.mkdir()
    shared = spark.sparkContext.broadcast(labels)
    sources = [str(store.local_path(f)) for f in files]  # input_file_name() gives %-escaped URIs
    spark.sparkContext.parallelize(sources, len(sources)).foreach(
        lambda path: relabel_file(path, str(rewrite / Path(path).name), shared.value)
    )
    shared.unpersist()
    swap_files(images_dir, files, rewrite)


def discovered_classes(files: list[store.SourceFile], extensions: tuple[str, ...]) -> list[str]:
    """Class names in the source: labels of files with an image extension, usable or not."""
    return sorted({f.label for f in files if f.label is not None and images.has_extension(f.uri, extensions)})


class IngestParams(Params):
    """What the ingest stage reads: ``ingest`` and the raw-data gate."""

    ingest: IngestConfig = IngestConfig()  # type: ignore[assignment]
    gate: GateConfig = GateConfig()


PARAMS = IngestParams  # what the stage reads of params.yaml


def outputs(cfg: IngestParams) -> list[Path]:
    return [Path(cfg.data.root) / STAGE]


def run(cfg: IngestParams, spark: SparkSession) -> Path:
    """Ingest ``cfg.ingest.source`` under ``cfg.data.root``; returns the published folder."""
    root = Path(cfg.data.root)
    params = cfg.section("ingest", "gate.raw", "data")
    with runner.StageRun(
        STAGE, root, spark, root / STAGE, lock_wait=cfg.data.lock_wait_s, gate=gate.validate, params=params
    ) as run:
        run.lineage.reads(cfg.ingest.source)
        with run.phase("read"):
            kind, files = store.list_source(cfg.ingest.source)
            source = describe(cfg.ingest.source, kind, files)
            files_seen, classes = len(files), discovered_classes(files, cfg.ingest.extensions)
        log.info("listed %d files (%d bytes) in %s", files_seen, source["bytes"], source["uri"])
        with run.phase("work"):
            pairs, clusters = work(spark, run, cfg, files)
        with run.phase("gate"):
            stats = suites.image_stats(read_images(spark, run.staging), classes, cfg.ingest.image_size)
            reasons = suites.table_stats(read_quarantine(spark, run.staging), ["reason"], {}).by(0)
            quarantined = sum(reasons.values())
            show(spark, run, cfg, files_seen, stats, reasons)
            audit_started = time.perf_counter()
            audited = audit(spark, run.staging, classes, cfg)
            show_audit(spark, run, pairs, clusters, audited)
            run.extra["audit_gate_s"] = round(time.perf_counter() - audit_started, 3)  # its figures and page
            batches = suites.raw_batches(
                stats,
                classes,
                files_seen,
                quarantined,
                cfg.ingest.image_size,
                cfg.ingest.split.fractions(),
                cfg.gate.raw,
                audited,
            )
            result = run.validate(batches)
        per_class, per_split = stats.by(0), stats.by(1)
        rows = sum(per_class.values())
        counts = {
            "files_seen": files_seen,
            "rows": rows,
            "quarantined": quarantined,
            "quarantine_by_reason": reasons,
            "classes": classes,
            "rows_by_class": per_class,
            "rows_by_split": per_split,
            "rows_by_split_class": stats.nested(1, 0),
            "near_duplicates": {k: int(v) for k, v in audited.near_duplicates.iloc[0].items()},
        }
        run.extra["images_per_s"] = round(files_seen / max(run.seconds["work"], 1e-9), 1)
        doc = run.manifest(params, {"source": source}, counts, result)
        published = run.finish(result, doc)
    log.info("%d files seen: %d images, %d quarantined %s", files_seen, rows, quarantined, reasons)
    return published


def work(
    spark: SparkSession, run: runner.StageRun, cfg: IngestParams, files: list[store.SourceFile]
) -> tuple[list[tuple[str, str, float]], dict[str, str]]:
    """Decode every listed file into the staged tables, move exact copies to quarantine, and put
    near-duplicates in clusters; returns the verified pairs (:func:`find_near_duplicates`) and
    ``{image_id: cluster_id}`` of the images in them."""
    began = time.perf_counter()
    chunks = plan_chunks(spark, files, cfg.spark)
    with progress.reporting(spark, STAGE, "files", len(files), cfg.data.progress_s) as handled:
        decoded = decode(spark, chunks, cfg.ingest, cfg.spark.arrow_max_records_per_batch, handled)
        write_decoded(decoded, run.path("_decoded"))
    decoded_s = time.perf_counter() - began
    images_dir, quarantine_dir = settle_tables(spark, run.staging)
    fates = duplicate_fates(spark, images_dir).collect()
    move_to_quarantine(spark, images_dir, quarantine_dir, fates)
    started = time.perf_counter()
    pairs = find_near_duplicates(spark, images_dir, run.staging / PAIRS, cfg.ingest)
    clusters = near_duplicates.clusters([(a, b) for a, b, _ in pairs])
    relabel_started = time.perf_counter()
    assign_clusters(spark, images_dir, clusters, cfg.ingest)
    run.extra["cluster_relabel_s"] = round(time.perf_counter() - relabel_started, 3)  # its rewrite of files
    run.extra["near_duplicates_s"] = round(time.perf_counter() - started, 3)
    run.extra["decode_s"] = round(decoded_s, 3)  # the pixel pass, audit figures included
    log.info(
        "decoded and wrote %d files in %.1f s; %d duplicate copies moved to quarantine; "
        "%d images in %d near-duplicate clusters (%.1f s)",
        len(files),
        decoded_s,
        len(fates),
        len(clusters),
        len(set(clusters.values())),
        run.extra["near_duplicates_s"],
    )
    return pairs, clusters


def audit(spark: SparkSession, staging: Path, classes: list[str], cfg: IngestParams) -> suites.Audit:
    """What the raw gate checks of the staged tables' audit: near-duplicate clusters and pairs
    against the splits, and the quality flags' share of each class."""
    table = read_images(spark, staging)
    pairs = spark.read.schema(near_duplicates.PAIRS_SCHEMA).parquet(spark_path(staging / PAIRS))
    summary = suites.near_duplicate_summary(
        table.select("image_id", "split", "cluster_id"), pairs.select("image_id_a", "image_id_b")
    )
    names = list(type(cfg.gate.raw.max_flagged_share).model_fields)
    flags = suites.flag_shares(table.select("label", "flags"), classes, names)
    return suites.Audit(summary, flags, cfg.ingest.split.by)


def show(
    spark: SparkSession, run: runner.StageRun, cfg: IngestParams, files_seen: int, stats: suites.Stats, reasons: dict
) -> None:
    """What the raw gate's report page shows besides its checks: the counts and the quarantined
    files, grouped by reason (up to MAX_QUARANTINED of each)."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    rank = F.row_number().over(Window.partitionBy("reason").orderBy("source_uri"))
    table = read_quarantine(spark, run.staging).withColumn("_rank", rank)
    shown = table.where(F.col("_rank") <= MAX_QUARANTINED).orderBy("reason", "source_uri").collect()
    run.exhibits.counts = {"files seen": files_seen, "images per split": stats.by(1), "quarantined": reasons}
    cap = min(cfg.ingest.max_file_bytes, exhibits.MAX_THUMB_BYTES)
    run.exhibits.galleries = exhibits.quarantine_galleries([r.asDict() for r in shown], reasons, cap)


# The figure a person checks a flag by (grayscale is seen, not measured).
FLAG_FIGURES = {
    "blurry": "sharpness",
    "dark": "brightness",
    "light": "brightness",
    "low_contrast": "contrast",
    "low_information": "entropy",
    "grayscale": "contrast",
    "odd_aspect": "aspect_ratio",
}


def show_audit(
    spark: SparkSession,
    run: runner.StageRun,
    pairs: list[tuple[str, str, float]],
    clusters: dict[str, str],
    audited: suites.Audit,
) -> None:
    """The audit's part of the raw gate's page: the largest near-duplicate clusters (``clusters``,
    of the verified ``pairs``) side by side, and the images behind each quality flag (bounded
    samples; the counts say how many in all)."""
    from pyspark.sql import functions as F

    best: dict[str, float] = {}  # each clustered image's best match score
    for a, b, score in pairs:
        best[a], best[b] = max(best.get(a, 0.0), score), max(best.get(b, 0.0), score)
    sizes: dict[str, list[str]] = {}
    for image, cluster in sorted(clusters.items()):
        sizes.setdefault(cluster, []).append(image)
    biggest = sorted(sizes.values(), key=lambda ids: (-len(ids), ids[0]))[: exhibits.MAX_CLUSTERS]
    chosen = [i for ids in biggest for i in ids[: report.MAX_THUMBS]]
    table = read_images(spark, run.staging)
    flagged = flag_samples(table)
    # One pass over the table's pixels for every picture the page shows (each a large value).
    wanted = sorted(set(chosen) | {r["image_id"] for r in flagged})
    shown = table.where(F.col("image_id").isin(wanted)).select("image_id", *PICTURE_COLUMNS).collect()
    pictures = {r["image_id"]: r.asDict() for r in shown}
    members = [pictures[i] | {"score": best[i]} for i in chosen if i in pictures]
    summary = audited.near_duplicates.iloc[0]
    run.exhibits.galleries += exhibits.cluster_galleries(
        members, int(summary["clusters"]), int(summary["images_in_clusters"])
    )
    # Images per flag, from the gate's own table: each class's share of its images, times their number.
    shares = audited.flags
    totals = {f: round((shares[f"{f}_share"] * shares["images"]).sum()) for f in FLAG_FIGURES}
    totals = {f: n for f, n in totals.items() if n}
    run.exhibits.counts["near-duplicates"] = (
        f"{summary['clusters']} clusters holding {summary['images_in_clusters']} images ({summary['pairs']} pairs); "
        f"{summary['clusters_spanning_splits']} clusters across splits, {summary['cross_split_pairs']} pairs"
    )
    run.exhibits.counts["quality flags"] = totals or "none"
    run.exhibits.galleries += exhibits.flag_galleries([r | pictures[r["image_id"]] for r in flagged], totals)


PICTURE_COLUMNS = ("source_uri", "label", "split", "cluster_id", "pixels", "height", "width")  # a gallery's


def flag_samples(table: DataFrame) -> list[dict]:
    """Up to MAX_FLAGGED images per quality flag (``image_id``, the flag and the figure behind it;
    not their pixels: the ranking moves only these small columns)."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    figures = sorted(set(FLAG_FIGURES.values()))
    flagged = table.select("image_id", "source_uri", *figures, F.explode("flags").alias("flag"))
    rank = F.row_number().over(Window.partitionBy("flag").orderBy("source_uri"))
    sample = flagged.withColumn("_rank", rank).where(F.col("_rank") <= exhibits.MAX_FLAGGED)
    names = F.create_map(*[F.lit(x) for pair in FLAG_FIGURES.items() for x in pair])
    figure = F.coalesce(*[F.when(F.col("flag") == f, F.col(c).cast("double")) for f, c in FLAG_FIGURES.items()])
    rows = sample.withColumns({"figure": figure, "figure_name": F.element_at(names, F.col("flag"))})
    return [r.asDict() for r in rows.select("image_id", "flag", "figure", "figure_name").collect()]


def _precheck(cfg: IngestParams) -> None:
    store.describe_source(cfg.ingest.source)


def main(argv: list[str] | None = None) -> int:
    return run_stage(
        STAGE,
        argv,
        run,
        params=PARAMS,
        outputs=outputs,
        description=__doc__,
        precheck=_precheck,
        preload=launch.GATE,
        worker_preload=worker_preload,
    )


def worker_preload(_cfg: IngestParams) -> tuple[str, ...]:
    """What the decoding tasks import, once per executor in the worker daemon (which also keeps
    the memory a worker frees), instead of in every forked worker."""
    return ("spark_jobs.imaging.partitions", "spark_jobs.imaging.near_duplicates")


if __name__ == "__main__":
    exit_process(main())
