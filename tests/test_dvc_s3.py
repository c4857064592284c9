"""DVC with an S3 remote (dvc-s3) on the S3 server on loopback: a workspace under git produces a
dataset and a model with ``dvc repro``, pushes them to ``s3://`` with ``endpointurl`` configured,
and a fresh ``git clone`` pulls them back byte-identical. Credentials come from the standard AWS
environment only: none is written into the repository's files."""

from __future__ import annotations

import hashlib
import os
import subprocess
from pathlib import Path

import boto3
import pytest
from image_platform import versioning

from tests.orchestration.airflow_setup import BIN, git, make_workspace

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


def test_push_to_s3_and_pull_into_a_fresh_clone(s3_server: str, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("PATH", f"{BIN}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("DVC_NO_ANALYTICS", "1")
    boto3.client("s3").create_bucket(Bucket="dvc-remote")
    ws = tmp_path / "ws"
    make_workspace(ws, 30, f"ingest.source={ws / 'src'}", "backbone.epochs=1", scm=True)
    versioning.dvc(ws, "remote", "add", "--default", "s3store", "s3://dvc-remote/image-platform")
    versioning.dvc(ws, "remote", "modify", "s3store", "endpointurl", s3_server)
    versioning.dvc(ws, "repro", "train@mllib")
    pushed = versioning.version_outputs(ws, ["ingest", "backbone", "features", "train@mllib"])
    assert pushed == {"stages": ["ingest", "backbone", "features", "train@mllib"], "pushed": True, "remote": "s3store"}
    objects = boto3.client("s3").list_objects_v2(Bucket="dvc-remote", Prefix="image-platform/")
    assert objects["KeyCount"] > 0
    git(ws, "add", "-A")  # DVC wrote .gitignore files for its outputs: git keeps what it should
    git(ws, "commit", "-q", "-m", "pipeline outputs")

    clone = tmp_path / "clone"
    git(tmp_path, "clone", "-q", str(ws), str(clone))
    assert not (clone / "data" / "ingest").exists()
    versioning.dvc(clone, "pull", "--with-deps", "train@mllib")  # what this workspace ran
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
