"""Cluster sizing from a run's manifests: the arithmetic on known figures, the split of per-run
from per-image cost across scoring runs, and the command's output and errors."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from spark_jobs.core import manifest
from spark_jobs.ml import sizing
from tests.factories import REPO


def _write(path: Path, stage: str, counts: dict, timings: dict, spark: dict) -> None:
    """A stage's manifest as the stage runner writes it, with the given figures."""
    path.parent.mkdir(parents=True, exist_ok=True)
    clock = {"started_at": "2026-12-03T00:00:00+00:00", "finished_at": "2026-12-03T00:01:00+00:00", **timings}
    doc = manifest.build(stage, {}, {}, counts, {"success": True, "expectations": 0}, spark=spark)
    manifest.write(path.parent, doc.model_copy(update={"timings": manifest.Timings(**clock)}), path.name)


def _run(root: Path, stage: str, images: int, work: float, duration: float, cores: int = 2) -> None:
    timings = {"total_s": duration, "work_s": work}
    spark = {"default_parallelism": cores}
    if stage == "ingest":
        _write(root / "data" / "ingest" / "_manifest.json", stage, {"files_seen": images}, timings, spark)
    else:
        counts = {"scored": images, "unusable": 0}
        path = root / "data" / "predictions" / "run_date=d" / f"run_id={images}" / "_manifest.json"
        _write(path, stage, counts, timings, spark)


@pytest.fixture
def workspace(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    shutil.copy(REPO / "params.yaml", tmp_path / "params.yaml")
    monkeypatch.chdir(tmp_path)
    _run(tmp_path, "ingest", 2000, work=100.0, duration=130.0)  # 0.1 core-s per image, 30 s fixed
    # Scoring runs of three sizes on 2 cores: 4 s per run + 0.01 s per image.
    for n in (500, 1000, 3000):
        _run(tmp_path, "score", n, work=4 + 0.01 * n, duration=4 + 0.01 * n + 10)
    _run(tmp_path, "score", 0, work=3.0, duration=12.0)  # found nothing new: no measure
    return tmp_path


def test_measures_and_plan(workspace: Path) -> None:
    found = {m.stage: m for m in sizing.measures(Path("data"), Path("models"))}
    assert set(found) == {"ingest", "score"}
    assert found["ingest"].core_s_per_image == pytest.approx(0.1)
    assert found["ingest"].fixed_s == pytest.approx(30.0)
    assert found["score"].core_s_per_image == pytest.approx(0.02)  # the line's slope x 2 cores
    assert found["score"].fixed_s == pytest.approx(14.0)  # 10 s around the work + 4 s per run
    assert not found["ingest"].caveat
    needs = {n.stage: n for n in sizing.plan(list(found.values()), 1_000_000, 3600, 4)}
    assert needs["ingest"].cores == 29  # ceil(1e6 x 0.1 / (3600 - 30)) = ceil(28.01)
    assert needs["ingest"].executors == 8
    assert needs["score"].cores == 6  # ceil(1e6 x 0.02 / (3600 - 14))
    assert needs["pipeline"].cores == 34  # ceil(1e6 x 0.12 / (3600 - 44))
    never = {n.stage: n for n in sizing.plan(list(found.values()), 1_000_000, 20, 4)}
    assert never["ingest"].cores is None  # the fixed cost alone exceeds a 20 s deadline


def test_command_prints_the_table(workspace: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert sizing.main(["--images", "1000000", "--deadline", "1h", "--cores-per-executor", "4"]) == 0
    out = capsys.readouterr().out
    assert "Target: 1,000,000 images within 1.00 h" in out
    row = next(line.split() for line in out.splitlines() if line.startswith("ingest "))
    assert row[-2:] == ["29", "8"]
    assert "data/ingest/_manifest.json" in out


def test_small_runs_are_flagged(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    shutil.copy(REPO / "params.yaml", tmp_path / "params.yaml")
    monkeypatch.chdir(tmp_path)
    _run(tmp_path, "ingest", 50, work=10.0, duration=30.0)
    _run(tmp_path, "score", 40, work=20.0, duration=30.0)
    found = {m.stage: m for m in sizing.measures(Path("data"), Path("models"))}
    assert found["ingest"].caveat == "only 50 images measured"
    assert "do not separate" in found["score"].caveat  # one run size: no line to fit


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--images", "10", "--deadline", "soon"], "deadline 'soon'"),
        (["--images", "0", "--deadline", "1h"], "must be positive"),
        (["--images", "10", "--deadline", "1h"], "run the pipeline first"),
    ],
)
def test_errors_are_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    shutil.copy(REPO / "params.yaml", tmp_path / "params.yaml")
    monkeypatch.chdir(tmp_path)
    assert sizing.main(args) == 2
    assert message in capsys.readouterr().err


def test_parse_duration() -> None:
    assert [sizing.parse_duration(t) for t in ("90", "90s", "45m", "4h", "1d")] == [90, 90, 2700, 14400, 86400]
