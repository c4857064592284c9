"""Near-duplicate pairing: LSH keys, connected components, and the Spark job on planted copies of
real photographs (every planted pair found, no pair of distinct pictures)."""

from __future__ import annotations

import numpy as np
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
    rows = []
    for item in items:
        thumb, vectors = audit.signature(item.image)
        rows.append((item.name, f"file:///corpus/{item.name}.png", thumb, vectors))
    signatures = spark.createDataFrame(
        rows, "image_id string, source_uri string, dup_thumb binary, dup_vectors array<float>"
    )
    cfg = AuditConfig()  # the defaults: made for photographs
    pairs = near_duplicates.verified(signatures, near_duplicates.candidates(signatures, cfg), cfg).collect()
    found = {(r["image_id_a"], r["image_id_b"]) for r in pairs}
    planted = {tuple(sorted((f"base-{i.base}", i.name))) for i in items if i.transform}
    assert all(a.split("-")[1] == b.split("-")[1] for a, b in found), found  # no pair of two bases
    assert len(found & planted) >= 0.9 * len(planted), sorted(planted - found)
    row = pairs[0]
    assert row["method"] == near_duplicates.METHOD
    assert row["distance"] == pytest.approx(1 - row["score"])
    assert row["source_uri_a"].endswith(f"{row['image_id_a']}.png")
    clusters = near_duplicates.clusters(sorted(found))
    assert all(cluster == min(cluster, image) for image, cluster in clusters.items())


@pytest.mark.spark
def test_each_image_keeps_its_partners_with_the_most_collisions(spark) -> None:
    """A table of look-alikes: image x collides with everyone, most with its copy x2."""
    rows = [("x", "x2", 40), ("a", "x", 9), ("b", "x", 8), ("c", "x", 7), ("a", "b", 30), ("b", "c", 2)]
    hits = spark.createDataFrame(rows, "image_id_a string, image_id_b string, hits long")
    kept = {(r[0], r[1]) for r in near_duplicates.nearest(hits, 1).collect()}
    # x keeps x2; a and b keep each other; c keeps its best, x (a pair stays when either end keeps it)
    assert kept == {("x", "x2"), ("a", "b"), ("c", "x")}
    assert {(r[0], r[1]) for r in near_duplicates.nearest(hits, 10).collect()} == {(a, b) for a, b, _ in rows}
