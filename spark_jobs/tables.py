"""The tables stages hand each other: their columns, and how a stage reads them."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

# Every row ingest decodes, usable or not (both ingest tables physically have these columns).
DECODED_SCHEMA = (
    "image_id string, source_uri string, label string, split string, reason string, detail string, "
    "size_bytes long, orig_width int, orig_height int, orig_format string, orig_mode string, "
    "height int, width int, pixels binary"
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
)
# ingest/quarantine.parquet: one unusable file per row and why.
QUARANTINE_COLUMNS = ("source_uri", "reason", "detail", "image_id", "label", "size_bytes")


def read_images(spark: SparkSession, folder: Path) -> DataFrame:
    """The image table of an ingest output folder, with its documented columns."""
    return spark.read.parquet(str(folder / "images.parquet")).select(*IMAGE_COLUMNS)


def read_quarantine(spark: SparkSession, folder: Path) -> DataFrame:
    """The quarantine table of an ingest output folder, with its documented columns."""
    return spark.read.parquet(str(folder / "quarantine.parquet")).select(*QUARANTINE_COLUMNS)
