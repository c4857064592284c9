"""Source listing helpers: labels from folders, URIs, manifest CSVs and their safety checks."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from spark_jobs.core import store


@pytest.mark.parametrize(
    ("relative", "label"),
    [("cat/1.png", "cat"), ("/cat/1.png", "cat"), ("a/b/2.jpg", "b"), ("loose.png", None)],
)
def test_label_is_the_parent_folder(relative: str, label: str | None) -> None:
    assert store.label_of(relative) == label


def test_labels_are_nfc_text_whatever_the_bytes_of_the_folder_name() -> None:
    assert store.label_of("cafe\u0301/1.png") == store.label_of("caf\u00e9/1.png") == "caf\u00e9"  # NFD as NFC
    latin1 = os.fsdecode(b"caf\xe9/1.png")  # a Latin-1 folder name: not UTF-8
    assert store.label_of(latin1) == "caf\\xe9"  # its byte kept as an escape, text Arrow can carry
    assert store.label_of(latin1).encode("utf-8")


def test_a_file_uri_names_any_bytes(tmp_path: Path) -> None:
    path = Path(os.fsdecode(bytes(tmp_path) + b"/caf\xe9 [1]%.png"))
    assert store.local_path(path.as_uri()) == path  # %E9 is the byte 0xE9, not U+FFFD


def test_spark_paths_are_plain_names_for_the_same_folder(tmp_path: Path) -> None:
    plain = tmp_path / "a b" / "c"
    assert store.spark_path(plain) == str(plain)  # nothing to hide: the path itself
    odd = Path(os.fsdecode(bytes(tmp_path) + b"/r[1]{2}*?:%\xe9")) / "data"
    (odd / "images").mkdir(parents=True)
    (odd / "images" / "x").write_text("same file")
    given = store.spark_path(odd / "images")
    assert store._hadoop_safe(given)
    assert given.endswith("/data/images")
    assert (Path(given) / "x").read_text() == "same file"
    assert store.spark_path(odd / "images") == given  # one link per folder, made once


def test_canonical_uri_spellings_agree(tmp_path: Path) -> None:
    path = tmp_path / "a b.png"
    assert store.canonical_uri(str(path)) == store.canonical_uri(f"file:{path}") == path.as_uri()
    assert store.canonical_uri("s3://bucket/k.png") == "s3://bucket/k.png"
    assert store.local_path(path.as_uri()) == path


def test_split_s3() -> None:
    assert store.split_s3("s3://bucket/some/prefix") == ("bucket", "some/prefix")
    with pytest.raises(store.SourceError):
        store.split_s3("s3:///nobucket")


def test_manifest_entries_resolve_under_its_folder(tmp_path: Path) -> None:
    (tmp_path / "imgs").mkdir()
    (tmp_path / "imgs" / "a.png").write_bytes(b"x" * 10)
    manifest = tmp_path / "m.csv"
    manifest.write_text("path,label\nimgs/a.png,cat\nimgs/missing.png,\n")
    files = store.read_manifest(str(manifest))
    assert files == [
        store.SourceFile((tmp_path / "imgs" / "a.png").as_uri(), "cat", 10),
        store.SourceFile((tmp_path / "imgs" / "missing.png").as_uri(), None, 0),
    ]


@pytest.mark.parametrize("entry", ["../outside.png", "imgs/../../outside.png", "/etc/passwd", "s3://b/k.png", ".."])
def test_manifest_paths_escaping_the_root_are_rejected(tmp_path: Path, entry: str) -> None:
    manifest = tmp_path / "m.csv"
    manifest.write_text(f"path,label\nimgs/ok.png,cat\n{entry},dog\n")
    with pytest.raises(store.SourceError, match=r"line 3: .*escapes the source root"):
        store.read_manifest(str(manifest))


def test_manifest_symlink_escaping_the_root_is_rejected(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    (tmp_path / "secret.png").write_bytes(b"x")
    (root / "link.png").symlink_to(tmp_path / "secret.png")
    (root / "m.csv").write_text("path,label\nlink.png,cat\n")
    with pytest.raises(store.SourceError, match="through a link"):
        store.read_manifest(str(root / "m.csv"))


def test_manifest_column_names_are_read_padded(tmp_path: Path) -> None:
    (tmp_path / "a.png").write_bytes(b"x")
    manifest = tmp_path / "m.csv"
    manifest.write_text("path, Label\na.png, cafe\u0301\n")
    assert [f.label for f in store.read_manifest(str(manifest))] == ["caf\u00e9"]


def test_manifest_needs_a_path_column(tmp_path: Path) -> None:
    manifest = tmp_path / "m.csv"
    manifest.write_text("file,label\na.png,cat\n")
    with pytest.raises(store.SourceError, match="path,label"):
        store.read_manifest(str(manifest))


def test_missing_source_directory(tmp_path: Path) -> None:
    with pytest.raises(store.SourceError, match="not a directory"):
        store.describe_source(str(tmp_path / "nope"))


def test_fetch_missing_file_is_a_fetch_error(tmp_path: Path) -> None:
    results = store.fetch_many([(tmp_path / "nope.png").as_uri()], threads=4)
    assert isinstance(results[0], store.FetchError)


def test_files_are_fetched_as_they_are_consumed(tmp_path: Path) -> None:
    """A slice of camera-sized files is never in memory at once: each file is read when its turn
    comes (a file changed before then is read as it is then)."""
    files = [tmp_path / f"{i}.jpg" for i in range(3)]
    for i, f in enumerate(files):
        f.write_bytes(bytes([i]) * 10)
    fetched = store.fetch_each([f.as_uri() for f in files], threads=8)
    assert next(fetched) == bytes([0]) * 10
    files[1].unlink()
    files[2].write_bytes(b"later")
    assert isinstance(next(fetched), store.FetchError)
    assert list(fetched) == [b"later"]


def test_directory_listing_sees_empty_and_hidden_files(tmp_path: Path) -> None:
    (tmp_path / "cat").mkdir()
    (tmp_path / "cat" / "a.png").write_bytes(b"12345")
    (tmp_path / "cat" / "empty.png").write_bytes(b"")
    (tmp_path / "cat" / ".hidden.png").write_bytes(b"1")
    (tmp_path / "_loose.png").write_bytes(b"1")
    listed = {Path(store.local_path(f.uri)).name: (f.label, f.size) for f in store.list_directory(str(tmp_path))}
    assert listed == {"a.png": ("cat", 5), "empty.png": ("cat", 0), ".hidden.png": ("cat", 1), "_loose.png": (None, 1)}


def test_directory_listing_follows_linked_folders_without_cycles(tmp_path: Path) -> None:
    (tmp_path / "elsewhere" / "dog").mkdir(parents=True)
    (tmp_path / "elsewhere" / "dog" / "d.png").write_bytes(b"1")
    (tmp_path / "root" / "cat").mkdir(parents=True)
    (tmp_path / "root" / "cat" / "c.png").write_bytes(b"1")
    (tmp_path / "root" / "dog").symlink_to(tmp_path / "elsewhere" / "dog")
    (tmp_path / "root" / "cat" / "loop").symlink_to(tmp_path / "root")
    listed = sorted((f.label, Path(store.local_path(f.uri)).name) for f in store.list_directory(str(tmp_path / "root")))
    assert listed == [("cat", "c.png"), ("dog", "d.png")]


def test_plan_partitions_packs_by_bytes_in_whole_waves() -> None:
    # 10 files of 100 bytes, no open cost, 2 cores: one wave of two equal partitions.
    assert store.plan_partitions([100] * 10, max_bytes=10_000, open_cost=0, cores=2) == [5, 5]
    # The byte cap forces more partitions: two whole waves, none above the cap.
    plan = store.plan_partitions([100] * 10, max_bytes=300, open_cost=0, cores=2)
    assert len(plan) == 4
    assert sum(plan) == 10
    assert max(plan) * 100 <= 300
    # Open cost makes many tiny files count: 1000 zero-byte files, 4 KiB cost, 64 KiB cap.
    plan = store.plan_partitions([0] * 1000, max_bytes=65_536, open_cost=4096, cores=2)
    assert sum(plan) == 1000
    assert max(plan) <= 16
    assert len(plan) % 2 == 0
    # A file larger than the cap is alone, never split or dropped.
    assert store.plan_partitions([50, 10_000, 50], max_bytes=1000, open_cost=0, cores=1) == [1, 1, 1]
    # Never more partitions than files, and nothing for nothing.
    assert store.plan_partitions([10, 10, 10], max_bytes=1, open_cost=0, cores=8) == [1, 1, 1]
    assert store.plan_partitions([], max_bytes=1000, open_cost=0, cores=2) == []


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"path,label\nimgs/a.png,cat\nimgs/\x00b.png,dog\n", "line 3: manifest path .* contains a NUL byte"),
        (b"path,label\nimgs/a.png,cat\nimgs/b.png,d\xe9j\xe0\n", "line 3: not UTF-8 text"),
        (b'path,label\nimgs/a.png,cat\n"imgs/b.png\n', "line 3: not a CSV row"),
        (b"path,label\nimgs/a.png,cat\n\nimgs/a.png,dog\n", "line 4: 'imgs/a.png' is listed again with label 'dog'"),
    ],
)
def test_manifest_problems_name_the_line(tmp_path: Path, content: bytes, message: str) -> None:
    manifest = tmp_path / "m.csv"
    manifest.write_bytes(content)
    with pytest.raises(store.SourceError, match=message) as info:
        store.read_manifest(str(manifest))
    assert "\n" not in str(info.value)


def test_a_path_listed_twice_is_one_entry(tmp_path: Path) -> None:
    manifest = tmp_path / "m.csv"
    manifest.write_text("path,label\nimgs/a.png,cat\n./imgs/a.png,cat\nimgs/b.png,dog\n")
    files = store.read_manifest(str(manifest))
    assert [(Path(store.local_path(f.uri)).name, f.label) for f in files] == [("a.png", "cat"), ("b.png", "dog")]


# ---- only regular files, bounded ---------------------------------------------------------------


def _special_files(tmp_path: Path) -> dict[str, Path]:
    """Names an image could have, behind which no regular file is: a FIFO nobody writes to, a link
    to /dev/zero (endless), a link to the FIFO, a socket, a folder."""
    import os
    import socket

    fifo = tmp_path / "x.png"
    os.mkfifo(fifo)
    (tmp_path / "z.png").symlink_to("/dev/zero")
    (tmp_path / "via-link.png").symlink_to(fifo)
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(tmp_path / "s.png"))
    (tmp_path / "d.png").mkdir()
    return {name: tmp_path / name for name in ("x.png", "z.png", "via-link.png", "s.png", "d.png")}


def test_fifos_devices_sockets_and_links_to_them_are_not_read(tmp_path: Path) -> None:
    for name, path in _special_files(tmp_path).items():
        with pytest.raises(store.FetchError, match="not a regular file: not read") as info:
            store.fetch(path.as_uri())
        assert info.value.reason == "not_a_file", name


def test_reads_are_capped(tmp_path: Path) -> None:
    path = tmp_path / "big.png"
    path.write_bytes(b"\0" * 100)
    with pytest.raises(store.FetchError, match=r"100 bytes > ingest.max_file_bytes 99") as info:
        store.fetch(path.as_uri(), max_bytes=99)
    assert info.value.reason == "too_large"
    assert store.fetch(path.as_uri(), max_bytes=100) == b"\0" * 100


def test_a_quarantine_detail_never_holds_the_file_s_content(tmp_path: Path) -> None:
    """A link named like an image to a secret is read (a regular file) and quarantined, but none of
    its bytes reach the quarantine row."""
    from spark_jobs.core.ingest_config import IngestConfig
    from spark_jobs.imaging import images

    secret = tmp_path / "passwd"
    secret.write_text("root:x:0:0:root:/root:/bin/bash\n")
    (tmp_path / "cls").mkdir()
    (tmp_path / "cls" / "passwd.png").symlink_to(secret)
    uri = (tmp_path / "cls" / "passwd.png").as_uri()
    row = images.decode_record(uri, "cls", store.fetch(uri), IngestConfig())
    assert row["reason"] == images.NOT_AN_IMAGE
    assert "root" not in row["detail"]
    assert secret.read_bytes()[:8].hex() not in row["detail"]
    fifo = _special_files(tmp_path)["x.png"].as_uri()
    fifo_row = images.decode_record(fifo, "cls", store.fetch_many([fifo], 1)[0], IngestConfig())
    assert fifo_row["reason"] == images.NOT_A_FILE


def test_a_folder_that_cannot_be_listed_is_an_error_naming_it(tmp_path: Path, monkeypatch) -> None:
    """os.walk skips a folder it cannot list unless told otherwise. (These tests run as root, for
    whom permissions never stop a listing, so the refusal is simulated at os.scandir.)"""
    import os

    root = tmp_path / "src"
    (root / "cat").mkdir(parents=True)
    (root / "dog").mkdir()
    (root / "cat" / "a.png").write_bytes(b"x")
    real_scandir = os.scandir

    def scandir(path=None):
        if str(path).endswith("dog"):
            raise PermissionError(13, "Permission denied", str(path))
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)
    with pytest.raises(store.SourceError, match=r"cannot list folder .*/src/dog of .*: Permission denied"):
        list(store.list_directory(str(root)))
