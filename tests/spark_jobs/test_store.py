"""Source listing helpers: labels from folders, URIs, manifest CSVs and their safety checks."""

from __future__ import annotations

from pathlib import Path

import pytest

from spark_jobs import store


@pytest.mark.parametrize(
    ("relative", "label"),
    [("cat/1.png", "cat"), ("/cat/1.png", "cat"), ("a/b/2.jpg", "b"), ("loose.png", None)],
)
def test_label_is_the_parent_folder(relative: str, label: str | None) -> None:
    assert store.label_of(relative) == label


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
