"""Where images come from: local folders, ``s3://bucket/prefix`` and manifest CSVs.

S3 goes through boto3 (Spark's s3a connector is not used, DESIGN.md #7). Endpoint and
credentials come only from the standard AWS environment and config files (``AWS_ENDPOINT_URL``,
``AWS_ACCESS_KEY_ID``, ``~/.aws/config``, ...), never from params.
"""

from __future__ import annotations

import collections
import csv
import functools
import hashlib
import io
import math
import os
import posixpath
import re
import stat
import tempfile
import unicodedata
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote_to_bytes, urlparse


class SourceError(ValueError):
    """A source that cannot be read at all (missing, empty, escaping manifest paths, ...)."""


class FetchError(OSError):
    """One object that could not be fetched; the file is quarantined (as ``reason``), the job goes on."""

    def __init__(self, message: str, reason: str = "fetch_failed") -> None:
        super().__init__(message)
        self.reason = reason  # a quarantine reason of spark_jobs.imaging.images: fetch_failed, not_a_file, too_large

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class StoreUnavailable(RuntimeError):
    """The object store itself cannot be reached (after botocore's retries): not one file's
    problem, so nothing is quarantined; the run stops (raised on an executor, it ends the Spark
    job; :func:`unavailable_reason` finds its one line in the driver's error)."""


_UNAVAILABLE = re.compile(r"StoreUnavailable: ([^\n]+)")


def unavailable_reason(exc: BaseException) -> str | None:
    """The :class:`StoreUnavailable` message inside ``exc`` (itself, or a Spark job failure whose
    text carries an executor's traceback), else None."""
    if isinstance(exc, StoreUnavailable):
        return str(exc)
    match = _UNAVAILABLE.search(str(exc))
    return match.group(1).strip() if match else None


@dataclass(frozen=True)
class SourceFile:
    """One file to ingest: where it is, its label (None when unlabelled), its size and when it
    arrived (epoch seconds: a local file's last status change, which a rename into the folder is,
    or its last write if later; an object's ``LastModified``; 0 when unknown)."""

    uri: str
    label: str | None
    size: int
    arrived: float = 0.0


def is_s3(uri: str) -> bool:
    return uri.startswith("s3://")


def is_manifest(uri: str) -> bool:
    return uri.lower().endswith(".csv")


def split_s3(uri: str) -> tuple[str, str]:
    """``(bucket, key_or_prefix)`` of an ``s3://`` URI."""
    parsed = urlparse(uri)
    if parsed.scheme != "s3" or not parsed.netloc:
        raise SourceError(f"not an s3://bucket/prefix URI: {uri!r}")
    return parsed.netloc, parsed.path.lstrip("/")


def local_uri(path: str | Path) -> str:
    """The ``file:///abs/path`` URI of a local path."""
    return Path(path).resolve().as_uri()


def local_path(uri: str) -> Path:
    """The local path of a ``file:`` URI (Spark's ``file:/x`` form included; %-escapes decoded to
    the bytes they stand for, which need not be UTF-8) or a plain path."""
    if uri.startswith("file:"):
        return Path(os.fsdecode(unquote_to_bytes(urlparse(uri).path)))
    return Path(uri)


# Characters Hadoop's Path cannot carry in a file name: glob patterns, the scheme separator, the
# escape characters, and any that are not text (control characters; bytes that are not UTF-8,
# which py4j cannot even send to the JVM).
_HADOOP_UNSAFE = re.compile(r"[\[\]{}*?:%\\\x00-\x1f\x7f]")


def _hadoop_safe(name: str) -> bool:
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return _HADOOP_UNSAFE.search(name) is None


def spark_path(path: str | Path) -> str:
    """The absolute ``path`` as Spark (Hadoop) can read and write it. A path whose names Hadoop
    cannot carry (``[]{}*?:%`` and the backslash, control characters, bytes that are not UTF-8)
    is given through a link with a plain name, ``<temp dir>/spark-jobs-paths/<sha256>``, to the
    deepest folder of it with such a name: Python code keeps using the real path, Spark the link,
    and both reach the same files. (On a cluster the link is the driver host's: give such a
    folder a plain name there.)"""
    absolute = Path(os.path.abspath(path))
    parts = absolute.parts
    unsafe = [i for i, name in enumerate(parts) if i and not _hadoop_safe(name)]
    if not unsafe:
        return str(absolute)
    target = Path(*parts[: unsafe[-1] + 1])
    links = Path(tempfile.gettempdir()) / "spark-jobs-paths"
    links.mkdir(parents=True, exist_ok=True)
    link = links / hashlib.sha256(os.fsencode(target)).hexdigest()[:24]
    if not (link.is_symlink() and os.readlink(link) == str(target)):
        staged = link.with_name(f".{link.name}.{os.getpid()}")
        staged.unlink(missing_ok=True)
        staged.symlink_to(target, target_is_directory=True)
        os.replace(staged, link)
    return str(link.joinpath(*parts[unsafe[-1] + 1 :]))


def canonical_uri(uri: str) -> str:
    """One spelling per file: ``s3://...`` as is, local paths and ``file:/x`` as ``file:///x``."""
    return uri if is_s3(uri) else local_uri(local_path(uri))


def label_text(name: str) -> str:
    """A folder name as a label: NFC-normalised Unicode (macOS writes ``café`` decomposed, NFD;
    Linux tools usually composed, NFC: one class either way), with any bytes of the name that are
    not UTF-8 kept as ``\\xNN`` escapes (a Latin-1 ``caf\\xe9`` folder is the label ``caf\\xe9``)."""
    text = os.fsencode(name).decode("utf-8", "backslashreplace")
    return unicodedata.normalize("NFC", text)


def label_of(relative: str) -> str | None:
    """The label of a file at ``relative`` (POSIX, below the source root): its parent folder's
    name (:func:`label_text`)."""
    parent = posixpath.dirname(relative.strip("/"))
    return label_text(posixpath.basename(parent)) if parent else None


@functools.cache
def s3_client() -> Any:
    """One boto3 S3 client per Python process (driver or executor worker)."""
    import boto3
    from botocore.config import Config as BotoConfig

    # Retries follow the standard AWS settings (AWS_MAX_ATTEMPTS, AWS_RETRY_MODE, ~/.aws/config).
    return boto3.session.Session().client("s3", config=BotoConfig(max_pool_connections=64))


def s3_endpoint() -> str:
    return str(s3_client().meta.endpoint_url)


def list_s3(uri: str) -> Iterator[SourceFile]:
    """Every object under an ``s3://bucket/prefix``, listed page by page."""
    from botocore.exceptions import BotoCoreError, ClientError

    bucket, prefix = split_s3(uri)
    if prefix and not prefix.endswith("/"):
        prefix += "/"
    paginator = s3_client().get_paginator("list_objects_v2")
    try:
        for page in paginator.paginate(Bucket=bucket, Prefix=prefix):
            for obj in page.get("Contents", ()):
                key = obj["Key"]
                if key.endswith("/"):  # folder marker objects made by consoles
                    continue
                arrived = obj["LastModified"].timestamp()
                yield SourceFile(f"s3://{bucket}/{key}", label_of(key[len(prefix) :]), int(obj["Size"]), arrived)
    except ClientError as exc:
        error = exc.response.get("Error", {})
        raise SourceError(
            f"cannot list {uri} at {s3_endpoint()}: {error.get('Code', 'error')}: {error.get('Message', exc)}"
        ) from None
    except BotoCoreError as exc:  # no credentials, endpoint unreachable after retries, ...
        raise SourceError(f"cannot list {uri} at {s3_endpoint()}: {exc}") from None


def list_directory(root: str) -> Iterator[SourceFile]:
    """Every file below a local folder (hidden and zero-byte ones too: they must be accounted
    for, which Spark's binaryFile source does not do), labelled by its parent folder. A folder
    that cannot be listed is a :class:`SourceError` naming it, never a silent gap."""
    base = local_path(root).absolute()
    seen = {base.resolve()}

    def unlistable(exc: OSError) -> None:  # os.walk would skip the folder silently
        raise SourceError(f"cannot list folder {exc.filename} of {root}: {exc.strerror or exc}")

    for folder, dirs, names in os.walk(base, followlinks=True, onerror=unlistable):
        # Follow linked folders (a class folder is often a link), but never round a cycle.
        real = [(d, (Path(folder) / d).resolve()) for d in sorted(dirs)]
        dirs[:] = [d for d, r in real if r not in seen]
        seen.update(r for _, r in real)
        for name in sorted(names):
            path = Path(folder) / name
            try:
                st = path.stat()
                size, arrived = st.st_size, max(st.st_mtime, st.st_ctime)
            except OSError:  # a dangling link: listed, and quarantined when it cannot be read
                size, arrived = 0, 0.0
            relative = path.relative_to(base).as_posix()
            yield SourceFile(path.as_uri(), label_of(relative), size, arrived)


def list_source(uri: str, allow_empty: bool = False) -> tuple[str, list[SourceFile]]:
    """The kind of a source (``directory``, ``s3`` or ``manifest``) and every file in it (an
    empty source is a :class:`SourceError` unless ``allow_empty``: a stream's inbox)."""
    kind = describe_source(uri)
    if kind == "directory":
        files = list(list_directory(uri))
    elif kind == "s3":
        files = list(list_s3(uri))
    else:
        files = read_manifest(uri)
    if not files and not allow_empty:
        raise SourceError(f"no files under ingest.source {uri}")
    return kind, files


def plan_partitions(sizes: list[int], max_bytes: int, open_cost: int, cores: int) -> list[int]:
    """How many consecutive files go in each partition. Each file costs its size plus
    ``open_cost`` (so many tiny files still spread out); partitions hold about ``max_bytes`` at
    most, come in whole waves of ``cores`` so no core idles in a last half-empty wave, and are
    balanced by cost to within one file."""
    if not sizes:
        return []
    costs = [size + open_cost for size in sizes]
    total = sum(costs) or 1
    waves = -(-math.ceil(total / max_bytes) // max(cores, 1))
    count = min(len(sizes), waves * max(cores, 1))
    target = total / count
    plan = [0] * count
    filled = 0
    for cost in costs:
        plan[min(count - 1, int((filled + cost / 2) // target))] += 1
        filled += cost
    return [n for n in plan if n]


def _too_large(size: int, max_bytes: int) -> FetchError:
    return FetchError(f"{size} bytes > ingest.max_file_bytes {max_bytes}", reason="too_large")


def _not_a_file(mode: int) -> FetchError:
    kinds = {stat.S_IFIFO: "a FIFO", stat.S_IFCHR: "a character device", stat.S_IFBLK: "a block device"}
    kinds |= {stat.S_IFSOCK: "a socket", stat.S_IFDIR: "a folder"}
    kind = kinds.get(stat.S_IFMT(mode), "not a regular file")
    return FetchError(f"{kind}, not a regular file: not read", reason="not_a_file")


def _read_local(path: Path, max_bytes: int | None) -> bytes:
    """A regular file's bytes, at most ``max_bytes``. A FIFO, device or socket (or a link to one)
    is refused without being opened for reading: a read of one may never end (``/dev/zero``) or
    never start (a FIFO nobody writes)."""
    try:
        before = os.stat(path)  # follows links: a link to a device is a device
        if not stat.S_ISREG(before.st_mode):
            raise _not_a_file(before.st_mode)
        if max_bytes is not None and before.st_size > max_bytes:
            raise _too_large(before.st_size, max_bytes)
        # O_NONBLOCK: should the name have become a FIFO since the stat, opening it cannot hang.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except FetchError:
        raise
    except OSError as exc:
        raise FetchError(f"{type(exc).__name__}: {exc.strerror or exc}") from exc
    try:
        opened = os.fstat(fd)
        if not stat.S_ISREG(opened.st_mode):
            raise _not_a_file(opened.st_mode)
        limit = -1 if max_bytes is None else max_bytes + 1  # one byte over the cap tells it was larger
        with os.fdopen(fd, "rb", closefd=False) as stream:
            data = stream.read(limit)
    except FetchError:
        raise
    except OSError as exc:
        raise FetchError(f"{type(exc).__name__}: {exc.strerror or exc}") from exc
    finally:
        os.close(fd)
    if max_bytes is not None and len(data) > max_bytes:
        raise _too_large(len(data), max_bytes)  # it grew since the stat
    return data


def fetch(uri: str, max_bytes: int | None = None) -> bytes:
    """The bytes of one local file or S3 object (at most ``max_bytes``); :class:`FetchError` when
    it cannot be read (``reason`` says why: ``fetch_failed``, ``not_a_file``, ``too_large``)."""
    if is_s3(uri):
        from botocore.exceptions import BotoCoreError, ClientError

        bucket, key = split_s3(uri)
        try:
            obj = s3_client().get_object(Bucket=bucket, Key=key)
            if max_bytes is not None and obj.get("ContentLength", 0) > max_bytes:
                obj["Body"].close()
                raise _too_large(obj["ContentLength"], max_bytes)
            return obj["Body"].read()
        except ClientError as exc:
            raise FetchError(f"{exc.response['Error'].get('Code', 'error')}: {exc}") from exc
        except BotoCoreError as exc:  # endpoint unreachable, connection dropped, no credentials
            raise StoreUnavailable(
                f"cannot read bucket {bucket} at {s3_endpoint()} (after botocore's retries): {exc}"
            ) from None
    return _read_local(local_path(uri), max_bytes)


def fetch_many(uris: list[str], threads: int, max_bytes: int | None = None) -> list[bytes | FetchError]:
    """Bytes (or the error) for each URI, fetched concurrently: object stores are latency-bound."""
    return list(fetch_each(uris, threads, max_bytes))


def fetch_each(uris: list[str], threads: int, max_bytes: int | None = None) -> Iterator[bytes | FetchError]:
    """Bytes (or the error) for each URI in order, fetched as they are consumed: at most ``2 x
    threads`` files ahead of the caller (object stores, latency-bound) or none (local files), so
    a batch of camera-sized files is never in memory at once."""

    def one(uri: str) -> bytes | FetchError:
        try:
            return fetch(uri, max_bytes)
        except FetchError as exc:
            return exc

    # Threads pay off for object stores (latency-bound), not for local reads (they only add GIL churn).
    if threads <= 1 or len(uris) <= 1 or not any(is_s3(u) for u in uris):
        yield from map(one, uris)
        return
    with ThreadPoolExecutor(max_workers=min(threads, len(uris))) as pool:
        ahead = 2 * threads
        pending = collections.deque(pool.submit(one, u) for u in uris[:ahead])
        for uri in uris[ahead:]:
            yield pending.popleft().result()
            pending.append(pool.submit(one, uri))
        while pending:
            yield pending.popleft().result()


def _resolve_entry(root: str, entry: str) -> str:
    """URI of a manifest entry relative to ``root``; :class:`SourceError` if it escapes the root."""
    rel = entry.strip().replace("\\", "/")
    if "\x00" in rel:
        raise SourceError(f"manifest path {entry!r} contains a NUL byte")
    normal = posixpath.normpath(rel)
    if not rel or rel.startswith("/") or "://" in rel or normal == ".." or normal.startswith("../"):
        raise SourceError(f"manifest path {entry!r} escapes the source root {root}: paths must be relative, inside it")
    if is_s3(root):
        return f"{root.rstrip('/')}/{normal}"
    resolved = (Path(root) / normal).resolve()
    if not resolved.is_relative_to(Path(root).resolve()):
        raise SourceError(f"manifest path {entry!r} escapes the source root {root} (through a link)")
    return resolved.as_uri()


def read_manifest(uri: str) -> list[SourceFile]:
    """Entries of a ``path,label`` manifest CSV; paths are relative to the CSV's folder. A path
    listed more than once is one entry (two different labels for it are an error); any problem
    is a :class:`SourceError` naming the line."""
    try:
        data = fetch(uri)
    except FetchError as exc:
        raise SourceError(f"cannot read manifest {uri}: {exc}") from exc
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise SourceError(f"manifest {uri} line {line}: not UTF-8 text (byte {exc.start})") from None
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    try:
        header = next(reader, None)
    except csv.Error as exc:
        raise SourceError(f"manifest {uri} line 1: not a CSV header ({exc})") from None
    if header is not None:
        header = [name.strip().lower() for name in header]  # "path, label" names the columns too
    if header is None or "path" not in header:
        raise SourceError(f"manifest {uri}: expected a header with columns path,label; got {header}")
    root = posixpath.dirname(uri) if is_s3(uri) else str(local_path(uri).resolve().parent)
    files: list[SourceFile] = []
    first: dict[str, tuple[int, str | None]] = {}  # target -> (line, label) where it was first listed
    while True:
        line = reader.line_num + 1  # where the next row starts (a quoted field may span lines)
        try:
            fields = next(reader)
        except StopIteration:
            break
        except csv.Error as exc:
            raise SourceError(f"manifest {uri} line {line}: not a CSV row ({exc})") from None
        if not fields:  # a blank line
            continue
        row = dict(zip(header, fields, strict=False))
        path = row.get("path")
        try:
            target = _resolve_entry(root, path if isinstance(path, str) else "")
        except SourceError as exc:
            raise SourceError(f"manifest {uri} line {line}: {exc}") from None
        label = row.get("label")
        label = (unicodedata.normalize("NFC", label.strip()) if isinstance(label, str) else "") or None
        if target in first:
            seen_line, seen_label = first[target]
            if seen_label != label:
                raise SourceError(
                    f"manifest {uri} line {line}: {path!r} is listed again with label {label!r} "
                    f"(line {seen_line}: {seen_label!r})"
                )
            continue
        first[target] = (line, label)
        size = 0 if is_s3(target) else _size_or_zero(local_path(target))
        files.append(SourceFile(target, label, size))
    return files


def _size_or_zero(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def describe_source(uri: str, param: str = "ingest.source") -> str:
    """``s3``, ``manifest`` or ``directory``; :class:`SourceError` (naming ``param``) when a local one is missing."""
    if is_manifest(uri):
        return "manifest"
    if is_s3(uri):
        return "s3"
    if not os.path.isdir(local_path(uri)):
        raise SourceError(f"{param} {uri!r} is not a directory, s3:// prefix or manifest .csv")
    return "directory"
