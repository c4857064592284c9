"""The packaged artifact and the stage task, for real: the zip carries the code and its version,
and a stage submitted by spark-submit that rejects its input fails the task without retries."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import boto3
import pytest
from image_platform import package, stages

from spark_jobs.core.config import parse_override
from spark_jobs.core.manifest import BUILD_INFO
from spark_jobs.core.session import DRIVER_JAVA
from spark_jobs.params import Config
from tests.factories import class_image
from tests.orchestration.airflow_setup import run_stage


def test_package_holds_the_code_and_its_version(tmp_path: Path) -> None:
    built = package.build(tmp_path)
    assert package.build(tmp_path) == built  # same tree, same artifact
    with zipfile.ZipFile(built) as archive:
        names = set(archive.namelist())
        info = json.loads(archive.read(f"spark_jobs/{BUILD_INFO}"))
    assert {p.relative_to(package.REPO).as_posix() for p in package.sources()} <= names
    assert "spark_jobs/ml/models.py" in names  # the library's sub-packages too
    assert all(n.endswith(".py") for n in names - {f"spark_jobs/{BUILD_INFO}"})
    assert info["content_sha256_16"] in built.name
    # Imported from the zip alone (as executors do), the code reports the stamped version.
    code = (
        "import sys; sys.path.insert(0, sys.argv[1]); import spark_jobs.core.manifest as m; "
        "assert m.__file__.startswith(sys.argv[1]), m.__file__; print(m.job_version_label())"
    )
    out = subprocess.run(
        [sys.executable, "-I", "-c", code, str(built)], cwd=tmp_path, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == f"0.1.0+{info['git_commit'][:12]}{'-dirty' if info['dirty'] else ''}"


def test_the_stage_task_puts_the_driver_options_on_the_submit_line(tmp_path: Path, monkeypatch) -> None:
    """The JVM starts before the stage reads its params: their driver options, with the stage's
    own overrides applied in order, go on the spark-submit line."""
    (tmp_path / "params.yaml").write_text("spark:\n  driver_java_options: -Dfrom=params\n")
    monkeypatch.setenv(stages.WORKSPACE_ENV, str(tmp_path))
    args = ["train", "--set", "train.model=cnn", "--set=spark.driver_java_options=-Dfrom=override"]
    assert stages.driver_conf(args)[DRIVER_JAVA].endswith("-Dfrom=override")
    assert stages.driver_conf(["ingest"])[DRIVER_JAVA].endswith("-Dfrom=params")
    assert stages.driver_conf(["ingest", "--set=ingest.image_size=2"]) == {}  # the stage says why, exit 2


def test_params_left_empty_override_nothing_and_set_ones_read_back_as_given() -> None:
    """A run's Params as overrides: the empty ones (null) add nothing; the others are written so
    the stages' parser reads back exactly the value the form held (a path verbatim, `#` and all)."""
    keys = {
        "source": "ingest.source",
        "size": "ingest.image_size",
        "epochs": "train.cnn.epochs",
        "tiles": "features.tiles.enabled",
        "exts": "ingest.extensions",
    }
    assert stages.param_overrides(keys, dict.fromkeys(keys)) == []
    given = {"source": "/data/photos #2: 'raw'", "size": 64, "epochs": None, "tiles": False, "exts": [".png", ".jpg"]}
    overrides = stages.param_overrides(keys, given)
    assert [o.split("=", 1)[0] for o in overrides] == [
        "ingest.source",
        "ingest.image_size",
        "features.tiles.enabled",
        "ingest.extensions",
    ]
    assert [parse_override(o, Config)[1] for o in overrides] == ["/data/photos #2: 'raw'", 64, False, [".png", ".jpg"]]


def _run_ingest_task(env: dict[str, str], root: Path, *overrides: str, timeout: float) -> subprocess.CompletedProcess:
    """The ingest stage task, as an Airflow worker runs it, writing under ``root/data``."""
    zip_path = package.build(root / "dist")
    return run_stage(env, "ingest", zip_path, f"data.root={root / 'data'}", *overrides, timeout=timeout)


@pytest.mark.slow
def test_a_stage_rejecting_its_input_fails_without_retry(airflow_env: dict[str, str], tmp_path: Path) -> None:
    out = _run_ingest_task(airflow_env, tmp_path, f"ingest.source={tmp_path / 'no-such-folder'}", timeout=300)
    assert "FAIL-NO-RETRY: stage ingest stopped: unusable input or parameters (exit code 2)" in out.stdout, (
        out.stdout[-2000:] + out.stderr[-3000:]
    )
    # The stage's one-line reason reaches the task log.
    assert "no-such-folder' is not a directory, s3:// prefix or manifest .csv" in out.stdout + out.stderr


@pytest.mark.slow
@pytest.mark.s3
def test_s3_credentials_never_reach_the_task_log(airflow_env: dict[str, str], s3_server: str, tmp_path: Path) -> None:
    """Ingest from s3:// through the stage task: the credentials come from the standard AWS
    environment of the worker and appear in no log line, params file or manifest."""
    client = boto3.client("s3")
    client.create_bucket(Bucket="task-log-images")
    for label in range(3):
        for i in range(8):
            client.put_object(Bucket="task-log-images", Key=f"incoming/{label}/{i}.png", Body=class_image(label, i))
    env = {**airflow_env, **{k: v for k, v in os.environ.items() if k.startswith("AWS_")}}
    out = _run_ingest_task(
        env,
        tmp_path,
        "ingest.source=s3://task-log-images/incoming",
        "gate.raw.min_per_class=5",
        "gate.raw.split_tolerance=0.3",
        timeout=600,
    )
    log = out.stdout + out.stderr
    assert "STAGE-OK" in out.stdout, log[-4000:]
    written = [p for p in (tmp_path / "data").rglob("*") if p.is_file() and p.suffix in (".json", ".yaml", ".txt")]
    assert any(p.name == "_manifest.json" for p in written)
    for secret in (os.environ["AWS_SECRET_ACCESS_KEY"], os.environ["AWS_ACCESS_KEY_ID"]):
        assert secret not in log
        for path in written:
            assert secret not in path.read_text(), path


class _Recorder:
    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []

    def __getattr__(self, level: str):
        return lambda msg, *args, **kwargs: self.calls.append((level, msg % args if args else msg))


def test_the_stages_own_warnings_and_errors_keep_their_level_in_the_task_log() -> None:
    recorder = _Recorder()
    log = stages.LevelledLog(recorder)
    for line in (
        "2026-12-06 12:57:28,062 ERROR spark_jobs: ingest: ingest.source 'x' is not a directory",
        "2026-12-06 12:57:28,062 WARNING spark_jobs.evaluate: cnn rejected by the model gate",
        "26/12/06 12:58:05 WARN Utils: Your hostname resolves to a loopback address",
        "2026-12-06 12:57:34,315 INFO __main__: listed 1797 files",
        "  FAILED summary: expect_column_values_to_be_between ERROR in a detail line",
        "Traceback (most recent call last):",
    ):
        log.info(line)
    log.info("Identified spark application id: %s", "app-1")  # the provider's own, with arguments
    assert [level for level, _ in recorder.calls] == ["error", "warning", "warning", "info", "info", "info", "info"]
    assert recorder.calls[-1] == ("info", "Identified spark application id: app-1")


def test_only_a_param_that_changes_a_tracked_value_makes_a_stage_run(tmp_path: Path) -> None:
    (tmp_path / "params.yaml").write_text(
        "ingest:\n  source: /data/in\n  image_size: 32\ntrain:\n  seed: 1\n  cnn:\n    epochs: 15\n"
    )
    cnn = ("train.seed", "train.cnn", "data.root")
    assert stages.changed_params(tmp_path, cnn, ["train.seed=1", "train.cnn.epochs=15"]) == []  # as recorded
    assert stages.changed_params(tmp_path, cnn, ["train.cnn.epochs=2"]) == ["train.cnn.epochs=2"]
    assert stages.changed_params(tmp_path, cnn, ["ingest.image_size=64"]) == []  # not the cnn's parameter
    ingest = ("ingest.source", "ingest.image_size")
    assert stages.changed_params(tmp_path, ingest, ["ingest.source=/data/in"]) == []
    assert stages.changed_params(tmp_path, ingest, ["ingest.image_size=64"]) == ["ingest.image_size=64"]


def test_a_stage_outside_a_dvc_repository_always_runs(tmp_path: Path) -> None:
    (tmp_path / "params.yaml").write_text((stages.REPO / "params.yaml").read_text())
    assert stages.up_to_date(tmp_path, "dvc.yaml", "ingest", []) is None


def test_the_dag_s_reading_of_dvc_yaml_is_kept_and_follows_its_files(tmp_path: Path, monkeypatch) -> None:
    """A task start parses the DAG file: DVC's reading of dvc.yaml is kept in a file keyed by the
    hash of dvc.yaml and params.yaml, so it is read again (by DVC) only when they change."""
    monkeypatch.setattr(stages.tempfile, "gettempdir", lambda: str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    for name in ("dvc.yaml", "params.yaml", ".dvcignore"):
        (tmp_path / name).write_bytes((stages.REPO / name).read_bytes())
    reads = []

    def counted(root: Path, dvcfile: str) -> dict:
        reads.append(dvcfile)
        return stages._read_pipeline(root, dvcfile)

    first = stages._cached(tmp_path, "dvc.yaml", [tmp_path / "dvc.yaml", tmp_path / "params.yaml"], counted)
    again = stages._cached(tmp_path, "dvc.yaml", [tmp_path / "dvc.yaml", tmp_path / "params.yaml"], counted)
    assert again == first == stages._read_pipeline(stages.REPO, "dvc.yaml")
    assert reads == ["dvc.yaml"]  # the second came from the kept file
    (tmp_path / "params.yaml").write_text((tmp_path / "params.yaml").read_text().replace("root: data", "root: out"))
    changed = stages._cached(tmp_path, "dvc.yaml", [tmp_path / "dvc.yaml", tmp_path / "params.yaml"], counted)
    assert reads == ["dvc.yaml", "dvc.yaml"]
    assert "out/ingest" in changed["ingest"].outs


def test_a_stage_dvc_cannot_judge_runs(tmp_path: Path, caplog) -> None:
    """A dvc.yaml DVC cannot read (or a stage it does not know) is no reason to skip: the stage runs
    and says what is wrong itself."""
    (tmp_path / ".dvc").mkdir()
    (tmp_path / "params.yaml").write_text((stages.REPO / "params.yaml").read_text())
    (tmp_path / "dvc.yaml").write_text("stages:\n  ingest: [not, a, stage]\n")
    with caplog.at_level("WARNING"):
        assert stages.up_to_date(tmp_path, "dvc.yaml", "ingest", []) is None
    assert "it runs" in caplog.text
