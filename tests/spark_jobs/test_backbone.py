"""The backbone stage: the project trains and exports its own small CNN backbone, reproducibly."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import boto3
import numpy as np
import pytest
import torch

from spark_jobs import backbone, train
from spark_jobs.core import manifest
from spark_jobs.core.config import ConfigError
from spark_jobs.core.store import SourceError
from spark_jobs.ml import extractors, models
from spark_jobs.ml.cards import CARD
from spark_jobs.ml.extractors import CnnConfig
from tests.factories import link_ingest, with_overrides

pytestmark = pytest.mark.spark  # uses the shared ingest output


def _run(ingested: Path, tmp_path: Path, name: str) -> Path:
    cfg = link_ingest(
        ingested, tmp_path / name, f"backbone.output={tmp_path / name / 'bb'}", "backbone.width=4", "backbone.epochs=2"
    )
    return backbone.run(cfg)


def test_backbone_is_trained_exported_and_reproducible(ingested: Path, tmp_path: Path) -> None:
    out = _run(ingested, tmp_path, "a")
    card = json.loads((out / backbone.CARD).read_text())
    assert card["architecture"] == "small_cnn"
    assert card["embedding_dim"] == 16
    assert card["image_size"] == 32
    assert card["classes"] == ["0", "1", "2"]
    assert len(card["epoch_losses"]) == 2
    assert card["epoch_losses"][1] < card["epoch_losses"][0]  # it learns
    assert card["data_manifest_sha256"] == manifest.file_hash(ingested / manifest.MANIFEST)

    exported = extractors.Cnn.open(CnnConfig(backbone=str(out / backbone.EXPORTED)), 16, 32)
    from_state = extractors.Cnn.open(
        CnnConfig(backbone=str(out / backbone.STATE_DICT), architecture="small_cnn"), 16, 32
    )
    batch = np.random.default_rng(0).integers(0, 255, (5, 32, 32, 3), dtype=np.uint8)
    np.testing.assert_allclose(exported(batch), from_state(batch), atol=1e-5)

    again = _run(ingested, tmp_path, "b")
    first = torch.load(out / backbone.STATE_DICT, weights_only=True)
    second = torch.load(again / backbone.STATE_DICT, weights_only=True)
    assert first.keys() == second.keys()
    for key in first:
        torch.testing.assert_close(first[key], second[key], rtol=1e-5, atol=1e-6)
    assert models.ARCHITECTURES["small_cnn"](first) is not None

    # fine-tuning from it: the architecture and width come from its card, not from train.cnn.width
    tuned = link_ingest(ingested, tmp_path / "c", f"train.cnn.init={out / backbone.STATE_DICT}", "train.cnn.width=32")
    spec = train.torch_spec(tuned, "cnn", ["0", "1", "2"], None, ingested, ingested)
    assert spec.model.architecture == "small_cnn_classifier"
    assert spec.model.args["width"] == 4
    assert spec.init.sha256 == hashlib.sha256((out / backbone.STATE_DICT).read_bytes()).hexdigest()
    record = train.init_backbone(tuned)
    assert (record.architecture, record.width, record.card) == ("small_cnn", 4, (out / CARD).as_uri())
    # the same from an S3 prefix (the loopback server): the card is read beside the weights
    client = boto3.client("s3")
    client.create_bucket(Bucket="backbones")
    for name in (backbone.STATE_DICT, CARD):
        client.put_object(Bucket="backbones", Key=f"digits/{name}", Body=(out / name).read_bytes())
    remote = train.init_backbone(with_overrides(tuned, "train.cnn.init=s3://backbones/digits/backbone.pt"))
    assert (remote.architecture, remote.width, remote.sha256) == ("small_cnn", 4, record.sha256)
    assert remote.card == "s3://backbones/digits/card.json"
    exported = link_ingest(ingested, tmp_path / "d", f"train.cnn.init={out / backbone.EXPORTED}")
    with pytest.raises(ConfigError, match="state dict"):
        train.init_backbone(exported)


def test_backbone_before_ingest_is_a_clear_error(tmp_path: Path) -> None:
    from tests.factories import make_config

    with pytest.raises(SourceError, match="no published ingest output"):
        backbone.run(make_config(tmp_path, f"backbone.output={tmp_path / 'bb'}"))
