"""The score stage's stream mode, without Spark: where it writes, its checkpoint (a write-ahead log
of micro-batches), the rolling window its volume checks read and the status file it keeps.

Layout under ``<data.root>/stream/``::

    predictions/hour=<UTC yyyy-mm-ddThh>/part-<batch>.parquet   what the stream scored
    quarantine/hour=<...>/part-<batch>.parquet                   files it could not use
    _checkpoint/offsets/<batch>.json    the files of a micro-batch, written before it runs
    _checkpoint/commits/<batch>.json    its outcome (published, rejected), written after
    _checkpoint/state.json              compacted: files handled and rejected batches' files
    status.json                         progress, counts and latency of the last batches
    .locks/                             the lock a stream holds on its inbox while it runs

A batch planned (offsets) but not committed was cut short (a SIGKILL): a restart runs the same
files again. Whatever it published before dying is in the tables, so the already-scored lookup
skips those images and the batch's part files are replaced by name: nothing lost, nothing twice.
"""

from __future__ import annotations

import hashlib
import os
from collections import deque
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import numpy as np

from spark_jobs.core import manifest
from spark_jobs.core.store import SourceFile, canonical_uri

STREAM = "stream"
PREDICTIONS = "predictions"
QUARANTINE = "quarantine"
CHECKPOINT = "_checkpoint"
STATUS = "status.json"
COMPACT_EVERY = 100  # batches between two compactions of the checkpoint


def stream_dir(root: Path) -> Path:
    return Path(root) / STREAM


def stream_lock(root: Path) -> Path:
    """The lock of the one stream that writes under ``root`` (its checkpoint is one)."""
    return stream_dir(root) / ".locks" / "stream.lock"


def inbox_lock(root: Path, inbox: str) -> Path:
    """The lock a stream holds on ``inbox`` for as long as it runs (one per inbox and data.root)."""
    digest = hashlib.sha256(canonical_uri(inbox).encode()).hexdigest()[:16]
    return stream_dir(root) / ".locks" / f"inbox-{digest}.lock"


def hour_of(epoch: float) -> str:
    """The hour partition of a time: ``hour=2026-12-04T18`` (UTC)."""
    return "hour=" + datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H")


def recent_hours(now: float, hours: int) -> set[str]:
    """The partitions of the last ``hours`` hours, this one included."""
    return {hour_of(now - 3600 * h) for h in range(hours + 1)}


def part_name(batch: int) -> str:
    return f"part-{batch:010d}.parquet"


def file_key(f: SourceFile) -> str:
    """A file as listed: where, how big and when it arrived (a rewrite is a new arrival)."""
    return f"{f.uri}\t{f.size}\t{f.arrived:.6f}"


def _atomic_json(path: Path, doc: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    manifest.write_json(tmp, doc)
    os.replace(tmp, path)


class Planned(manifest.Record):
    """``offsets/<batch>.json``: the files of a micro-batch, and the hour it publishes under."""

    batch: int
    hour: str
    planned_at: float
    model_version: str
    files: list[tuple[str, str | None, int, float]]  # uri, label, size, arrived

    def source_files(self) -> list[SourceFile]:
        return [SourceFile(u, label, size, arrived) for u, label, size, arrived in self.files]


class Committed(manifest.Record):
    """``commits/<batch>.json``: how a micro-batch ended."""

    batch: int
    outcome: Literal["published", "rejected"]
    finished_at: float
    counts: dict[str, Any]


class State(manifest.Record):
    """``state.json``: the checkpoint through ``through`` compacted: the files handled (still in the
    inbox when compacted) and, per file of a rejected batch, when it may be retried."""

    through: int
    handled: list[str]
    retry_at: dict[str, float]


FIX = "remove <data.root>/stream/_checkpoint to start the stream over (the tables keep it exactly-once)"


class Checkpoint:
    """The write-ahead log of a stream's micro-batches under ``<stream>/_checkpoint``."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.handled: set[str] = set()
        self.retry_at: dict[str, float] = {}
        self.pending: Planned | None = None
        self.next_batch = 0
        self._through = -1
        state = folder / "state.json"
        if state.exists():
            s = manifest.read_record(state, State, "stream checkpoint state", FIX)
            self.handled, self.retry_at, self._through = set(s.handled), dict(s.retry_at), s.through
            self.next_batch = s.through + 1
        for path in sorted((folder / "offsets").glob("*.json"), key=lambda p: int(p.stem)):
            planned = manifest.read_record(path, Planned, "stream checkpoint offsets", FIX)
            if planned.batch <= self._through:
                continue
            commit = folder / "commits" / path.name
            if commit.exists():
                self._record(planned, manifest.read_record(commit, Committed, "stream checkpoint commit", FIX))
            else:
                self.pending = planned
            self.next_batch = max(self.next_batch, planned.batch + 1)

    def _record(self, planned: Planned, committed: Committed) -> None:
        keys = [file_key(f) for f in planned.source_files()]
        if committed.outcome == "published":
            self.handled.update(keys)
            for k in keys:
                self.retry_at.pop(k, None)
        else:
            self.retry_at.update(dict.fromkeys(keys, committed.finished_at))

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

    def plan(self, files: list[SourceFile], now: float, model_version: str) -> Planned:
        planned = Planned(
            batch=self.next_batch,
            hour=hour_of(now),
            planned_at=now,
            model_version=model_version,
            files=[(f.uri, f.label, f.size, f.arrived) for f in files],
        )
        _atomic_json(self.folder / "offsets" / f"{planned.batch}.json", planned)
        self.pending, self.next_batch = planned, planned.batch + 1
        return planned

    def commit(self, planned: Planned, outcome: str, counts: dict[str, Any], now: float) -> None:
        committed = Committed(batch=planned.batch, outcome=outcome, finished_at=now, counts=counts)
        _atomic_json(self.folder / "commits" / f"{planned.batch}.json", committed)
        self._record(planned, committed)
        self.pending = None

    def compact(self, listing: Iterable[SourceFile], retry_after: float, now: float) -> None:
        """Fold the committed batches into ``state.json`` and delete their logs, keeping only the
        files still listed (what a later listing can show again): the checkpoint stays the size of
        the inbox, however long the stream runs."""
        through = self.next_batch - 1 if self.pending is None else self.pending.batch - 1
        listed = {file_key(f) for f in listing}
        self.handled &= listed
        self.retry_at = {k: t for k, t in self.retry_at.items() if k in listed and t + retry_after > now}
        _atomic_json(
            self.folder / "state.json", State(through=through, handled=sorted(self.handled), retry_at=self.retry_at)
        )
        self._through = through
        for kind in ("offsets", "commits"):
            for path in (self.folder / kind).glob("*.json"):
                if int(path.stem) <= through:
                    path.unlink()


class RollingWindow:
    """The last ``size`` published rows' predicted labels and low-confidence flags: what a stream's
    volume checks (low-confidence share, class drift) read, so that small micro-batches are judged
    with the rows before them rather than rejected for noise."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._labels: deque[str] = deque(maxlen=size)
        self._low: deque[bool] = deque(maxlen=size)

    def with_batch(self, labels: list[str], low: list[bool]) -> tuple[int, int, dict[str, int]]:
        """``(rows, low-confidence rows, rows per label)`` of the window once ``labels`` join it."""
        keep = max(self.size - len(labels), 0)
        all_labels = list(self._labels)[len(self._labels) - keep :] + labels[-self.size :]
        all_low = list(self._low)[len(self._low) - keep :] + low[-self.size :]
        per_label: dict[str, int] = {}
        for label in all_labels:
            per_label[label] = per_label.get(label, 0) + 1
        return len(all_labels), int(sum(all_low)), per_label

    def add(self, labels: list[str], low: list[bool]) -> None:
        self._labels.extend(labels)
        self._low.extend(low)


class Status(manifest.Record):
    """``status.json``: what someone watching a stream reads, rewritten after every micro-batch."""

    inbox: str
    model_version: str | None
    updated_at: str
    state: Literal["starting", "running", "stopped", "failed"]
    batches: int
    files_seen: int
    scored: int
    quarantined: int
    rejected_batches: int
    rejected_files: int
    failures: int
    backlog: int  # files listed and not yet handled, at the last listing
    last_batch: dict[str, Any]
    latency_s: dict[str, float | None]  # arrival -> visible, over the last batches' files
    batch_seconds: dict[str, float | None]  # per phase, median of the last batches


def percentiles(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"p50": None, "p95": None, "max": None}
    a = np.asarray(values)
    return {
        "p50": round(float(np.percentile(a, 50)), 3),
        "p95": round(float(np.percentile(a, 95)), 3),
        "max": round(float(a.max()), 3),
    }


class Progress:
    """Counts since the stream started and the latencies of its last ``batches`` micro-batches."""

    def __init__(self, inbox: str, batches: int) -> None:
        self.inbox = inbox
        self.counts = dict.fromkeys(
            ("batches", "files_seen", "scored", "quarantined", "rejected_batches", "rejected_files", "failures"), 0
        )
        self.backlog = 0
        self.last: dict[str, Any] = {}
        self._latency: deque[list[float]] = deque(maxlen=batches)
        self._phases: deque[dict[str, float]] = deque(maxlen=batches)

    def batch(self, last: dict[str, Any], latencies: list[float], phases: dict[str, float]) -> None:
        self.last = last | {"seconds": phases}
        self._latency.append(latencies)
        self._phases.append(phases)

    def status(self, model_version: str | None, state: str) -> Status:
        phases = {k for p in self._phases for k in p}
        return Status(
            inbox=self.inbox,
            model_version=model_version,
            updated_at=datetime.now(UTC).isoformat(timespec="milliseconds"),
            state=state,
            backlog=self.backlog,
            last_batch=self.last,
            latency_s=percentiles([x for batch in self._latency for x in batch]),
            batch_seconds={k: percentiles([p[k] for p in self._phases if k in p])["p50"] for k in sorted(phases)},
            **self.counts,
        )

    def write(self, folder: Path, model_version: str | None, state: str) -> Status:
        status = self.status(model_version, state)
        _atomic_json(folder / STATUS, status)
        return status


def read_status(folder: Path) -> Status:
    return manifest.read_record(folder / STATUS, Status, "stream status", "let the stream write it again")
