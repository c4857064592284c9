"""Builders of real test inputs: image files of every kind, class trees, small configs."""

from __future__ import annotations

import io
import socket
import struct
import warnings
import zlib
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from spark_jobs.core.config import apply_overrides, validate
from spark_jobs.params import Config, load

REPO = Path(__file__).resolve().parents[1]

# Small, quick model settings for the 3-class, 32 px ingested fixture (conftest's ``ingested``).
SMALL_MODELS = (
    "features.classical.pca_k=8",
    "train.cnn.width=8",
    "train.cnn.epochs=15",
    "train.cnn.batch_size=16",
    "train.cnn.learning_rate=0.01",
    "train.cnn.augment_shift=0",
    "train.cnn.dropout=0.0",
    "train.autoencoder.width=8",
    "train.autoencoder.latent=8",
    "train.autoencoder.epochs=6",
    "train.autoencoder.batch_size=16",
    "train.autoencoder.holdout_class=2",
    "train.autoencoder.threshold_percentile=95",
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_config(tmp_path: Path, *overrides: str) -> Config:
    """The repo's params.yaml with outputs under ``tmp_path`` and a small local Spark."""
    return load(
        REPO / "params.yaml",
        [f"data.root={tmp_path / 'data'}", "spark.master=local[2]", "spark.shuffle_partitions=2", *overrides],
    )


def png_bytes(array: np.ndarray, mode: str | None = None, **save: object) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array, mode=mode).save(buf, format="PNG", **save)
    return buf.getvalue()


def encode(image: Image.Image, fmt: str, **save: object) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format=fmt, **save)
    return buf.getvalue()


def class_image(label: int, index: int, size: int = 24) -> bytes:
    """A distinct, deterministic RGB PNG for class ``label``: a bar whose position is the class."""
    rng = np.random.default_rng(label * 10_000 + index)
    array = rng.integers(0, 60, size=(size, size, 3), dtype=np.uint8)
    array[:, label * 3 : label * 3 + 3, :] = 255
    return png_bytes(array)


def video_bytes(frames: list[np.ndarray], container: str = "matroska", codec: str = "ffv1", rate: int = 5) -> bytes:
    """A video of ``frames`` (HWC uint8 RGB, even sides) encoded with PyAV: ``ffv1`` in Matroska
    in RGB keeps every pixel (so a frame scores as its picture does); ``mpeg4`` in ``mp4`` is lossy."""
    import av

    buffer = io.BytesIO()
    with av.open(buffer, "w", format=container) as out:
        stream = out.add_stream(codec, rate=rate)
        stream.height, stream.width = frames[0].shape[:2]
        stream.pix_fmt = "bgr0" if codec == "ffv1" else "yuv420p"
        for array in frames:
            out.mux(stream.encode(av.VideoFrame.from_ndarray(array, format="rgb24")))
        out.mux(stream.encode())
    return buffer.getvalue()


def class_frames(labels: list[int], start: int) -> list[np.ndarray]:
    """The pictures of :func:`class_image` (``labels`` in turn, indices from ``start``) as arrays."""
    return [np.asarray(Image.open(io.BytesIO(class_image(label, start + i)))) for i, label in enumerate(labels)]


def score_config(trained: Config, tmp_path: Path, kind: str, *overrides: str) -> Config:
    """Scoring ``tmp_path / "inbox"`` into ``tmp_path / "data"`` with the ``kind`` model of ``trained``."""
    return with_overrides(
        trained,
        f"data.root={tmp_path / 'data'}",
        f"score.inbox={tmp_path / 'inbox'}",
        f"score.model={Path(trained.train.output) / kind}",
        *overrides,
    )


def write_class_tree(root: Path, classes: int, per_class: int, size: int = 24) -> dict[str, str]:
    """``root/<label>/img_<i>.png`` files; returns {file URI: label}."""
    written = {}
    for label in range(classes):
        folder = root / str(label)
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            path = folder / f"img_{i:03d}.png"
            path.write_bytes(class_image(label, i, size))
            written[path.resolve().as_uri()] = str(label)
    return written


def write_inbox(folder: Path, start: int, count: int, classes: int = 3) -> dict[str, str]:
    """A scoring inbox: ``count`` new images per class (indices from ``start``, so content a model
    trained on :func:`write_class_tree` never saw), flat in ``folder``; returns {file name: label}."""
    folder.mkdir(parents=True, exist_ok=True)
    truth = {}
    for label in range(classes):
        for i in range(start, start + count):
            name = f"new_{label}_{i:03d}.png"
            (folder / name).write_bytes(class_image(label, i))
            truth[name] = str(label)
    return truth


def s3_inbox(bucket: str, prefix: str, local: Path, start: int, count: int) -> dict[str, str]:
    """:func:`write_inbox` into ``local``, uploaded to a new bucket under ``prefix/`` of the S3
    server the AWS_* variables point at; returns {file name: label}."""
    import boto3

    client = boto3.client("s3")
    client.create_bucket(Bucket=bucket)
    truth = write_inbox(local, start, count)
    for name in truth:
        client.put_object(Bucket=bucket, Key=f"{prefix}/{name}", Body=(local / name).read_bytes())
    return truth


def with_overrides(cfg: Config, *overrides: str) -> Config:
    """``cfg`` with ``--set``-style overrides applied and validated."""
    return validate(apply_overrides(cfg.model_dump(mode="json"), list(overrides), Config), Config)


def link_ingest(ingested_dir: Path, tmp_path: Path, *overrides: str) -> Config:
    """:func:`make_config` whose ``data.root`` holds a link to a shared, published ingest output."""
    root = tmp_path / "data"
    root.mkdir(parents=True, exist_ok=True)
    (root / "ingest").symlink_to(ingested_dir, target_is_directory=True)
    return make_config(tmp_path, *overrides)


def photo_tree(root: Path) -> Path:
    """The real photographs bundled with scikit-learn as ``root/<name>/<name>.jpg`` (640x427)."""
    from spark_jobs.sample import write_photos

    write_photos(root)
    return root


def dvc_view(root: Path = REPO, dvcfile: str = "dvc.yaml") -> dict[str, dict]:
    """The pipeline as DVC itself reads ``root``'s ``dvcfile`` (its Python API: ``foreach``
    expanded, ``${...}`` interpolated): ``{stage: {"cmd", "deps", "params", "outs", "needs"}}``
    (``needs``: stages of the same file), the reference the DAG and config tests compare against
    (independent of the plugin's own reading)."""
    from dvc.dependency.param import ParamsDependency
    from dvc.repo import Repo
    from dvc.stage import PipelineStage

    with Repo(str(root)) as repo, warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"_NoneStep\.value will soon raise", category=DeprecationWarning)
        graph = repo.index.graph
        return {
            s.name: {
                "cmd": s.cmd,
                "deps": [d.def_path for d in s.deps if not isinstance(d, ParamsDependency)],
                "params": [k for d in s.deps if isinstance(d, ParamsDependency) for k in d.params],
                "outs": [o.def_path for o in s.outs],
                "needs": {n.name for n in graph.successors(s) if n.dvcfile.relpath == dvcfile},
            }
            for s in repo.index.stages
            if isinstance(s, PipelineStage) and s.dvcfile.relpath == dvcfile
        }


def model_card(**changes: object) -> Any:
    """A valid :class:`spark_jobs.ml.cards.ModelCard` of a small cnn, with ``changes`` applied."""
    from spark_jobs.core import manifest
    from spark_jobs.core.ingest_config import IngestConfig
    from spark_jobs.ml import cards

    fields = {
        "kind": "cnn",
        "task": "classifier",
        "version": "cnn-20261203T000000Z-0123abcd",
        "classes": ["0", "1"],
        "image_size": 32,
        "input": "float RGB NCHW in [0, 1]",
        "ingest_settings": IngestConfig(image_size=32),
        "class_counts": {"0": 10, "1": 12},
        "arch": {"width": 8, "classes": 2, "dropout": 0.0},
        "files": cards.ModelFiles(weights=cards.WEIGHTS),
        "params": {"seed": 0},
        "data": cards.CardData(ingest_manifest_sha256="ab" * 32),
        "job_version": manifest.JobVersion(package="0.1.0", git_commit="f" * 40, dirty=False),
        "architecture": "small_cnn_classifier",
        "weights_sha256": "cd" * 32,
    }
    return cards.ModelCard(**(fields | changes))


def model_folder(folder: Path, **changes: object) -> Path:
    """A model folder holding the card of :func:`model_card`, a weights file it records the
    sha256 of (not a loadable model) and a marker file."""
    import hashlib

    from spark_jobs.ml import cards

    folder.mkdir(parents=True, exist_ok=True)
    weights = f"weights of {changes.get('version', '')}".encode()
    (folder / cards.WEIGHTS).write_bytes(weights)
    changes = {"weights_sha256": hashlib.sha256(weights).hexdigest()} | changes
    cards.write_card(folder, model_card(**changes))
    (folder / "marker").write_text(str(changes.get("version", "")))
    return folder


def png_chunks(data: bytes) -> list[tuple[bytes, bytes]]:
    """A PNG file's chunks as ``(type, body)``, CRCs dropped."""
    pos, out = 8, []
    while pos + 8 <= len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        out.append((data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + length]))
        pos += 12 + length
    return out


def png_from_chunks(chunks: list[tuple[bytes, bytes]]) -> bytes:
    """A PNG file of ``chunks``, each with a correct CRC (so only what a chunk says is wrong)."""
    out = b"\x89PNG\r\n\x1a\n"
    for kind, body in chunks:
        out += struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
    return out


def damaged_pngs() -> dict[str, bytes]:
    """PNG files whose headers read and whose pixel data is broken, each with valid CRCs, built
    here (not Pillow's test files): a text chunk after the pixels cut short, a deflate stream
    with a bad block type, a short IDAT, and an APNG whose frame sequence is out of order."""
    rng = np.random.default_rng(7)
    pixels = rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)
    ihdr, idat, iend = png_chunks(png_bytes(pixels))
    with_text = png_from_chunks([ihdr, idat, (b"tEXt", b"Comment\x00" + b"x" * 400), iend])
    bad_block = bytearray(idat[1])
    bad_block[2] |= 0x06  # BTYPE 11: reserved, a deflate error
    frames = [Image.fromarray(np.roll(pixels, 8 * i, axis=0)) for i in range(3)]
    animated = io.BytesIO()
    frames[0].save(animated, "PNG", save_all=True, append_images=frames[1:])
    apng = png_chunks(animated.getvalue())
    second_fctl = [i for i, (kind, _) in enumerate(apng) if kind == b"fcTL"][1]
    return {
        "text_chunk_cut_short": with_text[:-100],
        "corrupt_deflate_stream": png_from_chunks([ihdr, (b"IDAT", bytes(bad_block)), iend]),
        "idat_cut_short": png_from_chunks([ihdr, (b"IDAT", idat[1][: len(idat[1]) // 2]), iend]),
        "apng_frame_sequence_error": png_from_chunks([c for i, c in enumerate(apng) if i != second_fctl]),
    }
