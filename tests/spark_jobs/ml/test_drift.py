"""The drift reference: a stratified, seeded sample, written beside a model and read back only
when it is the file its card records."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from spark_jobs.ml import drift


def test_the_sample_keeps_each_class_s_share_and_the_seed_decides_it() -> None:
    ids = [f"id{i:04d}" for i in range(1000)]
    labels = ["a"] * 700 + ["b"] * 250 + ["c"] * 50
    chosen = drift.stratified(ids, labels, 100, seed=0)
    by_id = dict(zip(ids, labels, strict=True))
    assert len(chosen) == 100
    assert chosen == sorted(chosen)
    assert Counter(by_id[i] for i in chosen) == {"a": 70, "b": 25, "c": 5}
    assert drift.stratified(ids, labels, 100, seed=0) == chosen
    assert drift.stratified(ids, labels, 100, seed=1) != chosen
    assert drift.stratified(ids[::-1], labels[::-1], 100, seed=0) == chosen  # the input's order does not matter
    assert drift.stratified(ids[:10], labels[:10], 100, seed=0) == ids[:10]  # fewer rows than asked: all


def test_a_rare_class_keeps_a_row_and_the_total_stays_bounded() -> None:
    ids = [f"id{i:03d}" for i in range(203)]
    labels = ["a"] * 100 + ["b"] * 100 + ["c"] * 3
    chosen = drift.stratified(ids, labels, 10, seed=0)
    counts = Counter(dict(zip(ids, labels, strict=True))[i] for i in chosen)
    assert sum(counts.values()) == 10
    assert counts["c"] == 1


def test_a_reference_reads_back_only_as_its_card_records_it(tmp_path: Path) -> None:
    vectors = np.arange(12, dtype=np.float32).reshape(4, 3)
    record = drift.write_reference(tmp_path, vectors, ["x", "y", "x", "x"], "backbone")
    assert (record.rows, record.dim, record.layer, record.per_class) == (4, 3, "backbone", {"x": 3, "y": 1})
    got, labels = drift.read_reference(tmp_path, record)
    assert np.array_equal(got, vectors)
    assert labels == ["x", "y", "x", "x"]
    (tmp_path / record.file).write_bytes((tmp_path / record.file).read_bytes() + b"!")
    with pytest.raises(drift.ReferenceError, match="sha256 differs"):
        drift.read_reference(tmp_path, record)
    import hashlib
    import io

    pickled = io.BytesIO()
    np.save(pickled, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    (tmp_path / record.file).write_bytes(pickled.getvalue())
    forged = record.model_copy(update={"sha256": hashlib.sha256(pickled.getvalue()).hexdigest()})
    with pytest.raises(drift.ReferenceError, match="not a drift reference"):
        drift.read_reference(tmp_path, forged)  # an object array is never unpickled


def test_the_domain_classifier_tells_a_moved_batch_from_the_reference_and_not_a_like_one() -> None:
    rng = np.random.default_rng(0)
    reference = rng.normal(size=(600, 16)).astype(np.float32)
    alike = rng.normal(size=(200, 16)).astype(np.float32)
    moved = (rng.normal(size=(200, 16)) + np.r_[1.5, np.zeros(15)]).astype(np.float32)
    assert 0.4 < drift.domain_auc(reference, alike) < 0.6
    assert drift.domain_auc(reference, moved) > 0.8
    assert drift.domain_auc(reference, moved, seed=0) == drift.domain_auc(reference, moved, seed=0)
