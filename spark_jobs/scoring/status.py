"""What a stream keeps in memory between micro-batches and shows: the rolling window its volume
checks read, and ``status.json``, rewritten after every micro-batch for whoever watches it."""

from __future__ import annotations

from collections import deque
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import numpy as np

from spark_jobs.core import manifest
from spark_jobs.quality.suites import Volume

STATUS = "status.json"


class RollingWindow:
    """The last ``size`` published rows' predicted labels and low-confidence flags: what a stream's
    volume checks (low-confidence share, class drift) read, so that small micro-batches are judged
    with the rows before them rather than rejected for noise."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._labels: deque[str] = deque(maxlen=size)
        self._low: deque[bool] = deque(maxlen=size)

    def with_batch(self, labels: list[str], low: list[bool]) -> Volume:
        """The window's rows, low-confidence rows and rows per label once ``labels`` join it."""
        keep = max(self.size - len(labels), 0)
        all_labels = list(self._labels)[len(self._labels) - keep :] + labels[-self.size :]
        all_low = list(self._low)[len(self._low) - keep :] + low[-self.size :]
        per_label: dict[str, int] = {}
        for label in all_labels:
            per_label[label] = per_label.get(label, 0) + 1
        return Volume(len(all_labels), int(sum(all_low)), per_label)

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

    def count(
        self, batch: int, outcome: str, counts: dict[str, Any], latencies: list[float], phases: dict[str, float]
    ) -> None:
        """One micro-batch's outcome (``published`` or ``rejected``), counts, latencies and phases."""
        c = self.counts
        c["batches"] += 1
        c["files_seen"] += counts["files_seen"]
        if outcome == "rejected":
            c["rejected_batches"] += 1
            c["rejected_files"] += counts["files_seen"]
            c["failures"] += 1
            latencies = []
        else:
            c["scored"] += counts["scored"]
            c["quarantined"] += counts.get("quarantined", 0)
        self.batch({"batch": batch, "outcome": outcome, **counts}, latencies, phases)

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
        manifest.write_json(folder / STATUS, status)
        return status


def read_status(folder: Path) -> Status:
    return manifest.read_record(folder / STATUS, Status, "stream status", "let the stream write it again")
