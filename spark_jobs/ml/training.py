"""The torch training loop every rank runs (DDP on gloo, CPU), with checkpoints and resume.

:func:`fit` is what ``train`` hands to ``pyspark.ml.torch.distributor.TorchDistributor``: it runs
once per rank (``RANK``/``WORLD_SIZE`` come from torchrun), reads only that rank's shard of the
ingested Parquet table (or, for ``tiles_*`` models, ``spec["input"] == "tiles"``, of a tiles
features table: each image as its tile vectors in raster order), trains, keeps the epoch that is
best on the val split, and rank 0 writes the weights. A cnn spec with ``init`` starts its backbone
(``net[0]``) from that state dict (fine-tuning: ``hp.freeze_epochs`` head-only epochs first, the
backbone at ``hp.backbone_learning_rate``). Everything it needs arrives in one plain ``spec``
dict (picklable, no Spark objects). It is the project's one training loop: the ``backbone``
stage calls it in-process (one rank, no Spark), ``train`` through TorchDistributor.

Checkpoints (``spec["checkpoint_dir"]``, every ``checkpoint_every`` epochs and after the last):
``state.pt`` (model, optimiser, scheduler, epoch, best weights, history; written by rank 0) and
``rng-<rank>.pt`` (each rank's torch RNG state), all loadable with ``weights_only=True``. A run
started again with the same spec continues after the last checkpointed epoch. Shuffling and
augmentation draw from generators seeded by ``(seed, epoch, rank)``, so a resumed epoch sees the
same batches as an uninterrupted one.
"""

from __future__ import annotations

import copy
import math
import os
import socket
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from spark_jobs.core.atomic import atomic_file
from spark_jobs.core.config import params_hash
from spark_jobs.imaging import images, tiles
from spark_jobs.ml import models

if TYPE_CHECKING:
    from torch import Tensor, nn

STATE = "state.pt"


def checkpoint_dir(data_root: str, spec: dict[str, Any]) -> Path:
    """Where a run with this spec keeps its checkpoints: the same params and data, the same folder."""
    return Path(data_root).absolute() / ".checkpoints" / f"{spec['kind']}-{params_hash(spec)[:16]}"


def shard_ids(
    images_path: str, split: str, rank: int, world: int, exclude: list[str], pad: bool, limit: int | None = None
) -> list[str]:
    """This rank's ``image_id``s of one split: every ``world``-th of the sorted ids (the first
    ``limit`` of them, when given), starting at ``rank`` (DistributedSampler's layout). With
    ``pad`` every rank gets the same count (the first ids repeat), as DDP needs the same number of
    steps on each rank. Only two short string columns of the table are read to decide."""
    import pyarrow.dataset as ds

    where = ds.field("split") == split
    if exclude:
        where = where & ~ds.field("label").isin(exclude)
    table = ds.dataset(images_path, format="parquet").to_table(columns=["image_id"], filter=where)
    ids = sorted(set(table["image_id"].to_pylist()))[:limit]  # a tiles table has a row per tile
    if pad and ids:
        per_rank = math.ceil(len(ids) / world)
        ids = (ids * math.ceil(per_rank * world / len(ids)))[: per_rank * world]
    return ids[rank::world]


def read_rows(images_path: str, ids: list[str]) -> tuple[np.ndarray, list[str]]:
    """``(pixels (N, S, S, 3) uint8, labels)`` of ``ids``, in that order (repeats allowed)."""
    import pyarrow.dataset as ds

    if not ids:
        return np.zeros((0, 1, 1, 3), dtype=np.uint8), []
    table = ds.dataset(images_path, format="parquet").to_table(
        columns=["image_id", "label", "height", "width", "pixels"], filter=ds.field("image_id").isin(sorted(set(ids)))
    )
    position = {v: i for i, v in enumerate(table["image_id"].to_pylist())}
    take = [position[i] for i in ids]
    table = table.take(take)
    h, w = table["height"][0].as_py(), table["width"][0].as_py()
    return images.stack_pixels(table["pixels"].combine_chunks(), h, w), table["label"].to_pylist()


def read_sequences(features_path: str, ids: list[str]) -> tuple[np.ndarray, list[str]]:
    """``(sequences (N, T, D + 1) float32, labels)`` of ``ids`` (in that order, repeats allowed)
    from a tiles features table: each image's tile vectors in raster order (``tile_y``, then
    ``tile_x``), then a 1, padded with zeros to the most tiles any of them has
    (:func:`spark_jobs.ml.models.tile_sequence`'s input)."""
    import pyarrow.dataset as ds

    if not ids:
        return np.zeros((0, 1, 2), dtype=np.float32), []
    table = ds.dataset(features_path, format="parquet").to_table(
        columns=["image_id", "label", "tile_y", "tile_x", "features"],
        filter=ds.field("image_id").isin(sorted(set(ids))),
    )
    return tiles.sequences(table, ids)


def read_inputs(spec: dict[str, Any], ids: list[str]) -> tuple[Tensor, list[str]]:
    """The model's input tensor and labels of ``ids``: images (pixels) or tile sequences."""
    import torch

    if spec.get("input") == "tiles":
        x, labels = read_sequences(spec["images"], ids)
        return torch.from_numpy(x), labels
    pixels, labels = read_rows(spec["images"], ids)
    return models.to_tensor(pixels), labels


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


def _save(obj: dict[str, Any], path: Path) -> None:
    """``obj`` as a torch file at ``path``, atomically: a kill while saving leaves the previous one whole."""
    import torch

    with atomic_file(path) as out:
        torch.save(obj, out)


def _load(path: Path) -> dict[str, Any] | None:
    return models.load_tensors(path) if path.exists() else None


class _Task:
    """What differs between the classifier and the autoencoder: loss, val metric, targets."""

    def __init__(self, spec: dict[str, Any]) -> None:
        import torch

        self.kind = spec["kind"]
        self.index = {c: i for i, c in enumerate(spec["classes"])}
        weights = spec.get("class_weights")
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


def build_model(spec: dict[str, Any]) -> nn.Module:
    return models.build(spec["architecture"], spec["arch"])


def fit(spec: dict[str, Any]) -> dict[str, Any]:
    """Train on this rank's shard; returns (on every rank; TorchDistributor keeps rank 0's) the
    epoch history, the best epoch and, for the autoencoder, the anomaly threshold."""
    import torch
    import torch.distributed as dist
    from torch import nn

    rank, world = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
    torch.set_num_threads(spec["threads"])
    if world > 1:
        dist.init_process_group("gloo")
    try:
        return _fit(spec, rank, world, torch, nn)
    finally:
        if world > 1:
            dist.destroy_process_group()


def _fit(spec: dict[str, Any], rank: int, world: int, torch: Any, nn: Any) -> dict[str, Any]:

    t0 = time.perf_counter()
    hp, task, seed = spec["hp"], _Task(spec), spec["seed"]
    exclude, limit = spec.get("exclude_classes") or [], spec.get("max_rows")
    train_ids = shard_ids(spec["images"], "train", rank, world, exclude, pad=True, limit=limit)
    own_ids = shard_ids(spec["images"], "train", rank, world, exclude, pad=False, limit=limit)  # without the padding
    val_ids = shard_ids(spec["images"], "val", rank, world, exclude, pad=False, limit=limit)
    if not train_ids:
        raise ValueError("no train images to train on")
    x, labels = read_inputs(spec, train_ids)
    y = task.targets(labels)
    vx, val_labels = read_inputs(spec, val_ids)
    vy = task.targets(val_labels)
    if not val_ids:
        vx, vy = x[:0], y[:0]

    torch.manual_seed(seed)
    net = build_model(spec)
    if spec.get("init"):
        load_init(net, spec["init"])
    model = nn.parallel.DistributedDataParallel(net) if world > 1 else net
    per_rank = max(hp["batch_size"] // world, 1)
    steps = math.ceil(len(x) / per_rank)
    epochs = hp["epochs"]
    groups, rates = param_groups(net, spec)
    optimiser = torch.optim.AdamW(groups, lr=hp["learning_rate"], weight_decay=hp["weight_decay"])
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimiser, max_lr=rates, total_steps=max(epochs * steps, 1))
    frozen_epochs = hp.get("freeze_epochs") or 0

    folder = Path(spec["checkpoint_dir"])
    folder.mkdir(parents=True, exist_ok=True)
    best_state, best_value, best_epoch, history, start = _restore(folder, rank, net, optimiser, scheduler)
    resumed_from = start or None  # a checkpoint is written after an epoch: start > 0 when resuming

    for epoch in range(start, epochs):
        generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch * 1009 + rank)
        frozen = net[0] if epoch < frozen_epochs else None
        loss_sum = _epoch(
            model, task, x, y, per_rank, hp.get("augment_shift", 0), generator, optimiser, scheduler, frozen
        )
        model.eval()
        val_metric, val_loss = task.val_sums(net, vx, vy, max(per_rank, 256))
        sums = _all_sum([loss_sum, float(len(x)), val_metric, val_loss, float(len(vx))], world)
        loss_total, n, val_total, val_loss_total, val_rows = sums
        value = (val_total / val_rows, val_loss_total / val_rows) if val_rows else None
        history.append(
            {
                "epoch": epoch + 1,
                "train_loss": round(loss_total / n, 6),
                "val": round(value[0], 6) if value else None,
                "val_loss": round(value[1], 6) if value else None,
            }
        )
        if value is not None and task.better(value, best_value):
            best_state, best_value, best_epoch = copy.deepcopy(net.state_dict()), value, epoch + 1
        if (epoch + 1) % spec["checkpoint_every"] == 0 or epoch + 1 == epochs:
            state = {
                "model": net.state_dict(),
                "optimiser": optimiser.state_dict(),
                "scheduler": scheduler.state_dict(),
                "epoch": epoch + 1,
                "best_model": best_state,
                "best_value": best_value,
                "best_epoch": best_epoch,
                "history": history,
            }
            _checkpoint(folder, rank, world, state)

    if best_epoch is None:  # no val rows (or no epochs): the last weights
        best_state = copy.deepcopy(net.state_dict())
    net.load_state_dict(best_state)
    net.eval()
    result: dict[str, Any] = {
        "world_size": world,
        "epochs": epochs,
        "history": history,
        "best_epoch": best_epoch,
        "best_val": best_value[0] if best_value else None,
        "resumed_from_epoch": resumed_from,
        "train_rows": int(_all_sum([float(len(own_ids))], world)[0]),
        "val_rows": int(_all_sum([float(len(val_ids))], world)[0]),
        # Where each rank ran: on a cluster, the executor's folder on its worker.
        "ranks": _gather({"rank": rank, "host": socket.gethostname(), "workdir": os.getcwd()}, world),
    }
    if spec["kind"] == "autoencoder":
        first = {v: i for i, v in reversed(list(enumerate(train_ids)))}
        own = x[[first[i] for i in own_ids]] if own_ids else x[:0]
        result |= _anomaly_threshold(net, own, world, spec["threshold_percentile"])
    if rank == 0:
        _save(net.state_dict(), Path(spec["output"]))
    result["fit_s"] = round(time.perf_counter() - t0, 3)
    return result


def load_init(net: nn.Module, init: dict[str, Any]) -> None:
    """Start the model's backbone (``net[0]``) from the state dict ``init["uri"]`` names (read by the
    restricted loader, its sha256 checked against the one the driver read)."""
    import hashlib

    data = models.read_backbone_bytes(init["uri"])
    actual = hashlib.sha256(data).hexdigest()
    if actual != init["sha256"]:
        raise models.BackboneError(f"train.cnn.init {init['uri']} changed while the job ran (sha256 {actual})")
    state = models.backbone_state(init["architecture"], models.load_tensors(data))
    net[0].load_state_dict(state)


def param_groups(net: nn.Module, spec: dict[str, Any]) -> tuple[list[dict[str, Any]], list[float]]:
    """The optimiser's parameter groups and each one's peak learning rate: for the cnn, its backbone
    (``net[0]``, at ``hp.backbone_learning_rate`` when set) and its head; one group otherwise."""
    hp = spec["hp"]
    if spec["kind"] != "cnn":
        return [{"params": list(net.parameters())}], [hp["learning_rate"]]
    backbone = list(net[0].parameters())
    mine = {id(p) for p in backbone}
    head = [p for p in net.parameters() if id(p) not in mine]
    rates = [hp.get("backbone_learning_rate") or hp["learning_rate"], hp["learning_rate"]]
    return [{"params": backbone}, {"params": head}], rates


def _epoch(
    model: Any,
    task: _Task,
    x: Any,
    y: Any,
    batch: int,
    shift: int,
    generator: Any,
    optimiser: Any,
    scheduler: Any,
    frozen: Any = None,
) -> float:
    """One pass over this rank's shard in a shuffled order; returns the summed loss. ``frozen``: a
    sub-module kept as it is this epoch (its batch-norm statistics too; its gradients are dropped
    before each step, so the optimiser leaves it and its moments alone)."""
    import torch

    model.train()
    if frozen is not None:
        frozen.eval()
    order = torch.randperm(len(x), generator=generator)
    loss_sum = 0.0
    for s in range(0, len(x), batch):
        idx = order[s : s + batch]
        optimiser.zero_grad()
        loss = task.loss(model, shifted(x[idx], shift, generator), y[idx])
        loss.backward()
        if frozen is not None:
            for p in frozen.parameters():
                p.grad = None
        optimiser.step()
        scheduler.step()
        loss_sum += loss.item() * len(idx)
    return loss_sum


def _restore(folder: Path, rank: int, net: Any, optimiser: Any, scheduler: Any) -> tuple[Any, Any, Any, list, int]:
    """Continue from the folder's checkpoint, if any: ``(best weights, best value, best epoch,
    history, first epoch to run)``; the model, optimiser, scheduler and RNG are restored in place."""
    import torch

    state = _load(folder / STATE)
    if state is None:
        return copy.deepcopy(net.state_dict()), None, None, [], 0
    net.load_state_dict(state["model"])
    optimiser.load_state_dict(state["optimiser"])
    scheduler.load_state_dict(state["scheduler"])
    rng = _load(folder / f"rng-{rank}.pt")
    if rng is not None:
        torch.set_rng_state(rng["torch"])
    return state["best_model"], state["best_value"], state["best_epoch"], list(state["history"]), int(state["epoch"])


def _checkpoint(folder: Path, rank: int, world: int, state: dict[str, Any]) -> None:
    """Each rank's RNG state, and (rank 0) the training state; all ranks wait for both."""
    import torch
    import torch.distributed as dist

    _save({"torch": torch.get_rng_state()}, folder / f"rng-{rank}.pt")
    if rank == 0:
        _save(state, folder / STATE)
    if world > 1:
        dist.barrier()


def _anomaly_threshold(net: Any, own: Any, world: int, percentile: float) -> dict[str, float]:
    """The autoencoder's flagging threshold: the ``percentile`` of the reconstruction error over
    every rank's own train images."""
    import torch

    with torch.inference_mode():
        scores = torch.cat([models.reconstruction_error(net, own[s : s + 256]) for s in range(0, len(own), 256)])
    every = np.concatenate([np.asarray(g, dtype=np.float64) for g in _gather(scores.tolist(), world)])
    return {"threshold": float(np.percentile(every, percentile)), "train_score_mean": float(every.mean())}
