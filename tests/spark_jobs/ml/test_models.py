"""Backbone files: formats, loading without pickles, and one clear error for each bad file."""

from __future__ import annotations

import contextlib
from pathlib import Path

import pytest

from spark_jobs.ml import extractors, models
from spark_jobs.ml.extractors import CnnConfig


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
        ("b.pt2", b"not a zip", None, "not a readable torch.export archive"),
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


def test_int8_copy_agrees_with_the_float_model_and_keeps_its_embedding() -> None:
    import torch

    torch.manual_seed(0)
    model = models.classifier(8, 3).eval()
    x = torch.rand(64, 3, 16, 16)
    quantized = models.quantized_int8(models.split(model, "small_cnn_classifier"), x[:32])
    setattr(quantized, models.SPLIT, True)
    with torch.inference_mode():
        full = models.embedded(model, "small_cnn_classifier", x)
        small = models.embedded(quantized, "small_cnn_classifier", x)
    assert small.output.shape == full.output.shape
    assert small.embedding.shape == full.embedding.shape
    assert (full.output.argmax(1) == small.output.argmax(1)).float().mean() >= 0.9
    assert torch.allclose(full.output, small.output, atol=0.1)
    assert torch.allclose(full.embedding, small.embedding, atol=0.05)
    assert any(".quantized" in type(m).__module__ for m in quantized.modules())  # int8 kernels


# ---- model files cannot carry code ------------------------------------------------------------


class _Payload:
    """Unpickled, creates ``marker``: what a crafted model file would run."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def _rewrite(archive: Path, out: Path, change) -> Path:
    """A copy of the zip ``archive`` with ``change(name, data)`` applied to each entry (name below
    the top folder) returning new bytes, or None to drop it; extra entries from ``change.extra``."""
    import zipfile

    with zipfile.ZipFile(archive) as src, zipfile.ZipFile(out, "w") as dst:
        root = src.namelist()[0].split("/", 1)[0] + "/"
        for info in src.infolist():
            data = change(info.filename[len(root) :], src.read(info))
            if data is not None:
                dst.writestr(info.filename, data)
        for name, data in getattr(change, "extra", {}).items():
            dst.writestr(root + name, data)
    return out


def _pickled_bytes(marker: Path) -> bytes:
    import io

    import torch

    buffer = io.BytesIO()
    torch.save({"x": _Payload(marker)}, buffer)
    return buffer.getvalue()


def crafted_pt2(folder: Path, marker: Path) -> Path:
    """A torch.export archive of a small backbone whose first weight is marked ``use_pickle`` and
    holds a pickle that creates ``marker`` when unpickled."""
    import json

    plain = models.export_backbone(models.small_cnn(width=4), folder / "plain.pt2", 32)
    target: dict[str, str] = {}

    def change(name: str, data: bytes) -> bytes:
        if name.startswith(models.PT2_WEIGHTS_DIR) and name.endswith("config.json"):
            config = json.loads(data)
            first = next(iter(config["config"]))
            config["config"][first]["use_pickle"] = True
            target["path"] = models.PT2_WEIGHTS_DIR + config["config"][first]["path_name"]
            return json.dumps(config).encode()
        return data

    staged = _rewrite(plain, folder / "staged.pt2", change)
    return _rewrite(staged, folder / "crafted.pt2", lambda n, d: _pickled_bytes(marker) if n == target["path"] else d)


def test_the_archive_layout_is_the_installed_torch_s() -> None:
    from torch.export.pt2_archive import constants

    assert constants.ARCHIVE_VERSION_PATH == models.PT2_VERSION_PATH
    assert str(constants.ARCHIVE_VERSION_VALUE) == models.PT2_VERSION_VALUE
    assert constants.WEIGHTS_DIR == models.PT2_WEIGHTS_DIR
    assert constants.CONSTANTS_DIR == models.PT2_CONSTANTS_DIR
    assert constants.SAMPLE_INPUTS_FILENAME_FORMAT.startswith(models.PT2_SAMPLE_INPUTS_DIR)
    assert constants.TENSOR_CONSTANT_FILENAME_PREFIX == models.PT2_TENSOR_CONSTANT_PREFIX


def test_a_pt2_with_a_pickled_weight_is_refused_before_it_runs(tmp_path: Path) -> None:
    import torch

    crafted = crafted_pt2(tmp_path, tmp_path / "ran")
    # The threat is real: torch's own loader runs the payload.
    with contextlib.suppress(Exception):  # the payload runs while torch reads the weights
        torch.export.load(crafted)
    assert (tmp_path / "ran").exists()
    (tmp_path / "ran").unlink()
    with pytest.raises(models.BackboneError, match=r"is refused: .* is stored as a pickled object"):
        models.module_from_bytes(crafted.read_bytes(), str(crafted), None)
    assert not (tmp_path / "ran").exists()


def test_a_pt2_whose_example_inputs_need_a_full_unpickler_is_refused(tmp_path: Path) -> None:
    """torch retries example inputs that ``weights_only=True`` refuses with a full unpickler."""
    plain = models.export_backbone(models.small_cnn(width=4), tmp_path / "plain.pt2", 32)

    def swap(name: str, data: bytes) -> bytes:
        return _pickled_bytes(tmp_path / "ran") if name.startswith(models.PT2_SAMPLE_INPUTS_DIR) else data

    crafted = _rewrite(plain, tmp_path / "inputs.pt2", swap)
    with pytest.raises(models.BackboneError, match=r"example inputs .* are not plain data"):
        models.module_from_bytes(crafted.read_bytes(), str(crafted), None)
    assert not (tmp_path / "ran").exists()


def _with_extra(name: str, data: bytes):
    def keep(_: str, d: bytes) -> bytes:
        return d

    keep.extra = {name: data}  # type: ignore[attr-defined]
    return keep


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ("data/aotinductor/model/model.so", "not part of a plain exported program"),
        ("data/weights/model.pt", "legacy pickled format"),
        ("serialized_exported_program.json", "not part of a plain exported program"),
    ],
)
def test_a_pt2_with_code_or_legacy_pickles_is_refused(tmp_path: Path, entry: str, message: str) -> None:
    plain = models.export_backbone(models.small_cnn(width=4), tmp_path / "plain.pt2", 32)
    crafted = _rewrite(plain, tmp_path / "extra.pt2", _with_extra(entry, b"\x00"))
    with pytest.raises(models.BackboneError, match=message):
        models.module_from_bytes(crafted.read_bytes(), str(crafted), None)


def test_a_custom_object_constant_is_refused(tmp_path: Path) -> None:
    import json

    plain = models.export_backbone(models.small_cnn(width=4), tmp_path / "plain.pt2", 32)
    meta = {"path_name": "custom_obj_0", "is_param": False, "use_pickle": False, "tensor_meta": {"x": 1}}

    def change(name: str, data: bytes) -> bytes:
        if name.startswith(models.PT2_CONSTANTS_DIR) and name.endswith("config.json"):
            config = json.loads(data)
            config["config"]["obj"] = meta
            return json.dumps(config).encode()
        return data

    crafted = _rewrite(plain, tmp_path / "custom.pt2", change)
    with pytest.raises(models.BackboneError, match="custom or opaque object"):
        models.module_from_bytes(crafted.read_bytes(), str(crafted), None)


def _model_file_reads(source: Path) -> list[tuple[str, dict[str, object]]]:
    """The calls in ``source`` that read a model file or a pickle: ``torch.load``,
    ``torch.export.load``, ``np.load``/``numpy.load``, ``pickle.load(s)``, ``load_pt2``, with their
    constant keyword arguments."""
    import ast

    wanted = {"torch.load", "torch.export.load", "np.load", "numpy.load", "pickle.load", "pickle.loads", "load_pt2"}
    found = []
    for node in ast.walk(ast.parse(source.read_text())):
        if isinstance(node, ast.Call):
            name = ast.unparse(node.func)
            if name in wanted or name.endswith(".load_pt2"):
                keywords = {k.arg: k.value.value for k in node.keywords if isinstance(k.value, ast.Constant)}
                found.append((name, keywords))
    return found


def test_no_module_but_the_loader_reads_a_model_file() -> None:
    """Every torch file, export archive and array is read by spark_jobs/ml/models.py's loaders, with
    the restricted torch unpickler and without numpy's pickles."""
    package = Path(models.__file__).parent
    for source in sorted(package.glob("*.py")):
        reads = _model_file_reads(source)
        if source.name == "models.py":
            assert sorted(name for name, _ in reads) == ["np.load", "torch.export.load", "torch.load"], reads
            keywords = dict(reads)
            assert keywords["torch.load"].get("weights_only") is True
            assert keywords["np.load"].get("allow_pickle") is False
        else:
            assert not reads, f"{source.name} reads a model file itself: {reads}"


def _sequences(n: int, tiles: int, dim: int, seed: int = 0):
    import torch

    g = torch.Generator().manual_seed(seed)
    return torch.cat([torch.randn(n, tiles, dim, generator=g), torch.ones(n, tiles, 1)], dim=2)


@pytest.mark.parametrize("aggregate", ["mean", "gru", "attention"])
def test_padding_after_an_image_s_tiles_changes_nothing(aggregate: str) -> None:
    import torch

    torch.manual_seed(0)
    net = models.tile_sequence(8, 3, aggregate, hidden=16, bidirectional=True).eval()
    x = _sequences(4, 5, 8)
    padded = torch.cat([x, torch.zeros(4, 3, 9)], dim=1)
    padded[:, 5:, :-1] = 7.0  # whatever sits in the padding, its mask is 0
    with torch.inference_mode():
        assert torch.allclose(net(x), net(padded), atol=1e-5)


def test_mean_pooling_is_blind_to_the_tiles_order_and_the_gru_is_not() -> None:
    import torch

    torch.manual_seed(0)
    x = _sequences(4, 4, 8)
    reordered = x[:, [3, 1, 0, 2]]
    mean = models.tile_sequence(8, 3, "mean", hidden=16).eval()
    gru = models.tile_sequence(8, 3, "gru", hidden=16).eval()
    with torch.inference_mode():
        assert torch.allclose(mean(x), mean(reordered), atol=1e-6)
        assert not torch.allclose(gru(x), gru(reordered), atol=1e-3)


def test_attention_weights_sum_to_one_over_an_image_s_tiles_and_follow_them_when_reordered() -> None:
    import torch

    torch.manual_seed(0)
    net = models.tile_sequence(8, 3, "attention", hidden=16).eval()
    x = torch.cat([_sequences(4, 6, 8), torch.zeros(4, 2, 9)], dim=1)
    x[1, 3:, -1] = 0.0  # the second image has three tiles
    x[1, 3:, :-1] = 0.0
    with torch.inference_mode():
        logits, weights = net.attend(x)
        assert torch.allclose(logits, net(x))
        assert torch.allclose(weights.sum(1), torch.ones(4), atol=1e-6)
        assert (weights[:, 6:] == 0).all()
        assert (weights[1, 3:] == 0).all()
        order = [5, 2, 0, 4, 1, 3, 6, 7]
        moved_logits, moved = net.attend(x[[0]][:, order])
        # attention pooling is order-blind, but each weight stays with its tile
        assert torch.allclose(moved_logits, logits[[0]], atol=1e-5)
        assert torch.allclose(moved[0], weights[0, order], atol=1e-6)
    with pytest.raises(models.BackboneError, match="no attention weights"):
        models.tile_sequence(8, 3, "gru", hidden=16).attend(x)


def test_the_resnet18_has_torchvision_s_key_names_and_size() -> None:
    import torch

    net = models.resnet18()
    keys = set(net.state_dict())
    # torchvision.models.resnet18().state_dict() without fc.weight / fc.bias (the head it replaces)
    assert {"conv1.weight", "bn1.running_var", "bn1.num_batches_tracked", "layer1.0.conv1.weight"} <= keys
    assert {"layer2.0.downsample.0.weight", "layer4.1.bn2.bias", "layer4.0.downsample.1.running_mean"} <= keys
    assert "layer1.0.downsample.0.weight" not in keys  # torchvision's first stage has no projection
    assert len(keys) == 120  # torchvision's 122 entries but the two of fc
    # 11,689,512 parameters in torchvision's (fc: 512 x 1000 + 1000)
    assert sum(p.numel() for p in net.parameters()) == 11_689_512 - 513_000
    with torch.inference_mode():
        assert net.eval()(torch.zeros(2, 3, 32, 32)).shape == (2, 512)


def test_a_torchvision_style_state_dict_loads_as_a_backbone_without_its_head(tmp_path: Path) -> None:
    import torch

    full = models.resnet18(width=8)
    full.fc = torch.nn.Linear(64, 1000)  # as torchvision saves it: with its ImageNet head
    path = tmp_path / "resnet18.pth"
    torch.save(full.state_dict(), path)
    backbone = models.module_from_bytes(path.read_bytes(), str(path), "resnet18")
    assert models.backbone_width("resnet18", full.state_dict()) == 8
    assert torch.equal(backbone.state_dict()["layer3.1.conv2.weight"], full.state_dict()["layer3.1.conv2.weight"])
    with torch.inference_mode():
        assert backbone(torch.zeros(1, 3, 32, 32)).shape == (1, 64)


def test_the_embedding_is_the_layer_before_the_last_and_comes_from_the_same_pass() -> None:
    import torch

    torch.manual_seed(0)
    cnn = models.classifier(8, 3).eval()
    x = torch.rand(2, 3, 32, 32)
    with torch.inference_mode():
        f = models.embedded(cnn, "small_cnn_classifier", x)
        assert (f.layer, f.embedding.shape, f.weights) == ("backbone", (2, cnn[2].in_features), None)
        assert torch.allclose(cnn[2](f.embedding), cnn(x), atol=1e-5)  # the head reads exactly this
        assert torch.allclose(f.output, cnn(x), atol=1e-5)
        tiles = models.tile_sequence(8, 3, "attention", hidden=16).eval()
        seq = _sequences(2, 5, 8)
        f = models.embedded(tiles, "tile_sequence", seq)
        assert f.layer == "pooled"
        assert f.weights is not None
        assert f.weights.shape == (2, 5)
        assert torch.allclose(tiles.head(f.embedding), tiles(seq), atol=1e-5)
        assert torch.allclose(f.output, tiles(seq), atol=1e-5)
        ae = models.autoencoder(4, 6, 32).eval()
        f = models.embedded(ae, "conv_autoencoder", x)
        assert (f.layer, f.embedding.shape) == ("latent", (2, 6))
        assert torch.allclose(f.output, ae(x), atol=1e-5)
    with pytest.raises(models.BackboneError, match="no embedding layer"):
        models.embedded(cnn, "something_else", x)
