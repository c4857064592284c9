"""The ``ingest`` section: how files are listed, decoded, normalised and split. Every table and
model card records the settings it was made with, so scoring decodes new images exactly as the
model's training images were (:class:`IngestConfig` is read back from manifests and cards)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from spark_jobs.core.config import DEFAULT_SOURCE, RGB, Extensions, Section, Seed, SourcePath


class ResizeConfig(Section):
    policy: Literal["pad", "crop", "stretch"] = "pad"
    resample: Literal["nearest", "bilinear", "bicubic", "lanczos"] = "lanczos"
    fill: RGB = (0, 0, 0)


class PreprocessConfig(Section):
    denoise: Literal["none", "median"] = "none"
    median_size: int = Field(3, ge=3, le=15)
    contrast: Literal["none", "autocontrast", "equalize"] = "none"

    @model_validator(mode="after")
    def _odd_kernel(self) -> PreprocessConfig:
        if self.median_size % 2 == 0:
            raise ValueError("median_size must be odd")
        return self


class SplitConfig(Section):
    train: float = Field(0.7, ge=0.0, le=1.0)
    val: float = Field(0.15, ge=0.0, le=1.0)
    test: float = Field(0.15, ge=0.0, le=1.0)
    seed: Seed = 0
    # cluster: an image's split is the function of its near-duplicate cluster's id, so no cluster
    # spans two splits (DESIGN.md #18); image: of its own id, as before clusters existed.
    by: Literal["cluster", "image"] = "cluster"

    @model_validator(mode="after")
    def _sums_to_one(self) -> SplitConfig:
        total = self.train + self.val + self.test
        if abs(total - 1.0) > 1e-6:
            raise ValueError(f"train + val + test must be 1.0, got {total:g}")
        return self

    def fractions(self) -> dict[str, float]:
        return {"train": self.train, "val": self.val, "test": self.test}


class AuditConfig(Section):
    """How near-duplicates are found (:mod:`spark_jobs.imaging.near_duplicates`)."""

    # Candidates: pairs whose signature vectors share all ``bits`` random-hyperplane signs in one of
    # ``bands`` bands (LSH banding) and whose best view cosine then reaches ``candidate_cosine``.
    # A band and its key are one long (9 + 54 bits).
    bands: int = Field(96, ge=1, le=512)
    bits: int = Field(18, ge=4, le=54)
    candidate_cosine: float = Field(0.75, ge=-1.0, le=1.0)
    # ... and only among each image's max_candidates partners with the most band collisions.
    max_candidates: int = Field(20, ge=1, le=10_000)
    # A candidate is a near-duplicate when its match score reaches ``min_score`` and the mean
    # colours are at most ``max_colour_distance`` apart (spark_jobs/imaging/audit.py).
    min_score: float = Field(0.84, gt=0.0, le=1.0)
    max_colour_distance: float = Field(0.015, ge=0.0, le=1.0)
    # ... or, when the detail lines up almost exactly (``exact_score``), at most
    # ``exact_colour_distance`` apart: a JPEG re-saved at low quality shifts its mean colour.
    exact_score: float = Field(0.95, gt=0.0, le=1.0)
    exact_colour_distance: float = Field(0.045, ge=0.0, le=1.0)
    seed: Seed = 0


class FlagsConfig(Section):
    """Where a quality figure raises its flag (spark_jobs/imaging/audit.py): flags are for people
    and gates, nothing is quarantined for one."""

    blurry_below: float = Field(50.0, ge=0.0)  # sharpness: variance of the Laplacian, grey 0-255
    dark_below: float = Field(0.15, ge=0.0, le=1.0)  # brightness: mean grey, 0-1
    light_above: float = Field(0.92, ge=0.0, le=1.0)
    low_contrast_below: float = Field(0.05, ge=0.0, le=1.0)  # contrast: grey standard deviation, 0-1
    low_information_below: float = Field(2.0, ge=0.0, le=8.0)  # entropy of the grey histogram, bits
    odd_aspect_above: float = Field(3.0, ge=1.0)  # longer side / shorter side


class IngestConfig(Section):
    source: SourcePath = DEFAULT_SOURCE
    image_size: int = Field(32, ge=8, le=4096)
    extensions: Extensions = (".png", ".jpg", ".jpeg", ".gif", ".bmp", ".tif", ".tiff", ".webp")
    min_side: int = Field(8, ge=1)
    max_image_pixels: int = Field(89_478_485, ge=1)
    max_file_bytes: int = Field(512 * 2**20, ge=1)
    alpha_background: RGB = (255, 255, 255)
    fetch_threads: int = Field(8, ge=1, le=256)
    resize: ResizeConfig = ResizeConfig()
    preprocess: PreprocessConfig = PreprocessConfig()
    split: SplitConfig = SplitConfig()
    audit: AuditConfig = AuditConfig()
    flags: FlagsConfig = FlagsConfig()
