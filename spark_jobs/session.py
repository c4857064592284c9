"""The Spark session every stage uses, configured only from the ``spark`` section of params."""

from __future__ import annotations

import contextlib
import os
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from spark_jobs.config import SparkConfig

if TYPE_CHECKING:
    from pyspark.sql import SparkSession


def master_url(cfg: SparkConfig) -> str:
    """The master URL; ``local[N]`` gets ``task_max_failures`` since local mode ignores the setting."""
    if re.fullmatch(r"local\[[^,\]]+\]", cfg.master):
        return f"{cfg.master[:-1]},{cfg.task_max_failures}]"
    return cfg.master


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
        "spark.ui.showConsoleProgress": "false",
        "spark.sql.session.timeZone": "UTC",
    }
    conf.update(cfg.conf)
    return conf


def launched_by_spark_submit() -> bool:
    """True under ``spark-submit``: its ``--master`` (e.g. from Airflow's Spark connection) wins."""
    return "PYSPARK_GATEWAY_PORT" in os.environ


def build_session(cfg: SparkConfig) -> SparkSession:
    """A session from params (or the running one, with the same runtime settings applied)."""
    from pyspark.sql import SparkSession

    conf = spark_conf(cfg)
    # Python workers must run the venv's interpreter, or they cannot import pandas/pyarrow.
    os.environ["PYSPARK_PYTHON"] = conf["spark.pyspark.python"]
    builder = SparkSession.builder.appName(cfg.app_name)
    if not launched_by_spark_submit():
        builder = builder.master(master_url(cfg))
    for key, value in conf.items():
        builder = builder.config(key, value)
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel(cfg.log_level)
    align_working_directory(spark)
    return spark


def align_working_directory(spark: SparkSession) -> None:
    """Relative paths (``data/...``) mean the same folder to Python and to Spark: the local file
    system's working directory is set to this process's. Under ``spark-submit`` the JVM starts
    first, in the launcher's folder, and the stage may have moved to its workspace since
    (``IMAGE_PLATFORM_WORKDIR``, what Airflow sets); without this Spark would write there."""
    jvm = spark.sparkContext._jvm
    hadoop = spark.sparkContext._jsc.hadoopConfiguration()
    local = jvm.org.apache.hadoop.fs.FileSystem.getLocal(hadoop)
    local.setWorkingDirectory(jvm.org.apache.hadoop.fs.Path(Path.cwd().as_uri()))


def spark_metrics(spark: SparkSession) -> dict[str, object]:
    """What Spark did in this application: version, master, jobs, stages, tasks and failures."""
    sc = spark.sparkContext
    tracker = sc.statusTracker()
    jobs = tracker.getJobIdsForGroup(None)
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
    }


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
