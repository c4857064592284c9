"""Ingest from s3://bucket/prefix against a real S3-compatible server on 127.0.0.1 (moto)."""

from __future__ import annotations

import os
from pathlib import Path

import boto3
import pytest

from spark_jobs import ingest
from spark_jobs.core import manifest, store
from spark_jobs.imaging import images
from tests.factories import class_image, make_config

pytestmark = [pytest.mark.spark, pytest.mark.s3]


@pytest.fixture(scope="module")
def bucket(s3_server: str) -> str:
    client = boto3.client("s3")
    client.create_bucket(Bucket="raw-images")
    for label in range(3):
        for i in range(25):
            client.put_object(Bucket="raw-images", Key=f"incoming/{label}/{i}.png", Body=class_image(label, i))
    whole = class_image(2, 500, size=64)
    client.put_object(Bucket="raw-images", Key="incoming/2/broken.png", Body=whole[: len(whole) // 2])
    client.put_object(Bucket="raw-images", Key="incoming/1/", Body=b"")  # a console's folder marker
    client.put_object(Bucket="raw-images", Key="elsewhere/0/x.png", Body=class_image(0, 99))
    return "raw-images"


def test_listing_pages_through_more_than_one_thousand_keys(bucket: str) -> None:
    client = boto3.client("s3")
    for i in range(1005):
        client.put_object(Bucket=bucket, Key=f"many/k/{i}.png", Body=b"x")
    listed = list(store.list_s3(f"s3://{bucket}/many"))
    assert len(listed) == 1005
    assert {f.label for f in listed} == {"k"}


def test_ingest_from_s3(spark, bucket: str, tmp_path: Path) -> None:
    cfg = make_config(
        tmp_path,
        f"ingest.source=s3://{bucket}/incoming",
        "ingest.image_size=16",
        "gate.raw.split_tolerance=0.2",
    )
    published = ingest.run(cfg, spark)
    table = spark.read.parquet(str(published / "images.parquet"))
    rows = table.select("source_uri", "label").collect()
    assert len(rows) == 75
    assert all(r["source_uri"].startswith(f"s3://{bucket}/incoming/") for r in rows)
    assert {(r["source_uri"].split("/")[-2], r["label"]) for r in rows} == {(str(i), str(i)) for i in range(3)}
    quarantine = spark.read.parquet(str(published / "quarantine.parquet")).collect()
    assert [(q["source_uri"], q["reason"]) for q in quarantine] == [
        (f"s3://{bucket}/incoming/2/broken.png", images.TRUNCATED)
    ]
    doc = manifest.read_json(published)
    assert doc["inputs"]["source"] == {
        "uri": f"s3://{bucket}/incoming",
        "kind": "s3",
        "files": 76,
        "bytes": doc["inputs"]["source"]["bytes"],
        "endpoint": os.environ["AWS_ENDPOINT_URL"],
    }
    text = (published / "_manifest.json").read_text()
    assert os.environ["AWS_SECRET_ACCESS_KEY"] not in text
    assert os.environ["AWS_ACCESS_KEY_ID"] not in text


def test_missing_object_is_quarantined_not_fatal(bucket: str) -> None:
    result = store.fetch_many([f"s3://{bucket}/incoming/0/nope.png"], threads=2)
    assert isinstance(result[0], store.FetchError)
    assert "NoSuchKey" in str(result[0])


def test_missing_bucket_is_one_clear_error(s3_server: str) -> None:
    with pytest.raises(store.SourceError) as info:
        store.list_source("s3://no-such-bucket/raw")
    message = str(info.value)
    assert message.startswith(f"cannot list s3://no-such-bucket/raw at {s3_server}: NoSuchBucket")
    assert "\n" not in message


def test_unreachable_endpoint_is_one_clear_error(unreachable_s3: str) -> None:
    with pytest.raises(store.SourceError, match=r"cannot list s3://raw-images/incoming at http://127\.0\.0\.1:"):
        store.list_source("s3://raw-images/incoming")


def test_an_unreachable_store_while_fetching_is_not_one_file_s_problem(unreachable_s3: str) -> None:
    """A missing object is that file's problem (quarantined); an unreachable endpoint is the
    store's: fetching raises StoreUnavailable, whose one line the driver finds in a job failure."""
    with pytest.raises(store.StoreUnavailable, match=rf"cannot read bucket raw-images at {unreachable_s3}"):
        store.fetch_many(["s3://raw-images/incoming/0/1.png"], threads=1)
    failure = RuntimeError(
        "An error occurred while calling o123.parquet.\n: org.apache.spark.SparkException: Job aborted ...\n"
        "Traceback (most recent call last):\n  File ...\n"
        "spark_jobs.core.store.StoreUnavailable: "
        f"cannot read bucket b at {unreachable_s3} (after botocore's retries): x\n"
        "\tat org.apache.spark.api.python.BasePythonRunner...\n"
    )
    reason = store.unavailable_reason(failure)
    assert reason == f"cannot read bucket b at {unreachable_s3} (after botocore's retries): x"
    assert store.unavailable_reason(RuntimeError("something else")) is None
