"""``_manifest.json``: what made an output folder (stage, code, params, inputs, counts, gate, timings).

The manifest is a frozen, typed :class:`Manifest`, written and read here only (DESIGN.md #5,
STYLE.md #13): other modules use its fields and accessors, never its JSON keys. The typed parts
every record shares (:class:`Record`, :class:`JobVersion`, :class:`Timings`) live here too.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.resources
import json
import subprocess
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from spark_jobs import __version__
from spark_jobs.core.atomic import write_file
from spark_jobs.core.config import params_hash
from spark_jobs.core.ingest_config import IngestConfig
from spark_jobs.core.store import SourceError

MANIFEST = "_manifest.json"
BUILD_INFO = "_build_info.json"  # written into the --py-files zip by plugins/image_platform/package.py


class RecordError(SourceError):
    """A record on disk that this version cannot read (older, or edited); the message says which and
    why. A :class:`SourceError`: the stage stops with exit code 2 and that one line."""


class Record(BaseModel):
    """A typed JSON record: frozen, unknown keys refused (a renamed key fails where it is written)."""

    model_config = ConfigDict(frozen=True, extra="forbid")


R = TypeVar("R", bound=Record)


class JobVersion(Record):
    """The code that made a record: package version, git commit, and the build's content hash when packaged."""

    package: str
    git_commit: str
    dirty: bool
    content_sha256_16: str | None = None

    def label(self) -> str:
        """One short string for table columns: ``0.1.0+15d8cfdd3027[-dirty]``."""
        return f"{self.package}+{self.git_commit[:12]}{'-dirty' if self.dirty else ''}"


class Timings(Record):
    """The stage runner's phase clock (seconds); stages add their own measures beside them."""

    model_config = ConfigDict(frozen=True, extra="allow")

    started_at: str
    finished_at: str
    startup_s: float | None = None
    read_s: float = 0.0
    work_s: float = 0.0
    gate_s: float = 0.0
    publish_s: float = 0.0
    total_s: float = 0.0


class GateSummary(Record):
    success: bool
    expectations: int
    failed: list[str] = Field(default_factory=list)


class DriftRecord(Record):
    """A scoring run's (or stream window's) drift test (:mod:`spark_jobs.ml.drift`): how, on which
    embedding layer, its statistic (the domain classifier's ROC AUC) against the threshold, the rows
    on each side and the verdict: ``drifted`` True or False, or None with ``outcome`` "not tested"
    (and ``note`` saying why), which is never a pass. ``consequence``: what the verdict did
    (``gate.predictions.drift``: ``warn`` publishes, ``fail`` fails the gate, ``off``: not tested)."""

    method: str
    layer: str
    statistic: float | None = None
    threshold: float
    reference_rows: int
    batch_rows: int
    drifted: bool | None = None
    outcome: Literal["passed", "drifted", "not tested"]
    note: str = ""
    consequence: Literal["off", "warn", "fail"] = "warn"
    window: bool = False  # a stream's rolling window (its last drift.window_rows rows), not one batch


class ModelSays(Record):
    """What one model said of a scoring run's images: its version and kind, its mean confidence
    (the mean probability of its predicted labels; None for an anomaly model) and its class mix
    (each predicted label's share of the rows)."""

    version: str
    kind: str
    mean_confidence: float | None = None
    class_mix: dict[str, float] = Field(default_factory=dict)


class ShadowRecord(Record):
    """A scoring run's (or micro-batch's) shadow challenger beside its champion: the images both
    scored (``rows``), the share on which they agree (the same predicted label; None with no row),
    and what each said."""

    rows: int
    agreement: float | None = None
    champion: ModelSays
    shadow: ModelSays


class Parent(Record):
    """A run that started this one: ``namespace/job/run id`` as OpenLineage's integrations pass it."""

    namespace: str
    job: str
    run_id: str

    @classmethod
    def parse(cls, text: str | None) -> Parent | None:
        """``namespace/job/run id`` (the job may hold slashes); None for nothing, or text not so shaped."""
        parts = (text or "").strip().split("/")
        if len(parts) < 3 or not all(parts):
            return None
        return cls(namespace=parts[0], job="/".join(parts[1:-1]), run_id=parts[-1])

    def label(self) -> str:
        return f"{self.namespace}/{self.job}/{self.run_id}"


class LineageRecord(Record):
    """What a manifest or card records of its run's OpenLineage events: where to find them."""

    namespace: str
    job: str
    run_id: str  # the events' runId (a UUID)
    parent: Parent | None = None  # the Airflow task run that started it
    root: Parent | None = None  # the Airflow DAG run above it


class Manifest(Record):
    """``_manifest.json`` of one published output folder."""

    stage: str
    run_id: str | None = None
    job_version: JobVersion
    params: dict[str, Any]
    params_hash: str
    inputs: dict[str, Any]
    counts: dict[str, Any]  # the stage's own tallies (rows, files_seen, rows_by_split_class, ...)
    gate: GateSummary
    timings: Timings | None = None  # set by the runner at publish time
    spark: dict[str, Any] = Field(default_factory=dict)
    drift: DriftRecord | None = None  # a scoring run's drift test
    shadow: ShadowRecord | None = None  # a scoring run's shadow challenger (score.shadow)
    lineage: LineageRecord | None = None  # its OpenLineage run (set by the runner at publish time)

    def count(self, *names: str) -> int:
        """The sum of the named integer counts (absent ones count 0)."""
        return sum(int(self.counts.get(n) or 0) for n in names)

    def rows_by_split_class(self) -> dict[str, dict[str, int]] | None:
        """Rows per split and class as the stage's gate counted them (None: an older manifest)."""
        return self.counts.get("rows_by_split_class")

    def ingest_settings(self) -> IngestConfig:
        """The ingest settings an ingest table was made with (its own params), or those of the
        ingest table a features table was made from (its input)."""
        if self.stage == "ingest":
            return IngestConfig.model_validate(self.params["ingest"])
        return IngestConfig.model_validate(self.inputs["ingest"]["settings"])

    def ingest_manifest_sha256(self) -> str:
        """The hash of the ingest manifest a features table was made from."""
        return str(self.inputs["ingest"]["manifest_sha256"])

    def spark_cores(self) -> int:
        return int(self.spark.get("default_parallelism") or 1)


def git_stamp(folder: Path) -> dict[str, Any]:
    """``{"git_commit", "dirty"}`` of the code under ``folder``: the one version stamp, used for a
    stage's manifest and for the ``--py-files`` build (``plugins/image_platform/package.py``)."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=folder, capture_output=True, text=True, check=True, timeout=10
        ).stdout.strip()
        dirty = bool(
            subprocess.run(
                ["git", "status", "--porcelain", "--", "."], cwd=folder, capture_output=True, text=True, timeout=10
            ).stdout.strip()
        )
    except (OSError, subprocess.SubprocessError):
        commit, dirty = "unknown", False
    return {"git_commit": commit or "unknown", "dirty": dirty}


@functools.cache
def job_version() -> JobVersion:
    """Package version and git commit of the running code (from a build stamp when packaged)."""
    stamp = importlib.resources.files("spark_jobs").joinpath(BUILD_INFO)  # also inside a zip
    if stamp.is_file():
        return JobVersion(package=__version__, **json.loads(stamp.read_text()))
    return JobVersion(package=__version__, **git_stamp(Path(__file__).resolve().parents[1]))  # the whole package


def job_version_label() -> str:
    """:func:`job_version` as one short string for table columns: ``0.1.0+15d8cfdd3027[-dirty]``."""
    return job_version().label()


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def file_hash(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def build(
    stage: str,
    params: dict[str, Any],
    inputs: dict[str, Any],
    counts: dict[str, Any],
    gate: dict[str, Any],
    spark: dict[str, Any] | None = None,
    run_id: str | None = None,
) -> Manifest:
    """The manifest of one stage run (its timings are set when it is published)."""
    return Manifest(
        stage=stage,
        run_id=run_id,
        job_version=job_version(),
        params=params,
        params_hash=params_hash(params),
        inputs=inputs,
        counts=counts,
        gate=GateSummary(**gate),
        spark=spark or {},
    )


def write_json(path: Path, doc: Any, sort_keys: bool = True) -> Path:
    """``doc`` (a record, or plain JSON data: metrics, validation results) as indented JSON at
    ``path``, written atomically (:func:`spark_jobs.core.atomic.write_file`)."""
    if isinstance(doc, BaseModel):
        doc = doc.model_dump(mode="json")
    return write_file(path, json.dumps(doc, indent=2, sort_keys=sort_keys, default=str) + "\n")


def write(folder: Path, doc: Any, name: str = MANIFEST, sort_keys: bool = True) -> Path:
    return write_json(folder / name, doc, sort_keys)


def read_record(path: Path | str, kind: type[R], what: str, fix: str, data: bytes | None = None) -> R:
    """``path`` (or ``data``, the bytes read from it elsewhere, e.g. an S3 object) as a ``kind``
    record; :class:`RecordError` naming the file, the first problem and ``fix`` when it is not one
    (written by an older version of the platform, or edited)."""
    try:
        return kind.model_validate_json(Path(path).read_bytes() if data is None else data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "(top level)"
        raise RecordError(
            f"{what} {path} cannot be read by this version ({where}: {first['msg']}; "
            f"{exc.error_count()} problem(s)), probably written by an older one: {fix}"
        ) from None


def read(folder: Path) -> Manifest:
    """The typed manifest of a published folder."""
    return read_record(folder / MANIFEST, Manifest, "manifest", "run its stage again")


def read_json(folder: Path) -> dict[str, Any]:
    """The manifest as plain JSON, for tests and benchmarks that inspect the file itself."""
    return json.loads((folder / MANIFEST).read_text())
