"""Backbone: the project's own small CNN backbone, for ``features.kind: cnn`` without downloads.

Pretrained weights cannot be fetched here (DESIGN.md #8), so this stage trains
:func:`spark_jobs.ml.models.small_cnn` plus a linear head for ``backbone.epochs`` on the ingested
train split (at most ``backbone.max_images``), with the project's one training loop
(:func:`spark_jobs.ml.training.fit`, run here in this one process, one rank, no Spark: it is a
bootstrap; distributed training lives in ``train``). Like ``train``, it keeps the best val epoch
and checkpoints under ``<data.root>/.checkpoints``, so a killed run resumes. It writes, under
``backbone.output``:

- ``backbone.pt2``: the backbone (head removed) as a ``torch.export`` program, any batch size;
- ``backbone.pt``: the same weights as a state dict (architecture ``small_cnn``);
- ``card.json``: architecture, width, embedding size, classes, data manifest hash, code version,
  train/val accuracy of the head, training history and time.

    python -m spark_jobs.backbone [--set backbone.epochs=5]
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from pydantic import Field

from spark_jobs.core import manifest, runner
from spark_jobs.core.config import LocalPath, Params, Section, Seed
from spark_jobs.core.jobs import exit_process, run_stage
from spark_jobs.core.store import SourceError
from spark_jobs.core.tables import ingested_with, published, split_class_counts
from spark_jobs.ml import models, training
from spark_jobs.ml.cards import CARD, BackboneCard, TrainingRecord

if TYPE_CHECKING:
    from torch import nn

log = logging.getLogger(__name__)

STAGE = "backbone"
EXPORTED = "backbone.pt2"
STATE_DICT = "backbone.pt"
HEAD = "small_cnn_classifier"  # small_cnn + dropout + a linear head: the training loop's cnn


class BackboneConfig(Section):
    """``backbone``."""

    architecture: Literal["small_cnn"] = "small_cnn"
    width: int = Field(16, ge=4, le=512)
    epochs: int = Field(3, ge=0)
    batch_size: int = Field(64, ge=1)
    learning_rate: float = Field(0.003, gt=0.0)
    max_images: int = Field(20000, ge=1)
    seed: Seed = 0
    output: LocalPath = "models/backbone"


class BackboneParams(Params):
    """What the backbone stage reads: ``backbone``."""

    backbone: BackboneConfig = BackboneConfig()


PARAMS = BackboneParams  # what the stage reads of params.yaml


def training_spec(cfg: BackboneConfig, images: Path, classes: list[str], data_sha: str) -> training.TrainSpec:
    """The spec :func:`spark_jobs.ml.training.fit` runs the backbone's training from."""
    return training.TrainSpec(
        kind="cnn",
        model=training.ModelSpec(architecture=HEAD, args={"width": cfg.width, "classes": len(classes), "dropout": 0.0}),
        hp=training.Hyper.of(cfg, weight_decay=0.0),
        classes=classes,
        table=str(images.absolute()),
        max_rows=cfg.max_images,
        seed=cfg.seed,
        # Pinned: the thread count changes the order of floating-point sums, so the weights.
        threads=os.cpu_count() or 1,
        data=data_sha,
    )


def accuracy(model: nn.Module, spec: training.TrainSpec, split: str) -> float | None:
    """The trained head's accuracy on (the first ``max_rows`` of) one split."""
    import torch

    ids = training.shard_ids(spec.table, split, 0, 1, [], pad=False, limit=spec.max_rows)
    pixels, labels = training.read_rows(spec.table, ids)
    index = {c: i for i, c in enumerate(spec.classes)}
    known = [i for i, v in enumerate(labels) if v in index]
    if not known:
        return None
    with torch.inference_mode():
        predicted = model(models.to_tensor(pixels[known])).argmax(1)
    return float((predicted == torch.tensor([index[labels[i]] for i in known])).float().mean())


def outputs(cfg: BackboneParams) -> list[Path]:
    return [Path(cfg.backbone.output)]


def run(cfg: BackboneParams, _spark: object = None) -> Path:
    import torch

    bcfg = cfg.backbone
    with runner.StageRun(STAGE, cfg.data.root, None, Path(bcfg.output), lock_wait=cfg.data.lock_wait_s) as run:
        with run.phase("read"):
            ingest_dir = published(cfg.data.root, "ingest")
            run.lineage.reads(ingest_dir)
            classes = sorted(c for c, n in split_class_counts(ingest_dir).get("train", {}).items() if n)
            if not classes:
                raise SourceError(f"no train images in {ingest_dir}: run ingest first")
            data_sha = manifest.file_hash(ingest_dir / manifest.MANIFEST)
            image_size = ingested_with(ingest_dir).image_size
            spec = training_spec(bcfg, ingest_dir / "images.parquet", classes, data_sha)
        with run.phase("work"):
            checkpoints = training.checkpoint_dir(cfg.data.root, spec)
            weights = run.staging / "_classifier.pt"
            result = TrainingRecord(**training.fit(spec, str(checkpoints), str(weights)))
            shutil.rmtree(checkpoints, ignore_errors=True)  # finished: the next run starts afresh
            model = models.build(HEAD, spec.model.args)
            model.load_state_dict(models.load_tensors(weights))
            weights.unlink()
            model.eval()
            backbone = model[0]
            models.export_backbone(backbone, run.staging / EXPORTED, image_size)
            torch.save(backbone.state_dict(), run.staging / STATE_DICT)
            train_accuracy, val_accuracy = accuracy(model, spec, "train"), accuracy(model, spec, "val")
        card = BackboneCard(
            architecture=bcfg.architecture,
            width=bcfg.width,
            embedding_dim=4 * bcfg.width,
            image_size=image_size,
            input="float RGB NCHW in [0, 1] (features.cnn.mean 0, std 1)",
            classes=classes,
            train_images=result.train_rows,
            epoch_losses=[round(h["train_loss"], 5) for h in result.history],
            train_accuracy=train_accuracy,
            val_accuracy=val_accuracy,
            training=result,
            params=cfg.section("backbone")["backbone"],
            data_manifest_sha256=data_sha,
            job_version=manifest.job_version(),
            run_id=run.run_id,
        )
        out = run.finish(None, card, name=CARD)
    log.info(
        "backbone %s: %d train images, %d epochs (best %s), val accuracy of its head %s -> %s",
        bcfg.architecture,
        result.train_rows,
        bcfg.epochs,
        result.best_epoch,
        card.val_accuracy,
        out,
    )
    return out


def _precheck(cfg: BackboneParams) -> None:
    published(cfg.data.root, "ingest")


def main(argv: list[str] | None = None) -> int:
    return run_stage(
        STAGE,
        argv,
        run,
        params=PARAMS,
        outputs=outputs,
        description=__doc__,
        precheck=_precheck,
        needs_spark=False,
    )


if __name__ == "__main__":
    exit_process(main())
