"""Model cards and promotion records (DESIGN.md #8, STYLE.md #13): frozen, typed records written
and read here only.

- :class:`ModelCard`: ``card.json`` beside every trained model (``mllib``, ``cnn``,
  ``autoencoder``): classes, the ingest settings it expects, its files, architecture, training
  history, data and code versions.
- :class:`BackboneCard`: ``card.json`` beside the backbone stage's exported backbone.
- :class:`Promotion`: ``promotion.json`` beside a champion: what was promoted, when, over what.

A card written by an older version of the platform that does not fit is refused with one line
naming the file and what to run again (:class:`spark_jobs.core.manifest.RecordError`).
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from spark_jobs.core.config import ConfigError, LocalPath, View
from spark_jobs.core.ingest_config import IngestConfig
from spark_jobs.core.manifest import JobVersion, LineageRecord, Record, Timings, read_record, write
from spark_jobs.core.store import SourceError
from spark_jobs.imaging.tiles import TilesConfig

CARD = "card.json"
PROMOTION = "promotion.json"
WEIGHTS = "model.pt"
CALIBRATION = "calibration.npy"
MODELS = "models"  # train.output: where each kind's trained model is (models/<kind>)
CHAMPIONS = "models/champion"  # evaluate.champion: where each task's champion is (.../<task>)

# The model kinds, and the task of each: the one list train.model and evaluate.models are checked against.
Kind = Literal["mllib", "cnn", "autoencoder", "tiles_mean", "tiles_gru", "tiles_attention"]
Task = Literal["classifier", "anomaly"]
TASKS: dict[str, Task] = {
    "mllib": "classifier",
    "cnn": "classifier",
    "autoencoder": "anomaly",
    "tiles_mean": "classifier",
    "tiles_gru": "classifier",
    "tiles_attention": "classifier",
}
# The models that read an image as the sequence of its tiles' feature vectors (features.tiles).
TILE_KINDS = ("tiles_mean", "tiles_gru", "tiles_attention")
# The tile models whose tile weights say where the evidence is (top tiles, heatmaps, pointing accuracy).
ATTENTION_KINDS = ("tiles_attention",)
# The module each torch kind trains (the backbone a cnn is fine-tuned from may change it).
ARCHITECTURES = {
    "cnn": "small_cnn_classifier",
    "autoencoder": "conv_autoencoder",
    "tiles_mean": "tile_sequence",
    "tiles_gru": "tile_sequence",
    "tiles_attention": "tile_sequence",
}


class TrainedModels(View):
    """``train.output``, as a stage that reads trained models sees it."""

    output: LocalPath = MODELS


class Champions(View):
    """``evaluate.champion``, as a stage that reads the champions sees it."""

    champion: LocalPath = CHAMPIONS


class TrainingRecord(Record):
    """What the torch training loop reports (:func:`spark_jobs.ml.training.fit`)."""

    world_size: int
    epochs: int
    history: list[dict[str, Any]]
    best_epoch: int | None
    best_val: float | None
    resumed_from_epoch: int | None
    train_rows: int
    val_rows: int
    ranks: list[dict[str, Any]]
    fit_s: float
    local_mode: bool | None = None
    threshold: float | None = None
    train_score_mean: float | None = None


class InitRecord(Record):
    """The backbone a fine-tuned cnn started from (``train.cnn.init``)."""

    uri: str
    sha256: str
    architecture: str
    width: int
    card: str | None = None  # the backbone card it was described by, when there was one


class ReferenceRecord(Record):
    """What a card says of its drift reference (:mod:`spark_jobs.ml.drift`): the file beside the
    model, its sha256, and the sample it holds."""

    file: str
    sha256: str
    rows: int
    dim: int
    layer: str  # the embedding: "backbone" (cnn), "latent" (autoencoder), "pooled" (tiles_*), "pca" (mllib)
    per_class: dict[str, int]


class ModelFiles(Record):
    """The files of a model folder, by role."""

    weights: str | None = None  # torch state dict
    calibration: str | None = None  # INT8 calibration images (cnn)
    classifier: str | None = None  # MLlib model folder
    transform: str | None = None  # the features' scaler + PCA (classical)
    extractor: str | None = None  # the features' extractor spec
    screen: str | None = None  # tiles_attention: the light tile screen of the tile cascade


class CardData(Record):
    ingest_manifest_sha256: str
    features_manifest_sha256: str | None = None
    # Where those manifests were when the model was trained (absolute paths: what the lineage
    # trace follows, from any workspace that scores with the model).
    ingest_manifest: str | None = None
    features_manifest: str | None = None


class ModelCard(Record):
    """``card.json`` of a trained model."""

    kind: Kind
    task: Task
    version: str
    classes: list[str]
    image_size: int
    input: str
    ingest_settings: IngestConfig
    class_counts: dict[str, int]
    class_weights: list[float] | None = None
    arch: dict[str, Any]  # the architecture's arguments (mllib: classifier and feature dim)
    feature_kind: str | None = None
    files: ModelFiles
    params: dict[str, Any]
    data: CardData
    job_version: JobVersion
    run_id: str | None = None
    spark: dict[str, Any] = Field(default_factory=dict)
    timings: Timings | None = None
    # mllib
    val_accuracy: float | None = None
    # cnn, autoencoder
    architecture: str | None = None
    exclude_classes: list[str] = Field(default_factory=list)
    weights_sha256: str | None = None
    training: TrainingRecord | None = None
    threshold: float | None = None
    threshold_percentile: float | None = None
    # cnn fine-tuned from a backbone
    init: InitRecord | None = None
    # tiles_*: how the features table cut the images (features.tiles); scoring cuts them the same way
    tiles: TilesConfig | None = None
    # a sample of its training inputs' embeddings, what a drift test compares new images with
    reference: ReferenceRecord | None = None
    lineage: LineageRecord | None = None  # its training run's OpenLineage run (set at publish time)

    @property
    def mllib_classifier(self) -> str | None:
        return self.arch.get("classifier")

    @property
    def feature_dim(self) -> int | None:
        return self.arch.get("dim")

    @property
    def headline_val(self) -> float | None:
        """Validation accuracy (mllib) or the best epoch's validation figure (torch)."""
        return self.val_accuracy if self.training is None else self.training.best_val


class BackboneCard(Record):
    """``card.json`` of the backbone stage's backbone."""

    architecture: str
    width: int
    embedding_dim: int
    image_size: int
    input: str
    classes: list[str]
    train_images: int
    epoch_losses: list[float]
    train_accuracy: float | None
    val_accuracy: float | None
    training: TrainingRecord | None = None
    params: dict[str, Any]
    data_manifest_sha256: str
    job_version: JobVersion
    run_id: str | None = None
    timings: Timings | None = None
    lineage: LineageRecord | None = None


class Promotion(Record):
    """``promotion.json`` beside a champion."""

    task: Task
    kind: Kind
    version: str
    metrics: dict[str, Any]
    promoted_at: str
    replaced: str | None = None
    job_version: JobVersion

    def figure(self, name: str) -> float | None:
        """One of the promoted model's metrics (``accuracy``, ``macro_f1``, ``auroc``...)."""
        value = self.metrics.get(name)
        return None if value is None else float(value)


CANDIDATES = "candidates"  # under evaluate.champion: each task's newest model evaluate passed and did not promote


def candidate_folder(champions: Path, task: str) -> Path:
    """Where ``task``'s candidate is kept (``score.shadow: candidate`` scores it)."""
    return champions / CANDIDATES / task


def model_dir(output: str | Path, kind: str) -> Path:
    """The folder of the trained ``kind`` model under ``train.output``."""
    return Path(output) / kind


def read_card(folder: Path) -> ModelCard:
    """A model folder's card; :class:`SourceError` when there is no trained model there, or its
    card is one this version cannot read."""
    path = folder / CARD
    if not path.exists():
        raise SourceError(f"no trained model at {folder} (no {CARD}): run `python -m spark_jobs.train` first")
    return read_record(path, ModelCard, "model card", "retrain it (python -m spark_jobs.train)")


def read_backbone_card(folder: Path) -> BackboneCard:
    return read_record(folder / CARD, BackboneCard, "backbone card", "run python -m spark_jobs.backbone again")


def read_backbone_card_bytes(data: bytes, uri: str) -> BackboneCard:
    """A backbone card fetched from ``uri`` (a local file or an S3 object)."""
    return read_record(uri, BackboneCard, "backbone card", "run python -m spark_jobs.backbone again", data=data)


def read_promotion(folder: Path) -> Promotion | None:
    """The promotion record of a champion folder (None: no champion there yet)."""
    path = folder / PROMOTION
    if not path.exists():
        return None
    return read_record(path, Promotion, "promotion record", "run python -m spark_jobs.evaluate again")


def write_card(folder: Path, card: ModelCard | BackboneCard) -> Path:
    return write(folder, card, CARD)


def check_model(folder: Path, card: ModelCard) -> None:
    """:class:`ConfigError` in one line, on the driver and before any executor loads anything, for
    a card whose files lie outside its folder or whose weights are not the ones it records
    (tampered, or replaced since training): no code of such a file runs."""
    inside = folder.resolve()
    files, reference = card.files, card.reference.file if card.reference else None
    names = (
        files.weights,
        files.calibration,
        files.classifier,
        files.transform,
        files.extractor,
        files.screen,
        reference,
    )
    for name in names:
        if name is not None and not (folder / name).resolve().is_relative_to(inside):
            raise ConfigError(f"model {folder}: its card names {name!r}, outside its folder; not followed")
    if card.files.weights is not None and card.weights_sha256 is not None:
        weights = folder / card.files.weights
        try:
            with weights.open("rb") as f:
                digest = hashlib.file_digest(f, "sha256").hexdigest()
        except OSError as exc:
            raise ConfigError(f"model {folder}: cannot read its weights {weights}: {exc.strerror or exc}") from None
        if digest != card.weights_sha256:
            raise ConfigError(
                f"model {folder}: its weights' sha256 is {digest[:16]}..., its card says "
                f"{card.weights_sha256[:16]}...: tampered or replaced since training; not loaded"
            )
