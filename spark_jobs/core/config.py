"""Typed, validated configuration: params.yaml plus ``--set key=value`` overrides, read by section.

Every stage calls :func:`load_config` once in ``main()`` with its own :class:`Params`: the sections
it reads, each validated whole (an unknown key or a bad value is one error naming it), besides
:class:`DataConfig` and :class:`SparkConfig`, which every stage reads. A section's schema lives with
the code it configures (``ingest`` in :mod:`spark_jobs.core.ingest_config`, ``score`` in
:mod:`spark_jobs.scoring.config`, a stage's own section in its module); a stage imports only the
schemas of what it reads, so its DVC dependencies name only those. Sections a stage does not read
are not validated by it (an unknown section name still is an error); the whole file's schema is
:class:`spark_jobs.params.Config`, for the tools that read all of it. Functions below ``main()``
receive values from the frozen params, never read files or the environment themselves.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import stat
import types
import typing
from collections.abc import MutableMapping
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar
from urllib.parse import unquote_to_bytes, urlparse

import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, model_validator

DEFAULT_PARAMS = "params.yaml"
DEFAULT_SOURCE = "data/sample/digits"  # ingest.source
DEFAULT_INBOX = "data/sample/inbox"  # score.inbox
# Every section of params.yaml; a stage refuses any other name (a typo), whatever it reads.
SECTIONS = ("data", "spark", "sample", "ingest", "backbone", "features", "train", "evaluate", "score", "gate", "drift")

Byte = Annotated[int, Field(ge=0, le=255)]
RGB = tuple[Byte, Byte, Byte]
# A seed every consumer accepts, including the ones derived from it: numpy and MLlib take up to
# 2**32 - 1 and 2**63 - 1, and training seeds its generators with seed * 1_000_003 + epoch * 1009 + rank.
Seed = Annotated[int, Field(ge=0, le=2**32 - 1)]


MAX_SHOWN = 80  # characters of a value a message shows


def cut(text: str, limit: int = MAX_SHOWN) -> str:
    """``text`` for a one-line message: at most ``limit`` characters, and how many were left out."""
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text) - limit} more characters)"


def resolve_path(value: str) -> str:
    """A path as a user means it, resolved once, before any check or write: ``~`` and ``~user``
    expanded, a ``file:`` URI as the local path it names (its %-escapes decoded to the bytes they
    stand for, so any name the file system allows can be given); ``s3://`` and relative paths
    as they are."""
    if value.startswith("file:"):
        parsed = urlparse(value)
        if parsed.netloc not in ("", "localhost"):
            raise ValueError(f"names a file on host {parsed.netloc!r}; only local file: URIs are read")
        return os.fsdecode(unquote_to_bytes(parsed.path))
    return os.path.expanduser(value) if value.startswith("~") else value


# A local folder or file (or an s3:// URI where one is read), resolved by resolve_path.
LocalPath = Annotated[str, AfterValidator(resolve_path)]


def _named_source(value: str) -> str:
    if not value.strip():
        raise ValueError("is empty; name a folder or an s3:// prefix (an empty path would mean the working directory)")
    return resolve_path(value)


# A folder or object-store prefix to read from.
SourcePath = Annotated[str, AfterValidator(_named_source)]


def _usable_root(value: str) -> str:
    if not value.strip():
        raise ValueError("is empty; name the folder the stages write under (e.g. data)")
    if value.startswith("s3:"):
        raise ValueError("is an s3:// URI; data.root is a local (or mounted) folder")
    value = resolve_path(value)
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError(
            "has bytes that are not UTF-8 in its name: Spark's JVM cannot name such a folder (sources and "
            "inboxes may have them); rename it"
        ) from None
    if os.path.normpath(os.path.abspath(value)) == os.path.abspath(os.sep):
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


class Section(BaseModel):
    """A section (or sub-section) of params.yaml, read whole: unknown keys are errors."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class View(BaseModel):
    """The keys of a section one stage reads from a section another stage owns (the rest of that
    section is the owner's to validate)."""

    model_config = ConfigDict(extra="ignore", frozen=True)


class DataConfig(Section):
    root: Annotated[str, AfterValidator(_usable_root)] = "data"
    lock_wait_s: float = Field(600.0, ge=0.0)
    progress_s: float = Field(10.0, ge=0.0)  # a progress line of a stage's image pass this often (0: none)


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


# Spark settings whose type a typo breaks at start-up with a JVM trace: checked before Spark starts
# (Spark's own forms: a byte string as JavaUtils.byteStringAs reads it, an integer, a boolean).
# Every other ``spark.sql.*`` value is checked by Spark itself as the session applies it.
BYTE_STRING = r"\d+([kmgtp]b?|b)?"
SPARK_INTEGERS = (
    "spark.sql.shuffle.partitions",
    "spark.default.parallelism",
    "spark.driver.cores",
    "spark.executor.cores",
    "spark.executor.instances",
    "spark.cores.max",
    "spark.task.cpus",
    "spark.task.maxFailures",
)


def _spark_conf_problem(key: str, value: str) -> str | None:
    leaf = key.rsplit(".", 1)[-1]
    if leaf in ("memory", "memoryOverhead", "maxResultSize", "offHeap.size") or key.endswith(".offHeap.size"):
        if not re.fullmatch(BYTE_STRING, value.strip(), re.IGNORECASE):
            return "is not a size (e.g. 512m, 4g)"
    elif key in SPARK_INTEGERS:
        if not re.fullmatch(r"-?\d+", value.strip()):
            return "is not an integer"
    elif leaf == "enabled" and value.strip().lower() not in ("true", "false"):
        return "is not true or false"
    return None


def _typed_spark_conf(conf: dict[str, str]) -> dict[str, str]:
    for key, value in conf.items():
        problem = _spark_conf_problem(key, value)
        if problem:
            raise ValueError(f"{key}: {cut(repr(value))} {problem}")
    return conf


class SparkConfig(Section):
    master: Annotated[str, AfterValidator(_master_url)] = "local[*]"
    app_name: str = "image-platform"
    driver_memory: str = Field("1g", pattern=r"^\d+[kmgt]?$")
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
    conf: Annotated[dict[str, str], AfterValidator(_typed_spark_conf)] = Field(default_factory=dict)


class IngestSource(View):
    """``ingest.source``: every stage checks it never writes into it."""

    source: SourcePath = DEFAULT_SOURCE


class ScoreInbox(View):
    """``score.inbox``: every stage checks it never writes into it."""

    inbox: SourcePath = DEFAULT_INBOX


# Parameters that change how fast or how patiently a stage runs, never what it writes: dvc.yaml
# lists none of them (changing one re-runs nothing) and manifests do not record them.
SPEED_ONLY = (
    "data.lock_wait_s",
    "data.progress_s",
    "ingest.fetch_threads",
    "features.batch_size",
    "features.cnn.threads",
    "evaluate.batch_size",
    "evaluate.threads",
    "score.batch_size",
    "score.threads",
)


class Params(BaseModel):
    """What one stage reads of params.yaml: every stage reads ``data``, ``spark`` and the two
    sources; a stage's own subclass adds (or widens) the sections it reads. Other sections are
    left to the stages that read them, but their names must be params.yaml's."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    data: DataConfig = DataConfig()
    spark: SparkConfig = SparkConfig()
    ingest: IngestSource = IngestSource()
    score: ScoreInbox = ScoreInbox()

    @model_validator(mode="before")
    @classmethod
    def _known_sections(cls, tree: Any) -> Any:
        if isinstance(tree, dict):
            unknown = sorted(str(k) for k in tree if k not in SECTIONS)
            if unknown:
                known = ", ".join(SECTIONS)
                raise ValueError(f"unknown parameter {cut(', '.join(unknown))} (params.yaml's sections: {known})")
        return tree

    def section(self, *names: str) -> dict[str, Any]:
        """The named sections (``gate.raw`` style paths allowed) as plain data, without the
        :data:`SPEED_ONLY` parameters: what a manifest records as the params that shaped it."""
        dumped = self.model_dump(mode="json")
        for key in SPEED_ONLY:
            *parents, leaf = key.split(".")
            node = dumped
            for part in parents:
                node = node.get(part, {})
            node.pop(leaf, None)
        out: dict[str, Any] = {}
        for name in names:
            node: Any = dumped
            for part in name.split("."):
                node = node[part]
            out[name] = node
        return out


P = TypeVar("P", bound=Params)


def params_hash(params: dict[str, Any]) -> str:
    """sha256 of the canonical JSON form of ``params``."""
    blob = json.dumps(params, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(blob).hexdigest()


def _leaf_type(schema: type[BaseModel], path: list[str]) -> Any:
    """The declared type of the parameter at ``path`` in ``schema`` (None for a key it does not read)."""
    model: Any = schema
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


MAX_PARAMS_BYTES = 2**20  # a params file is a few KiB; anything near this is a mistake


class _StrictLoader(yaml.SafeLoader):
    """YAML as params are written: plain scalars, lists and mappings. A duplicate key, an anchor or
    alias (which can expand a small file to gigabytes), or an explicit tag (``!!binary``,
    ``!!set``, ``!!timestamp``, any ``!name``) is an error; a date-like value (a folder named
    ``2024-01-05``) stays the text it is."""

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise yaml.constructor.ConstructorError(
                None, None, f"anchors and aliases (*{event.anchor}) are not allowed", event.start_mark
            )
        event = self.peek_event()
        if getattr(event, "anchor", None) is not None:
            raise yaml.constructor.ConstructorError(
                None, None, f"anchors and aliases (&{event.anchor}) are not allowed", event.start_mark
            )
        tag = getattr(event, "tag", None)
        if tag not in (None, "!"):
            raise yaml.constructor.ConstructorError(None, None, f"tags ({tag}) are not allowed", event.start_mark)
        return super().compose_node(parent, index)

    def construct_mapping(self, node: Any, deep: bool = False) -> Any:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {cut(str(key))!r}", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep)


# No implicit timestamps: a date-like value is text.
_StrictLoader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:timestamp"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}


def strict_yaml(text: str) -> Any:
    """``text`` read by :class:`_StrictLoader`; nesting too deep for the parser is an error of the
    text, like any other (never a ``RecursionError``)."""
    try:
        return yaml.load(text, Loader=_StrictLoader)  # a SafeLoader, stricter still
    except RecursionError:
        raise yaml.YAMLError("nested too deeply") from None


def _problem(exc: yaml.YAMLError) -> str:
    return cut(" ".join(str(exc).split()), 200)


def parse_value(key: str, raw: str, schema: type[BaseModel]) -> Any:
    """The value of ``--set key=raw``, read by the parameter's type in ``schema``: a string
    parameter takes the text verbatim (``#``, ``:`` and quotes in a path are kept; ``null`` clears
    one that may be null), any other is parsed as YAML (numbers, booleans, lists, mappings)."""
    text, optional = _is_text(_leaf_type(schema, key.split(".")))
    if text:
        return None if optional and raw.strip() in ("null", "~") else raw
    try:
        return strict_yaml(raw) if raw.strip() else ""
    except yaml.YAMLError as exc:
        raise ConfigError(f"--set {key}: value {cut(raw)!r} is not valid YAML ({_problem(exc)})") from None


def parse_override(text: str, schema: type[BaseModel]) -> tuple[str, Any]:
    """``section.key=value`` as the key and its typed value (:func:`parse_value`)."""
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key or any(not part for part in key.split(".")):
        raise ConfigError(f"--set {cut(text)!r}: expected section.key=value, e.g. ingest.image_size=64")
    return key, parse_value(key, raw, schema)


def set_override(
    tree: MutableMapping[str, Any], text: str, schema: type[BaseModel], existing: str | None = None
) -> tuple[str, Any, bool]:
    """Apply one ``--set a.b.c=value`` override to ``tree`` in place (any mapping: a plain dict, or
    ruamel's round-trip map of a params file whose comments must survive); ``(key, typed value,
    whether the tree changed)``. Missing sections are created, unless ``existing`` names the file
    whose keys the override must already exist in (then its absence is a :class:`ConfigError`)."""
    key, value = parse_override(text, schema)
    *parents, leaf = key.split(".")
    node = tree
    for part in parents:
        if existing is not None and part not in node:
            raise ConfigError(f"{existing} has no section {key!r} (override {cut(text)!r})")
        child = node.setdefault(part, {})
        if not isinstance(child, MutableMapping):
            raise ConfigError(f"--set {key}: {part} is a value, not a section")
        node = child
    if existing is not None and leaf not in node:
        raise ConfigError(f"{existing} has no parameter {key!r} (override {cut(text)!r})")
    changed = leaf not in node or node[leaf] != value
    if changed:
        node[leaf] = value
    return key, value, changed


def apply_overrides(tree: dict[str, Any], overrides: list[str], schema: type[BaseModel]) -> dict[str, Any]:
    """A copy of ``tree`` with each ``a.b.c=value`` override applied (:func:`set_override`)."""
    result = json.loads(json.dumps(tree))
    for text in overrides:
        set_override(result, text, schema)
    return result


def _describe(error: dict[str, Any]) -> str:
    if not error["loc"]:  # a rule across sections: its message names the keys
        return str(error["msg"]).removeprefix("Value error, ")
    key = cut(".".join(str(p) for p in error["loc"]))
    if error["type"] == "extra_forbidden":
        return f"unknown parameter {key}"
    return f"parameter {key}: {str(error['msg']).removeprefix('Value error, ')} (got {cut(repr(error.get('input')))})"


def validate(tree: dict[str, Any], schema: type[P]) -> P:
    """Typed params from a plain tree; :class:`ConfigError` names every bad key, one per line."""
    try:
        return schema.model_validate(tree)
    except ValidationError as exc:
        raise ConfigError("\n".join(_describe(e) for e in exc.errors())) from None


def _read_capped(path: Path) -> str:
    """The text of a params file: a regular file (a FIFO, a device or ``/dev/zero`` is refused
    without reading it, so nothing hangs or fills memory) of at most :data:`MAX_PARAMS_BYTES`."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except FileNotFoundError:
        raise ConfigError(f"params file {path} not found") from None
    except OSError as exc:
        raise ConfigError(f"params file {path} cannot be read: {exc.strerror or exc}") from None
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        what = "a directory" if stat.S_ISDIR(mode) else "a pipe, socket or device"
        raise ConfigError(f"params file {path} is {what}, not a regular file")
    with os.fdopen(fd, "rb") as f:
        try:
            data = f.read(MAX_PARAMS_BYTES + 1)
        except OSError as exc:
            raise ConfigError(f"params file {path} cannot be read: {exc.strerror or exc}") from None
    if len(data) > MAX_PARAMS_BYTES:
        raise ConfigError(f"params file {path} is over {MAX_PARAMS_BYTES // 2**20} MiB: not a params file")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"params file {path} is not UTF-8 text (byte {exc.start})") from None


def read_tree(path: str | Path) -> dict[str, Any]:
    """A params file as a plain tree (:func:`strict_yaml`); :class:`ConfigError` in one line when
    it cannot be."""
    path = Path(path)
    text = _read_capped(path)
    try:
        tree = strict_yaml(text) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"params file {path} is not valid YAML: {_problem(exc)}") from None
    if not isinstance(tree, dict):
        raise ConfigError(f"params file {path}: expected a mapping of sections at the top level")
    return tree


def load_config(path: str | Path, overrides: list[str] | None, schema: type[P]) -> P:
    """``schema``'s params from a params file with ``--set`` style overrides applied."""
    return validate(apply_overrides(read_tree(path), overrides or [], schema), schema)


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
