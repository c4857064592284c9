"""Features: the ingested image table -> a gated table of one fixed-length vector per image or tile.

``features.kind`` picks the extractor (:mod:`spark_jobs.ml.extractors`), run on the executors in
Arrow-batched ``mapInPandas`` functions:

- ``classical``: HOG + colour histogram, then an MLlib ``StandardScaler`` + ``PCA`` pipeline fitted
  on the train split only and applied to every split; the fitted pipeline is saved in
  ``transform/`` so scoring applies exactly the same transform (:func:`apply_transform`).
- ``sift``: SIFT keypoints (scikit-image) counted as visual words of a codebook (MLlib KMeans
  fitted on the train split's descriptors, its centres recorded in ``extractor.json``) over the
  whole image and a spatial pyramid, then the same scaler + PCA as ``classical``.
- ``cnn``: embeddings of the backbone file ``features.cnn.backbone`` (path or ``s3://``), loaded
  once per Python worker.

With ``features.tiles.enabled`` every image is re-read from its ``source_uri`` at full
resolution (its sha256 must still be its ``image_id``), cut into overlapping blocks
(:mod:`spark_jobs.imaging.tiles`), each block resized to ``ingest.image_size`` and given its own row.

Outputs under ``<data.root>/features/``: ``features.parquet`` (``FEATURE_COLUMNS``),
``extractor.json`` (everything needed to recompute a vector), ``transform/`` (classical, sift),
``_manifest.json``.

    python -m spark_jobs.features [--set features.kind=cnn] [--set features.tiles.enabled=true]
    spark-submit spark_jobs/features.py --set features.classical.pca_k=32
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field

from spark_jobs.core import launch, manifest, progress, runner, session, store
from spark_jobs.core.config import ConfigError, Params, Section
from spark_jobs.core.ingest_config import IngestConfig
from spark_jobs.core.jobs import exit_process, run_stage
from spark_jobs.core.store import SourceError
from spark_jobs.core.tables import (
    FEATURE_COLUMNS,
    class_totals,
    ingested_with,
    published,
    read_features,
    read_images,
    split_class_counts,
)
from spark_jobs.imaging import tiles
from spark_jobs.imaging.tiles import TilesConfig
from spark_jobs.ml import extractors, featurize
from spark_jobs.ml.extractors import EXTRACTOR, ClassicalConfig, CnnConfig, SiftConfig
from spark_jobs.ml.mllib import TRANSFORM, apply_transform, fit_codebook, fit_transform
from spark_jobs.quality import gate, suites
from spark_jobs.quality.thresholds import GateConfig

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

log = logging.getLogger(__name__)

STAGE = "features"
TABLE = "features.parquet"
_RAW = "raw.parquet"  # staging only; deleted before publishing (a leading "_" makes Spark warn)
_DESCRIPTORS = "descriptors.parquet"  # sift's codebook input, staging only


class FeaturesConfig(Section):
    """``features``."""

    kind: Literal["classical", "sift", "cnn"] = "classical"
    batch_size: int = Field(64, ge=1, le=65536)
    classical: ClassicalConfig = ClassicalConfig()
    sift: SiftConfig = SiftConfig()
    cnn: CnnConfig = CnnConfig()
    tiles: TilesConfig = TilesConfig()


class FeaturesParams(Params):
    """What the features stage reads: ``features``, its gate and ``ingest`` (to say when the
    published ingest table was made with another image size)."""

    features: FeaturesConfig = FeaturesConfig()
    ingest: IngestConfig = IngestConfig()  # type: ignore[assignment]
    gate: GateConfig = GateConfig()


PARAMS = FeaturesParams  # what the stage reads of params.yaml


def outputs(cfg: FeaturesParams) -> list[Path]:
    return [Path(cfg.data.root) / STAGE]


def expected_rows(image_table: DataFrame, per_class: dict[str, int], tiles_cfg: TilesConfig) -> dict[str, int]:
    """The feature rows each class must have: its ingested images (``per_class``, from the ingest
    manifest), times each image's tile count when tiling (one small Spark job over the sizes)."""
    from pyspark.sql import functions as F

    if not tiles_cfg.enabled:
        return dict(per_class)
    sizes = image_table.groupBy("label", "orig_width", "orig_height").agg(F.count("*").alias("n")).collect()
    out: dict[str, int] = {}
    for r in sizes:
        out[r["label"]] = out.get(r["label"], 0) + r["n"] * tiles.count(r["orig_width"], r["orig_height"], tiles_cfg)
    return out


def raise_on_problems(raw: DataFrame) -> None:
    """:class:`SourceError` naming the images whose sources could not be tiled (nothing is published)."""
    from pyspark.sql import functions as F

    bad = raw.where(F.col("problem").isNotNull()).select("source_uri", "problem")
    first = bad.limit(5).collect()
    if first:
        listed = "; ".join(f"{r['source_uri']}: {r['problem']}" for r in first)
        raise SourceError(f"{bad.count()} ingested images cannot be tiled (re-run ingest). First: {listed}")


def open_extractor(cfg: FeaturesParams, ingest_cfg: IngestConfig) -> extractors.Classical | extractors.Cnn | None:
    """The configured extractor for images of ``ingest_cfg.image_size``; for ``cnn`` the backbone
    is loaded and checked on the driver first; None for ``sift``, whose codebook the work phase
    fits (:func:`sift_extractor`) once its settings are checked here."""
    size, kind = ingest_cfg.image_size, cfg.features.kind
    if kind == "cnn":
        return extractors.Cnn.open(cfg.features.cnn, cfg.features.batch_size, size)
    if kind == "sift" and cfg.features.tiles.enabled:
        raise ConfigError("features.kind=sift describes whole images: tile with features.kind cnn or classical")
    problem = (cfg.features.sift if kind == "sift" else cfg.features.classical).problem(size)
    if problem:
        raise ConfigError(f"features.{kind} (for the published ingest table, {size}px): {problem}")
    return None if kind == "sift" else extractors.Classical(cfg.features.classical, size)


def sift_extractor(
    spark: SparkSession, image_table: DataFrame, cfg: FeaturesParams, size: int, train_images: int, run: runner.StageRun
) -> extractors.Sift:
    """The SIFT extractor of a codebook fitted on the train split only: every train image's
    descriptors staged, then MLlib KMeans on a seeded sample of at most ``codebook_descriptors``."""
    from pyspark.sql import functions as F

    sift = cfg.features.sift
    started = time.perf_counter()
    with progress.reporting(spark, STAGE, "train images (codebook)", train_images, cfg.data.progress_s) as handled:
        train = image_table.where(F.col("split") == "train")
        featurize.descriptors(train, sift, handled).write.parquet(run.path(_DESCRIPTORS))
    found = spark.read.parquet(run.path(_DESCRIPTORS))
    n = found.count()
    # MLlib's KMeans fails on fewer distinct points than k: count those of the sample it fits.
    sample = found.sample(fraction=min(1.0, sift.codebook_descriptors / max(n, 1)), seed=sift.seed)
    distinct = sample.distinct().count()
    if distinct < sift.words:
        raise SourceError(
            f"the train split's {train_images} images hold {distinct} distinct SIFT descriptors, fewer than "
            f"features.sift.words={sift.words}: lower it (or features.sift.contrast)"
        )
    centres = fit_codebook(sample, sift.words, sift.codebook_iterations, sift.seed)
    shutil.rmtree(run.path(_DESCRIPTORS))
    run.extra["codebook_s"] = round(time.perf_counter() - started, 3)
    log.info("codebook: %d visual words of %d train keypoints (%d distinct sampled)", len(centres), n, distinct)
    return extractors.Sift.fitted(sift, size, centres)


def reduced_k(cfg: FeaturesParams) -> int | None:
    """The PCA dimension of the configured descriptors (None: cnn embeddings are used as they are)."""
    return {"classical": cfg.features.classical.pca_k, "sift": cfg.features.sift.pca_k}.get(cfg.features.kind)


def write_vectors(spark: SparkSession, vectors: DataFrame, kind: str | None, split_bytes: str, target: str) -> None:
    """The one pass over the pixels: ``vectors`` (:func:`featurize.extract`) written to ``target``,
    as they are (``kind`` None: the staged raw table) or as the feature table of an extractor of
    ``kind`` (cnn embeddings need nothing more), one input file per task."""
    from pyspark.sql import functions as F

    with session.sql_conf(spark, "spark.sql.files.maxPartitionBytes", split_bytes):
        if kind is None:
            vectors.write.parquet(target)
        else:
            with_kind = vectors.withColumnRenamed("raw", "features").withColumn("feature_kind", F.lit(kind))
            with_kind.select(*FEATURE_COLUMNS).write.parquet(target)


def write_table(
    spark: SparkSession,
    image_table: DataFrame,
    extractor: extractors.Extractor,
    ingest_cfg: IngestConfig,
    ingest_dir: Path,
    cfg: FeaturesParams,
    run: runner.StageRun,
    images_in: int,
) -> dict[str, Any]:
    """Extract every image's (or tile's) vector of the ``images_in`` into the run's staged
    ``features.parquet`` (fitting and applying the scaler + PCA for classical features) and write
    ``extractor.json`` beside it; returns that spec."""
    from pyspark.sql import functions as F

    spec: dict[str, Any] = extractor.describe()
    extract_start = time.perf_counter()
    # Read twice (PCA fit and transform) or checked for problems first: staged raw; else final.
    pca_k = reduced_k(cfg)
    staged_raw = pca_k is not None or cfg.features.tiles.enabled
    split_bytes = session.one_task_per_file(ingest_dir / "images.parquet")
    with progress.reporting(spark, STAGE, "images", images_in, cfg.data.progress_s) as handled:
        batch_rows = cfg.spark.arrow_max_records_per_batch
        vectors = featurize.extract(image_table, extractor, ingest_cfg, cfg.features.tiles, batch_rows, handled)
        if staged_raw:
            write_vectors(spark, vectors, None, split_bytes, run.path(_RAW))
        else:
            write_vectors(spark, vectors, extractor.kind, split_bytes, run.path(TABLE))
    run.extra["extract_s"] = round(time.perf_counter() - extract_start, 3)  # the pixel pass
    if staged_raw:
        raw = spark.read.schema(featurize.RAW_SCHEMA).parquet(run.path(_RAW))
        if cfg.features.tiles.enabled:
            raise_on_problems(raw)
        if pca_k is not None:
            model = fit_transform(raw, pca_k)
            model.save(run.path(TRANSFORM))
            reduced = apply_transform(model, raw)
            spec["pca_explained_variance"] = [round(float(v), 6) for v in model.stages[-1].explainedVariance]
        else:
            reduced = raw.withColumnRenamed("raw", "features")
        final = reduced.withColumn("feature_kind", F.lit(extractor.kind)).select(*FEATURE_COLUMNS)
        final.write.parquet(run.path(TABLE))
        shutil.rmtree(run.path(_RAW))
    if pca_k is not None:
        spec |= {"transform": TRANSFORM, "dim": pca_k}
    else:
        spec["dim"] = extractor.dim
    spec["tiles"] = cfg.features.tiles.model_dump() if cfg.features.tiles.enabled else None
    (run.staging / EXTRACTOR).write_text(json.dumps(spec, indent=2, default=str) + "\n")
    return spec


def run(cfg: FeaturesParams, spark: SparkSession) -> Path:
    """Extract features of ``<data.root>/ingest`` into ``<data.root>/features``; returns the folder."""
    root = Path(cfg.data.root)
    params = cfg.section("features", "gate.features", "data")
    with runner.StageRun(
        STAGE, root, spark, root / STAGE, lock_wait=cfg.data.lock_wait_s, gate=gate.validate, params=params
    ) as run:
        with run.phase("read"):
            ingest_dir = published(root, "ingest")
            run.lineage.reads(ingest_dir)
            ingest_cfg = _ingested_with(cfg, ingest_dir)
            ingested = split_class_counts(ingest_dir)
            if reduced_k(cfg) is not None and not ingested.get("train"):
                raise SourceError("no train rows to fit the scaler and PCA on: check ingest.split (train fraction)")
            per_class = class_totals(ingested)
            images_in = sum(per_class.values())
            extractor = open_extractor(cfg, ingest_cfg)
            image_table = read_images(spark, ingest_dir)
            expected = expected_rows(image_table, per_class, cfg.features.tiles)
        with run.phase("work"):
            if extractor is None:
                train_images = sum(ingested.get("train", {}).values())
                extractor = sift_extractor(spark, image_table, cfg, ingest_cfg.image_size, train_images, run)
            spec = write_table(spark, image_table, extractor, ingest_cfg, ingest_dir, cfg, run, images_in)
        with run.phase("gate"):
            stats = suites.feature_stats(
                read_features(spark, run.staging), sorted(expected), spec["dim"], extractor.kind
            )
            result = run.validate(
                suites.feature_batches(stats, expected, spec["dim"], extractor.kind, cfg.gate.features)
            )
        by_class, by_split = stats.by(0), stats.by(1)
        rows = sum(by_class.values())
        counts = {
            "images": images_in,
            "rows": rows,
            "rows_expected": sum(expected.values()),
            "rows_by_class": by_class,
            "rows_by_split": by_split,
            "rows_by_split_class": stats.nested(1, 0),
            "dim": spec["dim"],
        }
        run.extra["rows_per_s_extract"] = round(rows / max(run.extra["extract_s"], 1e-9), 1)
        inputs = {
            "ingest": {
                "path": store.local_uri(ingest_dir),
                "manifest_sha256": manifest.file_hash(ingest_dir / manifest.MANIFEST),
                "settings": ingest_cfg.model_dump(mode="json"),
            },
            "extractor": spec,
        }
        folder = run.finish(result, run.manifest(params, inputs, counts, result))
    log.info("%d images -> %d %s feature rows of dim %d", images_in, rows, extractor.kind, spec["dim"])
    return folder


def _ingested_with(cfg: FeaturesParams, ingest_dir: Path) -> IngestConfig:
    """The settings the published ingest table was made with (they win over params.yaml's)."""
    ingest_cfg = ingested_with(ingest_dir)
    if ingest_cfg.image_size != cfg.ingest.image_size:
        size = ingest_cfg.image_size
        log.warning(
            "ingest.image_size is %d in params but the published ingest table is %dpx: using %d",
            cfg.ingest.image_size,
            size,
            size,
        )
    return ingest_cfg


def _precheck(cfg: FeaturesParams) -> None:
    ingest_cfg = ingested_with(published(cfg.data.root, "ingest"))
    if cfg.features.kind in ("classical", "sift"):
        open_extractor(cfg, ingest_cfg)  # settings that cannot describe the ingested images: exit 2 now
    else:
        extractors.check_backbone(cfg.features.cnn)  # a backbone archive that could carry code: exit 2 now


def main(argv: list[str] | None = None) -> int:
    return run_stage(
        STAGE,
        argv,
        run,
        params=PARAMS,
        outputs=outputs,
        description=__doc__,
        precheck=_precheck,
        preload=_preload,
        worker_preload=worker_preload,
    )


def _preload(cfg: FeaturesParams) -> tuple[str, ...]:
    return (launch.TORCH if cfg.features.kind == "cnn" else ()) + launch.GATE


def worker_preload(cfg: FeaturesParams) -> tuple[str, ...]:
    """What the extracting tasks import (forked from :mod:`spark_jobs.core.daemon`, which also keeps
    the memory a worker frees): torch for a cnn backbone, then the extracting code."""
    return (*(launch.TORCH if cfg.features.kind == "cnn" else ()), "spark_jobs.ml.featurize")


if __name__ == "__main__":
    exit_process(main())
