"""The ingest job end to end on real files: every bad kind quarantined, duplicates, splits, manifest."""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from spark_jobs import ingest
from spark_jobs.core import manifest, tables
from spark_jobs.core.verdict import GateFailed
from spark_jobs.imaging import images, near_duplicates
from tests.factories import REPO, class_image, encode, make_config, png_bytes, write_class_tree
from tests.processes import tmpfs
from tests.spark_jobs.imaging.test_decode_fuzz import pillow_crasher

pytestmark = pytest.mark.spark

PER_CLASS = 25


def _rich_image(kind: str) -> bytes:
    """Good images in awkward encodings: each must decode, not be quarantined."""
    rng = np.random.default_rng(hash(kind) % 2**32)
    rgb = rng.integers(0, 255, (30, 40, 3), dtype=np.uint8)
    if kind == "exif.jpg":
        exif = Image.Exif()
        exif[0x0112] = 6
        return encode(Image.fromarray(rgb), "JPEG", exif=exif)
    if kind == "cmyk.jpg":
        return encode(Image.fromarray(rgb).convert("CMYK"), "JPEG")
    if kind == "rgba.png":
        return png_bytes(np.dstack([rgb, np.full((30, 40), 128, dtype=np.uint8)]), mode="RGBA")
    if kind == "grey16.png":
        im = Image.new("I;16", (40, 30))
        im.frombytes(rng.integers(0, 65535, (30, 40), dtype="<u2").tobytes())
        return encode(im, "PNG")
    if kind == "anim.gif":
        frames = [Image.fromarray(rgb), Image.fromarray(255 - rgb)]
        buf = io.BytesIO()
        frames[0].save(buf, format="GIF", save_all=True, append_images=frames[1:])
        return buf.getvalue()
    if kind == "palette.bmp":
        return encode(Image.fromarray(rgb).convert("P"), "BMP")
    raise ValueError(kind)


RICH = ("exif.jpg", "cmyk.jpg", "rgba.png", "grey16.png", "anim.gif", "palette.bmp")


def _bad_files() -> dict[str, tuple[bytes, str]]:
    """Relative path -> (bytes, expected quarantine reason)."""
    noise = np.random.default_rng(7).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    full_png = png_bytes(noise)
    return {
        "0/empty.png": (b"", images.EMPTY),
        "0/truncated.png": (full_png[: len(full_png) // 2], images.TRUNCATED),
        "0/random.png": (np.random.default_rng(3).bytes(2048), images.NOT_AN_IMAGE),
        "0/page.png": (b"<!DOCTYPE html><html><body>Not found</body></html>", images.NOT_AN_IMAGE),
        "1/bomb.png": (png_bytes(np.zeros((400, 400), dtype=np.uint8), mode="L"), images.DECOMPRESSION_BOMB),
        "1/tiny.png": (png_bytes(np.zeros((4, 4, 3), dtype=np.uint8)), images.TOO_SMALL),
        "2/notes.txt": (b"labelling notes", images.UNSUPPORTED_EXTENSION),
        "2/crashes-pillow.tif": (pillow_crasher(), images.UNREADABLE),
        "loose.png": (class_image(0, 999), images.UNLABELLED),
    }


@pytest.fixture(scope="module")
def source_tree(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    """3 classes x 25 images + rich encodings + every bad kind + duplicates; {relative: expected}."""
    root = tmp_path_factory.mktemp("tree") / "images"
    write_class_tree(root, classes=3, per_class=PER_CLASS)
    expected = {f"{label}/img_{i:03d}.png": "ok" for label in range(3) for i in range(PER_CLASS)}
    for i, kind in enumerate(RICH):
        (root / str(i % 3) / kind).write_bytes(_rich_image(kind))
        expected[f"{i % 3}/{kind}"] = "ok"
    for rel, (data, reason) in _bad_files().items():
        (root / rel).write_bytes(data)
        expected[rel] = reason
    # Names of images with no regular file behind them: a read would hang or never end.
    os.mkfifo(root / "0" / "fifo.png")
    (root / "1" / "zero.png").symlink_to("/dev/zero")
    expected["0/fifo.png"] = expected["1/zero.png"] = images.NOT_A_FILE
    # Same bytes, same label: one copy is kept (smallest URI), the other is a duplicate.
    shutil.copy(root / "0" / "img_001.png", root / "0" / "zz_copy.png")
    expected["0/zz_copy.png"] = images.DUPLICATE
    # Same bytes, different labels: every copy is a label conflict.
    shutil.copy(root / "1" / "img_002.png", root / "2" / "conflict.png")
    expected["1/img_002.png"] = expected["2/conflict.png"] = images.LABEL_CONFLICT
    # Near-duplicates (other bytes, the same picture): kept, and put in one cluster and one split.
    for original, copy in NEAR_COPIES.items():
        _near_copy(root / original, root / copy)
        expected[copy] = "ok"
    return root, expected


# Near-duplicate copies planted in the tree: an enlarged one and a JPEG re-encode.
NEAR_COPIES = {"0/img_006.png": "0/img_006_large.png", "2/img_007.png": "2/img_007.jpg"}


def _near_copy(original: Path, copy: Path) -> None:
    im = Image.open(original).convert("RGB")
    if copy.suffix == ".png":
        im.resize((2 * im.width, 2 * im.height), Image.Resampling.NEAREST).save(copy)
    else:
        im.save(copy, "JPEG", quality=95)


def _run(spark, tmp_path: Path, source: Path | str, *overrides: str) -> Path:
    cfg = make_config(
        tmp_path,
        f"ingest.source={source}",
        "ingest.image_size=16",
        "ingest.max_image_pixels=100000",
        "gate.raw.min_per_class=20",
        "gate.raw.max_quarantine_ratio=0.2",
        "gate.raw.split_tolerance=0.2",
        *overrides,
    )
    return ingest.run(cfg, spark)


@pytest.fixture(scope="module")
def published(spark, source_tree, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root, _ = source_tree
    return _run(spark, tmp_path_factory.mktemp("out"), root)


def _rel(uri: str, root: Path) -> str:
    return uri.removeprefix(root.resolve().as_uri() + "/")


def test_every_file_is_an_image_row_or_a_quarantine_row(spark, source_tree, published: Path) -> None:
    root, expected = source_tree
    rows = spark.read.parquet(str(published / "images.parquet")).select("source_uri").collect()
    quarantined = spark.read.parquet(str(published / "quarantine.parquet")).select("source_uri", "reason").collect()
    got = {_rel(r["source_uri"], root): "ok" for r in rows}
    got.update({_rel(r["source_uri"], root): r["reason"] for r in quarantined})
    assert got == expected
    assert len(rows) + len(quarantined) == len(expected)


def test_quarantine_rows_explain_themselves(spark, published: Path) -> None:
    table = spark.read.parquet(str(published / "quarantine.parquet"))
    assert table.where(table.pixels.isNotNull()).count() == 0  # no pixels kept for unusable files
    q = {r["reason"]: r for r in tables.read_quarantine(spark, published).collect()}
    assert "img_001.png" in q[images.DUPLICATE]["detail"]
    assert q[images.LABEL_CONFLICT]["detail"] == "same content carries labels 1,2"
    assert "markup" in q[images.NOT_AN_IMAGE]["detail"] or "unknown format" in q[images.NOT_AN_IMAGE]["detail"]
    assert q[images.EMPTY]["size_bytes"] == 0
    # A file Pillow fails on with more than an OSError: quarantined, the exception's type named.
    assert re.match(r"[\w.]+(Error|error): ", q[images.UNREADABLE]["detail"]), q[images.UNREADABLE]["detail"]
    assert set(q) <= set(images.REASONS)


def test_image_rows_hold_normalised_pixels(spark, source_tree, published: Path) -> None:
    root, _ = source_tree
    table = tables.read_images(spark, published)
    row = table.where(table.source_uri == (root / "2" / "img_004.png").resolve().as_uri()).collect()[0]
    data = (root / "2" / "img_004.png").read_bytes()
    assert row["image_id"] == hashlib.sha256(data).hexdigest()
    assert row["label"] == "2"
    assert (row["height"], row["width"], row["orig_width"], row["orig_height"]) == (16, 16, 24, 24)
    assert (row["orig_format"], row["orig_mode"]) == ("PNG", "RGB")
    cfg = make_config(Path("/unused"), "ingest.image_size=16").ingest
    assert row["pixels"] == images.decode(data, cfg).pixels
    exif = table.where(table.source_uri.endswith("exif.jpg")).collect()[0]
    assert (exif["orig_width"], exif["orig_height"]) == (30, 40)  # rotated by EXIF: tall


def test_manifest_accounts_for_every_file(source_tree, published: Path) -> None:
    _, expected = source_tree
    doc = manifest.read_json(published)
    counts = doc["counts"]
    good = sum(1 for v in expected.values() if v == "ok")
    assert counts["files_seen"] == len(expected)
    assert counts["rows"] == good
    assert counts["quarantined"] == len(expected) - good
    assert counts["quarantine_by_reason"][images.LABEL_CONFLICT] == 2
    assert counts["classes"] == ["0", "1", "2"]
    assert sum(counts["rows_by_split"].values()) == good
    assert doc["stage"] == "ingest"
    assert doc["gate"]["success"] is True
    assert doc["gate"]["failed"] == []
    assert set(doc["job_version"]) >= {"package", "git_commit"}
    assert doc["params"]["ingest"]["image_size"] == 16
    assert len(doc["params_hash"]) == 64
    assert doc["spark"]["tasks"] > 0
    timings = doc["timings"]
    phases = [timings[f"{p}_s"] for p in ("read", "work", "gate", "publish")]
    assert all(t >= 0 for t in phases)
    assert timings["work_s"] > 0
    assert timings["gate_s"] > 0
    assert timings["total_s"] >= sum(phases)
    assert timings["startup_s"] is None  # run in a process that had its session already
    # Spark's own task metrics of this run's jobs (from the event log), per stage and in total.
    metrics = doc["spark"]["task_metrics"]
    assert metrics["total"]["tasks"] == sum(s["tasks"] for s in metrics["stages"]) > 0
    for key in ("executor_run_time_ms", "executor_cpu_time_ms", "executor_deserialize_time_ms", "output_bytes"):
        assert metrics["total"][key] > 0, key
        assert metrics["total"][key] == sum(s[key] for s in metrics["stages"]), key
    assert metrics["total"]["shuffle_write_bytes"] > 0  # the duplicate check and the gate's pass shuffle
    assert metrics["total"]["peak_execution_memory_bytes"] == max(
        s["peak_execution_memory_bytes"] for s in metrics["stages"]
    )
    assert json.loads((published / "_validation.json").read_text())  # the GX result travels with the data
    assert not any((published.parent / ".staging").iterdir())


def test_split_is_stable_across_reruns(spark, source_tree, published: Path, tmp_path: Path, caplog) -> None:
    root, _ = source_tree
    with caplog.at_level(logging.INFO, "spark_jobs.progress"):
        again = _run(spark, tmp_path, root, "data.progress_s=0.05")
    # progress while it decodes: files done (Spark's count) of those listed
    seen = manifest.read_json(again)["counts"]["files_seen"]
    lines = [r.getMessage() for r in caplog.records if r.name == "spark_jobs.progress"]
    assert lines
    assert all(re.match(rf"ingest: [\d,]+ / {seen:,} files \(\d+ %\), ", line) for line in lines), lines
    first = {r["image_id"]: (r["split"], r["cluster_id"]) for r in tables.read_images(spark, published).collect()}
    second = {r["image_id"]: (r["split"], r["cluster_id"]) for r in tables.read_images(spark, again).collect()}
    assert first == second
    fractions = {"train": 0.7, "val": 0.15, "test": 0.15}
    assert all(split == images.assign_split(cluster, fractions) for split, cluster in first.values())


def test_manifest_csv_source(spark, source_tree, tmp_path: Path) -> None:
    root, _ = source_tree
    lines = ["path,label"] + [f"{label}/img_{i:03d}.png,{label}" for label in range(3) for i in range(PER_CLASS)]
    lines += ["0/missing.png,0", "0/page.png,0"]
    csv_path = root / "manifest.csv"
    csv_path.write_text("\n".join(lines) + "\n")
    try:
        out = _run(spark, tmp_path, csv_path)
    finally:
        csv_path.unlink()
    doc = manifest.read_json(out)
    assert doc["inputs"]["source"]["kind"] == "manifest"
    assert doc["counts"]["files_seen"] == 3 * PER_CLASS + 2
    assert doc["counts"]["quarantine_by_reason"] == {images.FETCH_FAILED: 1, images.NOT_AN_IMAGE: 1}
    assert doc["counts"]["rows"] == 3 * PER_CLASS


def test_gate_failure_publishes_nothing(spark, source_tree, tmp_path: Path) -> None:
    root, _ = source_tree
    with pytest.raises(GateFailed) as info:
        _run(spark, tmp_path, root, "gate.raw.max_quarantine_ratio=0.01")
    data = tmp_path / "data"
    assert not (data / "ingest").exists()
    rejected = info.value.rejected
    assert rejected.parent == data / "rejected"
    assert (rejected / "images.parquet").is_dir()
    assert manifest.read_json(rejected)["gate"]["success"] is False
    summary = (data / "gates" / "ingest" / "summary.txt").read_text()
    assert "FAILED summary: expect_column_values_to_be_between" in summary
    assert "quarantine_ratio" in summary
    assert (data / "gates" / "ingest" / "docs" / "index.html").exists()


@pytest.mark.slow
def test_cli_gate_failure_exits_3_with_report(source_tree, tmp_path: Path) -> None:
    root, _ = source_tree
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "spark_jobs.ingest",
            "--set",
            f"data.root={tmp_path}",
            "--set",
            f"ingest.source={root}",
            "--set",
            "spark.master=local[2]",
            "--set",
            "gate.raw.min_per_class=1000",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 3, proc.stderr[-3000:]
    assert "gate 'ingest' failed: nothing published" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "ingest").exists()
    # The verdict once, its report page named; Spark's start-up at WARN (no INFO lines of its own).
    assert proc.stderr.count("gate 'ingest' failed") == 1
    assert f"Report: {tmp_path}/gates/ingest/report.html" in proc.stderr
    assert not [line for line in proc.stderr.splitlines() if re.match(r"\d\d/\d\d/\d\d \S+ INFO ", line)]
    assert "log4j profile" not in proc.stderr
    page = (tmp_path / "gates" / "ingest" / "report.html").read_text()
    assert "FAILED" in page
    assert "≥ 1000" in page  # each check's threshold beside what it observed
    # The quarantined files on the page, by reason: those whose bytes decode as thumbnails, the others named.
    assert "Quarantined: not_an_image" in page
    assert "Quarantined: empty" in page
    assert page.count("data:image/png;base64,") + page.count("bytes do not decode") >= 1


@pytest.mark.slow
def test_spark_submit_runs_the_job_and_its_master_wins(tmp_path: Path) -> None:
    """DESIGN #1: the module runs under spark-submit, whose --master (Airflow's connection) wins."""
    write_class_tree(tmp_path / "src", classes=2, per_class=25)
    spark_submit = Path(sys.executable).with_name("spark-submit")
    proc = subprocess.run(
        [
            str(spark_submit),
            "--master",
            "local[1]",
            "spark_jobs/ingest.py",
            "--set",
            f"data.root={tmp_path / 'out'}",
            "--set",
            f"ingest.source={tmp_path / 'src'}",
            "--set",
            "gate.raw.split_tolerance=0.3",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "PYSPARK_PYTHON": sys.executable},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    doc = manifest.read_json(tmp_path / "out" / "ingest")
    assert doc["spark"]["master"] == "local[1]"
    assert doc["counts"]["rows"] == 50
    timings = doc["timings"]  # from the start of the JVM spark-submit launched, to the final rename
    assert 0 < timings["startup_s"] < timings["total_s"]
    assert timings["total_s"] >= timings["startup_s"] + timings["work_s"] + timings["gate_s"]
    assert doc["spark"]["task_metrics"]["total"]["executor_run_time_ms"] > 0


def test_a_full_data_root_stops_the_run_in_one_line_and_publishes_nothing(spark, tmp_path: Path) -> None:
    from spark_jobs.core.jobs import storage_fault

    write_class_tree(tmp_path / "src", 2, 3)
    with tmpfs(tmp_path / "full", size="256k", full=True) as full:
        with pytest.raises(Exception) as info:  # noqa: PT011 (whatever Spark or Python raise on it)
            _run(spark, tmp_path, tmp_path / "src", f"data.root={full / 'data'}", "gate.raw.min_per_class=1")
        reason = storage_fault(info.value)
        assert reason is not None, str(info.value)[:2000]
        assert "No space left on device" in reason
        assert "\n" not in reason
        assert not (full / "data" / "ingest").exists()


def test_near_duplicates_share_one_cluster_and_one_split(spark, source_tree, published: Path) -> None:
    root, _ = source_tree
    rows = {_rel(r["source_uri"], root): r for r in tables.read_images(spark, published).collect()}
    cfg = make_config(Path("/unused")).ingest.split
    for original, copy in NEAR_COPIES.items():
        a, b = rows[original], rows[copy]
        cluster = min(a["image_id"], b["image_id"])
        assert a["cluster_id"] == b["cluster_id"] == cluster
        assert a["split"] == b["split"] == images.assign_split(cluster, cfg.fractions(), cfg.seed)
    clustered = {rel for rel, r in rows.items() if r["cluster_id"] != r["image_id"]}
    assert clustered <= set(NEAR_COPIES) | set(NEAR_COPIES.values())  # every other image is its own cluster
    alone = [r for rel, r in rows.items() if rel not in NEAR_COPIES and rel not in NEAR_COPIES.values()]
    assert all(r["split"] == images.assign_split(r["image_id"], cfg.fractions(), cfg.seed) for r in alone)
    pairs = spark.read.parquet(str(published / ingest.PAIRS)).collect()
    assert {tuple(sorted((_rel(p["source_uri_a"], root), _rel(p["source_uri_b"], root)))) for p in pairs} == {
        tuple(sorted(pair)) for pair in NEAR_COPIES.items()
    }
    assert all(p["method"] == near_duplicates.METHOD and 0 <= p["distance"] < 0.05 for p in pairs)
    counts = manifest.read_json(published)["counts"]["near_duplicates"]
    assert counts == {
        "pairs": 2,
        "clusters": 2,
        "images_in_clusters": 4,
        "clusters_spanning_splits": 0,
        "cross_split_pairs": 0,
    }
    report = published.parent / "gates" / "ingest" / "report.html"
    page = report.read_text()
    assert page.count("Near-duplicate cluster ") == 2
    assert "img_006_large.png" in page


def test_the_audit_page_renders_in_a_browser_offline(published: Path, tmp_path: Path) -> None:
    """The raw gate's page, clusters and flags included, drawn by Chromium with the network refused."""
    from tests.orchestration import browser

    if (missing := browser.available()) is not None:
        pytest.skip(missing)
    drawn = browser.open_offline(published.parent / "gates" / "ingest" / "report.html", tmp_path / "ingest.png")
    assert drawn["refused"] == [], drawn
    assert drawn["errors"] == [], drawn
    assert drawn["broken"] == 0, drawn
    assert drawn["images"] >= 4, drawn  # quarantined files, the two clusters of two, the flagged images


def test_quality_figures_and_flags_are_columns(spark, source_tree, published: Path) -> None:
    root, _ = source_tree
    rows = {_rel(r["source_uri"], root): r for r in tables.read_images(spark, published).collect()}
    tree = rows["1/img_004.png"]  # noise with a bright bar: a colour picture, not flagged
    assert tree["flags"] == []
    assert tree["grayscale"] is False
    assert tree["aspect_ratio"] == 1.0
    assert 0 < tree["brightness"] < 1
    grey = rows["0/grey16.png"]  # 16-bit greyscale noise
    assert grey["grayscale"] is True
    assert "grayscale" in grey["flags"]
    assert rows["0/exif.jpg"]["aspect_ratio"] == pytest.approx(30 / 40)  # as the picture stands, upright


def test_relabel_file_replaces_two_columns_and_keeps_the_rest(spark, tmp_path: Path) -> None:
    import pyarrow.parquet as pq

    rows = [
        (f"id{n}", f"id{n}", "train", bytes([n]) * 300, [float(n), 0.5], ["dark"] if n % 2 else []) for n in range(6)
    ]
    schema = (
        "image_id string, cluster_id string, split string, pixels binary, dup_vectors array<float>, flags array<string>"
    )
    spark.createDataFrame(rows, schema).coalesce(1).write.parquet(str(tmp_path / "in"))
    [source] = (tmp_path / "in").glob("part-*.parquet")
    target = tmp_path / "out.parquet"
    ingest.relabel_file(str(source), str(target), {"id1": ("id0", "test"), "id4": ("id3", None)})
    back = {r["image_id"]: r for r in spark.read.schema(schema).parquet(str(target)).collect()}
    assert [(back[i]["cluster_id"], back[i]["split"]) for i in ("id0", "id1", "id3", "id4")] == [
        ("id0", "train"),
        ("id0", "test"),  # a new cluster and split
        ("id3", "train"),
        ("id3", "train"),  # a new cluster, its split kept (split.by: image)
    ]
    assert [(r["pixels"], r["dup_vectors"], r["flags"]) for r in back.values()] == [
        (p, v, f) for _, _, _, p, v, f in rows
    ]
    before, after = pq.ParquetFile(source).metadata, pq.ParquetFile(target).metadata
    assert (after.num_rows, after.num_row_groups) == (before.num_rows, before.num_row_groups)
    assert after.row_group(0).column(0).compression == before.row_group(0).column(0).compression
