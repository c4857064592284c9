"""The one stage runner (DESIGN.md #12): every stage writes into a staging folder, gates what it
wrote, and publishes it by atomic renames with its manifest; every phase is timed and Spark's
task metrics of the run are recorded. A stream's micro-batch is a run like any other.

    with StageRun(STAGE, root, spark, target=root / STAGE, gate=gate.validate) as run:
        with run.phase("read"):
            ...                                   # list / read the inputs
        with run.phase("work"):
            ...                                   # write into run.staging
        with run.phase("gate"):
            result = run.validate(suite(stats(...))) # the stage's suite on statistics of what was written
        return run.finish(result, run.manifest(params, inputs, counts, result))

Three ways to publish: :meth:`StageRun.finish` replaces the target folder whole,
:meth:`StageRun.finish_append` adds the staged folders as new runs of tables (score's batch runs),
:meth:`StageRun.finish_files` puts staged files at their places in tables (a stream's micro-batch).

Layout under ``data.root`` (and beside any other target, e.g. ``models/.staging/``)::

    <target>                      published output (+ _manifest.json or card.json)
    .staging/<name>-<run_id>/     being written, beside the target (same filesystem)
    .locks/<name>.lock            held by the run from start to end
    rejected/<stage>-<run_id>/    output that failed its gate, kept for inspection
    gates/<stage>/                last validation: summary.txt, validation.json, docs/index.html

``timings`` in every manifest: ``startup_s`` (process start -> Spark session ready; under
spark-submit the process is the JVM that launched this one), ``read_s``, ``work_s``, ``gate_s``,
``publish_s`` (up to the final rename) and ``total_s`` (since the process started), plus
``started_at``/``finished_at``. A stage run inside a process that did not start for it (a test
calling ``run(cfg, spark)``, a stream's micro-batch) counts from the run's own start and has no
``startup_s``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import time
import uuid
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from spark_jobs.core import launch, lineage, locks
from spark_jobs.core import manifest as manifests
from spark_jobs.core.atomic import replace_dir, replace_file
from spark_jobs.core.manifest import R
from spark_jobs.core.store import spark_path
from spark_jobs.core.verdict import Exhibits, GateFailed, GateResult, Validator

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

log = logging.getLogger(__name__)

PHASES = ("read", "work", "gate", "publish")
VALIDATION = "_validation.json"
STAGING = ".staging"
LOCKS = ".locks"  # beside the outputs: one lock file per output (StageRun)
PINNED = ".models"  # under data.root: the model versions scoring runs pinned (scoring.model.pinned)
REJECTED = "rejected"


def _iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).isoformat(timespec="seconds")


def lock_file(target: Path, name: str) -> Path:
    """The lock a run publishing ``target`` under ``name`` holds (:class:`StageRun`)."""
    return Path(target).parent / LOCKS / f"{name}.lock"


def _keep_ignore_file(target: Path, staging: Path) -> None:
    """The ``.gitignore`` in a published folder is not the stage's: DVC keeps one there for the
    folder's cached outputs (e.g. ``reports/.gitignore`` lists ``/figures``), and the user may. It
    goes with the new folder, so the swap never drops it."""
    ignore = target / ".gitignore"
    if ignore.is_file() and not (staging / ".gitignore").exists():
        shutil.copy2(ignore, staging / ".gitignore")


def _engine(spark: SparkSession | None) -> dict[str, str]:
    """What runs a stage, for its lineage: Spark (version and master), or Python alone."""
    if spark is None:
        import platform

        return {"name": "python", "version": platform.python_version()}
    return {"name": "spark", "version": spark.version, "master": spark.sparkContext.master}


def new_run_id() -> str:
    return datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ") + "-" + uuid.uuid4().hex[:8]


class StageRun:
    """One run of a stage: its output's lock, staging folder, phase clock, gate, manifest and publish.

    A run holds an exclusive lock (:func:`spark_jobs.core.locks.take_lock`) on
    ``<target's folder>/.locks/<name>.lock`` from start to end: one run at a time per output. A
    second run waits up to ``lock_wait`` seconds, then raises :class:`locks.OutputBusy`. Holding
    the lock, a run removes the staging folders earlier runs of the output left (killed runs:
    none of them can be alive).

    ``target`` is the folder the run publishes, and its staging folder is
    ``<target's folder>/.staging/<name or target's name>-<run_id>``. ``root`` is ``data.root``:
    where rejected outputs and gate reports go. ``gate`` validates the stage's suite (the stage
    hands it in: :func:`spark_jobs.quality.gate.validate`); ``report_with_output`` keeps the
    report inside the staged output (``gate/``, so a rejected output carries its own) instead of
    ``gates/<stage>/``. ``run_id``: the run's id when the caller already has one (a planned
    micro-batch run again after a kill keeps its own).

    Every run is an OpenLineage run (:mod:`spark_jobs.core.lineage`, ``run.lineage``): START on
    entering, COMPLETE on publishing, FAIL on a failed gate or an error, ABORT otherwise, and
    ABORT for the killed runs whose staging folders it removes. ``job`` names its OpenLineage job
    (default the stage); the stage adds what it read with ``run.lineage.reads(...)`` and its
    params with ``params`` (their hash goes in every event)."""

    def __init__(
        self,
        stage: str,
        root: str | Path,
        spark: SparkSession | None,
        target: Path,
        name: str | None = None,
        lock_wait: float = 600.0,
        gate: Validator | None = None,
        run_id: str | None = None,
        report_with_output: bool = False,
        job: str | None = None,
        params: dict[str, Any] | None = None,
        streaming: bool = False,
    ) -> None:
        self.stage = stage
        self.spark = spark
        self.root = Path(root)
        self.target = Path(target)
        self.run_id = run_id or new_run_id()
        self._name = name or self.target.name
        self.staging = self.target.parent / STAGING / f"{self._name}-{self.run_id}"
        self.lock_file = lock_file(self.target, self._name)
        self._lock_wait = lock_wait
        self._lock_fd: int | None = None
        self._gate = gate
        self.rejected = self.root / REJECTED / f"{stage}-{self.run_id}"
        self.report_dir = self.staging / "gate" if report_with_output else self.root / "gates" / stage
        # What the gate's report page shows besides the checks (the stage adds counts and pictures);
        # a report kept with its output links the manifest that moves with it.
        kept_with = self.staging if report_with_output else self.rejected
        self.exhibits = Exhibits(published=self.target / manifests.MANIFEST, rejected=kept_with / manifests.MANIFEST)
        self.seconds: dict[str, float] = {}
        self.extra: dict[str, Any] = {}
        started = launch.current()
        self._created = time.time()
        self._origin = started.started if started else self._created
        self._session_ready = started.session_ready if started else None
        self._group = f"{stage}-{self.run_id}"
        self._events_offset = 0
        self.lineage = lineage.RunLineage(self.root, job or stage, self.run_id, _engine(spark), streaming)
        version = manifests.job_version()
        self.lineage.facts = {"stage": stage, "package": version.package, "git_commit": version.git_commit}
        self.lineage.facts |= {"dirty": version.dirty, "params_hash": manifests.params_hash(params) if params else None}

    # context: staging exists inside, and is gone after (published, rejected or discarded)
    def __enter__(self) -> StageRun:
        busy = f"{self.target} is being written by another {self.stage} run"
        self._lock_fd = locks.take_lock(self.lock_file, self._lock_wait, busy, f"run {self.run_id}")
        killed = []
        try:
            for stale in self.staging.parent.glob(f"{self._name}-*"):
                log.info("removing the staging folder of a run that did not finish: %s", stale)
                shutil.rmtree(stale, ignore_errors=True)
                killed.append(stale.name.removeprefix(f"{self._name}-"))
            self.staging.mkdir(parents=True)
        except BaseException:
            self._unlock()
            raise
        self.lineage.abort_stale(killed)
        self.lineage.start()
        if self.spark is not None:
            from spark_jobs.core.session import event_log_size

            self._events_offset = event_log_size(self.spark)
            self.spark.sparkContext.setJobGroup(self._group, f"{self.stage} run {self.run_id}")
        return self

    def __exit__(self, kind: object, exc: BaseException | None, trace: object) -> None:
        try:
            self.lineage.closed(exc)
            if self.spark is not None:
                self.spark.sparkContext.setLocalProperty("spark.jobGroup.id", None)
                self.spark.sparkContext.setLocalProperty("spark.job.description", None)
            if self.staging.exists():
                shutil.rmtree(self.staging, ignore_errors=True)
        finally:
            self._unlock()

    def _unlock(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # releases the flock
            self._lock_fd = None

    def path(self, name: str) -> str:
        """Where Spark writes table ``name`` while staging (:func:`store.spark_path`)."""
        return spark_path(self.staging / name)

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        """Time the block as phase ``name`` (one of :data:`PHASES`; repeated blocks add up)."""
        if name not in PHASES:
            raise ValueError(f"unknown phase {name!r}")
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - start

    def validate(self, batches: Sequence[Any], docs: Literal["always", "on_failure"] = "always") -> GateResult:
        """Validate ``batches`` (the stage's suite) with the run's gate; the report goes to its
        report folder. ``docs="on_failure"``: validate without writing anything, and only when
        that fails again with the report (a stream's micro-batch: Data Docs cost more than the
        check itself)."""
        if self._gate is None:
            raise TypeError(f"the {self.stage} run was given no gate to validate with")
        if docs == "on_failure":
            result = self._gate(self.stage, batches, None, None)
            if result.success:
                return result
        return self._gate(self.stage, batches, self.report_dir, self.exhibits)

    def timings(self) -> dict[str, Any]:
        """The phase clock so far (``total_s`` up to now)."""
        now = time.time()
        startup = None if self._session_ready is None else round(self._session_ready - self._origin, 3)
        return {
            "started_at": _iso(self._origin),
            "finished_at": _iso(now),
            "startup_s": startup,
            **{f"{p}_s": round(self.seconds.get(p, 0.0), 3) for p in PHASES},
            "total_s": round(now - self._origin, 3),
            **self.extra,
        }

    def spark_metrics(self) -> dict[str, Any]:
        """Jobs, stages, tasks and the summed task metrics of this run's Spark jobs (``{}`` for a
        stage that runs no Spark)."""
        if self.spark is None:
            return {}
        from spark_jobs.core.session import spark_metrics

        return spark_metrics(self.spark, self._group, self._events_offset)

    def manifest(
        self,
        params: dict[str, Any],
        inputs: dict[str, Any],
        counts: dict[str, Any],
        result: GateResult | None,
    ) -> manifests.Manifest:
        """The ``_manifest.json`` record of this run (call it when the publish phase begins)."""
        gate = result.for_manifest() if result else {"success": True, "expectations": 0, "failed": []}
        return manifests.build(self.stage, params, inputs, counts, gate, spark=self.spark_metrics(), run_id=self.run_id)

    def _timed(self, doc: R) -> R:
        """``doc`` with the phase clock up to now in its ``timings``, and its OpenLineage run."""
        update: dict[str, Any] = {"timings": manifests.Timings(**self.timings())}
        if "lineage" in type(doc).model_fields:
            update["lineage"] = self.lineage.record
        params = getattr(doc, "params", None)
        if isinstance(params, dict) and self.lineage.facts.get("params_hash") is None:
            self.lineage.facts["params_hash"] = manifests.params_hash(params)
        return doc.model_copy(update=update)

    def finish(
        self, result: GateResult | None, doc: manifests.Record, name: str = manifests.MANIFEST, blocking: bool = True
    ) -> Path:
        """Publish the staging folder as the target with ``doc`` in it when the gate passed
        (``result`` None: a stage without a gate); otherwise keep it under ``rejected/`` and raise
        :class:`GateFailed`. ``blocking`` False: publish whatever the verdict (a report of it)."""
        with self.phase("publish"):
            self._verdict(result, doc, name, blocking)
            manifests.write(self.staging, self._timed(doc), name)  # timed up to the final rename
            _keep_ignore_file(self.target, self.staging)
            replace_dir(self.staging, self.target)
        self._published(result, self.target)
        self.lineage.complete([lineage.Published(self.target, lineage.files_under(self.target))], result)
        return self.target

    def appended(self, table: Path, run_date: str) -> Path:
        """Where :meth:`finish_append` publishes this run's part of ``table``."""
        return table / f"run_date={run_date}" / f"run_id={self.run_id}"

    def finish_append(
        self, result: GateResult | None, doc: manifests.Manifest, parts: Sequence[tuple[str, Path]], run_date: str
    ) -> list[Path | None]:
        """Publish each staged sub-folder ``name`` of ``parts`` that exists as a new run of its
        table (``table/run_date=<run_date>/run_id=<run_id>``, one rename to a new name each), in
        the order given; the first carries the manifest. A failed gate publishes none of them."""
        with self.phase("publish"):
            self._verdict(result, doc, manifests.MANIFEST, True)
            out: list[Path | None] = []
            for i, (name, table) in enumerate(parts):
                folder = self.staging / name
                if not folder.exists():
                    out.append(None)
                    continue
                if i == 0:
                    manifests.write(folder, self._timed(doc))  # timed up to the first rename
                out.append(replace_dir(folder, self.appended(table, run_date)))
        self._published(result, *(p for p in out if p))
        tables = [(table, part) for (_, table), part in zip(parts, out, strict=True) if part is not None]
        self.lineage.complete([lineage.Published(table, lineage.files_under(part)) for table, part in tables], result)
        return out

    def finish_files(
        self, result: GateResult | None, doc: manifests.Manifest, files: Sequence[tuple[str, Path]], manifest_at: Path
    ) -> list[Path | None]:
        """Publish each staged file ``name`` of ``files`` that exists at its target path, one
        rename each in the order given, the manifest (at ``manifest_at``, timed up to the last
        rename) before the last: the last file's rename is the run's point of no return (with no
        file to publish, the manifest alone records the run). A failed gate publishes none of them."""
        with self.phase("publish"):
            self._verdict(result, doc, manifests.MANIFEST, True, keep_validation=False)
            staged = [(self.staging / name, target) for name, target in files]
            present = [(source, target) for source, target in staged if source.exists()]
            out = [target if (source, target) in present else None for source, target in staged]
            for source, target in present[:-1]:
                replace_file(source, target)
            manifests.write_json(manifest_at, self._timed(doc))
            for source, target in present[-1:]:
                replace_file(source, target)
        self._published(result, *(p for p in out if p), manifest_at)
        self.lineage.complete([lineage.Published(lineage.table_of(p), [p]) for p in out if p is not None], result)
        return out

    def _verdict(
        self, result: GateResult | None, doc: manifests.Record, name: str, blocking: bool, keep_validation: bool = True
    ) -> None:
        """Keep the validation beside the output (files published into tables keep it only when
        rejected: their manifest records the verdict); a failed blocking gate rejects the run here."""
        if result is None:
            return
        rejected = blocking and not result.success
        if keep_validation or rejected:
            manifests.write_json(self.staging / VALIDATION, result.raw)
        if rejected:
            manifests.write(self.staging, self._timed(doc), name)
            self.reject(result)

    @staticmethod
    def _published(result: GateResult | None, *where: Path) -> None:
        if result is not None:  # a failed gate here did not block (a report of the verdict): a warning
            page = f"\nreport: {result.page.absolute()}" if result.page is not None else ""
            log.log(logging.INFO if result.success else logging.WARNING, "%s%s", result.summary(), page)
        for path in where:
            log.info("published %s", path)

    def reject(self, result: GateResult) -> None:
        """Move the staged output to ``rejected/`` and raise :class:`GateFailed` with the report."""
        staged = lineage.Published(self.target, lineage.files_under(self.staging))
        self.lineage.fail(result.summary(), outputs=[staged], result=result)
        replace_dir(self.staging, self.rejected)
        report = result.page or result.docs or self.report_dir / "summary.txt"
        if report.is_relative_to(self.staging):  # the report went with the output
            report = self.rejected / report.relative_to(self.staging)
        raise GateFailed(self.stage, report, self.rejected, result.summary())
