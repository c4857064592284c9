"""The lineage trace's links when records are missing, moved or replaced, its inputs and its exit
codes (the whole chain on real runs: tests/test_pipeline.py for batch scoring after ``dvc repro``,
tests/spark_jobs/test_score_stream.py for a micro-batch)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from spark_jobs.core import manifest
from spark_jobs.core.store import SourceError
from spark_jobs.lineage import trace


def _published(root: Path, stage: str, run_id: str) -> Path:
    doc = manifest.build(
        stage,
        {"p": 1},
        {"source": {"uri": "file:///src", "files": 3}},
        {"rows": 3},
        {"success": True, "expectations": 2, "failed": []},
        run_id=run_id,
    )
    folder = root / stage
    folder.mkdir(parents=True)
    return manifest.write(folder, doc)


def test_an_image_is_named_by_its_sha256_or_its_file(tmp_path: Path) -> None:
    image = tmp_path / "scan.png"
    image.write_bytes(b"pixels")
    digest = hashlib.sha256(b"pixels").hexdigest()
    assert trace.image_id_of(str(image)) == digest
    assert trace.image_id_of(digest.upper()) == digest
    for bad in ("not-a-sha", str(tmp_path / "missing.png"), "ab" * 31):
        with pytest.raises(SourceError, match="neither an image's sha256"):
            trace.image_id_of(bad)


def test_a_data_link_is_followed_by_its_hash_and_says_why_when_it_cannot_be(tmp_path: Path) -> None:
    path = _published(tmp_path, "ingest", "20261207T051354Z-df13f659")
    sha = manifest.file_hash(path)
    found, doc = trace.data_link("ingest", tmp_path, sha, None)
    assert found.missing is None
    assert doc is not None
    assert (found.facts["run_id"], found.facts["gate"], found.facts["source"]["files"]) == (doc.run_id, "PASSED", 3)
    elsewhere, _ = trace.data_link("ingest", tmp_path / "other", sha, str(path))  # where the card says it was
    assert elsewhere.facts["run_id"] == doc.run_id
    replaced, _ = trace.data_link("ingest", tmp_path, "f" * 64, None)
    assert (
        replaced.missing
        == f"the model was trained on ingest run ffffffffffff, no longer published ({path} is {sha[:12]})"
    )
    gone, _ = trace.data_link("features", tmp_path, "f" * 64, None)
    assert gone.missing == f"no published features run at {tmp_path / 'features'}"
    unused, _ = trace.data_link("features", tmp_path, None, None)
    assert (unused.missing, unused.facts) == (None, {"used": False})


def test_a_model_trained_elsewhere_and_an_image_never_scored_are_missing_links(tmp_path: Path) -> None:
    model, card = trace.model_link("cnn-1", [tmp_path / "models" / "cnn"])
    assert card is None
    looked = tmp_path / "models" / "cnn"
    assert model.missing == (
        f"no card of version cnn-1 in {looked}: trained elsewhere, or since replaced by a newer model"
    )
    [link] = trace.chain_of_image(tmp_path, "a" * 64, tmp_path / "models", tmp_path / "champion")
    assert link.step == "prediction"
    assert link.missing.startswith(f"image {'a' * 64} was never scored")
    assert "MISSING: image" in trace.as_text([link])


def test_the_command_line_exits_2_with_one_line_when_there_is_nothing_to_trace(tmp_path: Path, capsys) -> None:
    params = tmp_path / "params.yaml"
    params.write_text(f"data:\n  root: {tmp_path / 'data'}\n")
    assert trace.main(["not-an-image", "--params", str(params)]) == 2
    assert trace.main(["--model", "cnn-1", "--params", str(params), "--json"]) == 2
    [link] = json.loads(capsys.readouterr().out)
    assert (link["step"], link["facts"]) == ("model", {"version": "cnn-1"})
    assert link["missing"].startswith("no card of version cnn-1")
    with pytest.raises(SystemExit):
        trace.main(["a" * 64, "--model", "cnn-1"])  # one or the other
