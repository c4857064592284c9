"""Torch models as files (DESIGN.md #8): the project's architectures, and loading a backbone from
a path or ``s3://`` URI as an exported program or a state dict, never an arbitrary pickle.

Formats, chosen by extension:

- ``.pt2``: a ``torch.export`` program (``torch.export.save``); needs no code from this project,
  so it is how users bring their own backbone (e.g. a ResNet without its ``fc`` layer).
- ``.pt`` / ``.pth``: a state dict loaded with ``weights_only=True`` plus an architecture name
  from :data:`ARCHITECTURES`, which rebuilds the module from the tensor shapes.

A backbone maps a float batch ``(N, 3, H, W)`` to embeddings ``(N, D)``.
"""

from __future__ import annotations

import functools
import hashlib
import io
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from spark_jobs import store

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


def classifier(width: int, classes: int, dropout: float = 0.0) -> nn.Module:
    """The ``cnn`` model: :func:`small_cnn` + dropout + a linear layer to ``classes`` logits."""
    from torch import nn

    return nn.Sequential(small_cnn(width), nn.Dropout(dropout), nn.Linear(4 * width, classes))


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
    return ((model(x) - x) ** 2).flatten(1).mean(1)


def build(architecture: str, spec: dict[str, Any]) -> nn.Module:
    """A trained model's module from its card's ``architecture`` and ``arch`` spec."""
    if architecture == "small_cnn_classifier":
        return classifier(spec["width"], spec["classes"], spec.get("dropout", 0.0))
    if architecture == "conv_autoencoder":
        return autoencoder(spec["width"], spec["latent"], spec["image_size"])
    raise BackboneError(f"unknown model architecture {architecture!r}")


def load_weights(module: nn.Module, data: bytes, what: str) -> nn.Module:
    """``module`` with the state dict in ``data`` (``weights_only=True``: no pickled code runs), in eval mode."""
    import torch

    try:
        module.load_state_dict(torch.load(io.BytesIO(data), map_location="cpu", weights_only=True))
    except Exception as exc:
        raise BackboneError(f"{what} does not load as a {type(module).__name__} state dict: {exc}") from None
    return module.eval()


@functools.lru_cache(maxsize=4)
def cached_model(
    weights: str, sha256: str, architecture: str, spec_json: str, calibration: str | None = None
) -> nn.Module:
    """A trained model, loaded once per Python process after checking its weights' sha256; with
    ``calibration`` (an ``.npy`` of uint8 NHWC images) its static INT8 copy (:func:`quantized_int8`)."""
    import json

    import numpy as np

    data = read_backbone_bytes(weights)
    actual = hashlib.sha256(data).hexdigest()
    if actual != sha256:
        raise BackboneError(f"model weights {weights} changed (sha256 {actual}, its card says {sha256})")
    model = load_weights(build(architecture, json.loads(spec_json)), data, f"model weights {weights}")
    if calibration is None:
        return model
    images = np.load(io.BytesIO(read_backbone_bytes(calibration)), allow_pickle=False)
    return quantized_int8(model, to_tensor(images))


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


def _small_cnn_from_state(state: dict[str, Tensor]) -> nn.Module:
    return small_cnn(width=int(state["0.weight"].shape[0]))


# Architecture name -> builder of the module a state dict belongs to (shapes read from the dict).
ARCHITECTURES: dict[str, Callable[[dict[str, Any]], nn.Module]] = {"small_cnn": _small_cnn_from_state}


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
    import torch

    if backbone_format(uri) == "exported":
        try:
            return torch.export.load(io.BytesIO(data)).module()
        except Exception as exc:
            raise BackboneError(f"backbone {uri} is not a loadable torch.export program: {exc}") from None
    if architecture not in ARCHITECTURES:
        raise BackboneError(
            f"backbone {uri} is a state dict: set features.cnn.architecture to one of {sorted(ARCHITECTURES)}"
        )
    try:
        state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
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
