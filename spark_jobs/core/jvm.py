"""The Spark driver JVM's class-data archive (Java's Application Class-Data Sharing): the classes a
stage's JVM loads at start-up, parsed and verified once, mapped from a file by every later JVM.
Here it cuts a cold Spark start to about half (a trivial local session: 16.6 s -> 9.6 s).

``make venv`` (and the project image) builds it once for the installed Java and pyspark:

    python -m spark_jobs.core.jvm

It runs a representative Spark session (SQL, Parquet, a shuffle, Arrow-batched Python functions,
an MLlib fit, the event log) in a JVM started with ``-XX:ArchiveClassesAtExit``, which writes the
archive when it exits. Every driver JVM the stages start (``python -m spark_jobs.<stage>``,
spark-submit from Airflow) then maps it (:func:`java_options`). It is keyed by the Java runtime and
the pyspark jars: after an upgrade of either there is none (the JVM starts the usual way, nothing
else changes) until it is built again. It only changes how fast the JVM starts, never what runs.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

log = logging.getLogger(__name__)


def java_binary() -> Path | None:
    """The ``java`` spark-submit runs: ``$JAVA_HOME/bin/java``, else the one on PATH."""
    home = os.environ.get("JAVA_HOME")
    found = Path(home) / "bin" / "java" if home else (Path(p) if (p := shutil.which("java")) else None)
    return found.resolve() if found and found.exists() else None


def _jars() -> Path:
    import pyspark

    return Path(pyspark.__file__).parent / "jars"


def archive_key() -> str | None:
    """What the archive depends on: the Java runtime (its binary and module image) and the pyspark
    jars (names and sizes). None without Java."""
    java = java_binary()
    if java is None:
        return None
    digest = hashlib.sha256(str(java).encode())
    modules = java.parent.parent / "lib" / "modules"
    if modules.exists():
        digest.update(f"{modules.stat().st_size}:{modules.stat().st_mtime_ns}".encode())
    for jar in sorted(_jars().glob("*.jar")):
        digest.update(f"{jar.name}:{jar.stat().st_size}".encode())
    return digest.hexdigest()[:16]


def archive_path() -> Path | None:
    """Where the archive of this Java and pyspark lives (in this environment's ``share/``)."""
    key = archive_key()
    return None if key is None else Path(sys.prefix) / "share" / "image-platform" / f"spark-driver-{key}.jsa"


def java_options() -> str:
    """JVM options for a Spark driver: the archive when it is built, else nothing. A JVM that cannot
    use it (another JVM build, changed jars) starts without it, silently."""
    path = archive_path()
    if path is None or not path.is_file():
        return ""
    return f"-XX:SharedArchiveFile={path} -Xshare:auto -Xlog:cds=off -Xlog:cds+dynamic=off"


def with_archive(options: str | None) -> str:
    """``options`` (e.g. a user's ``spark.driver.extraJavaOptions``) with the archive in front."""
    return " ".join(o for o in (java_options(), options or "") if o)


_WARM_UP = """
import os, sys
from pyspark.sql import SparkSession, functions as F
from pyspark.ml.classification import LogisticRegression
from pyspark.ml.feature import PCA, StandardScaler
from pyspark.ml.functions import array_to_vector

out = sys.argv[2]
spark = (
    SparkSession.builder.master("local[2]")
    .config("spark.driver.extraJavaOptions", "-XX:ArchiveClassesAtExit=" + sys.argv[1])
    .config("spark.ui.enabled", "false")
    .config("spark.eventLog.enabled", "true")
    .config("spark.eventLog.dir", "file://" + out)
    .config("spark.eventLog.rolling.enabled", "false")
    .config("spark.sql.execution.arrow.pyspark.enabled", "true")
    .getOrCreate()
)
frame = spark.range(200, numPartitions=2).withColumn("label", (F.col("id") % 3).cast("string"))
frame = frame.withColumn("v", F.array(F.col("id").cast("float"), (F.col("id") % 7).cast("float")))

def same(batches):
    yield from batches

arrow = frame.mapInArrow(same, frame.schema)
arrow.withColumn("_t", F.lit("a")).write.partitionBy("_t").parquet(out + "/t")
table = spark.read.schema(frame.schema).parquet(out + "/t/_t=a")
table.groupingSets([["label"], []], "label").agg(F.count_distinct("id"), F.sum(F.when(F.col("id") > 3, 1))).collect()
table.mapInPandas(same, frame.schema).toArrow()
vectors = table.select(array_to_vector("v").alias("x"), (F.col("id") % 2).cast("double").alias("y"))
StandardScaler(inputCol="x", outputCol="s").fit(vectors)
PCA(k=1, inputCol="x", outputCol="p").fit(vectors)
LogisticRegression(featuresCol="x", labelCol="y", maxIter=3).fit(vectors).transform(vectors).count()
from pyspark import SparkContext

gateway = SparkContext._gateway
spark.stop()
gateway.shutdown()
gateway.proc.stdin.close()
gateway.proc.wait()  # the archive is written as the JVM exits
"""


def build() -> Path:
    """Build the archive of this Java and pyspark (about a minute); returns its path."""
    target = archive_path()
    if target is None:
        raise RuntimeError("no java found (JAVA_HOME or PATH): the class-data archive needs the JVM Spark runs on")
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as work:
        partial = Path(work) / "archive.jsa"
        env = {**os.environ, "PYSPARK_PYTHON": sys.executable}
        done = subprocess.run(
            [sys.executable, "-c", _WARM_UP, str(partial), work], env=env, capture_output=True, text=True, timeout=900
        )
        if done.returncode != 0 or not partial.is_file():
            raise RuntimeError(f"building the class-data archive failed:\n{done.stderr[-3000:]}")
        shutil.move(str(partial), target.with_suffix(".partial"))
        target.with_suffix(".partial").replace(target)  # readers see no archive or the whole one
    for stale in target.parent.glob("spark-driver-*.jsa"):
        if stale != target:
            stale.unlink()
    return target


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        path = build()
    except RuntimeError as exc:
        log.error("%s", exc)
        return 1
    log.info("Spark driver class-data archive: %s (%d MB)", path, path.stat().st_size // 2**20)
    return 0


if __name__ == "__main__":
    sys.exit(main())
