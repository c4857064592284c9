"""The Spark session every stage uses, configured only from the ``spark`` section of params."""

from __future__ import annotations

import atexit
import contextlib
import os
import re
import shutil
import sys
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from spark_jobs.core import jvm, store
from spark_jobs.core.config import ConfigError, SparkConfig, cut

if TYPE_CHECKING:
    from pyspark.sql import SparkSession


def master_url(cfg: SparkConfig) -> str:
    """The master URL; ``local[N]`` gets ``task_max_failures`` since local mode ignores the setting."""
    if re.fullmatch(r"local\[[^,\]]+\]", cfg.master):
        return f"{cfg.master[:-1]},{cfg.task_max_failures}]"
    return cfg.master


def _terminal() -> bool:
    try:
        return sys.stdout.isatty()
    except (AttributeError, ValueError):  # replaced or closed stdout
        return False


def spark_conf(cfg: SparkConfig) -> dict[str, str]:
    """Every Spark setting the platform sets, as strings; ``cfg.conf`` entries win."""
    python = cfg.python or sys.executable
    conf = {
        "spark.pyspark.python": python,
        "spark.driver.memory": cfg.driver_memory,
        "spark.executor.memory": cfg.executor_memory,
        "spark.sql.execution.arrow.pyspark.enabled": "true",
        "spark.sql.execution.arrow.maxRecordsPerBatch": str(cfg.arrow_max_records_per_batch),
        "spark.task.maxFailures": str(cfg.task_max_failures),
        "spark.sql.shuffle.partitions": str(cfg.shuffle_partitions),
        "spark.sql.parquet.compression.codec": cfg.parquet_compression,
        "spark.memory.fraction": str(cfg.memory_fraction),
        "spark.sql.files.maxPartitionBytes": str(cfg.files_max_partition_bytes),
        "spark.sql.files.openCostInBytes": str(cfg.files_open_cost_bytes),
        "spark.python.worker.reuse": "true",
        # Spark's progress bar in a terminal; in a log (Airflow's, a file) the stages' own
        # progress lines (spark_jobs.core.progress) say the same without the redraws.
        "spark.ui.showConsoleProgress": str(_terminal()).lower(),
        "spark.sql.session.timeZone": "UTC",
        # The event log is where each manifest's task metrics come from (spark.ui is off); it
        # goes to a folder of the process's own unless spark.eventLog.dir is set (then it stays).
        "spark.eventLog.enabled": "true",
        "spark.eventLog.compress": "false",
        "spark.eventLog.rolling.enabled": "false",
    }
    conf.update(cfg.conf)
    java = driver_java_options(cfg)
    if java:
        conf["spark.driver.extraJavaOptions"] = java
    return conf


def driver_java_options(cfg: SparkConfig) -> str:
    """The driver JVM's options: the class-data archive `make venv` built (spark_jobs/core/jvm.py), if
    any, the logging configuration (:data:`LOG4J2`), then ``spark.driver_java_options``, then those
    of ``spark.conf``. They apply where the
    JVM starts: here for ``python -m``, and on the spark-submit line of a stage task."""
    logging = f"-Dlog4j2.configurationFile={LOG4J2.as_uri()}"  # first: an option of the params' wins
    return jvm.with_archive(" ".join(o for o in (logging, cfg.driver_java_options, cfg.conf.get(DRIVER_JAVA)) if o))


# Spark's own logging at WARN from the start (spark.log_level applies once the session is up).
LOG4J2 = Path(__file__).resolve().with_name("log4j2.properties")


DRIVER_JAVA = "spark.driver.extraJavaOptions"


_own_event_dirs: list[str] = []


def _own_event_log_dir() -> str:
    """A folder for this process's event log (removed by :func:`remove_own_event_logs`)."""
    folder = tempfile.mkdtemp(prefix="spark-events-")
    if not _own_event_dirs:
        atexit.register(remove_own_event_logs)
    _own_event_dirs.append(folder)
    return Path(folder).as_uri()


def remove_own_event_logs() -> None:
    """Delete the event logs this process made for itself, once Spark has stopped (a running
    context still writes to its log, up to its last event)."""
    from pyspark import SparkContext

    if SparkContext._active_spark_context is not None:
        return
    while _own_event_dirs:
        shutil.rmtree(_own_event_dirs.pop(), ignore_errors=True)


def launched_by_spark_submit() -> bool:
    """True under ``spark-submit``: its ``--master`` (e.g. from Airflow's Spark connection) wins."""
    return "PYSPARK_GATEWAY_PORT" in os.environ


def build_session(cfg: SparkConfig, worker_preload: Sequence[str] = ()) -> SparkSession:
    """A session from params (or the running one, with the same runtime settings applied).
    ``worker_preload``: modules the Python workers' daemon imports before it forks them (see
    :mod:`spark_jobs.core.daemon`)."""
    from pyspark.sql import SparkSession

    from spark_jobs.core.daemon import PRELOAD_ENV

    conf = spark_conf(cfg)
    if worker_preload:
        conf.setdefault("spark.python.daemon.module", "spark_jobs.core.daemon")
        conf[f"spark.executorEnv.{PRELOAD_ENV}"] = ",".join(worker_preload)
    if conf["spark.eventLog.enabled"] == "true" and "spark.eventLog.dir" not in conf:
        conf["spark.eventLog.dir"] = _own_event_log_dir()
    # Python workers must run the venv's interpreter, or they cannot import pandas/pyarrow.
    os.environ["PYSPARK_PYTHON"] = conf["spark.pyspark.python"]
    builder = SparkSession.builder.appName(cfg.app_name)
    if not launched_by_spark_submit():
        builder = builder.master(master_url(cfg))
    for key, value in conf.items():
        builder = builder.config(key, value)
    try:
        spark = builder.getOrCreate()
    except Exception as exc:  # the JVM refused a setting (or could not start): no trace, one line
        raise ConfigError(f"Spark did not start with these settings (spark.*): {_first_line(exc)}") from None
    spark.sparkContext.setLogLevel(cfg.log_level)
    try:
        _check_sql_conf(spark, cfg.conf)
    except ConfigError:
        spark.stop()
        raise
    align_working_directory(spark)
    return spark


def _first_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return cut(lines[0] if lines else type(exc).__name__, 200)


def _check_sql_conf(spark: SparkSession, conf: dict[str, str]) -> None:
    """Apply the user's ``spark.sql.*`` settings through Spark's own checks (its typed config
    entries): a wrong value is a :class:`ConfigError` naming it, before the first query."""
    try:
        spark.conf.get("spark.sql.shuffle.partitions")  # the session state reads every setting given
        for key, value in conf.items():
            if key.startswith("spark.sql.") and spark.conf.isModifiable(key):
                spark.conf.set(key, value)
    except Exception as exc:
        raise ConfigError(f"spark.conf: {_first_line(exc)}") from None


def stop_session(spark: SparkSession) -> None:
    """Stop the session as ``spark.stop()`` does, without waiting for the driver's accumulator
    server to notice: its loop looks for a shutdown request every 0.5 s, and ``spark.stop()``
    waits for that (~0.6 s of every stage's end here). The server closes in the background; no
    task can send it updates once the context has stopped."""
    import threading

    sc = spark.sparkContext
    server, sc._accumulatorServer = getattr(sc, "_accumulatorServer", None), None
    spark.stop()
    if server is not None:
        threading.Thread(target=server.shutdown, name="accumulator-server-shutdown", daemon=True).start()


def align_working_directory(spark: SparkSession) -> None:
    """Relative paths (``data/...``) mean the same folder to Python and to Spark: the local file
    system's working directory is set to this process's. Under ``spark-submit`` the JVM starts
    first, in the launcher's folder, and the stage may have moved to its workspace since
    (``IMAGE_PLATFORM_WORKDIR``, what Airflow sets); without this Spark would write there."""
    jvm = spark.sparkContext._jvm
    hadoop = spark.sparkContext._jsc.hadoopConfiguration()
    local = jvm.org.apache.hadoop.fs.FileSystem.getLocal(hadoop)
    local.setWorkingDirectory(jvm.org.apache.hadoop.fs.Path(Path.cwd().as_uri()))


def spark_metrics(spark: SparkSession, group: str, events_from: int = 0) -> dict[str, Any]:
    """What Spark did for the jobs of job group ``group``: version, master, jobs, stages, tasks,
    failed tasks, and their task metrics summed per Spark stage and in total
    (:func:`task_metrics`, read from the event log from byte ``events_from`` on)."""
    sc = spark.sparkContext
    tracker = sc.statusTracker()
    jobs = tracker.getJobIdsForGroup(group)
    stages = tasks = failed_tasks = 0
    for job_id in jobs:
        info = tracker.getJobInfo(job_id)
        for stage_id in info.stageIds if info else ():
            stage = tracker.getStageInfo(stage_id)
            if stage is not None:
                stages += 1
                tasks += stage.numTasks
                failed_tasks += stage.numFailedTasks
    return {
        "spark_version": spark.version,
        "master": sc.master,
        "app_id": sc.applicationId,
        "default_parallelism": sc.defaultParallelism,
        "jobs": len(jobs),
        "stages": stages,
        "tasks": tasks,
        "failed_tasks": failed_tasks,
        "task_metrics": task_metrics(spark, group, events_from),
    }


# The seed's monitoring list, as the event log names them (``Task Metrics`` of each task end):
# our name -> (path in the event's JSON, scale). CPU times are nanoseconds there, the rest ms/bytes.
_TASK_METRICS: dict[str, tuple[tuple[str, ...], float]] = {
    "executor_run_time_ms": (("Executor Run Time",), 1.0),
    "executor_cpu_time_ms": (("Executor CPU Time",), 1e-6),
    "jvm_gc_time_ms": (("JVM GC Time",), 1.0),
    "executor_deserialize_time_ms": (("Executor Deserialize Time",), 1.0),
    "result_serialization_time_ms": (("Result Serialization Time",), 1.0),
    "shuffle_read_bytes": (("Shuffle Read Metrics", "Remote Bytes Read"), 1.0),
    "shuffle_local_read_bytes": (("Shuffle Read Metrics", "Local Bytes Read"), 1.0),
    "shuffle_write_bytes": (("Shuffle Write Metrics", "Shuffle Bytes Written"), 1.0),
    "memory_bytes_spilled": (("Memory Bytes Spilled",), 1.0),
    "disk_bytes_spilled": (("Disk Bytes Spilled",), 1.0),
    "input_bytes": (("Input Metrics", "Bytes Read"), 1.0),
    "output_bytes": (("Output Metrics", "Bytes Written"), 1.0),
}
PEAK = "peak_execution_memory_bytes"  # a peak: the largest task's, not a sum


_EVENT_LOG_DIRS: dict[str, Path | None] = {}  # per application: its event log folder (None: no log)


def event_log_path(spark: SparkSession) -> Path | None:
    """The event log file this application is writing (None when event logging is off, or
    rolling or compressed: then there is no one plain file to read). The folder is read from the
    Spark conf once per application (a conf copy costs ~15 ms through py4j, and a stream asks at
    every micro-batch)."""
    app = spark.sparkContext.applicationId
    if app not in _EVENT_LOG_DIRS:
        conf = spark.sparkContext.getConf()
        enabled = conf.get("spark.eventLog.enabled", "false").lower() == "true"
        _EVENT_LOG_DIRS[app] = (
            store.local_path(conf.get("spark.eventLog.dir", "/tmp/spark-events")) if enabled else None
        )
    folder = _EVENT_LOG_DIRS[app]
    if folder is None:
        return None
    for name in (f"{app}.inprogress", app):
        if (folder / name).is_file():
            return folder / name
    return None


def event_log_size(spark: SparkSession) -> int:
    """How far the event log is written now: a run's events all come after it."""
    path = event_log_path(spark)
    return path.stat().st_size if path else 0


def _drain_listeners(spark: SparkSession) -> None:
    """Wait until Spark's listeners (the event log among them) have handled every event posted
    so far: the log is flushed at each job end."""
    with contextlib.suppress(Exception):
        spark.sparkContext._jsc.sc().listenerBus().waitUntilEmpty()


def task_metrics(spark: SparkSession, group: str, events_from: int = 0) -> dict[str, Any]:
    """Spark's own task metrics (the event log's ``SparkListenerTaskEnd`` events) of the jobs of
    ``group``, summed per Spark stage and in total; ``{}`` when there is no event log."""
    _drain_listeners(spark)
    path = event_log_path(spark)
    if path is None:
        return {}
    with path.open("rb") as f:
        f.seek(events_from)
        if events_from:
            f.readline()  # the rest of a line flushed before the run started
        return summarise_events(f, group)


def summarise_events(lines: Iterable[bytes], group: str) -> dict[str, Any]:
    """:func:`task_metrics` from the lines of an event log."""
    import json

    wanted = (
        b'{"Event":"SparkListenerJobStart"',
        b'{"Event":"SparkListenerTaskEnd"',
        b'{"Event":"SparkListenerStageCompleted"',
    )
    ours: set[int] = set()
    sums: dict[tuple[int, int], dict[str, float]] = {}
    names: dict[tuple[int, int], str] = {}
    for line in lines:
        if not line.startswith(wanted):
            continue
        event = json.loads(line)
        kind = event["Event"]
        if kind == "SparkListenerJobStart":
            if (event.get("Properties") or {}).get("spark.jobGroup.id") == group:
                ours.update(event.get("Stage IDs", ()))
        elif kind == "SparkListenerStageCompleted":
            info = event["Stage Info"]
            names[(info["Stage ID"], info["Stage Attempt ID"])] = info.get("Stage Name", "")
        elif event["Stage ID"] in ours and event.get("Task Metrics"):
            key = (event["Stage ID"], event["Stage Attempt ID"])
            stage = sums.setdefault(key, dict.fromkeys([*_TASK_METRICS, PEAK, "tasks"], 0.0))
            _add_task(stage, event["Task Metrics"])
    stages = [
        {"stage_id": s, "attempt": a, "name": names.get((s, a), ""), **_rounded(m)}
        for (s, a), m in sorted(sums.items())
    ]
    total = dict.fromkeys([*_TASK_METRICS, PEAK, "tasks"], 0)
    for stage in stages:  # the total of the stages as listed (rounded to whole ms and bytes)
        for key in total:
            total[key] = max(total[key], stage[key]) if key == PEAK else total[key] + stage[key]
    return {"total": total, "stages": stages}


def _add_task(stage: dict[str, float], metrics: dict[str, Any]) -> None:
    for key, (path, scale) in _TASK_METRICS.items():
        node: Any = metrics
        for part in path:
            node = node.get(part, 0) if isinstance(node, dict) else 0
        stage[key] += float(node or 0) * scale
    stage[PEAK] = max(stage[PEAK], float(metrics.get("Peak Execution Memory", 0) or 0))
    stage["tasks"] += 1


def _rounded(metrics: dict[str, float]) -> dict[str, int]:
    return {k: round(v) for k, v in metrics.items()}


@contextlib.contextmanager
def sql_conf(spark: SparkSession, key: str, value: str) -> Iterator[None]:
    """Set a runtime SQL setting for the queries run inside the block (file partitioning is
    planned when an action runs, so the action must be inside too), then restore it."""
    previous = spark.conf.get(key, None)
    spark.conf.set(key, value)
    try:
        yield
    finally:
        if previous is None:
            spark.conf.unset(key)
        else:
            spark.conf.set(key, previous)


def one_task_per_file(folder: Path) -> str:
    """A ``spark.sql.files.maxPartitionBytes`` that reads each Parquet file of ``folder`` as its
    own task. Stages read ingest's tables this way because ingest already cut them into whole
    waves of cores with balanced sizes; Spark's own packing by bytes can make, say, 3 tasks for
    2 cores (one core idle for a third of the stage)."""
    sizes = [p.stat().st_size for p in folder.glob("*.parquet")]
    return str(max(sizes, default=0) + 1)
