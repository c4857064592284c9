"""DVC versioning of a run's outputs, in a real DVC workspace: commit to the cache and dvc.lock,
push to a (local) remote when one is configured, one clear error when DVC fails."""

from __future__ import annotations

import hashlib
import os
import sys
from pathlib import Path

import pytest
import yaml
from image_platform import versioning

STAGE = {"cmd": "python -c \"open('out.txt', 'w').write('first')\"", "outs": ["out.txt"]}


@pytest.fixture
def workspace(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("PATH", f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("DVC_NO_ANALYTICS", "1")
    repo = tmp_path / "repo"
    repo.mkdir()
    versioning.dvc(repo, "init", "--no-scm")
    (repo / "dvc.yaml").write_text(yaml.safe_dump({"stages": {"make": STAGE}}))
    versioning.dvc(repo, "repro")
    return repo


def _locked_md5(repo: Path) -> str:
    lock = yaml.safe_load((repo / "dvc.lock").read_text())
    return lock["stages"]["make"]["outs"][0]["md5"]


def test_commit_records_the_new_output(workspace: Path) -> None:
    (workspace / "out.txt").write_text("produced by an Airflow run")  # a run's new output
    done = versioning.version_outputs(workspace, ["make"])
    assert done == {"stages": ["make"], "pushed": False, "remote": None}
    md5 = hashlib.md5(b"produced by an Airflow run").hexdigest()
    assert _locked_md5(workspace) == md5
    assert (workspace / ".dvc" / "cache" / "files" / "md5" / md5[:2] / md5[2:]).exists()
    assert "up to date" in versioning.dvc(workspace, "status")


def test_push_when_a_remote_is_configured(workspace: Path, tmp_path: Path) -> None:
    store = tmp_path / "remote"
    versioning.dvc(workspace, "remote", "add", "--default", "store", str(store))
    (workspace / "out.txt").write_text("second run")
    done = versioning.version_outputs(workspace, ["make"])
    assert done["pushed"] is True
    assert done["remote"] == "store"
    md5 = hashlib.md5(b"second run").hexdigest()
    assert (store / "files" / "md5" / md5[:2] / md5[2:]).read_text() == "second run"


def test_a_failing_dvc_command_is_one_clear_error(workspace: Path) -> None:
    with pytest.raises(versioning.DvcError, match=r"dvc commit --force no-such-stage failed \(exit \d+\)"):
        versioning.version_outputs(workspace, ["no-such-stage"])


def test_record_params_keeps_comments_and_types(tmp_path: Path) -> None:
    (tmp_path / "params.yaml").write_text(
        "# the pipeline's knobs\ningest:\n  source: data/sample  # where images are\n  image_size: 32\n"
        "train:\n  cnn:\n    epochs: 12\n"
    )
    changed = versioning.record_params(
        tmp_path, ["ingest.source=s3://bucket/raw", "ingest.image_size=64", "train.cnn.epochs=12"]
    )
    assert changed == {"ingest.source": "s3://bucket/raw", "ingest.image_size": 64}  # epochs unchanged
    text = (tmp_path / "params.yaml").read_text()
    assert "# the pipeline's knobs" in text
    assert "# where images are" in text
    assert yaml.safe_load(text) == {
        "ingest": {"source": "s3://bucket/raw", "image_size": 64},
        "train": {"cnn": {"epochs": 12}},
    }
    # A path is recorded as the stages read it: verbatim, `#` and all.
    versioning.record_params(tmp_path, ["ingest.source=/data/photos #2"])
    assert yaml.safe_load((tmp_path / "params.yaml").read_text())["ingest"]["source"] == "/data/photos #2"
    with pytest.raises(ValueError, match=r"params\.yaml has no section 'nope\.key'"):
        versioning.record_params(tmp_path, ["nope.key=1"])
    with pytest.raises(ValueError, match=r"params\.yaml has no parameter 'ingest\.nope'"):
        versioning.record_params(tmp_path, ["ingest.nope=1"])
