"""Shared fixtures: one Spark session for the run, a real S3 server on loopback, image files."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator

import pytest

from tests.factories import free_port, make_config, write_class_tree


@pytest.fixture(scope="session")
def s3_server() -> Iterator[str]:
    """A real S3-compatible server (moto) on 127.0.0.1; AWS_* variables point boto3 at it.

    Started before Spark so the executors' Python workers inherit the same environment."""
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    saved = {k: os.environ.get(k) for k in _AWS_ENV}
    os.environ.update(
        AWS_ENDPOINT_URL=endpoint,
        AWS_ACCESS_KEY_ID="test-key-id",
        AWS_SECRET_ACCESS_KEY="test-secret-not-for-manifests",
        AWS_DEFAULT_REGION="us-east-1",
    )
    try:
        yield endpoint
    finally:
        server.stop()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


_AWS_ENV = ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION")


@pytest.fixture(scope="session")
def spark(s3_server: str, tmp_path_factory: pytest.TempPathFactory):
    """One local[2] session for all Spark tests, built by the same code the jobs use."""
    from spark_jobs.core.session import build_session

    cfg = make_config(tmp_path_factory.mktemp("spark"))
    session = build_session(cfg.spark)
    assert os.environ["PYSPARK_PYTHON"] == sys.executable
    yield session
    session.stop()


@pytest.fixture
def unreachable_s3(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """AWS settings pointing at a loopback port nobody listens on (one attempt, no retries);
    the per-process S3 client is rebuilt before and after."""
    from spark_jobs.core import store

    endpoint = f"http://127.0.0.1:{free_port()}"
    monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "k")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "s")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    store.s3_client.cache_clear()
    try:
        yield endpoint
    finally:
        store.s3_client.cache_clear()


INGESTED_CLASSES, INGESTED_PER_CLASS = 3, 30


@pytest.fixture(scope="session")
def ingested(spark, tmp_path_factory: pytest.TempPathFactory):
    """A published ingest output (3 classes x 30 real PNGs, 24px, ingested at 32px) for the
    stages downstream of ingest; tests link it into their own ``data.root``."""
    from spark_jobs import ingest

    root = tmp_path_factory.mktemp("ingested")
    write_class_tree(root / "src", INGESTED_CLASSES, INGESTED_PER_CLASS)
    cfg = make_config(root, f"ingest.source={root / 'src'}", "gate.raw.min_per_class=5", "gate.raw.split_tolerance=0.2")
    return ingest.run(cfg, spark)


@pytest.fixture(scope="session")
def airflow_db(s3_server: str, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """The environment of an Airflow process of these tests (a scratch AIRFLOW_HOME: see
    tests/orchestration/airflow_setup.py; the S3 server's AWS settings included) with its SQLite
    metadata DB migrated and the ``dvc`` pool (size 1), once per session."""
    import subprocess

    from tests.orchestration.airflow_setup import BIN, airflow_environment

    env = airflow_environment(tmp_path_factory.mktemp("airflow-home"))
    for cmd in (["db", "migrate"], ["pools", "set", "dvc", "1", "DVC commands, one at a time"]):
        subprocess.run([str(BIN / "airflow"), *cmd], env=env, capture_output=True, check=True, timeout=600)
    return env


@pytest.fixture(scope="session")
def trained_pipeline(s3_server: str, airflow_db: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The one trained pipeline of the session: the training DAG triggered through Airflow's REST
    API on a scratch workspace (tests/orchestration/training_run.py). Tests that need trained
    models, a versioned workspace or a champion read it; only the scoring DAG tests add to it."""
    from tests.orchestration.training_run import train

    return train(tmp_path_factory.mktemp("trained"), airflow_db, s3_server)
