"""Where in a large image, end to end on the find workspace's params (find/params.yaml), small:
find images (one cell decides the label) -> ingest -> overlapping tile embeddings ->
tiles_attention trained by TorchDistributor -> evaluate with pointing accuracy against the
sample's side file -> score new images, each row with its most-weighted tiles' boxes, and a heatmap
of each beside the score report."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pyarrow.dataset as ds
import pytest
from PIL import Image

from spark_jobs import evaluate, features, ingest, sample, score, train
from spark_jobs.core import manifest
from spark_jobs.ml import cards, models, screen
from spark_jobs.params import Config, load
from tests.factories import REPO, with_overrides

pytestmark = pytest.mark.spark


@pytest.fixture(scope="module")
def find(spark, tmp_path_factory: pytest.TempPathFactory) -> Config:
    """A find workspace: 30 images (10 a class) and 3 new ones in the inbox, ingested and cut into
    7 x 7 overlapping tiles, embedded by a small (untrained) small_cnn backbone."""
    tmp = tmp_path_factory.mktemp("find")
    backbone = models.export_backbone(models.small_cnn(4), tmp / "backbone.pt2", 32)
    data = tmp / "data"
    cfg = load(
        REPO / "find" / "params.yaml",
        [
            f"data.root={data}",
            "spark.master=local[2]",
            "spark.shuffle_partitions=2",
            "sample.find.images=30",
            "sample.find.inbox=3",
            f"ingest.source={data / 'sample' / 'find'}",
            "ingest.split.train=0.5",
            "ingest.split.val=0.2",
            "ingest.split.test=0.3",
            "gate.raw.min_per_class=5",
            "gate.raw.split_tolerance=0.3",
            f"features.cnn.backbone={backbone}",
            f"train.output={tmp / 'models'}",
            "train.tiles.epochs=2",
            "train.tiles.batch_size=8",
            f"evaluate.reports={tmp / 'reports'}",
            f"evaluate.champion={tmp / 'models' / 'champion'}",
            f"evaluate.rejected={tmp / 'models' / 'rejected'}",
            "evaluate.baselines=[]",
            f"evaluate.pointing={data / 'sample' / sample.FIND_CELLS}",
            "gate.model.min_accuracy=0.0",  # an untrained backbone: the mechanics, not the accuracy
            "gate.model.min_macro_f1=0.0",
            "gate.predictions.max_low_confidence=1.0",
            f"score.inbox={data / 'sample' / 'inbox'}",
            "score.top_tiles=2",
            "score.heatmaps=true",
        ],
    )
    sample.run(cfg)
    ingest.run(cfg, spark)
    features.run(cfg, spark)
    return cfg


def test_attention_points_at_tiles_in_the_file_s_pixels_from_evaluate_to_scoring(spark, find: Config) -> None:
    folder = train.run(with_overrides(find, "train.model=tiles_attention"), spark)
    card = json.loads((folder / cards.CARD).read_text())
    assert (card["kind"], card["arch"]["aggregate"], card["tiles"]["overlap"]) == ("tiles_attention", "attention", 0.5)
    light = screen.Screen.read(folder / card["files"]["screen"])  # the tile cascade's screen, fitted on every
    assert (light.images, light.tiles) == (card["training"]["train_rows"], 49 * card["training"]["train_rows"])

    reports = evaluate.run(find, spark)
    result = json.loads((reports / evaluate.EVALUATION).read_text())["models"]["tiles_attention"]
    cells = pd.read_csv(find.evaluate.pointing, dtype={"image_id": str})
    tested = pd.read_csv(reports / "plots" / "tiles_attention" / "predictions.csv", dtype={"image_id": str})
    with_target = cells[cells["image_id"].isin(tested["image_id"]) & cells["cell_x0"].notna()]
    assert result["pointing_images"] == len(with_target) > 0  # every test image a cell decides
    assert 0.0 <= result["pointing_accuracy"] <= 1.0
    assert result["pointing_unknown"] == 0
    headline = json.loads((reports / evaluate.METRICS).read_text())
    assert headline["tiles_attention"]["pointing_accuracy"] == result["pointing_accuracy"]

    published = score.run(find, spark)
    rows = ds.dataset(str(published), format="parquet").to_table().to_pylist()
    assert len(rows) == 3  # the truncated file is quarantined
    for row in rows:
        assert row["tile_count"] == 49  # 7 x 7 tiles of 32 px every 16 px
        top = row["top_tiles"]
        assert len(top) == 2
        assert top[0]["weight"] >= top[1]["weight"] > 0.0
        for tile in top:  # boxes in the original file's pixels, on the half-cell grid
            assert 0 <= tile["box_x0"] < tile["box_x1"] <= 128
            assert 0 <= tile["box_y0"] < tile["box_y1"] <= 128
            assert (tile["box_x1"] - tile["box_x0"], tile["box_x0"] % 16) == (32, 0)
    # the pooled vectors of the same pass reach the drift test (3 rows: too few to judge)
    drift = manifest.read(published).drift
    assert (drift.layer, drift.batch_rows, drift.outcome) == ("pooled", 3, "not tested")

    # each scored image's attention as a picture beside the run's report, a few of them on its page
    drawn = Path(find.data.root) / "gates" / "score" / "heatmaps"
    assert sorted(p.stem for p in drawn.glob("*.png")) == sorted(r["image_id"] for r in rows)
    assert Image.open(next(drawn.glob("*.png"))).size == (128, 128)
    page = (Path(find.data.root) / "gates" / "score" / "report.html").read_text()
    assert "where the model looked" in page
    assert page.count("data:image/png;base64") >= 3

    # a wider image is cut into more tiles, in its own pixels; with the tile cascade, only the
    # quarter of them the screen rates highest are weighed (a blank image: 16 equal weights)
    inbox = Path(find.data.root).parent / "wide"
    inbox.mkdir()
    Image.new("L", (32 * 5, 128), 255).save(inbox / "wide.png")  # 9 x 7 tiles, within max_per_image
    wide = score.run(with_overrides(find, f"score.inbox={inbox}", "score.cascade.tile_fraction=0.25"), spark)
    (row,) = ds.dataset(str(wide), format="parquet").to_table().to_pylist()
    assert row["tile_count"] == 9 * 7
    assert max(t["box_x1"] for t in row["top_tiles"]) <= 160
    assert [t["weight"] for t in row["top_tiles"]] == pytest.approx([1 / 16, 1 / 16])
