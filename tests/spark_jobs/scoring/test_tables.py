"""The scoring tables' layout and the pure bookkeeping of a run's rows, on inline data."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa

from spark_jobs.imaging import images
from spark_jobs.scoring import tables


def test_hour_partitions_of_the_lookup() -> None:
    assert tables.hour_of(0) == "hour=1970-01-01T00"
    assert tables.recent_hours(7200.0, 2) == {"hour=1970-01-01T00", "hour=1970-01-01T01", "hour=1970-01-01T02"}


def test_a_micro_batch_s_files_are_named_by_its_run() -> None:
    part, quarantine, manifest = tables.stream_paths("/data", "hour=2026-12-06T07", "3-20261206T070000Z-ab12cd34")
    assert part == Path("/data/stream/predictions/hour=2026-12-06T07/part-3-20261206T070000Z-ab12cd34.parquet")
    assert quarantine == Path("/data/stream/quarantine/hour=2026-12-06T07/part-3-20261206T070000Z-ab12cd34.parquet")
    assert manifest == part.with_name("_manifest-3-20261206T070000Z-ab12cd34.json")
    assert manifest.name.startswith("_")  # Spark and pyarrow readers skip it


def _ids(*pairs: tuple[str, str]) -> pa.Table:
    return pa.table({"image_id": [i for i, _ in pairs], "source_uri": [u for _, u in pairs]})


def test_first_copies_keep_the_smallest_uri_of_each_repeated_content() -> None:
    ids = _ids(("a", "s3://b/2.png"), ("a", "s3://b/1.png"), ("b", "s3://b/3.png"), ("a", "s3://b/9.png"))
    assert tables.first_copies(ids) == {"a": "s3://b/1.png"}
    assert tables.first_copies(_ids(("a", "x"), ("b", "y"))) == {}


def test_copy_records_quarantine_every_other_copy() -> None:
    rows = [
        {"image_id": "a", "source_uri": "s3://b/1.png", "label": None, "size_bytes": 10},
        {"image_id": "a", "source_uri": "s3://b/2.png", "label": "cat", "size_bytes": 10},
        {"image_id": "b", "source_uri": "s3://b/3.png", "label": None, "size_bytes": 7},
    ]
    assert tables.copy_records(rows, {"a": "s3://b/1.png"}) == [
        {
            "source_uri": "s3://b/2.png",
            "reason": images.DUPLICATE,
            "detail": "same content as s3://b/1.png",
            "image_id": "a",
            "label": "cat",
            "size_bytes": 10,
        }
    ]


def test_without_copies_drops_the_copies_rows() -> None:
    table = _ids(("a", "2.png"), ("a", "1.png"), ("b", "3.png")).append_column("p", pa.array([0.1, 0.2, 0.3]))
    kept, copied = tables.without_copies(table)
    assert kept.to_pydict() == {"image_id": ["a", "b"], "source_uri": ["1.png", "3.png"], "p": [0.2, 0.3]}
    assert [(r["source_uri"], r["reason"]) for r in copied] == [("2.png", images.DUPLICATE)]
    same, none = tables.without_copies(kept)
    assert same is kept
    assert none == []


def test_a_file_with_no_outcome_is_counted_as_unaccounted_not_as_already_scored() -> None:
    counts = tables.tally(10, {"cat": 6}, 6, 1, [{"source_uri": "x.png", "reason": "truncated"}], [])
    assert counts["unaccounted"] == 2  # 10 seen, 6 + 1 + 1 accounted for
    assert counts["already_scored"] == 1


def test_tally_accounts_for_every_file() -> None:
    bad = [
        {"source_uri": "x.png", "reason": "truncated"},
        {"source_uri": "y.png", "reason": "duplicate"},
        {"source_uri": "z.png", "reason": "truncated"},
    ]
    new_bad = bad[1:]  # x.png was reported by an earlier run
    counts = tables.tally(10, {"cat": 4, "dog": 3}, 6, 1, bad, new_bad)
    assert counts == {
        "files_seen": 10,
        "scored": 7,  # rows: a video gave two frames
        "files_scored": 6,
        "already_scored": 1,
        "unusable": 3,
        "unaccounted": 0,
        "quarantined": 2,
        "quarantine_by_reason": {"duplicate": 1, "truncated": 1},
        "predicted_by_label": {"cat": 4, "dog": 3},
    }


def test_quarantine_rows_keep_their_columns(tmp_path: Path) -> None:
    import pyarrow.parquet as pq

    row = {
        "source_uri": "a.png",
        "reason": "truncated",
        "detail": "cut",
        "image_id": None,
        "label": None,
        "size_bytes": 5,
    }
    written = tables.write_table(tables.quarantine_table([row]), tmp_path / "q" / "part.parquet")
    assert pq.read_table(written).to_pylist() == [row]
