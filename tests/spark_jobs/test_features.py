"""The features job end to end on real images: classical + PCA, CNN embeddings, tiles, the gate."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from spark_jobs import features, ingest
from spark_jobs.core import manifest, tables
from spark_jobs.core.config import ConfigError
from spark_jobs.core.store import SourceError
from spark_jobs.core.tables import FEATURE_COLUMNS, read_features, read_images
from spark_jobs.core.verdict import GateFailed
from spark_jobs.imaging import images, tiles
from spark_jobs.ml import extractors, featurize, mllib, models
from spark_jobs.ml.extractors import CnnConfig
from tests.conftest import INGESTED_CLASSES, INGESTED_PER_CLASS
from tests.factories import REPO, link_ingest, make_config, photo_tree

pytestmark = pytest.mark.spark

ROWS = INGESTED_CLASSES * INGESTED_PER_CLASS


def _pixels(frame) -> np.ndarray:
    return np.stack([np.frombuffer(p, dtype=np.uint8).reshape(h, w, 3) for p, h, w in frame])


def _backbone(path: Path, width: int = 4, seed: int = 0, poison: bool = False) -> Path:
    torch.manual_seed(seed)
    module = models.small_cnn(width=width).eval()
    if poison:  # one NaN weight: every embedding becomes NaN
        with torch.no_grad():
            module[0].weight[0, 0, 0, 0] = float("nan")
    return models.export_backbone(module, path, 32)


def test_classical_features_end_to_end(spark, ingested: Path, tmp_path: Path) -> None:
    cfg = link_ingest(ingested, tmp_path, "features.classical.pca_k=8")
    published = features.run(cfg, spark)

    table = read_features(spark, published)
    assert tuple(table.columns) == FEATURE_COLUMNS
    rows = table.collect()
    assert len(rows) == ROWS
    assert {len(r["features"]) for r in rows} == {8}
    assert {r["feature_kind"] for r in rows} == {"classical"}
    assert {(r["tile_x"], r["tile_y"], r["box_x0"], r["box_y0"], r["box_x1"], r["box_y1"]) for r in rows} == {
        (0, 0, 0, 0, 24, 24)
    }
    ingested_rows = read_images(spark, ingested).select("image_id", "label", "split").collect()
    assert {(r["image_id"], r["label"], r["split"]) for r in rows} == {tuple(r) for r in ingested_rows}

    # PCA of standardised train vectors: the train split is centred, its variance is in the first components
    train = np.array([r["features"] for r in rows if r["split"] == "train"])
    np.testing.assert_allclose(train.mean(axis=0), 0.0, atol=1e-4)
    variances = train.var(axis=0)
    assert variances[0] >= variances[-1]

    doc = manifest.read_json(published)
    assert doc["gate"]["success"]
    assert doc["counts"]["rows"] == ROWS
    assert doc["counts"]["dim"] == 8
    assert doc["counts"]["rows_by_class"] == {str(c): INGESTED_PER_CLASS for c in range(INGESTED_CLASSES)}
    assert doc["inputs"]["ingest"]["manifest_sha256"] == manifest.file_hash(ingested / manifest.MANIFEST)
    spec = json.loads((published / extractors.EXTRACTOR).read_text())
    assert spec["kind"] == "classical"
    assert spec["descriptor_dim"] == 372
    assert len(spec["pca_explained_variance"]) == 8
    assert not (published / features._RAW).exists()
    assert Path(cfg.data.root, "gates", "features", "docs", "index.html").exists()


def test_the_saved_transform_reproduces_the_features(spark, ingested: Path, tmp_path: Path) -> None:
    """Scoring recomputes descriptors and applies transform/: it must land on the same vectors."""
    from pyspark.ml import PipelineModel

    cfg = link_ingest(ingested, tmp_path, "features.classical.pca_k=8")
    published = features.run(cfg, spark)
    model = PipelineModel.load(str(published / mllib.TRANSFORM))
    image_table = read_images(spark, ingested).limit(10)
    ingest_cfg = tables.ingested_with(ingested)
    extractor = features.open_extractor(cfg, ingest_cfg)
    raw = featurize.extract(
        image_table, extractor, ingest_cfg, cfg.features.tiles, cfg.spark.arrow_max_records_per_batch
    )
    again = {r["image_id"]: r["features"] for r in mllib.apply_transform(model, raw).collect()}
    stored = {r["image_id"]: r["features"] for r in read_features(spark, published).collect()}
    assert len(again) == 10
    for image_id, vector in again.items():
        np.testing.assert_allclose(vector, stored[image_id], atol=1e-4)


def test_pca_is_fitted_on_the_train_split_only(spark) -> None:
    rng = np.random.default_rng(0)
    rows = [
        (f"id{i}", split, [float(v) for v in rng.normal(size=6)])
        for i, split in enumerate(["train"] * 40 + ["val"] * 5 + ["test"] * 5)
    ]
    schema = "image_id string, split string, raw array<float>"

    def fitted(extra: list) -> tuple[np.ndarray, np.ndarray]:
        model = mllib.fit_transform(spark.createDataFrame(rows + extra, schema), 3)
        scaler, pca = model.stages
        return np.array(scaler.mean.toArray()), pca.pc.toArray()

    base_mean, base_pc = fitted([])
    outlier = [1e4, -1e4, 5e3, 0.0, 1e4, 7.0]
    test_mean, test_pc = fitted([("odd", "test", outlier)])
    np.testing.assert_array_equal(test_mean, base_mean)
    np.testing.assert_array_equal(test_pc, base_pc)
    train_mean, _ = fitted([("odd", "train", outlier)])
    assert not np.allclose(train_mean, base_mean)  # the same row in train does move the fit


def test_no_train_split_is_a_clear_error(spark, ingested: Path, tmp_path: Path) -> None:
    # An ingest table without a train split (as its manifest counts it): nothing to fit PCA on.
    folder = tmp_path / "data" / "ingest"
    folder.mkdir(parents=True)
    (folder / "images.parquet").symlink_to(ingested / "images.parquet", target_is_directory=True)
    doc = manifest.read_json(ingested)
    doc["counts"]["rows_by_split_class"].pop("train")
    manifest.write(folder, doc)
    with pytest.raises(SourceError, match="no train rows to fit the scaler and PCA"):
        features.run(make_config(tmp_path), spark)


def test_cnn_embeddings_end_to_end(spark, ingested: Path, tmp_path: Path) -> None:
    path = _backbone(tmp_path / "b.pt2")
    cfg = link_ingest(ingested, tmp_path, "features.kind=cnn", f"features.cnn.backbone={path}", "features.batch_size=7")
    published = features.run(cfg, spark)
    rows = read_features(spark, published).collect()
    assert len(rows) == ROWS
    assert {len(r["features"]) for r in rows} == {16}
    assert {r["feature_kind"] for r in rows} == {"cnn"}
    # the Spark path gives what the extractor gives in this process, image by image
    local = extractors.Cnn.open(CnnConfig(backbone=str(path)), 64, 32)
    pixels = read_images(spark, ingested).select("image_id", "pixels", "height", "width").collect()
    expected = local(_pixels([(r["pixels"], r["height"], r["width"]) for r in pixels]))
    by_id = {r["image_id"]: r["features"] for r in rows}
    np.testing.assert_allclose(np.array([by_id[r["image_id"]] for r in pixels]), expected, atol=1e-5)
    spec = manifest.read_json(published)["inputs"]["extractor"]
    assert spec["backbone_sha256"] == manifest.file_hash(path)
    assert spec["dim"] == 16


def test_nan_features_stop_the_gate(spark, ingested: Path, tmp_path: Path) -> None:
    path = _backbone(tmp_path / "nan.pt2", poison=True)
    cfg = link_ingest(ingested, tmp_path, "features.kind=cnn", f"features.cnn.backbone={path}")
    with pytest.raises(GateFailed) as failed:
        features.run(cfg, spark)
    root = Path(cfg.data.root)
    assert not (root / "features").exists()  # nothing published
    assert failed.value.rejected.exists()
    summary = (root / "gates" / "features" / "summary.txt").read_text()
    assert "FAILED features: expect_column_values_to_be_between {'column': 'non_finite_vectors'" in summary
    assert (root / "gates" / "features" / "docs" / "index.html").exists()


def test_an_unusable_backbone_is_one_clear_error(spark, ingested: Path, tmp_path: Path) -> None:
    cfg = link_ingest(ingested, tmp_path, "features.kind=cnn", f"features.cnn.backbone={tmp_path / 'none.pt2'}")
    with pytest.raises(models.BackboneError, match=r"none\.pt2 cannot be read"):
        features.run(cfg, spark)
    assert not (Path(cfg.data.root) / ".staging").exists() or not any((Path(cfg.data.root) / ".staging").iterdir())


# Two photographs, one class each: everything in train, one image per class is enough.
PHOTO_INGEST = ("gate.raw.min_per_class=1", "ingest.split.train=1", "ingest.split.val=0", "ingest.split.test=0")


@pytest.fixture(scope="module")
def photos(spark, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The bundled photographs (640x427 JPEGs) ingested at 32px, everything in train."""
    root = tmp_path_factory.mktemp("photos")
    source = photo_tree(root / "src")
    return ingest.run(make_config(root, f"ingest.source={source}", *PHOTO_INGEST), spark)


TILES = ("features.tiles.enabled=true", "features.tiles.size=128", "features.tiles.overlap=0.1")


def test_tiles_of_the_bundled_photos(spark, photos: Path, tmp_path: Path) -> None:
    cfg = link_ingest(photos, tmp_path, *TILES, "features.classical.pca_k=16")
    published = features.run(cfg, spark)
    rows = read_features(spark, published).collect()
    grid = tiles.grid(640, 427, cfg.features.tiles)
    assert len(grid) == 24
    assert len(rows) == 2 * 24
    for image_id in {r["image_id"] for r in rows}:
        mine = sorted(
            (r["tile_y"], r["tile_x"], r["box_x0"], r["box_y0"], r["box_x1"], r["box_y1"])
            for r in rows
            if r["image_id"] == image_id
        )
        assert mine == sorted((t.tile_y, t.tile_x, t.x0, t.y0, t.x1, t.y1) for t in grid)
    assert {len(r["features"]) for r in rows} == {16}
    doc = manifest.read_json(published)
    assert doc["counts"]["images"] == 2
    assert doc["counts"]["rows_expected"] == 48
    assert doc["inputs"]["extractor"]["tiles"]["size"] == 128


@pytest.mark.parametrize("edge", ["shift", "pad"])
def test_cnn_tiles_are_cut_from_the_full_resolution_source(spark, photos: Path, tmp_path: Path, edge: str) -> None:

    path = _backbone(tmp_path / "b.pt2")
    cfg = link_ingest(
        photos, tmp_path, *TILES, f"features.tiles.edge={edge}", "features.kind=cnn", f"features.cnn.backbone={path}"
    )
    rows = read_features(spark, features.run(cfg, spark)).collect()
    assert len(rows) == 48
    source = next(r for r in read_images(spark, photos).collect() if r["label"] == "china")
    full = np.asarray(Image.open(Path(source["source_uri"].removeprefix("file://"))).convert("RGB"))
    local = extractors.Cnn.open(CnnConfig(backbone=str(path)), 64, 32)
    for row in (r for r in rows if r["image_id"] == source["image_id"] and r["tile_x"] in (0, 5)):
        crop = full[row["box_y0"] : row["box_y1"], row["box_x0"] : row["box_x1"]]  # coordinates map back
        block = np.zeros((128, 128, 3), dtype=np.uint8)
        block[: crop.shape[0], : crop.shape[1]] = crop
        small = np.asarray(Image.fromarray(block).resize((32, 32), Image.Resampling.LANCZOS))
        np.testing.assert_allclose(row["features"], local(small[None])[0], atol=1e-4)


def test_a_source_changed_since_ingest_stops_tiling(spark, tmp_path: Path) -> None:
    root = tmp_path / "own"
    source = photo_tree(root / "src")
    ingested = ingest.run(make_config(root, f"ingest.source={source}", *PHOTO_INGEST), spark)
    (source / "flower" / "flower.jpg").write_bytes((source / "china" / "china.jpg").read_bytes())
    cfg = link_ingest(ingested, tmp_path, *TILES, "features.classical.pca_k=4")
    with pytest.raises(SourceError, match=r"1 ingested images cannot be tiled .*flower\.jpg: the source file changed"):
        features.run(cfg, spark)
    assert not (Path(cfg.data.root) / "features").exists()


def test_classical_settings_that_do_not_fit_the_ingested_images_stop_before_spark(
    ingested: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "ingest").symlink_to(ingested, target_is_directory=True)
    argv = ["--params", str(REPO / "params.yaml"), "--set", f"data.root={tmp_path / 'data'}"]
    assert features.main([*argv, "--set", "features.classical.hog_pixels_per_cell=32"]) == 2
    assert "a 32px image holds no HOG block" in caplog.text


def test_a_backbone_archive_carrying_code_stops_the_stage_before_it_runs(
    ingested: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from tests.spark_jobs.ml.test_models import crafted_pt2

    crafted = crafted_pt2(tmp_path, tmp_path / "ran")
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "ingest").symlink_to(ingested, target_is_directory=True)
    argv = ["--params", str(REPO / "params.yaml"), "--set", f"data.root={tmp_path / 'data'}"]
    argv += ["--set", "features.kind=cnn", "--set", f"features.cnn.backbone={crafted}"]
    caplog.set_level("ERROR")
    assert features.main(argv) == 2
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 1, errors
    assert "\n" not in errors[0]
    assert f"backbone {crafted} is refused" in errors[0]
    assert "pickled object" in errors[0]
    assert not (tmp_path / "ran").exists()
    assert not (tmp_path / "data" / "features").exists()


def test_features_before_ingest_is_a_clear_error(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    code = features.main(["--params", str(REPO / "params.yaml"), "--set", f"data.root={tmp_path}"])
    assert code == 2
    assert "no published ingest output" in caplog.text


def test_features_follow_the_image_size_of_the_ingested_table(spark, ingested: Path, tmp_path: Path) -> None:
    """params say 64px, the published table is 32px: the table wins (and a bad pca_k is one clear error)."""
    cfg = link_ingest(ingested, tmp_path, "ingest.image_size=64", "features.classical.pca_k=8")
    folder = features.run(cfg, spark)
    spec = json.loads((folder / extractors.EXTRACTOR).read_text())
    assert spec["image_size"] == 32
    assert spec["descriptor_dim"] == 372
    assert manifest.read_json(folder)["inputs"]["ingest"]["settings"]["image_size"] == 32
    too_big = link_ingest(ingested, tmp_path / "b", "ingest.image_size=64", "features.classical.pca_k=1000")
    with pytest.raises(
        ConfigError, match=r"published ingest table, 32px\): pca_k=1000 exceeds the descriptor length 372"
    ):
        features.run(too_big, spark)


@pytest.mark.s3
def test_cnn_backbone_from_s3(spark, ingested: Path, tmp_path: Path, s3_server: str) -> None:
    """The backbone may live in object storage: the driver and every worker read it from S3."""
    import boto3

    path = _backbone(tmp_path / "b.pt2")
    client = boto3.client("s3")
    client.create_bucket(Bucket="models")
    client.put_object(Bucket="models", Key="backbones/b.pt2", Body=path.read_bytes())
    cfg = link_ingest(ingested, tmp_path, "features.kind=cnn", "features.cnn.backbone=s3://models/backbones/b.pt2")
    folder = features.run(cfg, spark)
    spec = manifest.read_json(folder)["inputs"]["extractor"]
    assert spec["backbone"] == "s3://models/backbones/b.pt2"
    assert spec["backbone_sha256"] == manifest.file_hash(path)
    rows = read_features(spark, folder).collect()
    assert len(rows) == ROWS
    assert {len(r["features"]) for r in rows} == {16}
    missing = link_ingest(
        ingested, tmp_path / "m", "features.kind=cnn", "features.cnn.backbone=s3://models/backbones/none.pt2"
    )
    with pytest.raises(models.BackboneError, match=r"s3://models/backbones/none\.pt2 cannot be read: NoSuchKey"):
        features.run(missing, spark)


def test_vectors_array_round_trips() -> None:
    vectors = np.arange(12, dtype=np.float32).reshape(3, 4)
    array = images.vectors_array(vectors)
    assert str(array.type) == "list<item: float>"
    assert array.to_pylist() == vectors.tolist()


def test_sift_features_end_to_end_and_their_codebook_reproduces_them(spark, ingested: Path, tmp_path: Path) -> None:
    """SIFT visual words (a KMeans codebook of the train split) -> scaler + PCA; the recorded
    extractor and transform land on the same vectors, as scoring an mllib model on them does."""
    from pyspark.ml import PipelineModel

    cfg = link_ingest(ingested, tmp_path, "features.kind=sift", "features.sift.words=16", "features.sift.pca_k=8")
    published = features.run(cfg, spark)
    rows = read_features(spark, published).collect()
    assert len(rows) == ROWS
    assert {len(r["features"]) for r in rows} == {8}
    assert {r["feature_kind"] for r in rows} == {"sift"}
    spec = json.loads((published / extractors.EXTRACTOR).read_text())
    assert (spec["kind"], spec["dim"], spec["descriptor_dim"]) == ("sift", 8, 16 * 5)
    assert np.asarray(spec["codebook"]).shape == (16, 128)
    doc = manifest.read_json(published)
    assert doc["gate"]["success"]
    assert doc["counts"]["dim"] == 8
    assert doc["timings"]["codebook_s"] > 0
    assert not (published / features._DESCRIPTORS).exists()

    image_table = read_images(spark, ingested).limit(10)
    ingest_cfg = tables.ingested_with(ingested)
    extractor = extractors.descriptor_extractor(spec)
    raw = featurize.extract(image_table, extractor, ingest_cfg, cfg.features.tiles, 64)
    model = PipelineModel.load(str(published / mllib.TRANSFORM))
    again = {r["image_id"]: r["features"] for r in mllib.apply_transform(model, raw).collect()}
    stored = {r["image_id"]: r["features"] for r in rows}
    for image_id, vector in again.items():
        np.testing.assert_allclose(vector, stored[image_id], atol=1e-4)

    words = ("features.kind=sift", "features.sift.words=4096", "features.sift.grid=0")
    with pytest.raises(SourceError, match=r"distinct SIFT descriptors, fewer than features\.sift\.words=4096"):
        features.run(link_ingest(ingested, tmp_path / "words", *words), spark)
