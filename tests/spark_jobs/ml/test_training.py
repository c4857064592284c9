"""The torch training loop: shards, class weights, augmentation, learning, checkpoint resume."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from spark_jobs.ml import models, training

pytestmark = pytest.mark.spark  # the ingested fixture builds its table with Spark


def _spec(ingested: Path, kind: str = "cnn", **hp: object) -> training.TrainSpec:
    base = {"epochs": 4, "batch_size": 16, "learning_rate": 0.01, "weight_decay": 0.0, "augment_shift": 0}
    base.update({k: v for k, v in hp.items() if k in training.Hyper.model_fields})
    args = {"width": 8, "classes": 3, "dropout": 0.0} if kind == "cnn" else {"width": 8, "latent": 8, "image_size": 32}
    return training.TrainSpec(
        kind=kind,
        model=training.ModelSpec(
            architecture="small_cnn_classifier" if kind == "cnn" else "conv_autoencoder", args=args
        ),
        hp=training.Hyper(**base),
        classes=["0", "1", "2"],
        exclude_classes=["2"] if kind == "autoencoder" else [],
        table=str(ingested / "images.parquet"),
        seed=0,
        threads=1,
        threshold_percentile=95.0,
        data="test",
    )


def _fit(spec: training.TrainSpec, folder: Path) -> dict:
    """One rank's run of ``spec``, its checkpoints and weights under ``folder``."""
    return training.fit(spec, str(folder / "ckpt"), str(folder / "out" / "model.pt"))


def test_shards_cover_the_split_once_and_pad_to_equal_length(ingested: Path) -> None:
    path = str(ingested / "images.parquet")
    plain = [training.shard_ids(path, "train", r, 2, [], pad=False) for r in range(2)]
    padded = [training.shard_ids(path, "train", r, 2, [], pad=True) for r in range(2)]
    everything = sorted(plain[0] + plain[1])
    assert len(everything) == len(set(everything)) > 0
    assert len(padded[0]) == len(padded[1])
    assert set(padded[0]) | set(padded[1]) == set(everything)
    without = training.shard_ids(path, "train", 0, 1, ["2"], pad=False)
    pixels, labels = training.read_rows(path, without)
    assert "2" not in labels
    assert pixels.shape == (len(without), 32, 32, 3)


def test_class_weights_are_balanced_when_skewed() -> None:
    counts = {"a": 90, "b": 30, "c": 60}
    balanced = training.class_weights(counts, ["a", "b", "c"], "balanced", 1.5)
    assert balanced == pytest.approx([180 / (3 * 90), 180 / (3 * 30), 180 / (3 * 60)])
    assert training.class_weights(counts, ["a", "b", "c"], "auto", 1.5) == balanced  # 90 > 1.5 x 30
    assert training.class_weights(counts, ["a", "b", "c"], "auto", 3.0) is None  # 90 <= 3 x 30
    assert training.class_weights(counts, ["a", "b", "c"], "none", 1.5) is None


def test_class_weights_change_the_loss_as_documented() -> None:
    task = training._Task("cnn", ["a", "b"], [0.5, 2.0])
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    y = torch.tensor([0, 1, 1])

    class Fixed(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return logits

    per_row = torch.nn.functional.cross_entropy(logits, y, reduction="none")
    w = torch.tensor([0.5, 2.0, 2.0])
    expected = float((per_row * w).sum() / w.sum())  # torch's weighted mean
    assert float(task.loss(Fixed(), torch.zeros(3, 1), y)) == pytest.approx(expected)
    unweighted = training._Task("cnn", ["a", "b"], None)
    assert float(unweighted.loss(Fixed(), torch.zeros(3, 1), y)) == pytest.approx(float(per_row.mean()))


def test_shift_moves_images_within_bounds() -> None:
    x = torch.zeros(4, 3, 8, 8)
    x[:, :, 3:5, 3:5] = 1.0
    out = training.shifted(x, 2, torch.Generator().manual_seed(0))
    assert out.shape == x.shape
    assert torch.all(out.sum(dim=(1, 2, 3)) == x.sum(dim=(1, 2, 3)))  # a centred blob never leaves the frame
    assert torch.equal(training.shifted(x, 0, torch.Generator()), x)


def test_fit_learns_on_a_tiny_dataset(ingested: Path, tmp_path: Path, caplog) -> None:
    with caplog.at_level(logging.INFO, "spark_jobs.ml.training"):
        result = _fit(_spec(ingested, epochs=10), tmp_path)
    losses = [h["train_loss"] for h in result["history"]]
    assert len(losses) == 10
    # one line per epoch from rank 0: loss, validation figure, seconds
    lines = [r.getMessage() for r in caplog.records if r.name == "spark_jobs.ml.training"]
    assert [line.split(":")[0] for line in lines] == [f"cnn epoch {e}/10" for e in range(1, 11)]
    assert re.fullmatch(
        r"cnn epoch 10/10: train loss \d\.\d{4}, val accuracy \d\.\d{4} \(loss \d+\.\d{4}\), \d+\.\d s", lines[-1]
    )
    assert losses[-1] < losses[0]
    assert result["best_val"] > 0.8  # 3 classes: chance is 1/3
    state = torch.load(tmp_path / "out" / "model.pt", weights_only=True)
    model = models.classifier(8, 3).eval()
    model.load_state_dict(state)


def test_a_killed_run_resumes_from_its_last_checkpoint(ingested: Path, tmp_path: Path, monkeypatch) -> None:
    spec = _spec(ingested, epochs=4, augment_shift=2)
    whole = _fit(spec, tmp_path / "whole")
    expected = torch.load(tmp_path / "whole" / "out" / "model.pt", weights_only=True)
    output = tmp_path / "killed" / "out" / "model.pt"
    real_save = training._save

    def die_after_epoch_2(obj: dict, path: Path) -> None:
        real_save(obj, path)
        if path.name == training.STATE and obj["epoch"] == 2:
            raise KeyboardInterrupt("killed")

    monkeypatch.setattr(training, "_save", die_after_epoch_2)
    with pytest.raises(KeyboardInterrupt):
        _fit(spec, tmp_path / "killed")
    assert not output.exists()
    monkeypatch.setattr(training, "_save", real_save)

    resumed = _fit(spec, tmp_path / "killed")
    assert resumed["resumed_from_epoch"] == 2
    assert [h["epoch"] for h in resumed["history"]] == [1, 2, 3, 4]
    assert resumed["history"] == whole["history"]
    got = torch.load(output, weights_only=True)
    for key, value in expected.items():
        assert torch.equal(got[key], value), key


def test_autoencoder_records_a_threshold_of_train_scores(ingested: Path, tmp_path: Path) -> None:
    result = _fit(_spec(ingested, kind="autoencoder", learning_rate=0.003), tmp_path)
    assert result["history"][-1]["train_loss"] < result["history"][0]["train_loss"]
    assert result["threshold"] >= result["train_score_mean"] > 0
    assert np.isfinite(result["threshold"])


def test_a_torchvision_resnet18_state_dict_fine_tunes_frozen_first(ingested: Path, tmp_path: Path) -> None:
    """A ResNet-18 saved as torchvision saves one (with its 1000-class head) starts the cnn: the
    frozen epoch trains the new head alone, then the backbone moves too."""
    from spark_jobs import train
    from tests.factories import link_ingest

    full = models.resnet18(width=8)
    full.fc = torch.nn.Linear(64, 1000)
    torch.save(full.state_dict(), tmp_path / "resnet18.pth")
    cfg = link_ingest(
        ingested,
        tmp_path / "ws",
        f"train.cnn.init={tmp_path / 'resnet18.pth'}",
        "train.cnn.init_architecture=resnet18",  # no backbone card beside it
        "train.cnn.freeze_epochs=1",
        "train.cnn.backbone_learning_rate=0.001",
        "train.cnn.epochs=1",
        "train.cnn.batch_size=8",
    )
    spec = train.torch_spec(cfg, "cnn", ["0", "1", "2"], None, ingested, ingested)
    assert (spec.model.architecture, spec.model.args["width"]) == ("resnet18_classifier", 8)
    place = {"world": 1, "threads": 1, "max_rows": 16}

    def fit(epochs: int) -> dict:
        run = spec.model_copy(update=place | {"hp": spec.hp.model_copy(update={"epochs": epochs})})
        result = training.fit(run, str(tmp_path / f"ckpt{epochs}"), str(tmp_path / f"m{epochs}.pt"))
        assert result["train_rows"] == 16
        return models.load_tensors(tmp_path / f"m{epochs}.pt")

    start = full.state_dict()
    frozen = fit(1)
    backbone_keys = [k for k in start if not k.startswith("fc.")]
    for key in backbone_keys:  # weights and batch-norm statistics as loaded
        assert torch.equal(frozen[f"0.{key}"], start[key]), key
    torch.manual_seed(0)  # as the loop seeds before building: the head it started from
    head = models.classifier(8, 3, spec.model.args["dropout"], backbone="resnet18")
    assert not torch.equal(frozen["2.weight"], head.state_dict()["2.weight"])  # the new head learnt
    thawed = fit(2)
    assert not torch.equal(thawed["0.layer1.0.conv1.weight"], start["layer1.0.conv1.weight"])
    assert not torch.equal(thawed["0.bn1.running_mean"], start["bn1.running_mean"])
