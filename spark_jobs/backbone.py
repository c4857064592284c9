"""Backbone: the project's own small CNN backbone, for ``features.kind: cnn`` without downloads.

Pretrained weights cannot be fetched here (DESIGN.md #8), so this stage trains
:func:`spark_jobs.ml.models.small_cnn` plus a linear head for ``backbone.epochs`` on the ingested
train split (at most ``backbone.max_images``, read in this one process: it is a bootstrap, the
distributed training lives in ``train``) and writes, under ``backbone.output``:

- ``backbone.pt2``: the backbone (head removed) as a ``torch.export`` program, any batch size;
- ``backbone.pt``: the same weights as a state dict (architecture ``small_cnn``);
- ``card.json``: architecture, width, embedding size, classes, data manifest hash, code version,
  train/val accuracy of the head, training time.

    python -m spark_jobs.backbone [--set backbone.epochs=5]
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from spark_jobs.core import manifest, runner
from spark_jobs.core.config import BackboneConfig, Config
from spark_jobs.core.jobs import exit_process, run_stage
from spark_jobs.core.store import SourceError
from spark_jobs.core.tables import published
from spark_jobs.imaging import images
from spark_jobs.ml import models

if TYPE_CHECKING:
    from torch import nn

log = logging.getLogger(__name__)

STAGE = "backbone"
EXPORTED = "backbone.pt2"
STATE_DICT = "backbone.pt"
CARD = "card.json"


def read_split(images_dir: Path, split: str, limit: int) -> tuple[np.ndarray, list[str]]:
    """``(pixels (N, S, S, 3) uint8, labels)`` of the first ``limit`` rows of one split."""
    import pyarrow.dataset as ds

    table = (
        ds.dataset(images_dir, format="parquet")
        .filter(ds.field("split") == split)
        .to_table(columns=["image_id", "label", "height", "width", "pixels"])
        .sort_by("image_id")
        .slice(0, limit)
    )
    if table.num_rows == 0:
        return np.zeros((0, 1, 1, 3), dtype=np.uint8), []
    h, w = table["height"][0].as_py(), table["width"][0].as_py()
    return images.stack_pixels(table["pixels"].combine_chunks(), h, w), table["label"].to_pylist()


def fit(backbone: nn.Module, x: Any, y: Any, classes: int, cfg: BackboneConfig) -> tuple[nn.Module, list[float]]:
    """Train ``backbone`` + a linear head with Adam and cross-entropy; returns the classifier and
    the mean loss of each epoch. Same seed, same machine: the same weights (the thread count is
    pinned because it changes the order of floating-point sums)."""
    import torch
    from torch import nn

    torch.set_num_threads(os.cpu_count() or 1)
    torch.manual_seed(cfg.seed)
    model = nn.Sequential(backbone, nn.Linear(4 * cfg.width, classes))
    optimiser = torch.optim.Adam(model.parameters(), lr=cfg.learning_rate)
    generator = torch.Generator().manual_seed(cfg.seed)
    losses = []
    for _ in range(cfg.epochs):
        model.train()
        order = torch.randperm(len(x), generator=generator)
        total = 0.0
        for start in range(0, len(x), cfg.batch_size):
            idx = order[start : start + cfg.batch_size]
            optimiser.zero_grad()
            loss = nn.functional.cross_entropy(model(x[idx]), y[idx])
            loss.backward()
            optimiser.step()
            total += loss.item() * len(idx)
        losses.append(total / max(len(x), 1))
    return model.eval(), losses


def accuracy(model: nn.Module, x: Any, y: Any) -> float | None:
    import torch

    if len(x) == 0:
        return None
    with torch.inference_mode():
        return float((model(x).argmax(1) == y).float().mean())


def run(cfg: Config, _spark: object = None) -> Path:
    import torch

    bcfg = cfg.backbone
    with runner.StageRun(STAGE, cfg.data.root, None, Path(bcfg.output), lock_wait=cfg.data.lock_wait_s) as run:
        with run.phase("read"):
            ingest_dir = published(cfg.data.root, "ingest")
            pixels, labels = read_split(ingest_dir / "images.parquet", "train", bcfg.max_images)
            if not labels:
                raise SourceError(f"no train images in {ingest_dir}: run ingest first")
            val_pixels, val_labels = read_split(ingest_dir / "images.parquet", "val", bcfg.max_images)
        with run.phase("work"):
            classes = sorted(set(labels))
            index = {c: i for i, c in enumerate(classes)}
            x, y = models.to_tensor(pixels), torch.tensor([index[v] for v in labels])
            known = [i for i, v in enumerate(val_labels) if v in index]
            val_x = models.to_tensor(val_pixels[known]) if known else models.to_tensor(pixels[:0])
            val_y = torch.tensor([index[val_labels[i]] for i in known], dtype=torch.long)
            torch.manual_seed(bcfg.seed)
            model, losses = fit(models.small_cnn(bcfg.width), x, y, len(classes), bcfg)
            backbone = model[0]
            models.export_backbone(backbone, run.staging / EXPORTED, int(pixels.shape[1]))
            torch.save(backbone.state_dict(), run.staging / STATE_DICT)
            train_accuracy, val_accuracy = accuracy(model, x, y), accuracy(model, val_x, val_y)
        card = {
            "architecture": bcfg.architecture,
            "width": bcfg.width,
            "embedding_dim": 4 * bcfg.width,
            "image_size": int(pixels.shape[1]),
            "input": "float RGB NCHW in [0, 1] (features.cnn.mean 0, std 1)",
            "classes": classes,
            "train_images": len(labels),
            "epoch_losses": [round(v, 5) for v in losses],
            "train_accuracy": train_accuracy,
            "val_accuracy": val_accuracy,
            "params": cfg.section("backbone")["backbone"],
            "data_manifest_sha256": manifest.file_hash(ingest_dir / manifest.MANIFEST),
            "job_version": manifest.job_version(),
            "run_id": run.run_id,
        }
        out = run.finish(None, card, name=CARD)
    log.info(
        "backbone %s: %d train images, %d epochs, val accuracy of its head %s -> %s",
        bcfg.architecture,
        len(labels),
        bcfg.epochs,
        card["val_accuracy"],
        out,
    )
    return out


def _precheck(cfg: Config) -> None:
    published(cfg.data.root, "ingest")


def main(argv: list[str] | None = None) -> int:
    return run_stage(STAGE, argv, run, description=__doc__, precheck=_precheck, needs_spark=False)


if __name__ == "__main__":
    exit_process(main())
