"""Score: every new image of an inbox, exactly once per model version, gated, appended as a run.

- Input: ``score.inbox`` (a folder, with or without class sub-folders, or ``s3://bucket/prefix``),
  listed, fetched and decoded by the ingest code with the ingest settings recorded in the model's
  card (the preprocessing the model was trained with). Files that cannot be used go to
  ``<data.root>/score_quarantine/`` with a reason, as in ingest.
- Model: ``score.model`` (a model folder) or the champion of ``score.task`` under
  ``evaluate.champion``: ``mllib`` (classical features recomputed and transformed as at training),
  ``cnn`` or ``autoencoder`` (anomaly score and flag at the card's threshold).
- One Python pass per file (``mapInArrow``, tasks packed by bytes): fetch, skip if its content hash
  was already scored, decode, run the model (loaded once per Python worker, forward passes of
  ``score.batch_size``, ``score.threads`` torch threads) and turn its output into the prediction
  columns, all in the task that fetched it: decoded pixels never leave the worker. For an mllib
  model the pass yields the classical descriptors, which the saved transform and classifier turn
  into predictions in the JVM.
- Output: ``<data.root>/predictions/run_date=<UTC date>/run_id=<run>/`` Parquet rows with
  ``image_id, source_uri, predicted_label, probability, top_k, anomaly_score, is_anomaly,
  tile_count, video_id, frame_index, frame_time, model_version, model_kind, decided_by, job_version,
  scored_at``, plus the run's ``_manifest.json``.
- Video files (``score.video``): every ``every_nth`` frame scored as an image, keyed by
  ``(video_id, frame_index)``; a video that does not decode to its end is quarantined whole.
- ``score.quantize: int8``: the cnn's static INT8 copy (version ``<version>-int8``).
- ``score.cascade``: the light mllib model on every image, the heavy cnn only on those it is
  unsure of; ``decided_by`` says which model decided each row.

**Exactly once.** The ``image_id`` of every image the same model version has scored is broadcast
to the tasks (32 bytes each), which skip those files before decoding them: a rerun of the same
inbox adds nothing. Copies of one image in a batch give one prediction (the others are quarantined as
duplicates of the smallest URI). A run writes under ``<data.root>/.staging/`` and becomes visible
by one directory rename after the predictions gate passes: a run killed before that leaves nothing
visible (and the next run scores the batch), a run killed after it is complete. One run at a time
per ``data.root`` (the stage runner's lock on the predictions table: a second run waits, then
scores only what the first left); staging folders of killed runs are removed by the next run.

**Gate** (``gate.predictions``): labels in the model's class set, probabilities in [0, 1], top-k
probabilities summing to at most 1 + ε, one row per ``image_id``, at most ``max_low_confidence``
of the rows below ``score.low_confidence``, and optionally (``max_class_drift``) each class's share
of the predictions within a tolerance of its share of the training data. A failing batch is not
published: it is kept under ``<data.root>/rejected/`` and the job exits with code 3.

**Stream** (``score.mode: stream``): micro-batches of the same scan, model and suite every
``score.stream.trigger_s`` over the files the lister finds new, into
``<data.root>/stream/predictions/hour=<UTC hour>/part-<batch>.parquet``, exactly once across
restarts by a write-ahead checkpoint (:mod:`spark_jobs.core.stream`); volume checks over a rolling
window, rejected micro-batches kept aside and retried later, ``status.json`` per micro-batch, a new
champion picked up at the next one. SIGTERM stops it after the micro-batch under way. While it
holds the inbox, a batch run ends at once ("stream active", exit 0).

    python -m spark_jobs.score [--set score.inbox=s3://bucket/incoming] [--set score.model=models/cnn]
    python -m spark_jobs.score --set score.mode=stream
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from spark_jobs.core import manifest, runner, store, stream
from spark_jobs.core.config import TILE_KINDS, ClassicalConfig, Config, ConfigError, IngestConfig
from spark_jobs.core.jobs import exit_process, run_stage
from spark_jobs.core.tables import QUARANTINE_COLUMNS
from spark_jobs.imaging import images as images_lib
from spark_jobs.imaging import partitions
from spark_jobs.ml import extractors, inference, mllib, scoring
from spark_jobs.ml.cards import ModelCard, read_card
from spark_jobs.ml.mllib import mllib_classify
from spark_jobs.quality import gate as gate_lib
from spark_jobs.quality import suites
from spark_jobs.quality.gate import GateFailed

if TYPE_CHECKING:
    from pyspark import Broadcast
    from pyspark.sql import DataFrame, SparkSession

    from spark_jobs.quality.gate import Batch, GateResult

log = logging.getLogger(__name__)

STAGE = "score"
PREDICTIONS = "predictions"
QUARANTINE = "score_quarantine"
# One row per image scored by one model version (classifier or anomaly columns, the others null).
PREDICTION_SCHEMA = (
    "image_id string, source_uri string, predicted_label string, probability float, "
    "top_k array<struct<label:string,probability:float>>, anomaly_score double, is_anomaly boolean, "
    "tile_count int, video_id string, frame_index int, frame_time double, model_version string, "
    "model_kind string, decided_by string, job_version string, scored_at timestamp"
)
PREDICTION_COLUMNS = tuple(f.split()[0] for f in PREDICTION_SCHEMA.split(", "))
QUARANTINE_SCHEMA = pa.schema([(c, pa.int64() if c == "size_bytes" else pa.string()) for c in QUARANTINE_COLUMNS])


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
    # mergeSchema: runs written before a column was added (tile_count) read it as null.
    return (
        spark.read.option("basePath", str(folder))
        .option("mergeSchema", "true")
        .parquet(*[str(p) for p in committed_runs(folder)])
    )


def read_stream_predictions(spark: SparkSession, root: Path) -> DataFrame | None:
    """Every prediction a stream published (with its ``hour`` and ``batch_id``), or None before
    its first; schemas merged, as :func:`read_predictions`."""
    table = stream.stream_dir(root) / stream.PREDICTIONS
    if not any(table.glob("hour=*/part-*.parquet")):
        return None
    return spark.read.option("mergeSchema", "true").parquet(str(table))


def _published_rows(folder: Path, columns: list[str], where: Any = None) -> pa.Table | None:
    """Columns of every published run of a predictions or quarantine table, read on the driver
    (pyarrow: a few short columns, no Spark job); None before the first run."""
    import pyarrow.dataset as ds

    if not committed_runs(folder):
        return None
    dataset = ds.dataset(str(folder), format="parquet", partitioning="hive")  # skips _manifest.json
    return dataset.to_table(columns=columns, filter=where)


def scored_ids(folder: Path, version: str) -> list[str]:
    """``image_id`` of every image the model ``version`` has already scored (the published
    predictions' ``image_id`` and ``model_version`` columns only)."""
    import pyarrow.dataset as ds

    table = _published_rows(folder, ["image_id"], ds.field("model_version") == version)
    return [] if table is None else table.column("image_id").to_pylist()


def recorded_quarantine(folder: Path) -> set[tuple[str, str]]:
    """``(source_uri, image_id)`` of every file an earlier run quarantined (with content)."""
    table = _published_rows(folder, ["source_uri", "image_id"])
    if table is None:
        return set()
    return {
        (u, i) for u, i in zip(*(table.column(c).to_pylist() for c in ("source_uri", "image_id")), strict=True) if i
    }


def classical_extractor(folder: Path) -> Any:
    """The descriptor extractor an ``mllib`` model's features were made with (its ``extractor.json``)."""

    spec = json.loads((folder / extractors.EXTRACTOR).read_text())
    if spec.get("kind") != "classical":
        raise ConfigError(
            f"{folder}: scoring an mllib model trained on {spec.get('kind')} features is not supported; "
            "score the cnn model, or train mllib on features.kind=classical"
        )
    cfg = ClassicalConfig.model_validate({k: spec[k] for k in ClassicalConfig.model_fields if k in spec})
    return extractors.Classical(cfg, int(spec["image_size"]))


def scan(
    spark: SparkSession,
    files: list[store.SourceFile],
    cfg: Config,
    ingest_cfg: IngestConfig,
    done: scoring.IdSet,
    head: scoring.Head,
    kept: Sequence[Broadcast] = (),
) -> DataFrame:
    """One Python pass over the listed files: fetched, checked against ``done`` (and the id sets
    of ``kept``, broadcasts a stream keeps across its micro-batches), decoded with the model's
    ingest settings (video files: their sampled frames) and run through ``head`` in the same task
    (no decoded pixels leave the worker). Files are cut into tasks by bytes
    (:func:`partitions.plan_chunks`). Copies of one content are not marked here (:func:`copies`)."""
    from pyspark.sql.pandas.types import from_arrow_schema

    ids, listing = partitions.chunk_tasks(spark, partitions.plan_chunks(spark, files, cfg.spark))
    known = [spark.sparkContext.broadcast(done), *kept]
    rows = cfg.spark.arrow_max_records_per_batch
    video_cfg = cfg.score.video

    def run_tasks(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        seen = scoring.IdUnion([k.value for k in known])
        for batch in batches:
            for part in partitions.chunk_slices(batch.column("id").to_pylist(), listing, rows):
                yield scoring.scan_batch(part, ingest_cfg, seen, head, video_cfg)

    schema = from_arrow_schema(pa.schema([*scoring.SCAN_FIELDS, *head.outputs()]))
    return ids.mapInArrow(run_tasks, schema)


def copies(written: Path, usable: DataFrame) -> tuple[int, list[dict[str, Any]]]:
    """The number of rows ``written`` (a Parquet folder of predictions), and quarantine rows
    (:data:`QUARANTINE_COLUMNS`) for its files whose content another file of the batch also has,
    but the one with the smallest URI, which stays scored. Only the two id columns are read, on the
    driver (as :func:`scored_ids` reads them); the repeated contents' rows, rare, come from
    ``usable`` (the scanned rows the predictions were made of)."""
    import pyarrow.dataset as ds
    from pyspark.sql import functions as F

    parts = sorted(str(p) for p in written.glob("part-*"))
    if not parts:
        return 0, []
    ids = ds.dataset(parts, format="parquet").to_table(columns=["image_id", "source_uri"])
    first = first_copies(ids)
    if not first:
        return ids.num_rows, []
    rows = usable.where(F.col("image_id").isin(list(first))).select(*QUARANTINE_COLUMNS).toArrow().to_pylist()
    return ids.num_rows, copy_records(rows, first)


def copy_records(rows: list[dict[str, Any]], first: dict[str, str]) -> list[dict[str, Any]]:
    """Quarantine rows (:data:`QUARANTINE_COLUMNS`) of the ``rows`` whose content's kept copy
    (``first``: :func:`first_copies`) is another file."""
    return [
        dict.fromkeys(QUARANTINE_COLUMNS)
        | {c: r[c] for c in QUARANTINE_COLUMNS if c in r}
        | {"reason": images_lib.DUPLICATE, "detail": f"same content as {first[r['image_id']]}"}
        for r in rows
        if r["image_id"] in first and r["source_uri"] != first[r["image_id"]]
    ]


def first_copies(ids: pa.Table) -> dict[str, str]:
    """``{image_id: smallest source_uri}`` of the ids more than one row of ``ids`` (``image_id``,
    ``source_uri``) has: the one copy of each content that stays scored."""
    import pyarrow.compute as pc

    per_id = ids.group_by("image_id").aggregate([("source_uri", "count"), ("source_uri", "min")])
    repeated = per_id.filter(pc.greater(per_id["source_uri_count"], 1))
    return dict(zip(repeated["image_id"].to_pylist(), repeated["source_uri_min"].to_pylist(), strict=True))


def mllib_predictions(usable: DataFrame, folder: Path, card: ModelCard, k: int) -> DataFrame:
    """:data:`scoring.PREDICTED_ROW` rows of an mllib model: scanned ``raw``
    descriptors through its saved scaler + PCA, then its classifier."""
    from pyspark.ml import PipelineModel
    from pyspark.sql.pandas.types import from_arrow_schema

    table = mllib.apply_transform(PipelineModel.load(str(folder / mllib.TRANSFORM)), usable)
    classes = tuple(card.classes)
    keys = tuple(scoring.KEY_FIELDS.names)
    classified = mllib_classify(folder, table, list(classes), keys)
    schema = from_arrow_schema(scoring.PREDICTED_ROW)
    rows = classified.select(*keys, "probabilities")
    return rows.mapInArrow(lambda it: scoring.top_k_batches(it, classes, k), schema)


def tile_head(folder: Path, card: ModelCard, cfg: Config) -> scoring.TileHead:
    """A ``tiles_*`` model with the extractor its tile features were made with (its
    ``extractor.json``) and the cut its card records."""
    spec = json.loads((folder / extractors.EXTRACTOR).read_text())
    if spec.get("kind") != "cnn" or card.tiles is None:
        raise ConfigError(
            f"{folder}: scoring a {card.kind} model needs tile features of a cnn backbone (features.kind=cnn); "
            f"it was trained on {spec.get('kind')} features. Evaluate reports it; train it on cnn tiles to score"
        )
    model = inference.TorchModel.from_card(folder, card)
    predictor = inference.Predictor(model, cfg.score.batch_size, cfg.score.threads)
    extractor = extractors.Cnn.from_spec(spec)
    return scoring.TileHead(
        predictor, extractor, card.tiles, card.ingest_settings, tuple(card.classes), cfg.score.top_k
    )


def torch_head(folder: Path, card: ModelCard, cfg: Config) -> scoring.TorchHead:
    """The cnn or autoencoder of ``folder`` (its INT8 copy with ``score.quantize: int8``), run in
    forward passes of ``score.batch_size`` with ``score.threads`` torch threads per task."""
    model = inference.TorchModel.from_card(folder, card, cfg.score.quantize)
    predictor = inference.Predictor(model, cfg.score.batch_size, cfg.score.threads)
    return scoring.TorchHead(predictor, tuple(card.classes or ()), cfg.score.top_k, card.threshold)


def predicted(rows: DataFrame, decided_by: str) -> DataFrame:
    """The prediction columns of scanned (or classified) rows, and which model decided them."""
    from pyspark.sql import functions as F

    return rows.select(*scoring.PREDICTED_ROW.names, F.lit(decided_by).alias("decided_by"))


def cascade_predictions(
    spark: SparkSession,
    usable: DataFrame,
    files: list[store.SourceFile],
    light_folder: Path,
    light: ModelCard,
    folder: Path,
    card: ModelCard,
    cfg: Config,
    run: runner.StageRun,
) -> DataFrame:
    """The light model (mllib) on every scanned image; the heavy one (cnn) only on the images it
    predicts with probability below ``score.cascade.confidence``, fetched and decoded again in a
    second pass over just those files (a fraction of the batch: no table of decoded pixels is kept
    for them; a file that changed in between is left for the next run, which finds it unscored).
    ``decided_by`` says which model decided each row."""
    from pyspark.sql import functions as F

    confidence = F.lit(cfg.score.cascade.confidence)
    work = run.path("_light")
    mllib_predictions(usable, light_folder, light, cfg.score.top_k).write.parquet(work)  # computed once
    light_rows = spark.read.parquet(work)
    sure = predicted(light_rows.where(F.col("probability") >= confidence), "mllib")
    unsure = set(light_rows.where(F.col("probability") < confidence).select("source_uri").toArrow()[0].to_pylist())
    heavy_files = [f for f in files if f.uri in unsure]
    ingest_cfg = card.ingest_settings
    head = torch_head(folder, card, cfg)
    # The first pass already left copies out: these files are unique.
    rescanned = scan(spark, heavy_files, cfg, ingest_cfg, scoring.IdSet([]), head)
    return sure.unionByName(predicted(rescanned.where(F.col("reason").isNull()), _decider(card, cfg)))


def _decider(card: ModelCard, cfg: Config) -> str:
    return card.kind + ("-int8" if cfg.score.quantize == "int8" else "")


def cascade_parts(cfg: Config, card: ModelCard) -> tuple[Path, ModelCard]:
    """The light model of the cascade, checked against the heavy one."""
    light_folder = Path(cfg.score.cascade.light)
    light = read_card(light_folder)
    if light.kind != "mllib" or card.kind != "cnn":
        raise ConfigError(
            f"score.cascade needs an mllib light model and a cnn heavy one; got {light.kind} "
            f"({light_folder}) and {card.kind}"
        )
    if light.classes != card.classes:
        raise ConfigError(f"score.cascade: {light_folder} and the heavy model were trained on different classes")
    return light_folder, light


def write_quarantine(rows: list[dict[str, Any]], folder: Path) -> Path:
    """The quarantine rows of a run as one Parquet file (``QUARANTINE_COLUMNS``)."""
    import pyarrow.parquet as pq

    folder.mkdir(parents=True)
    table = pa.Table.from_pylist(rows, schema=QUARANTINE_SCHEMA)
    pq.write_table(table, folder / "part-00000-quarantine.parquet", compression="zstd")
    return folder


@dataclass(frozen=True)
class Scorer:
    """The model a run scores with, and the version its predictions are recorded under: an INT8
    copy and a cascade (both versions and the cut) each count as a model of their own, so the
    exactly-once skipping is per version."""

    folder: Path
    card: ModelCard
    version: str
    kind: str  # model_kind of the rows: the card's kind, or "cascade"
    light_folder: Path | None = None
    light: ModelCard | None = None

    def head(self, cfg: Config) -> scoring.Head:
        """What the scan computes from each decoded image: the model's outputs, or descriptors
        for an MLlib model (the cascade's light one first)."""
        if self.light_folder is not None:
            return scoring.Descriptors(classical_extractor(self.light_folder))
        if self.card.kind == "mllib":
            return scoring.Descriptors(classical_extractor(self.folder))
        if self.card.kind in TILE_KINDS:
            return tile_head(self.folder, self.card, cfg)
        return torch_head(self.folder, self.card, cfg)

    def labels(self) -> list[str]:
        return list(scoring.ANOMALY_LABELS) if self.card.task == "anomaly" else list(self.card.classes)


def scorer(cfg: Config) -> Scorer:
    folder = model_folder(cfg)
    card = read_card(folder)
    if cfg.score.quantize == "int8" and card.kind != "cnn":
        raise ConfigError(f"score.quantize=int8 applies to cnn models; {folder} holds a {card.kind} model")
    version = f"{card.version}-int8" if cfg.score.quantize == "int8" else card.version
    if not cfg.score.cascade.enabled:
        return Scorer(folder, card, version, card.kind)
    light_folder, light = cascade_parts(cfg, card)
    version = f"cascade-{light.version}+{version}@{cfg.score.cascade.confidence}"
    return Scorer(folder, card, version, "cascade", light_folder, light)


def decide(
    spark: SparkSession,
    usable: DataFrame,
    files: list[store.SourceFile],
    model: Scorer,
    cfg: Config,
    run: runner.StageRun,
) -> DataFrame:
    """The prediction rows of the scan's usable rows, by the model (or the cascade)."""
    if model.light_folder is not None and model.light is not None:
        return cascade_predictions(
            spark, usable, files, model.light_folder, model.light, model.folder, model.card, cfg, run
        )
    if model.card.kind == "mllib":
        return predicted(mllib_predictions(usable, model.folder, model.card, cfg.score.top_k), "mllib")
    return predicted(usable, _decider(model.card, cfg))


def write_predictions(
    spark: SparkSession, decided: DataFrame, usable: DataFrame, model: Scorer, started: datetime, run: runner.StageRun
) -> list[dict[str, Any]]:
    """Stamp the decided rows with the model and code versions, write them into the run's staged
    ``predictions`` (one job, overlapping the scan); returns the copies of one content left out."""
    from pyspark.sql import functions as F

    written = run.staging / "_written"
    stamped(decided, model, started).write.parquet(str(written))
    rows, duplicates = copies(written, usable)
    if duplicates:
        copy_uris = [r["source_uri"] for r in duplicates]
        kept = spark.read.schema(PREDICTION_SCHEMA).parquet(str(written))
        kept.where(~F.col("source_uri").isin(copy_uris)).write.parquet(run.path(PREDICTIONS))
    elif rows:
        written.rename(run.path(PREDICTIONS))
    shutil.rmtree(written, ignore_errors=True)  # when it was not renamed
    return duplicates


def gate(
    spark: SparkSession, model: Scorer, cfg: Config, run: runner.StageRun
) -> tuple[GateResult | None, dict[str, int]]:
    """``(the predictions gate's result, rows per predicted label)`` of the staged predictions
    (``(None, {})``: nothing new was scored)."""
    if not Path(run.path(PREDICTIONS)).exists():
        return None, {}
    predictions = spark.read.schema(PREDICTION_SCHEMA).parquet(run.path(PREDICTIONS))
    low, task, labels = cfg.score.low_confidence, model.card.task, model.labels()
    stats = suites.prediction_stats(predictions, labels, task, low, cfg.gate.predictions.probability_tolerance)
    trained = model.card.class_counts
    return run.validate(suites.prediction_batches(stats, labels, trained, task, low, cfg.gate.predictions)), stats.by(0)


def scored_files(folder: Path) -> int:
    """How many files the staged predictions ``folder`` holds rows of (a video has one per frame)."""
    import pyarrow.compute as pc
    import pyarrow.dataset as ds

    if not folder.exists():
        return 0
    uris = ds.dataset(str(folder), format="parquet").to_table(columns=["source_uri"]).column("source_uri")
    return int(pc.count_distinct(uris).as_py())


def tally(
    files: int, per_label: dict[str, int], scored: int, bad: list[dict[str, Any]], new_bad: list[dict[str, Any]]
) -> dict[str, Any]:
    """The run's counts: every file seen is scored (``scored`` files, ``per_label`` rows: an image
    or a video frame each), already scored or unusable (``bad``: its quarantine rows)."""
    reasons: dict[str, int] = {}
    for r in new_bad:
        reasons[r["reason"]] = reasons.get(r["reason"], 0) + 1
    rows = sum(per_label.values())
    unusable = len({r["source_uri"] for r in bad})
    return {
        "files_seen": files,
        "scored": rows,
        "files_scored": scored,
        "already_scored": files - scored - unusable,
        "unusable": unusable,
        "quarantined": sum(reasons.values()),
        "quarantine_by_reason": reasons,
        "predicted_by_label": per_label,
    }


def run(cfg: Config, spark: SparkSession) -> Path | None:
    """Score the inbox's new images; returns the published run folder (None when nothing was new)."""
    from pyspark import StorageLevel
    from pyspark.sql import functions as F

    root = Path(cfg.data.root)
    with runner.StageRun(STAGE, root, spark, root / PREDICTIONS, name=STAGE, lock_wait=cfg.data.lock_wait_s) as run:
        holder = runner.lock_holder(stream.inbox_lock(root, cfg.score.inbox))
        if holder is not None:  # not a failure: the stream scores these files
            log.info("stream active: %s is scored by a stream (%s); this run scores nothing", cfg.score.inbox, holder)
            return None
        with run.phase("read"):
            model = scorer(cfg)
            kind, files = store.list_source(cfg.score.inbox)
            done = already_scored(cfg, model.version)
            recorded = recorded_quarantine(root / QUARANTINE)
            started = datetime.fromisoformat(run.timings()["started_at"])
        for table in (predictions_dir(cfg), root / QUARANTINE):
            table.mkdir(parents=True, exist_ok=True)  # DVC outputs exist even before anything is in them
        with run.phase("work"):
            # One pass over the files, kept in memory (no pixels: ids, reasons and the model's
            # outputs, a few hundred bytes a file). Its one job also writes the predictions, so the
            # write overlaps the decoding and the model; copies of one content are found after it,
            # from the kept pass, and (rarely there) filtered out of the written rows.
            head = model.head(cfg)
            scanned = scan(spark, files, cfg, model.card.ingest_settings, done, head)
            scanned = scanned.persist(StorageLevel.MEMORY_AND_DISK)
            try:
                usable = scanned.where(F.col("reason").isNull())
                decided = decide(spark, usable, files, model, cfg, run)
                duplicates = write_predictions(spark, decided, usable, model, started, run)
                # Unusable files of this batch: few, short rows, handled on the driver.
                unusable = scanned.where(F.col("reason").isNotNull()).select(*QUARANTINE_COLUMNS)
                bad = unusable.toArrow().to_pylist() + duplicates
            finally:
                scanned.unpersist()
            new_bad = [r for r in bad if (r["source_uri"], r["image_id"]) not in recorded]
            if new_bad:
                write_quarantine(new_bad, Path(run.path(QUARANTINE)))
        with run.phase("gate"):
            result, per_label = gate(spark, model, cfg, run)
        counts = tally(len(files), per_label, scored_files(Path(run.path(PREDICTIONS))), bad, new_bad)
        run.extra["images_per_s"] = round(len(files) / max(run.seconds.get("work", 0.0), 1e-9), 1)
        inputs = {
            "inbox": partitions.describe(cfg.score.inbox, kind, files),
            "model": {"folder": str(model.folder), "version": model.version, "kind": model.kind},
        }
        doc = run.manifest(cfg.section("score", "gate.predictions", "data"), inputs, counts, result)
        # Predictions first: a kill between the two renames loses no quarantine record (the next
        # run, finding the bad files unrecorded, reports them).
        parts = [(PREDICTIONS, predictions_dir(cfg)), (QUARANTINE, root / QUARANTINE)]
        published, _ = run.finish_append(result, doc, parts, started.strftime("%Y-%m-%d"))
    log.info(
        "%d files seen: %d scored by %s, %d already scored, %d unusable (%d newly quarantined %s) -> %s",
        len(files),
        counts["scored"],
        model.version,
        counts["already_scored"],
        counts["unusable"],
        counts["quarantined"],
        counts["quarantine_by_reason"],
        published or "nothing new to publish",
    )
    return published


# ---- stream mode -------------------------------------------------------------------------------


STREAM_STAGE = "score-stream"  # its gate reports and rejected micro-batches
REBUILD_IDS = 50_000  # ids scored since the lookup was read, before it is read again (and pruned)


def batch_lock(root: Path) -> Path:
    """The lock a batch run of this stage holds (its :class:`runner.StageRun` on ``predictions``)."""
    return root / runner.LOCKS / f"{STAGE}.lock"


def stream_scored_ids(root: Path, version: str, now: float, hours: int) -> list[str]:
    """``image_id`` of the images ``version`` scored in the stream table's last ``hours`` hours
    (only those partitions are read: the lookup does not grow with the stream's age)."""
    import pyarrow.dataset as ds

    table = stream.stream_dir(root) / stream.PREDICTIONS
    folders = [table / h for h in sorted(stream.recent_hours(now, hours)) if (table / h).is_dir()]
    files = [str(f) for folder in folders for f in sorted(folder.glob("part-*.parquet"))]
    if not files:
        return []
    got = ds.dataset(files, format="parquet").to_table(
        columns=["image_id"], filter=ds.field("model_version") == version
    )
    return got.column("image_id").to_pylist()


def already_scored(cfg: Config, version: str) -> scoring.IdSet:
    """What ``version`` has scored: the batch table's ids, and the stream table's of its last
    ``score.stream.dedupe_hours`` (the lookup of a batch run and of a stream alike, so switching
    between the two scores nothing twice)."""
    batch = scored_ids(predictions_dir(cfg), version)
    streamed = stream_scored_ids(Path(cfg.data.root), version, time.time(), cfg.score.stream.dedupe_hours)
    return scoring.IdSet([*batch, *streamed])


class Lookup:
    """The already-scored lookup of a stream, for one model version: the ids of the batch table and
    of the stream table's last ``score.stream.dedupe_hours``, broadcast once, plus the ids scored
    since (broadcast with each micro-batch); read again every :data:`REBUILD_IDS` new ids."""

    def __init__(self, spark: SparkSession, cfg: Config, version: str) -> None:
        self.spark, self.cfg, self.version = spark, cfg, version
        self.recent: set[str] = set()
        self.base: Any = None
        self.read()

    def read(self) -> None:
        ids = already_scored(self.cfg, self.version)
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


@dataclass
class Folder:
    """A micro-batch's staging folder, where a cascade keeps its light model's rows."""

    staging: Path

    def path(self, name: str) -> str:
        return str(self.staging / name)


def stamped(decided: DataFrame, model: Scorer, scored_at: datetime, batch: int | None = None) -> DataFrame:
    """Prediction rows (:data:`PREDICTION_COLUMNS`) stamped with the model and code versions (and
    a stream's micro-batch)."""
    from pyspark.sql import functions as F

    rows = decided.withColumns(
        {
            "model_version": F.lit(model.version),
            "model_kind": F.lit(model.kind),
            "job_version": F.lit(manifest.job_version_label()),
            "scored_at": F.lit(scored_at).cast("timestamp"),
        }
    ).select(*PREDICTION_COLUMNS)
    return rows if batch is None else rows.withColumn("batch_id", F.lit(batch).cast("long"))


def _write_table(table: pa.Table, path: Path) -> None:
    import pyarrow.parquet as pq

    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path, compression="zstd")


def _stream_checks(
    table: pa.Table, labelled: tuple[list[str], list[bool]], model: Scorer, cfg: Config, window: stream.RollingWindow
) -> list[Batch]:
    """The predictions suite on a micro-batch: its row rules on its rows; the low-confidence share
    and class drift over the rolling window with these rows (``labelled``: their predicted labels
    and low-confidence flags) in it."""
    low, task, labels = cfg.score.low_confidence, model.card.task, model.labels()
    stats = suites.prediction_stats_arrow(table, labels, task, low, cfg.gate.predictions.probability_tolerance)
    volume = suites.Volume(*window.with_batch(*labelled))
    return suites.prediction_batches(
        stats,
        labels,
        model.card.class_counts,
        task,
        low,
        cfg.gate.predictions,
        volume,
        cfg.score.stream.min_window_rows,
    )


def micro_batch(
    spark: SparkSession,
    cfg: Config,
    model: Scorer,
    head: scoring.Head,
    planned: stream.Planned,
    lookup: Lookup,
    window: stream.RollingWindow,
) -> tuple[str, dict[str, Any], dict[str, float]]:
    """Score one planned micro-batch and publish it (or reject it): ``(outcome, counts, seconds
    per phase)``. Its rows go to ``hour=<planned hour>/part-<batch>.parquet`` of the stream's tables
    by one rename each (quarantine first, predictions last), so a batch run again after a kill
    replaces the same files and the predictions' rename is its point of no return."""
    import pyarrow.compute as pc
    from pyspark import StorageLevel
    from pyspark.sql import functions as F

    root = Path(cfg.data.root)
    folder = stream.stream_dir(root)
    target = folder / stream.PREDICTIONS / planned.hour / stream.part_name(planned.batch)
    quarantine_target = folder / stream.QUARANTINE / planned.hour / stream.part_name(planned.batch)
    seconds: dict[str, float] = {}
    if target.exists():  # published before a kill cut the commit short
        import pyarrow.parquet as pq

        return "published", {"files_seen": len(planned.files), "scored": pq.read_metadata(target).num_rows}, seconds
    staging = folder / runner.STAGING / f"batch-{planned.batch}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    files = planned.source_files()
    started = time.perf_counter()
    try:
        scanned = scan(spark, files, cfg, model.card.ingest_settings, scoring.IdSet(lookup.recent), head, [lookup.base])
        scanned = scanned.persist(StorageLevel.MEMORY_AND_DISK)
        try:
            usable = scanned.where(F.col("reason").isNull())
            decided = decide(spark, usable, files, model, cfg, Folder(staging))  # type: ignore[arg-type]
            table = stamped(decided, model, datetime.now(UTC), planned.batch).toArrow()
            bad = scanned.where(F.col("reason").isNotNull()).select(*QUARANTINE_COLUMNS).toArrow().to_pylist()
        finally:
            scanned.unpersist()
        seconds["score"] = time.perf_counter() - started
        keys = table.select(["image_id", "source_uri"])
        copied = copy_records(keys.to_pylist(), first_copies(keys))
        if copied:
            bad += copied
            dropped = pa.array(sorted({r["source_uri"] for r in copied}))
            table = table.filter(pc.invert(pc.is_in(table["source_uri"], dropped)))
        counts = {"files_seen": len(files), "scored": table.num_rows, "quarantined": len(bad)}
        started = time.perf_counter()
        low = cfg.score.low_confidence
        labelled = (
            table.column("predicted_label").to_pylist(),
            [p is not None and p < low for p in table.column("probability").to_pylist()],
        )
        checks = _stream_checks(table, labelled, model, cfg, window) if table.num_rows else []
        result = gate_lib.validate(STREAM_STAGE, checks, None) if checks else None
        seconds["gate"] = time.perf_counter() - started
        started = time.perf_counter()
        if result is not None and not result.success:
            rejected = root / "rejected" / f"{STREAM_STAGE}-{planned.batch}-{runner.new_run_id()}"
            _write_table(table, staging / PREDICTIONS / stream.part_name(planned.batch))
            manifest.write_json(staging / "files.json", planned)
            rejected.parent.mkdir(parents=True, exist_ok=True)
            report = gate_lib.validate(STREAM_STAGE, checks, staging / "gate")  # Data Docs: only now
            staging.rename(rejected)
            log.error("micro-batch %d rejected, kept in %s: %s", planned.batch, rejected, report.summary())
            return "rejected", counts | {"rejected": str(rejected)}, seconds
        if bad:
            _write_table(pa.Table.from_pylist(bad, schema=QUARANTINE_SCHEMA), staging / "q.parquet")
            quarantine_target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(staging / "q.parquet", quarantine_target)
        if table.num_rows:
            _write_table(table, staging / "p.parquet")
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(staging / "p.parquet", target)
            lookup.add(table.column("image_id").to_pylist())
            window.add(*labelled)
        seconds["publish"] = time.perf_counter() - started
        return "published", counts, seconds
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def stream_run(cfg: Config, spark: SparkSession, on_batch: Any = None) -> int:
    """Score the inbox in micro-batches until SIGTERM (or, with ``score.stream.available_now``,
    until it is empty of new files); returns the number of micro-batches run. ``on_batch(batch)``
    is called after each (tests change the champion there)."""
    root = Path(cfg.data.root)
    folder = stream.stream_dir(root)
    s = cfg.score.stream
    inbox = cfg.score.inbox
    holder = f"stream on {inbox}"
    held = [runner.take_lock(stream.stream_lock(root), 0.0, f"a stream already writes to {folder}", holder)]
    try:
        held.append(runner.take_lock(stream.inbox_lock(root, inbox), 0.0, f"a stream already scores {inbox}", holder))
    except runner.OutputBusy:
        os.close(held[0])
        raise
    stop = threading.Event()
    previous = signal.signal(signal.SIGTERM, lambda *_: stop.set()) if _main_thread() else None
    progress = stream.Progress(inbox, s.latency_batches)
    lookup: Lookup | None = None
    model: Scorer | None = None
    state = "failed"
    try:
        # A batch run scoring this inbox now finishes first; a later one sees the stream and stops.
        os.close(runner.take_lock(batch_lock(root), cfg.data.lock_wait_s, "a batch score run holds the inbox", holder))
        checkpoint = stream.Checkpoint(folder / stream.CHECKPOINT)
        window = stream.RollingWindow(s.window_rows)
        progress.write(folder, None, "starting")
        ran = 0
        while not stop.is_set():
            tick = time.monotonic()
            current = scorer(cfg)
            if model is None or current.version != model.version:
                if model is not None:
                    log.info(
                        "the champion changed: %s -> %s, from the next micro-batch on", model.version, current.version
                    )
                    lookup.close()  # type: ignore[union-attr]
                model, head = current, current.head(cfg)
                lookup = Lookup(spark, cfg, model.version)
            planned = checkpoint.pending
            if planned is None:
                _, listing = store.list_source(inbox, allow_empty=True)
                new = checkpoint.new_files(listing, time.time(), s.retry_rejected_s)
                progress.backlog = max(len(new) - s.max_files_per_trigger, 0)
                if not new:
                    if s.available_now:
                        break
                    progress.write(folder, model.version, "running")
                    stop.wait(max(s.trigger_s - (time.monotonic() - tick), 0.0))
                    continue
                planned = checkpoint.plan(new[: s.max_files_per_trigger], time.time(), model.version)
                if planned.batch % stream.COMPACT_EVERY == 0 and planned.batch:
                    checkpoint.compact(listing, s.retry_rejected_s, time.time())
            else:
                log.info("running micro-batch %d again: a stop cut it short", planned.batch)
            outcome, counts, seconds = micro_batch(spark, cfg, model, head, planned, lookup, window)  # type: ignore[arg-type]
            finished = time.time()
            checkpoint.commit(planned, outcome, counts, finished)
            ran += 1
            _count(progress, planned, outcome, counts, seconds, finished, model.version)
            progress.write(folder, model.version, "running")
            if on_batch is not None:
                on_batch(planned.batch)
            if outcome == "rejected" and s.stop_on_reject:
                raise GateFailed(
                    STREAM_STAGE,
                    Path(counts["rejected"]) / "gate" / "summary.txt",
                    Path(counts["rejected"]),
                    "micro-batch rejected",
                )
            stop.wait(max(s.trigger_s - (time.monotonic() - tick), 0.0))
        state = "stopped"
        log.info("stream stopped after %d micro-batches this run", ran)
        return ran
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
        if lookup is not None:
            lookup.close()
        progress.write(folder, model.version if model else None, state)
        for fd in held:
            os.close(fd)


def _count(
    progress: stream.Progress,
    planned: stream.Planned,
    outcome: str,
    counts: dict[str, Any],
    seconds: dict[str, float],
    finished: float,
    version: str,
) -> None:
    c = progress.counts
    c["batches"] += 1
    c["files_seen"] += counts["files_seen"]
    if outcome == "rejected":
        c["rejected_batches"] += 1
        c["rejected_files"] += counts["files_seen"]
        c["failures"] += 1
        latencies: list[float] = []
    else:
        c["scored"] += counts["scored"]
        c["quarantined"] += counts.get("quarantined", 0)
        latencies = [finished - f[3] for f in planned.files if f[3]]
    rounded = {k: round(v, 3) for k, v in seconds.items()}
    progress.batch({"batch": planned.batch, "outcome": outcome, **counts}, latencies, rounded)
    log.info(
        "micro-batch %d %s: %d files, %d scored, %d quarantined by %s in %s",
        planned.batch,
        outcome,
        counts["files_seen"],
        counts.get("scored", 0),
        counts.get("quarantined", 0),
        version,
        rounded,
    )


def _main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


def job(cfg: Config, spark: SparkSession) -> Path | int | None:
    """``score.mode``: one batch run, or the stream."""
    return stream_run(cfg, spark) if cfg.score.mode == "stream" else run(cfg, spark)


def _precheck(cfg: Config) -> None:
    read_card(model_folder(cfg))
    store.describe_source(cfg.score.inbox, "score.inbox")


def main(argv: list[str] | None = None) -> int:
    return run_stage(
        STAGE, argv, job, description=__doc__, precheck=_precheck, preload=runner.GATE, worker_preload=worker_preload
    )


def worker_preload(cfg: Config) -> tuple[str, ...]:
    """What the scanning tasks import: the model's framework (torch) first when it is a torch one,
    the scan's code and the module of the task planner its function refers to."""
    kind = read_card(model_folder(cfg)).kind
    torch = runner.TORCH if kind != "mllib" or cfg.score.cascade.enabled else ()
    return (*torch, "spark_jobs.ml.scoring", "spark_jobs.imaging.partitions")


if __name__ == "__main__":
    exit_process(main())
