"""The tables stages hand each other: their columns, and how a stage reads them."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from spark_jobs.core import manifest
from spark_jobs.core.ingest_config import IngestConfig
from spark_jobs.core.store import spark_path

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

# The splits of every table, in this order: an image's is a function of its id (ingest).
SPLITS = ("train", "val", "test")

# Every row ingest decodes, usable or not (both ingest tables physically have these columns).
DECODED_SCHEMA = (
    "image_id string, source_uri string, label string, split string, reason string, detail string, "
    "size_bytes long, orig_width int, orig_height int, orig_format string, orig_mode string, "
    "height int, width int, pixels binary, cluster_id string, dup_thumb binary, dup_vectors array<float>, "
    "sharpness double, brightness double, contrast double, entropy double, grayscale boolean, "
    "aspect_ratio double, flags array<string>"
)
DECODED_FIELDS = tuple(f.split()[0] for f in DECODED_SCHEMA.split(", "))

# ingest/images.parquet: one usable image per row; pixels are uint8 RGB, HWC, height x width x 3.
IMAGE_COLUMNS = (
    "image_id",
    "source_uri",
    "label",
    "split",
    "size_bytes",
    "orig_width",
    "orig_height",
    "orig_format",
    "orig_mode",
    "height",
    "width",
    "pixels",
    # The dataset audit (spark_jobs/imaging/audit.py): the smallest image_id of the image's
    # near-duplicate cluster (its own id when it has none), its quality figures and flags.
    "cluster_id",
    "sharpness",
    "brightness",
    "contrast",
    "entropy",
    "grayscale",
    "aspect_ratio",
    "flags",
)
# What ingest's near-duplicate job reads besides (bulky: never carried to later stages).
SIGNATURE_COLUMNS = ("dup_thumb", "dup_vectors")
# ingest/quarantine.parquet: one unusable file per row and why.
QUARANTINE_COLUMNS = ("source_uri", "reason", "detail", "image_id", "label", "size_bytes")


def read_images(spark: SparkSession, folder: Path) -> DataFrame:
    """The image table of an ingest output folder, with its documented columns (the schema is
    known: no Spark job to infer it)."""
    return spark.read.schema(DECODED_SCHEMA).parquet(spark_path(folder / "images.parquet")).select(*IMAGE_COLUMNS)


def read_quarantine(spark: SparkSession, folder: Path) -> DataFrame:
    """The quarantine table of an ingest output folder, with its documented columns."""
    table = spark.read.schema(DECODED_SCHEMA).parquet(spark_path(folder / "quarantine.parquet"))
    return table.select(*QUARANTINE_COLUMNS)


# features/features.parquet: one row per image (or per tile of an image, when tiling): the feature
# vector of the region ``box`` (original-image pixel coordinates, exclusive ends) of ``image_id``.
# Whole images are tile (0, 0) with the whole image as box. ``features`` is a fixed-length float array.
FEATURE_SCHEMA = (
    "image_id string, source_uri string, label string, split string, tile_x int, tile_y int, "
    "box_x0 int, box_y0 int, box_x1 int, box_y1 int, feature_kind string, features array<float>"
)
FEATURE_COLUMNS = tuple(f.split()[0] for f in FEATURE_SCHEMA.split(", "))


def read_features(spark: SparkSession, folder: Path) -> DataFrame:
    """The feature table of a features output folder, with its documented columns."""
    return spark.read.schema(FEATURE_SCHEMA).parquet(spark_path(folder / "features.parquet")).select(*FEATURE_COLUMNS)


def split_class_counts(folder: Path) -> dict[str, dict[str, int]]:
    """Rows per split and class of a published ingest or features table, as its gate counted
    them (``counts.rows_by_split_class`` of its manifest): no Spark job to count them again."""
    from spark_jobs.core.manifest import read
    from spark_jobs.core.store import SourceError

    counts = read(folder).rows_by_split_class()
    if counts is None:
        raise SourceError(f"{folder} was published by an older version of this stage: run it again")
    return counts


def class_totals(by_split: dict[str, dict[str, int]]) -> dict[str, int]:
    """Rows per class over every split, from :func:`split_class_counts`."""
    out: dict[str, int] = {}
    for by_class in by_split.values():
        for label, n in by_class.items():
            out[label] = out.get(label, 0) + n
    return out


def published(root: str | Path, stage: str) -> Path:
    """The published output folder of ``stage`` under ``data.root``; :class:`SourceError` when
    that stage has not run (or its gate never passed) there."""
    from spark_jobs.core.manifest import MANIFEST
    from spark_jobs.core.store import SourceError

    folder = Path(root) / stage
    if not (folder / MANIFEST).exists():
        raise SourceError(f"no published {stage} output at {folder}: run `python -m spark_jobs.{stage}` first")
    return folder


def ingested_with(ingest_dir: Path) -> IngestConfig:
    """The ingest settings the published table was made with (from its manifest), so later stages
    never assume an image size or a decode setting the table does not have."""
    return manifest.read(ingest_dir).ingest_settings()
