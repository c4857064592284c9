"""A stage's process: when it started, and the modules it preloads."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest

from spark_jobs.core import launch, runner


def test_a_launched_run_counts_from_the_process_start(tmp_path: Path) -> None:
    started = launch.process_started()
    assert started <= time.time()
    with launch.launched(started - 5.0, started - 2.0), runner.StageRun("x", tmp_path, None, tmp_path / "o") as run:
        timings = run.timings()
    assert timings["startup_s"] == pytest.approx(3.0)
    assert timings["total_s"] >= 5.0


def test_preload_imports_in_the_background_and_survives_a_missing_module() -> None:
    sys.modules.pop("colorsys", None)
    thread = launch.preload(["no_such_module_here", "colorsys"])
    thread.join(30)
    assert "colorsys" in sys.modules  # the failure before it did not stop the list
    assert launch.current() is None  # nothing launched in this test process
