"""The stream's driver loop without Spark: its locks, and how it plans micro-batches from a listing
and its checkpoint."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from spark_jobs.core import locks
from spark_jobs.core.checkpoint import COMPACT_EVERY, Checkpoint
from spark_jobs.core.config import load_config
from spark_jobs.scoring import stream, tables
from spark_jobs.scoring.config import ScoreParams
from spark_jobs.scoring.status import Progress
from tests.factories import REPO


def _cfg(tmp_path: Path, *overrides: str) -> ScoreParams:
    base = [f"data.root={tmp_path / 'data'}", f"score.inbox={tmp_path / 'inbox'}"]
    return load_config(REPO / "params.yaml", [*base, *overrides], ScoreParams)


def test_a_stream_s_locks_are_per_data_root_and_per_inbox(tmp_path: Path) -> None:
    root = tmp_path / "data"
    assert stream.stream_lock(root) == root / "stream" / ".locks" / "stream.lock"
    (tmp_path / "in").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "in")
    one, same = stream.inbox_lock(str(tmp_path / "in")), stream.inbox_lock((tmp_path / "in").as_uri())
    assert one == same  # a folder and its file:// URI are one inbox
    assert stream.inbox_lock(str(tmp_path / "link")) == one  # and a link to it
    assert one.parent == stream.inbox_locks()  # one place for every data.root, never in the inbox
    assert one != stream.inbox_lock("s3://bucket/in")
    assert stream.inbox_lock("s3://bucket/in/") == stream.inbox_lock("s3://bucket/in")
    assert stream.batch_lock(root) == root / ".locks" / "score.lock"  # what a batch run's StageRun holds


def test_micro_batches_take_the_oldest_new_files_and_run_ids_in_order(tmp_path: Path) -> None:
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    for i in range(5):
        (inbox / f"{i}.png").write_bytes(b"x" * (i + 1))
        os.utime(inbox / f"{i}.png", (1000 + i, 1000 + i))
    cfg = _cfg(tmp_path, "score.stream.max_files_per_trigger=2")
    loop = stream._Loop(cfg, None, Progress(cfg.score.inbox, 5), None)
    checkpoint = Checkpoint(tmp_path / "ckpt", stream.FIX)
    first = loop.next_batch(checkpoint)
    assert [Path(f.uri).name for f in first.source_files()] == ["0.png", "1.png"]
    assert re.fullmatch(r"0-\d{8}T\d{6}Z-[0-9a-f]{8}", first.run_id)
    assert first.partition == tables.hour_of(first.planned_at)
    assert loop.progress.backlog == 3
    assert loop.next_batch(checkpoint) is first  # planned and not committed: run again, as after a kill
    checkpoint.commit(first, "published", {}, 2000.0)
    second = loop.next_batch(checkpoint)
    assert [Path(f.uri).name for f in second.source_files()] == ["2.png", "3.png"]
    assert second.run_id.startswith("1-")
    assert COMPACT_EVERY > 1


def test_a_second_stream_on_the_same_inbox_is_refused(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path)
    held = locks.take_lock(stream.inbox_lock(cfg.score.inbox), 0, "busy", "stream one")
    cfg = _cfg(tmp_path, f"data.root={tmp_path / 'another_root'}")  # the same inbox under another data.root
    try:
        (tmp_path / "inbox").mkdir()
        with pytest.raises(locks.OutputBusy, match=r"a stream already scores .* \(stream one"):
            stream.run_stream(cfg, None)  # refused before it needs Spark
    finally:
        os.close(held)
    assert locks.lock_holder(stream.stream_lock(cfg.data.root)) is None  # the first lock it took was given back
