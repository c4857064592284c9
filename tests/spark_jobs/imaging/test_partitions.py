"""Cutting a listing into byte-packed tasks, and what a manifest says was read."""

from __future__ import annotations

from pathlib import Path

import pytest

from spark_jobs.core import store
from spark_jobs.core.config import SparkConfig
from spark_jobs.core.ingest_config import IngestConfig
from spark_jobs.imaging import images, partitions
from tests.factories import class_image


class _Broadcast:
    def __init__(self, value: list) -> None:
        self.value = value


def test_chunks_are_sliced_in_batches_in_order() -> None:
    listing = _Broadcast([[("a", None), ("b", None), ("c", None)], [("d", "x")]])
    assert list(partitions.chunk_slices([1, 0], listing, 2)) == [
        [("d", "x")],
        [("a", None), ("b", None)],
        [("c", None)],
    ]


def test_a_slice_is_fetched_and_decoded_into_rows(tmp_path: Path) -> None:
    good, bad = tmp_path / "cat" / "a.png", tmp_path / "cat" / "b.png"
    good.parent.mkdir()
    good.write_bytes(class_image(0, 1))
    bad.write_bytes(b"")
    frame = partitions.decode_frame([(good.as_uri(), "cat"), (bad.as_uri(), "cat")], IngestConfig(image_size=16))
    assert list(frame.columns) == list(partitions.DECODED_FIELDS)
    rows = frame.set_index("source_uri")
    assert rows.loc[good.as_uri(), "reason"] is None
    assert rows.loc[good.as_uri(), "height"] == 16
    assert rows.loc[bad.as_uri(), "reason"] == images.EMPTY


@pytest.mark.spark
def test_a_listing_is_packed_by_bytes_and_keeps_every_file(spark) -> None:
    sizes = [10, 90_000, 10, 10, 90_000]
    files = [store.SourceFile(f"file:///f{i}.png", "x", size, 0.0) for i, size in enumerate(sizes)]
    cfg = SparkConfig(files_max_partition_bytes=100_000, files_open_cost_bytes=0)
    chunks = partitions.plan_chunks(spark, files, cfg)
    assert [uri for chunk in chunks for uri, _ in chunk] == [f.uri for f in files]  # every file once, in order
    assert all(len(chunk) >= 1 for chunk in chunks)
    assert len(chunks) >= 2  # two large files never share a task of 100 kB


def test_a_source_is_described_without_credentials(monkeypatch) -> None:
    files = [store.SourceFile("s3://b/p/a.png", "x", 10, 0.0), store.SourceFile("s3://b/p/b.png", "x", 5, 0.0)]
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9000")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-for-manifests")
    store.s3_client.cache_clear()  # a client made by an earlier test keeps its endpoint
    try:
        described = partitions.describe("s3://b/p", "s3", files)
    finally:
        store.s3_client.cache_clear()
    assert described == {"uri": "s3://b/p", "kind": "s3", "files": 2, "bytes": 15, "endpoint": "http://127.0.0.1:9000"}
    assert "not-for-manifests" not in str(described)
