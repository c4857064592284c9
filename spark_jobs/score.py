"""Score: every new image of an inbox, exactly once per model version, gated, appended as a run.

- Input: ``score.inbox`` (a folder, with or without class sub-folders, or ``s3://bucket/prefix``),
  listed, fetched and decoded by the ingest code with the ingest settings recorded in the model's
  card (the preprocessing the model was trained with). Files that cannot be used go to
  ``<data.root>/score_quarantine/`` with a reason, as in ingest.
- Model: ``score.model`` (a model folder) or the champion of ``score.task`` under
  ``evaluate.champion``: ``mllib`` (classical features recomputed and transformed as at training),
  ``cnn`` (Arrow-batched ``mapInArrow``, the weights loaded once per Python worker) or
  ``autoencoder`` (anomaly score and flag at the card's threshold).
- Output: ``<data.root>/predictions/run_date=<UTC date>/run_id=<run>/`` Parquet rows with
  ``image_id, source_uri, predicted_label, probability, top_k, anomaly_score, is_anomaly,
  model_version, model_kind, decided_by, job_version, scored_at``, plus the run's ``_manifest.json``.
- ``score.quantize: int8``: the cnn's static INT8 copy (version ``<version>-int8``).
- ``score.cascade``: the light mllib model on every image, the heavy cnn only on those it is
  unsure of; ``decided_by`` says which model decided each row.

**Exactly once.** Images whose ``image_id`` (content hash) the same model version has already
scored are skipped, so a rerun of the same inbox adds nothing; copies of one image in the inbox are
scored once (the others are quarantined as duplicates). A run writes under
``<data.root>/.staging/`` and becomes visible by one directory rename after the predictions gate
passes: a run killed before that leaves nothing visible (and the next run scores the batch), a run
killed after it is complete. Staging folders of killed runs are removed by the next run.

**Gate** (``gate.predictions``): labels in the model's class set, probabilities in [0, 1], top-k
probabilities summing to at most 1 + ε, one row per ``image_id``, at most ``max_low_confidence``
of the rows below ``score.low_confidence``, and optionally (``max_class_drift``) each class's share
of the predictions within a tolerance of its share of the training data. A failing batch is not
published: it is kept under ``<data.root>/rejected/`` and the job exits with code 3.

    python -m spark_jobs.score [--set score.inbox=s3://bucket/incoming] [--set score.model=models/cnn]
"""

from __future__ import annotations

import json
import logging
import shutil
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from spark_jobs import features, gate, inference, ingest, manifest, session, store, suites
from spark_jobs import images as images_lib
from spark_jobs.config import ClassicalConfig, Config, ConfigError, IngestConfig
from spark_jobs.jobs import run_stage
from spark_jobs.tables import QUARANTINE_COLUMNS
from spark_jobs.train import mllib_classifier, mllib_input, read_card

if TYPE_CHECKING:
    from pyspark.sql import Column, DataFrame, SparkSession

log = logging.getLogger(__name__)

STAGE = "score"
PREDICTIONS = "predictions"
QUARANTINE = "score_quarantine"
ANOMALY_LABELS = ("normal", "anomaly")
_KEYS = ("image_id", "source_uri", "label")
PREDICTION_COLUMNS = (
    "image_id",
    "source_uri",
    "predicted_label",
    "probability",
    "top_k",
    "anomaly_score",
    "is_anomaly",
    "model_version",
    "model_kind",
    "decided_by",
    "job_version",
    "scored_at",
)


def model_folder(cfg: Config) -> Path:
    """The model to score with: ``score.model``, or the promoted champion of ``score.task``."""
    if cfg.score.model:
        return Path(cfg.score.model)
    return Path(cfg.evaluate.champion) / cfg.score.task


def predictions_dir(cfg: Config) -> Path:
    return Path(cfg.data.root) / PREDICTIONS


def committed_runs(folder: Path) -> list[Path]:
    """The published run folders (``run_date=*/run_id=*``) of a predictions or quarantine table."""
    return sorted(p for p in folder.glob("run_date=*/run_id=*") if p.is_dir()) if folder.exists() else []


def read_predictions(spark: SparkSession, folder: Path) -> DataFrame | None:
    """Every published prediction (with ``run_date`` and ``run_id``), or None before the first run."""
    if not committed_runs(folder):
        return None
    return spark.read.option("basePath", str(folder)).parquet(*[str(p) for p in committed_runs(folder)])


def already_scored(spark: SparkSession, folder: Path, version: str) -> DataFrame | None:
    """``image_id`` of every image the model ``version`` has already scored."""
    from pyspark.sql import functions as F

    table = read_predictions(spark, folder)
    if table is None:
        return None
    return table.where(F.col("model_version") == version).select("image_id").distinct()


def top_k(probabilities: Column, classes: list[str], k: int) -> Column:
    """``array<struct<label, probability>>`` of the ``k`` most probable classes, most probable first."""
    from pyspark.sql import functions as F

    names = F.array(*[F.lit(c) for c in classes])
    pairs = F.transform(
        probabilities,
        lambda p, i: F.struct(F.element_at(names, i + 1).alias("label"), p.cast("float").alias("probability")),
    )
    ordered = F.array_sort(
        pairs,
        lambda a, b: (
            F.when(a["probability"] > b["probability"], -1).when(a["probability"] < b["probability"], 1).otherwise(0)
        ),
    )
    return F.slice(ordered, 1, min(k, len(classes)))


def labelled(classified: DataFrame, classes: list[str], k: int) -> DataFrame:
    """Prediction columns from ``image_id, source_uri, prediction (index), probabilities``."""
    from pyspark.sql import functions as F

    names = F.array(*[F.lit(c) for c in classes])
    return classified.select(
        "image_id",
        "source_uri",
        F.element_at(names, F.col("prediction") + 1).alias("predicted_label"),
        F.col("probability").cast("float").alias("probability"),
        top_k(F.col("probabilities"), classes, k).alias("top_k"),
        F.lit(None).cast("double").alias("anomaly_score"),
        F.lit(None).cast("boolean").alias("is_anomaly"),
    )


def classical_extractor(folder: Path) -> Any:
    """The descriptor extractor an ``mllib`` model's features were made with (its ``extractor.json``)."""
    from spark_jobs import extractors

    spec = json.loads((folder / features.EXTRACTOR).read_text())
    if spec.get("kind") != "classical":
        raise ConfigError(
            f"{folder}: scoring an mllib model trained on {spec.get('kind')} features is not supported; "
            "score the cnn model, or train mllib on features.kind=classical"
        )
    cfg = ClassicalConfig.model_validate({k: spec[k] for k in ClassicalConfig.model_fields if k in spec})
    return extractors.Classical(cfg, int(spec["image_size"]))


def mllib_predictions(images: DataFrame, folder: Path, card: dict[str, Any], k: int) -> DataFrame:
    """The classical descriptors, the saved scaler + PCA, then the MLlib classifier."""
    from pyspark.ml import PipelineModel
    from pyspark.ml.functions import vector_to_array
    from pyspark.sql import functions as F

    extractor = classical_extractor(folder)
    columns = [*features._KEYS, "orig_width", "orig_height", "height", "width", "pixels"]
    raw = images.withColumn("split", F.lit(None).cast("string")).select(*columns)
    raw = raw.mapInArrow(lambda it: features.whole_image_batches(it, extractor), features.RAW_SCHEMA)
    table = features.apply_transform(PipelineModel.load(str(folder / features.TRANSFORM)), raw)
    scored = mllib_classifier(folder).transform(mllib_input(table, card["classes"]))
    probabilities = vector_to_array("probability", "float32")
    classified = scored.select(
        "image_id",
        "source_uri",
        F.col("prediction").cast("int").alias("prediction"),
        F.array_max(probabilities).alias("probability"),
        probabilities.alias("probabilities"),
    )
    return labelled(classified, card["classes"], k)


def torch_predictions(images: DataFrame, folder: Path, card: dict[str, Any], cfg: Config) -> DataFrame:
    """The CNN's classes, or the autoencoder's score and flag, in Arrow batches of ``score.batch_size``."""
    from pyspark.sql import functions as F

    model = inference.TorchModel.from_card(folder, card, cfg.score.quantize)
    size, threads = cfg.score.batch_size, cfg.score.threads
    rows = images.select(*_KEYS, "height", "width", "pixels")
    if card["task"] == "anomaly":
        scored = rows.mapInArrow(
            lambda it: inference.score_batches(it, model, size, threads, _KEYS), inference.scored_schema(_KEYS)
        )
        flagged = F.col("score") > F.lit(float(card["threshold"]))
        return scored.select(
            "image_id",
            "source_uri",
            F.when(flagged, F.lit(ANOMALY_LABELS[1])).otherwise(F.lit(ANOMALY_LABELS[0])).alias("predicted_label"),
            F.lit(None).cast("float").alias("probability"),
            F.lit(None).cast("array<struct<label:string,probability:float>>").alias("top_k"),
            F.col("score").alias("anomaly_score"),
            flagged.alias("is_anomaly"),
        )
    classified = rows.mapInArrow(
        lambda it: inference.classify_batches(it, model, size, threads, _KEYS), inference.classified_schema(_KEYS)
    )
    return labelled(classified, card["classes"], cfg.score.top_k)


def cascade_predictions(
    todo: DataFrame,
    light_folder: Path,
    light: dict[str, Any],
    folder: Path,
    card: dict[str, Any],
    cfg: Config,
    work: str,
) -> DataFrame:
    """The light model (mllib) on every image; the heavy one (cnn) only on the images the light
    one predicts with probability below ``score.cascade.confidence``. ``decided_by`` says which."""
    from pyspark.sql import functions as F

    spark = todo.sparkSession
    confidence = F.lit(cfg.score.cascade.confidence)
    mllib_predictions(todo, light_folder, light, cfg.score.top_k).write.parquet(work)  # computed once
    light_rows = spark.read.parquet(work)
    sure = light_rows.where(F.col("probability") >= confidence).withColumn("decided_by", F.lit("mllib"))
    unsure = todo.join(light_rows.where(F.col("probability") < confidence).select("image_id"), "image_id", "left_semi")
    heavy = torch_predictions(unsure, folder, card, cfg).withColumn("decided_by", F.lit(_decider(card, cfg)))
    return sure.unionByName(heavy)


def _decider(card: dict[str, Any], cfg: Config) -> str:
    return card["kind"] + ("-int8" if cfg.score.quantize == "int8" else "")


def cascade_parts(cfg: Config, card: dict[str, Any]) -> tuple[Path, dict[str, Any]]:
    """The light model of the cascade, checked against the heavy one."""
    light_folder = Path(cfg.score.cascade.light)
    light = read_card(light_folder)
    if light["kind"] != "mllib" or card["kind"] != "cnn":
        raise ConfigError(
            f"score.cascade needs an mllib light model and a cnn heavy one; got {light['kind']} "
            f"({light_folder}) and {card['kind']}"
        )
    if light["classes"] != card["classes"]:
        raise ConfigError(f"score.cascade: {light_folder} and the heavy model were trained on different classes")
    return light_folder, light


def split_duplicates(images: DataFrame) -> tuple[DataFrame, DataFrame]:
    """``(one row per image_id (the smallest source_uri), quarantine rows for the other copies)``.
    Copies are found from ids and URIs alone (no shuffle of pixels); they are few, so removing
    them is a broadcast anti-join."""
    from pyspark.sql import functions as F

    keys = images.select("image_id", "source_uri", "label", "size_bytes")
    groups = keys.groupBy("image_id").agg(F.count("*").alias("_n"), F.min("source_uri").alias("_keep"))
    copies = (
        keys.join(groups.where(F.col("_n") > 1), "image_id")
        .where(F.col("source_uri") != F.col("_keep"))
        .select(
            "source_uri",
            F.lit(images_lib.DUPLICATE).alias("reason"),
            F.concat(F.lit("same content as "), F.col("_keep")).alias("detail"),
            "image_id",
            "label",
            "size_bytes",
        )
    )
    unique = images.join(F.broadcast(copies.select("source_uri")), "source_uri", "left_anti")
    return unique, copies


def new_quarantine(spark: SparkSession, staged: DataFrame, folder: Path) -> DataFrame:
    """The staged quarantine rows not already recorded by an earlier run (same file, same content):
    a bad file left in the inbox is reported once, not at every scheduled run."""
    if not committed_runs(folder):
        return staged
    earlier = spark.read.option("basePath", str(folder)).parquet(*[str(p) for p in committed_runs(folder)])
    seen = earlier.where(earlier.image_id.isNotNull()).select("source_uri", "image_id").distinct()
    return staged.join(seen, ["source_uri", "image_id"], "left_anti")


def _clean_stale_staging(root: Path) -> None:
    """Staging folders of score runs that were killed: never visible, never needed again."""
    for stale in (root / ".staging").glob(f"{STAGE}-*"):
        log.info("removing the staging folder of an unfinished run: %s", stale)
        shutil.rmtree(stale, ignore_errors=True)


def publish(staging: Path, table: Path, run_date: str, run_id: str) -> Path:
    """Make a staged run visible: one rename into ``table/run_date=.../run_id=...``."""
    target = table / f"run_date={run_date}" / f"run_id={run_id}"
    target.parent.mkdir(parents=True, exist_ok=True)
    staging.rename(target)
    return target


def run(cfg: Config, spark: SparkSession) -> Path | None:
    """Score the inbox's new images; returns the published run folder (None when nothing was new)."""
    from pyspark.sql import functions as F

    started, t0 = datetime.now(UTC), time.perf_counter()
    root = Path(cfg.data.root)
    folder = model_folder(cfg)
    card = read_card(folder)
    if cfg.score.quantize == "int8" and card["kind"] != "cnn":
        raise ConfigError(f"score.quantize=int8 applies to cnn models; {folder} holds a {card['kind']} model")
    ingest_cfg = IngestConfig.model_validate(card["ingest_settings"])
    kind, files = store.list_source(cfg.score.inbox)
    _clean_stale_staging(root)
    for table in (predictions_dir(cfg), root / QUARANTINE):
        table.mkdir(parents=True, exist_ok=True)  # DVC outputs exist even before anything is in them
    out = gate.StagedOutput(root, STAGE)
    run_date, run_id = started.strftime("%Y-%m-%d"), out.run_id
    # Skipping is per model version: an INT8 copy, and a cascade (both versions and the cut),
    # each count as a model of their own.
    version, model_kind, job_version = card["version"], card["kind"], manifest.job_version_label()
    if cfg.score.quantize == "int8":
        version = f"{version}-int8"
    if cfg.score.cascade.enabled:
        light_folder, light = cascade_parts(cfg, card)
        version = f"cascade-{light['version']}+{version}@{cfg.score.cascade.confidence}"
        model_kind = "cascade"
    try:
        chunks = ingest.plan_chunks(spark, files, cfg.spark)
        decoded = ingest.decode(spark, chunks, ingest_cfg, cfg.spark.arrow_max_records_per_batch, labelled=False)
        ingest.write_decoded(decoded, out.path("_decoded"))
        images_dir, quarantine_dir = ingest.settle_tables(spark, out.staging)
        unique, copies = split_duplicates(spark.read.parquet(str(images_dir)))
        done = already_scored(spark, predictions_dir(cfg), version)
        todo = unique if done is None else unique.join(done, "image_id", "left_anti")
        if cfg.score.cascade.enabled:
            predicted = cascade_predictions(todo, light_folder, light, folder, card, cfg, out.path("_light"))
        elif card["kind"] == "mllib":
            predicted = mllib_predictions(todo, folder, card, cfg.score.top_k).withColumn("decided_by", F.lit("mllib"))
        else:
            predicted = torch_predictions(todo, folder, card, cfg).withColumn("decided_by", F.lit(_decider(card, cfg)))
        stamped = predicted.withColumns(
            {
                "model_version": F.lit(version),
                "model_kind": F.lit(model_kind),
                "job_version": F.lit(job_version),
                "scored_at": F.lit(started).cast("timestamp"),
            }
        ).select(*PREDICTION_COLUMNS)
        stamped.write.parquet(out.path(PREDICTIONS))
        copies.write.mode("append").parquet(str(quarantine_dir))
        fresh = new_quarantine(spark, spark.read.parquet(str(quarantine_dir)), root / QUARANTINE)
        fresh.select(*QUARANTINE_COLUMNS).write.parquet(out.path(QUARANTINE))
        scored_at = time.perf_counter()
    except BaseException:
        out.discard()
        raise

    staged = spark.read.parquet(out.path(PREDICTIONS))
    quarantine = spark.read.parquet(out.path(QUARANTINE))
    seen_bad = spark.read.parquet(str(quarantine_dir)).count()
    reasons = suites.value_counts(quarantine, "reason")
    labels = list(ANOMALY_LABELS) if card["task"] == "anomaly" else list(card["classes"])
    profile = suites.prediction_profile(staged, cfg.score.low_confidence).cache()
    try:
        per_label = suites.value_counts(profile, "predicted_label")
        rows = sum(per_label.values())
        batches = suites.prediction_batches(
            spark, profile, labels, per_label, card.get("class_counts"), card["task"], cfg.gate.predictions
        )
        result = gate.validate(STAGE, batches, out.report_dir) if rows else gate.GateResult(STAGE, True)
    finally:
        profile.unpersist()
    skipped = len(files) - rows - seen_bad
    counts = {
        "files_seen": len(files),
        "scored": rows,
        "already_scored": skipped,
        "unusable": seen_bad,
        "quarantined": sum(reasons.values()),
        "quarantine_by_reason": reasons,
        "predicted_by_label": per_label,
    }
    doc = manifest.build(
        STAGE,
        cfg.section("score", "gate.predictions", "data"),
        inputs={
            "inbox": ingest.describe(cfg.score.inbox, kind, files),
            "model": {"folder": str(folder), "version": version, "kind": model_kind},
        },
        counts=counts,
        gate=result.for_manifest(),
        timings={
            "started_at": started.isoformat(timespec="seconds"),
            "finished_at": manifest.now(),
            "duration_s": round(time.perf_counter() - t0, 3),
            "decode_and_score_s": round(scored_at - t0, 3),
            "images_per_s": round(len(files) / max(scored_at - t0, 1e-9), 1),
        },
        spark=session.spark_metrics(spark),
    )
    if not result.success:
        out.finish(result, doc)  # raises GateFailed, keeps the batch under rejected/
    manifest.write(out.staging / PREDICTIONS, doc)
    # Predictions first: a kill between the two renames loses no quarantine record (the next run,
    # finding the bad files unrecorded, reports them).
    published = publish(out.staging / PREDICTIONS, predictions_dir(cfg), run_date, run_id) if rows else None
    if reasons:
        publish(Path(out.path(QUARANTINE)), root / QUARANTINE, run_date, run_id)
    out.discard()
    log.info(
        "%d files seen: %d scored by %s, %d already scored, %d unusable (%d newly quarantined %s) -> %s",
        len(files),
        rows,
        version,
        skipped,
        seen_bad,
        sum(reasons.values()),
        reasons,
        published or "nothing new to publish",
    )
    return published


def _precheck(cfg: Config) -> None:
    read_card(model_folder(cfg))
    store.describe_source(cfg.score.inbox, "score.inbox")


def main(argv: list[str] | None = None) -> int:
    return run_stage(STAGE, argv, run, description=__doc__, precheck=_precheck)


if __name__ == "__main__":
    sys.exit(main())
