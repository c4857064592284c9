"""The one stage runner (DESIGN.md #12): every stage writes into a staging folder, gates what it
wrote, and publishes it by one atomic rename with its manifest; every phase is timed and Spark's
task metrics of the run are recorded.

    with StageRun(STAGE, root, spark, target=root / STAGE) as run:
        with run.phase("read"):
            ...                                   # list / read the inputs
        with run.phase("work"):
            ...                                   # write into run.staging
        with run.phase("gate"):
            result = run.validate(suite(stats(...))) # GX on statistics of what was written
        return run.finish(result, run.manifest(params, inputs, counts, result))

Layout under ``data.root`` (and beside any other target, e.g. ``models/.staging/``)::

    <target>                      published output (+ _manifest.json or card.json)
    .staging/<name>-<run_id>/     being written, beside the target (same filesystem)
    rejected/<stage>-<run_id>/    output that failed its gate, kept for inspection
    gates/<stage>/                last validation: summary.txt, validation.json, docs/index.html

``timings`` in every manifest: ``startup_s`` (process start -> Spark session ready; under
spark-submit the process is the JVM that launched this one), ``read_s``, ``work_s``, ``gate_s``,
``publish_s`` (up to the final rename) and ``total_s`` (since the process started), plus
``started_at``/``finished_at``. A stage run inside a process that did not start for it (a test
calling ``run(cfg, spark)``) counts from the run's own start and has no ``startup_s``.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import logging
import os
import shutil
import socket
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from spark_jobs.core import manifest as manifests
from spark_jobs.core.manifest import R
from spark_jobs.quality.gate import Batch, GateFailed, GateResult, validate

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

log = logging.getLogger(__name__)

PHASES = ("read", "work", "gate", "publish")
GATE = ("great_expectations",)  # what a stage with a gate preloads (see :func:`preload`)
TORCH = ("torch",)
VALIDATION = "_validation.json"
STAGING = ".staging"
LOCKS = ".locks"  # beside the outputs: one lock file per output (StageRun)


@dataclass(frozen=True)
class Launch:
    """When the process running a stage started, and when its Spark session was ready."""

    started: float  # epoch seconds
    session_ready: float | None = None


_launch: Launch | None = None  # set by :func:`launched` for the stage a process runs


@contextlib.contextmanager
def launched(started: float, session_ready: float | None) -> Iterator[None]:
    """Within the block, stage runs count their wall time from ``started`` (the process start)."""
    global _launch
    previous, _launch = _launch, Launch(started, session_ready)
    try:
        yield
    finally:
        _launch = previous


def process_started() -> float:
    """Epoch seconds at which this process started, or under ``spark-submit`` the JVM that
    started it (its parent): the whole start-up of the stage, as the user waits for it."""
    import psutil

    me = psutil.Process()
    if "PYSPARK_GATEWAY_PORT" in os.environ:
        parent = me.parent()
        if parent is not None and "java" in parent.name().lower():
            return parent.create_time()
    return me.create_time()


def preload(modules: Sequence[str]) -> threading.Thread:
    """Import ``modules`` in a background thread (while the JVM starts, say): the first real use
    then finds them loaded instead of paying their import on the critical path."""
    import importlib

    def load() -> None:
        for name in modules:
            try:
                importlib.import_module(name)
            except Exception as exc:  # the real import, later, reports it properly
                log.debug("preloading %s failed: %s", name, exc)

    thread = threading.Thread(target=load, name="preload", daemon=True)
    thread.start()
    return thread


def _iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).isoformat(timespec="seconds")


def new_run_id() -> str:
    return datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ") + "-" + uuid.uuid4().hex[:8]


# ---- publishing a folder: the one way -------------------------------------------------------

_AT_FDCWD = -100
_RENAME_EXCHANGE = 2


def _exchange(a: Path, b: Path) -> bool:
    """Swap two directory entries in one step (Linux ``renameat2(RENAME_EXCHANGE)``); False where
    the system or filesystem cannot."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    if renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP, errno.EPERM):
        return False
    raise OSError(code, os.strerror(code), str(b))


def _remove(path: Path) -> None:
    if path.is_symlink() or path.is_file():
        path.unlink()
    elif path.exists():
        shutil.rmtree(path)


def replace_dir(new: Path, target: Path) -> Path:
    """Make the folder ``new`` visible as ``target``: readers see the old folder or the new one,
    never a mix and never nothing (an atomic exchange where the OS offers it, else two renames).
    ``new`` must be on ``target``'s filesystem (a sibling folder); the old content is deleted."""
    target.parent.mkdir(parents=True, exist_ok=True)
    if not (target.exists() or target.is_symlink()):
        new.rename(target)
        return target
    if _exchange(new, target):
        _remove(new)  # now the old output
        return target
    old = target.with_name(f".{target.name}.old-{uuid.uuid4().hex[:8]}")
    target.rename(old)
    new.rename(target)
    _remove(old)
    return target


def copy_dir(source: Path, target: Path, staging_root: Path, extra: dict[str, Any] | None = None) -> Path:
    """Replace ``target`` by a copy of ``source`` plus the ``extra`` files (name -> JSON document,
    or text), copied first into ``staging_root`` (on ``target``'s filesystem)."""
    staged = staging_root / f"{target.name}-{uuid.uuid4().hex[:8]}"
    staging_root.mkdir(parents=True, exist_ok=True)
    try:
        shutil.copytree(source, staged, symlinks=True)
        for name, content in (extra or {}).items():
            if isinstance(content, str):
                (staged / name).write_text(content)
            else:
                manifests.write(staged, content, name)
        return replace_dir(staged, target)
    finally:
        if staged.exists():
            shutil.rmtree(staged, ignore_errors=True)
        with contextlib.suppress(OSError):
            staging_root.rmdir()  # when no other copy is being staged there


# ---- the run --------------------------------------------------------------------------------


class OutputBusy(RuntimeError):
    """Another run of the stage holds its output's lock; this one waited and gave up."""


def _open_lock(lock_file: Path) -> int:
    lock_file.parent.mkdir(parents=True, exist_ok=True)
    return os.open(lock_file, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o644)


def _holder(fd: int) -> str:
    return os.pread(fd, 200, 0).decode(errors="replace").strip() or "another process"


def take_lock(lock_file: Path, wait: float, busy: str, holder: str) -> int:
    """An exclusive ``fcntl.flock`` on ``lock_file`` (its descriptor: closing it releases the
    lock, and so does the process's end, however it ends), waiting up to ``wait`` seconds; then
    :class:`OutputBusy` saying ``busy`` and who holds it. The file then names ``holder``."""
    import fcntl

    fd = _open_lock(lock_file)
    deadline = time.monotonic() + wait
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            break
        except BlockingIOError:
            if time.monotonic() >= deadline:
                held_by = _holder(fd)
                os.close(fd)
                raise OutputBusy(f"{busy} ({held_by}); waited {wait:g} s (data.lock_wait_s): try again later") from None
            time.sleep(0.2)
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{holder}, pid {os.getpid()} on {socket.gethostname()}".encode(), 0)
    return fd


def lock_holder(lock_file: Path) -> str | None:
    """Who holds ``lock_file`` now (what the holder wrote in it), or None when nobody does."""
    import fcntl

    if not lock_file.exists():
        return None
    fd = _open_lock(lock_file)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return _holder(fd)
    finally:
        os.close(fd)
    return None


class StageRun:
    """One run of a stage: its output's lock, staging folder, phase clock, gate, manifest and publish.

    A run holds an exclusive lock (``fcntl.flock``) on ``<target's folder>/.locks/<name>.lock``
    from start to end: one run at a time per output. A second run waits up to ``lock_wait``
    seconds, then raises :class:`OutputBusy`. Holding the lock, a run removes the staging folders
    earlier runs of the output left (killed runs: none of them can be alive).

    ``target`` is the folder the run publishes (replaced as a whole by :meth:`finish`), and its
    staging folder is ``<target's folder>/.staging/<name or target's name>-<run_id>``; a stage
    that appends runs to tables instead (score) publishes sub-folders of its staging with
    :meth:`finish_append`.
    ``root`` is ``data.root``: where rejected outputs and gate reports go."""

    def __init__(
        self,
        stage: str,
        root: str | Path,
        spark: SparkSession | None,
        target: Path,
        name: str | None = None,
        lock_wait: float = 600.0,
    ) -> None:
        self.stage = stage
        self.spark = spark
        self.root = Path(root)
        self.target = Path(target)
        self.run_id = new_run_id()
        self._name = name or self.target.name
        self.staging = self.target.parent / STAGING / f"{self._name}-{self.run_id}"
        self.lock_file = self.target.parent / LOCKS / f"{self._name}.lock"
        self._lock_wait = lock_wait
        self._lock_fd: int | None = None
        self.rejected = self.root / "rejected" / f"{stage}-{self.run_id}"
        self.report_dir = self.root / "gates" / stage
        self.seconds: dict[str, float] = {}
        self.extra: dict[str, Any] = {}
        launch = _launch
        self._created = time.time()
        self._origin = launch.started if launch else self._created
        self._session_ready = launch.session_ready if launch else None
        self._group = f"{stage}-{self.run_id}"
        self._events_offset = 0

    # context: staging exists inside, and is gone after (published, rejected or discarded)
    def __enter__(self) -> StageRun:
        self._lock()
        try:
            for stale in self.staging.parent.glob(f"{self._name}-*"):
                log.info("removing the staging folder of a run that did not finish: %s", stale)
                shutil.rmtree(stale, ignore_errors=True)
            self.staging.mkdir(parents=True)
        except BaseException:
            self._unlock()
            raise
        if self.spark is not None:
            from spark_jobs.core.session import event_log_size

            self._events_offset = event_log_size(self.spark)
            self.spark.sparkContext.setJobGroup(self._group, f"{self.stage} run {self.run_id}")
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            if self.spark is not None:
                self.spark.sparkContext.setLocalProperty("spark.jobGroup.id", None)
                self.spark.sparkContext.setLocalProperty("spark.job.description", None)
            if self.staging.exists():
                shutil.rmtree(self.staging, ignore_errors=True)
        finally:
            self._unlock()

    def _lock(self) -> None:
        """Take the output's lock, waiting up to ``lock_wait`` seconds for another run to end."""
        busy = f"{self.target} is being written by another {self.stage} run"
        self._lock_fd = take_lock(self.lock_file, self._lock_wait, busy, f"run {self.run_id}")

    def _unlock(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # releases the flock
            self._lock_fd = None

    def path(self, name: str) -> str:
        """Where to write table ``name`` while staging."""
        return str(self.staging / name)

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

    def validate(self, batches: Sequence[Batch]) -> GateResult:
        """Validate ``batches`` (the stage's suite) with Great Expectations; the report goes to
        ``gates/<stage>/`` (inside the stage's ``gate`` phase, with the statistics it checks)."""
        return validate(self.stage, batches, self.report_dir)

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
        """``doc`` with the phase clock up to now in its ``timings``."""
        return doc.model_copy(update={"timings": manifests.Timings(**self.timings())})

    def finish(
        self, result: GateResult | None, doc: manifests.Record, name: str = manifests.MANIFEST, blocking: bool = True
    ) -> Path:
        """Publish the staging folder as the target with ``doc`` in it when the gate passed
        (``result`` None: a stage without a gate); otherwise keep it under ``rejected/`` and raise
        :class:`GateFailed`. ``blocking`` False: publish whatever the verdict (a report of it)."""
        with self.phase("publish"):
            self._verdict(result, doc, name, blocking)
            manifests.write(self.staging, self._timed(doc), name)  # timed up to the final rename
            replace_dir(self.staging, self.target)
        self._published(result, self.target)
        return self.target

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
                target = table / f"run_date={run_date}" / f"run_id={self.run_id}"
                target.parent.mkdir(parents=True, exist_ok=True)
                folder.rename(target)
                out.append(target)
        self._published(result, *(p for p in out if p))
        return out

    def _verdict(self, result: GateResult | None, doc: manifests.Record, name: str, blocking: bool) -> None:
        """Keep the validation beside the output; a failed blocking gate rejects the run here."""
        if result is None:
            return
        manifests.write_json(self.staging / VALIDATION, result.raw)
        if blocking and not result.success:
            manifests.write(self.staging, self._timed(doc), name)
            self.reject(result)

    @staticmethod
    def _published(result: GateResult | None, *where: Path) -> None:
        if result is not None:
            log.info("%s", result.summary())
        for path in where:
            log.info("published %s", path)

    def reject(self, result: GateResult) -> None:
        """Move the staged output to ``rejected/`` and raise :class:`GateFailed` with the report."""
        self.rejected.parent.mkdir(parents=True, exist_ok=True)
        self.staging.rename(self.rejected)
        raise GateFailed(self.stage, result.docs or self.report_dir / "summary.txt", self.rejected, result.summary())
