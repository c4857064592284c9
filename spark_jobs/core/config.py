"""Typed, validated configuration loaded from params.yaml plus ``--set key=value`` overrides.

Every stage calls :func:`load_config` once in ``main()``; functions below receive values from
the frozen :class:`Config`, never read files or the environment themselves.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import types
import typing
from collections.abc import MutableMapping
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

DEFAULT_PARAMS = "params.yaml"

Byte = Annotated[int, Field(ge=0, le=255)]
RGB = tuple[Byte, Byte, Byte]
# A seed every consumer accepts, including the ones derived from it: numpy and MLlib take up to
# 2**32 - 1 and 2**63 - 1, and training seeds its generators with seed * 1_000_003 + epoch * 1009 + rank.
Seed = Annotated[int, Field(ge=0, le=2**32 - 1)]


def _named_source(value: str) -> str:
    if not value.strip():
        raise ValueError("is empty; name a folder or an s3:// prefix (an empty path would mean the working directory)")
    return value


# A folder or object-store prefix to read from.
SourcePath = Annotated[str, AfterValidator(_named_source)]


def _usable_root(value: str) -> str:
    if not value.strip():
        raise ValueError("is empty; name the folder the stages write under (e.g. data)")
    if os.path.normpath(os.path.abspath(os.path.expanduser(value))) == os.path.abspath(os.sep):
        raise ValueError("is the file system's root; the stages would write their folders there")
    return value


def _dotted_lowercase(extensions: tuple[str, ...]) -> tuple[str, ...]:
    bad = [e for e in extensions if not e.startswith(".") or e != e.lower()]
    if bad:
        raise ValueError(f"extensions must be lower-case and start with '.', got {bad}")
    return extensions


# File name endings matched case-insensitively (written lower-case, with their dot).
Extensions = Annotated[tuple[str, ...], AfterValidator(_dotted_lowercase)]


class ConfigError(ValueError):
    """A parameter file or override that cannot be used; the message names the key."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DataConfig(_Section):
    root: Annotated[str, AfterValidator(_usable_root)] = "data"
    lock_wait_s: float = Field(600.0, ge=0.0)


# The master URLs Spark 4 accepts (docs: "Master URLs"): local mode, a standalone cluster (one or
# more masters), YARN, Kubernetes.
MASTER_URL = (
    r"local(\[(\*|[1-9]\d*)(,[1-9]\d*)?\])?|local-cluster\[[1-9]\d*,[1-9]\d*,[1-9]\d*\]"
    r"|spark://[^\s/:,]+:\d+(,[^\s/:,]+:\d+)*|yarn|k8s://\S+"
)


def _master_url(value: str) -> str:
    if not re.fullmatch(MASTER_URL, value):
        raise ValueError("is not a Spark master URL: local, local[N], local[*], spark://host:port, yarn or k8s://...")
    return value


class SparkConfig(_Section):
    master: Annotated[str, AfterValidator(_master_url)] = "local[*]"
    app_name: str = "image-platform"
    driver_memory: str = Field("4g", pattern=r"^\d+[kmgt]?$")
    executor_memory: str = Field("2g", pattern=r"^\d+[kmgt]?$")
    python: str | None = None
    arrow_max_records_per_batch: int = Field(256, ge=1)
    task_max_failures: int = Field(4, ge=1)
    shuffle_partitions: int = Field(8, ge=1)
    parquet_compression: Literal["none", "snappy", "gzip", "zstd", "lz4"] = "zstd"
    memory_fraction: float = Field(0.6, gt=0.0, lt=1.0)
    files_max_partition_bytes: int = Field(64 * 2**20, ge=2**16)
    files_open_cost_bytes: int = Field(16 * 2**10, ge=0)
    log_level: Literal["ALL", "DEBUG", "INFO", "WARN", "ERROR", "FATAL", "OFF"] = "WARN"
    driver_java_options: str = "-XX:TieredStopAtLevel=1"
    conf: dict[str, str] = Field(default_factory=dict)


class GridsConfig(_Section):
    images: int = Field(1800, ge=3, le=1_000_000)
    side: int = Field(2, ge=2, le=3)  # cells per side; the digits of a grid are distinct
    inbox: int = Field(60, ge=0)
    seed: Seed = 0


class SampleConfig(_Section):
    kind: Literal["digits", "grids"] = "digits"
    image_size: int = Field(32, ge=8, le=1024)
    resample: Literal["nearest", "bilinear", "bicubic", "lanczos"] = "bicubic"
    grids: GridsConfig = GridsConfig()


class ResizeConfig(_Section):
    policy: Literal["pad", "crop", "stretch"] = "pad"
    resample: Literal["nearest", "bilinear", "bicubic", "lanczos"] = "lanczos"
    fill: RGB = (0, 0, 0)


class PreprocessConfig(_Section):
    denoise: Literal["none", "median"] = "none"
    median_size: int = Field(3, ge=3, le=15)
    contrast: Literal["none", "autocontrast", "equalize"] = "none"

    @model_validator(mode="after")
    def _odd_kernel(self) -> PreprocessConfig:
        if self.median_size % 2 == 0:
            raise ValueError("median_size must be odd")
        return self


class SplitConfig(_Section):
    train: float = Field(0.7, ge=0.0, le=1.0)
    val: float = Field(0.15, ge=0.0, le=1.0)
    test: float = Field(0.15, ge=0.0, le=1.0)
    seed: Seed = 0

    @model_validator(mode="after")
    def _sums_to_one(self) -> SplitConfig:
        total = self.train + self.val + self.test
        if abs(total - 1.0) > 1e-6:
            raise ValueError(f"train + val + test must be 1.0, got {total:g}")
        return self

    def fractions(self) -> dict[str, float]:
        return {"train": self.train, "val": self.val, "test": self.test}


class IngestConfig(_Section):
    source: SourcePath = "data/sample/digits"
    image_size: int = Field(32, ge=8, le=4096)
    extensions: Extensions = (".png", ".jpg", ".jpeg", ".gif", ".bmp", ".tif", ".tiff", ".webp")
    min_side: int = Field(8, ge=1)
    max_image_pixels: int = Field(89_478_485, ge=1)
    max_file_bytes: int = Field(512 * 2**20, ge=1)
    alpha_background: RGB = (255, 255, 255)
    fetch_threads: int = Field(8, ge=1, le=256)
    resize: ResizeConfig = ResizeConfig()
    preprocess: PreprocessConfig = PreprocessConfig()
    split: SplitConfig = SplitConfig()


# MLlib's PCA builds a d x d covariance matrix on the driver: 8192^2 doubles = 512 MiB.
PCA_MAX_DIM = 8192


class ClassicalConfig(_Section):
    hog_orientations: int = Field(9, ge=1, le=36)
    hog_pixels_per_cell: int = Field(8, ge=2)
    hog_cells_per_block: int = Field(2, ge=1)
    color_bins: int = Field(16, ge=2, le=256)
    pca_k: int = Field(64, ge=1)

    def hog_dim(self, image_size: int) -> int:
        """Length of the HOG descriptor of an ``image_size`` square (scikit-image's layout)."""
        cells = image_size // self.hog_pixels_per_cell
        blocks = max(cells - self.hog_cells_per_block + 1, 0)
        return blocks * blocks * self.hog_cells_per_block**2 * self.hog_orientations

    def descriptor_dim(self, image_size: int) -> int:
        """Length of HOG + per-channel colour histogram, before PCA."""
        return self.hog_dim(image_size) + 3 * self.color_bins

    def problem(self, image_size: int) -> str | None:
        """Why these settings cannot describe ``image_size`` images (None when they can)."""
        dim = self.descriptor_dim(image_size)
        if self.hog_dim(image_size) == 0:
            return (
                f"a {image_size}px image holds no HOG block of {self.hog_cells_per_block}x{self.hog_cells_per_block} "
                f"cells of {self.hog_pixels_per_cell}px (raise ingest.image_size or lower hog_pixels_per_cell)"
            )
        if dim > PCA_MAX_DIM:
            return (
                f"{image_size}px images give descriptors of length {dim} > {PCA_MAX_DIM}, too long for MLlib's PCA "
                f"(a {dim}x{dim} covariance on the driver): raise hog_pixels_per_cell"
            )
        if self.pca_k > dim:
            return f"pca_k={self.pca_k} exceeds the descriptor length {dim} of {image_size}px images"
        return None


class CnnConfig(_Section):
    backbone: str = "models/backbone/backbone.pt2"
    architecture: str | None = None
    threads: int = Field(1, ge=1, le=256)
    mean: tuple[float, float, float] = (0.0, 0.0, 0.0)
    std: tuple[Annotated[float, Field(gt=0.0)], Annotated[float, Field(gt=0.0)], Annotated[float, Field(gt=0.0)]] = (
        1.0,
        1.0,
        1.0,
    )


class TilesConfig(_Section):
    enabled: bool = False
    size: int = Field(128, ge=8, le=16384)
    overlap: float = Field(0.1, ge=0.0, lt=1.0)
    edge: Literal["shift", "pad"] = "shift"
    max_per_image: int = Field(4096, ge=1)

    @property
    def stride(self) -> int:
        """Step between tile origins: ``size`` minus the overlap, at least one pixel."""
        return max(1, self.size - round(self.size * self.overlap))


class FeaturesConfig(_Section):
    kind: Literal["classical", "cnn"] = "classical"
    batch_size: int = Field(64, ge=1, le=65536)
    classical: ClassicalConfig = ClassicalConfig()
    cnn: CnnConfig = CnnConfig()
    tiles: TilesConfig = TilesConfig()


class BackboneConfig(_Section):
    architecture: Literal["small_cnn"] = "small_cnn"
    width: int = Field(16, ge=4, le=512)
    epochs: int = Field(3, ge=0)
    batch_size: int = Field(64, ge=1)
    learning_rate: float = Field(0.003, gt=0.0)
    max_images: int = Field(20000, ge=1)
    seed: Seed = 0
    output: str = "models/backbone"


ModelKind = Literal["mllib", "cnn", "autoencoder", "tiles_mean", "tiles_gru"]
# The models that read an image as the sequence of its tiles' feature vectors (features.tiles).
TILE_KINDS = ("tiles_mean", "tiles_gru")
BACKBONES = ("small_cnn", "resnet18")


class MllibConfig(_Section):
    classifier: Literal["logistic_regression", "random_forest"] = "logistic_regression"
    max_iter: int = Field(200, ge=1)
    reg_param: float = Field(0.001, ge=0.0)
    elastic_net_param: float = Field(0.0, ge=0.0, le=1.0)
    num_trees: int = Field(100, ge=1)
    max_depth: int = Field(12, ge=1, le=30)


class CnnTrainConfig(_Section):
    width: int = Field(32, ge=4, le=512)
    dropout: float = Field(0.2, ge=0.0, lt=1.0)
    epochs: int = Field(12, ge=0)
    batch_size: int = Field(64, ge=1)
    learning_rate: float = Field(0.003, gt=0.0)
    weight_decay: float = Field(0.0001, ge=0.0)
    augment_shift: int = Field(2, ge=0, le=64)
    init: str | None = None
    init_architecture: Literal["small_cnn", "resnet18"] | None = None
    freeze_epochs: int = Field(0, ge=0)
    backbone_learning_rate: float | None = Field(None, gt=0.0)


class TilesTrainConfig(_Section):
    hidden: int = Field(64, ge=1, le=4096)
    bidirectional: bool = True
    dropout: float = Field(0.1, ge=0.0, lt=1.0)
    epochs: int = Field(30, ge=0)
    batch_size: int = Field(64, ge=1)
    learning_rate: float = Field(0.003, gt=0.0)
    weight_decay: float = Field(0.0001, ge=0.0)


class AutoencoderConfig(_Section):
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


class TrainConfig(_Section):
    model: ModelKind = "mllib"
    output: str = "models"
    seed: Seed = 0
    class_weighting: Literal["none", "balanced", "auto"] = "auto"
    skew_ratio: float = Field(1.5, ge=1.0)
    num_processes: int = Field(2, ge=1, le=1024)
    local_mode: bool | Literal["auto"] = "auto"
    threads: int = Field(1, ge=1, le=256)
    checkpoint_every: int = Field(1, ge=1)
    mllib: MllibConfig = MllibConfig()
    cnn: CnnTrainConfig = CnnTrainConfig()
    autoencoder: AutoencoderConfig = AutoencoderConfig()
    tiles: TilesTrainConfig = TilesTrainConfig()

    @model_validator(mode="after")
    def _batch_splits_over_ranks(self) -> TrainConfig:
        for name in ("cnn", "autoencoder", "tiles"):
            if getattr(self, name).batch_size < self.num_processes:
                raise ValueError(f"train.{name}.batch_size must be >= train.num_processes (each rank takes a share)")
        return self


class EvaluateConfig(_Section):
    models: tuple[ModelKind, ...] = ("mllib", "cnn", "autoencoder")
    baselines: tuple[ModelKind, ...] = ()
    reports: str = "reports"
    champion: str = "models/champion"
    rejected: str = "models/rejected"
    batch_size: int = Field(256, ge=1)
    threads: int = Field(1, ge=1, le=256)
    int8: bool = True

    @model_validator(mode="after")
    def _distinct_models(self) -> EvaluateConfig:
        if not self.models or len(set(self.models)) != len(self.models):
            raise ValueError(f"evaluate.models must list distinct models, got {list(self.models)}")
        if len(set(self.baselines)) != len(self.baselines) or set(self.baselines) & set(self.models):
            raise ValueError(
                f"evaluate.baselines must list distinct models that are not candidates, got {list(self.baselines)}"
            )
        return self


class CascadeConfig(_Section):
    enabled: bool = False
    light: str = "models/mllib"
    confidence: float = Field(0.9, ge=0.0, le=1.0)


class VideoConfig(_Section):
    """Video files in an inbox: every ``every_nth`` decoded frame is scored as an image."""

    extensions: Extensions = (".mp4", ".avi", ".mkv", ".mov", ".webm")
    every_nth: int = Field(10, ge=1)
    max_frames: int = Field(1000, ge=1)  # sampled frames per video; a longer one is quarantined


class StreamConfig(_Section):
    """``score.mode: stream``: micro-batches over the inbox (spark_jobs.score's docstring)."""

    trigger_s: float = Field(1.0, gt=0.0)  # a micro-batch starts at most this often
    max_files_per_trigger: int = Field(1000, ge=1)
    window_rows: int = Field(2000, ge=1)  # the volume checks' rolling window: the last N rows
    min_window_rows: int = Field(200, ge=1)  # volume checks wait until the window holds this many
    stop_on_reject: bool = False  # exit with code 3 after a rejected micro-batch
    retry_rejected_s: float = Field(600.0, ge=0.0)  # a rejected batch's files are retried after this
    dedupe_hours: int = Field(168, ge=1)  # hours of the stream table the already-scored lookup reads
    latency_batches: int = Field(100, ge=1)  # the status's latency percentiles: the last N batches
    available_now: bool = False  # score what is in the inbox, then stop (a backfill; the tests)


class ScoreConfig(_Section):
    mode: Literal["batch", "stream"] = "batch"
    inbox: SourcePath = "data/sample/inbox"
    model: str | None = None
    task: Literal["classifier", "anomaly"] = "classifier"
    top_k: int = Field(3, ge=1)
    quantize: Literal["none", "int8"] = "none"
    batch_size: int = Field(256, ge=1)
    threads: int = Field(1, ge=1, le=256)
    low_confidence: float = Field(0.5, ge=0.0, le=1.0)
    cascade: CascadeConfig = CascadeConfig()
    video: VideoConfig = VideoConfig()
    stream: StreamConfig = StreamConfig()


class PredictionsGateConfig(_Section):
    max_low_confidence: float = Field(0.2, ge=0.0, le=1.0)
    max_class_drift: float | None = Field(None, ge=0.0, le=1.0)
    min_rows_for_drift: int = Field(200, ge=1)
    probability_tolerance: float = Field(1e-4, ge=0.0, le=0.1)


class ModelGateConfig(_Section):
    min_accuracy: float = Field(0.9, ge=0.0, le=1.0)
    min_macro_f1: float = Field(0.9, ge=0.0, le=1.0)
    max_regression: float = Field(0.01, ge=0.0, le=1.0)
    min_auroc: float = Field(0.8, ge=0.0, le=1.0)


class RawGateConfig(_Section):
    min_per_class: int = Field(20, ge=0)
    max_quarantine_ratio: float = Field(0.05, ge=0.0, le=1.0)
    split_tolerance: float = Field(0.05, ge=0.0, le=1.0)


class FeaturesGateConfig(_Section):
    max_zero_fraction: float = Field(0.01, ge=0.0, le=1.0)


class GateConfig(_Section):
    raw: RawGateConfig = RawGateConfig()
    features: FeaturesGateConfig = FeaturesGateConfig()
    model: ModelGateConfig = ModelGateConfig()
    predictions: PredictionsGateConfig = PredictionsGateConfig()


# Parameters that change how fast or how patiently a stage runs, never what it writes: dvc.yaml
# lists none of them (changing one re-runs nothing) and manifests do not record them.
SPEED_ONLY = (
    "data.lock_wait_s",
    "ingest.fetch_threads",
    "features.batch_size",
    "features.cnn.threads",
    "evaluate.batch_size",
    "evaluate.threads",
    "score.batch_size",
    "score.threads",
)


class Config(_Section):
    """The whole params.yaml, validated."""

    data: DataConfig = DataConfig()
    spark: SparkConfig = SparkConfig()
    sample: SampleConfig = SampleConfig()
    ingest: IngestConfig = IngestConfig()
    backbone: BackboneConfig = BackboneConfig()
    features: FeaturesConfig = FeaturesConfig()
    train: TrainConfig = TrainConfig()
    evaluate: EvaluateConfig = EvaluateConfig()
    score: ScoreConfig = ScoreConfig()
    gate: GateConfig = GateConfig()

    def section(self, *names: str) -> dict[str, Any]:
        """The named top-level sections (``gate.raw`` style paths allowed) as plain data, without
        the :data:`SPEED_ONLY` parameters: what a manifest records as the params that shaped it."""
        dumped = self.model_dump(mode="json")
        for key in SPEED_ONLY:
            *parents, leaf = key.split(".")
            node = dumped
            for part in parents:
                node = node[part]
            node.pop(leaf, None)
        out: dict[str, Any] = {}
        for name in names:
            node: Any = dumped
            for part in name.split("."):
                node = node[part]
            out[name] = node
        return out


def params_hash(params: dict[str, Any]) -> str:
    """sha256 of the canonical JSON form of ``params``."""
    blob = json.dumps(params, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(blob).hexdigest()


def _leaf_type(path: list[str]) -> Any:
    """The declared type of the parameter at ``path`` (None for an unknown key)."""
    model: Any = Config
    annotation: Any = None
    for part in path:
        fields = getattr(model, "model_fields", None)
        if not fields or part not in fields:
            return None
        annotation = fields[part].annotation
        model = annotation
    return annotation


def _is_text(annotation: Any) -> tuple[bool, bool]:
    """(a string parameter, one that may be null): its value is taken verbatim."""
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    optional = typing.get_origin(annotation) in (typing.Union, types.UnionType) and len(args) == 1
    leaf = args[0] if optional else annotation
    literal = typing.get_origin(leaf) is Literal and all(isinstance(v, str) for v in typing.get_args(leaf))
    return leaf is str or literal, optional


def parse_value(key: str, raw: str) -> Any:
    """The value of ``--set key=raw``, read by the parameter's type: a string parameter takes the
    text verbatim (``#``, ``:`` and quotes in a path are kept; ``null`` clears one that may be null),
    any other is parsed as YAML (numbers, booleans, lists, mappings)."""
    text, optional = _is_text(_leaf_type(key.split(".")))
    if text:
        return None if optional and raw.strip() in ("null", "~") else raw
    try:
        return yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as exc:
        raise ConfigError(f"--set {key}: value {raw!r} is not valid YAML ({exc.problem})") from None


def parse_override(text: str) -> tuple[str, Any]:
    """``section.key=value`` as the key and its typed value (:func:`parse_value`)."""
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key or any(not part for part in key.split(".")):
        raise ConfigError(f"--set {text!r}: expected section.key=value, e.g. ingest.image_size=64")
    return key, parse_value(key, raw)


def set_override(tree: MutableMapping[str, Any], text: str, existing: str | None = None) -> tuple[str, Any, bool]:
    """Apply one ``--set a.b.c=value`` override to ``tree`` in place (any mapping: a plain dict, or
    ruamel's round-trip map of a params file whose comments must survive); ``(key, typed value,
    whether the tree changed)``. Missing sections are created, unless ``existing`` names the file
    whose keys the override must already exist in (then its absence is a :class:`ConfigError`)."""
    key, value = parse_override(text)
    *parents, leaf = key.split(".")
    node = tree
    for part in parents:
        if existing is not None and part not in node:
            raise ConfigError(f"{existing} has no section {key!r} (override {text!r})")
        child = node.setdefault(part, {})
        if not isinstance(child, MutableMapping):
            raise ConfigError(f"--set {key}: {part} is a value, not a section")
        node = child
    if existing is not None and leaf not in node:
        raise ConfigError(f"{existing} has no parameter {key!r} (override {text!r})")
    changed = leaf not in node or node[leaf] != value
    if changed:
        node[leaf] = value
    return key, value, changed


def apply_overrides(tree: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """A copy of ``tree`` with each ``a.b.c=value`` override applied (:func:`set_override`)."""
    result = json.loads(json.dumps(tree))
    for text in overrides:
        set_override(result, text)
    return result


def _describe(error: dict[str, Any]) -> str:
    if not error["loc"]:  # a rule across sections: its message names the keys
        return str(error["msg"]).removeprefix("Value error, ")
    key = ".".join(str(p) for p in error["loc"])
    if error["type"] == "extra_forbidden":
        return f"unknown parameter {key}"
    return f"parameter {key}: {str(error['msg']).removeprefix('Value error, ')} (got {error.get('input')!r})"


def validate(tree: dict[str, Any]) -> Config:
    """Typed config from a plain tree; :class:`ConfigError` names every bad key, one per line."""
    try:
        return Config.model_validate(tree)
    except ValidationError as exc:
        raise ConfigError("\n".join(_describe(e) for e in exc.errors())) from None


def load_config(path: str | Path = DEFAULT_PARAMS, overrides: list[str] | None = None) -> Config:
    """Config from a params file with ``--set`` style overrides applied."""
    path = Path(path)
    try:
        tree = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except FileNotFoundError:
        raise ConfigError(f"params file {path} not found") from None
    except IsADirectoryError:
        raise ConfigError(f"params file {path} is a directory, not a file") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"params file {path} is not UTF-8 text (byte {exc.start})") from None
    except OSError as exc:
        raise ConfigError(f"params file {path} cannot be read: {exc.strerror or exc}") from None
    except yaml.YAMLError as exc:
        problem = " ".join(str(exc).split())
        raise ConfigError(f"params file {path} is not valid YAML: {problem}") from None
    if not isinstance(tree, dict):
        raise ConfigError(f"params file {path}: expected a mapping of sections at the top level")
    return validate(apply_overrides(tree, overrides or []))


def arg_parser(stage: str, description: str | None = None) -> argparse.ArgumentParser:
    """The command line every stage shares: ``[--params FILE] [--set key=value ...]``."""
    parser = argparse.ArgumentParser(
        prog=f"python -m spark_jobs.{stage}",
        description=description,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--params", default=DEFAULT_PARAMS, help="params file (default: %(default)s)")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override one parameter, e.g. --set ingest.image_size=64 (repeatable)",
    )
    return parser
