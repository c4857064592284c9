"""The drift test's driver side: the sampled rows, the verdict and what it does to the gate, the
pictures, the stream's window of embeddings and the reference a run reads."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pyarrow as pa
import pytest

from spark_jobs.ml import drift
from spark_jobs.params import Config
from spark_jobs.scoring import drifting
from tests.factories import with_overrides


def _rows(vectors: np.ndarray, start: int = 0, ids: list[str] | None = None) -> pa.Table:
    ids = ids or [f"{i:064x}" for i in range(start, start + len(vectors))]
    return pa.table(
        {
            "image_id": ids,
            "source_uri": [f"file:///nowhere/{i}.png" for i in ids],
            "embedding": pa.array([list(map(float, v)) for v in vectors], pa.list_(pa.float32())),
        }
    ).cast(drifting.SAMPLED)


def _cfg(*overrides: str) -> Config:
    return with_overrides(Config(), "drift.min_rows=40", *overrides)


REFERENCE = np.random.default_rng(0).normal(size=(300, 6)).astype(np.float32)


def test_the_matrix_keeps_row_order() -> None:
    rows = _rows(np.arange(8, dtype=np.float32).reshape(4, 2), ids=["b", "a", "d", "c"])
    assert drifting.matrix(rows).tolist() == [[0, 1], [2, 3], [4, 5], [6, 7]]
    assert drifting.matrix(drifting.SAMPLED.empty_table()).shape == (0, 0)


def test_warn_records_a_drifted_batch_with_its_pictures_and_fail_adds_a_gate_check() -> None:
    moved = _rows(np.random.default_rng(1).normal(size=(60, 6)).astype(np.float32) + 4)
    ref = drifting.Reference(REFERENCE, "backbone")
    warned = drifting.check(ref, moved, _cfg())
    assert (warned.record.outcome, warned.record.consequence, warned.batches) == ("drifted", "warn", [])
    assert [g.title.split(" (")[0] for g in warned.galleries] == ["Embedding drift", "Images most unlike the reference"]
    assert len(warned.galleries[1].thumbs) == drifting.MOST_UNLIKE
    assert warned.galleries[0].thumbs[0].png[:4] == b"\x89PNG"
    assert warned.shown()["outcome"] == "drifted"
    failed = drifting.check(ref, moved, _cfg("gate.predictions.drift=fail"), pictures=False)
    [batch] = failed.batches
    assert batch.name == "embedding_drift"
    assert batch.frame["domain_auc"].tolist() == [failed.record.statistic]
    assert failed.galleries  # drifted: the pictures are drawn even when a stream asks only for those


def test_a_like_batch_passes_without_pictures_when_asked_and_no_reference_is_not_tested() -> None:
    alike = _rows(np.random.default_rng(2).normal(size=(60, 6)).astype(np.float32))
    ref = drifting.Reference(REFERENCE, "backbone")
    passed = drifting.check(ref, alike, _cfg("gate.predictions.drift=fail"), window=True, pictures=False)
    assert (passed.record.outcome, passed.record.window, passed.galleries) == ("passed", True, [])
    assert len(passed.batches) == 1  # the check is there, and holds
    missing = drifting.check(
        drifting.Reference(None, "", "no reference kept"), alike, _cfg("gate.predictions.drift=fail")
    )
    assert (missing.record.outcome, missing.record.note, missing.batches) == ("not tested", "no reference kept", [])
    assert missing.shown()["why"] == "no reference kept"


def test_the_window_keeps_the_last_rows_of_one_model_version() -> None:
    window = drifting.EmbeddingWindow(5)
    window.add(_rows(np.zeros((3, 2)), 0), "v1")
    joined = window.with_batch(_rows(np.ones((4, 2)), 3), "v1")
    assert joined.num_rows == 5
    assert drifting.matrix(joined)[:, 0].tolist() == [0, 0, 1, 1, 1, 1][-5:]
    assert window.rows.num_rows == 3  # with_batch only looks
    assert window.with_batch(_rows(np.ones((2, 2)), 7), "v2").num_rows == 2  # another model: its own window


def test_the_reference_a_run_reads_is_its_embedding_model_s_checked_by_sha(tmp_path: Path) -> None:
    record = drift.write_reference(tmp_path, REFERENCE, ["a"] * len(REFERENCE), "backbone")
    card = SimpleNamespace(reference=record, version="cnn-1")
    scorer = SimpleNamespace(embedder=(tmp_path, card))
    got = drifting.reference(scorer)
    assert (got.layer, got.rows) == ("backbone", len(REFERENCE))
    (tmp_path / record.file).write_bytes(b"not the reference")
    broken = drifting.reference(scorer)
    assert broken.embeddings is None
    assert "sha256 differs" in broken.why
    older = drifting.reference(SimpleNamespace(embedder=(tmp_path, SimpleNamespace(reference=None, version="cnn-0"))))
    assert "keeps no drift reference" in older.why


@pytest.mark.parametrize("rows", [0, 39])
def test_fewer_rows_than_min_rows_are_not_tested_never_passed(rows: int) -> None:
    few = _rows(np.random.default_rng(3).normal(size=(rows, 6)).astype(np.float32))
    checked = drifting.check(drifting.Reference(REFERENCE, "backbone"), few, _cfg("gate.predictions.drift=fail"))
    assert (checked.record.outcome, checked.record.drifted, checked.batches) == ("not tested", None, [])


def test_off_tests_nothing_and_says_so() -> None:
    moved = _rows(np.random.default_rng(4).normal(size=(60, 6)).astype(np.float32) + 4)
    checked = drifting.check(drifting.Reference(REFERENCE, "backbone"), moved, _cfg("gate.predictions.drift=off"))
    assert (checked.record.outcome, checked.record.consequence, checked.batches) == ("not tested", "off", [])
    assert checked.record.note == "gate.predictions.drift: off"
