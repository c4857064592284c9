"""Train: one model, chosen by ``train.model``, written to ``<train.output>/<model>/`` with a card.

- ``mllib``: an MLlib classifier (``train.mllib.classifier``: logistic regression or random
  forest) on the published features table's train split, rows weighted by class when classes are
  skewed (``train.class_weighting``). Saved in MLlib's format in ``classifier/``, next to a copy
  of the features stage's ``transform/`` and ``extractor.json`` it needs to score new images.
- ``cnn``: the project's CNN (:func:`spark_jobs.ml.models.classifier`) trained from the ingested
  pixels by ``TorchDistributor`` (``train.num_processes`` ranks, DDP on gloo), each rank reading
  its own shard of the Parquet table; class-weighted loss for skewed classes; the epoch with the
  best val accuracy is kept. Checkpoints every ``train.checkpoint_every`` epochs under
  ``<data.root>/.checkpoints/``: a killed run started again with the same params resumes.
- ``autoencoder``: a convolutional autoencoder trained the same way on the train split without
  ``train.autoencoder.holdout_class``; its reconstruction error is an anomaly score, and the
  card records the threshold at ``threshold_percentile`` of the train scores.

Weights are state dicts (``model.pt``, loaded with ``weights_only=True``), never pickled objects.
``card.json``: kind, task, version, classes, input size and the ingest settings to decode new
images with, feature kind, params, data manifest hashes, code version, training time, history.

    python -m spark_jobs.train --set train.model=cnn [--set train.cnn.epochs=5]
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from pydantic import Field, model_validator

from spark_jobs.core import manifest, runner, store
from spark_jobs.core.config import ConfigError, LocalPath, Params, Section, Seed, params_hash
from spark_jobs.core.ingest_config import IngestConfig
from spark_jobs.core.jobs import exit_process, run_stage
from spark_jobs.core.store import SourceError, spark_path
from spark_jobs.core.tables import ingested_with, published, read_features, split_class_counts
from spark_jobs.imaging.tiles import TilesConfig
from spark_jobs.ml import drift, models, screen, training
from spark_jobs.ml.cards import (
    ARCHITECTURES,
    ATTENTION_KINDS,
    CALIBRATION,
    CARD,
    MODELS,
    TASKS,
    TILE_KINDS,
    WEIGHTS,
    BackboneCard,
    CardData,
    InitRecord,
    Kind,
    ModelCard,
    ModelFiles,
    ReferenceRecord,
    TrainingRecord,
    model_dir,
    read_backbone_card_bytes,
)
from spark_jobs.ml.drift import DriftConfig
from spark_jobs.ml.extractors import EXTRACTOR
from spark_jobs.ml.mllib import CLASSIFIER, TRANSFORM, MllibConfig, mllib_estimator, mllib_input
from spark_jobs.ml.screen import SCREEN, Screen
from spark_jobs.ml.training import AutoencoderConfig, CnnTrainConfig, Hyper, ModelSpec, TilesTrainConfig, TrainSpec

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

log = logging.getLogger(__name__)

STAGE = "train"
CALIBRATION_IMAGES = 256
REFERENCE_BATCH = 256  # images (or tile sequences) a forward pass of the drift reference
# What a model reads (the card's ``input``), besides the pixels of the cnn and the autoencoder.
INPUTS = {
    "mllib": "features table rows (features.parquet)",
    **dict.fromkeys(
        TILE_KINDS, "each image's tile vectors in raster order (features.tiles), cut from the full-resolution file"
    ),
}


class TrainConfig(Section):
    """``train``."""

    model: Kind = "mllib"
    output: LocalPath = MODELS
    seed: Seed = 0
    class_weighting: Literal["none", "balanced", "auto"] = "auto"
    skew_ratio: float = Field(1.5, ge=1.0)
    num_processes: int = Field(2, ge=1, le=1024)
    local_mode: bool | Literal["auto"] = "auto"
    threads: int = Field(1, ge=1, le=256)
    checkpoint_every: int = Field(1, ge=1)
    mllib: MllibConfig = MllibConfig()
    cnn: CnnTrainConfig = CnnTrainConfig()
    autoencoder: AutoencoderConfig = AutoencoderConfig()
    tiles: TilesTrainConfig = TilesTrainConfig()

    @model_validator(mode="after")
    def _batch_splits_over_ranks(self) -> TrainConfig:
        for name in ("cnn", "autoencoder", "tiles"):
            if getattr(self, name).batch_size < self.num_processes:
                raise ValueError(f"train.{name}.batch_size must be >= train.num_processes (each rank takes a share)")
        return self


class TrainParams(Params):
    """What the train stage reads: ``train``."""

    train: TrainConfig = TrainConfig()
    drift: DriftConfig = DriftConfig()


PARAMS = TrainParams  # what the stage reads of params.yaml


def outputs(cfg: TrainParams) -> list[Path]:
    return [model_dir(cfg.train.output, cfg.train.model)]


def reads_features(kind: str) -> bool:
    """Whether a model trains on the features table (``mllib``, ``tiles_*``) or on the ingested pixels."""
    return kind == "mllib" or kind in TILE_KINDS


def train_input(cfg: TrainParams, kind: str) -> tuple[Path, dict[str, int]]:
    """``(the published table the model trains on, its train images per class)``: the features
    table for ``mllib`` and ``tiles_*``, the ingested images otherwise; counts from the manifests
    (the ingest table's: a tiles features table has a row per tile, not per image)."""
    folder = published(cfg.data.root, "features" if reads_features(kind) else "ingest")
    source = published(cfg.data.root, "ingest") if kind in TILE_KINDS else folder
    counts = split_class_counts(source).get("train") or {}
    if not counts:
        raise SourceError(f"no train rows in {folder}: check ingest.split")
    return folder, counts


def train_mllib(
    cfg: TrainParams, spark: SparkSession, folder: Path, features_dir: Path, counts: dict[str, int]
) -> dict:
    """Fit the MLlib classifier on the features table; write it (and the features transform) into ``folder``."""
    from pyspark.sql import functions as F

    table = read_features(spark, features_dir)
    classes = sorted(counts)
    weights = training.class_weights(counts, classes, cfg.train.class_weighting, cfg.train.skew_ratio)
    train = mllib_input(table.where(F.col("split") == "train"), classes, weights)
    model = mllib_estimator(cfg.train.mllib, cfg.train.seed, weights is not None).fit(train)
    model.save(spark_path(folder / CLASSIFIER))
    if (features_dir / TRANSFORM).exists():
        shutil.copytree(features_dir / TRANSFORM, folder / TRANSFORM)
    shutil.copy2(features_dir / EXTRACTOR, folder / EXTRACTOR)
    val = mllib_input(table.where(F.col("split") == "val"), classes)
    scored = model.transform(val.where(F.col("label_index").isNotNull()))
    row = scored.agg(F.count("*").alias("n"), F.sum((F.col("prediction") == F.col("label_index")).cast("int"))).first()
    extractor = json.loads((features_dir / EXTRACTOR).read_text())
    return {
        "classes": classes,
        "class_counts": counts,
        "class_weights": weights,
        "arch": {"classifier": cfg.train.mllib.classifier, "dim": extractor.get("dim")},
        "feature_kind": extractor.get("kind"),
        "val_accuracy": (row[1] / row["n"]) if row["n"] else None,
        "data": {"features_manifest_sha256": manifest.file_hash(features_dir / manifest.MANIFEST)},
        "files": ModelFiles(classifier=CLASSIFIER, transform=TRANSFORM, extractor=EXTRACTOR),
        "reference": mllib_reference(cfg, features_dir, folder),
    }


def tiles_extractor(features_dir: Path) -> dict[str, Any]:
    """The features table's ``extractor.json``, checked to describe tiles (what ``tiles_*`` read)."""
    spec = json.loads((features_dir / EXTRACTOR).read_text())
    if not spec.get("tiles"):
        raise ConfigError(
            f"the tiles_* models read an image as its tiles, but {features_dir} holds one vector per image: "
            "run the features stage with features.tiles.enabled=true"
        )
    return spec


def init_backbone(cfg: TrainParams) -> InitRecord | None:
    """The backbone ``train.cnn.init`` names (a state dict: path or ``s3://`` URI), described by the
    backbone card beside it (architecture and width), else by ``train.cnn.init_architecture`` and
    the dict's shapes; read by the restricted loader and checked to load here, on the driver."""
    c = cfg.train.cnn
    if c.init is None:
        return None
    uri = c.init if c.init.startswith(("s3://", "file:")) else store.local_uri(c.init)
    if models.backbone_format(uri) != "state_dict":
        raise ConfigError(f"train.cnn.init {c.init}: a backbone state dict (.pt/.pth) is needed to fine-tune")
    data = models.read_backbone_bytes(uri)
    card_uri = uri.rsplit("/", 1)[0] + "/" + CARD
    try:
        card: BackboneCard | None = read_backbone_card_bytes(store.fetch(card_uri), card_uri)
    except store.FetchError:
        card = None
    architecture = card.architecture if card is not None else c.init_architecture
    if architecture is None:
        raise ConfigError(
            f"train.cnn.init {c.init} has no backbone card ({CARD}) beside it: set train.cnn.init_architecture "
            f"to one of {sorted(models.BACKBONES)}"
        )
    try:
        state = models.backbone_state(architecture, models.load_tensors(data))
        width = models.backbone_width(architecture, state)
        models.ARCHITECTURES[architecture](state).load_state_dict(state)
    except models.BackboneError:
        raise
    except Exception as exc:
        raise models.BackboneError(
            f"train.cnn.init {c.init} does not load as a {architecture} state dict: {exc}"
        ) from None
    if card is not None and card.width != width:
        raise models.BackboneError(
            f"train.cnn.init {c.init}: its card says width {card.width}, its weights have {width}"
        )
    return InitRecord(
        uri=uri,
        sha256=hashlib.sha256(data).hexdigest(),
        architecture=architecture,
        width=width,
        card=card_uri if card is not None else None,
    )


def torch_spec(
    cfg: TrainParams, kind: str, classes: list[str], weights: list[float] | None, source: Path, ingest_dir: Path
) -> TrainSpec:
    """The spec :func:`spark_jobs.ml.training.fit` runs from; ``source`` is the table the model
    reads (the ingested images, or the tiles features)."""
    t = cfg.train
    model, section, exclude, init = _model_spec(cfg, kind, classes, source, ingest_dir)
    table, read = ("features.parquet", "tiles") if kind in TILE_KINDS else ("images.parquet", "pixels")
    return TrainSpec(
        kind=kind,  # type: ignore[arg-type]
        input=read,  # type: ignore[arg-type]
        model=model,
        hp=Hyper.of(section),
        init=init,
        classes=classes,
        class_weights=weights,
        exclude_classes=exclude,
        table=str((source / table).absolute()),
        seed=t.seed,
        threads=t.threads,
        checkpoint_every=t.checkpoint_every,
        threshold_percentile=t.autoencoder.threshold_percentile,
        world=t.num_processes,
        data=manifest.file_hash(source / manifest.MANIFEST),
    )


def _model_spec(
    cfg: TrainParams, kind: str, classes: list[str], source: Path, ingest_dir: Path
) -> tuple[ModelSpec, Section, list[str], InitRecord | None]:
    """``(the module to build, the section of its hyperparameters, the classes it leaves out, the
    backbone it starts from)`` of a torch model kind."""
    t = cfg.train
    if kind in TILE_KINDS:
        h = t.tiles
        args = {
            "dim": int(tiles_extractor(source)["dim"]),
            "classes": len(classes),
            "aggregate": kind.removeprefix("tiles_"),
        }
        args |= {"hidden": h.hidden, "bidirectional": h.bidirectional, "dropout": h.dropout}
        return ModelSpec(architecture=ARCHITECTURES[kind], args=args), h, [], None
    if kind == "cnn":
        c = t.cnn
        args = {"width": c.width, "classes": len(classes), "dropout": c.dropout}
        record = init_backbone(cfg)
        if record is None:
            return ModelSpec(architecture=ARCHITECTURES[kind], args=args), c, [], None
        # The architecture and width are the backbone's: what every rank loads (and checks), and the card records.
        spec = ModelSpec(architecture=f"{record.architecture}_classifier", args=args | {"width": record.width})
        return spec, c, [], record
    a = t.autoencoder
    ingest_size = ingested_with(ingest_dir).image_size
    if ingest_size % 8:
        raise ConfigError(f"the autoencoder needs image sides that are multiples of 8; ingest made {ingest_size}px")
    args = {"width": a.width, "latent": a.latent, "image_size": ingest_size}
    exclude = [a.holdout_class] if a.holdout_class is not None else []
    return ModelSpec(architecture=ARCHITECTURES[kind], args=args), a, exclude, None


def train_torch(
    cfg: TrainParams, spark: SparkSession, folder: Path, kind: str, source: Path, counts: dict[str, int]
) -> dict[str, Any]:
    """Train ``cnn``, ``autoencoder`` or a ``tiles_*`` model with TorchDistributor; rank 0 writes
    ``folder/model.pt``. ``source``: the ingested images, or the tiles features table. Returns
    what the card says of the model."""
    classes = sorted(counts)
    holdout = cfg.train.autoencoder.holdout_class
    if kind == "autoencoder" and holdout is not None and holdout not in counts:
        raise ConfigError(f"train.autoencoder.holdout_class {holdout!r} is not a class of the data ({classes})")
    weights = None
    if kind != "autoencoder":
        weights = training.class_weights(counts, classes, cfg.train.class_weighting, cfg.train.skew_ratio)
    spec = torch_spec(cfg, kind, classes, weights, source, published(cfg.data.root, "ingest"))
    result = distributed_fit(cfg, spark, spec, folder / WEIGHTS)
    calibration = None
    if kind == "cnn":  # what an INT8 copy calibrates its activation ranges on (score.quantize)
        ids = training.shard_ids(spec.table, "train", 0, 1, [], pad=False)[:CALIBRATION_IMAGES]
        pixels, _ = training.read_rows(spec.table, ids)
        np.save(folder / CALIBRATION, np.ascontiguousarray(pixels), allow_pickle=False)
        calibration = CALIBRATION
    details: dict[str, Any] = {
        "classes": classes,
        "class_counts": counts,
        "class_weights": weights,
        "architecture": spec.model.architecture,
        "arch": spec.model.args,
        "feature_kind": "pixels",
        "exclude_classes": spec.exclude_classes,
        "files": ModelFiles(weights=WEIGHTS, calibration=calibration),
        "weights_sha256": hashlib.sha256((folder / WEIGHTS).read_bytes()).hexdigest(),
        "training": TrainingRecord(**result),
        "init": spec.init,
        "reference": torch_reference(cfg, spec, folder),
    }
    if kind in TILE_KINDS:  # the extractor and the cut that scoring repeats on new images
        extractor = tiles_extractor(source)
        shutil.copy2(source / EXTRACTOR, folder / EXTRACTOR)
        files = ModelFiles(weights=WEIGHTS, extractor=EXTRACTOR)
        screened = kind in ATTENTION_KINDS and cfg.train.tiles.screen_images > 0
        light = fit_screen(cfg, spark, spec, folder, extractor) if screened else None
        if light is not None:
            light.write(folder)
            files = files.model_copy(update={"screen": SCREEN})
        details |= {"feature_kind": extractor["kind"], "files": files}
        details |= {"tiles": extractor["tiles"], "data": {"features_manifest_sha256": spec.data}}
    if kind == "autoencoder":
        details["threshold"] = result["threshold"]
        details["threshold_percentile"] = cfg.train.autoencoder.threshold_percentile
    return details


def trained_net(spec: TrainSpec, folder: Path) -> Any:
    """The module ``spec`` describes with the weights just written to ``folder``, in eval mode
    (:func:`models.load_weights`: no pickled object is loaded)."""
    net = models.build(spec.model.architecture, spec.model.args)
    return models.load_weights(net, (folder / WEIGHTS).read_bytes(), str(folder / WEIGHTS)).eval()


def fit_screen(
    cfg: TrainParams, spark: SparkSession, spec: TrainSpec, folder: Path, extractor: dict[str, Any]
) -> Screen | None:
    """The light tile screen of a trained ``tiles_attention`` model (:mod:`spark_jobs.ml.screen`):
    the model's attention over the tiles of at most ``train.tiles.screen_images`` training images
    (from the features table), and those tiles' thumbnails, cut from their files again as the
    features stage cut them (one Spark job), fitted on the driver; None when none of their files
    can be read and cut again."""
    import torch
    from pyspark.sql import functions as F

    ids = training.shard_ids(spec.table, "train", 0, 1, [], pad=False, limit=cfg.train.tiles.screen_images)
    x, _ = training.read_sequences(spec.table, ids)
    net = trained_net(spec, folder)
    with torch.inference_mode():
        weights = net.attend(torch.from_numpy(x))[1].numpy()
    ingest_cfg, _ = ingest_of(cfg, spec.kind)
    tiles_cfg = TilesConfig.model_validate(extractor["tiles"])
    uris = (
        read_features(spark, Path(spec.table).parent)
        .where(F.col("image_id").isin(ids))
        .select("image_id", "source_uri")
    )
    cut = uris.dropDuplicates(["image_id"]).repartition(max(1, cfg.spark.shuffle_partitions))
    rows = cut.mapInArrow(lambda it: screen.tile_thumbs(it, ingest_cfg, tiles_cfg), screen.THUMBS_SCHEMA)
    thumbs = {r["image_id"]: np.asarray(r["thumbs"], dtype=np.float32) for r in rows.toArrow().to_pylist()}
    pairs = []
    for i, image in enumerate(ids):
        found = thumbs.get(image)
        count = int(x[i, :, -1].sum())
        if found is not None and len(found) == count * screen.SIDE**2:
            pairs.append((found.reshape(count, screen.SIDE**2), weights[i, :count]))
    if not pairs:  # the model stands without it: only the tile cascade needs a screen
        log.warning("no training image's file could be cut again (moved or changed since ingest): no tile screen")
        return None
    fitted = screen.fitted(pairs)
    log.info(
        "tile screen: fitted on %d tiles of %d images; heaviest tile in its top quarter for %.3f",
        fitted.tiles,
        fitted.images,
        fitted.recall,
    )
    return fitted


def torch_reference(cfg: TrainParams, spec: TrainSpec, folder: Path) -> ReferenceRecord:
    """The drift reference of a trained torch model (:mod:`spark_jobs.ml.drift`): its embedding
    layer (:func:`models.embedded`) of at most ``drift.reference_rows`` train images, stratified
    by class with the run's seed, read as training reads them (ingested pixels, or the features
    table's tile vectors: no file is decoded again)."""
    import torch

    ids, labels = training.split_labels(spec.table, "train", spec.exclude_classes)
    chosen = drift.stratified(ids, labels, cfg.drift.reference_rows, cfg.train.seed)
    net = trained_net(spec, folder)
    vectors, seen, layer = [], [], ""
    with torch.inference_mode():
        for start in range(0, len(chosen), REFERENCE_BATCH):
            x, batch_labels = training.read_inputs(spec, chosen[start : start + REFERENCE_BATCH])
            forward = models.embedded(net, spec.model.architecture, x)
            layer = forward.layer
            vectors.append(forward.embedding.numpy())
            seen += batch_labels
    return drift.write_reference(folder, np.concatenate(vectors), seen, layer)


def mllib_reference(cfg: TrainParams, features_dir: Path, folder: Path) -> ReferenceRecord:
    """The drift reference of an mllib model: the features table's vectors (after its scaler +
    PCA, the model's input) of at most ``drift.reference_rows`` train rows, stratified by class."""
    import pyarrow.dataset as ds

    table = str(features_dir / "features.parquet")
    ids, labels = training.split_labels(table, "train", [])
    chosen = drift.stratified(ids, labels, cfg.drift.reference_rows, cfg.train.seed)
    found = (
        ds.dataset(table, format="parquet")
        .to_table(columns=["image_id", "label", "features"], filter=ds.field("image_id").isin(chosen))
        .sort_by("image_id")
    )
    vectors = np.asarray(found["features"].to_pylist(), dtype=np.float32)
    layer = "pca" if (features_dir / TRANSFORM).exists() else "features"
    return drift.write_reference(folder, vectors, found["label"].to_pylist(), layer)


def distributed_fit(cfg: TrainParams, spark: SparkSession, spec: TrainSpec, weights: Path) -> dict[str, Any]:
    """:func:`spark_jobs.ml.training.fit` on ``train.num_processes`` ranks (TorchDistributor; local
    processes on a local master unless ``train.local_mode`` says otherwise), resuming a run a kill
    cut short; its report."""
    from pyspark.ml.torch.distributor import TorchDistributor

    checkpoints = training.checkpoint_dir(cfg.data.root, spec)
    if (checkpoints / training.STATE).exists():
        log.info("%s: resuming from the checkpoint in %s", spec.kind, checkpoints)
    local = cfg.train.local_mode
    if local == "auto":
        local = spark.sparkContext.master.startswith("local")
    distributor = TorchDistributor(num_processes=cfg.train.num_processes, local_mode=local, use_gpu=False)
    result = distributor.run(training.fit, spec, str(checkpoints), str(weights.absolute()))
    shutil.rmtree(checkpoints, ignore_errors=True)  # finished: the next run with these params starts afresh
    return result | {"local_mode": local}


def ingest_of(cfg: TrainParams, kind: str) -> tuple[IngestConfig, str]:
    """The settings and manifest hash of the ingest table the model's input came from: the
    mllib model reads only the features table (whose manifest records its ingest input)."""
    if reads_features(kind):
        features = manifest.read(published(cfg.data.root, "features"))
        return features.ingest_settings(), features.ingest_manifest_sha256()
    ingest_dir = published(cfg.data.root, "ingest")
    return ingested_with(ingest_dir), manifest.file_hash(ingest_dir / manifest.MANIFEST)


def trained_from(cfg: TrainParams, kind: str) -> dict[str, str]:
    """Where the manifests of the runs the model's input came from are (the card's lineage links)."""
    made = {"ingest_manifest": published(cfg.data.root, "ingest") / manifest.MANIFEST}
    if reads_features(kind):
        made["features_manifest"] = published(cfg.data.root, "features") / manifest.MANIFEST
    return {key: str(path.absolute()) for key, path in made.items()}


def used_params(cfg: TrainParams, kind: str) -> dict[str, Any]:
    """The ``train`` params that shaped this model (not the other models' sections), and ``drift``."""
    section = cfg.section("train")["train"]
    own = "tiles" if kind in TILE_KINDS else kind
    for other in ("mllib", "cnn", "autoencoder", "tiles"):
        if other != own:
            section.pop(other)
    if kind == "mllib":
        for key in ("num_processes", "local_mode", "threads", "checkpoint_every"):
            section.pop(key)
    return section | {"drift": {"reference_rows": cfg.drift.reference_rows}}  # the reference kept with the model


def run(cfg: TrainParams, spark: SparkSession) -> Path:
    """Train ``train.model`` into ``<train.output>/<model>/``; returns the folder."""
    kind = cfg.train.model
    target = model_dir(cfg.train.output, kind)
    params = used_params(cfg, kind)
    with runner.StageRun(
        STAGE, cfg.data.root, spark, target, lock_wait=cfg.data.lock_wait_s, job=f"{STAGE}.{kind}", params=params
    ) as run:
        with run.phase("read"):
            ingest_cfg, ingest_sha = ingest_of(cfg, kind)
            source, counts = train_input(cfg, kind)
            init = cfg.train.cnn.init if kind == "cnn" else None  # the backbone it is fine-tuned from
            run.lineage.reads(source, published(cfg.data.root, "ingest") if kind in TILE_KINDS else None, init)
        with run.phase("work"):
            if kind == "mllib":
                details = train_mllib(cfg, spark, run.staging, source, counts)
            else:
                details = train_torch(cfg, spark, run.staging, kind, source, counts)
        data = {"ingest_manifest_sha256": ingest_sha, **details.pop("data", {}), **trained_from(cfg, kind)}
        started = run.timings()["started_at"]
        stamp = started.replace(":", "").replace("-", "").replace("+0000", "Z")
        card = ModelCard(
            kind=kind,
            task=TASKS[kind],
            version=f"{kind}-{stamp}-{params_hash(data | params)[:8]}",
            image_size=ingest_cfg.image_size,
            input=INPUTS.get(kind, "float RGB NCHW in [0, 1]"),
            ingest_settings=ingest_cfg,
            **details,
            params=params,
            data=CardData(**data),
            job_version=manifest.job_version(),
            run_id=run.run_id,
            spark=run.spark_metrics(),
        )
        out = run.finish(None, card, name=CARD)
    log.info(
        "trained %s %s in %.1f s (val %s, best epoch %s) -> %s",
        kind,
        card.version,
        run.seconds.get("work", 0.0),
        card.headline_val,
        card.training.best_epoch if card.training else None,
        out,
    )
    return out


def _precheck(cfg: TrainParams) -> None:
    source = published(cfg.data.root, "features" if reads_features(cfg.train.model) else "ingest")
    if cfg.train.model in TILE_KINDS:
        tiles_extractor(source)
    if cfg.train.model == "cnn":
        init_backbone(cfg)  # a state dict that does not load: exit 2 before Spark starts


def main(argv: list[str] | None = None) -> int:
    return run_stage(STAGE, argv, run, params=PARAMS, outputs=outputs, description=__doc__, precheck=_precheck)


if __name__ == "__main__":
    exit_process(main())
