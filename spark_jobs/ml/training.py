"""The torch training loop every rank runs (DDP on gloo, CPU), with checkpoints and resume.

:func:`fit` is what ``train`` hands to ``pyspark.ml.torch.distributor.TorchDistributor``: it runs
once per rank (``RANK``/``WORLD_SIZE`` come from torchrun). Its edges read and write; its core does
not:

- reading (:func:`read_shard`): only this rank's shard of the ingested Parquet table (or, for
  ``tiles_*`` models, of a tiles features table: each image as its tile vectors in raster order),
  the backbone a fine-tuning run starts from, and the last checkpoint of an interrupted run;
- :func:`train`, the core: a typed :class:`TrainSpec` and tensors in, the trained state out. It
  keeps the epoch that is best on the val split; a cnn spec with ``init`` starts its backbone
  (``net[0]``) from the given state dict (fine-tuning: ``hp.freeze_epochs`` head-only epochs
  first, the backbone at ``hp.backbone_learning_rate``); each epoch's state goes to a callback;
- writing: the checkpoints (``state.pt``: model, optimiser, scheduler, epoch, best weights,
  history, by rank 0; ``rng-<rank>.pt``: each rank's torch RNG state; every ``checkpoint_every``
  epochs and after the last, all loadable with ``weights_only=True``) and rank 0's weights.

A run started again with the same spec continues after the last checkpointed epoch; shuffling and
augmentation draw from generators seeded by ``(seed, epoch, rank)``, so a resumed epoch sees the
same batches as an uninterrupted one. It is the project's one training loop: the ``backbone``
stage calls it in-process (one rank, no Spark), ``train`` through TorchDistributor.
"""

from __future__ import annotations

import copy
import logging
import math
import os
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from pydantic import Field, field_validator

from spark_jobs.core.atomic import atomic_file
from spark_jobs.core.config import LocalPath, Section, params_hash
from spark_jobs.core.manifest import Record
from spark_jobs.imaging import images, tiles
from spark_jobs.ml import models
from spark_jobs.ml.cards import InitRecord

if TYPE_CHECKING:
    from torch import Tensor, nn

STATE = "state.pt"
Backbone = Literal[tuple(models.BACKBONES)]  # type: ignore[valid-type]  # the backbone registry's names

log = logging.getLogger(__name__)


# ---- the train section's per-model hyperparameters (train.cnn, .autoencoder, .tiles) ----------


class CnnTrainConfig(Section):
    width: int = Field(32, ge=4, le=512)
    dropout: float = Field(0.2, ge=0.0, lt=1.0)
    epochs: int = Field(12, ge=0)
    batch_size: int = Field(64, ge=1)
    learning_rate: float = Field(0.003, gt=0.0)
    weight_decay: float = Field(0.0001, ge=0.0)
    augment_shift: int = Field(2, ge=0, le=64)
    init: LocalPath | None = None
    init_architecture: Backbone | None = None
    freeze_epochs: int = Field(0, ge=0)
    backbone_learning_rate: float | None = Field(None, gt=0.0)


class TilesTrainConfig(Section):
    hidden: int = Field(64, ge=1, le=4096)
    bidirectional: bool = True
    dropout: float = Field(0.1, ge=0.0, lt=1.0)
    epochs: int = Field(30, ge=0)
    batch_size: int = Field(64, ge=1)
    learning_rate: float = Field(0.003, gt=0.0)
    weight_decay: float = Field(0.0001, ge=0.0)
    # tiles_attention: the training images its light tile screen is fitted on (0: no screen)
    screen_images: int = Field(256, ge=0, le=100_000)


class AutoencoderConfig(Section):
    width: int = Field(16, ge=4, le=512)
    latent: int = Field(16, ge=1)
    epochs: int = Field(30, ge=0)
    batch_size: int = Field(64, ge=1)
    learning_rate: float = Field(0.003, gt=0.0)
    weight_decay: float = Field(0.0, ge=0.0)
    holdout_class: str | None = "9"
    threshold_percentile: float = Field(99.0, gt=0.0, le=100.0)

    @field_validator("holdout_class", mode="before")
    @classmethod
    def _label_text(cls, value: object) -> object:
        # Labels are folder names: `--set train.autoencoder.holdout_class=9` means the class "9".
        return str(value) if isinstance(value, int) and not isinstance(value, bool) else value


# ---- the spec -------------------------------------------------------------------------------


class Hyper(Record):
    """What the loop itself reads of a model's hyperparameters."""

    epochs: int
    batch_size: int
    learning_rate: float
    weight_decay: float
    augment_shift: int = 0
    freeze_epochs: int = 0
    backbone_learning_rate: float | None = None

    @classmethod
    def of(cls, section: Section, **fixed: Any) -> Hyper:
        """The loop's hyperparameters from a model's section (``train.cnn`` and the like)."""
        values = section.model_dump() | fixed
        return cls.model_validate({k: values[k] for k in cls.model_fields if k in values})


class ModelSpec(Record):
    """Which module to build (:func:`spark_jobs.ml.models.build`) and its arguments: a card's
    ``architecture`` and ``arch``."""

    architecture: str
    args: dict[str, Any]


class TrainSpec(Record):
    """Everything one training run needs, picklable (no Spark objects, no open files): the model,
    its hyperparameters, the data it reads and how, and how the ranks seed and checkpoint."""

    kind: Literal["cnn", "autoencoder", "tiles_mean", "tiles_gru", "tiles_attention"]
    input: Literal["pixels", "tiles"] = "pixels"
    model: ModelSpec
    hp: Hyper
    init: InitRecord | None = None
    classes: list[str]
    class_weights: list[float] | None = None
    exclude_classes: list[str] = Field(default_factory=list)
    table: str  # the Parquet table: ingested images, or tiles features
    max_rows: int | None = None
    seed: int
    threads: int
    checkpoint_every: int = 1
    threshold_percentile: float | None = None
    world: int = 1
    data: str  # the manifest hash of the table: another table, another checkpoint


def checkpoint_dir(data_root: str, spec: TrainSpec) -> Path:
    """Where a run with this spec keeps its checkpoints: the same params and data, the same folder."""
    return Path(data_root).absolute() / ".checkpoints" / f"{spec.kind}-{params_hash(spec.model_dump(mode='json'))[:16]}"


# ---- reading (an edge) ----------------------------------------------------------------------


def split_labels(table: str, split: str, exclude: list[str]) -> tuple[list[str], list[str]]:
    """``(image_ids, labels)`` of one split of a table (one entry per image: a tiles table has a
    row per tile), without the ``exclude`` classes; two short columns read."""
    import pyarrow.dataset as ds

    where = ds.field("split") == split
    if exclude:
        where = where & ~ds.field("label").isin(exclude)
    found = ds.dataset(table, format="parquet").to_table(columns=["image_id", "label"], filter=where)
    pairs = dict(zip(found["image_id"].to_pylist(), found["label"].to_pylist(), strict=True))
    return list(pairs), list(pairs.values())


def shard_ids(
    table: str, split: str, rank: int, world: int, exclude: list[str], pad: bool, limit: int | None = None
) -> list[str]:
    """This rank's ``image_id``s of one split: every ``world``-th of the sorted ids (the first
    ``limit`` of them, when given), starting at ``rank`` (DistributedSampler's layout). With
    ``pad`` every rank gets the same count (the first ids repeat), as DDP needs the same number of
    steps on each rank. Only two short string columns of the table are read to decide."""
    ids = sorted(split_labels(table, split, exclude)[0])[:limit]
    if pad and ids:
        per_rank = math.ceil(len(ids) / world)
        ids = (ids * math.ceil(per_rank * world / len(ids)))[: per_rank * world]
    return ids[rank::world]


def read_rows(table: str, ids: list[str]) -> tuple[np.ndarray, list[str]]:
    """``(pixels (N, S, S, 3) uint8, labels)`` of ``ids``, in that order (repeats allowed)."""
    import pyarrow.dataset as ds

    if not ids:
        return np.zeros((0, 1, 1, 3), dtype=np.uint8), []
    found = ds.dataset(table, format="parquet").to_table(
        columns=["image_id", "label", "height", "width", "pixels"], filter=ds.field("image_id").isin(sorted(set(ids)))
    )
    position = {v: i for i, v in enumerate(found["image_id"].to_pylist())}
    found = found.take([position[i] for i in ids])
    h, w = found["height"][0].as_py(), found["width"][0].as_py()
    return images.stack_pixels(found["pixels"].combine_chunks(), h, w), found["label"].to_pylist()


def read_sequences(table: str, ids: list[str]) -> tuple[np.ndarray, list[str]]:
    """``(sequences (N, T, D + 1) float32, labels)`` of ``ids`` (in that order, repeats allowed)
    from a tiles features table: each image's tile vectors in raster order (``tile_y``, then
    ``tile_x``), then a 1, padded with zeros to the most tiles any of them has
    (:func:`spark_jobs.ml.models.tile_sequence`'s input)."""
    import pyarrow.dataset as ds

    if not ids:
        return np.zeros((0, 1, 2), dtype=np.float32), []
    found = ds.dataset(table, format="parquet").to_table(
        columns=["image_id", "label", "tile_y", "tile_x", "features"],
        filter=ds.field("image_id").isin(sorted(set(ids))),
    )
    return tiles.sequences(found, ids)


def read_inputs(spec: TrainSpec, ids: list[str]) -> tuple[Tensor, list[str]]:
    """The model's input tensor and labels of ``ids``: images (pixels) or tile sequences."""
    import torch

    if spec.input == "tiles":
        x, labels = read_sequences(spec.table, ids)
        return torch.from_numpy(x), labels
    pixels, labels = read_rows(spec.table, ids)
    return models.to_tensor(pixels), labels


@dataclass
class Shard:
    """One rank's data: train inputs (padded so every rank takes the same steps) and labels, val
    inputs and labels, and how many of the train rows are its own (the rest repeat)."""

    x: Tensor
    labels: list[str]
    val_x: Tensor
    val_labels: list[str]
    own_ids: list[str]
    train_ids: list[str]


def read_shard(spec: TrainSpec, rank: int, world: int) -> Shard:
    """This rank's shard of the spec's table."""
    exclude, limit = spec.exclude_classes, spec.max_rows
    train_ids = shard_ids(spec.table, "train", rank, world, exclude, pad=True, limit=limit)
    own_ids = shard_ids(spec.table, "train", rank, world, exclude, pad=False, limit=limit)  # without the padding
    val_ids = shard_ids(spec.table, "val", rank, world, exclude, pad=False, limit=limit)
    if not train_ids:
        raise ValueError("no train images to train on")
    x, labels = read_inputs(spec, train_ids)
    vx, val_labels = read_inputs(spec, val_ids) if val_ids else (x[:0], [])
    return Shard(x, labels, vx, val_labels, own_ids, train_ids)


def read_init(init: InitRecord) -> dict[str, Any]:
    """The backbone state dict ``init.uri`` names (read by the restricted loader, its sha256
    checked against the one the driver read)."""
    import hashlib

    data = models.read_backbone_bytes(init.uri)
    actual = hashlib.sha256(data).hexdigest()
    if actual != init.sha256:
        raise models.BackboneError(f"train.cnn.init {init.uri} changed while the job ran (sha256 {actual})")
    return models.backbone_state(init.architecture, models.load_tensors(data))


# ---- writing (an edge) ----------------------------------------------------------------------


def _save(obj: dict[str, Any], path: Path) -> None:
    """``obj`` as a torch file at ``path``, atomically: a kill while saving leaves the previous one whole."""
    import torch

    with atomic_file(path) as out:
        torch.save(obj, out)


def _load(path: Path) -> dict[str, Any] | None:
    return models.load_tensors(path) if path.exists() else None


def read_checkpoint(folder: Path, rank: int) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
    """``(the training state, this rank's RNG state)`` of an interrupted run, or Nones."""
    return _load(folder / STATE), _load(folder / f"rng-{rank}.pt")


def write_checkpoint(folder: Path, rank: int, world: int, state: dict[str, Any]) -> None:
    """Each rank's RNG state, and (rank 0) the training state; all ranks wait for both."""
    import torch
    import torch.distributed as dist

    _save({"torch": torch.get_rng_state()}, folder / f"rng-{rank}.pt")
    if rank == 0:
        _save(state, folder / STATE)
    if world > 1:
        dist.barrier()


# ---- the core -------------------------------------------------------------------------------


class _Task:
    """What differs between the classifier and the autoencoder: loss, val metric, targets."""

    def __init__(self, kind: str, classes: list[str], weights: list[float] | None) -> None:
        import torch

        self.kind = kind
        self.index = {c: i for i, c in enumerate(classes)}
        self.weight = torch.tensor(weights, dtype=torch.float32) if weights else None

    def targets(self, labels: list[str]) -> Tensor:
        import torch

        return torch.tensor([self.index.get(v, -1) for v in labels], dtype=torch.long)

    def loss(self, model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
        from torch import nn

        if self.kind == "autoencoder":
            return nn.functional.mse_loss(model(x), x)
        return nn.functional.cross_entropy(model(x), y, weight=self.weight)

    def val_sums(self, model: nn.Module, x: Tensor, y: Tensor, batch: int) -> tuple[float, float]:
        """Sums over this val shard of ``(metric, loss)``: correct predictions and cross-entropy
        for the classifier, reconstruction error (both) for the autoencoder."""
        import torch
        from torch import nn

        metric = loss = 0.0
        with torch.inference_mode():
            for s in range(0, len(x), batch):
                xb = x[s : s + batch]
                if self.kind == "autoencoder":
                    metric += float(models.reconstruction_error(model, xb).sum())
                    loss = metric
                else:
                    logits, yb = model(xb), y[s : s + batch]
                    metric += float((logits.argmax(1) == yb).sum())
                    loss += float(nn.functional.cross_entropy(logits, yb, reduction="sum"))
        return metric, loss

    def better(self, value: tuple[float, float], best: tuple[float, float] | None) -> bool:
        """Classifier: higher val accuracy, ties broken by lower val loss (a small val split
        saturates at 100 %). Autoencoder: lower val reconstruction error."""
        if best is None:
            return True
        if self.kind == "autoencoder":
            return value[0] < best[0]
        return value[0] > best[0] or (value[0] == best[0] and value[1] < best[1])


def _all_sum(values: list[float], world: int) -> list[float]:
    import torch
    import torch.distributed as dist

    if world == 1:
        return values
    t = torch.tensor(values, dtype=torch.float64)
    dist.all_reduce(t)
    return t.tolist()


def _gather(value: Any, world: int) -> list[Any]:
    """Every rank's ``value``, in rank order."""
    import torch.distributed as dist

    if world == 1:
        return [value]
    gathered: list[Any] = [None] * world
    dist.all_gather_object(gathered, value)
    return gathered


def build_model(spec: TrainSpec) -> nn.Module:
    return models.build(spec.model.architecture, spec.model.args)


def param_groups(net: nn.Module, spec: TrainSpec) -> tuple[list[dict[str, Any]], list[float]]:
    """The optimiser's parameter groups and each one's peak learning rate: for the cnn, its backbone
    (``net[0]``, at ``hp.backbone_learning_rate`` when set) and its head; one group otherwise."""
    hp = spec.hp
    if spec.kind != "cnn":
        return [{"params": list(net.parameters())}], [hp.learning_rate]
    backbone = list(net[0].parameters())
    mine = {id(p) for p in backbone}
    head = [p for p in net.parameters() if id(p) not in mine]
    return [{"params": backbone}, {"params": head}], [hp.backbone_learning_rate or hp.learning_rate, hp.learning_rate]


def shifted(x: Tensor, shift: int, generator: Any) -> Tensor:
    """Each image translated by a random offset in ``[-shift, shift]`` on both axes (zero fill)."""
    import torch
    from torch import nn

    if shift == 0 or len(x) == 0:
        return x
    n, side = len(x), x.shape[-1]
    padded = nn.functional.pad(x, (shift, shift, shift, shift))
    dx = torch.randint(0, 2 * shift + 1, (n,), generator=generator)
    dy = torch.randint(0, 2 * shift + 1, (n,), generator=generator)
    rows = (dy[:, None] + torch.arange(side)[None, :])[:, None, :, None]
    cols = (dx[:, None] + torch.arange(side)[None, :])[:, None, None, :]
    batch = torch.arange(n)[:, None, None, None]
    channel = torch.arange(x.shape[1])[None, :, None, None]
    return padded[batch, channel, rows, cols]


def class_weights(counts: dict[str, int], classes: list[str], mode: str, skew_ratio: float) -> list[float] | None:
    """Per-class loss weights: ``n / (k * n_c)`` (scikit-learn's "balanced") for ``balanced``,
    and for ``auto`` when the largest class has more than ``skew_ratio`` times the images of the
    smallest; ``None`` (all 1) otherwise."""
    sizes = [counts.get(c, 0) for c in classes]
    if mode == "none" or not sizes or min(sizes) == 0:
        return None
    if mode == "auto" and max(sizes) <= skew_ratio * min(sizes):
        return None
    total, k = sum(sizes), len(sizes)
    return [total / (k * n) for n in sizes]


@dataclass
class Loop:
    """The model being trained and what steps it: the module (``net``, DDP-wrapped as ``model``
    across ranks), the loss, the optimiser and its schedule, the steps per epoch."""

    net: Any
    model: Any
    task: _Task
    optimiser: Any
    scheduler: Any
    per_rank: int

    @classmethod
    def start(cls, spec: TrainSpec, world: int, init_state: dict[str, Any] | None, rows: int) -> Loop:
        """Seeded as the spec says, then built (and its backbone loaded from ``init_state``)."""
        import torch
        from torch import nn

        torch.manual_seed(spec.seed)
        net = build_model(spec)
        if init_state is not None:
            net[0].load_state_dict(init_state)
        model = nn.parallel.DistributedDataParallel(net) if world > 1 else net
        per_rank = max(spec.hp.batch_size // world, 1)
        steps = math.ceil(rows / per_rank)
        groups, rates = param_groups(net, spec)
        optimiser = torch.optim.AdamW(groups, lr=spec.hp.learning_rate, weight_decay=spec.hp.weight_decay)
        total = max(spec.hp.epochs * steps, 1)
        scheduler = torch.optim.lr_scheduler.OneCycleLR(optimiser, max_lr=rates, total_steps=total)
        return cls(net, model, _Task(spec.kind, spec.classes, spec.class_weights), optimiser, scheduler, per_rank)

    def epoch(self, x: Any, y: Any, shift: int, generator: Any, frozen: Any = None) -> float:
        """One pass over this rank's shard in a shuffled order; returns the summed loss. ``frozen``:
        a sub-module kept as it is this epoch (its batch-norm statistics too; its gradients are
        dropped before each step, so the optimiser leaves it and its moments alone)."""
        import torch

        self.model.train()
        if frozen is not None:
            frozen.eval()
        order = torch.randperm(len(x), generator=generator)
        loss_sum = 0.0
        for s in range(0, len(x), self.per_rank):
            idx = order[s : s + self.per_rank]
            self.optimiser.zero_grad()
            loss = self.task.loss(self.model, shifted(x[idx], shift, generator), y[idx])
            loss.backward()
            if frozen is not None:
                for p in frozen.parameters():
                    p.grad = None
            self.optimiser.step()
            self.scheduler.step()
            loss_sum += loss.item() * len(idx)
        return loss_sum


@dataclass
class Progress:
    """Where training stands after an epoch: what a checkpoint holds besides the module."""

    best_state: dict[str, Any]
    best_value: tuple[float, float] | None = None
    best_epoch: int | None = None
    history: list[dict[str, Any]] = field(default_factory=list)
    epoch: int = 0


def _resume(loop: Loop, checkpoint: dict[str, Any] | None, rng: dict[str, Any] | None) -> Progress:
    """Continue from a checkpoint, if any (the module, optimiser, scheduler and RNG restored in place)."""
    import torch

    if checkpoint is None:
        return Progress(copy.deepcopy(loop.net.state_dict()))
    loop.net.load_state_dict(checkpoint["model"])
    loop.optimiser.load_state_dict(checkpoint["optimiser"])
    loop.scheduler.load_state_dict(checkpoint["scheduler"])
    if rng is not None:
        torch.set_rng_state(rng["torch"])
    return Progress(
        checkpoint["best_model"],
        checkpoint["best_value"],
        checkpoint["best_epoch"],
        list(checkpoint["history"]),
        int(checkpoint["epoch"]),
    )


def _snapshot(loop: Loop, progress: Progress) -> dict[str, Any]:
    """What a checkpoint holds after ``progress.epoch`` epochs."""
    return {
        "model": loop.net.state_dict(),
        "optimiser": loop.optimiser.state_dict(),
        "scheduler": loop.scheduler.state_dict(),
        "epoch": progress.epoch,
        "best_model": progress.best_state,
        "best_value": progress.best_value,
        "best_epoch": progress.best_epoch,
        "history": progress.history,
    }


@dataclass
class Trained:
    """What :func:`train` returns: the kept weights and the run's report (the fields of
    :class:`~spark_jobs.ml.cards.TrainingRecord`)."""

    state: dict[str, Any]
    report: dict[str, Any]


def epoch_line(spec: TrainSpec, record: dict[str, Any], seconds: float) -> str:
    """One line per epoch, logged by rank 0: ``cnn epoch 3/10: train loss 0.4213, val accuracy
    0.9512 (loss 0.1730), 14.2 s``."""
    if record["val"] is None:
        val = "no val rows"
    elif spec.kind == "autoencoder":  # its val figure is the reconstruction error
        val = f"val reconstruction error {record['val']:.4f}"
    else:
        val = f"val accuracy {record['val']:.4f} (loss {record['val_loss']:.4f})"
    return (
        f"{spec.kind} epoch {record['epoch']}/{spec.hp.epochs}: train loss {record['train_loss']:.4f}, "
        f"{val}, {seconds:.1f} s"
    )


def train(
    spec: TrainSpec,
    shard: Shard,
    rank: int,
    world: int,
    init_state: dict[str, Any] | None = None,
    resume: tuple[dict[str, Any] | None, dict[str, Any] | None] = (None, None),
    checkpoint: Callable[[dict[str, Any]], None] = lambda state: None,
) -> Trained:
    """Train on this rank's shard from the start (or from ``resume``: a checkpoint and this rank's
    RNG state), handing ``checkpoint`` the state to keep every ``checkpoint_every`` epochs and after
    the last; returns the best epoch's weights (the last ones without val rows) and the report."""
    import torch

    loop = Loop.start(spec, world, init_state, len(shard.x))
    y, vy = loop.task.targets(shard.labels), loop.task.targets(shard.val_labels)
    progress = _resume(loop, *resume)
    resumed_from = progress.epoch or None  # a checkpoint is written after an epoch: > 0 when resuming
    for epoch in range(progress.epoch, spec.hp.epochs):
        epoch_start = time.perf_counter()
        generator = torch.Generator().manual_seed(spec.seed * 1_000_003 + epoch * 1009 + rank)
        frozen = loop.net[0] if epoch < spec.hp.freeze_epochs else None
        loss_sum = loop.epoch(shard.x, y, spec.hp.augment_shift, generator, frozen)
        loop.model.eval()
        val_metric, val_loss = loop.task.val_sums(loop.net, shard.val_x, vy, max(loop.per_rank, 256))
        loss_total, n, val_total, val_loss_total, val_rows = _all_sum(
            [loss_sum, float(len(shard.x)), val_metric, val_loss, float(len(shard.val_x))], world
        )
        value = (val_total / val_rows, val_loss_total / val_rows) if val_rows else None
        progress.history.append(
            {
                "epoch": epoch + 1,
                "train_loss": round(loss_total / n, 6),
                "val": round(value[0], 6) if value else None,
                "val_loss": round(value[1], 6) if value else None,
            }
        )
        if rank == 0:
            log.info("%s", epoch_line(spec, progress.history[-1], time.perf_counter() - epoch_start))
        if value is not None and loop.task.better(value, progress.best_value):
            progress.best_state, progress.best_value = copy.deepcopy(loop.net.state_dict()), value
            progress.best_epoch = epoch + 1
        progress.epoch = epoch + 1
        if progress.epoch % spec.checkpoint_every == 0 or progress.epoch == spec.hp.epochs:
            checkpoint(_snapshot(loop, progress))
    return _finished(spec, loop, shard, progress, resumed_from, world)


def _finished(
    spec: TrainSpec, loop: Loop, shard: Shard, progress: Progress, resumed_from: int | None, world: int
) -> Trained:
    """The kept weights loaded into the module, and the run's report."""
    best_state = progress.best_state if progress.best_epoch is not None else copy.deepcopy(loop.net.state_dict())
    loop.net.load_state_dict(best_state)
    loop.net.eval()
    report: dict[str, Any] = {
        "world_size": world,
        "epochs": spec.hp.epochs,
        "history": progress.history,
        "best_epoch": progress.best_epoch,
        "best_val": progress.best_value[0] if progress.best_value else None,
        "resumed_from_epoch": resumed_from,
        "train_rows": int(_all_sum([float(len(shard.own_ids))], world)[0]),
        "val_rows": int(_all_sum([float(len(shard.val_x))], world)[0]),
    }
    if spec.kind == "autoencoder":
        first = {v: i for i, v in reversed(list(enumerate(shard.train_ids)))}
        own = shard.x[[first[i] for i in shard.own_ids]] if shard.own_ids else shard.x[:0]
        report |= _anomaly_threshold(loop.net, own, world, float(spec.threshold_percentile))  # type: ignore[arg-type]
    return Trained(loop.net.state_dict(), report)


def _anomaly_threshold(net: Any, own: Any, world: int, percentile: float) -> dict[str, float]:
    """The autoencoder's flagging threshold: the ``percentile`` of the reconstruction error over
    every rank's own train images."""
    import torch

    with torch.inference_mode():
        scores = torch.cat([models.reconstruction_error(net, own[s : s + 256]) for s in range(0, len(own), 256)])
    every = np.concatenate([np.asarray(g, dtype=np.float64) for g in _gather(scores.tolist(), world)])
    return {"threshold": float(np.percentile(every, percentile)), "train_score_mean": float(every.mean())}


# ---- the run on one rank: edges around the core ---------------------------------------------


def fit(spec: TrainSpec, checkpoints: str, output: str) -> dict[str, Any]:
    """Train on this rank's shard (what TorchDistributor runs once per rank): read it, resume from
    ``checkpoints`` if a run was cut short there, train, and (rank 0) write the weights to
    ``output``; returns the report (on every rank; TorchDistributor keeps rank 0's)."""
    import torch
    import torch.distributed as dist

    rank, world = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
    if not logging.getLogger().handlers:  # a rank's own process (TorchDistributor): its lines reach the driver's log
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    torch.set_num_threads(spec.threads)
    if world > 1:
        dist.init_process_group("gloo")
    try:
        started = time.perf_counter()
        shard = read_shard(spec, rank, world)
        init_state = read_init(spec.init) if spec.init is not None else None
        folder = Path(checkpoints)
        folder.mkdir(parents=True, exist_ok=True)
        resume = read_checkpoint(folder, rank)
        trained = train(
            spec, shard, rank, world, init_state, resume, lambda state: write_checkpoint(folder, rank, world, state)
        )
        if rank == 0:
            _save(trained.state, Path(output))
        where = {"rank": rank, "host": socket.gethostname(), "workdir": os.getcwd()}  # on a cluster: the executor's
        ranks = _gather(where, world)
        return trained.report | {"ranks": ranks, "fit_s": round(time.perf_counter() - started, 3)}
    finally:
        if world > 1:
            dist.destroy_process_group()
