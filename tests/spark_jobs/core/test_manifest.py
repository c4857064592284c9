"""Manifests: built from a run, written atomically, read back typed; an edited one refused in a line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from spark_jobs.core import manifest
from spark_jobs.core.config import params_hash


def _doc(**counts: int) -> manifest.Manifest:
    params = {"features": {"kind": "cnn"}, "data": {"root": "data"}}
    inputs = {"ingest": {"manifest_sha256": "ab" * 32, "settings": {"image_size": 48}}}
    return manifest.build("features", params, inputs, counts, {"success": True, "expectations": 4}, run_id="r1")


def test_a_manifest_round_trips_with_its_params_hash(tmp_path: Path) -> None:
    doc = _doc(rows=10, images=5)
    manifest.write(tmp_path, doc)
    read = manifest.read(tmp_path)
    assert read == doc
    assert read.params_hash == params_hash(doc.params)
    assert (read.run_id, read.count("rows", "images"), read.count("absent")) == ("r1", 15, 0)
    assert read.ingest_settings().image_size == 48  # a features table: its input's settings
    assert read.ingest_manifest_sha256() == "ab" * 32
    assert read.job_version.label().startswith(f"{read.job_version.package}+")


def test_json_is_written_atomically_and_sorted(tmp_path: Path) -> None:
    path = manifest.write_json(tmp_path / "deep" / "m.json", {"b": 1, "a": [1, 2]})
    assert json.loads(path.read_text()) == {"a": [1, 2], "b": 1}
    assert path.read_text().index('"a"') < path.read_text().index('"b"')
    assert sorted(p.name for p in path.parent.iterdir()) == ["m.json"]  # no partial file left


def test_an_edited_record_is_refused_naming_the_file_and_the_key(tmp_path: Path) -> None:
    manifest.write(tmp_path, _doc(rows=1))
    raw = manifest.read_json(tmp_path)
    raw["gate"]["success"] = "maybe"
    (tmp_path / manifest.MANIFEST).write_text(json.dumps(raw))
    with pytest.raises(manifest.RecordError) as info:
        manifest.read(tmp_path)
    message = str(info.value)
    assert "\n" not in message
    assert str(tmp_path / manifest.MANIFEST) in message
    assert "gate.success" in message
    assert message.endswith("run its stage again")


def test_the_version_stamp_names_the_code() -> None:
    stamp = manifest.git_stamp(Path(manifest.__file__).parent)
    assert len(stamp["git_commit"]) == 40 or stamp["git_commit"] == "unknown"
    version = manifest.JobVersion(package="0.1.0", git_commit="0123456789abcdef" * 2 + "01234567", dirty=True)
    assert version.label() == "0.1.0+0123456789ab-dirty"
