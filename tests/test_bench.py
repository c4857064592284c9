"""The peer benchmark's verdict on the throughput targets (a pure function of its measured runs)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

from PIL import Image

_spec = importlib.util.spec_from_file_location("peers", Path(__file__).resolve().parents[1] / "bench" / "peers.py")
assert _spec
assert _spec.loader
peers = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(peers)


def _engine(work: float, wall: float, rss: float) -> dict:
    return {"work_s": work, "wall_s": wall, "peak_rss_mib": rss}


def test_targets_are_read_from_the_smallest_and_largest_size_of_one_run():
    runs = {
        16000: peers.table({"project": _engine(12.0, 20.0, 2000), "plain": _engine(16.0, 17.0, 400)}, 16000),
        64000: peers.table(
            {"project": _engine(50.0, 58.0, 2500), "plain": _engine(60.0, 61.0, 450), "daft": _engine(55, 57, 700)},
            64000,
        ),
    }
    verdict = peers.targets(runs)
    assert verdict["work_vs_plain_at_smallest"] == {"measured": 1.33, "bound": 1.3, "kind": "min", "met": True}
    assert verdict["wall_vs_plain_at_largest"]["measured"] == 1.05
    assert verdict["wall_vs_plain_at_largest"]["met"]
    assert verdict["wall_vs_daft_at_largest"] == {"measured": 0.98, "bound": 1.25, "kind": "min", "met": False}
    assert verdict["peak_rss_mib_at_largest"] == {"measured": 2500, "bound": 1500, "kind": "max", "met": False}
    assert "peak_rss_vs_daft_at_largest" not in verdict  # a photo workload's target
    assert verdict["work_ratio_smallest_to_largest"] == {"measured": 4.17, "bound": 4.2, "kind": "max", "met": True}
    assert verdict["peak_rss_ratio_smallest_to_largest"]["measured"] == 1.25
    assert not verdict["peak_rss_ratio_smallest_to_largest"]["met"]


def test_the_photo_workload_is_judged_by_its_own_targets():
    runs = {
        750: peers.table({"project": _engine(10.0, 20.0, 1800), "daft": _engine(40.0, 41.0, 6000)}, 750),
        3000: peers.table(
            {"project": _engine(41.0, 50.0, 2000), "plain": _engine(45.0, 46.0, 400), "daft": _engine(150, 151, 900)},
            3000,
        ),
    }
    verdict = peers.targets(runs, "photos")
    assert set(verdict) == {
        "wall_vs_daft_at_largest",
        "wall_vs_plain_at_largest",
        "peak_rss_vs_daft_at_largest",
        "work_ratio_smallest_to_largest",
        "peak_rss_ratio_smallest_to_largest",
    }
    assert verdict["wall_vs_daft_at_largest"] == {"measured": 3.02, "bound": 1.5, "kind": "min", "met": True}
    assert verdict["wall_vs_plain_at_largest"] == {"measured": 0.92, "bound": 1.0, "kind": "min", "met": False}
    assert verdict["peak_rss_vs_daft_at_largest"] == {"measured": 2.22, "bound": 2.0, "kind": "max", "met": False}
    assert verdict["work_ratio_smallest_to_largest"]["measured"] == 4.1
    assert verdict["peak_rss_ratio_smallest_to_largest"] == {"measured": 1.11, "bound": 1.2, "kind": "max", "met": True}


def test_a_jvm_child_before_its_exec_is_not_counted_twice():
    class Proc:
        def __init__(self, pid: int, name: str, exe: str) -> None:
            self.pid, self._name, self._exe = pid, name, exe

        def name(self) -> str:
            return self._name

        def exe(self) -> str:
            return self._exe

    java = "/usr/lib/jvm/java-17-openjdk-amd64/bin/java"
    assert peers.role(Proc(1, "python3.11", "/usr/bin/python3.11"), 1) == "driver"
    assert peers.role(Proc(2, "java", java), 1) == "jvm"
    assert peers.role(Proc(3, "Executor task l", java), 1) is None  # forked, not yet exec'd: the JVM's pages
    assert peers.role(Proc(4, "python3.11", "/usr/bin/python3.11"), 1) == "python"
    assert peers.role(Proc(5, "ray::MapWorker", "/usr/bin/python3.11"), 1) == "ray::MapWorker"


_photos_spec = importlib.util.spec_from_file_location("photos", Path(peers.__file__).with_name("photos.py"))
assert _photos_spec
assert _photos_spec.loader
photos = importlib.util.module_from_spec(_photos_spec)
sys.modules["photos"] = photos  # its worker processes find their function by module name
_photos_spec.loader.exec_module(photos)


def test_a_photo_is_a_camera_sized_jpeg_made_again_the_same(tmp_path: Path) -> None:
    files, size = photos.make_photos(tmp_path / "photos_3", 3)
    assert files == 3
    made = sorted((tmp_path / "photos_3").rglob("*.jpg"))
    for path in made:
        with Image.open(path) as im:
            assert im.format == "JPEG"
            assert photos.MIN_SIDE <= max(im.size) <= photos.MAX_SIDE
            assert 0.1 < path.stat().st_size / (im.width * im.height) < 1.0  # bytes per pixel: a photo's, not flat
    assert size == sum(p.stat().st_size for p in made)
    # A smaller folder of the same seed is the larger one's first files, linked, not made again.
    assert photos.make_photos(tmp_path / "photos_2", 2) == (2, sum(p.stat().st_size for p in made[:2]))
    assert (tmp_path / "photos_2" / made[0].parent.name / made[0].name).stat().st_ino == made[0].stat().st_ino
    # A file depends only on its seed and index.
    name, again = photos.photo(2)
    with Image.open(tmp_path / "photos_3" / name / "00002.jpg") as im:
        assert im.size == again.size


def test_a_figure_whose_engines_did_not_run_is_left_out():
    runs = {16000: peers.table({"project": _engine(12.0, 20.0, 2000), "daft": {"skipped": "no venv"}}, 16000)}
    assert set(peers.targets(runs)) == {"peak_rss_mib_at_largest"}  # the project's own; nothing against a peer


def test_the_drift_test_s_cost_is_the_project_s_work_with_it_over_without_it():
    runs = {
        16000: peers.table({"project": _engine(10.5, 20.0, 2000), "project-no-drift": _engine(10.0, 19, 1900)}, 16000)
    }
    assert peers.targets(runs)["drift_work_cost_at_largest"] == {
        "measured": 0.05,
        "bound": 0.1,
        "kind": "max",
        "met": True,
    }


_stream_spec = importlib.util.spec_from_file_location(
    "stream_latency", Path(__file__).resolve().parents[1] / "bench" / "stream_latency.py"
)
assert _stream_spec
assert _stream_spec.loader
stream_latency = importlib.util.module_from_spec(_stream_spec)
_stream_spec.loader.exec_module(stream_latency)


def test_stream_latency_is_read_per_file_and_backlog_per_second():
    arrived = {f"f{i}": 100.0 + i / 2 for i in range(8)}  # 2/s for 4 s
    planned = {u: t + 0.5 for u, t in arrived.items()}
    visible = {u: t + 1.0 for u, t in arrived.items()} | {"other": 50.0}  # a file of an earlier rate
    del visible["f7"]  # never made it
    got = stream_latency.summarise(2, 4, arrived, visible, planned)
    assert (got["dropped"], got["visible"]) == (8, 7)
    assert got["latency_s"] == {"p50": 1.0, "p95": 1.0, "max": 1.0}
    assert got["by_phase_s"]["arrival_to_planned"]["p50"] == 0.5
    assert got["backlog"]["every_s"] == [1, 2, 2, 2, 1]
    assert got["throughput_per_s"]["during_window"] == 1.8  # 7 files visible by 104 s, over 4 s (rounded)
    verdict = stream_latency.target([got], rate=2, p95=0.9)
    assert verdict["p95_s"] == 1.0
    assert not verdict["met"]
    assert stream_latency.target([got], rate=2, p95=1.0)["met"]


def test_the_lineage_bench_reads_each_run_s_own_lineage_line(tmp_path: Path, monkeypatch, caplog) -> None:
    import logging
    import os

    from spark_jobs.core import runner

    spec = importlib.util.spec_from_file_location(
        "lineage_overhead", Path(peers.__file__).with_name("lineage_overhead.py")
    )
    assert spec
    assert spec.loader
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    for key in [k for k in os.environ if k.startswith("OPENLINEAGE")]:
        monkeypatch.delenv(key)
    monkeypatch.chdir(tmp_path)
    logged = caplog.at_level(logging.INFO, logger="spark_jobs.core.lineage")
    with logged, runner.StageRun("x", tmp_path, None, tmp_path / "x") as run:
        run.finish(None, run.manifest({}, {}, {}, None))
    [found] = bench.spent(caplog.text)
    assert (found["job"], found["run_id"], found["events"]) == ("x", run.run_id, 2)
    assert 0 < found["ms"] < 60_000
