"""An S3 outage in the middle of ingest: the S3 server (moto, on 127.0.0.1) is stopped once the
job has listed the bucket, while the executors fetch. The job ends after botocore's retries with
one clear error naming the bucket and the endpoint and its own exit code (4: retry later), no
Java stack trace of an uncaught failure, nothing quarantined and nothing published."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path

import boto3
import pytest

from tests.factories import REPO, class_image, free_port

pytestmark = [pytest.mark.slow, pytest.mark.s3]


def test_an_s3_outage_during_ingest_is_one_clear_error(tmp_path: Path) -> None:
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    aws = {
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_ACCESS_KEY_ID": "outage-key-id",
        "AWS_SECRET_ACCESS_KEY": "outage-secret",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_MAX_ATTEMPTS": "3",  # botocore's retries, kept short
    }
    stopped = threading.Event()
    try:
        keys = {k.lower(): aws[k] for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")}
        client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", **keys)
        client.create_bucket(Bucket="outage-images")
        for label in range(3):
            for i in range(200):
                client.put_object(Bucket="outage-images", Key=f"raw/{label}/{i}.png", Body=class_image(label, i))
        cmd = [
            sys.executable, "-m", "spark_jobs.ingest",
            "--params", str(REPO / "params.yaml"),
            "--set", f"data.root={tmp_path / 'data'}",
            "--set", "ingest.source=s3://outage-images/raw",
            "--set", "spark.master=local[2]",
            "--set", "spark.files_max_partition_bytes=65536",
        ]  # fmt: skip
        env = {**os.environ, **aws, "PYSPARK_PYTHON": sys.executable}
        proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, stderr=subprocess.PIPE, text=True)
        lines = []
        assert proc.stderr is not None
        for line in proc.stderr:  # the server goes away once the bucket is listed
            lines.append(line)
            if "listed 600 files" in line and not stopped.is_set():
                server.stop()
                stopped.set()
        code = proc.wait(600)
    finally:
        if not stopped.is_set():
            server.stop()
    err = "".join(lines)
    assert stopped.is_set(), err[-3000:]
    assert code == 4, err[-5000:]
    errors = [line for line in lines if " ERROR spark_jobs" in line]
    assert len(errors) == 1, errors
    assert "ingest: object store unavailable, nothing published: cannot read bucket outage-images" in errors[0]
    assert f"at {endpoint} (after botocore's retries)" in errors[0]
    assert "Py4JJavaError" not in err  # no uncaught failure's Java stack
    assert "outage-secret" not in err
    assert not (tmp_path / "data" / "ingest").exists()  # nothing published
    assert not list((tmp_path / "data").glob(".staging/*"))  # nor left half-written
