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
    assert 0.4 < drift.domain_classifier(reference, alike).auc < 0.6
    assert drift.domain_classifier(reference, moved).auc > 0.8
    assert drift.domain_classifier(reference, moved, seed=0).auc == drift.domain_classifier(reference, moved).auc


def test_a_verdict_is_drifted_above_the_threshold_and_never_a_pass_below_min_rows() -> None:
    rng = np.random.default_rng(1)
    reference = rng.normal(size=(400, 8)).astype(np.float32)
    cfg = drift.DriftConfig(threshold=0.9, min_rows=50)
    moved, domain = drift.judged(cfg, "backbone", reference, (rng.normal(size=(120, 8)) + 3.0).astype(np.float32))
    assert (moved.outcome, moved.drifted, moved.batch_rows, moved.reference_rows) == ("drifted", True, 120, 400)
    assert moved.statistic is not None
    assert moved.statistic > 0.9
    assert domain is not None
    assert domain.scores.shape == (120,)
    assert domain.scores.min() > 0.5
    alike, _ = drift.judged(cfg, "backbone", reference, rng.normal(size=(120, 8)).astype(np.float32))
    assert (alike.outcome, alike.drifted) == ("passed", False)
    few, none = drift.judged(cfg, "backbone", reference, (rng.normal(size=(49, 8)) + 3.0).astype(np.float32))
    assert (few.outcome, few.drifted, few.statistic, none) == ("not tested", None, None, None)
    assert "fewer than drift.min_rows (50)" in few.note
    other, _ = drift.judged(cfg, "backbone", reference, rng.normal(size=(60, 4)).astype(np.float32))
    assert other.outcome == "not tested"
    assert "4 values against a reference of 8" in other.note


def test_the_picture_is_a_png_and_sizes_that_can_never_test_are_refused() -> None:
    rng = np.random.default_rng(2)
    reference, batch = rng.normal(size=(50, 6)), rng.normal(size=(30, 6)) + 1
    png = drift.picture(reference, batch, np.linspace(0, 1, 30), "drift")
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ValueError, match=r"drift.min_rows \(500\) is more than"):
        drift.DriftConfig(min_rows=500, window_rows=400)
