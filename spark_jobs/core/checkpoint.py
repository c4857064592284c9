"""A write-ahead log of micro-batches of files (a stream's checkpoint), without Spark.

Layout of a checkpoint folder::

    offsets/<batch>.json    the files of a micro-batch, written before it runs
    commits/<batch>.json    its outcome (published, rejected), written after
    state.json              compacted: files handled and rejected batches' files

A batch planned (offsets) but not committed was cut short (a SIGKILL): a restart runs the same
files again, under the same run id and partition, so whatever the batch published before dying is
replaced by name, and what it had scored is skipped by the caller's lookup: nothing lost, nothing
twice. Every record is written atomically and read back typed; an edited or older one is refused
in one line (:class:`spark_jobs.core.manifest.RecordError`).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Literal

from spark_jobs.core import manifest
from spark_jobs.core.store import SourceFile

log = logging.getLogger(__name__)

COMPACT_EVERY = 100  # batches between two compactions of the checkpoint


def file_key(f: SourceFile) -> str:
    """A file as listed: where, how big and when it arrived (a rewrite is a new arrival)."""
    return f"{f.uri}\t{f.size}\t{f.arrived:.6f}"


class Planned(manifest.Record):
    """``offsets/<batch>.json``: the files of a micro-batch, the run that scores them and the
    partition its outputs go under."""

    batch: int
    run_id: str
    partition: str
    planned_at: float
    files: list[tuple[str, str | None, int, float]]  # uri, label, size, arrived

    def source_files(self) -> list[SourceFile]:
        return [SourceFile(u, label, size, arrived) for u, label, size, arrived in self.files]


class Committed(manifest.Record):
    """``commits/<batch>.json``: how a micro-batch ended."""

    batch: int
    run_id: str
    outcome: Literal["published", "rejected"]
    finished_at: float
    counts: dict[str, Any]


class State(manifest.Record):
    """``state.json``: the checkpoint through ``through`` compacted: the files handled (still in the
    inbox when compacted) and, per file of a rejected batch, when it may be retried."""

    through: int
    handled: list[str]
    retry_at: dict[str, float]


def _numbered(folder: Path, warn: bool = False) -> list[Path]:
    """The ``<batch>.json`` records of a folder, in batch order; other files (an editor's backup,
    a macOS ``._0.json``) are not records of this checkpoint: left alone, with a warning when
    ``warn``."""
    records, stray = [], []
    for p in folder.glob("*") if folder.is_dir() else ():
        (records if p.suffix == ".json" and p.stem.isascii() and p.stem.isdigit() and p.is_file() else stray).append(p)
    if warn and stray:
        log.warning("ignored %d files in %s that are not checkpoint records: %s", len(stray), folder, sorted(stray)[:5])
    return sorted(records, key=lambda p: int(p.stem))


class Checkpoint:
    """The write-ahead log of a stream's micro-batches in ``folder``; ``fix`` is what to tell a
    user whose checkpoint cannot be read."""

    def __init__(self, folder: Path, fix: str) -> None:
        self.folder = folder
        self.fix = fix
        self.handled: set[str] = set()
        self.retry_at: dict[str, float] = {}
        self.pending: Planned | None = None
        self.next_batch = 0
        self._through = -1
        state = folder / "state.json"
        if state.exists():
            s = manifest.read_record(state, State, "stream checkpoint state", fix)
            self.handled, self.retry_at, self._through = set(s.handled), dict(s.retry_at), s.through
            self.next_batch = s.through + 1
        _numbered(folder / "commits", warn=True)
        for path in _numbered(folder / "offsets", warn=True):
            planned = manifest.read_record(path, Planned, "stream checkpoint offsets", fix)
            if planned.batch <= self._through:
                continue
            commit = folder / "commits" / path.name
            if commit.exists():
                self._record(planned, manifest.read_record(commit, Committed, "stream checkpoint commit", fix))
            else:
                self.pending = planned
            self.next_batch = max(self.next_batch, planned.batch + 1)

    def _record(self, planned: Planned, committed: Committed) -> None:
        """A published batch's files are handled, but those its counts list as ``unhandled`` (no
        row in any table: they are retried, as a rejected batch's files are)."""
        unhandled = set(committed.counts.get("unhandled") or ()) if committed.outcome == "published" else None
        for f in planned.source_files():
            k = file_key(f)
            if unhandled is not None and f.uri not in unhandled:
                self.handled.add(k)
                self.retry_at.pop(k, None)
            else:
                self.retry_at[k] = committed.finished_at

    def new_files(self, listing: Iterable[SourceFile], now: float, retry_after: float) -> list[SourceFile]:
        """The listed files no batch has handled (a rejected batch's once ``retry_after`` seconds
        have passed), oldest arrival first."""
        out = [
            f
            for f in listing
            if (k := file_key(f)) not in self.handled
            and (k not in self.retry_at or self.retry_at[k] + retry_after <= now)
        ]
        return sorted(out, key=lambda f: (f.arrived, f.uri))

    def plan(self, files: list[SourceFile], now: float, run_id: str, partition: str) -> Planned:
        """Log the next micro-batch (``files``, scored by run ``run_id`` into ``partition``) before it runs."""
        planned = Planned(
            batch=self.next_batch,
            run_id=run_id,
            partition=partition,
            planned_at=now,
            files=[(f.uri, f.label, f.size, f.arrived) for f in files],
        )
        manifest.write_json(self.folder / "offsets" / f"{planned.batch}.json", planned)
        self.pending, self.next_batch = planned, planned.batch + 1
        return planned

    def commit(self, planned: Planned, outcome: str, counts: dict[str, Any], now: float) -> None:
        """Log how the planned micro-batch ended."""
        committed = Committed(
            batch=planned.batch, run_id=planned.run_id, outcome=outcome, finished_at=now, counts=counts
        )
        manifest.write_json(self.folder / "commits" / f"{planned.batch}.json", committed)
        self._record(planned, committed)
        self.pending = None

    def compact(self, listing: Iterable[SourceFile], retry_after: float, now: float) -> None:
        """Fold the committed batches into ``state.json`` and delete their logs, keeping only the
        files still listed (what a later listing can show again): the checkpoint stays the size of
        the inbox, however long the stream runs. The micro-batches' manifests, in their tables,
        keep what each batch read."""
        through = self.next_batch - 1 if self.pending is None else self.pending.batch - 1
        listed = {file_key(f) for f in listing}
        self.handled &= listed
        self.retry_at = {k: t for k, t in self.retry_at.items() if k in listed and t + retry_after > now}
        state = State(through=through, handled=sorted(self.handled), retry_at=self.retry_at)
        manifest.write_json(self.folder / "state.json", state)
        self._through = through
        for kind in ("offsets", "commits"):
            for path in _numbered(self.folder / kind):
                if int(path.stem) <= through:
                    path.unlink()
