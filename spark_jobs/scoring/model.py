"""The model a scoring run uses: ``score.model`` or the champion of ``score.task``, its INT8 copy
or the cascade of a light and a heavy model (each a version of its own, so exactly-once is per
version), and the :class:`~spark_jobs.scoring.heads.Head` the scan runs for it."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from spark_jobs.core.config import ConfigError
from spark_jobs.ml import extractors, inference
from spark_jobs.ml.cards import TILE_KINDS, ModelCard, read_card
from spark_jobs.ml.cascade import cascade_parts
from spark_jobs.ml.extractors import ClassicalConfig
from spark_jobs.scoring import heads
from spark_jobs.scoring.config import ScoreParams


def model_folder(cfg: ScoreParams) -> Path:
    """The model to score with: ``score.model``, or the promoted champion of ``score.task``."""
    if cfg.score.model:
        return Path(cfg.score.model)
    return Path(cfg.evaluate.champion) / cfg.score.task


def classical_extractor(folder: Path) -> extractors.Classical:
    """The descriptor extractor an ``mllib`` model's features were made with (its ``extractor.json``)."""
    spec = json.loads((folder / extractors.EXTRACTOR).read_text())
    if spec.get("kind") != "classical":
        raise ConfigError(
            f"{folder}: scoring an mllib model trained on {spec.get('kind')} features is not supported; "
            "score the cnn model, or train mllib on features.kind=classical"
        )
    cfg = ClassicalConfig.model_validate({k: spec[k] for k in ClassicalConfig.model_fields if k in spec})
    return extractors.Classical(cfg, int(spec["image_size"]))


def tile_head(folder: Path, card: ModelCard, cfg: ScoreParams) -> heads.TileHead:
    """A ``tiles_*`` model with the extractor its tile features were made with (its
    ``extractor.json``) and the cut its card records."""
    spec = json.loads((folder / extractors.EXTRACTOR).read_text())
    if spec.get("kind") != "cnn" or card.tiles is None:
        raise ConfigError(
            f"{folder}: scoring a {card.kind} model needs tile features of a cnn backbone (features.kind=cnn); "
            f"it was trained on {spec.get('kind')} features. Evaluate reports it; train it on cnn tiles to score"
        )
    model = inference.TorchModel.from_card(folder, card)
    predictor = inference.Predictor(model, cfg.score.batch_size, cfg.score.threads)
    extractor = extractors.Cnn.from_spec(spec)
    return heads.TileHead(predictor, extractor, card.tiles, card.ingest_settings, tuple(card.classes), cfg.score.top_k)


def torch_head(folder: Path, card: ModelCard, cfg: ScoreParams) -> heads.TorchHead:
    """The cnn or autoencoder of ``folder`` (its INT8 copy with ``score.quantize: int8``), run in
    forward passes of ``score.batch_size`` with ``score.threads`` torch threads per task."""
    model = inference.TorchModel.from_card(folder, card, cfg.score.quantize)
    predictor = inference.Predictor(model, cfg.score.batch_size, cfg.score.threads)
    return heads.TorchHead(predictor, tuple(card.classes or ()), cfg.score.top_k, card.threshold)


@dataclass(frozen=True)
class Scorer:
    """The model a run scores with, and the version its predictions are recorded under: an INT8
    copy and a cascade (both versions and the cut) each count as a model of their own, so the
    exactly-once skipping is per version."""

    folder: Path
    card: ModelCard
    version: str
    kind: str  # model_kind of the rows: the card's kind, or "cascade"
    quantize: str = "none"
    light_folder: Path | None = None
    light: ModelCard | None = None

    @property
    def decider(self) -> str:
        """``decided_by`` of the rows the (heavy) model decides: its kind, ``-int8`` for the copy."""
        return self.card.kind + ("-int8" if self.quantize == "int8" else "")

    def head(self, cfg: ScoreParams) -> heads.Head:
        """What the scan computes from each decoded image: the model's outputs, or descriptors
        for an MLlib model (the cascade's light one first)."""
        if self.light_folder is not None:
            return heads.Descriptors(classical_extractor(self.light_folder))
        if self.card.kind == "mllib":
            return heads.Descriptors(classical_extractor(self.folder))
        if self.card.kind in TILE_KINDS:
            return tile_head(self.folder, self.card, cfg)
        return torch_head(self.folder, self.card, cfg)

    def labels(self) -> list[str]:
        return list(heads.ANOMALY_LABELS) if self.card.task == "anomaly" else list(self.card.classes)

    def describe(self) -> dict[str, str]:
        """What a manifest records of the model."""
        return {"folder": str(self.folder), "version": self.version, "kind": self.kind}


def scorer(cfg: ScoreParams) -> Scorer:
    """The model of ``cfg`` (its card read now: a new champion is picked up by the next run or micro-batch)."""
    folder = model_folder(cfg)
    card = read_card(folder)
    quantize = cfg.score.quantize
    if quantize == "int8" and card.kind != "cnn":
        raise ConfigError(f"score.quantize=int8 applies to cnn models; {folder} holds a {card.kind} model")
    version = f"{card.version}-int8" if quantize == "int8" else card.version
    if not cfg.score.cascade.enabled:
        return Scorer(folder, card, version, card.kind, quantize)
    light_folder, light = cascade_parts(cfg.score.cascade, card)
    version = f"cascade-{light.version}+{version}@{cfg.score.cascade.confidence}"
    return Scorer(folder, card, version, "cascade", quantize, light_folder, light)
