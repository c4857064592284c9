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

    @model_validator(mode="after")
    def _sums_to_one(self) -> SplitConfig:
        total = self.train + self.val + self.test
        if abs(total - 1.0) > 1e-6:
            raise ValueError(f"train + val + test must be 1.0, got {total:g}")
        return self

    def fractions(self) -> dict[str, float]:
        return {"train": self.train, "val": self.val, "test": self.test}


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
