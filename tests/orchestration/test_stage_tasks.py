"""The packaged artifact and the stage task, for real: the zip carries the code and its version,
and a stage submitted by spark-submit that rejects its input fails the task without retries."""

from __future__ import annotations

import json
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from image_platform import package


def test_package_holds_the_code_and_its_version(tmp_path: Path) -> None:
    built = package.build(tmp_path)
    assert package.build(tmp_path) == built  # same tree, same artifact
    with zipfile.ZipFile(built) as archive:
        names = set(archive.namelist())
        info = json.loads(archive.read(f"spark_jobs/{package.BUILD_INFO}"))
    assert {f"spark_jobs/{p.name}" for p in package.sources()} <= names
    assert all(n.endswith(".py") for n in names - {f"spark_jobs/{package.BUILD_INFO}"})
    assert info["content_sha256_16"] in built.name
    # Imported from the zip alone (as executors do), the code reports the stamped version.
    code = (
        "import sys; sys.path.insert(0, sys.argv[1]); import spark_jobs.manifest as m; "
        "assert m.__file__.startswith(sys.argv[1]), m.__file__; print(m.job_version_label())"
    )
    out = subprocess.run(
        [sys.executable, "-I", "-c", code, str(built)], cwd=tmp_path, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == f"0.1.0+{info['git_commit'][:12]}{'-dirty' if info['dirty'] else ''}"


SUBMIT = """
import sys
from pathlib import Path
from airflow.sdk.exceptions import AirflowFailException
from image_platform import package, stages

root = Path(sys.argv[1])
task = stages.stage_task(
    "ingest",
    stages.dvc_commands()["ingest"],
    py_files=str(package.build(root / "dist")),
    overrides=[f"data.root={root / 'data'}", f"ingest.source={root / 'no-such-folder'}"],
)
try:
    task.execute(context={})
except AirflowFailException as exc:
    print("FAIL-NO-RETRY:", exc)
"""


@pytest.mark.slow
def test_a_stage_rejecting_its_input_fails_without_retry(airflow_env: dict[str, str], tmp_path: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-c", SUBMIT, str(tmp_path)], env=airflow_env, capture_output=True, text=True, timeout=300
    )
    assert "FAIL-NO-RETRY: stage ingest stopped: unusable input or parameters (exit code 2)" in out.stdout, (
        out.stdout[-2000:] + out.stderr[-3000:]
    )
    # The stage's one-line reason reaches the task log.
    assert "no-such-folder' is not a directory, s3:// prefix or manifest .csv" in out.stdout + out.stderr
