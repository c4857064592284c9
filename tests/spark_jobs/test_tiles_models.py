"""The large-image models end to end on the grids workspace's params (grids/params.yaml), small:
digit grids -> ingest -> tile embeddings -> tiles_gru and the tiles_mean baseline, trained by
TorchDistributor -> evaluate (one prediction per test image) -> score new grids cut as at training."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.dataset as ds
import pytest

from spark_jobs import evaluate, features, ingest, sample, score, train
from spark_jobs.ml import cards, models
from spark_jobs.params import Config, load
from spark_jobs.scoring import tables
from tests.factories import REPO, with_overrides

pytestmark = pytest.mark.spark


@pytest.fixture(scope="module")
def grids(spark, tmp_path_factory: pytest.TempPathFactory) -> Config:
    """A grids workspace: 90 grids (30 a class) and 6 new ones in the inbox, ingested and cut into
    tile embeddings of a small (untrained) small_cnn backbone."""
    tmp = tmp_path_factory.mktemp("grids")
    backbone = models.export_backbone(models.small_cnn(4), tmp / "backbone.pt2", 32)
    cfg = load(
        REPO / "grids" / "params.yaml",
        [
            f"data.root={tmp / 'data'}",
            "spark.master=local[2]",
            "spark.shuffle_partitions=2",
            "sample.grids.images=90",
            "sample.grids.inbox=6",
            f"ingest.source={tmp / 'data' / 'sample' / 'grids'}",
            "gate.raw.min_per_class=5",
            "gate.raw.split_tolerance=0.2",
            f"features.cnn.backbone={backbone}",
            f"train.output={tmp / 'models'}",
            "train.tiles.epochs=3",
            "train.tiles.batch_size=16",
            f"evaluate.reports={tmp / 'reports'}",
            f"evaluate.champion={tmp / 'models' / 'champion'}",
            f"evaluate.rejected={tmp / 'models' / 'rejected'}",
            "gate.model.min_accuracy=0.0",  # an untrained backbone: the mechanics, not the accuracy
            "gate.model.min_macro_f1=0.0",
            "gate.predictions.max_low_confidence=1.0",
            f"score.inbox={tmp / 'data' / 'sample' / 'inbox'}",
        ],
    )
    sample.run(cfg)
    ingest.run(cfg, spark)
    features.run(cfg, spark)
    return cfg


def test_tile_models_train_evaluate_and_score_one_row_per_image(spark, grids: Config) -> None:
    folders = {
        kind: train.run(with_overrides(grids, f"train.model={kind}"), spark) for kind in ("tiles_mean", "tiles_gru")
    }
    card = json.loads((folders["tiles_gru"] / cards.CARD).read_text())
    assert card["kind"] == "tiles_gru"
    assert card["architecture"] == "tile_sequence"
    assert card["arch"] | {"classes": 3} == {
        "dim": 16,
        "classes": 3,
        "aggregate": "gru",
        "hidden": 64,
        "bidirectional": True,
        "dropout": 0.1,
    }
    assert card["feature_kind"] == "cnn"
    assert card["tiles"]["size"] == 32
    assert card["training"]["world_size"] == 2  # TorchDistributor's ranks, each on its shard
    assert (
        card["training"]["train_rows"]
        == json.loads((Path(grids.data.root) / "ingest" / "_manifest.json").read_text())["counts"]["rows_by_split"][
            "train"
        ]
    )  # images, not tiles
    assert (folders["tiles_gru"] / card["files"]["extractor"]).exists()
    # its drift reference: the GRU's last states (both directions) of every train image
    assert (card["reference"]["layer"], card["reference"]["dim"]) == ("pooled", 128)
    assert card["reference"]["rows"] == card["training"]["train_rows"]
    assert json.loads((folders["tiles_mean"] / cards.CARD).read_text())["arch"]["aggregate"] == "mean"

    reports = evaluate.run(grids, spark)
    doc = json.loads((reports / evaluate.EVALUATION).read_text())
    test_images = json.loads((Path(grids.data.root) / "ingest" / "_manifest.json").read_text())["counts"][
        "rows_by_split"
    ]["test"]
    assert doc["models"]["tiles_gru"]["test_rows"] == test_images  # one prediction per image
    assert doc["models"]["tiles_gru"]["promoted"]
    assert doc["baselines"]["tiles_mean"]["test_rows"] == test_images
    assert "gate" not in doc["baselines"]["tiles_mean"]  # reported, never gated
    assert doc["champion"]["kind"] == "tiles_gru"
    assert (reports / "plots" / "tiles_mean" / "confusion.csv").exists()

    published = score.run(grids, spark)
    rows = ds.dataset(str(published), format="parquet").to_table().to_pylist()
    assert len(rows) == 6  # the truncated file is quarantined
    assert {r["tile_count"] for r in rows} == {4}
    assert {r["predicted_label"] for r in rows} <= set(sample.GRID_CLASSES)
    assert {r["model_kind"] for r in rows} == {"tiles_gru"}
    manifest = json.loads((published / "_manifest.json").read_text())
    assert manifest["counts"]["quarantine_by_reason"] == {"truncated": 1}
    assert score.run(grids, spark) is None  # exactly once: nothing new the second time

    # images of any size are cut as at training; one cut into too many tiles is quarantined
    from PIL import Image

    inbox = Path(grids.data.root).parent / "odd"
    inbox.mkdir()
    Image.new("L", (64, 32 * 20), 255).save(inbox / "tall.png")  # 2 x 20 tiles
    Image.new("L", (32 * 10, 32 * 10), 255).save(inbox / "huge.png")  # 100 tiles > max_per_image 64
    odd = score.run(with_overrides(grids, f"score.inbox={inbox}"), spark)
    rows = ds.dataset(str(odd), format="parquet").to_table().to_pylist()
    assert [(Path(r["source_uri"]).name, r["tile_count"]) for r in rows] == [("tall.png", 40)]
    quarantined = ds.dataset(str(tables.quarantine_dir(grids.data.root)), format="parquet").to_table()
    reasons = {(Path(r["source_uri"]).name, r["reason"]) for r in quarantined.to_pylist()}
    assert ("huge.png", "too_many_tiles") in reasons
