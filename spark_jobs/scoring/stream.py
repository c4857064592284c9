"""The score stage's stream mode: micro-batches of the batch run's own scoring pass over the files
the lister finds new, each one a run of the stage runner (lock, staging, gate, reject or publish,
manifest) like any stage's, exactly once across restarts by a write-ahead checkpoint.

Every ``score.stream.trigger_s`` the loop lists ``score.inbox``, logs the next micro-batch (at
most ``max_files_per_trigger`` of the oldest new files) in the checkpoint
(:class:`spark_jobs.core.checkpoint.Checkpoint`), scores it, and publishes it into the stream's
tables (:mod:`spark_jobs.scoring.tables`): quarantine part, manifest, predictions part, one rename
each, the last the point of no return. A failing micro-batch is kept under ``rejected/`` with its
report, not marked handled, and retried after ``retry_rejected_s``. The volume checks read a
rolling window of the last published rows. A new champion is picked up at the next micro-batch.
SIGTERM stops the loop after the micro-batch under way.

Layout under ``<data.root>/stream/`` besides the tables::

    _checkpoint/        the write-ahead log (offsets, commits, state.json)
    status.json         progress, counts and latency of the last batches
    .locks/             a stream's lock on this folder, and its micro-batches'
    .staging/           micro-batches being written

and a stream's lock on its inbox in the host's lock folder (:func:`inbox_locks`).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import signal
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.compute as pc

from spark_jobs.core import lineage, locks, manifest, runner, store
from spark_jobs.core.checkpoint import COMPACT_EVERY, Checkpoint, Planned
from spark_jobs.core.manifest import ShadowRecord
from spark_jobs.core.store import canonical_uri
from spark_jobs.core.verdict import GateFailed
from spark_jobs.imaging import partitions
from spark_jobs.quality import gate
from spark_jobs.scoring import checks, drifting, predict, shadowing, tables
from spark_jobs.scoring.config import ScoreParams
from spark_jobs.scoring.heads import Head
from spark_jobs.scoring.lookup import Lookup
from spark_jobs.scoring.model import Scorer, scorer
from spark_jobs.scoring.scan import IdSet
from spark_jobs.scoring.status import Progress, RollingWindow

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

log = logging.getLogger(__name__)

STREAM_STAGE = "score-stream"  # its gate reports, rejected micro-batches and manifests
CHECKPOINT = "_checkpoint"
BATCH = "batch"  # the micro-batches' runs: their lock and staging folders under stream/
FIX = "remove <data.root>/stream/_checkpoint to start the stream over (the tables keep it exactly-once)"


def stream_lock(root: str | Path) -> Path:
    """The lock of the one stream that writes under ``root`` (its checkpoint is one)."""
    return tables.stream_dir(root) / runner.LOCKS / "stream.lock"


def inbox_locks() -> Path:
    """The folder of the inbox locks of this host: ``$SPARK_JOBS_LOCK_DIR``, by default
    ``<temp dir>/spark-jobs-locks`` (made world-writable with the sticky bit, as ``/tmp`` is, so
    every user's stream on the host sees one another's)."""
    folder = Path(os.environ.get("SPARK_JOBS_LOCK_DIR") or Path(tempfile.gettempdir()) / "spark-jobs-locks")
    if not folder.is_dir():
        folder.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(OSError):
            folder.chmod(0o1777)
    return folder


def inbox_lock(inbox: str) -> Path:
    """The lock a stream holds on ``inbox`` for as long as it runs: one per inbox on this host,
    whatever the ``data.root``, keyed on the inbox's real location (links resolved, a folder and
    its ``file://`` URI alike). It lives in :func:`inbox_locks`, never in the inbox, which may be
    read-only and is never written."""
    where = canonical_uri(inbox)
    digest = hashlib.sha256(os.fsencode(where.rstrip("/") if store.is_s3(where) else where)).hexdigest()[:16]
    return inbox_locks() / f"inbox-{digest}.lock"


def batch_lock(root: str | Path) -> Path:
    """The lock a batch run of the score stage holds (its run's lock on ``predictions``)."""
    return runner.lock_file(tables.predictions_dir(root), "score")


@dataclass
class Current:
    """The model a stream scores with now, the head its scan runs and its already-scored lookup."""

    scorer: Scorer
    head: Head
    lookup: Lookup
    reference: drifting.Reference

    @classmethod
    def open(cls, spark: SparkSession, cfg: ScoreParams, model: Scorer) -> Current:
        if cfg.score.heatmaps:  # batch runs draw them beside their report; a micro-batch does not
            log.info("score.heatmaps: drawn by batch runs only; the stream scores without them")
            cfg = cfg.model_copy(update={"score": cfg.score.model_copy(update={"heatmaps": False})})
        lookup = Lookup(spark, cfg.data.root, model.version, cfg.score.stream.dedupe_hours)
        return cls(model, model.head(cfg), lookup, drifting.reference(model))


@dataclass
class Outcome:
    """How a micro-batch ended: ``published`` or ``rejected`` (kept at ``rejected``), its counts and
    seconds per phase."""

    outcome: str
    counts: dict[str, Any]
    seconds: dict[str, float] = field(default_factory=dict)
    rejected: Path | None = None


@dataclass
class Scored:
    """A micro-batch's rows on the driver: its predictions (copies of one content left out), the
    quarantine rows of its unusable files, the URIs of those already scored, the drift test's
    sample of its embeddings and its shadow model's rows (None without ``score.shadow``)."""

    table: pa.Table
    bad: list[dict[str, Any]]
    already: list[str]
    sampled: pa.Table
    shadow: pa.Table | None = None


def score_rows(spark: SparkSession, cfg: ScoreParams, current: Current, planned: Planned, work: Path) -> Scored:
    """The micro-batch's rows (:class:`Scored`): the batch run's scan and decision."""
    from pyspark import StorageLevel
    from pyspark.sql import functions as F

    files = planned.source_files()
    model, lookup = current.scorer, current.lookup
    done = IdSet(lookup.recent)
    scanned = predict.scan_files(spark, files, cfg, model.card.ingest_settings, done, current.head, [lookup.base])
    scanned = scanned.persist(StorageLevel.MEMORY_AND_DISK)
    try:
        usable = scanned.where(F.col("reason").isNull())
        decided = predict.decide(spark, usable, files, model, cfg, work)
        now = datetime.now(UTC)
        table = predict.stamped(decided, model, now, planned.batch).toArrow()
        bad, already = predict.unscored_rows(scanned)
        sampled = drifting.sample(usable, model, cfg)
        shadow = None
        if model.shadow is not None:
            shadowed = predict.shadow_predictions(usable, model.shadow, cfg)
            shadow = predict.stamped(shadowed, model.shadow, now, planned.batch).toArrow()
    finally:
        scanned.unpersist()
    table, copied = tables.without_copies(table)
    if shadow is not None:  # the shadow's rows of the files the predictions keep
        kept = table.column("source_uri").combine_chunks()
        shadow = shadow.filter(pc.is_in(shadow.column("source_uri"), value_set=kept))
    return Scored(table, bad + copied, already, sampled, shadow)


def _versions(model: Scorer) -> tuple[str, str | None]:
    return model.version, model.shadow.version if model.shadow is not None else None


def _compared(model: Scorer, scored: Scored) -> ShadowRecord | None:
    """The micro-batch's shadow record (None without a shadow)."""
    if model.shadow is None or scored.shadow is None:
        return None
    ours, theirs = (model.version, model.kind), (model.shadow.version, model.shadow.kind)
    return shadowing.compared(scored.table, scored.shadow, ours, theirs)


def counted(planned: Planned, table: pa.Table, bad: list[dict[str, Any]], already: list[str]) -> dict[str, Any]:
    """A micro-batch's counts, each from rows (:func:`tables.tally`), and ``unhandled``: the
    planned files with no row at all, which the checkpoint leaves to be listed again."""
    scored = set(table.column("source_uri").to_pylist())
    per_label: dict[str, int] = {}
    for label in table.column("predicted_label").to_pylist():
        per_label[str(label)] = per_label.get(str(label), 0) + 1
    counts = tables.tally(len(planned.files), per_label, len(scored), len(already), bad, bad)
    handled = scored | set(already) | {r["source_uri"] for r in bad}
    return counts | {"unhandled": sorted({uri for uri, *_ in planned.files} - handled)}


def _seconds(run: runner.StageRun) -> dict[str, float]:
    return {k: round(v, 3) for k, v in run.seconds.items()}


@contextlib.contextmanager
def _sigterm_stops(stop: threading.Event) -> Iterator[None]:
    """SIGTERM sets ``stop`` within the block (in the main thread; a stream run elsewhere, as in
    the tests, keeps the process's handler)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _locks(cfg: ScoreParams) -> list[tuple[Path, str]]:
    folder = tables.stream_dir(cfg.data.root)
    return [
        (stream_lock(cfg.data.root), f"a stream already writes to {folder}"),
        (inbox_lock(cfg.score.inbox), f"a stream already scores {cfg.score.inbox}"),
    ]


def run_stream(cfg: ScoreParams, spark: SparkSession, on_batch: Callable[[int], None] | None = None) -> int:
    """Score the inbox in micro-batches until SIGTERM (or, with ``score.stream.available_now``,
    until it is empty of new files); returns the number of micro-batches run. ``on_batch(batch)``
    is called after each (tests change the champion there)."""
    folder = tables.stream_dir(cfg.data.root)
    stop = threading.Event()
    progress = Progress(cfg.score.inbox, cfg.score.stream.latency_batches)
    loop = _Loop(cfg, spark, progress, on_batch)
    with locks.holding(_locks(cfg), f"stream on {cfg.score.inbox}"), _sigterm_stops(stop):
        state = "failed"
        try:
            # A batch run scoring this inbox now finishes first; a later one sees the stream and stops.
            wait = cfg.data.lock_wait_s
            with locks.holding([(batch_lock(cfg.data.root), "a batch score run holds the inbox")], "stream", wait):
                pass
            progress.write(folder, None, "starting")
            ran = loop.run(stop)
            state = "stopped"
            log.info("stream stopped after %d micro-batches this run", ran)
            return ran
        finally:
            loop.close()
            progress.write(folder, loop.version, state)


class _Loop:
    """The stream's driver loop: one trigger at a time, the current model, the checkpoint."""

    def __init__(
        self, cfg: ScoreParams, spark: SparkSession, progress: Progress, on_batch: Callable[[int], None] | None
    ) -> None:
        self.cfg, self.spark, self.progress, self.on_batch = cfg, spark, progress, on_batch
        self.folder = tables.stream_dir(cfg.data.root)
        self.current: Current | None = None
        self.window = RollingWindow(cfg.score.stream.window_rows)
        self.embeddings = drifting.EmbeddingWindow(cfg.drift.window_rows)
        # What every micro-batch's manifest records of the params and the inbox: fixed for the stream.
        self.params = cfg.section("score", "gate.predictions", "data", "drift")
        self.inbox_kind = store.describe_source(cfg.score.inbox, "score.inbox")
        lineage.prepare(cfg.data.root)  # the micro-batches' OpenLineage client, made before the first one

    @property
    def version(self) -> str | None:
        return self.current.scorer.version if self.current else None

    def close(self) -> None:
        if self.current is not None:
            self.current.lookup.close()

    def refresh_model(self) -> Current:
        """The champion (and its shadow) now: a new version gets its own head and lookup from this
        micro-batch on."""
        model = scorer(self.cfg)
        if self.current is None or _versions(model) != _versions(self.current.scorer):
            if self.current is not None:
                before, now = _versions(self.current.scorer), _versions(model)
                log.info("the champion (or its shadow) changed: %s -> %s, from this micro-batch on", before, now)
                self.current.lookup.close()
            self.current = Current.open(self.spark, self.cfg, model)
        return self.current

    def next_batch(self, checkpoint: Checkpoint) -> Planned | None:
        """The micro-batch to run now: one a stop cut short, else the oldest new files (None: nothing new)."""
        s = self.cfg.score.stream
        if checkpoint.pending is not None:
            log.info("running micro-batch %d again: a stop cut it short", checkpoint.pending.batch)
            return checkpoint.pending
        _, listing = store.list_source(self.cfg.score.inbox, allow_empty=True)
        now = time.time()
        new = checkpoint.new_files(listing, now, s.retry_rejected_s)
        self.progress.backlog = max(len(new) - s.max_files_per_trigger, 0)
        if not new:
            return None
        run_id = f"{checkpoint.next_batch}-{runner.new_run_id()}"
        planned = checkpoint.plan(new[: s.max_files_per_trigger], now, run_id, tables.hour_of(now))
        if planned.batch % COMPACT_EVERY == 0 and planned.batch:
            checkpoint.compact(listing, s.retry_rejected_s, now)
        return planned

    def micro_batch(self, current: Current, planned: Planned) -> Outcome:
        """Score one planned micro-batch as a run of the stage runner and publish it into the
        stream's tables, or reject it. A batch whose predictions part exists was published before
        a kill cut its commit short: it only commits."""
        cfg, root = self.cfg, Path(self.cfg.data.root)
        target, quarantine_target, manifest_at = tables.stream_paths(root, planned.partition, planned.run_id)
        if target.exists():  # the last rename: published, under this batch's own unique run id
            published = manifest.read_record(manifest_at, manifest.Manifest, "micro-batch manifest", FIX)
            return Outcome("published", published.counts)
        with runner.StageRun(
            STREAM_STAGE,
            root,
            self.spark,
            tables.stream_dir(root) / tables.PREDICTIONS,
            name=BATCH,
            lock_wait=0.0,
            gate=gate.validate,
            run_id=planned.run_id,
            report_with_output=True,
            params=self.params,
            streaming=True,
        ) as run:
            run.lineage.reads(cfg.score.inbox, current.scorer.describe()["folder"])
            with run.phase("work"):
                scored = score_rows(self.spark, cfg, current, planned, run.staging / "_light")
                table, bad, already, sampled = scored.table, scored.bad, scored.already, scored.sampled
            counts = counted(planned, table, bad, already)
            labelled = (
                table.column("predicted_label").to_pylist(),
                checks.low_confidence_flags(table, cfg.score.low_confidence),
            )
            with run.phase("gate"):
                window = self.window.with_batch(*labelled)
                suite = checks.window_checks(table, current.scorer, cfg, window) if table.num_rows else []
                drift = self.drift(run, current, sampled, table.num_rows)
                suite += drift.batches
                result = run.validate(suite, docs="on_failure") if suite else None
            staged = [
                (f"{tables.STREAM_QUARANTINE}/{target.name}", quarantine_target),
                *self._shadow_part(run, planned, scored),
                (f"{tables.PREDICTIONS}/{target.name}", target),
            ]
            if bad:
                tables.write_table(tables.quarantine_table(bad), run.staging / staged[0][0])
            if table.num_rows:
                tables.write_table(table, run.staging / staged[-1][0])
            doc = run.manifest(self.params, self._inputs(current, planned), counts, result)
            doc = doc.model_copy(update={"drift": drift.record, "shadow": _compared(current.scorer, scored)})
            try:
                run.finish_files(result, doc, staged, manifest_at)
            except GateFailed as failed:
                log.error("micro-batch %d rejected, kept in %s: %s", planned.batch, failed.rejected, result.summary())
                kept = counts | {"rejected": str(failed.rejected), "drift": drift.record.outcome}
                return Outcome("rejected", kept, _seconds(run), failed.rejected)
        if table.num_rows:
            current.lookup.add(table.column("image_id").to_pylist())
            self.window.add(*labelled)
            self.embeddings.add(sampled, current.scorer.version)
        return Outcome("published", counts | {"drift": drift.record.outcome}, _seconds(run))

    def _shadow_part(self, run: runner.StageRun, planned: Planned, scored: Scored) -> list[tuple[str, Path]]:
        """The micro-batch's shadow rows staged (its part of ``stream/shadow/``; none without a shadow)."""
        if scored.shadow is None or not scored.shadow.num_rows:
            return []
        target = tables.stream_shadow_part(self.cfg.data.root, planned.partition, planned.run_id)
        name = f"{tables.SHADOW}/{target.name}"
        tables.write_table(scored.shadow, run.staging / name)
        return [(name, target)]

    def drift(self, run: runner.StageRun, current: Current, sampled: pa.Table, rows: int) -> drifting.Checked:
        """The drift test over the rolling window of embeddings with this micro-batch's in it (its
        report shows the pictures only when it drifted: a person has something to judge)."""
        window = self.embeddings.with_batch(sampled, current.scorer.version)
        if not rows:
            window = window.slice(0, 0)  # nothing new scored: nothing to judge
        checked = drifting.check(current.reference, window, self.cfg, window=True, pictures=False)
        run.exhibits.counts["embedding drift"] = checked.shown()
        run.exhibits.galleries = checked.galleries
        return checked

    def _inputs(self, current: Current, planned: Planned) -> dict[str, Any]:
        """What a micro-batch's manifest records it read: the inbox, each file and its arrival, the model."""
        files = planned.source_files()
        return {
            "inbox": partitions.describe(self.cfg.score.inbox, self.inbox_kind, files),
            "files": [{"uri": f.uri, "label": f.label, "size": f.size, "arrived": f.arrived} for f in files],
            "model": current.scorer.describe(),
            "micro_batch": {"batch": planned.batch, "planned_at": planned.planned_at, "partition": planned.partition},
        }

    def run(self, stop: threading.Event) -> int:
        """Trigger after trigger until ``stop`` (or an empty inbox with ``available_now``)."""
        s = self.cfg.score.stream
        checkpoint = Checkpoint(self.folder / CHECKPOINT, FIX)
        ran = 0
        while not stop.is_set():
            tick = time.monotonic()
            current = self.refresh_model()
            planned = self.next_batch(checkpoint)
            if planned is None:
                if s.available_now:
                    break
                self.progress.write(self.folder, self.version, "running")
            else:
                self.one(checkpoint, current, planned)
                ran += 1
            stop.wait(max(s.trigger_s - (time.monotonic() - tick), 0.0))
        return ran

    def one(self, checkpoint: Checkpoint, current: Current, planned: Planned) -> None:
        """Run, commit and count one micro-batch; a rejected one stops the stream with
        ``score.stream.stop_on_reject``."""
        outcome = self.micro_batch(current, planned)
        finished = time.time()
        if outcome.counts.get("unhandled"):
            log.warning(
                "micro-batch %d: %d files neither scored, already scored nor quarantined: listed again after %g s",
                planned.batch,
                len(outcome.counts["unhandled"]),
                self.cfg.score.stream.retry_rejected_s,
            )
        checkpoint.commit(planned, outcome.outcome, outcome.counts, finished)
        latencies = [finished - f.arrived for f in planned.source_files() if f.arrived]
        self.progress.count(planned.batch, outcome.outcome, outcome.counts, latencies, outcome.seconds)
        self.progress.write(self.folder, self.version, "running")
        log.info(
            "micro-batch %d %s: %d files, %d scored, %d quarantined by %s in %s",
            planned.batch,
            outcome.outcome,
            outcome.counts["files_seen"],
            outcome.counts.get("scored", 0),
            outcome.counts.get("quarantined", 0),
            self.version,
            outcome.seconds,
        )
        if self.on_batch is not None:
            self.on_batch(planned.batch)
        if outcome.rejected is not None and self.cfg.score.stream.stop_on_reject:
            raise GateFailed(
                STREAM_STAGE, outcome.rejected / "gate" / "summary.txt", outcome.rejected, "micro-batch rejected"
            )
