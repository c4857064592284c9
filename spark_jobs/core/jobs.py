"""The ``main()`` every stage shares: parse args, load params, open Spark, run, map errors to exit codes."""

from __future__ import annotations

import atexit
import contextlib
import errno
import logging
import os
import re
import shutil
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

from spark_jobs.core import launch, lineage, locks, runner
from spark_jobs.core.config import ConfigError, Params, arg_parser, cut, load_config
from spark_jobs.core.store import SourceError, unavailable_reason
from spark_jobs.core.verdict import EXIT_GATE_FAILED, GateFailed

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

EXIT_OK = 0
EXIT_BAD_INPUT = 2  # params or source that cannot be used: fix the input, do not retry
EXIT_STORE_UNAVAILABLE = 4  # the object store could not be reached: retry later
EXIT_BUSY = 5  # another run of the stage holds its output (locks.OutputBusy): retry later
EXIT_STORAGE = 6  # data.root's file system refused a write mid-run (full, over quota): free space, retry

# What the file system says when it refuses a write, as Python's OSError or in a JVM's message.
_STORAGE_ERRNOS = {errno.ENOSPC: "No space left on device", errno.EDQUOT: "Disk quota exceeded"}
_STORAGE_ERRNOS |= {errno.EROFS: "Read-only file system"}
_STORAGE_TEXT = re.compile("|".join(re.escape(t) for t in _STORAGE_ERRNOS.values()))

log = logging.getLogger("spark_jobs")

Modules = Sequence[str] | Callable[[Any], Sequence[str]]


def exit_process(code: int) -> NoReturn:
    """End a stage's process with ``code`` once its work is done, without the interpreter's
    teardown: the exit handlers run (logging flushed, temporary files and event logs removed),
    threads that must finish are joined and the standard streams flushed, then the process ends.
    Freeing the ~2,800 modules a stage has loaded (torch, Great Expectations, pandas) one by one
    takes ~1.2 s here, for nothing: the system reclaims a process's memory at once. The JVM
    exits on its own when its stdin, this process's pipe, closes."""
    for thread in threading.enumerate():
        if thread is not threading.main_thread() and not thread.daemon:
            thread.join()
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):  # a closed or broken pipe: nothing left to say
            stream.flush()
    os._exit(code)


def storage_fault(exc: BaseException) -> str | None:
    """The file system's refusal inside ``exc`` (full, over quota, read-only), as Python raised it
    or as a Spark job's message carries it from the JVM, in one line; else None."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno in _STORAGE_ERRNOS:
            what = exc.strerror or _STORAGE_ERRNOS[exc.errno]
            return f"{what}: {exc.filename}" if exc.filename else what
        found = _STORAGE_TEXT.search(str(exc))
        if found:
            line = next(x for x in str(exc).splitlines() if found.group(0) in x)
            return cut(line.strip(" \t:"), 300)
        exc = exc.__cause__ or exc.__context__
    return None


def check_writable(root: Path, folder: Path) -> None:
    """:class:`ConfigError` unless ``folder`` (``root`` or its deepest existing parent) may be
    written to: a read-only or foreign ``data.root`` is refused before Spark starts, without
    making anything."""
    if not os.access(folder, os.W_OK | os.X_OK):
        where = "" if folder == root else f" ({folder}, where it would be made)"
        reason = "read-only file system" if _read_only(folder) else "permission denied"
        raise ConfigError(f"data.root {root}: cannot write there{where}: {reason}")


def _read_only(folder: Path) -> bool:
    try:
        return bool(os.statvfs(folder).f_flag & os.ST_RDONLY)
    except OSError:
        return False


def check_local_paths(cfg: Params, needs_spark: bool = True) -> None:
    """:class:`ConfigError` for local paths a run would otherwise fail on with a traceback, before
    Spark starts: a ``data.root`` below a file or where nothing can be written, and for a local
    master a ``spark.python`` that is not an executable (on a cluster the interpreter is the
    executors', which need not exist here)."""
    root = Path(cfg.data.root)
    for folder in (root, *root.absolute().parents):
        if folder.exists():
            if not folder.is_dir():
                raise ConfigError(f"data.root {cfg.data.root}: {folder} is a file, not a folder")
            check_writable(root, folder)
            break
    python = cfg.spark.python
    if needs_spark and python is not None and cfg.spark.master.startswith("local"):
        found = shutil.which(os.path.expanduser(python))
        if found is None:
            raise ConfigError(f"spark.python {python}: no executable interpreter there")


def written_folders(outputs: list[Path], root: str | Path) -> list[Path]:
    """Every folder a stage writes into or deletes inside: its ``outputs``, with their staging
    and lock folders beside them, and under ``data.root`` its gate reports, the rejected outputs
    and the training checkpoints."""
    root = Path(root)
    folders = list(outputs)
    for target in outputs:
        folders += [target.parent / runner.STAGING, target.parent / runner.LOCKS]
    return [*folders, root / "gates", root / runner.REJECTED, root / ".checkpoints", root / runner.PINNED]


def check_sources_untouched(stage: str, cfg: Params, outputs: list[Path]) -> None:
    """:class:`ConfigError` when a folder ``stage`` writes (:func:`written_folders` of its
    ``outputs``) would be, lie inside or contain ``ingest.source`` or ``score.inbox`` (a local
    folder, or a manifest CSV's folder): no stage may write into, or delete anything inside, a
    user's input."""
    from spark_jobs.core.store import is_manifest, is_s3

    def real(path: str | Path) -> Path:  # the params' paths are resolved (config.resolve_path): links here
        return Path(path).resolve()

    sources = []
    for key, uri in (("ingest.source", cfg.ingest.source), ("score.inbox", cfg.score.inbox)):
        if not is_s3(uri):
            sources.append((key, real(Path(uri).parent if is_manifest(uri) else uri)))
    for folder in written_folders(outputs, cfg.data.root):
        out = real(folder)
        for key, source in sources:
            if out == source or out.is_relative_to(source) or source.is_relative_to(out):
                raise ConfigError(
                    f"{stage} would write to {folder}, which overlaps {key} {source}: inputs are never written; "
                    "point data.root (or the stage's output) elsewhere"
                )


def setup_logging() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    for noisy in ("py4j", "botocore", "urllib3", "great_expectations", "openlineage"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def run_stage(
    stage: str,
    argv: list[str] | None,
    body: Callable[[Any, SparkSession | None], object],
    *,
    params: type[Params],
    outputs: Callable[[Any], list[Path]],
    description: str,
    precheck: Callable[[Any], object] | None = None,
    needs_spark: bool = True,
    preload: Modules = (),
    worker_preload: Modules = (),
) -> int:
    """Run one stage from its command line; returns the process exit code. ``params``: what the
    stage reads of params.yaml; ``outputs``: the folders it publishes (a function of its params),
    which must not overlap its inputs; ``preload``: the heavy modules the driver will need (torch,
    Great Expectations for its gate), in the order it needs them, imported in the background while
    the JVM starts; ``worker_preload``: those the stage's Python tasks import, loaded once per
    executor before its workers fork (each a list, or a function of the params giving one)."""
    started = launch.process_started()
    setup_logging()
    args = arg_parser(stage, description).parse_args(argv)
    try:
        cfg = load_config(args.params, args.overrides, params)
        check_local_paths(cfg, needs_spark)
        check_sources_untouched(stage, cfg, outputs(cfg))
        if precheck is not None:
            precheck(cfg)  # input errors surface before Spark starts
    except (ConfigError, SourceError) as exc:
        return _refused(stage, exc)
    spark = None
    try:
        spark = _start(cfg, needs_spark, preload, worker_preload)
        with launch.launched(started, time.time()):
            body(cfg, spark)
        return EXIT_OK
    except GateFailed as exc:
        log.error("%s", exc)
        return EXIT_GATE_FAILED
    except locks.OutputBusy as exc:
        log.error("%s: %s", stage, exc)
        return EXIT_BUSY
    except (ConfigError, SourceError) as exc:  # inputs found unusable once the job could look at them
        return _refused(stage, exc)
    except Exception as exc:
        full = storage_fault(exc)  # a full disk met by the driver or the JVM, one line
        if full is not None:
            log.error("%s: data.root's file system refused a write, nothing published: %s", stage, full)
            return EXIT_STORAGE
        reason = unavailable_reason(exc)  # an outage met by the executors, one line, no Java frames
        if reason is None:
            raise
        log.error("%s: object store unavailable, nothing published: %s", stage, reason)
        return EXIT_STORE_UNAVAILABLE
    finally:
        if spark is not None:
            from spark_jobs.core.session import remove_own_event_logs, stop_session

            stop_session(spark)
            remove_own_event_logs()


def _refused(stage: str, exc: Exception) -> int:
    """Params or inputs that cannot be used: each line of the reason, and the exit code for it."""
    for line in str(exc).splitlines():
        log.error("%s: %s", stage, line)
    return EXIT_BAD_INPUT


def _start(cfg: Params, needs_spark: bool, preload: Modules, worker_preload: Modules) -> SparkSession | None:
    """The preloads under way and, for a stage that needs one, the Spark session."""
    if needs_spark:
        import pyspark.sql  # noqa: F401  (before the preload thread, which imports parts of it too)

    modules = [*(preload(cfg) if callable(preload) else preload), *lineage.PRELOAD]  # the stage's own first
    launch.preload(modules)
    if not needs_spark:
        return None
    from spark_jobs.core.session import build_session

    return build_session(cfg.spark, worker_preload(cfg) if callable(worker_preload) else worker_preload)
