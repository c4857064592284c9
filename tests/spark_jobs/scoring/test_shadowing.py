"""A shadow beside the champion: the agreement, each model's confidence and class mix, the
pictures of their disagreements, and the shadow runs evaluate reads back."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from spark_jobs.core import manifest
from spark_jobs.scoring import shadowing


def _said(rows: list[tuple[str, str, float | None]]) -> pa.Table:
    return pa.table(
        {
            "image_id": [r[0] for r in rows],
            "source_uri": [f"file:///nowhere/{r[0]}.png" for r in rows],
            "predicted_label": [r[1] for r in rows],
            "probability": pa.array([r[2] for r in rows], pa.float32()),
        }
    )


CHAMPION = _said([("a", "0", 0.9), ("b", "1", 0.8), ("c", "1", 0.7), ("d", "0", 0.6)])
SHADOW = _said([("d", "1", 0.5), ("c", "1", 0.5), ("b", "1", 0.5), ("a", "0", 0.5), ("x", "0", 0.5)])


def test_agreement_is_the_share_of_the_images_both_scored_given_the_same_label() -> None:
    record = shadowing.compared(CHAMPION, SHADOW, ("cnn-1", "cnn"), ("mllib-1", "mllib"))
    assert (record.rows, record.agreement) == (4, 0.75)  # "x" only the shadow scored; "d" differs
    assert record.champion.mean_confidence == pytest.approx(0.75)
    assert record.champion.class_mix == {"0": 0.5, "1": 0.5}
    assert (record.shadow.version, record.shadow.kind) == ("mllib-1", "mllib")
    assert record.shadow.class_mix == {"0": 0.4, "1": 0.6}  # of every row it scored
    nothing = shadowing.compared(CHAMPION.slice(0, 0), SHADOW, ("cnn-1", "cnn"), ("mllib-1", "mllib"))
    assert (nothing.rows, nothing.agreement, nothing.champion.mean_confidence) == (0, None, None)


def test_the_disagreements_are_pictured_with_what_each_model_said() -> None:
    gallery = shadowing.disagreements(CHAMPION, SHADOW, 4)
    assert gallery.total == 1
    [thumb] = gallery.thumbs
    assert thumb.caption == ("nowhere/d.png", "champion 0 (0.600)", "shadow 1 (0.500)")
    assert thumb.png is None  # the file is gone: named without a picture


def test_a_folder_of_parquet_parts_is_read_and_a_missing_one_is_empty(tmp_path: Path) -> None:
    pq.write_table(CHAMPION, tmp_path / "part-0.parquet")
    assert shadowing.read_said(tmp_path).num_rows == 4
    assert shadowing.read_said(tmp_path / "none").num_rows == 0


def _run(folder: Path, finished: str, version: str | None, agreement: float, rows: int) -> Path:
    shadow = None
    if version is not None:
        said = manifest.ModelSays(version=version, kind="mllib")
        champion = manifest.ModelSays(version="cnn-1", kind="cnn")
        shadow = manifest.ShadowRecord(rows=rows, agreement=agreement, champion=champion, shadow=said)
    doc = manifest.build("score", {}, {}, {}, {"success": True, "expectations": 0})
    timings = manifest.Timings(started_at=finished, finished_at=finished)
    return manifest.write(folder, doc.model_copy(update={"shadow": shadow, "timings": timings}))


def test_evaluate_reads_the_last_shadow_runs_of_a_version_newest_first(tmp_path: Path) -> None:
    batch = tmp_path / "predictions" / "run_date=2026-12-07"
    _run(batch / "run_id=1", "2026-12-07T01:00:00", "mllib-1", 0.9, 100)
    _run(batch / "run_id=2", "2026-12-07T03:00:00", "mllib-1", 0.7, 10)
    _run(batch / "run_id=3", "2026-12-07T04:00:00", "mllib-2", 0.1, 10)  # another shadow
    _run(batch / "run_id=4", "2026-12-07T05:00:00", None, 0.0, 0)  # no shadow at all
    hour = tmp_path / "stream" / "predictions" / "hour=2026-12-07T02"
    hour.mkdir(parents=True)
    _run(hour, "2026-12-07T02:00:00", "mllib-1", 0.8, 5).rename(hour / "_manifest-0-x.json")
    (hour / "_manifest-1-y.json").write_text('{"stage": "score"}')  # unreadable: skipped
    found = shadowing.scoring_manifests(tmp_path)
    assert len(found) == 6
    assert shadowing.recent_agreements(found, "mllib-1", 2) == [(0.7, 10), (0.8, 5)]
    assert shadowing.recent_agreements(found, "mllib-1", 5) == [(0.7, 10), (0.8, 5), (0.9, 100)]
    assert shadowing.recent_agreements(found, "cnn-9", 3) == []
