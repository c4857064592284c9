"""A scoring pass in Spark, the same for a batch run and a stream's micro-batch: the scan of the
listed files (:func:`scan`: fetched, checked against what was scored, decoded and run through the
model's head in the tasks that fetched them), the prediction rows the model (or the cascade)
decides from it (:func:`decide`), stamped with the model and code versions (:func:`stamped`)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from spark_jobs.core import manifest, store
from spark_jobs.core.ingest_config import IngestConfig
from spark_jobs.core.tables import QUARANTINE_COLUMNS
from spark_jobs.imaging import partitions
from spark_jobs.ml import mllib
from spark_jobs.ml.cards import ModelCard
from spark_jobs.scoring import heads, model, scan, tables
from spark_jobs.scoring.config import ScoreParams
from spark_jobs.scoring.model import Scorer

if TYPE_CHECKING:
    from pyspark import Accumulator, Broadcast
    from pyspark.sql import DataFrame, SparkSession


def scan_files(
    spark: SparkSession,
    files: list[store.SourceFile],
    cfg: ScoreParams,
    ingest_cfg: IngestConfig,
    done: scan.IdSet,
    head: heads.Head,
    kept: Sequence[Broadcast] = (),
    handled: Accumulator | None = None,
) -> DataFrame:
    """One Python pass over the listed files: fetched, checked against ``done`` (and the id sets
    of ``kept``, broadcasts a stream keeps across its micro-batches), decoded with the model's
    ingest settings (video files: their sampled frames) and run through ``head`` in the same task
    (no decoded pixels leave the worker). Files are cut into tasks by bytes
    (:func:`partitions.plan_chunks`); each slice's files are added to ``handled`` (a progress count).
    Copies of one content are not marked here."""
    from pyspark.sql.pandas.types import from_arrow_schema

    ids, listing = partitions.chunk_tasks(spark, partitions.plan_chunks(spark, files, cfg.spark))
    known = [spark.sparkContext.broadcast(done), *kept]
    rows = cfg.spark.arrow_max_records_per_batch
    video_cfg = cfg.score.video

    def run_tasks(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        seen = scan.IdUnion([k.value for k in known])
        for batch in batches:
            for part in partitions.chunk_slices(batch.column("id").to_pylist(), listing, rows):
                yield scan.scan_batch(part, ingest_cfg, seen, head, video_cfg)
                if handled is not None:
                    handled.add(len(part))

    schema = from_arrow_schema(pa.schema([*scan.SCAN_FIELDS, *head.outputs()]))
    return ids.mapInArrow(run_tasks, schema)


def mllib_predictions(usable: DataFrame, folder: Path, card: ModelCard, k: int) -> DataFrame:
    """:data:`heads.PREDICTED_ROW` rows of an mllib model: scanned ``raw`` descriptors through its
    saved scaler + PCA, then its classifier."""
    from pyspark.ml import PipelineModel
    from pyspark.sql.pandas.types import from_arrow_schema

    table = mllib.apply_transform(PipelineModel.load(store.spark_path(folder / mllib.TRANSFORM)), usable)
    classes = tuple(card.classes)
    keys = tuple(heads.KEY_FIELDS.names)
    classified = mllib.mllib_classify(folder, table, list(classes), keys)
    rows = classified.select(*keys, "probabilities")
    return rows.mapInArrow(lambda it: heads.top_k_batches(it, classes, k), from_arrow_schema(heads.PREDICTED_ROW))


def predicted(rows: DataFrame, decided_by: str) -> DataFrame:
    """The prediction columns of scanned (or classified) rows, and which model decided them."""
    from pyspark.sql import functions as F

    return rows.select(*heads.PREDICTED_ROW.names, F.lit(decided_by).alias("decided_by"))


def cascade_predictions(
    spark: SparkSession, usable: DataFrame, files: list[store.SourceFile], scorer: Scorer, cfg: ScoreParams, work: Path
) -> DataFrame:
    """The light model (mllib) on every scanned image; the heavy one (cnn) only on the images it
    predicts with probability below ``score.cascade.confidence``, fetched and decoded again in a
    second pass over just those files (a fraction of the batch: no table of decoded pixels is kept
    for them; a file that changed in between is left for the next run, which finds it unscored).
    The light rows are computed once, into ``work``. ``decided_by`` says which model decided each row."""
    from pyspark.sql import functions as F

    if scorer.light_folder is None or scorer.light is None:
        raise ValueError(f"{scorer.version} is not a cascade")
    confidence = F.lit(cfg.score.cascade.confidence)
    mllib_predictions(usable, scorer.light_folder, scorer.light, cfg.score.top_k).write.parquet(store.spark_path(work))
    light_rows = spark.read.parquet(store.spark_path(work))
    sure = predicted(light_rows.where(F.col("probability") >= confidence), "mllib")
    unsure = set(light_rows.where(F.col("probability") < confidence).select("source_uri").toArrow()[0].to_pylist())
    heavy_files = [f for f in files if f.uri in unsure]
    head = model.torch_head(scorer.folder, scorer.card, cfg)
    # The first pass already left copies out: these files are unique.
    rescanned = scan_files(spark, heavy_files, cfg, scorer.card.ingest_settings, scan.IdSet([]), head)
    return sure.unionByName(predicted(rescanned.where(F.col("reason").isNull()), scorer.decider))


def decide(
    spark: SparkSession, usable: DataFrame, files: list[store.SourceFile], scorer: Scorer, cfg: ScoreParams, work: Path
) -> DataFrame:
    """The prediction rows of the scan's usable rows, by the model (or the cascade, whose light
    rows go to the scratch folder ``work``)."""
    if scorer.light_folder is not None:
        return cascade_predictions(spark, usable, files, scorer, cfg, work)
    if scorer.card.kind == "mllib":
        return predicted(mllib_predictions(usable, scorer.folder, scorer.card, cfg.score.top_k), "mllib")
    return predicted(usable, scorer.decider)


def shadow_predictions(usable: DataFrame, shadow: Scorer, cfg: ScoreParams) -> DataFrame:
    """The shadow model's prediction rows (:data:`heads.PREDICTED_ROW` and ``decided_by``) from the
    scan's :data:`heads.SHADOW` columns: its own outputs, or an mllib shadow's descriptors through
    its saved transform and classifier, as when it scores alone."""
    from pyspark.sql import functions as F

    names = ["raw"] if shadow.card.kind == "mllib" else list(heads.PREDICTED_FIELDS.names)
    shadowed = (F.col(heads.SHADOW + n).alias(n) for n in names)
    own = usable.select(*heads.KEY_FIELDS.names, "label", *shadowed)  # as the scan gives a model alone
    if shadow.card.kind == "mllib":
        return predicted(mllib_predictions(own, shadow.folder, shadow.card, cfg.score.top_k), "mllib")
    return predicted(own, shadow.decider)


def stamped(decided: DataFrame, scorer: Scorer, scored_at: datetime, batch: int | None = None) -> DataFrame:
    """Prediction rows (:data:`tables.PREDICTION_COLUMNS`) stamped with the model and code
    versions (and a stream's micro-batch)."""
    from pyspark.sql import functions as F

    rows = decided.withColumns(
        {
            "model_version": F.lit(scorer.version),
            "model_kind": F.lit(scorer.kind),
            "job_version": F.lit(manifest.job_version_label()),
            "scored_at": F.lit(scored_at).cast("timestamp"),
        }
    ).select(*tables.PREDICTION_COLUMNS)
    return rows if batch is None else rows.withColumn("batch_id", F.lit(batch).cast("long"))


def unscored_rows(scanned: DataFrame) -> tuple[list[dict[str, Any]], list[str]]:
    """The quarantine rows of the scan's unusable files, and the URIs of the files it found
    already scored (short rows: handled on the driver)."""
    from pyspark.sql import functions as F

    rows = scanned.where(F.col("reason").isNotNull()).select(*QUARANTINE_COLUMNS).toArrow().to_pylist()
    return [r for r in rows if r["reason"] != scan.ALREADY_SCORED], sorted(
        {r["source_uri"] for r in rows if r["reason"] == scan.ALREADY_SCORED}
    )


def copies(written: Path, usable: DataFrame) -> tuple[int, list[dict[str, Any]]]:
    """The number of rows ``written`` (a Parquet folder of predictions), and quarantine rows
    (:data:`QUARANTINE_COLUMNS`) for its files whose content another file of the batch also has,
    but the one with the smallest URI, which stays scored. Only the two id columns are read, on the
    driver; the repeated contents' rows, rare, come from ``usable`` (the scanned rows the
    predictions were made of)."""
    import pyarrow.dataset as ds
    from pyspark.sql import functions as F

    parts = sorted(str(p) for p in written.glob("part-*"))
    if not parts:
        return 0, []
    ids = ds.dataset(parts, format="parquet").to_table(columns=["image_id", "source_uri"])
    first = tables.first_copies(ids)
    if not first:
        return ids.num_rows, []
    rows = usable.where(F.col("image_id").isin(list(first))).select(*QUARANTINE_COLUMNS).toArrow().to_pylist()
    return ids.num_rows, tables.copy_records(rows, first)


HEATMAPS = "heatmaps"  # beside the run's report: <image_id>.png of each scored image (score.heatmaps)


def write_heatmaps(usable: DataFrame, folder: Path) -> int:
    """Write each scanned row's ``heatmap`` (:data:`heads.HEATMAP`) as ``folder/<image_id>.png``,
    from the tasks that drew them (the pictures never gather on the driver); returns how many
    images have one. A content seen twice is one picture."""
    from pyspark.sql import functions as F

    folder.mkdir(parents=True, exist_ok=True)
    target = str(folder.absolute())
    drawn = usable.where(F.col(heads.HEATMAP.name).isNotNull()).select("image_id", heads.HEATMAP.name)
    drawn.foreachPartition(lambda rows: _write_pictures(rows, target))
    return len(list(folder.glob("*.png")))


def _write_pictures(rows: Iterator[Any], folder: str) -> None:
    from spark_jobs.core.atomic import write_file

    for row in rows:
        write_file(Path(folder) / f"{row['image_id']}.png", bytes(row[heads.HEATMAP.name]))


def write_shadow(
    usable: DataFrame, shadow: Scorer, cfg: ScoreParams, started: datetime, copies: list[str], folder: Path
) -> None:
    """The shadow model's rows of the scan into ``folder``, stamped with its version, the
    ``copies`` (URIs of files whose content another file of the batch has) left out as they are
    from the predictions."""
    from pyspark.sql import functions as F

    rows = stamped(shadow_predictions(usable, shadow, cfg), shadow, started)
    if copies:
        rows = rows.where(~F.col("source_uri").isin(copies))
    rows.write.parquet(store.spark_path(folder))


def write_predictions(
    spark: SparkSession, decided: DataFrame, usable: DataFrame, scorer: Scorer, started: datetime, folder: Path
) -> list[dict[str, Any]]:
    """Stamp the decided rows with the model and code versions and write them into ``folder``
    (one job, overlapping the scan); returns the copies of one content left out."""
    import shutil

    from pyspark.sql import functions as F

    written = folder.with_name(f"_{folder.name}_written")
    stamped(decided, scorer, started).write.parquet(store.spark_path(written))
    rows, duplicates = copies(written, usable)
    if duplicates:
        copy_uris = [r["source_uri"] for r in duplicates]
        kept = spark.read.schema(tables.PREDICTION_SCHEMA).parquet(store.spark_path(written))
        kept.where(~F.col("source_uri").isin(copy_uris)).write.parquet(store.spark_path(folder))
    elif rows:
        written.rename(folder)
    shutil.rmtree(written, ignore_errors=True)  # when it was not renamed
    return duplicates
