"""Backbone files: formats, loading without pickles, and one clear error for each bad file."""

from __future__ import annotations

from pathlib import Path

import pytest

from spark_jobs import extractors, models
from spark_jobs.config import CnnConfig


def test_small_cnn_embeds_any_side() -> None:
    import torch

    module = models.small_cnn(width=4).eval()
    with torch.inference_mode():
        assert module(torch.zeros(3, 3, 32, 32)).shape == (3, 16)
        assert module(torch.zeros(1, 3, 57, 40)).shape == (1, 16)


def test_exported_program_accepts_any_batch_and_side(tmp_path: Path) -> None:
    import torch

    path = models.export_backbone(models.small_cnn(width=4), tmp_path / "b.pt2", 32)
    module = models.module_from_bytes(path.read_bytes(), str(path), None)
    with torch.inference_mode():
        assert module(torch.zeros(1, 3, 32, 32)).shape == (1, 16)
        assert module(torch.zeros(9, 3, 64, 48)).shape == (9, 16)


def test_cached_backbone_refuses_changed_bytes(tmp_path: Path) -> None:
    import torch

    path = tmp_path / "b.pt"
    torch.save(models.small_cnn(width=4).state_dict(), path)
    with pytest.raises(models.BackboneError, match="changed while the job ran"):
        models.cached_backbone(path.as_uri(), "small_cnn", "0" * 64)


@pytest.mark.parametrize(
    ("name", "content", "architecture", "message"),
    [
        ("b.onnx", b"x", None, "unknown format"),
        ("b.pt2", b"not a zip", None, "not a loadable torch.export program"),
        ("b.pt", b"", None, "set features.cnn.architecture"),
        ("b.pt", b"garbage", "small_cnn", "does not load as a small_cnn state dict"),
        ("missing.pt2", None, None, "cannot be read"),
    ],
)
def test_bad_backbone_files_are_one_clear_error(tmp_path: Path, name, content, architecture, message) -> None:
    path = tmp_path / name
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(models.BackboneError, match=message):
        extractors.Cnn.open(CnnConfig(backbone=str(path), architecture=architecture), 8, 32)


def test_a_pickled_module_is_refused(tmp_path: Path) -> None:
    """Whole pickled modules are not accepted: weights_only=True refuses arbitrary objects."""
    import torch

    path = tmp_path / "whole.pt"
    torch.save(models.small_cnn(width=4), path)
    with pytest.raises(models.BackboneError, match="state dict"):
        extractors.Cnn.open(CnnConfig(backbone=str(path), architecture="small_cnn"), 8, 32)


def test_a_backbone_that_does_not_return_embeddings_is_refused(tmp_path: Path) -> None:
    import torch

    path = tmp_path / "conv.pt2"
    program = torch.export.export(torch.nn.Conv2d(3, 4, 3).eval(), (torch.zeros(2, 3, 32, 32),))
    torch.export.save(program, str(path))
    with pytest.raises(models.BackboneError, match=r"expected \(2, D\) embeddings"):
        extractors.Cnn.open(CnnConfig(backbone=str(path)), 8, 32)


def test_unreachable_object_store_is_one_clear_error(unreachable_s3: str) -> None:
    with pytest.raises(models.BackboneError, match=rf"s3://models/b\.pt2 cannot be read from {unreachable_s3}"):
        models.read_backbone_bytes("s3://models/b.pt2")


def test_the_readme_export_recipe_gives_a_usable_backbone(tmp_path: Path) -> None:
    """README, "Backbones": a ResNet-style model with ``fc = Identity`` exported with a dynamic batch."""
    import numpy as np
    import torch
    from torch import nn

    class TinyResNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
            self.block = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8))
            self.pool = nn.AdaptiveAvgPool2d(1)
            self.fc = nn.Linear(8, 1000)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = self.stem(x)
            x = torch.relu(x + self.block(x))
            return self.fc(torch.flatten(self.pool(x), 1))

    model = TinyResNet()
    model.fc = torch.nn.Identity()
    example = torch.zeros(2, 3, 48, 48)
    program = torch.export.export(model.eval(), (example,), dynamic_shapes=({0: torch.export.Dim.DYNAMIC},))
    torch.export.save(program, str(tmp_path / "resnet.pt2"))

    cfg = CnnConfig(backbone=str(tmp_path / "resnet.pt2"), mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))
    extractor = extractors.Cnn.open(cfg, 4, 48)
    assert extractor.dim == 8
    batch = np.random.default_rng(0).integers(0, 255, (5, 48, 48, 3), dtype=np.uint8)
    assert extractor(batch).shape == (5, 8)
    with pytest.raises(models.BackboneError, match=r"does not accept a \(N, 3, 32, 32\) batch"):
        extractors.Cnn.open(cfg, 4, 32)  # exported at 48 px: the image size must match


def test_int8_copy_agrees_with_the_float_model() -> None:
    import torch

    torch.manual_seed(0)
    model = models.classifier(8, 3).eval()
    x = torch.rand(64, 3, 16, 16)
    quantized = models.quantized_int8(model, x[:32])
    with torch.inference_mode():
        full, small = model(x), quantized(x)
    assert small.shape == full.shape
    assert (full.argmax(1) == small.argmax(1)).float().mean() >= 0.9
    assert torch.allclose(full, small, atol=0.1)
    assert any(".quantized" in type(m).__module__ for m in quantized.modules())  # int8 kernels
