"""The score stage on real files: each model kind, top-k, quarantine, exactly-once and incremental
runs, a run killed before publishing, and the predictions gate."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from spark_jobs import ingest, score
from spark_jobs.core import atomic, manifest, runner, store
from spark_jobs.core import tables as core_tables
from spark_jobs.core.config import ConfigError
from spark_jobs.core.verdict import GateFailed
from spark_jobs.imaging import images
from spark_jobs.ml import cards, inference, models
from spark_jobs.params import Config
from spark_jobs.scoring import predict, tables
from tests.conftest import INGESTED_CLASSES
from tests.factories import class_image, s3_inbox, score_config, with_overrides, write_inbox
from tests.spark_jobs.imaging.test_decode_fuzz import pillow_crasher

pytestmark = pytest.mark.spark


def _cascade(trained: Config, tmp_path: Path, confidence: float) -> Config:
    """The trained mllib model as the cascade's light model, the cnn as its heavy one."""
    return score_config(
        trained,
        tmp_path,
        "cnn",
        "score.cascade.enabled=true",
        f"score.cascade.light={Path(trained.train.output) / 'mllib'}",
        f"score.cascade.confidence={confidence}",
        "gate.predictions.max_low_confidence=1.0",
    )


def _plain_loop(folder: Path, files: list[Path]) -> dict[str, tuple[str, float]]:
    """``{file name: (label, probability)}`` of a cnn over ``files``, in one process: each file
    decoded by ``images.decode`` with the model's ingest settings, one batch through the model."""
    import torch

    card = cards.read_card(folder)
    ingest_cfg = card.ingest_settings
    decoded = [images.decode(f.read_bytes(), ingest_cfg) for f in files]
    pixels = np.stack([images.pixels_to_array(d.pixels, d.height, d.width) for d in decoded])
    with torch.inference_mode():
        net = inference.TorchModel.from_card(folder, card).load()
        probability, index = torch.softmax(net(models.to_tensor(pixels)), dim=1).max(1)
    return {f.name: (card.classes[i], p) for f, i, p in zip(files, index.tolist(), probability.tolist(), strict=True)}


def _rows(spark, cfg: Config) -> list:
    table = tables.read_predictions(spark, tables.predictions_dir(cfg.data.root))
    return [] if table is None else table.collect()


def test_cnn_scores_each_new_image_exactly_once(spark, trained: Config, tmp_path: Path) -> None:
    truth = write_inbox(tmp_path / "inbox", 100, 4)
    (tmp_path / "inbox" / "zz_copy.png").write_bytes((tmp_path / "inbox" / "new_0_100.png").read_bytes())
    (tmp_path / "inbox" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    (tmp_path / "inbox" / "crashes-pillow.tif").write_bytes(pillow_crasher())  # made Pillow raise TypeError & co
    cfg = score_config(trained, tmp_path, "cnn", "score.top_k=2", "gate.predictions.max_low_confidence=1.0")
    card = cards.read_card(Path(cfg.score.model))

    first = score.run(cfg, spark)
    assert first is not None
    assert first.parent.name.startswith("run_date=")
    assert first.name.startswith("run_id=")
    rows = _rows(spark, cfg)
    assert len(rows) == len(truth)  # the copy is scored once
    assert len({r["image_id"] for r in rows}) == len(rows)
    by_name = {Path(r["source_uri"]).name: r for r in rows}
    assert set(by_name) == set(truth)
    correct = sum(by_name[n]["predicted_label"] == label for n, label in truth.items())
    assert correct / len(truth) > 0.8  # 3 classes: chance is 1/3
    # The job's rows are a plain loop's over the same files (the project's decode and model, no
    # Spark): same labels, same probabilities, no row lost or given another file's prediction.
    expected = _plain_loop(Path(cfg.score.model), [tmp_path / "inbox" / n for n in sorted(truth)])
    for name, (label, probability) in expected.items():
        assert by_name[name]["predicted_label"] == label, name
        assert by_name[name]["probability"] == pytest.approx(probability, abs=1e-5), name
    for r in rows:
        assert r["model_version"] == card.version
        assert r["model_kind"] == "cnn"
        assert r["job_version"]
        assert r["scored_at"] is not None
        assert len(r["top_k"]) == 2
        assert r["top_k"][0]["label"] == r["predicted_label"]
        assert r["top_k"][0]["probability"] == pytest.approx(r["probability"])
        assert r["top_k"][0]["probability"] >= r["top_k"][1]["probability"]
        assert 0.0 <= sum(t["probability"] for t in r["top_k"]) <= 1.0 + 1e-6
    quarantine = spark.read.parquet(str(Path(cfg.data.root) / tables.QUARANTINE)).collect()
    reasons = {Path(r["source_uri"]).name: r["reason"] for r in quarantine}
    assert reasons["zz_copy.png"] == images.DUPLICATE  # the copy with the larger URI
    assert reasons["broken.png"] in {images.NOT_AN_IMAGE, images.TRUNCATED, images.UNREADABLE}
    assert reasons["crashes-pillow.tif"] == images.UNREADABLE
    assert len(reasons) == 3
    doc = manifest.read_json(first)
    assert doc["counts"]["scored"] == len(truth)
    assert doc["gate"]["success"]

    # The same inbox again: nothing new, nothing added, the bad files are not reported twice.
    assert score.run(cfg, spark) is None
    assert len(_rows(spark, cfg)) == len(truth)
    assert len(spark.read.parquet(str(Path(cfg.data.root) / tables.QUARANTINE)).collect()) == len(quarantine)

    # New arrivals: only they are scored.
    more = write_inbox(tmp_path / "inbox", 200, 2)
    score.run(cfg, spark)
    rows = _rows(spark, cfg)
    assert len(rows) == len(truth) + len(more)
    assert len({r["image_id"] for r in rows}) == len(rows)
    assert len(tables.committed_runs(tables.predictions_dir(cfg.data.root))) == 2


def test_two_runs_at_once_score_each_image_once(spark, trained: Config, tmp_path: Path) -> None:
    """Started together on one inbox and data.root: the second waits for the first's lock, then
    finds every image scored. One prediction per image, neither run touched the other's staging."""
    import threading

    truth = write_inbox(tmp_path / "inbox", 400, 3)
    cfg = score_config(trained, tmp_path, "cnn", "gate.predictions.max_low_confidence=1.0")
    results: list[object] = []
    runs = [threading.Thread(target=lambda: results.append(score.run(cfg, spark))) for _ in range(2)]
    for t in runs:
        t.start()
    for t in runs:
        t.join(timeout=600)
    assert len(results) == 2
    assert sorted(r is None for r in results) == [False, True]  # one published, one found nothing new
    rows = _rows(spark, cfg)
    assert len(rows) == len(truth)
    assert len({r["image_id"] for r in rows}) == len(rows)


def test_a_run_killed_before_publishing_leaves_nothing_visible(spark, trained, tmp_path, monkeypatch) -> None:
    truth = write_inbox(tmp_path / "inbox", 300, 3)
    cfg = score_config(trained, tmp_path, "cnn", "gate.predictions.max_low_confidence=1.0")
    real_publish = runner.StageRun.finish_append

    def killed(*args: object) -> Path:
        raise KeyboardInterrupt("killed while publishing")

    monkeypatch.setattr(runner.StageRun, "finish_append", killed)
    with pytest.raises(KeyboardInterrupt):
        score.run(cfg, spark)
    assert _rows(spark, cfg) == []  # the written batch was staged, never visible
    # A SIGKILL leaves its staging folder behind (an interrupt is cleaned up): the next run removes it.
    stale = Path(cfg.data.root) / ".staging" / "score-20260101T000000Z-deadbeef"
    (stale / "predictions").mkdir(parents=True)

    monkeypatch.setattr(runner.StageRun, "finish_append", real_publish)
    score.run(cfg, spark)
    rows = _rows(spark, cfg)
    assert len(rows) == len(truth)
    assert len({r["image_id"] for r in rows}) == len(rows)
    assert not list((Path(cfg.data.root) / ".staging").glob("score-*"))  # the killed run's staging is gone


def test_mllib_model_scores_with_its_saved_transform(spark, trained: Config, tmp_path: Path) -> None:
    truth = write_inbox(tmp_path / "inbox", 100, 4)
    cfg = score_config(trained, tmp_path, "mllib", "gate.predictions.max_low_confidence=1.0")
    score.run(cfg, spark)
    rows = _rows(spark, cfg)
    assert {r["model_kind"] for r in rows} == {"mllib"}
    by_name = {Path(r["source_uri"]).name: r for r in rows}
    correct = sum(by_name[n]["predicted_label"] == label for n, label in truth.items())
    assert correct / len(truth) > 0.8
    assert all(len(r["top_k"]) == 3 for r in rows)


def test_autoencoder_flags_with_its_threshold(spark, trained: Config, tmp_path: Path) -> None:
    write_inbox(tmp_path / "inbox", 100, 3)
    cfg = score_config(trained, tmp_path, "autoencoder")
    threshold = cards.read_card(Path(cfg.score.model)).threshold
    score.run(cfg, spark)
    rows = _rows(spark, cfg)
    assert len(rows) == 3 * INGESTED_CLASSES
    for r in rows:
        assert r["is_anomaly"] == (r["anomaly_score"] > threshold)
        assert r["predicted_label"] == ("anomaly" if r["is_anomaly"] else "normal")
        assert r["probability"] is None


def test_a_failing_batch_is_not_published(spark, trained: Config, tmp_path: Path) -> None:
    write_inbox(tmp_path / "inbox", 100, 2)
    # Every prediction counts as low-confidence, and at most 10 % may be.
    cfg = score_config(trained, tmp_path, "cnn", "score.low_confidence=1.0", "gate.predictions.max_low_confidence=0.1")
    with pytest.raises(GateFailed) as failure:
        score.run(cfg, spark)
    assert "low_confidence" in str(failure.value)
    assert _rows(spark, cfg) == []
    # The rejected run is kept whole: its predictions, its manifest saying why, its validation.
    (rejected,) = (Path(cfg.data.root) / "rejected").glob("score-*")
    assert failure.value.rejected == rejected
    kept = spark.read.parquet(str(rejected / tables.PREDICTIONS)).collect()
    assert sorted(Path(r["source_uri"]).name for r in kept) == sorted(p.name for p in (tmp_path / "inbox").iterdir())
    doc = manifest.read(rejected)
    assert not doc.gate.success
    assert any("low_confidence_share" in f for f in doc.gate.failed)
    assert (doc.counts["files_seen"], doc.counts["scored"]) == (6, 6)
    assert (rejected / runner.VALIDATION).exists()
    assert "low_confidence_share" in (Path(cfg.data.root) / "gates" / "score" / "summary.txt").read_text()


def _inverted(source: Path, target: Path) -> None:
    """``source``'s images, their colours inverted, into ``target``: a camera gone wrong."""
    from PIL import Image, ImageOps

    target.mkdir(parents=True)
    for f in sorted(source.iterdir()):
        ImageOps.invert(Image.open(f).convert("RGB")).save(target / f.name)


def test_a_shifted_inbox_fails_the_drift_gate_and_a_clean_one_passes_it(spark, trained: Config, tmp_path) -> None:
    """End to end, small: the cnn's embeddings from the scoring pass against the reference kept
    beside it; ``gate.predictions.drift: fail`` publishes the clean inbox and rejects the inverted one."""
    from tests.orchestration import browser

    write_inbox(tmp_path / "clean" / "inbox", 300, 14)  # 42 new images of the trained classes
    _inverted(tmp_path / "clean" / "inbox", tmp_path / "shifted" / "inbox")
    overrides = ("drift.min_rows=30", "gate.predictions.drift=fail", "gate.predictions.max_low_confidence=1.0")
    clean = score_config(trained, tmp_path / "clean", "cnn", *overrides)
    published = score.run(clean, spark)
    record = manifest.read(published).drift
    assert (record.outcome, record.drifted, record.batch_rows, record.layer) == ("passed", False, 42, "backbone")
    assert record.statistic < clean.drift.threshold
    assert record.reference_rows == cards.read_card(Path(clean.score.model)).reference.rows

    shifted = score_config(trained, tmp_path / "shifted", "cnn", *overrides)
    with pytest.raises(GateFailed, match="embedding_drift"):
        score.run(shifted, spark)
    assert _rows(spark, shifted) == []
    (rejected,) = (Path(shifted.data.root) / "rejected").glob("score-*")
    record = manifest.read(rejected).drift
    assert (record.outcome, record.drifted, record.consequence) == ("drifted", True, "fail")
    assert record.statistic > shifted.drift.threshold
    page = Path(shifted.data.root) / "gates" / "score" / "report.html"
    assert "Embedding drift (drifted" in page.read_text()
    assert page.read_text().count("P(batch)") >= 12  # the most unlike images, each with its figure
    if browser.available() is None:  # make test installs Chromium
        drawn = browser.open_offline(page, tmp_path / "drift.png")
        assert (drawn["refused"], drawn["errors"], drawn["broken"]) == ([], [], 0), drawn
        assert drawn["images"] >= 13, drawn  # the plot and the thumbnails


def test_a_shadow_scores_the_same_pixels_into_its_own_table_as_it_would_alone(spark, trained, tmp_path) -> None:
    """The cnn as champion and the mllib model as its shadow: the shadow's rows are what scoring
    the mllib model alone gives, kept out of the predictions, and the manifest's agreement is the
    share of images the two label alike."""
    write_inbox(tmp_path / "inbox", 400, 6)
    (tmp_path / "inbox" / "zz_copy.png").write_bytes((tmp_path / "inbox" / "new_0_400.png").read_bytes())
    mllib = Path(trained.train.output) / "mllib"
    lenient = "gate.predictions.max_low_confidence=1.0"
    cfg = score_config(trained, tmp_path, "cnn", f"score.shadow={mllib}", lenient)
    published = score.run(cfg, spark)
    ours = {r["image_id"]: r for r in _rows(spark, cfg)}
    (run,) = tables.committed_runs(tables.shadow_dir(cfg.data.root))
    theirs = {r["image_id"]: r for r in spark.read.parquet(str(run)).collect()}
    assert set(theirs) == set(ours)
    assert len(ours) == 18
    assert {r["model_version"] for r in ours.values()} == {cards.read_card(Path(cfg.score.model)).version}

    alone = score_config(trained, tmp_path / "alone", "mllib", f"score.inbox={tmp_path / 'inbox'}", lenient)
    score.run(alone, spark)
    expected = {r["image_id"]: r for r in _rows(spark, alone)}
    for image_id, row in theirs.items():
        want = expected[image_id]
        assert (row["predicted_label"], row["model_version"], row["decided_by"]) == (
            want["predicted_label"],
            want["model_version"],
            "mllib",
        )
        assert row["probability"] == pytest.approx(want["probability"], abs=1e-6)
        assert [t["label"] for t in row["top_k"]] == [t["label"] for t in want["top_k"]]

    record = manifest.read(published).shadow
    same = [ours[i]["predicted_label"] == theirs[i]["predicted_label"] for i in ours]
    assert (record.rows, record.agreement) == (18, pytest.approx(sum(same) / len(same)))
    assert record.shadow.version == cards.read_card(mllib).version
    mix = {label: sum(r["predicted_label"] == label for r in theirs.values()) / 18 for label in ("0", "1", "2")}
    assert record.shadow.class_mix == pytest.approx({k: v for k, v in mix.items() if v})
    page = (Path(cfg.data.root) / "gates" / "score" / "report.html").read_text()
    assert "Champion and shadow disagree" in page


def test_int8_copy_of_the_cnn_scores_like_fp32(spark, trained: Config, tmp_path: Path) -> None:
    write_inbox(tmp_path / "inbox", 100, 4)
    fp32 = score_config(trained, tmp_path, "cnn", "gate.predictions.max_low_confidence=1.0")
    score.run(fp32, spark)
    int8 = score_config(
        trained,
        tmp_path,
        "cnn",
        "score.quantize=int8",
        f"data.root={tmp_path / 'int8'}",
        "gate.predictions.max_low_confidence=1.0",
    )
    score.run(int8, spark)
    a = {r["image_id"]: r for r in _rows(spark, fp32)}
    b = {r["image_id"]: r for r in _rows(spark, int8)}
    assert set(a) == set(b)
    assert {r["decided_by"] for r in b.values()} == {"cnn-int8"}
    assert {r["decided_by"] for r in a.values()} == {"cnn"}
    agree = sum(a[i]["predicted_label"] == b[i]["predicted_label"] for i in a)
    assert agree / len(a) >= 0.9


def test_int8_is_for_cnn_models_only(spark, trained: Config, tmp_path: Path) -> None:
    write_inbox(tmp_path / "inbox", 100, 1)
    with pytest.raises(ConfigError, match="cnn"):
        score.run(score_config(trained, tmp_path, "mllib", "score.quantize=int8"), spark)


@pytest.mark.parametrize(("confidence", "deciders"), [(0.0, {"mllib"}), (1.0, {"cnn"})])
def test_cascade_sends_only_unsure_images_to_the_cnn(spark, trained, tmp_path, confidence, deciders) -> None:
    truth = write_inbox(tmp_path / "inbox", 100, 3)
    cfg = _cascade(trained, tmp_path, confidence)
    score.run(cfg, spark)
    rows = _rows(spark, cfg)
    assert len(rows) == len(truth)
    assert {r["decided_by"] for r in rows} == deciders
    assert {r["model_kind"] for r in rows} == {"cascade"}
    assert rows[0]["model_version"].startswith("cascade-mllib-")
    if confidence == 0.0:
        assert all(r["probability"] >= 0.0 for r in rows)


def test_cascade_mixes_models_by_confidence(spark, trained: Config, tmp_path: Path) -> None:
    write_inbox(tmp_path / "inbox", 100, 4)
    light = score_config(
        trained, tmp_path, "mllib", f"data.root={tmp_path / 'light'}", "gate.predictions.max_low_confidence=1.0"
    )
    score.run(light, spark)
    probabilities = sorted(r["probability"] for r in _rows(spark, light))
    cut = probabilities[len(probabilities) // 2]  # about half below, half at or above
    cfg = _cascade(trained, tmp_path, cut)
    score.run(cfg, spark)
    rows = _rows(spark, cfg)
    assert len(rows) == len(probabilities)
    heavy = sum(r["decided_by"] == "cnn" for r in rows)
    assert heavy == sum(p < cut for p in probabilities)
    assert all(r["probability"] >= cut for r in rows if r["decided_by"] == "mllib")


@pytest.mark.s3
def test_cnn_scores_an_s3_inbox_incrementally(spark, trained: Config, tmp_path: Path, s3_server: str) -> None:
    import boto3

    client = boto3.client("s3")
    truth = s3_inbox("inbox", "incoming", tmp_path / "local", 100, 4)
    client.put_object(Bucket="inbox", Key="incoming/broken.png", Body=b"not an image at all")
    cfg = score_config(
        trained, tmp_path, "cnn", "score.inbox=s3://inbox/incoming", "gate.predictions.max_low_confidence=1.0"
    )
    first = score.run(cfg, spark)
    assert first is not None
    rows = _rows(spark, cfg)
    by_uri = {r["source_uri"]: r["predicted_label"] for r in rows}
    assert set(by_uri) == {f"s3://inbox/incoming/{name}" for name in truth}
    correct = sum(by_uri[f"s3://inbox/incoming/{name}"] == label for name, label in truth.items())
    assert correct / len(truth) > 0.8
    quarantine = spark.read.parquet(str(Path(cfg.data.root) / tables.QUARANTINE)).collect()
    assert [(q["source_uri"], q["reason"]) for q in quarantine] == [
        ("s3://inbox/incoming/broken.png", images.NOT_AN_IMAGE)
    ]
    doc = manifest.read_json(first)
    assert doc["inputs"]["inbox"]["endpoint"] == s3_server
    assert "test-secret-not-for-manifests" not in (first / "_manifest.json").read_text()
    # One more object arrives: the next run scores it alone.
    client.put_object(Bucket="inbox", Key="incoming/late.png", Body=class_image(0, 300))
    second = score.run(cfg, spark)
    assert second is not None
    counts = manifest.read_json(second)["counts"]
    assert (counts["scored"], counts["already_scored"], counts["quarantined"]) == (1, len(truth), 0)
    # each outcome counted from rows, the broken file among the unusable (reported by the first run)
    seen = counts["files_scored"] + counts["already_scored"] + counts["unusable"]
    assert counts["files_seen"] == seen == len(truth) + 2
    assert counts["unaccounted"] == 0
    assert [r["source_uri"] for r in spark.read.parquet(str(second)).collect()] == ["s3://inbox/incoming/late.png"]


def test_any_name_the_file_system_allows_is_ingested_and_scored(spark, trained: Config, tmp_path: Path) -> None:
    """Roots, sources and inboxes named with glob characters, ``:``, ``%``, spaces and bytes that
    are not UTF-8; a duplicate in the source (its move to quarantine reads Spark's own file names
    back); NFC and NFD spellings of one class; a Latin-1 class and file name."""
    odd = tmp_path / "r [1]{a}*?:%20 \u00e9"
    source, inbox = Path(os.fsdecode(bytes(odd) + b"/src \xe9")), Path(os.fsdecode(bytes(odd) + b"/inbox \xe9"))
    for folder, start in (("0", 0), ("cafe\u0301", 10), ("caf\u00e9", 20), (os.fsdecode(b"lat\xe9n"), 30)):
        (source / folder).mkdir(parents=True)
        for i in range(start, start + 3):
            (source / folder / f"img {i}.png").write_bytes(class_image(i % 3, i))
    latin1_file = source / "0" / os.fsdecode(b"\xe9t\xe9.png")
    latin1_file.write_bytes(class_image(0, 99))
    (source / "0" / "copy.png").write_bytes((source / "0" / "img 0.png").read_bytes())
    before = {p: p.read_bytes() for p in source.rglob("*") if p.is_file()}
    cfg = with_overrides(
        trained,
        f"data.root={odd / 'data'}",
        f"ingest.source={(source).as_uri()}",  # a file: URI, %-escaped, of a path that is not UTF-8
        "ingest.image_size=16",
        "gate.raw.min_per_class=1",
        "gate.raw.max_quarantine_ratio=0.5",
        "gate.raw.split_tolerance=1.0",
    )
    published = ingest.run(cfg, spark)
    images_rows = core_tables.read_images(spark, published).collect()
    assert {r["label"] for r in images_rows} == {"0", "caf\u00e9", "lat\\xe9n"}  # NFD and NFC: one class
    assert len(images_rows) == 13  # 12, the Latin-1 file and copy.png; img 0.png left out as its copy
    assert latin1_file.as_uri() in {r["source_uri"] for r in images_rows}
    quarantined = core_tables.read_quarantine(spark, published).collect()
    # the copy with the smaller URI stays
    assert [(store.local_path(r["source_uri"]).name, r["reason"]) for r in quarantined] == [
        ("img 0.png", images.DUPLICATE)
    ]
    assert {p: p.read_bytes() for p in source.rglob("*") if p.is_file()} == before  # the source untouched

    inbox.mkdir()
    (inbox / os.fsdecode(b"new \xe9 [2].png")).write_bytes(class_image(1, 7))
    scoring = score_config(trained, tmp_path, "cnn", f"data.root={odd / 'data'}", f"score.inbox={inbox}")
    run_folder = score.run(scoring, spark)
    assert run_folder is not None
    [row] = tables.read_predictions(spark, tables.predictions_dir(scoring.data.root)).collect()
    assert store.local_path(row["source_uri"]).name == os.fsdecode(b"new \xe9 [2].png")


def test_a_promotion_during_a_batch_run_changes_the_next_run_only(
    spark, trained: Config, tmp_path, monkeypatch
) -> None:
    models = Path(trained.train.output)
    champion = tmp_path / "champion"
    atomic.copy_dir(models / "cnn", champion, tmp_path / ".staging")
    write_inbox(tmp_path / "inbox", 100, 1)
    cfg = score_config(trained, tmp_path, "cnn", "gate.predictions.max_low_confidence=1.0", f"score.model={champion}")
    scan = predict.scan_files

    def promote_meanwhile(*args, **kwargs):  # after the run read its model, before its tasks load it
        atomic.copy_dir(models / "mllib", champion, tmp_path / ".staging")
        return scan(*args, **kwargs)

    monkeypatch.setattr(predict, "scan_files", promote_meanwhile)
    assert score.run(cfg, spark) is not None
    monkeypatch.setattr(predict, "scan_files", scan)
    write_inbox(tmp_path / "inbox", 200, 1)
    assert score.run(cfg, spark) is not None
    rows = tables.read_predictions(spark, tables.predictions_dir(cfg.data.root)).collect()
    by_run = {(r["run_id"], r["model_version"]) for r in rows}
    cnn, mllib = cards.read_card(models / "cnn").version, cards.read_card(models / "mllib").version
    assert sorted(v for _, v in by_run) == sorted([cnn, mllib])  # one version per run: the one it began with
    assert sum(r["model_version"] == cnn for r in rows) == 3
