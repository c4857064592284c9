"""Score: every new image of an inbox, exactly once per model version, gated, appended as a run.

- Input: ``score.inbox`` (a folder, with or without class sub-folders, or ``s3://bucket/prefix``),
  listed, fetched and decoded by the ingest code with the ingest settings recorded in the model's
  card (the preprocessing the model was trained with). Files that cannot be used go to
  ``<data.root>/score_quarantine/`` with a reason, as in ingest.
- Model: ``score.model`` (a model folder) or the champion of ``score.task`` under
  ``evaluate.champion``: ``mllib`` (classical features recomputed and transformed as at training),
  ``cnn``, ``tiles_*`` or ``autoencoder`` (anomaly score and flag at the card's threshold);
  ``score.quantize: int8`` scores the cnn's static INT8 copy, ``score.cascade`` the light mllib
  model on every image and the heavy cnn only on those it is unsure of (``decided_by``).
- One Python pass per file (``mapInArrow``, tasks packed by bytes): fetch, skip if its content hash
  was already scored, decode, run the model (loaded once per Python worker) and turn its output
  into the prediction columns, all in the task that fetched it (:mod:`spark_jobs.scoring`).
  Video files (``score.video``): every ``every_nth`` frame, keyed by ``(video_id, frame_index)``.
- Output: ``<data.root>/predictions/run_date=<UTC date>/run_id=<run>/`` Parquet rows
  (:data:`spark_jobs.scoring.tables.PREDICTION_SCHEMA`) and the run's ``_manifest.json``.

**Exactly once.** The ids the model version has scored (batch and stream tables) are broadcast to
the tasks, which skip those files before decoding them; copies of one image in a batch give one
prediction. A run becomes visible by one rename after the predictions gate passes; one run at a
time per ``data.root`` (the runner's lock). A failing batch is kept under ``rejected/`` (exit 3).

**Stream** (``score.mode: stream``, :mod:`spark_jobs.scoring.stream`): micro-batches of the same
pass every ``score.stream.trigger_s``, each a run of the stage runner with its own manifest, into
``<data.root>/stream/``. While a stream holds the inbox, a batch run ends at once ("stream active").

    python -m spark_jobs.score [--set score.inbox=s3://bucket/incoming] [--set score.model=models/cnn]
    python -m spark_jobs.score --set score.mode=stream
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from spark_jobs.core import launch, locks, manifest, progress, runner, store
from spark_jobs.core.jobs import exit_process, run_stage
from spark_jobs.core.manifest import ShadowRecord
from spark_jobs.core.store import spark_path
from spark_jobs.imaging import partitions
from spark_jobs.ml import exhibits
from spark_jobs.ml.cards import read_card
from spark_jobs.quality import gate
from spark_jobs.quality.report import MAX_THUMBS, Gallery, Thumb, short_name
from spark_jobs.scoring import checks, drifting, heads, lookup, predict, shadowing, stream, tables
from spark_jobs.scoring.config import ScoreParams
from spark_jobs.scoring.model import Scorer, check_model, model_folder, scorer, shadow_source
from spark_jobs.scoring.scan import IdSet

if TYPE_CHECKING:
    import pyarrow as pa
    from pyspark.sql import DataFrame, SparkSession

    from spark_jobs.core.verdict import GateResult

log = logging.getLogger(__name__)

STAGE = "score"
PARAMS = ScoreParams  # what the stage reads of params.yaml


@dataclass(frozen=True)
class Inputs:
    """What a batch run read: the model, the inbox's files, what the model already scored and
    which bad files earlier runs reported."""

    scorer: Scorer
    kind: str
    files: list[store.SourceFile]
    done: IdSet
    recorded: set[tuple[str, str]]


def extract(cfg: ScoreParams) -> Inputs:
    model = scorer(cfg)
    kind, files = store.list_source(cfg.score.inbox)
    done = lookup.already_scored(cfg.data.root, model.version, cfg.score.stream.dedupe_hours)
    return Inputs(model, kind, files, done, lookup.recorded_quarantine(tables.quarantine_dir(cfg.data.root)))


def transform(
    spark: SparkSession, cfg: ScoreParams, got: Inputs, started: datetime, run: runner.StageRun
) -> tuple[list[dict], int, pa.Table]:
    """Scan, decide and write the predictions into the run's staged ``predictions``; returns the
    quarantine rows of the unusable files and of the copies left out, the number of files
    found already scored and the drift test's sample of the scan's embeddings. The one pass over the files
    is kept in memory (no pixels: ids, reasons and the model's outputs, a few hundred bytes a file);
    its one job also writes the predictions, so the write overlaps the decoding and the model.
    A progress line every ``data.progress_s`` counts the files the scan's tasks have done."""
    model = got.scorer
    with progress.reporting(spark, STAGE, "files", len(got.files), cfg.data.progress_s) as handled:
        head = model.head(cfg)
        scanned = predict.scan_files(spark, got.files, cfg, model.card.ingest_settings, got.done, head, handled=handled)
        return _decided(spark, cfg, got, started, run, scanned)


def _decided(
    spark: SparkSession, cfg: ScoreParams, got: Inputs, started: datetime, run: runner.StageRun, scanned: DataFrame
) -> tuple[list[dict], int, pa.Table]:
    """The predictions of the scan written into the run's staging (the scan runs as they are),
    then the drift test's sample of the embeddings the scan kept."""
    from pyspark import StorageLevel
    from pyspark.sql import functions as F

    model = got.scorer
    scanned = scanned.persist(StorageLevel.MEMORY_AND_DISK)
    try:
        usable = scanned.where(F.col("reason").isNull())
        decided = predict.decide(spark, usable, got.files, model, cfg, run.staging / "_light")
        folder = run.staging / tables.PREDICTIONS
        duplicates = predict.write_predictions(spark, decided, usable, model, started, folder)
        if model.shadow is not None and folder.exists():
            copies = [r["source_uri"] for r in duplicates]
            predict.write_shadow(usable, model.shadow, cfg, started, copies, run.staging / tables.SHADOW)
        if cfg.score.heatmaps:
            draw_heatmaps(usable, model, run)
        bad, already = predict.unscored_rows(scanned)
        return bad + duplicates, len(already), drifting.sample(usable, model, cfg)
    finally:
        scanned.unpersist()


def draw_heatmaps(usable: DataFrame, model: Scorer, run: runner.StageRun) -> None:
    """``score.heatmaps``: the scan's heatmaps (drawn in its tasks from the pixels they decoded)
    written into the run's staging, for :func:`keep_heatmaps` to put beside its report."""
    if heads.HEATMAP.name not in usable.columns:
        log.warning(
            "score.heatmaps: %s %s has no tile weights to draw (tiles_attention has)", model.kind, model.version
        )
        return
    drawn = predict.write_heatmaps(usable, run.staging / f"_{predict.HEATMAPS}")
    log.info("drew %d heatmaps", drawn)


def heatmap_gallery(run: runner.StageRun) -> list[Gallery]:
    """A few of the run's heatmaps for its report page, with what the model said of each."""
    import pyarrow.dataset as ds

    drawn = run.staging / f"_{predict.HEATMAPS}"
    staged = run.staging / tables.PREDICTIONS
    if not drawn.exists() or not staged.exists():
        return []
    pictures = sorted(drawn.glob("*.png"))
    shown = pictures[:MAX_THUMBS]
    rows = ds.dataset(str(staged), format="parquet").to_table(
        columns=["image_id", "source_uri", "predicted_label", "probability"],
        filter=ds.field("image_id").isin([p.stem for p in shown]),  # only the shown pictures' rows
    )
    said = {r["image_id"]: r for r in rows.to_pylist()}
    thumbs = [
        Thumb((short_name(r["source_uri"]), f"{r['predicted_label']} ({r['probability']:.3f})"), p.read_bytes())
        for p in shown
        if (r := said.get(p.stem)) is not None
    ]
    note = f"red: where the model's attention was; every image's picture is in {run.report_dir / predict.HEATMAPS}"
    return [Gallery("where the model looked (tile attention)", tuple(thumbs), len(pictures), note)]


def keep_heatmaps(run: runner.StageRun) -> None:
    """Move the run's heatmaps beside its report (``<report>/heatmaps/<image_id>.png``), replacing
    the last run's."""
    import shutil

    drawn = run.staging / f"_{predict.HEATMAPS}"
    if drawn.exists():
        target = run.report_dir / predict.HEATMAPS
        shutil.rmtree(target, ignore_errors=True)
        target.parent.mkdir(parents=True, exist_ok=True)
        drawn.rename(target)


def validate(
    spark: SparkSession, cfg: ScoreParams, model: Scorer, run: runner.StageRun, drift: drifting.Checked
) -> tuple[GateResult | None, dict]:
    """``(the predictions gate's result, rows per predicted label)`` of the staged predictions and
    the drift test's check when its verdict fails the gate (``(None, {})``: nothing new was scored)."""
    staged = run.staging / tables.PREDICTIONS
    if not staged.exists():
        return None, {}
    batches, per_label = checks.batch_checks(
        spark.read.schema(tables.PREDICTION_SCHEMA).parquet(spark_path(staged)), model, cfg
    )
    return run.validate([*batches, *drift.batches]), per_label


def params(cfg: ScoreParams) -> dict[str, Any]:
    """The params a scoring run (batch or micro-batch) records."""
    return cfg.section("score", "gate.predictions", "data", "drift")


def run(cfg: ScoreParams, spark: SparkSession) -> Path | None:
    """Score the inbox's new images; returns the published run folder (None when nothing was new)."""
    root = Path(cfg.data.root)
    target = tables.predictions_dir(root)
    with runner.StageRun(
        STAGE, root, spark, target, name=STAGE, lock_wait=cfg.data.lock_wait_s, gate=gate.validate, params=params(cfg)
    ) as run:
        holder = locks.lock_holder(stream.inbox_lock(cfg.score.inbox))
        if holder is not None:  # not a failure: the stream scores these files
            log.info("stream active: %s is scored by a stream (%s); this run scores nothing", cfg.score.inbox, holder)
            return None
        with run.phase("read"):
            got = extract(cfg)
            run.lineage.reads(cfg.score.inbox, got.scorer.describe()["folder"])
            started = datetime.fromisoformat(run.timings()["started_at"])
        for table in (target, tables.quarantine_dir(root), tables.shadow_dir(root)):
            table.mkdir(parents=True, exist_ok=True)  # DVC outputs exist even before anything is in them
        with run.phase("work"):
            bad, already, sampled = transform(spark, cfg, got, started, run)
            new_bad = [r for r in bad if (r["source_uri"], r["image_id"]) not in got.recorded]
            if new_bad:
                tables.write_table(
                    tables.quarantine_table(new_bad), run.staging / tables.QUARANTINE / "part-00000-quarantine.parquet"
                )
        with run.phase("gate"):
            beside = Beside(
                drifting.check(drifting.reference(got.scorer), sampled, cfg), *compare_shadow(run, got.scorer)
            )
            show(run, cfg, got, started, bad, already, beside)
            result, per_label = validate(spark, cfg, got.scorer, run, beside.drift)
            keep_heatmaps(run)
        scored = tables.scored_files(run.staging / tables.PREDICTIONS)
        counts = tables.tally(len(got.files), per_label, scored, already, bad, new_bad)
        published = publish(cfg, run, got, counts, result, started, beside)
    _report(got, counts, published)
    return published


@dataclass
class Beside:
    """What a run records beside its predictions: its drift test, and its shadow's comparison with
    the pictures of their disagreements (none without ``score.shadow``)."""

    drift: drifting.Checked
    shadow: ShadowRecord | None = None
    galleries: list[Gallery] = field(default_factory=list)

    def shown(self) -> dict[str, Any]:
        """The shadow's agreement in the report page's counts."""
        s = self.shadow
        return {} if s is None else {"version": s.shadow.version, "agreement": s.agreement, "images": s.rows}


def compare_shadow(run: runner.StageRun, model: Scorer) -> tuple[ShadowRecord | None, list[Gallery]]:
    """The staged predictions against the staged shadow rows (none without a shadow)."""
    if model.shadow is None:
        return None, []
    ours = shadowing.read_said(run.staging / tables.PREDICTIONS)
    theirs = shadowing.read_said(run.staging / tables.SHADOW)
    record = shadowing.compared(ours, theirs, (model.version, model.kind), (model.shadow.version, model.shadow.kind))
    log.info(
        "shadow %s agrees with %s on %s of %d images",
        model.shadow.version,
        model.version,
        record.agreement,
        record.rows,
    )
    return record, [shadowing.disagreements(ours, theirs, record.rows)]


def show(
    run: runner.StageRun,
    cfg: ScoreParams,
    got: Inputs,
    started: datetime,
    bad: list[dict],
    already: int,
    beside: Beside,
) -> None:
    """What the predictions gate's report page shows besides its checks: the run's counts, drift
    verdict and shadow agreement, the pictures behind them, the files it could not use, and where
    its manifest is published."""
    reasons = tables.by_reason(bad)
    run.exhibits.counts = {
        "files seen": len(got.files),
        "already scored": already,
        "unusable": reasons,
        "embedding drift": beside.drift.shown(),
        **({"shadow": beside.shown()} if beside.shadow is not None else {}),
    }
    ordered = sorted(bad, key=lambda r: str(r["source_uri"]))
    quarantined = exhibits.quarantine_gallery(ordered, len(bad))
    run.exhibits.galleries = [*beside.drift.galleries, *beside.galleries, *heatmap_gallery(run), quarantined]
    where = run.appended(tables.predictions_dir(cfg.data.root), started.strftime("%Y-%m-%d"))
    run.exhibits.published = where / manifest.MANIFEST


def publish(
    cfg: ScoreParams,
    run: runner.StageRun,
    got: Inputs,
    counts: dict[str, Any],
    result: GateResult | None,
    started: datetime,
    beside: Beside | None = None,
) -> Path | None:
    """Predictions first, then the shadow's rows and the quarantine rows: a kill between the
    renames loses no quarantine record (the next run, finding the bad files unrecorded, reports
    them). The manifest records the run's drift test and its shadow's agreement."""
    run.extra["images_per_s"] = round(len(got.files) / max(run.seconds.get("work", 0.0), 1e-9), 1)
    inputs = {"inbox": partitions.describe(cfg.score.inbox, got.kind, got.files), "model": got.scorer.describe()}
    doc = run.manifest(params(cfg), inputs, counts, result)
    if beside is not None:
        doc = doc.model_copy(update={"drift": beside.drift.record, "shadow": beside.shadow})
    root = Path(cfg.data.root)
    parts = [(tables.PREDICTIONS, tables.predictions_dir(root)), (tables.QUARANTINE, tables.quarantine_dir(root))]
    if got.scorer.shadow is not None:
        parts.insert(1, (tables.SHADOW, tables.shadow_dir(root)))
    published, *_ = run.finish_append(result, doc, parts, started.strftime("%Y-%m-%d"))
    return published


def _report(got: Inputs, counts: dict[str, Any], published: Path | None) -> None:
    if counts["unaccounted"]:
        log.warning(
            "%d files were neither scored, already scored nor quarantined: unscored, the next run tries them again",
            counts["unaccounted"],
        )
    log.info(
        "%d files seen: %d scored by %s, %d already scored, %d unusable (%d newly quarantined %s) -> %s",
        len(got.files),
        counts["scored"],
        got.scorer.version,
        counts["already_scored"],
        counts["unusable"],
        counts["quarantined"],
        counts["quarantine_by_reason"],
        published or "nothing new to publish",
    )


def outputs(cfg: ScoreParams) -> list[Path]:
    """The batch tables and the stream's folder."""
    root = Path(cfg.data.root)
    return [tables.predictions_dir(root), tables.quarantine_dir(root), tables.shadow_dir(root), tables.stream_dir(root)]


def job(cfg: ScoreParams, spark: SparkSession) -> Path | int | None:
    """``score.mode``: one batch run, or the stream."""
    return stream.run_stream(cfg, spark) if cfg.score.mode == "stream" else run(cfg, spark)


def _precheck(cfg: ScoreParams) -> None:
    for folder in (model_folder(cfg), shadow_source(cfg)):
        if folder is not None:
            check_model(folder, read_card(folder))  # tampered or out-of-folder weights: refused before Spark
    store.describe_source(cfg.score.inbox, "score.inbox")


def worker_preload(cfg: ScoreParams) -> tuple[str, ...]:
    """What the scanning tasks import: the model's framework (torch) first when it is a torch one,
    the scan's code and the module of the task planner its function refers to."""
    kinds = {read_card(folder).kind for folder in (model_folder(cfg), shadow_source(cfg)) if folder is not None}
    torch = launch.TORCH if kinds != {"mllib"} or cfg.score.cascade.enabled else ()
    return (*torch, "spark_jobs.scoring.scan", "spark_jobs.imaging.partitions")


def main(argv: list[str] | None = None) -> int:
    return run_stage(
        STAGE,
        argv,
        job,
        params=PARAMS,
        outputs=outputs,
        description=__doc__,
        precheck=_precheck,
        preload=launch.GATE,
        worker_preload=worker_preload,
    )


if __name__ == "__main__":
    exit_process(main())
