"""Model cards, manifests and promotion records are typed records: written and read through one
module each, an old or edited file refused in one line, and no string-key reads of them elsewhere."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest

from spark_jobs.core import manifest
from spark_jobs.core.config import Params
from spark_jobs.core.jobs import EXIT_BAD_INPUT, run_stage
from spark_jobs.core.store import SourceError
from spark_jobs.ml import cards
from tests.factories import REPO, model_card

_card = model_card


def test_a_card_round_trips_and_is_frozen(tmp_path: Path) -> None:
    card = _card()
    cards.write_card(tmp_path, card)
    again = cards.read_card(tmp_path)
    assert again == card
    assert again.ingest_settings.image_size == 32  # typed all the way down
    with pytest.raises(ValueError, match="frozen"):
        again.version = "other"  # type: ignore[misc]


def test_a_card_with_a_renamed_key_is_refused_at_writing() -> None:
    with pytest.raises(ValueError, match="ingest_setings"):
        _card(ingest_setings={})


@pytest.mark.parametrize(
    ("edit", "where"),
    [
        (lambda d: d.pop("ingest_settings"), "ingest_settings"),  # a card from before the field existed
        (lambda d: d.update(kind="resnet"), "kind"),
        (lambda d: d.update(extra_field=1), "extra_field"),
    ],
)
def test_an_old_or_edited_card_is_refused_in_one_line(tmp_path: Path, edit, where: str) -> None:
    doc = _card().model_dump(mode="json")
    edit(doc)
    (tmp_path / cards.CARD).write_text(json.dumps(doc))
    with pytest.raises(SourceError) as info:
        cards.read_card(tmp_path)
    message = str(info.value)
    assert "\n" not in message
    assert str(tmp_path / cards.CARD) in message
    assert where in message
    assert "retrain it" in message


def test_a_manifest_is_read_typed_and_an_old_one_refused(tmp_path: Path) -> None:
    doc = manifest.build(
        "ingest", {"ingest": {"image_size": 32}}, {}, {"rows": 3}, {"success": True, "expectations": 1}
    )
    manifest.write(tmp_path, doc)
    read = manifest.read(tmp_path)
    assert read.count("rows") == 3
    assert read.ingest_settings().image_size == 32
    assert read.job_version == manifest.job_version()
    raw = manifest.read_json(tmp_path)
    del raw["params_hash"]
    (tmp_path / manifest.MANIFEST).write_text(json.dumps(raw))
    with pytest.raises(manifest.RecordError, match=r"params_hash.*run its stage again"):
        manifest.read(tmp_path)


def test_a_stage_meeting_an_old_manifest_stops_with_one_line(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Exit code 2 and the refusal, never a stack trace (jobs.run_stage maps SourceError)."""
    ingest = tmp_path / "data" / "ingest"
    ingest.mkdir(parents=True)
    (ingest / manifest.MANIFEST).write_text(json.dumps({"stage": "ingest", "counts": {}}))
    argv = ["--params", str(REPO / "params.yaml"), "--set", f"data.root={tmp_path / 'data'}"]
    body = lambda cfg, _: manifest.read(ingest)  # noqa: E731
    code = run_stage("backbone", argv, body, params=Params, outputs=lambda cfg: [], description="", needs_spark=False)
    assert code == EXIT_BAD_INPUT
    [line] = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert "cannot be read by this version" in line
    assert "run its stage again" in line


RECORD_MODULES = {"spark_jobs/core/manifest.py", "spark_jobs/ml/cards.py"}
# Names the code gives a card, manifest or promotion record when it holds one.
RECORD_NAMES = {"card", "light", "champion", "previous", "promotion", "doc", "classifier", "anomaly"}
READERS = {"read", "read_card", "read_backbone_card", "read_promotion", "read_champion"}


def _string_key_reads(path: Path) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if not isinstance(node, ast.Subscript) or not isinstance(node.slice, ast.Constant):
            continue
        target = node.value
        named = isinstance(target, ast.Name) and target.id in RECORD_NAMES
        read = isinstance(target, ast.Call) and getattr(target.func, "attr", getattr(target.func, "id", "")) in READERS
        if (named or read) and isinstance(node.slice.value, str):
            found.append(f"{path.relative_to(REPO)}:{node.lineno} {ast.unparse(node)}")
    return found


def test_no_string_key_reads_of_records_outside_their_modules() -> None:
    files = [p for p in (REPO / "spark_jobs").rglob("*.py") if str(p.relative_to(REPO)) not in RECORD_MODULES]
    files += list((REPO / "plugins").rglob("*.py"))
    found = [hit for p in sorted(files) for hit in _string_key_reads(p)]
    assert not found, found


def test_the_string_key_check_can_fail(tmp_path: Path) -> None:
    bad = REPO / "spark_jobs" / "_probe_for_test.py"
    try:
        bad.write_text('def f(card, folder):\n    return card["version"], read_card(folder)["kind"]\n')
        assert len(_string_key_reads(bad)) == 2
    finally:
        bad.unlink()
