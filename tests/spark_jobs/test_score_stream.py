"""The score stage's stream mode on real files: micro-batches over a folder and an S3 prefix, video
frames, the rolling-window gate and rejected micro-batches, a champion change without a restart,
the batch run standing aside for a stream, and SIGKILL / SIGTERM of a running stream."""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from spark_jobs import score
from spark_jobs.core import atomic, lineage, locks, manifest
from spark_jobs.core.verdict import GateFailed
from spark_jobs.imaging import images, video
from spark_jobs.lineage import trace
from spark_jobs.ml import cards
from spark_jobs.params import Config
from spark_jobs.scoring import status, stream, tables
from tests.factories import REPO, class_frames, class_image, s3_inbox, score_config, video_bytes, write_inbox
from tests.openlineage_events import of_job, problems, read_events
from tests.processes import kill_group, wait_for

pytestmark = pytest.mark.spark

STREAM = ("score.mode=stream", "score.stream.available_now=true", "gate.predictions.max_low_confidence=1.0")


def _stream_rows(spark, cfg: Config) -> list:
    table = tables.read_stream_predictions(spark, cfg.data.root)
    return [] if table is None else table.collect()


def _status(cfg: Config) -> status.Status:
    return status.read_status(tables.stream_dir(cfg.data.root))


def test_a_stream_scores_new_images_and_video_frames_once(spark, trained: Config, tmp_path: Path) -> None:
    # Scored by a batch run first (another inbox, the same data.root): the stream's lookup reads
    # the batch table too.
    write_inbox(tmp_path / "batch_inbox", 100, 1)
    before = score_config(
        trained, tmp_path, "cnn", "gate.predictions.max_low_confidence=1.0", f"score.inbox={tmp_path / 'batch_inbox'}"
    )
    assert score.run(before, spark) is not None
    batch_rows = len(tables.read_predictions(spark, tables.predictions_dir(before.data.root)).collect())

    truth = write_inbox(tmp_path / "inbox", 100, 3)  # the batch run's 3 images again, and 6 more
    inbox = tmp_path / "inbox"
    (inbox / "zz_copy.png").write_bytes((inbox / "new_2_102.png").read_bytes())  # in the same micro-batch
    (inbox / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    clip = video_bytes(class_frames([0, 1, 2, 0, 1, 2], 500))
    (inbox / "clip.mkv").write_bytes(clip)
    lossy = video_bytes(class_frames([2, 2, 2, 2], 600), "mp4", "mpeg4")
    (inbox / "cut.mp4").write_bytes(lossy[: len(lossy) // 2])
    cfg = score_config(
        trained,
        tmp_path,
        "cnn",
        *STREAM,
        "score.stream.max_files_per_trigger=4",
        "score.video.every_nth=2",
        "drift.min_rows=8",
    )
    version = cards.read_card(Path(cfg.score.model)).version

    ran = stream.run_stream(cfg, spark)
    assert ran == 4  # 13 files, 4 per micro-batch, oldest first: the last one holds cut.mp4 alone
    rows = _stream_rows(spark, cfg)
    images_rows = [r for r in rows if r["video_id"] is None]
    by_name = {Path(r["source_uri"]).name: r for r in images_rows}
    assert set(by_name) == set(truth) - {f"new_{c}_100.png" for c in range(3)}  # the batch run's are skipped
    assert len(images_rows) == len(by_name)
    assert sum(by_name[n]["predicted_label"] == truth[n] for n in by_name) >= len(by_name) - 1
    frames = sorted((r for r in rows if r["video_id"]), key=lambda r: r["frame_index"])
    video_id = hashlib.sha256(clip).hexdigest()
    assert [(r["video_id"], r["frame_index"]) for r in frames] == [(video_id, i) for i in (0, 2, 4)]
    assert [r["frame_time"] for r in frames] == pytest.approx([0.0, 0.4, 0.8])
    assert [r["predicted_label"] for r in frames] == ["0", "2", "1"]  # lossless frames score as their pictures
    assert {r["image_id"] for r in frames} == {video.frame_id(video_id, i) for i in (0, 2, 4)}
    assert {r["model_version"] for r in rows} == {version}
    assert len({r["hour"] for r in rows}) == 1  # one partition per hour, not a folder per micro-batch
    assert f"hour={rows[0]['hour']}" in tables.recent_hours(time.time(), 1)
    assert sorted({r["batch_id"] for r in rows}) == [0, 1, 2]
    # Each micro-batch is a run with a manifest beside its part file: what it read, with which
    # model and params, and its gate's verdict.
    found = sorted(tables.stream_dir(cfg.data.root).glob("predictions/hour=*/_manifest-*.json"))
    docs = sorted((manifest.read_record(m, manifest.Manifest, "manifest", "") for m in found), key=lambda d: d.run_id)
    assert [d.inputs["micro_batch"]["batch"] for d in docs] == [0, 1, 2, 3]
    assert all(d.stage == stream.STREAM_STAGE and d.inputs["model"]["version"] == version for d in docs)
    assert sum(len(d.inputs["files"]) for d in docs) == 13
    assert sum(d.counts["scored"] for d in docs) == len(rows)
    for d in docs:  # every file seen has one counted outcome: none is a remainder
        c = d.counts
        assert c["files_seen"] == c["files_scored"] + c["already_scored"] + c["unusable"]
        assert (c["unaccounted"], c["unhandled"]) == (0, [])
    assert sum(d.counts["already_scored"] for d in docs) == 3  # the batch run's, counted from their rows
    # Each micro-batch tests drift over the rolling window of the rows published before it and its
    # own (a copy counted once); a window below drift.min_rows, or no new row, is not tested.
    window = 0
    for d in docs:
        window += d.counts["scored"]
        assert d.drift.window
        assert d.drift.batch_rows == (window if d.counts["scored"] else 0)
        tested = d.counts["scored"] and window >= cfg.drift.min_rows
        assert d.drift.outcome == ("passed" if tested else "not tested"), d.drift
    assert any(d.drift.statistic is not None for d in docs)
    assert len({d.params_hash for d in docs}) == 1
    assert all(d.gate.success and d.timings is not None for d in docs)
    for d in docs:  # a row's batch_id and the part file name lead to its manifest
        assert (found[0].parent / tables.part_name(d.run_id)).exists() or d.counts["scored"] == 0
    _traced_to_its_model_and_ingest(cfg, trained, by_name["new_0_101.png"]["image_id"], docs, version)
    quarantine = spark.read.parquet(str(tables.stream_dir(cfg.data.root) / tables.STREAM_QUARANTINE)).collect()
    reasons = {Path(r["source_uri"]).name: r["reason"] for r in quarantine}
    assert reasons.pop("zz_copy.png") == images.DUPLICATE
    assert reasons.pop("broken.png") in {images.NOT_AN_IMAGE, images.TRUNCATED, images.UNREADABLE}
    assert reasons == {"cut.mp4": images.UNREADABLE}  # its index was at the end: no frame of it is scored
    status = _status(cfg)
    assert (status.batches, status.files_seen, status.scored, status.quarantined) == (4, 13, 9, 3)
    assert status.state == "stopped"
    assert status.latency_s["p95"] is not None
    # The DVC-tracked batch table is untouched.
    assert len(tables.read_predictions(spark, tables.predictions_dir(cfg.data.root)).collect()) == batch_rows

    # A batch run of the same inbox (the stream stopped) finds the stream's rows too: nothing new.
    batch = score_config(trained, tmp_path, "cnn", "gate.predictions.max_low_confidence=1.0", "score.video.every_nth=2")
    assert score.run(batch, spark) is None
    assert len(tables.read_predictions(spark, tables.predictions_dir(cfg.data.root)).collect()) == batch_rows
    # The stream again: nothing new.
    assert stream.run_stream(cfg, spark) == 0
    assert len(_stream_rows(spark, cfg)) == len(rows)


def _traced_to_its_model_and_ingest(cfg: Config, trained: Config, image_id: str, docs: list, version: str) -> None:
    """A streamed image's lineage: the micro-batch that scored it, the model version, the ingest run
    behind that model's training; each micro-batch a run of the stream's OpenLineage job."""
    root = Path(cfg.data.root)
    chain = trace.chain_of_image(root, image_id, Path(cfg.train.output), Path(cfg.evaluate.champion))
    links = {link.step: link for link in chain}
    assert [link.missing for link in chain] == [None] * len(chain), trace.as_text(chain)
    assert links["prediction"].facts["kind"] == "micro-batch"
    assert links["prediction"].facts["run_id"] in {d.run_id for d in docs}
    assert links["model"].facts["version"] == version
    assert links["ingest"].facts["run_id"] == manifest.read(Path(trained.data.root) / "ingest").run_id
    events = read_events(root / lineage.FOLDER)
    batches = of_job(events, stream.STREAM_STAGE)
    assert {e["run"]["runId"] for e in batches if e["eventType"] == "COMPLETE"} == {d.lineage.run_id for d in docs}
    assert {e["eventType"] for e in batches} == {"START", "COMPLETE"}
    assert all(e["job"]["facets"]["jobType"]["processingType"] == "STREAMING" for e in batches)
    assert [p for e in events for p in problems(e)] == []


def test_a_lost_checkpoint_loses_no_file_and_scores_none_twice(spark, trained: Config, tmp_path: Path, caplog) -> None:
    inbox = tmp_path / "inbox"
    truth = write_inbox(inbox, 100, 1)
    cfg = score_config(trained, tmp_path, "cnn", *STREAM, "score.stream.max_files_per_trigger=2")
    checkpoint = tables.stream_dir(cfg.data.root) / stream.CHECKPOINT
    assert stream.run_stream(cfg, spark) == 2
    # Removed whole, as the stream's message for an unreadable checkpoint advises: its batch
    # numbers start at 0 again, in the same hour.
    shutil.rmtree(checkpoint)
    truth |= write_inbox(inbox, 200, 1)
    assert stream.run_stream(cfg, spark) == 3  # 6 files listed again, 2 a batch
    # One offsets file lost, and a macOS AppleDouble file beside the others.
    truth |= write_inbox(inbox, 300, 1)
    assert stream.run_stream(cfg, spark) == 2
    next(iter(sorted((checkpoint / "offsets").glob("*.json")))).unlink()
    (checkpoint / "offsets" / "._0.json").write_bytes(b"\x00\x05\x16\x07")
    truth |= write_inbox(inbox, 400, 1)
    with caplog.at_level(logging.WARNING):
        assert stream.run_stream(cfg, spark) >= 2
    assert any("not checkpoint records" in r.getMessage() for r in caplog.records)

    names = [Path(r["source_uri"]).name for r in _stream_rows(spark, cfg)]
    assert sorted(names) == sorted(truth)  # every file once: none lost, none twice
    docs = [
        manifest.read_record(m, manifest.Manifest, "manifest", "")
        for m in tables.stream_dir(cfg.data.root).glob("predictions/hour=*/_manifest-*.json")
    ]
    assert sum(d.counts["files_scored"] for d in docs) == len(truth)
    assert all(d.counts["files_seen"] == d.counts["files_scored"] + d.counts["already_scored"] for d in docs)


def test_batch_mode_scores_video_frames(spark, trained: Config, tmp_path: Path) -> None:
    (tmp_path / "inbox").mkdir()
    clip = video_bytes(class_frames([1, 2, 0], 700))
    (tmp_path / "inbox" / "clip.mkv").write_bytes(clip)
    cfg = score_config(trained, tmp_path, "cnn", "gate.predictions.max_low_confidence=1.0", "score.video.every_nth=1")
    published = score.run(cfg, spark)
    assert published is not None
    rows = sorted(
        tables.read_predictions(spark, tables.predictions_dir(cfg.data.root)).collect(), key=lambda r: r["frame_index"]
    )
    assert [(r["frame_index"], r["predicted_label"]) for r in rows] == [(0, "1"), (1, "2"), (2, "0")]
    assert {r["video_id"] for r in rows} == {hashlib.sha256(clip).hexdigest()}
    counts = manifest.read_json(published)["counts"]
    assert (counts["files_seen"], counts["scored"], counts["files_scored"], counts["already_scored"]) == (1, 3, 1, 0)
    assert score.run(cfg, spark) is None  # every frame scored: the video is not decoded again


def test_a_rejected_micro_batch_is_kept_out_and_retried(spark, trained: Config, tmp_path: Path) -> None:
    write_inbox(tmp_path / "inbox", 100, 2)
    # Every prediction is below score.low_confidence=1.0: the share check rejects once the rolling
    # window holds min_window_rows rows, not before.
    strict = (
        "score.low_confidence=1.0",
        "gate.predictions.max_low_confidence=0.5",
        "score.stream.max_files_per_trigger=2",
        "score.stream.min_window_rows=4",
        "score.stream.retry_rejected_s=3600",
    )
    cfg = score_config(trained, tmp_path, "cnn", *STREAM, *strict)
    assert stream.run_stream(cfg, spark) == 3
    rows = _stream_rows(spark, cfg)
    assert sorted({r["batch_id"] for r in rows}) == [0]  # 2 rows: too few for the share check
    status = _status(cfg)
    assert (status.batches, status.scored, status.rejected_batches, status.rejected_files, status.failures) == (
        3,
        2,
        2,
        4,
        2,
    )
    rejected = sorted((Path(cfg.data.root) / "rejected").glob(f"{stream.STREAM_STAGE}-*"))
    assert [p.name.split("-")[2] for p in rejected] == ["1", "2"]
    for folder in rejected:
        assert (folder / "gate" / "docs" / "index.html").exists()  # Data Docs only for a failure
        assert "low_confidence_share" in (folder / "gate" / "summary.txt").read_text()
        assert len(list((folder / tables.PREDICTIONS).glob("*.parquet"))) == 1
    # Not marked scored: retried once retry_rejected_s has passed, here at once with a looser gate.
    assert stream.run_stream(cfg, spark) == 0  # not yet
    loose = score_config(
        trained, tmp_path, "cnn", *STREAM, *strict[:-1], "score.stream.retry_rejected_s=0", "score.low_confidence=0.0"
    )
    assert stream.run_stream(loose, spark) == 2
    assert len(_stream_rows(spark, cfg)) == 6
    # score.stream.stop_on_reject: the stream stops (exit code 3 from the command line).
    write_inbox(tmp_path / "inbox", 200, 2)
    with pytest.raises(GateFailed):
        stream.run_stream(
            score_config(trained, tmp_path, "cnn", *STREAM, *strict, "score.stream.stop_on_reject=true"), spark
        )


def test_a_champion_change_is_picked_up_without_a_restart(spark, trained: Config, tmp_path: Path, monkeypatch) -> None:
    models = Path(trained.train.output)
    champion = tmp_path / "champion"
    atomic.copy_dir(models / "cnn", champion, tmp_path / ".staging")
    write_inbox(tmp_path / "inbox", 100, 2)
    cfg = score_config(
        trained, tmp_path, "cnn", *STREAM, "score.stream.max_files_per_trigger=3", f"score.model={champion}"
    )

    scoring = stream.score_rows

    def promote_meanwhile(spark, cfg, current, planned, work):
        if planned.batch == 0:  # while the first micro-batch runs, as evaluate promotes: the folder replaced whole
            atomic.copy_dir(models / "mllib", champion, tmp_path / ".staging")
        return scoring(spark, cfg, current, planned, work)

    monkeypatch.setattr(stream, "score_rows", promote_meanwhile)
    assert stream.run_stream(cfg, spark) == 2
    versions = {r["batch_id"]: (r["model_version"], r["model_kind"]) for r in _stream_rows(spark, cfg)}
    assert versions == {
        0: (cards.read_card(models / "cnn").version, "cnn"),
        1: (cards.read_card(models / "mllib").version, "mllib"),
    }


def test_a_batch_run_stands_aside_while_a_stream_holds_the_inbox(spark, trained, tmp_path, caplog) -> None:
    write_inbox(tmp_path / "inbox", 100, 1)
    cfg = score_config(trained, tmp_path, "cnn", "gate.predictions.max_low_confidence=1.0")
    held = locks.take_lock(stream.inbox_lock(cfg.score.inbox), 0, "busy", "stream on test")
    try:
        with caplog.at_level(logging.INFO, logger="spark_jobs.score"):
            assert score.run(cfg, spark) is None
        assert "stream active" in caplog.text
        assert tables.read_predictions(spark, tables.predictions_dir(cfg.data.root)) is None
        # A second stream on the same inbox is refused at once.
        with pytest.raises(locks.OutputBusy, match="a stream already scores"):
            stream.run_stream(with_mode(cfg), spark)
    finally:
        os.close(held)
    # ... and so is a second stream writing under the same data.root (one checkpoint).
    held = locks.take_lock(stream.stream_lock(Path(cfg.data.root)), 0, "busy", "stream on another inbox")
    try:
        with pytest.raises(locks.OutputBusy, match="a stream already writes to"):
            stream.run_stream(with_mode(cfg), spark)
    finally:
        os.close(held)
    assert score.run(cfg, spark) is not None


def with_mode(cfg: Config) -> Config:
    from tests.factories import with_overrides

    return with_overrides(cfg, *STREAM)


@pytest.mark.s3
def test_a_stream_scores_an_s3_prefix(spark, trained: Config, tmp_path: Path, s3_server: str) -> None:
    import boto3

    client = boto3.client("s3")
    truth = s3_inbox("stream-inbox", "in", tmp_path / "local", 100, 2)
    cfg = score_config(trained, tmp_path, "cnn", *STREAM, "score.inbox=s3://stream-inbox/in")
    assert stream.run_stream(cfg, spark) == 1
    client.put_object(Bucket="stream-inbox", Key="in/late.png", Body=class_image(0, 300))
    assert stream.run_stream(cfg, spark) == 1
    rows = _stream_rows(spark, cfg)
    assert sorted(r["source_uri"] for r in rows) == sorted(
        [f"s3://stream-inbox/in/{n}" for n in truth] + ["s3://stream-inbox/in/late.png"]
    )


def _pending(checkpoint: Path) -> list[int]:
    """Micro-batches planned and not committed."""
    planned = {int(p.stem) for p in (checkpoint / "offsets").glob("*.json")}
    return sorted(planned - {int(p.stem) for p in (checkpoint / "commits").glob("*.json")})


def test_sigkill_and_sigterm_of_a_stream_lose_and_repeat_nothing(spark, trained: Config, tmp_path: Path) -> None:
    """SIGKILL of the whole process group mid-micro-batch, then a restart; SIGTERM mid-batch ends
    the process after that batch (exit 0); the rest in-process. Every image and frame is in the
    stream table exactly once."""
    truth = write_inbox(tmp_path / "inbox", 100, 16)
    (tmp_path / "inbox" / "clip.mkv").write_bytes(video_bytes(class_frames([0, 1, 2, 1], 800)))
    overrides = (
        "score.mode=stream",
        "score.stream.max_files_per_trigger=5",
        "score.stream.trigger_s=0.2",
        "score.video.every_nth=1",
        "gate.predictions.max_low_confidence=1.0",
        "spark.master=local[2]",
    )
    cfg = score_config(trained, tmp_path, "cnn", *overrides)
    args = [sys.executable, "-m", "spark_jobs.score", *(f"--set={o}" for o in overrides)]
    args += [
        f"--set=data.root={cfg.data.root}",
        f"--set=score.inbox={cfg.score.inbox}",
        f"--set=score.model={cfg.score.model}",
    ]
    env = {**os.environ, "PYSPARK_PYTHON": sys.executable}
    checkpoint = tables.stream_dir(cfg.data.root) / stream.CHECKPOINT
    log = tmp_path / "stream.log"

    def start() -> subprocess.Popen:
        with log.open("a") as out:
            return subprocess.Popen(args, cwd=REPO, env=env, stdout=out, stderr=out, start_new_session=True)

    def mid_batch(after: int) -> bool:
        pending = _pending(checkpoint)
        return bool(pending) and pending[0] >= after

    proc = start()
    try:
        wait_for("a micro-batch after the first under way", lambda: mid_batch(1), 240, log, every=0.02)
        kill_group(proc)  # driver, JVM and Python workers at once
        killed = _pending(checkpoint)
        assert killed, "the kill came between two micro-batches"
        proc = start()
        wait_for(
            "the killed micro-batch run again",
            lambda: (checkpoint / "commits" / f"{killed[0]}.json").exists(),
            240,
            log,
            every=0.1,
        )
        wait_for("another micro-batch under way", lambda: mid_batch(killed[0] + 1), 120, log, every=0.02)
        proc.send_signal(signal.SIGTERM)  # the driver only, as `docker stop` does
        assert proc.wait(120) == 0, log.read_text()[-3000:]
        assert _pending(checkpoint) == []  # it finished the micro-batch it was in
        assert _status(cfg).state == "stopped"
    finally:
        if proc.poll() is None:
            kill_group(proc)
    assert "running micro-batch" in log.read_text()  # the killed one, again
    stream.run_stream(with_mode(cfg), spark)  # the rest
    rows = _stream_rows(spark, cfg)
    keys = [(Path(r["source_uri"]).name, r["frame_index"]) for r in rows]
    assert len(keys) == len(set(keys))
    assert set(keys) == {(n, None) for n in truth} | {("clip.mkv", i) for i in range(4)}


def test_each_micro_batch_keeps_its_shadow_s_rows_and_agreement(spark, trained: Config, tmp_path: Path) -> None:
    write_inbox(tmp_path / "inbox", 500, 2)  # 6 images, 3 a micro-batch
    mllib = Path(trained.train.output) / "mllib"
    cfg = score_config(
        trained, tmp_path, "cnn", *STREAM, "score.stream.max_files_per_trigger=3", f"score.shadow={mllib}"
    )
    assert stream.run_stream(cfg, spark) == 2
    rows = {r["image_id"]: r for r in _stream_rows(spark, cfg)}
    shadow = spark.read.parquet(str(tables.stream_dir(cfg.data.root) / tables.SHADOW)).collect()
    assert sorted(r["image_id"] for r in shadow) == sorted(rows)  # never in the predictions
    assert {r["model_version"] for r in shadow} == {cards.read_card(mllib).version}
    found = tables.stream_dir(cfg.data.root).glob("predictions/hour=*/_manifest-*.json")
    docs = [manifest.read_record(m, manifest.Manifest, "manifest", "") for m in found]
    for d in docs:
        batch = [r for r in shadow if r["batch_id"] == d.inputs["micro_batch"]["batch"]]
        same = [rows[r["image_id"]]["predicted_label"] == r["predicted_label"] for r in batch]
        assert (d.shadow.rows, d.shadow.agreement) == (3, pytest.approx(sum(same) / 3))
