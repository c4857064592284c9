"""The asset events a run sends: only when it made something new, saying what."""

from __future__ import annotations

import json
import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path

from image_platform import assets

from tests.factories import REPO

T0 = datetime(2026, 12, 6, 12, 0, tzinfo=UTC)


def _workspace(tmp_path: Path) -> Path:
    shutil.copy(REPO / "params.yaml", tmp_path / "params.yaml")
    return tmp_path


def _scoring_run(ws: Path, run_id: str, finished: datetime, scored: int) -> Path:
    folder = ws / "data" / "predictions" / f"run_date={finished:%Y-%m-%d}" / f"run_id={run_id}"
    folder.mkdir(parents=True)
    doc = {"run_id": run_id, "timings": {"finished_at": finished.isoformat()}, "counts": {"scored": scored}}
    (folder / "_manifest.json").write_text(json.dumps(doc))
    return folder


class _Events(dict):
    """``outlet_events`` as a task sees it: per alias, the events added to it."""

    def __missing__(self, alias):
        added = self[alias] = _Added()
        return added


class _Added(list):
    def add(self, asset, extra=None):
        self.append((asset, extra))


def test_a_scoring_run_that_published_sends_its_run_id_and_row_count(tmp_path: Path) -> None:
    ws = _workspace(tmp_path)
    _scoring_run(ws, "20261206T110000Z-aaaa", T0 - timedelta(hours=1), 40)
    newest = _scoring_run(ws, "20261206T120500Z-bbbb", T0 + timedelta(minutes=5), 15)
    events = _Events()
    extra = assets.add_event(events, assets.PREDICTIONS_OUT, ws, T0)
    assert extra == {
        "workspace": str(ws),
        "path": str(ws / "data" / "predictions"),
        "run": str(newest),
        "run_id": "20261206T120500Z-bbbb",
        "rows": 15,
    }
    assert events[assets.PREDICTIONS_OUT] == [(assets.PREDICTIONS, extra)]


def test_a_scoring_run_that_published_nothing_sends_no_event(tmp_path: Path) -> None:
    ws = _workspace(tmp_path)
    events = _Events()
    assert assets.add_event(events, assets.PREDICTIONS_OUT, ws, T0) is None  # no run at all yet
    _scoring_run(ws, "20261206T110000Z-aaaa", T0 - timedelta(hours=1), 40)  # an earlier run's
    assert assets.add_event(events, assets.PREDICTIONS_OUT, ws, T0) is None
    assert dict(events) == {}


def test_the_champion_event_only_when_this_run_promoted_one(tmp_path: Path) -> None:
    ws = _workspace(tmp_path)
    folder = ws / "models" / "champion" / "classifier"
    folder.mkdir(parents=True)
    record = {
        "task": "classifier",
        "kind": "cnn",
        "version": "cnn-20261206T115000Z-0123abcd",
        "metrics": {"accuracy": 0.99},
        "job_version": {"package": "0.1.0", "git_commit": "0" * 40, "dirty": False},
    }
    record["promoted_at"] = (T0 - timedelta(days=1)).isoformat(timespec="seconds")
    (folder / "promotion.json").write_text(json.dumps(record))
    events = _Events()
    assert assets.add_event(events, assets.CHAMPION_OUT, ws, T0) is None  # yesterday's champion
    record["promoted_at"] = (T0 + timedelta(minutes=3)).isoformat(timespec="seconds")
    (folder / "promotion.json").write_text(json.dumps(record))
    extra = assets.add_event(events, assets.CHAMPION_OUT, ws, T0 + timedelta(microseconds=500))
    assert extra["classifier"]["version"] == record["version"]
    assert events[assets.CHAMPION_OUT] == [(assets.CHAMPION, extra)]
