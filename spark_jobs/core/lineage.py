"""OpenLineage run events for every stage run and stream micro-batch (the stage runner emits them).

A run is one OpenLineage run of its job (``ingest``, ``train.cnn``, ``score``, ``score-stream``:
one job per stage, a stream's micro-batches runs of its job) in the namespace
``$OPENLINEAGE_NAMESPACE`` (default ``image-platform``):

- START when it begins, COMPLETE when it publishes (its inputs, and its outputs with their
  schema, row and byte counts and the gate's checks as data-quality assertions), FAIL when its
  gate fails or an error stops it (with the error), ABORT when it ends otherwise (nothing
  published, no error: interrupted, or nothing to do), and ABORT for a killed run of the same
  output that the next run finds (its staging folder, named by its run id).
- The run id is a UUID made from the run's own id (:func:`run_uuid`: the same run id always
  gives the same UUID), recorded in the manifest (:class:`LineageRecord`).
- The parent run facet names the Airflow task run that started it: the stage operator passes the
  OpenLineage provider's macros (``lineage_parent_id``, ``lineage_root_parent_id``) as
  ``OPENLINEAGE_PARENT_ID``/``OPENLINEAGE_ROOT_PARENT_ID`` (``namespace/job/run id``), the
  convention OpenLineage's integrations share.
- Transport: the client's own configuration when the user gave one (``OPENLINEAGE_URL``,
  ``OPENLINEAGE_CONFIG``, an ``openlineage.yml``, ``OPENLINEAGE__TRANSPORT__*``;
  ``OPENLINEAGE_DISABLED=true`` turns it off), else OpenLineage's file transport writing one
  JSON file per event under ``data.root/lineage/``.

Lineage never fails a stage: an event that cannot be built or sent is one warning line, and the
run sends no more (an unreachable server costs its retries once).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import re
import time
import traceback
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from spark_jobs import __version__
from spark_jobs.core.manifest import LineageRecord, Parent
from spark_jobs.core.store import is_s3, local_path, split_s3

if TYPE_CHECKING:
    from openlineage.client import OpenLineageClient
    from openlineage.client.event_v2 import InputDataset, OutputDataset, RunEvent

    from spark_jobs.core.verdict import GateResult

log = logging.getLogger(__name__)

FOLDER = "lineage"  # under data.root: the file transport's events
EVENTS = "events"  # their file names' prefix: events-<time>.json
NAMESPACE_ENV = "OPENLINEAGE_NAMESPACE"
DEFAULT_NAMESPACE = "image-platform"
PARENT_ENV = "OPENLINEAGE_PARENT_ID"
ROOT_PARENT_ENV = "OPENLINEAGE_ROOT_PARENT_ID"
PRODUCER = f"urn:image-platform:spark_jobs:{__version__}"  # the events' producer: this package
FACET = "imagePlatform"  # the run facet naming the platform's own run: stage, run id, params, code
FACET_SCHEMA = (
    "https://image-platform.invalid/spec/facets/1-0-0/ImagePlatformRunFacet.json#/$defs/ImagePlatformRunFacet"
)
FACET_SCHEMA_FILE = Path(__file__).with_name("ImagePlatformRunFacet.json")  # its schema, shipped with the code
# What a run's events need, imported by every stage in the background while its JVM starts
# (spark_jobs.core.jobs): the client costs ~0.2 s of imports (its transports' HTTP libraries).
PRELOAD = (
    "openlineage.client",
    "openlineage.client.event_v2",
    "openlineage.client.facet_v2",
    "openlineage.client.naming.dataset",
)
_RUN_TIME = re.compile(r"(\d{8}T\d{6}Z)")


def run_uuid(run_id: str) -> str:
    """The OpenLineage run id (a UUID) of the platform's run ``run_id``: the same id always gives
    the same UUID, so a killed run's events can be closed from its staging folder's name alone.
    Time-ordered (UUIDv7) by the time in the run id."""
    from openlineage.client.uuid import generate_static_uuid

    found = _RUN_TIME.search(run_id)
    instant = (
        datetime.strptime(found.group(1), "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)
        if found
        else datetime(1970, 1, 1, tzinfo=UTC)
    )
    return str(generate_static_uuid(instant, run_id.encode()))


def dataset_name(location: str | Path) -> tuple[str, str]:
    """``(namespace, name)`` of a file, folder or object prefix per OpenLineage's naming spec:
    ``("s3://bucket", "prefix")``, ``("file", "/absolute/path")``."""
    from openlineage.client.naming.dataset import S3, LocalFileSystem

    text = str(location)
    if is_s3(text):
        bucket, key = split_s3(text)
        naming = S3(bucket_name=bucket, object_key=key.rstrip("/") or "/")
    else:
        naming = LocalFileSystem(path=str(local_path(text).absolute()))
    return naming.get_namespace(), naming.get_name()


@dataclass
class Published:
    """One output of a run: the dataset (a table or folder) and the files the run wrote there (for
    their rows and bytes, and a Parquet file's schema)."""

    location: Path
    files: list[Path] = field(default_factory=list)


def table_of(path: Path) -> Path:
    """The table a published file belongs to: its folder without the partition folders
    (``stream/predictions/hour=.../part-x.parquet`` -> ``stream/predictions``)."""
    folder = path.parent if path.suffix else path
    while "=" in folder.name:
        folder = folder.parent
    return folder


def _tabular(files: Sequence[Path]) -> list[Path]:
    return [p for p in files if p.suffix == ".parquet" and not p.name.startswith((".", "_"))]


def parquet_parts(folder: Path) -> list[Path]:
    """The data files of a Parquet table under ``folder`` (not the hidden or ``_`` ones readers skip)."""
    return _tabular(files_under(folder))


def files_under(folder: Path) -> list[Path]:
    """Every file under ``folder`` (itself, when it is a file)."""
    if folder.is_file():
        return [folder]
    return [p for p in sorted(folder.rglob("*")) if p.is_file()] if folder.is_dir() else []


def schema_fields(files: Sequence[Path]) -> list[tuple[str, str]] | None:
    """``(column, type)`` of the first Parquet file among ``files`` (its footer alone is read)."""
    import pyarrow.parquet as pq

    tabular = _tabular(files)
    return [(f.name, str(f.type)) for f in pq.read_schema(tabular[0])] if tabular else None


def row_count(files: Sequence[Path]) -> int | None:
    """The rows of the Parquet files among ``files``, from their footers (None: no table)."""
    import pyarrow.parquet as pq

    tabular = _tabular(files)
    return sum(pq.read_metadata(p).num_rows for p in tabular) if tabular else None


def assertions(result: GateResult | None) -> list[tuple[str, bool, str | None]]:
    """The gate's checks as ``(assertion, success, column)``: ``batch: expectation``."""
    if result is None:
        return []
    return [
        (f"{c['batch']}: {c['expectation']}", bool(c["success"]), (c.get("kwargs") or {}).get("column"))
        for c in result.checks
    ]


def _disabled() -> bool:
    return os.environ.get("OPENLINEAGE_DISABLED", "").strip().lower() == "true"


def _configured() -> bool:
    """Whether the user configured OpenLineage's client (else the file transport is ours)."""
    from openlineage.client import OpenLineageClient

    if os.environ.get("OPENLINEAGE_URL") or _disabled():
        return True
    if any(k.startswith(OpenLineageClient.DYNAMIC_ENV_VARS_PREFIX) for k in os.environ):
        return True
    return OpenLineageClient._find_yaml_config_path() is not None


def client(root: str | Path) -> OpenLineageClient:
    """The OpenLineage client a run of ``data.root`` ``root`` emits with (see the module's doc)."""
    return _client(str(root), _configured(), os.environ.get("OPENLINEAGE_URL"), os.environ.get("OPENLINEAGE_CONFIG"))


@functools.cache
def _client(root: str, configured: bool, *_: str | None) -> OpenLineageClient:
    """One client per root and configuration in a process (a stream's micro-batches share it)."""
    from openlineage.client import OpenLineageClient

    if configured:
        return OpenLineageClient()
    folder = Path(root) / FOLDER
    folder.mkdir(parents=True, exist_ok=True)
    return OpenLineageClient(
        config={"transport": {"type": "file", "log_file_path": str(folder / EVENTS), "append": False}}
    )


def prepare(root: str | Path) -> None:
    """Make the client of ``root``'s runs, and build (not send) one event, now: a stream does
    before its first micro-batch, so that no micro-batch's latency carries the first-time costs. A
    client that cannot be made is left to the first run's event to report."""
    with contextlib.suppress(Exception):
        client(root)
        RunLineage(root, "prepare", "prepare", {"name": "python", "version": ""}).event("START")


class RunLineage:
    """The OpenLineage events of one run (:class:`spark_jobs.core.runner.StageRun` drives it)."""

    TERMINAL: ClassVar[tuple[str, ...]] = ("COMPLETE", "FAIL", "ABORT")

    def __init__(
        self, root: str | Path, job: str, run_id: str, engine: dict[str, str], streaming: bool = False
    ) -> None:
        began = time.perf_counter()
        self.root = Path(root)
        self.record = LineageRecord(
            namespace=os.environ.get(NAMESPACE_ENV) or DEFAULT_NAMESPACE,
            job=job,
            run_id=run_uuid(run_id),
            parent=Parent.parse(os.environ.get(PARENT_ENV)),
            root=Parent.parse(os.environ.get(ROOT_PARENT_ENV)),
        )
        self.own_run_id = run_id
        self.engine = engine  # name, version and master of what runs it (spark, or python alone)
        self.streaming = streaming
        self.inputs: list[str] = []
        self.writes_too: list[Path] = []  # outputs the stage publishes itself (evaluate's champions)
        self.facts: dict[str, Any] = {}  # the platform's own run facet: stage, params hash, code
        self.ended: str | None = None
        self.seconds = time.perf_counter() - began  # spent on this run's lineage (the client's import included)
        self.sent = 0
        self._broken = _disabled()  # none built

    def reads(self, *locations: str | Path | None) -> None:
        """Add the run's inputs (a folder, a file, an S3 prefix; None is skipped)."""
        self.inputs += [str(x) for x in locations if x is not None and str(x)]

    def writes(self, *folders: Path) -> None:
        """Add folders the stage published itself, beside the runner's publish (in COMPLETE)."""
        self.writes_too += list(folders)

    def start(self) -> None:
        self._emit("START")

    def complete(self, outputs: Sequence[Published], result: GateResult | None) -> None:
        more = [Published(folder, files_under(folder)) for folder in self.writes_too]
        self._emit("COMPLETE", outputs=[*outputs, *more], result=result)

    def fail(
        self,
        message: str,
        stack: str | None = None,
        outputs: Sequence[Published] = (),
        result: GateResult | None = None,
    ) -> None:
        self._emit("FAIL", error=(message, stack), outputs=outputs, result=result)

    def abort(self, why: str) -> None:
        self._emit("ABORT", note=why)

    def closed(self, exc: BaseException | None) -> None:
        """The run's context ends: FAIL for an error (with its message and stack), ABORT for an
        interruption or an end without publishing; nothing when it already ended."""
        if self.ended is not None:
            return
        if isinstance(exc, Exception):
            stack = "".join(traceback.format_exception(exc))
            self.fail(f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}".rstrip(": "), stack)
        elif exc is None:
            self.abort("ended without publishing: nothing new to publish, or it stood aside")
        else:
            self.abort(f"interrupted ({type(exc).__name__})")

    def abort_stale(self, run_ids: Iterable[str]) -> None:
        """ABORT each killed run of this output (``run_ids``: the platform's ids of the runs
        whose staging folders this run found), as its own run of the same job."""
        for stale in run_ids:
            if stale != self.own_run_id:
                self._emit("ABORT", stale=stale)

    def _emit(self, kind: str, stale: str | None = None, note: str | None = None, **parts: Any) -> None:
        own_end = kind in self.TERMINAL and stale is None
        if own_end:
            self.ended = kind
        if self._broken:
            return
        started = time.perf_counter()
        try:
            event = self.event(kind, stale=stale, note=note, **parts)
            sender = client(self.root)
            sender.emit(event)
            self.sent += 1
        except Exception as exc:
            self._broken = True
            reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            log.warning(
                "lineage: the %s event of %s run %s was not sent, nor will this run's next ones: %s",
                kind,
                self.record.job,
                self.own_run_id,
                reason,
            )
        finally:
            self.seconds += time.perf_counter() - started
        if own_end and not self._broken:
            written = getattr(sender.transport.config, "log_file_path", None)  # the file transport's
            where = f"to {written}-*.json" if written else f"by the {sender.transport.kind} transport"
            log.info(
                "lineage: %d OpenLineage events of %s run %s sent %s in %.1f ms",
                self.sent,
                self.record.job,
                self.own_run_id,
                where,
                1000 * self.seconds,
            )

    def event(
        self,
        kind: str,
        stale: str | None = None,
        note: str | None = None,
        outputs: Sequence[Published] = (),
        result: GateResult | None = None,
        error: tuple[str, str | None] | None = None,
    ) -> RunEvent:
        """The ``kind`` event of this run, or of the killed run ``stale`` (the platform's run id);
        ``note`` says why in the platform's facet (an ABORT's reason)."""
        from openlineage.client.event_v2 import Job, Run, RunEvent, RunState

        run_id = self.record.run_id if stale is None else run_uuid(stale)
        return RunEvent(
            eventType=RunState[kind],
            eventTime=datetime.now(UTC).isoformat(timespec="milliseconds"),
            run=Run(runId=run_id, facets=self._run_facets(stale, error, note)),
            job=Job(namespace=self.record.namespace, name=self.record.job, facets=self._job_facets()),
            inputs=self._inputs() if kind != "START" and stale is None else [],
            outputs=[self._output(o, result) for o in outputs],
            producer=PRODUCER,
        )

    def _run_facets(self, stale: str | None, error: tuple[str, str | None] | None, note: str | None) -> dict[str, Any]:
        from openlineage.client import __version__ as client_version
        from openlineage.client.facet_v2 import error_message_run, parent_run, processing_engine_run

        facets: dict[str, Any] = {}
        parent, root = self.record.parent, self.record.root or self.record.parent
        if parent is not None and stale is None:
            facets["parent"] = parent_run.ParentRunFacet(
                run=parent_run.Run(runId=parent.run_id),
                job=parent_run.Job(namespace=parent.namespace, name=parent.job),
                root=parent_run.Root(
                    run=parent_run.RootRun(runId=root.run_id),
                    job=parent_run.RootJob(namespace=root.namespace, name=root.job),
                ),
            )
        facets["processing_engine"] = processing_engine_run.ProcessingEngineRunFacet(
            version=self.engine.get("version", ""),
            name=self.engine.get("name"),
            openlineageAdapterVersion=client_version,
        )
        if error is not None:
            facets["errorMessage"] = error_message_run.ErrorMessageRunFacet(
                message=error[0], programmingLanguage="python", stackTrace=error[1]
            )
        facts = {**self.facts, "run_id": stale or self.own_run_id, "spark_master": self.engine.get("master")}
        if stale is not None:
            note = f"killed: its staging folder was found by run {self.own_run_id}"
        facet = _platform_facet()
        facets[FACET] = facet(**{k: facts.get(k) for k in facet.FIELDS}, note=note)
        return facets

    def _job_facets(self) -> dict[str, Any]:
        from openlineage.client.facet_v2 import job_type_job

        return {
            "jobType": job_type_job.JobTypeJobFacet(
                processingType="STREAMING" if self.streaming else "BATCH", integration="SPARK", jobType="JOB"
            )
        }

    def _inputs(self) -> list[InputDataset]:
        from openlineage.client.event_v2 import InputDataset

        seen = dict.fromkeys(dataset_name(x) for x in self.inputs)
        return [InputDataset(namespace=ns, name=name) for ns, name in seen]

    def _output(self, out: Published, result: GateResult | None) -> OutputDataset:
        from openlineage.client.event_v2 import OutputDataset
        from openlineage.client.facet_v2 import data_quality_assertions_dataset as dq
        from openlineage.client.facet_v2 import output_statistics_output_dataset, schema_dataset

        namespace, name = dataset_name(out.location)
        facets: dict[str, Any] = {}
        columns = schema_fields(out.files)
        if columns is not None:
            facets["schema"] = schema_dataset.SchemaDatasetFacet(
                fields=[schema_dataset.SchemaDatasetFacetFields(name=n, type=t) for n, t in columns]
            )
        checks = assertions(result)
        if checks:
            facets["dataQualityAssertions"] = dq.DataQualityAssertionsDatasetFacet(
                assertions=[dq.Assertion(assertion=a, success=s, column=c) for a, s, c in checks]
            )
        sizes = [p.stat().st_size for p in out.files if p.exists()]
        stats = output_statistics_output_dataset.OutputStatisticsOutputDatasetFacet(
            rowCount=row_count(out.files), size=sum(sizes), fileCount=len(sizes)
        )
        return OutputDataset(namespace=namespace, name=name, facets=facets, outputFacets={"outputStatistics": stats})


@functools.cache
def _platform_facet() -> type:
    """The platform's run facet class, built on the client's ``RunFacet`` when it is first needed (the
    client is imported by the runs that emit, not by every import of this module)."""
    import attr
    from openlineage.client.facet_v2 import RunFacet

    @attr.define
    class _PlatformRunFacet(RunFacet):
        """The platform's own run: its stage, run id, params hash and code version, and how
        its output was published (``manifest``), to join an event to its manifest."""

        FIELDS: ClassVar[tuple[str, ...]] = (
            "stage",
            "run_id",
            "params_hash",
            "package",
            "git_commit",
            "dirty",
            "spark_master",
        )
        stage: str | None = attr.field(default=None)
        run_id: str | None = attr.field(default=None)
        params_hash: str | None = attr.field(default=None)
        package: str | None = attr.field(default=None)
        git_commit: str | None = attr.field(default=None)
        dirty: bool | None = attr.field(default=None)
        spark_master: str | None = attr.field(default=None)
        note: str | None = attr.field(default=None)

        @staticmethod
        def _get_schema() -> str:
            return FACET_SCHEMA

    return _PlatformRunFacet
