"""Feature extractors: pure functions from a batch of normalised pixels ``(N, S, S, 3)`` uint8 to
float32 vectors ``(N, D)``. They run inside Arrow-batched pandas functions on the executors.

- :class:`Classical`: HOG of the grey image (scikit-image, ``L2-Hys`` block norm) followed by a
  per-channel colour histogram (``color_bins`` bins over 0..255, each channel summing to 1).
  ``D = hog_orientations x cells_per_block^2 x (S // pixels_per_cell - cells_per_block + 1)^2
  + 3 x color_bins``: 372 for the defaults at ``S = 32``.
- :class:`Sift`: SIFT keypoints of the grey image (scikit-image), each descriptor counted as its
  nearest visual word of a codebook (MLlib KMeans, fitted on the train split by the features
  stage), over the whole image and each cell of a ``grid`` x ``grid`` spatial pyramid, each
  histogram divided by the image's keypoint count. ``D = words x (1 + grid^2)``.
- :class:`Cnn`: the embedding of a torch backbone (:mod:`spark_jobs.ml.models`), pixels scaled to
  [0, 1] then normalised with ``mean``/``std``, run in inference mode in batches of
  ``batch_size`` with ``threads`` intra-op threads; the module is loaded once per Python worker.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Annotated, Any

import numpy as np
from pydantic import Field

from spark_jobs.core import store
from spark_jobs.core.config import LocalPath, Section, Seed
from spark_jobs.ml import models

EXTRACTOR = "extractor.json"  # the extractor's spec, beside a features table and an mllib model
# MLlib's PCA builds a d x d covariance matrix on the driver: 8192^2 doubles = 512 MiB.
PCA_MAX_DIM = 8192
# scikit-image's SIFT finds nothing below this side (its smallest octave needs room for a descriptor).
SIFT_MIN_SIZE = 16
SIFT_DIM = 128


class ClassicalConfig(Section):
    """``features.classical``: HOG + colour histogram, then MLlib's scaler + PCA."""

    hog_orientations: int = Field(9, ge=1, le=36)
    hog_pixels_per_cell: int = Field(8, ge=2)
    hog_cells_per_block: int = Field(2, ge=1)
    color_bins: int = Field(16, ge=2, le=256)
    pca_k: int = Field(64, ge=1)

    def hog_dim(self, image_size: int) -> int:
        """Length of the HOG descriptor of an ``image_size`` square (scikit-image's layout)."""
        cells = image_size // self.hog_pixels_per_cell
        blocks = max(cells - self.hog_cells_per_block + 1, 0)
        return blocks * blocks * self.hog_cells_per_block**2 * self.hog_orientations

    def descriptor_dim(self, image_size: int) -> int:
        """Length of HOG + per-channel colour histogram, before PCA."""
        return self.hog_dim(image_size) + 3 * self.color_bins

    def problem(self, image_size: int) -> str | None:
        """Why these settings cannot describe ``image_size`` images (None when they can)."""
        dim = self.descriptor_dim(image_size)
        if self.hog_dim(image_size) == 0:
            return (
                f"a {image_size}px image holds no HOG block of {self.hog_cells_per_block}x{self.hog_cells_per_block} "
                f"cells of {self.hog_pixels_per_cell}px (raise ingest.image_size or lower hog_pixels_per_cell)"
            )
        if dim > PCA_MAX_DIM:
            return (
                f"{image_size}px images give descriptors of length {dim} > {PCA_MAX_DIM}, too long for MLlib's PCA "
                f"(a {dim}x{dim} covariance on the driver): raise hog_pixels_per_cell"
            )
        if self.pca_k > dim:
            return f"pca_k={self.pca_k} exceeds the descriptor length {dim} of {image_size}px images"
        return None


class SiftConfig(Section):
    """``features.sift``: SIFT descriptors, a visual-word codebook, bag-of-words histograms over a
    spatial pyramid, then MLlib's scaler + PCA (as ``classical``)."""

    contrast: float = Field(0.002, gt=0.0, lt=1.0)  # scikit-image's c_dog: lower keeps fainter keypoints
    max_keypoints: int = Field(256, ge=1)  # per image, the first ones scikit-image returns
    words: int = Field(128, ge=2, le=4096)  # the codebook's size (MLlib KMeans' k)
    grid: int = Field(2, ge=0, le=8)  # spatial pyramid cells per side (0: the whole image only)
    codebook_descriptors: int = Field(200_000, ge=1000)  # at most this many train descriptors fit it
    codebook_iterations: int = Field(20, ge=1)
    pca_k: int = Field(64, ge=1)
    seed: Seed = 0

    def descriptor_dim(self, words: int | None = None) -> int:
        """Length of the histograms, before PCA."""
        return (words or self.words) * (1 + self.grid * self.grid)

    def problem(self, image_size: int) -> str | None:
        """Why these settings cannot describe ``image_size`` images (None when they can)."""
        dim = self.descriptor_dim()
        if image_size < SIFT_MIN_SIZE:
            return f"SIFT finds no keypoints in {image_size}px images: raise ingest.image_size to {SIFT_MIN_SIZE}+"
        if dim > PCA_MAX_DIM:
            return f"words x (1 + grid^2) = {dim} > {PCA_MAX_DIM}, too long for MLlib's PCA: lower words or grid"
        if self.pca_k > dim:
            return f"pca_k={self.pca_k} exceeds the histogram length {dim}"
        return None


Positive = Annotated[float, Field(gt=0.0)]


class CnnConfig(Section):
    """``features.cnn``: the backbone file and how pixels are normalised for it."""

    backbone: LocalPath = "models/backbone/backbone.pt2"  # or an s3:// URI
    architecture: str | None = None
    threads: int = Field(1, ge=1, le=256)
    mean: tuple[float, float, float] = (0.0, 0.0, 0.0)
    std: tuple[Positive, Positive, Positive] = (1.0, 1.0, 1.0)


def hog_color(pixels: np.ndarray, cfg: ClassicalConfig) -> np.ndarray:
    """HOG + colour histogram of one HWC uint8 RGB image."""
    from skimage.color import rgb2gray
    from skimage.feature import hog

    cell, block = cfg.hog_pixels_per_cell, cfg.hog_cells_per_block
    gradients = hog(
        rgb2gray(pixels),
        orientations=cfg.hog_orientations,
        pixels_per_cell=(cell, cell),
        cells_per_block=(block, block),
        block_norm="L2-Hys",
        feature_vector=True,
    )
    area = pixels.shape[0] * pixels.shape[1]
    bins = pixels.reshape(-1, 3).astype(np.intp) * cfg.color_bins // 256
    colour = [np.bincount(bins[:, c], minlength=cfg.color_bins) for c in range(3)]
    return np.concatenate([gradients, *(h / area for h in colour)]).astype(np.float32)


@dataclass(frozen=True)
class Classical:
    """HOG + colour descriptors (before the scaler and PCA the stage fits)."""

    cfg: ClassicalConfig
    image_size: int

    kind = "classical"

    @property
    def dim(self) -> int:
        return self.cfg.descriptor_dim(self.image_size)

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        out = np.empty((len(batch), self.dim), dtype=np.float32)
        for i, image in enumerate(batch):
            out[i] = hog_color(image, self.cfg)
        return out

    def describe(self) -> dict[str, object]:
        return {"kind": self.kind, "image_size": self.image_size, "descriptor_dim": self.dim, **self.cfg.model_dump()}


def sift_keypoints(pixels: np.ndarray, cfg: SiftConfig) -> tuple[np.ndarray, np.ndarray]:
    """SIFT descriptors ``(n, 128)`` float32 of one HWC uint8 RGB image and their keypoints'
    positions ``(n, 2)`` as (row, column) fractions of its sides in [0, 1); none for an image
    without contrast enough for a keypoint (a flat picture)."""
    from skimage.color import rgb2gray
    from skimage.feature import SIFT

    sift = SIFT(c_dog=cfg.contrast)
    try:
        sift.detect_and_extract(rgb2gray(pixels))
    except RuntimeError:  # scikit-image's "SIFT found no features"
        return np.zeros((0, SIFT_DIM), np.float32), np.zeros((0, 2), np.float32)
    n = min(len(sift.descriptors), cfg.max_keypoints)
    sides = np.array(pixels.shape[:2], np.float32)
    positions = np.clip(sift.keypoints[:n] / sides, 0.0, np.nextafter(np.float32(1), np.float32(0)))
    return sift.descriptors[:n].astype(np.float32), positions.astype(np.float32)


def words_of(descriptors: np.ndarray, codebook: np.ndarray) -> np.ndarray:
    """Index of each descriptor's nearest codebook row (squared Euclidean distance, as KMeans)."""
    distances = (codebook * codebook).sum(1)[None, :] - 2.0 * descriptors @ codebook.T
    return distances.argmin(axis=1)


def bag_of_words(descriptors: np.ndarray, positions: np.ndarray, codebook: np.ndarray, grid: int) -> np.ndarray:
    """The visual-word histogram of one image's keypoints over the whole image, then over each of
    the ``grid`` x ``grid`` cells (row-major), each divided by the image's keypoint count (all
    zeros without keypoints)."""
    words = len(codebook)
    out = np.zeros((1 + grid * grid, words), np.float32)
    if len(descriptors):
        word = words_of(descriptors, codebook)
        np.add.at(out[0], word, 1.0)
        if grid:
            cell = (positions * grid).astype(np.intp)
            np.add.at(out, (1 + cell[:, 0] * grid + cell[:, 1], word), 1.0)
        out /= len(descriptors)
    return out.ravel()


@dataclass(frozen=True, eq=False)
class Sift:
    """Bag-of-visual-words histograms of SIFT descriptors over ``codebook`` (``words x 128``,
    the features stage's KMeans centres), before the scaler and PCA the stage fits."""

    cfg: SiftConfig
    image_size: int
    codebook: np.ndarray

    kind = "sift"

    @property
    def dim(self) -> int:
        return self.cfg.descriptor_dim(len(self.codebook))

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        out = np.empty((len(batch), self.dim), dtype=np.float32)
        for i, image in enumerate(batch):
            out[i] = bag_of_words(*sift_keypoints(image, self.cfg), self.codebook, self.cfg.grid)
        return out

    @classmethod
    def fitted(cls, cfg: SiftConfig, image_size: int, centres: np.ndarray) -> Sift:
        """The extractor of KMeans ``centres``, rounded to 0.01 (descriptors count 0..255) so that
        the codebook ``extractor.json`` records is exactly the one the features were made with."""
        return cls(cfg, image_size, np.round(np.asarray(centres, np.float64), 2).astype(np.float32))

    @classmethod
    def from_spec(cls, spec: dict[str, Any]) -> Sift:
        """The extractor a features table recorded (:meth:`describe`), codebook included."""
        cfg = SiftConfig.model_validate({k: spec[k] for k in SiftConfig.model_fields if k in spec})
        return cls(cfg, int(spec["image_size"]), np.asarray(spec["codebook"], dtype=np.float32))

    def describe(self) -> dict[str, object]:
        return {
            "kind": self.kind,
            "image_size": self.image_size,
            "descriptor_dim": self.dim,
            **self.cfg.model_dump(),
            "codebook": np.round(self.codebook.astype(np.float64), 2).tolist(),
        }


def descriptor_extractor(spec: dict[str, Any]) -> Classical | Sift:
    """The extractor an mllib model's features were made with, from its ``extractor.json``
    (ValueError for features an MLlib model cannot be scored on)."""
    if spec.get("kind") == "sift":
        return Sift.from_spec(spec)
    if spec.get("kind") == "classical":
        cfg = ClassicalConfig.model_validate({k: spec[k] for k in ClassicalConfig.model_fields if k in spec})
        return Classical(cfg, int(spec["image_size"]))
    raise ValueError(f"no descriptors for {spec.get('kind')} features")


def backbone_uri(cfg: CnnConfig) -> str:
    """``features.cnn.backbone`` as a URI (a local path becomes ``file://``)."""
    uri = cfg.backbone
    return uri if uri.startswith(("s3://", "file:")) else store.local_uri(uri)


def check_backbone(cfg: CnnConfig) -> None:
    """Refuse an exported backbone whose archive could carry code (:func:`models.inspect_program`),
    before Spark or torch start; loading it later checks again."""
    uri = backbone_uri(cfg)
    if models.backbone_format(uri) == "exported":
        models.inspect_program(models.read_backbone_bytes(uri), f"backbone {cfg.backbone}")


@dataclass(frozen=True)
class Cnn:
    """Embeddings of a backbone file; ``uri`` is absolute (``file://`` or ``s3://``) and ``sha256``
    is the content the driver validated, checked again by every worker that loads it."""

    cfg: CnnConfig
    uri: str
    sha256: str
    dim: int
    batch_size: int
    image_size: int

    kind = "cnn"

    @classmethod
    def open(cls, cfg: CnnConfig, batch_size: int, image_size: int) -> Cnn:
        """Load the backbone once on the driver: check it reads, accepts ``image_size`` inputs and
        returns finite-length vectors; :class:`spark_jobs.ml.models.BackboneError` says why not."""
        import torch

        uri = backbone_uri(cfg)
        data = models.read_backbone_bytes(uri)
        module = models.module_from_bytes(data, uri, cfg.architecture)
        try:
            with torch.inference_mode():
                out = module(torch.zeros(2, 3, image_size, image_size))
        except Exception as exc:
            raise models.BackboneError(
                f"backbone {cfg.backbone} does not accept a (N, 3, {image_size}, {image_size}) batch: {exc}"
            ) from None
        if out.ndim != 2 or out.shape[0] != 2:
            raise models.BackboneError(
                f"backbone {cfg.backbone} returns shape {tuple(out.shape)} for 2 images; expected (2, D) embeddings"
            )
        sha = hashlib.sha256(data).hexdigest()
        return cls(cfg=cfg, uri=uri, sha256=sha, dim=int(out.shape[1]), batch_size=batch_size, image_size=image_size)

    @classmethod
    def from_spec(cls, spec: dict[str, object]) -> Cnn:
        """The extractor a features table recorded (:meth:`describe`): the same backbone bytes (its
        sha256 is checked where it loads), normalisation and batch size."""
        fields = {k: spec[k] for k in CnnConfig.model_fields if k in spec and k != "backbone"}
        cfg = CnnConfig.model_validate({**fields, "backbone": spec["backbone"]})
        return cls(
            cfg=cfg,
            uri=str(spec["backbone"]),
            sha256=str(spec["backbone_sha256"]),
            dim=int(spec["embedding_dim"]),  # type: ignore[call-overload]
            batch_size=int(spec["batch_size"]),  # type: ignore[call-overload]
            image_size=int(spec["image_size"]),  # type: ignore[call-overload]
        )

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        import torch

        torch.set_num_threads(self.cfg.threads)
        module = models.cached_backbone(self.uri, self.cfg.architecture, self.sha256)
        mean = torch.tensor(self.cfg.mean, dtype=torch.float32).view(1, 3, 1, 1)
        std = torch.tensor(self.cfg.std, dtype=torch.float32).view(1, 3, 1, 1)
        out = np.empty((len(batch), self.dim), dtype=np.float32)
        with torch.inference_mode():
            for start in range(0, len(batch), self.batch_size):
                chunk = torch.from_numpy(np.array(batch[start : start + self.batch_size]))  # writable copy
                x = (chunk.permute(0, 3, 1, 2).float() / 255.0 - mean) / std
                out[start : start + len(chunk)] = module(x).numpy()
        return out

    def describe(self) -> dict[str, object]:
        return {
            "kind": self.kind,
            "image_size": self.image_size,
            "embedding_dim": self.dim,
            "backbone": self.uri,
            "backbone_sha256": self.sha256,
            "backbone_format": models.backbone_format(self.uri),
            "batch_size": self.batch_size,
            **self.cfg.model_dump(exclude={"backbone"}),
        }


Extractor = Classical | Sift | Cnn
