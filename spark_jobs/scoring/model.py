"""The model a scoring run uses: ``score.model`` or the champion of ``score.task``, its INT8 copy
or the cascade of a light and a heavy model (each a version of its own, so exactly-once is per
version), and the :class:`~spark_jobs.scoring.heads.Head` the scan runs for it."""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import shutil
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from spark_jobs.core import runner
from spark_jobs.core.config import ConfigError
from spark_jobs.ml import extractors, inference
from spark_jobs.ml.cards import ATTENTION_KINDS, CARD, TILE_KINDS, ModelCard, candidate_folder, check_model, read_card
from spark_jobs.ml.cascade import cascade_parts
from spark_jobs.ml.screen import Screen
from spark_jobs.scoring import heads
from spark_jobs.scoring.config import ScoreParams


def model_folder(cfg: ScoreParams) -> Path:
    """The model to score with: ``score.model``, or the promoted champion of ``score.task``."""
    if cfg.score.model:
        return Path(cfg.score.model)
    return Path(cfg.evaluate.champion) / cfg.score.task


PINNED = runner.PINNED  # under data.root: the model versions runs score with, each copied once
KEEP_PINNED_S = 7 * 24 * 3600.0  # a pinned copy no run has used for this long is removed


def _pin_key(folder: Path, card: ModelCard) -> str:
    return f"{card.version}-{hashlib.sha256((folder / CARD).read_bytes()).hexdigest()[:12]}"


def pinned(folder: Path, root: Path) -> tuple[Path, ModelCard]:
    """An immutable copy of the model in ``folder`` and its card: what one run (or micro-batch)
    scores with from start to end, driver and executors alike, whatever is promoted meanwhile
    (or done to ``folder``'s files after it was copied).
    Copied once per version into ``<data.root>/.models/<version>-<card hash>/`` (copied first,
    then its card read and its files checked there: a promotion during the copy is caught by the
    weights' sha256 and the copy made again), never rewritten; copies unused for a week go."""
    card = read_card(folder)
    pins = root / PINNED
    target = pins / _pin_key(folder, card)
    if target.is_dir():  # checked when it was copied: a stream's every trigger hashes nothing
        os.utime(target)
        return target, read_card(target)
    check_model(folder, card)
    pins.mkdir(parents=True, exist_ok=True)
    for _ in range(3):
        staged = pins / f".staging-{uuid.uuid4().hex[:8]}"
        try:
            shutil.copytree(folder, staged)
            copied = read_card(staged)
            check_model(staged, copied)
        except ConfigError:
            shutil.rmtree(staged, ignore_errors=True)
            continue  # replaced while it was copied: copy the new one
        target = pins / _pin_key(staged, copied)
        try:
            staged.rename(target)
        except OSError:  # another run pinned the same version first: the same files
            shutil.rmtree(staged, ignore_errors=True)
        _prune(pins, keep=target)
        return target, copied
    raise ConfigError(f"model {folder} changed three times while it was being read; try again")


def _prune(pins: Path, keep: Path) -> None:
    now = time.time()
    for old in pins.iterdir():
        with contextlib.suppress(OSError):
            if old != keep and now - old.stat().st_mtime > KEEP_PINNED_S:
                shutil.rmtree(old)


def descriptor_extractor(folder: Path) -> extractors.Classical | extractors.Sift:
    """The descriptor extractor an ``mllib`` model's features were made with (its ``extractor.json``)."""
    spec = json.loads((folder / extractors.EXTRACTOR).read_text())
    try:
        return extractors.descriptor_extractor(spec)
    except ValueError:
        raise ConfigError(
            f"{folder}: scoring an mllib model trained on {spec.get('kind')} features is not supported; "
            "score the cnn model, or train mllib on features.kind classical or sift"
        ) from None


def tile_head(folder: Path, card: ModelCard, cfg: ScoreParams, embeds: bool = False) -> heads.TileHead:
    """A ``tiles_*`` model with the extractor its tile features were made with (its
    ``extractor.json``) and the cut its card records (with ``embeds``, each row's pooled vector too)."""
    spec = json.loads((folder / extractors.EXTRACTOR).read_text())
    if spec.get("kind") != "cnn" or card.tiles is None:
        raise ConfigError(
            f"{folder}: scoring a {card.kind} model needs tile features of a cnn backbone (features.kind=cnn); "
            f"it was trained on {spec.get('kind')} features. Evaluate reports it; train it on cnn tiles to score"
        )
    model = inference.TorchModel.from_card(folder, card)
    predictor = inference.Predictor(model, cfg.score.batch_size, cfg.score.threads)
    extractor = extractors.Cnn.from_spec(spec)
    s = cfg.score
    fraction = s.cascade.tile_fraction
    light = tile_screen(folder, card) if fraction < 1.0 else None
    classes = tuple(card.classes)
    return heads.TileHead(
        predictor,
        extractor,
        card.tiles,
        card.ingest_settings,
        classes,
        s.top_k,
        s.top_tiles,
        s.heatmaps,
        light,
        fraction,
        embeds,
    )


def tile_screen(folder: Path, card: ModelCard) -> Screen:
    """The light tile screen of ``folder``'s model, for ``score.cascade.tile_fraction`` below 1."""
    if card.files.screen is None:
        raise ConfigError(
            f"score.cascade.tile_fraction below 1 needs a tiles_attention model with a tile screen "
            f"(train.tiles.screen_images > 0); {folder} holds a {card.kind} model without one"
        )
    try:
        return Screen.read(folder / card.files.screen)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"model {folder}: cannot read its tile screen: {exc}") from None


def torch_head(
    folder: Path, card: ModelCard, cfg: ScoreParams, embeds: bool = False, quantize: str | None = None
) -> heads.TorchHead:
    """The cnn or autoencoder of ``folder`` (its INT8 copy with ``quantize``, by default
    ``score.quantize``, ``int8``), run in forward passes of ``score.batch_size`` with
    ``score.threads`` torch threads per task (with ``embeds``, each row's embedding from the same pass)."""
    model = inference.TorchModel.from_card(folder, card, cfg.score.quantize if quantize is None else quantize)
    predictor = inference.Predictor(model, cfg.score.batch_size, cfg.score.threads)
    return heads.TorchHead(predictor, tuple(card.classes or ()), cfg.score.top_k, card.threshold, embeds)


@dataclass(frozen=True)
class Scorer:
    """The model a run scores with, and the version its predictions are recorded under: an INT8
    copy and a cascade (both versions and the cut) each count as a model of their own, so the
    exactly-once skipping is per version."""

    folder: Path  # the pinned copy (:func:`pinned`) the run reads
    card: ModelCard
    version: str
    kind: str  # model_kind of the rows: the card's kind, or "cascade"
    quantize: str = "none"
    light_folder: Path | None = None
    light: ModelCard | None = None
    source: Path | None = None  # the model folder as configured (score.model or the champion)
    shadow: Scorer | None = None  # score.shadow: a second model on the same pixels, never deciding

    @property
    def decider(self) -> str:
        """``decided_by`` of the rows the (heavy) model decides: its kind, ``-int8`` for the copy."""
        return self.card.kind + ("-int8" if self.quantize == "int8" else "")

    def head(self, cfg: ScoreParams) -> heads.Head:
        """What the scan computes from each decoded image: the model's outputs, or descriptors
        for an MLlib model (the cascade's light one first); with a shadow, its outputs too."""
        own = self.own_head(cfg)
        return own if self.shadow is None else heads.Paired(own, self.shadow.own_head(cfg, embeds=False))

    def own_head(self, cfg: ScoreParams, embeds: bool | None = None) -> heads.Head:
        """The head of this model alone (``embeds`` None: each row's embedding when the run tests
        drift)."""
        if self.light_folder is not None:
            return heads.Descriptors(descriptor_extractor(self.light_folder))
        if self.card.kind == "mllib":
            return heads.Descriptors(descriptor_extractor(self.folder))
        if embeds is None:
            embeds = self.embeds and cfg.gate.predictions.drift != "off"
        if self.card.kind in TILE_KINDS:
            return tile_head(self.folder, self.card, cfg, embeds)
        return torch_head(self.folder, self.card, cfg, embeds, self.quantize)  # a shadow: never INT8

    @property
    def embedder(self) -> tuple[Path, ModelCard]:
        """The model whose embeddings a run tests for drift: the one that sees every image (the
        cascade's light model), with its folder."""
        if self.light_folder is not None and self.light is not None:
            return self.light_folder, self.light
        return self.folder, self.card

    @property
    def embeds(self) -> bool:
        """Whether the scan's head emits each row's embedding: a torch model with a drift
        reference (an mllib model's embeddings are its PCA vectors, made from the scan's descriptors)."""
        _, card = self.embedder
        return card.kind != "mllib" and card.reference is not None

    def labels(self) -> list[str]:
        return list(heads.ANOMALY_LABELS) if self.card.task == "anomaly" else list(self.card.classes)

    def describe(self) -> dict[str, Any]:
        """What a manifest records of the model (and of its shadow)."""
        said: dict[str, Any] = {
            "folder": str(self.source or self.folder),
            "pinned": str(self.folder),
            "version": self.version,
            "kind": self.kind,
        }
        return said | ({"shadow": self.shadow.describe()} if self.shadow is not None else {})


def scorer(cfg: ScoreParams) -> Scorer:
    """The model of ``cfg``, pinned (:func:`pinned`) now: the run scores with this version to its
    end, and a new champion is picked up by the next run or micro-batch."""
    source = model_folder(cfg)
    root = Path(cfg.data.root)
    folder, card = pinned(source, root)
    quantize = cfg.score.quantize
    if quantize == "int8" and card.kind != "cnn":
        raise ConfigError(f"score.quantize=int8 applies to cnn models; {source} holds a {card.kind} model")
    version = f"{card.version}-int8" if quantize == "int8" else card.version
    fraction = cfg.score.cascade.tile_fraction
    if fraction < 1.0:  # another decision than the whole model's: another version, scored anew
        if card.kind not in ATTENTION_KINDS:
            raise ConfigError(
                f"score.cascade.tile_fraction below 1 applies to tiles_attention models; "
                f"{source} holds a {card.kind} model"
            )
        version = f"{version}-tiles@{fraction:g}"
    if not cfg.score.cascade.enabled:
        main = Scorer(folder, card, version, card.kind, quantize, source=source)
        return dataclasses.replace(main, shadow=shadow_scorer(cfg, main))
    light_source, light = cascade_parts(cfg.score.cascade, card)
    light_folder, light = pinned(light_source, root)
    version = f"cascade-{light.version}+{version}@{cfg.score.cascade.confidence}"
    main = Scorer(folder, card, version, "cascade", quantize, light_folder, light, source)
    return dataclasses.replace(main, shadow=shadow_scorer(cfg, main))


CANDIDATE = "candidate"  # score.shadow: the newest model evaluate passed and did not promote
# What decides the pixels a model reads: a shadow must share the champion's, as it reads its decode.
DECODE_SETTINGS = ("image_size", "alpha_background", "resize", "preprocess")


def shadow_folder(cfg: ScoreParams) -> Path | None:
    """``score.shadow``'s model folder: a path, or for ``candidate`` the task's candidate beside
    the champions (:func:`spark_jobs.ml.promotion.keep_candidate` keeps it)."""
    if cfg.score.shadow is None:
        return None
    if cfg.score.shadow == CANDIDATE:
        return candidate_folder(Path(cfg.evaluate.champion), cfg.score.task)
    return Path(cfg.score.shadow)


def shadow_source(cfg: ScoreParams) -> Path | None:
    """``score.shadow``'s model folder, checked to hold a model (None: no shadow)."""
    source = shadow_folder(cfg)
    if source is not None and not (source / CARD).is_file():
        why = "evaluate has passed no model it did not promote yet" if cfg.score.shadow == CANDIDATE else "no card.json"
        raise ConfigError(f"score.shadow: {source} holds no model ({why})")
    return source


def shadow_scorer(cfg: ScoreParams, main: Scorer) -> Scorer | None:
    """The shadow challenger of ``main`` (``score.shadow``), pinned as the champion is; a model
    that cannot read the champion's decoded pixels or say the same kind of thing is refused."""
    source = shadow_source(cfg)
    if source is None:
        return None
    folder, card = pinned(source, Path(cfg.data.root))
    problem = shadow_problem(main, card)
    if problem is not None:
        raise ConfigError(f"score.shadow {source}: {problem}")
    return Scorer(folder, card, card.version, card.kind, source=source)


def shadow_problem(main: Scorer, shadow: ModelCard) -> str | None:
    """Why ``shadow`` cannot run beside ``main`` on its decoded pixels, or None."""
    if main.light_folder is not None:
        return "a cascade already runs two models; give the shadow to a run without score.cascade"
    if main.card.kind in TILE_KINDS or shadow.kind in TILE_KINDS:
        return "tiles models decode each file at full resolution; a shadow reads the champion's decoded pixels"
    if shadow.task != main.card.task:
        return f"a {shadow.task} model cannot agree or disagree with a {main.card.task} champion"
    if shadow.version == main.card.version:
        return f"it is the champion itself ({shadow.version})"
    ours, theirs = main.card.ingest_settings.model_dump(), shadow.ingest_settings.model_dump()
    if any(ours[k] != theirs[k] for k in DECODE_SETTINGS):
        return f"it was trained on other pixels than the champion ({', '.join(DECODE_SETTINGS)} differ)"
    return None
