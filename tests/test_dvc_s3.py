"""DVC with an S3 remote (dvc-s3) on the S3 server on loopback: the session's training run
(``trained_pipeline``: the training DAG, in a workspace under git whose DVC remote is
``s3://dvc-remote/...`` with ``endpointurl`` configured) pushed its datasets and models from its
``version`` task; a fresh ``git clone`` pulls them back byte-identical. Credentials come from the
standard AWS environment only: none is written into the repository's files."""

from __future__ import annotations

import hashlib
import os
import subprocess
from pathlib import Path

import boto3
import pytest
from image_platform import versioning

from tests.orchestration.airflow_setup import git
from tests.orchestration.training_run import REMOTE_BUCKET

pytestmark = [pytest.mark.slow, pytest.mark.s3]

OUTPUTS = ("data/ingest", "data/features", "models/backbone", "models/mllib")


def _files(root: Path) -> dict[str, str]:
    """sha256 of every file under the outputs, by path."""
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for out in OUTPUTS
        for p in sorted((root / out).rglob("*"))
        if p.is_file()
    }


def test_push_to_s3_and_pull_into_a_fresh_clone(trained_pipeline: dict, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("PATH", trained_pipeline["env"]["PATH"])
    monkeypatch.setenv("DVC_NO_ANALYTICS", "1")
    ws = trained_pipeline["workspace"]
    pushed = trained_pipeline["version"]
    assert pushed["pushed"] is True, pushed
    assert pushed["remote"] == "s3store"
    assert set(pushed["stages"]) >= {"ingest", "backbone", "features", "train@mllib"}
    objects = boto3.client("s3").list_objects_v2(Bucket=REMOTE_BUCKET, Prefix="image-platform/")
    assert objects["KeyCount"] > 0
    git(ws, "add", "-A")  # DVC wrote .gitignore files for its outputs: git keeps what it should
    git(ws, "commit", "-q", "-m", "pipeline outputs")

    clone = tmp_path / "clone"
    git(tmp_path, "clone", "-q", str(ws), str(clone))
    assert not (clone / "data" / "ingest").exists()
    versioning.dvc(clone, "pull", "--with-deps", "train@mllib")  # what the mllib model needs
    produced = _files(ws)
    assert any(p.startswith("models/mllib/") for p in produced)
    assert _files(clone) == produced  # byte-identical
    assert "up to date" in versioning.dvc(clone, "status", "train@mllib")
    # The credentials stayed in the environment: no file of the repository holds them.
    secret = os.environ["AWS_SECRET_ACCESS_KEY"]
    tracked = subprocess.run(["git", "ls-files"], cwd=clone, capture_output=True, text=True, check=True).stdout
    for name in [*tracked.split(), ".dvc/config"]:
        assert secret not in (clone / name).read_text(errors="replace"), name
    for path in produced:
        if path.endswith((".json", ".yaml")):
            assert secret not in (ws / path).read_text(), path
