"""Torch models as files (DESIGN.md #8): the project's architectures, and loading a backbone from
a path or ``s3://`` URI as an exported program or a state dict, never an arbitrary pickle.

Formats, chosen by extension:

- ``.pt2``: a ``torch.export`` program (``torch.export.save``); needs no code from this project,
  so it is how users bring their own backbone (e.g. a ResNet without its ``fc`` layer).
- ``.pt`` / ``.pth``: a state dict loaded with ``weights_only=True`` plus an architecture name
  from :data:`ARCHITECTURES`, which rebuilds the module from the tensor shapes.

Every model, backbone, checkpoint and calibration file is read by the loaders here
(:func:`load_tensors`, :func:`load_program`, :func:`load_array`), none of which reaches an
unrestricted unpickler:

- torch files (``.pt``/``.pth``, checkpoints) go through ``torch.load(weights_only=True)``, torch's
  restricted unpickler: tensors, containers and plain values only;
- a ``torch.export`` archive is inspected before ``torch.export.load`` sees it
  (:func:`inspect_program`): every entry must be of a kind that archive loader reads without
  pickle: the graph (JSON), weights and tensor constants stored as raw bytes, the example inputs
  (``weights_only=True`` must accept them, or torch would retry them with a full unpickler) and
  extra text files. An archive with a pickled weight or constant (``use_pickle``), a custom or
  opaque object, compiled AOTInductor code, a legacy-format entry or anything unknown is refused;
- calibration images are ``.npy`` arrays read with ``allow_pickle=False``.

A backbone maps a float batch ``(N, 3, H, W)`` to embeddings ``(N, D)``.
"""

from __future__ import annotations

import functools
import hashlib
import io
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from spark_jobs.core import store

if TYPE_CHECKING:
    from torch import Tensor, nn

EXPORTED_SUFFIXES = (".pt2",)
STATE_DICT_SUFFIXES = (".pt", ".pth")


class BackboneError(store.SourceError):
    """A backbone file that cannot be used; the message names the file."""


def small_cnn(width: int = 16) -> nn.Module:
    """The project's compact CNN backbone: three conv blocks of ``width``, ``2 x width`` and
    ``4 x width`` channels (3x3 conv, batch norm, ReLU; 2x2 max pool between blocks), then
    global average pooling. Any input side >= 4 works; the embedding has ``4 x width`` values."""
    from torch import nn

    def block(cin: int, cout: int) -> list[nn.Module]:
        return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]

    w = width
    return nn.Sequential(
        *block(3, w),
        *block(w, w),
        nn.MaxPool2d(2),
        *block(w, 2 * w),
        *block(2 * w, 2 * w),
        nn.MaxPool2d(2),
        *block(2 * w, 4 * w),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
    )


def resnet18(width: int = 64) -> nn.Module:
    """ResNet-18 (He et al. 2016) without its classification layer, built so that its state dict
    has torchvision's key names (``conv1``, ``bn1``, ``layer1.0.conv1``, ``layer2.0.downsample.0``...):
    a ``torchvision.models.resnet18().state_dict()`` saved elsewhere loads into it (its ``fc.*``
    entries are the old head and are dropped, :func:`backbone_state`). ``width`` is the stem's
    channels (64 in torchvision); the embedding has ``8 x width`` values."""
    from torch import nn

    class BasicBlock(nn.Module):
        def __init__(self, cin: int, cout: int, stride: int) -> None:
            super().__init__()
            self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(cout)
            self.relu = nn.ReLU(inplace=True)
            self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
            self.bn2 = nn.BatchNorm2d(cout)
            self.downsample = None
            if stride != 1 or cin != cout:
                self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

        def forward(self, x: Tensor) -> Tensor:
            out = self.relu(self.bn1(self.conv1(x)))
            out = self.bn2(self.conv2(out))
            return self.relu(out + (x if self.downsample is None else self.downsample(x)))

    class ResNet18(nn.Module):
        def __init__(self, w: int) -> None:
            super().__init__()
            self.conv1 = nn.Conv2d(3, w, 7, 2, 3, bias=False)
            self.bn1 = nn.BatchNorm2d(w)
            self.relu = nn.ReLU(inplace=True)
            self.maxpool = nn.MaxPool2d(3, 2, 1)
            self.layer1 = nn.Sequential(BasicBlock(w, w, 1), BasicBlock(w, w, 1))
            self.layer2 = nn.Sequential(BasicBlock(w, 2 * w, 2), BasicBlock(2 * w, 2 * w, 1))
            self.layer3 = nn.Sequential(BasicBlock(2 * w, 4 * w, 2), BasicBlock(4 * w, 4 * w, 1))
            self.layer4 = nn.Sequential(BasicBlock(4 * w, 8 * w, 2), BasicBlock(8 * w, 8 * w, 1))
            self.avgpool = nn.AdaptiveAvgPool2d(1)
            self.fc = nn.Identity()

        def forward(self, x: Tensor) -> Tensor:
            x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
            x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
            return self.fc(self.avgpool(x).flatten(1))

    return ResNet18(width)


@dataclass(frozen=True)
class Backbone:
    """A backbone architecture: its builder from a width, the embedding size per unit of width,
    the state-dict entry whose first dimension is the width, and the prefix of a classification
    head saved with it (dropped when it is loaded as a backbone)."""

    build: Callable[[int], nn.Module]
    per_width: int
    width_key: str
    head_prefix: str | None = None


BACKBONES: dict[str, Backbone] = {
    "small_cnn": Backbone(small_cnn, 4, "0.weight"),
    "resnet18": Backbone(resnet18, 8, "conv1.weight", head_prefix="fc."),
}


def backbone_width(architecture: str, state: dict[str, Any]) -> int:
    """The width of a backbone architecture's state dict, read from its first layer's shape."""
    key = BACKBONES[architecture].width_key
    if key not in state:
        raise BackboneError(f"not a {architecture} state dict: it has no {key!r}")
    return int(state[key].shape[0])


def backbone_state(architecture: str, state: dict[str, Any]) -> dict[str, Any]:
    """A backbone's state dict without a classification head saved with it (torchvision's ``fc.*``)."""
    prefix = BACKBONES[architecture].head_prefix
    return state if prefix is None else {k: v for k, v in state.items() if not k.startswith(prefix)}


def classifier(width: int, classes: int, dropout: float = 0.0, backbone: str = "small_cnn") -> nn.Module:
    """The ``cnn`` model: a backbone (:func:`small_cnn`, or :func:`resnet18` when fine-tuning one)
    + dropout + a linear layer to ``classes`` logits. The backbone is the first module (``[0]``)."""
    from torch import nn

    spec = BACKBONES[backbone]
    return nn.Sequential(spec.build(width), nn.Dropout(dropout), nn.Linear(spec.per_width * width, classes))


TILE_AGGREGATES = ("mean", "gru", "attention")  # train.model tiles_<aggregate>


def gated_attention(hidden: int) -> nn.Module:
    """Gated attention weights (Ilse, Tomczak & Welling, ICML 2018): ``(N, T, hidden)`` tile
    vectors ``h`` and their ``(N, T)`` mask (1 a tile, 0 padding) to ``(N, T)`` weights, a softmax of
    ``w . (tanh(V h) * sigmoid(U h))`` over each image's tiles; 0 on padding (and everywhere for
    an image without tiles)."""
    import torch
    from torch import nn

    class GatedAttention(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.gate_v = nn.Sequential(nn.Linear(hidden, hidden), nn.Tanh())
            self.gate_u = nn.Sequential(nn.Linear(hidden, hidden), nn.Sigmoid())
            self.score = nn.Linear(hidden, 1)

        def forward(self, h: Tensor, mask: Tensor) -> Tensor:
            scores = self.score(self.gate_v(h) * self.gate_u(h)).squeeze(-1)
            return torch.softmax(scores.masked_fill(mask <= 0, float("-inf")), dim=1).nan_to_num(0.0)

    return GatedAttention()


def tile_sequence(
    dim: int, classes: int, aggregate: str, hidden: int, bidirectional: bool = True, dropout: float = 0.0
) -> nn.Module:
    """The ``tiles_*`` models: an image as its tiles' vectors in raster order, to ``classes`` logits.
    Input ``(N, T, dim + 1)`` float: each tile's vector, then 1 for a tile or 0 for padding (at the
    end). ``aggregate``:

    ``mean``: each tile through ``Linear(dim, hidden) + ReLU``, averaged (order-blind); ``gru``: a
    GRU of ``hidden`` units over the tiles in order (both directions when ``bidirectional``), its
    last states; ``attention``: each tile through ``Linear + ReLU``, weighed by
    :func:`gated_attention` and summed (``attend`` returns the weights beside the logits). Then
    dropout and a linear layer; ``pool`` gives what that layer reads."""
    import torch
    from torch import nn
    from torch.nn.utils.rnn import pack_padded_sequence

    class TileSequence(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            if aggregate == "gru":
                self.rnn = nn.GRU(dim, hidden, batch_first=True, bidirectional=bidirectional)
                out = hidden * (2 if bidirectional else 1)
            else:
                self.tile = nn.Sequential(nn.Linear(dim, hidden), nn.ReLU())
                out = hidden
            if aggregate == "attention":
                self.attention = gated_attention(hidden)
            self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(out, classes))

        def attend(self, x: Tensor) -> tuple[Tensor, Tensor]:
            """``(logits (N, classes), attention weights (N, T))``: each image's weights sum to 1
            over its tiles and are 0 on padding. Only ``attention`` has weights."""
            if aggregate != "attention":
                raise BackboneError(f"a tiles_{aggregate} model has no attention weights")
            pooled, weights = self.pool(x)
            return self.head(pooled), weights

        def pool(self, x: Tensor) -> tuple[Tensor, Tensor | None]:
            """``(each image's pooled vector (N, out): what the head reads, the attention weights
            or None)``."""
            mask, x = x[..., -1], x[..., :-1]
            if aggregate == "attention":
                h = self.tile(x)
                weights = self.attention(h, mask)
                return (weights.unsqueeze(-1) * h).sum(1), weights
            lengths = mask.sum(1).clamp(min=1)
            if aggregate == "gru":
                packed = pack_padded_sequence(x, lengths.long().cpu(), batch_first=True, enforce_sorted=False)
                _, last = self.rnn(packed)  # (directions, N, hidden)
                return torch.cat(list(last), dim=1), None
            return (self.tile(x) * mask.unsqueeze(-1)).sum(1) / lengths.unsqueeze(-1), None

        def forward(self, x: Tensor) -> Tensor:
            return self.head(self.pool(x)[0])

    if aggregate not in TILE_AGGREGATES:
        raise BackboneError(f"unknown tile aggregate {aggregate!r}")
    return TileSequence()


def autoencoder(width: int = 16, latent: int = 16, image_size: int = 32) -> nn.Module:
    """The ``autoencoder`` model: three stride-2 conv blocks down to ``S/8`` with ``4 x width``
    channels, a dense bottleneck of ``latent`` values (narrow, so that what the training classes
    do not share reconstructs badly), mirrored by transposed convolutions back to ``(3, S, S)``
    in [0, 1] (sigmoid). ``image_size`` must be a multiple of 8."""
    from torch import nn

    w, cells = width, image_size // 8
    flat = 4 * w * cells * cells

    def down(cin: int, cout: int) -> list[nn.Module]:
        return [nn.Conv2d(cin, cout, 3, stride=2, padding=1), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]

    def up(cin: int, cout: int) -> list[nn.Module]:
        return [nn.ConvTranspose2d(cin, cout, 4, stride=2, padding=1), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]

    return nn.Sequential(
        *down(3, w),
        *down(w, 2 * w),
        *down(2 * w, 4 * w),
        nn.Flatten(),
        nn.Linear(flat, latent),
        nn.ReLU(inplace=True),
        nn.Linear(latent, flat),
        nn.ReLU(inplace=True),
        nn.Unflatten(1, (4 * w, cells, cells)),
        *up(4 * w, 2 * w),
        *up(2 * w, w),
        nn.ConvTranspose2d(w, 3, 4, stride=2, padding=1),
        nn.Sigmoid(),
    )


@dataclass(frozen=True)
class Forward:
    """One forward pass of a trained model: its output (logits, or the autoencoder's
    reconstruction), the layer a drift test reads (:attr:`layer` names it) and, for an attention
    tile model, its ``(N, T)`` tile weights."""

    output: Tensor
    layer: str
    embedding: Tensor
    weights: Tensor | None = None


def split(net: nn.Module, architecture: str) -> nn.Module:
    """``net`` as a module that returns ``(output, embedding)`` from one forward pass: a
    classifier's backbone output (``backbone``, what its dropout + linear head reads) or the
    autoencoder's bottleneck after its ReLU (``latent``). Traceable, so its INT8 copy
    (:func:`quantized_int8`) returns both too."""
    from torch import nn

    if architecture == "conv_autoencoder":
        bottleneck = next(i for i, m in enumerate(net) if isinstance(m, nn.Linear)) + 2  # the dense layer + ReLU
    elif architecture.endswith("_classifier"):
        bottleneck = 1
    else:
        raise BackboneError(f"no embedding layer known for architecture {architecture!r}")

    class Split(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.encode, self.decode = net[:bottleneck], net[bottleneck:]

        def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
            embedding = self.encode(x).flatten(1)
            return self.decode(embedding), embedding

    return Split()


SPLIT = "returns_embedding"  # set on a module that already returns (output, embedding)
EMBEDDING_LAYERS = {"conv_autoencoder": "latent", "tile_sequence": "pooled"}  # else: "backbone"


def embedded(net: nn.Module, architecture: str, x: Tensor) -> Forward:
    """The output of ``net`` on ``x`` and its embedding, in one forward pass: what a drift test
    reads, the layer before the model's last (a tile model's pooled vector, ``pooled``). ``net``
    may be one :func:`split` made already (the INT8 copy is one)."""
    layer = EMBEDDING_LAYERS.get(architecture, "backbone")
    if architecture == "tile_sequence":
        pooled, weights = net.pool(x)
        return Forward(net.head(pooled), layer, pooled, weights)
    output, embedding = (net if getattr(net, SPLIT, False) else split(net, architecture))(x)
    return Forward(output, layer, embedding)


def to_tensor(pixels: Any) -> Tensor:
    """The models' input from ingested pixels: float NCHW in [0, 1] from uint8 NHWC. A read-only
    array (one read straight from Arrow buffers) is copied once, as uint8, since torch needs
    writable memory."""
    import numpy as np
    import torch

    if not pixels.flags.writeable:
        pixels = np.array(pixels)
    return torch.from_numpy(pixels).permute(0, 3, 1, 2).float() / 255.0


def reconstruction_error(model: nn.Module, x: Tensor) -> Tensor:
    """Per-image mean squared reconstruction error of a batch: the anomaly score."""
    return squared_error(model(x), x)


def squared_error(reconstructed: Tensor, x: Tensor) -> Tensor:
    """Per-image mean squared difference of a reconstruction and its input."""
    return ((reconstructed - x) ** 2).flatten(1).mean(1)


def build(architecture: str, spec: dict[str, Any]) -> nn.Module:
    """A trained model's module from its card's ``architecture`` and ``arch`` spec."""
    if architecture == "small_cnn_classifier":
        return classifier(spec["width"], spec["classes"], spec.get("dropout", 0.0))
    if architecture == "resnet18_classifier":
        return classifier(spec["width"], spec["classes"], spec.get("dropout", 0.0), backbone="resnet18")
    if architecture == "tile_sequence":
        return tile_sequence(
            spec["dim"], spec["classes"], spec["aggregate"], spec["hidden"], spec["bidirectional"], spec["dropout"]
        )
    if architecture == "conv_autoencoder":
        return autoencoder(spec["width"], spec["latent"], spec["image_size"])
    raise BackboneError(f"unknown model architecture {architecture!r}")


def load_tensors(source: bytes | Path) -> Any:
    """A torch file's content (a state dict, a checkpoint) through torch's restricted unpickler
    (``weights_only=True``): tensors, containers and plain values; anything else raises
    ``pickle.UnpicklingError``. The one way this project reads a torch file."""
    import torch

    return torch.load(
        io.BytesIO(source) if isinstance(source, bytes) else source, map_location="cpu", weights_only=True
    )


def load_array(data: bytes) -> Any:
    """An ``.npy`` array (or an ``.npz`` of them), never a pickled object (``allow_pickle=False``)."""
    import numpy as np

    return np.load(io.BytesIO(data), allow_pickle=False)


# The layout of a torch.export archive (torch/export/pt2_archive/constants.py; tests/spark_jobs/
# test_models.py checks these against the installed torch): names below the archive's top folder.
PT2_VERSION_PATH = "archive_version"
PT2_VERSION_VALUE = "0"
PT2_WEIGHTS_DIR = "data/weights/"
PT2_CONSTANTS_DIR = "data/constants/"
PT2_SAMPLE_INPUTS_DIR = "data/sample_inputs/"
PT2_TENSOR_CONSTANT_PREFIX = "tensor_"
# What torch.export.load reads without pickle, given the checks of inspect_program on the configs.
_PT2_FILES = ("archive_format", "archive_version", "byteorder", ".data/version", ".data/serialization_id")
_PT2_FOLDERS = ("models/", PT2_WEIGHTS_DIR, PT2_CONSTANTS_DIR, PT2_SAMPLE_INPUTS_DIR, "extra/")


def inspect_program(data: bytes, what: str) -> dict[str, bytes]:
    """Refuse (:class:`BackboneError`, one line) a ``torch.export`` archive that ``torch.export.load``
    would not read as data alone: one with an entry it unpickles (a weight or tensor constant
    marked ``use_pickle``, a custom or opaque object, a weights or constants file in the legacy
    pickled format, the pre-2.8 zip layout) or runs (AOTInductor code), or an entry of a kind
    this check does not know. Needs no torch (a stage checks a backbone before Spark starts).
    Returns the example-input entries, which :func:`load_program` checks with torch."""
    import json
    import zipfile

    def refuse(reason: str) -> BackboneError:
        return BackboneError(f"{what} is refused: {reason}")

    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
        names = archive.namelist()
        roots = {n.split("/", 1)[0] for n in names}
        if len(roots) != 1 or any("/" not in n for n in names):
            raise refuse("not a torch.export archive (its entries are not under one top folder)")
        root = roots.pop() + "/"
        entries = {n[len(root) :]: n for n in names if not n.endswith("/")}
        version = archive.read(entries[PT2_VERSION_PATH]) if PT2_VERSION_PATH in entries else b""
        if version.decode(errors="replace").strip() != PT2_VERSION_VALUE:
            raise refuse("not a torch.export archive in this torch's format (save it with torch.export.save)")
        for name in entries:
            if name not in _PT2_FILES and not name.startswith(_PT2_FOLDERS):
                raise refuse(f"it holds {name!r}, which is not part of a plain exported program")
            if name.startswith((PT2_WEIGHTS_DIR, PT2_CONSTANTS_DIR)) and name.endswith(".pt"):
                raise refuse(f"{name!r} is in the legacy pickled format (save it again with torch.export.save)")
        configs = [n for n in entries if n.startswith((PT2_WEIGHTS_DIR, PT2_CONSTANTS_DIR)) and n.endswith(".json")]
        for name in configs:
            try:
                payloads = list(json.loads(archive.read(entries[name]))["config"].items())
            except (ValueError, KeyError, TypeError, AttributeError) as exc:
                raise refuse(f"{name!r} is not a payload config ({exc})") from None
            for fqn, meta in payloads:
                if not isinstance(meta, dict) or meta.get("use_pickle") is not False or not meta.get("tensor_meta"):
                    raise refuse(f"{fqn!r} is stored as a pickled object, not as tensor data")
                path = str(meta.get("path_name", ""))
                if name.startswith(PT2_CONSTANTS_DIR) and not path.startswith(PT2_TENSOR_CONSTANT_PREFIX):
                    raise refuse(f"constant {fqn!r} is a custom or opaque object ({path!r}), not a tensor")
        return {n: archive.read(entries[n]) for n in entries if n.startswith(PT2_SAMPLE_INPUTS_DIR)}
    except BackboneError:
        raise
    except (zipfile.BadZipFile, zipfile.LargeZipFile, ValueError, OSError, EOFError, NotImplementedError) as exc:
        raise refuse(f"not a readable torch.export archive ({type(exc).__name__}: {exc})") from None


def load_program(data: bytes, what: str) -> nn.Module:
    """The module of a ``torch.export`` archive that :func:`inspect_program` accepts and whose
    example inputs torch's restricted unpickler reads (torch would otherwise retry them with a
    full one)."""
    import torch

    for name, inputs in inspect_program(data, what).items():
        try:
            load_tensors(inputs)
        except Exception as exc:
            reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
            raise BackboneError(
                f"{what} is refused: its example inputs {name!r} are not plain data ({reason})"
            ) from None
    try:
        return torch.export.load(io.BytesIO(data)).module()
    except Exception as exc:
        raise BackboneError(f"{what} is not a loadable torch.export program: {exc}") from None


def load_weights(module: nn.Module, data: bytes, what: str) -> nn.Module:
    """``module`` with the state dict in ``data`` (:func:`load_tensors`: no pickled code runs), in eval mode."""
    try:
        module.load_state_dict(load_tensors(data))
    except Exception as exc:
        raise BackboneError(f"{what} does not load as a {type(module).__name__} state dict: {exc}") from None
    return module.eval()


@functools.lru_cache(maxsize=4)
def cached_model(
    weights: str, sha256: str, architecture: str, spec_json: str, calibration: str | None = None
) -> nn.Module:
    """A trained model, loaded once per Python process after checking its weights' sha256; with
    ``calibration`` (an ``.npy`` of uint8 NHWC images) its static INT8 copy (:func:`quantized_int8`)
    of its :func:`split`, which returns its embedding beside its output."""
    import json

    data = read_backbone_bytes(weights)
    actual = hashlib.sha256(data).hexdigest()
    if actual != sha256:
        raise BackboneError(f"model weights {weights} changed (sha256 {actual}, its card says {sha256})")
    model = load_weights(build(architecture, json.loads(spec_json)), data, f"model weights {weights}")
    if calibration is None:
        return model
    try:
        images = load_array(read_backbone_bytes(calibration))
    except ValueError as exc:
        raise BackboneError(f"calibration images {calibration} are not a plain .npy array: {exc}") from None
    quantized = quantized_int8(split(model, architecture), to_tensor(images))
    setattr(quantized, SPLIT, True)
    return quantized


def quantized_int8(model: nn.Module, calibration: Tensor, batch: int = 64) -> nn.Module:
    """A post-training static INT8 copy of ``model`` for CPU inference (FX graph mode, x86
    backend: conv + batch norm + ReLU fused, int8 weights and activations, activation ranges
    observed on the ``calibration`` images). Same images, same copy."""
    import copy

    import torch
    from torch.ao.quantization import get_default_qconfig_mapping
    from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

    torch.backends.quantized.engine = "x86"
    prepared = prepare_fx(copy.deepcopy(model).eval(), get_default_qconfig_mapping("x86"), (calibration[:1],))
    with torch.inference_mode():
        for start in range(0, len(calibration), batch):
            prepared(calibration[start : start + batch])
    return convert_fx(prepared)


# Architecture name -> builder of the module a state dict belongs to (shapes read from the dict).
def _backbone_from_state(architecture: str, state: dict[str, Any]) -> nn.Module:
    return BACKBONES[architecture].build(backbone_width(architecture, state))


ARCHITECTURES: dict[str, Callable[[dict[str, Any]], nn.Module]] = {
    name: functools.partial(_backbone_from_state, name) for name in BACKBONES
}


def backbone_format(uri: str) -> str:
    """``exported`` or ``state_dict`` from the file name; :class:`BackboneError` otherwise."""
    name = uri.lower()
    if name.endswith(EXPORTED_SUFFIXES):
        return "exported"
    if name.endswith(STATE_DICT_SUFFIXES):
        return "state_dict"
    raise BackboneError(
        f"backbone {uri}: unknown format; expected a torch.export program ({', '.join(EXPORTED_SUFFIXES)}) "
        f"or a state dict ({', '.join(STATE_DICT_SUFFIXES)}) with features.cnn.architecture"
    )


def read_backbone_bytes(uri: str) -> bytes:
    """The backbone file's bytes from a local path, ``file://`` URI or ``s3://`` URI."""
    location = uri if store.is_s3(uri) or uri.startswith("file:") else store.local_uri(uri)
    try:
        return store.fetch(location)
    except store.FetchError as exc:
        raise BackboneError(f"backbone {uri} cannot be read: {exc}") from None
    except store.StoreUnavailable as exc:  # no credentials, endpoint unreachable after botocore's retries
        raise BackboneError(f"backbone {uri} cannot be read from {store.s3_endpoint()}: {exc}") from None


def module_from_bytes(data: bytes, uri: str, architecture: str | None) -> nn.Module:
    """The backbone in eval mode, from the file's bytes."""
    if backbone_format(uri) == "exported":
        return load_program(data, f"backbone {uri}")
    if architecture not in ARCHITECTURES:
        raise BackboneError(
            f"backbone {uri} is a state dict: set features.cnn.architecture to one of {sorted(ARCHITECTURES)}"
        )
    try:
        state = backbone_state(architecture, load_tensors(data))
        module = ARCHITECTURES[architecture](state)
        module.load_state_dict(state)
    except Exception as exc:
        raise BackboneError(f"backbone {uri} does not load as a {architecture} state dict: {exc}") from None
    return module.eval()


@functools.lru_cache(maxsize=2)
def cached_backbone(uri: str, architecture: str | None, sha256: str) -> nn.Module:
    """The backbone, loaded once per Python process (Spark reuses its Python workers, so once per
    worker), after checking its bytes are the ones the driver validated."""
    data = read_backbone_bytes(uri)
    actual = hashlib.sha256(data).hexdigest()
    if actual != sha256:
        raise BackboneError(f"backbone {uri} changed while the job ran (sha256 {actual}, expected {sha256})")
    return module_from_bytes(data, uri, architecture)


def export_backbone(module: nn.Module, path: Path, image_size: int) -> Path:
    """Save ``module`` as a ``torch.export`` program accepting any batch size (and, for fully
    convolutional modules, other image sides)."""
    import torch
    from torch.export import Dim

    example = torch.zeros(2, 3, image_size, image_size)
    dims = {0: Dim.DYNAMIC, 2: Dim.DYNAMIC, 3: Dim.DYNAMIC}
    program = torch.export.export(module.eval(), (example,), dynamic_shapes=(dims,))
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.export.save(program, str(path))
    return path
