"""The ``main()`` every stage shares: its process end, and how it maps what went wrong to an exit
code and one line."""

from __future__ import annotations

from pathlib import Path

import pytest

from spark_jobs.params import load
from tests.factories import REPO
from tests.processes import tmpfs


def test_exit_process_runs_the_exit_handlers_joins_threads_and_keeps_the_code(tmp_path: Path) -> None:
    import subprocess
    import sys

    script = (
        "import atexit, threading, time\n"
        "from spark_jobs.core.jobs import exit_process\n"
        "atexit.register(lambda: print('handler ran', flush=True))\n"
        "threading.Thread(target=lambda: (time.sleep(0.3), print('thread done'))).start()\n"
        "print('buffered', end='')\n"
        "exit_process(3)\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 3, done.stderr
    assert done.stdout == "bufferedthread done\nhandler ran\n"


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("data.root={tmp}/a-file/data", "a-file is a file, not a folder"),
        ("spark.python={tmp}/no-such-python", "no-such-python: no executable interpreter there"),
        ("spark.python={tmp}/a-file", "a-file: no executable interpreter there"),
    ],
)
def test_unusable_local_paths_stop_a_stage_before_spark(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, override: str, message: str
) -> None:
    from spark_jobs import ingest

    (tmp_path / "a-file").write_text("not a folder")
    argv = ["--params", str(REPO / "params.yaml"), "--set", f"data.root={tmp_path / 'data'}"]
    assert ingest.main([*argv, "--set", override.format(tmp=tmp_path)]) == 2
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 1, errors
    assert message in errors[0]


@pytest.mark.parametrize(
    ("stage", "overrides", "folder"),
    [
        ("ingest", ["data.root={src}"], "{src}/ingest"),  # a class folder named "ingest" would be replaced
        ("ingest", ["data.root={src}/0"], "{src}/0/ingest"),
        ("ingest", ["ingest.source={tmp}/data/ingest"], "{tmp}/data/ingest"),
        ("ingest", ["ingest.source={tmp}/data"], "{tmp}/data/ingest"),
        ("score", ["score.inbox={tmp}/data/predictions/incoming"], "{tmp}/data/predictions"),
        ("score", ["score.inbox={tmp}/data/stream/incoming"], "{tmp}/data/stream"),  # it would score its own output
        ("train", ["train.output={src}"], "{src}/mllib"),
        ("evaluate", ["evaluate.champion={src}/champion"], "{src}/champion"),
    ],
)
def test_a_stage_never_writes_into_a_source(tmp_path: Path, caplog, stage: str, overrides, folder: str) -> None:
    """Refused before Spark starts, and nothing in the source changes."""
    import importlib

    src = tmp_path / "src"
    (src / "ingest").mkdir(parents=True)
    (src / "ingest" / "a.png").write_bytes(b"an image of the class 'ingest'")
    values = {"src": src, "tmp": tmp_path}
    argv = ["--params", str(REPO / "params.yaml"), "--set", f"data.root={tmp_path / 'data'}"]
    argv += ["--set", f"ingest.source={src}", "--set", f"score.inbox={tmp_path / 'inbox'}"]
    for override in overrides:
        argv += ["--set", override.format(**values)]
    assert importlib.import_module(f"spark_jobs.{stage}").main(argv) == 2
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 1, errors
    assert f"{stage} would write to {folder.format(**values)}, which overlaps" in errors[0]
    assert (src / "ingest" / "a.png").read_bytes() == b"an image of the class 'ingest'"


def test_a_home_relative_root_is_checked_where_it_is_written(tmp_path: Path, monkeypatch) -> None:
    from spark_jobs import ingest
    from spark_jobs.core.config import ConfigError
    from spark_jobs.core.jobs import check_sources_untouched

    src = tmp_path / "src"
    monkeypatch.setenv("HOME", str(src))
    cfg = load(REPO / "params.yaml", [f"ingest.source={src}", "data.root=~/out"])
    with pytest.raises(ConfigError, match=f"would write to {src}/out/ingest, which overlaps ingest.source {src}"):
        check_sources_untouched("ingest", cfg, ingest.outputs(cfg))


def test_the_bundled_layout_overlaps_no_output() -> None:
    import importlib

    from spark_jobs.core.jobs import check_sources_untouched

    cfg = load(REPO / "params.yaml")
    for stage in ("ingest", "backbone", "features", "train", "evaluate", "score"):
        check_sources_untouched(stage, cfg, importlib.import_module(f"spark_jobs.{stage}").outputs(cfg))


def test_a_file_system_s_refusal_is_found_in_python_and_in_a_jvm_message() -> None:
    import errno

    from spark_jobs.core.jobs import storage_fault

    assert storage_fault(OSError(errno.ENOSPC, "No space left on device", "/d/x")) == "No space left on device: /d/x"
    java = "An error occurred while calling o12.parquet.\n: java.io.IOException: No space left on device\n\tat x.y(Z)"
    wrapped = RuntimeError("job aborted")
    wrapped.__cause__ = RuntimeError(java)
    assert storage_fault(wrapped) == "java.io.IOException: No space left on device"
    assert storage_fault(OSError(errno.EROFS, "Read-only file system")) == "Read-only file system"
    assert storage_fault(OSError(errno.ENOENT, "No such file")) is None
    assert storage_fault(ValueError("bad")) is None


def test_a_write_refused_mid_run_is_one_line_and_its_own_exit_code(tmp_path: Path, caplog) -> None:
    import errno

    from spark_jobs.core.config import Params
    from spark_jobs.core.jobs import EXIT_STORAGE, run_stage

    def body(cfg, spark) -> None:
        raise OSError(errno.ENOSPC, "No space left on device", f"{cfg.data.root}/x")

    argv = ["--params", str(REPO / "params.yaml"), "--set", f"data.root={tmp_path}"]
    code = run_stage("t", argv, body, params=Params, outputs=lambda c: [], description="", needs_spark=False)
    assert code == EXIT_STORAGE
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert errors == [
        f"t: data.root's file system refused a write, nothing published: No space left on device: {tmp_path}/x"
    ]


def test_a_read_only_data_root_is_refused_before_spark(tmp_path: Path, caplog) -> None:
    from spark_jobs import ingest

    with tmpfs(tmp_path / "ro", read_only=True) as ro:
        argv = ["--params", str(REPO / "params.yaml"), "--set", f"data.root={ro / 'data'}"]
        assert ingest.main(argv) == 2
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert errors == [
        f"ingest: data.root {ro / 'data'}: cannot write there ({ro}, where it would be made): read-only file system"
    ]
