"""The driver JVM's options: the class-data archive when it is built, params' options after it."""

from __future__ import annotations

from pathlib import Path

from spark_jobs.core import jvm
from spark_jobs.core.config import SparkConfig
from spark_jobs.core.session import DRIVER_JAVA, LOG4J2, driver_java_options, spark_conf


def test_no_archive_no_option(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(jvm, "archive_path", lambda: tmp_path / "missing.jsa")
    assert jvm.java_options() == ""
    assert jvm.with_archive("-Xss4m") == "-Xss4m"
    # The logging configuration alone (Spark's start-up at WARN).
    logging_only = f"-Dlog4j2.configurationFile={LOG4J2.as_uri()}"
    assert driver_java_options(SparkConfig(driver_java_options="")) == logging_only
    assert spark_conf(SparkConfig(driver_java_options=""))[DRIVER_JAVA] == logging_only
    assert LOG4J2.exists()


def test_the_archive_comes_first_then_params_then_conf(tmp_path: Path, monkeypatch) -> None:
    archive = tmp_path / "spark-driver-x.jsa"
    archive.write_bytes(b"archive")
    monkeypatch.setattr(jvm, "archive_path", lambda: archive)
    cfg = SparkConfig(driver_java_options="-XX:TieredStopAtLevel=1", conf={DRIVER_JAVA: "-Dmine=1"})
    options = spark_conf(cfg)[DRIVER_JAVA].split()
    assert options[0] == f"-XX:SharedArchiveFile={archive}"
    assert options[-2:] == ["-XX:TieredStopAtLevel=1", "-Dmine=1"]


def test_the_archive_is_keyed_by_java_and_the_jars() -> None:
    key = jvm.archive_key()
    assert key is not None  # Java is installed here
    assert len(key) == 16
    assert jvm.archive_path().name == f"spark-driver-{key}.jsa"
    assert jvm.archive_key() == key  # the same runtime, the same key
