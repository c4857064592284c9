"""What a model version already scored, read from the batch and stream tables with pyarrow."""

from __future__ import annotations

import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from spark_jobs.scoring import lookup, tables


def _ids(n: int, start: int = 0) -> list[str]:
    return [f"{i:064x}" for i in range(start, start + n)]


def _write(path: Path, ids: list[str], version: str, uris: list[str] | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    uris = uris or [f"file:///in/{i}.png" for i in ids]
    pq.write_table(pa.table({"image_id": ids, "source_uri": uris, "model_version": [version] * len(ids)}), path)


def test_batch_runs_are_read_per_model_version(tmp_path: Path) -> None:
    folder = tables.predictions_dir(tmp_path)
    assert lookup.scored_ids(folder, "v1") == []
    _write(folder / "run_date=2026-12-06" / "run_id=a" / "part-0.parquet", _ids(3), "v1")
    _write(folder / "run_date=2026-12-06" / "run_id=b" / "part-0.parquet", _ids(2, 10), "v2")
    (folder / "run_date=2026-12-06" / "run_id=a" / "_manifest.json").write_text("{}")  # skipped
    assert sorted(lookup.scored_ids(folder, "v1")) == _ids(3)
    assert sorted(lookup.scored_ids(folder, "v2")) == _ids(2, 10)


def test_only_the_recent_stream_hours_are_read(tmp_path: Path) -> None:
    now = time.time()
    table = tables.stream_dir(tmp_path) / tables.PREDICTIONS
    _write(table / tables.hour_of(now) / "part-1-x.parquet", _ids(2), "v1")
    _write(table / tables.hour_of(now - 3 * 3600) / "part-0-x.parquet", _ids(2, 5), "v1")
    (table / tables.hour_of(now) / "_manifest-1-x.json").write_text("{}")
    assert sorted(lookup.stream_scored_ids(tmp_path, "v1", now, 1)) == _ids(2)
    assert sorted(lookup.stream_scored_ids(tmp_path, "v1", now, 4)) == sorted(_ids(2) + _ids(2, 5))
    assert lookup.stream_scored_ids(tmp_path, "v2", now, 4) == []
    known = lookup.already_scored(tmp_path, "v1", 4)
    assert len(known) == 4
    assert _ids(1, 5)[0] in known


def test_quarantined_files_are_remembered_with_their_content(tmp_path: Path) -> None:
    folder = tables.quarantine_dir(tmp_path)
    assert lookup.recorded_quarantine(folder) == set()
    path = folder / "run_date=d" / "run_id=r" / "part-0.parquet"
    path.parent.mkdir(parents=True)
    pq.write_table(pa.table({"source_uri": ["a", "b"], "image_id": ["x" * 64, None]}), path)
    assert lookup.recorded_quarantine(folder) == {("a", "x" * 64)}  # an empty file has no content to remember
