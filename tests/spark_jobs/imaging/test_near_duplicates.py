"""Near-duplicate pairing: LSH keys, connected components, and the Spark job on planted copies of
real photographs (every planted pair found, no pair of distinct pictures)."""

from __future__ import annotations

import hashlib

import numpy as np
import pandas as pd
import pytest

from spark_jobs.core.ingest_config import AuditConfig
from spark_jobs.imaging import audit, near_duplicates
from tests.near_duplicate_corpus import TRANSFORMS, corpus


def test_connected_components_are_named_by_their_smallest_id() -> None:
    pairs = [("d", "b"), ("b", "c"), ("x", "y"), ("e", "d")]
    assert near_duplicates.clusters(pairs) == {
        "b": "b",
        "c": "b",
        "d": "b",
        "e": "b",
        "x": "x",
        "y": "x",
    }
    assert near_duplicates.clusters([]) == {}


def test_band_keys_are_deterministic_and_equal_for_equal_views() -> None:
    cfg = AuditConfig(bands=8, bits=10)
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((3, audit.VIEWS * audit.VECTOR_DIM)).astype(np.float32)
    vectors[1] = vectors[0]
    centre = np.zeros(audit.VECTOR_DIM, dtype=np.float32)
    keys = near_duplicates.band_keys(vectors, near_duplicates.hyperplanes(cfg), cfg.bands, cfg.bits, centre)
    again = near_duplicates.band_keys(vectors, near_duplicates.hyperplanes(cfg), cfg.bands, cfg.bits, centre)
    assert keys.shape == (3, audit.VIEWS, cfg.bands)
    assert (keys == again).all()
    assert (keys[0] == keys[1]).all()
    assert keys.max() < 2**cfg.bits
    assert (keys[0] != keys[2]).any()


def test_view_cosines_are_the_best_whole_view_against_views_both_ways() -> None:
    rng = np.random.default_rng(1)
    a, b = (rng.standard_normal((4, audit.VIEWS * audit.VECTOR_DIM)).astype(np.float32) for _ in range(2))
    expected = []
    for x, y in zip(a, b, strict=True):
        vx, vy = x.reshape(audit.VIEWS, -1), y.reshape(audit.VIEWS, -1)
        expected.append(max(max(float(vx[0] @ v) for v in vy), max(float(vy[0] @ v) for v in vx)))
    assert near_duplicates.view_cosines(a, b) == pytest.approx(expected)


@pytest.mark.spark
def test_the_spark_job_finds_the_planted_copies_and_nothing_else(spark) -> None:
    items = corpus(3 * len(TRANSFORMS))
    rows, names = [], {}  # image ids are sha256 digests, as ingest's: the pairing reads their first digits
    for item in items:
        thumb, vectors = audit.signature(item.image)
        image_id = hashlib.sha256(item.name.encode()).hexdigest()
        names[image_id] = item.name
        rows.append((image_id, f"file:///corpus/{item.name}.png", thumb, vectors))
    signatures = spark.createDataFrame(
        rows, "image_id string, source_uri string, dup_thumb binary, dup_vectors array<float>"
    )
    cfg = AuditConfig()  # the defaults: made for photographs
    pairs = near_duplicates.verified(signatures, near_duplicates.candidates(signatures, cfg), cfg).collect()
    found = {tuple(sorted((names[r["image_id_a"]], names[r["image_id_b"]]))) for r in pairs}
    planted = {tuple(sorted((f"base-{i.base}", i.name))) for i in items if i.transform}
    assert all(a.split("-")[1] == b.split("-")[1] for a, b in found), found  # no pair of two bases
    assert len(found & planted) >= 0.9 * len(planted), sorted(planted - found)
    row = pairs[0]
    assert row["method"] == near_duplicates.METHOD
    assert row["distance"] == pytest.approx(1 - row["score"])
    assert row["source_uri_a"].endswith(f"{names[row['image_id_a']]}.png")
    clusters = near_duplicates.clusters(sorted(found))
    assert all(cluster == min(cluster, image) for image, cluster in clusters.items())


@pytest.mark.spark
def test_each_image_keeps_its_partners_with_the_most_collisions(spark) -> None:
    """A table of look-alikes: image x collides with everyone, most with its copy x2."""
    a, b, c, x, x2 = 1, 2, 3, 24, 25
    rows = [(x, x2, 40), (a, x, 9), (b, x, 8), (c, x, 7), (a, b, 30), (b, c, 2)]
    hits = spark.createDataFrame(rows, "id_a long, id_b long, hits long")
    kept = {(r[0], r[1]) for r in near_duplicates.nearest(hits, 1).collect()}
    # x keeps x2; a and b keep each other; c keeps its best, x (a pair stays when either end keeps it)
    assert kept == {(x, x2), (a, b), (c, x)}
    assert {(r[0], r[1]) for r in near_duplicates.nearest(hits, 10).collect()} == {(a, b) for a, b, _ in rows}


def _entries(rows: list[tuple[int, int, int, int]]) -> pd.DataFrame:
    """``(id, whole, bucket, order)`` entries of ``(id, view, band, key)`` rows, in the order the
    pairing sorts them (bucket, order)."""
    frame = pd.DataFrame(rows, columns=["id", "view", "band", "key"])
    return pd.DataFrame(
        {"id": frame["id"], "whole": frame["view"] == 0, "bucket": frame["band"] * 2**10 + frame["key"], "order": 0.0}
    )


def test_a_bucket_names_its_band_and_key_in_one_long() -> None:
    keys = np.array([[[0, 5, 2**54 - 1]], [[0, 5, 2**54 - 1]]], dtype=np.int64)  # (images, views, bands)
    named = near_duplicates.buckets(keys, 54)
    assert named[0, 0].tolist() == [0, (1 << 54) | 5, (2 << 54) | (2**54 - 1)]
    assert (named[0] == named[1]).all()
    assert named.min() >= 0  # 512 bands of 54 bits: still a positive long
    assert near_duplicates.buckets(np.full((1, 1, 512), 2**54 - 1, dtype=np.int64), 54).min() > 0


def test_bucket_neighbours_with_a_whole_view_are_candidates() -> None:
    frame = _entries(
        [
            (7, 0, 0, 5), (3, 2, 0, 5), (9, 1, 0, 5),  # bucket (0, 5): 7 whole, 3 and 9 crops
            (4, 0, 0, 6),  # a bucket of one
            (4, 0, 1, 5), (4, 3, 1, 5), (8, 0, 1, 5),  # bucket (1, 5): 4 twice (never with itself)
        ]
    )  # fmt: skip
    pairs = near_duplicates.bucket_pairs(frame, reach=5)
    # 3 and 9 are both crops: not a pair; 4 meets 8 twice (its whole view and a crop, both near 8's whole view)
    assert sorted(map(tuple, pairs.to_numpy())) == [(3, 7), (4, 8), (4, 8), (7, 9)]
    assert sorted(map(tuple, near_duplicates.bucket_pairs(frame, reach=1).to_numpy())) == [(3, 7), (4, 8)]
    assert near_duplicates.bucket_pairs(frame.iloc[:1], reach=5).empty


def test_a_bucket_split_across_batches_is_paired_whole() -> None:
    frame = _entries([(1, 0, 0, 1), (2, 0, 0, 1), (3, 0, 0, 1), (4, 0, 0, 2), (5, 0, 0, 2), (6, 0, 0, 3)])
    whole = sorted(map(tuple, near_duplicates.bucket_pairs(frame, reach=5).to_numpy()))
    for cut in range(1, len(frame)):
        batches = [frame.iloc[:cut].reset_index(drop=True), frame.iloc[cut:].reset_index(drop=True)]
        found = pd.concat(list(near_duplicates._neighbours(iter(batches), reach=5)))
        assert sorted(map(tuple, found.to_numpy())) == whole == [(1, 2), (1, 3), (2, 3), (4, 5)]
