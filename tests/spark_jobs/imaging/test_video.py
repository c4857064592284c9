"""Video files decoded frame by frame (PyAV), videos made here from the test images."""

from __future__ import annotations

import gc
import hashlib
import re
import weakref

import numpy as np
import pytest

from spark_jobs.core.ingest_config import IngestConfig
from spark_jobs.imaging import images, video
from spark_jobs.imaging.video import VideoConfig
from tests.factories import class_frames, video_bytes


def test_every_nth_frame_with_its_index_and_time() -> None:
    frames = class_frames([0, 1, 2, 0, 1, 2, 0], 10)
    got = video.sampled_frames(video_bytes(frames), VideoConfig(every_nth=3), 10**6)
    assert [(f.index, f.time) for f in got] == [(0, 0.0), (3, 0.6), (6, 1.2)]
    for f in got:  # ffv1 keeps every pixel
        assert np.array_equal(np.asarray(f.image.convert("RGB")), frames[f.index])
    decoded = images.decode_frame(got[1].image, IngestConfig(image_size=16))
    assert (decoded.height, decoded.width, decoded.orig_format) == (16, 16, "video")


def test_each_frame_is_prepared_as_it_is_decoded_and_not_kept_whole() -> None:
    seen: list[weakref.ref] = []
    most = []

    def prepare(picture):
        seen.append(weakref.ref(picture))
        gc.collect()
        most.append(sum(ref() is not None for ref in seen))  # full-size pictures alive, this one included
        return images.decode_frame(picture, IngestConfig(image_size=8))

    got = video.sampled_frames(video_bytes(class_frames([0, 1, 2] * 4, 30)), VideoConfig(every_nth=1), 10**6, prepare)
    assert [f.image.height for f in got] == [8] * 12  # only the resized pixels are kept
    assert max(most) == 1  # one frame at full size at a time, however long the video


def test_a_video_that_breaks_after_its_first_frames_scores_none_of_them(tmp_path) -> None:
    from spark_jobs.scoring import scan
    from tests.spark_jobs.scoring.test_scan import _Means

    data = video_bytes(class_frames([0, 1, 2] * 10, 20), "avi", "mpeg4")
    cut = tmp_path / "cut.avi"
    cut.write_bytes(data[: int(len(data) * 0.75)])  # 20-odd frames decode, then it ends
    batch = scan.scan_batch(
        [(cut.as_uri(), None)], IngestConfig(image_size=8), scan.IdSet([]), _Means(), VideoConfig(every_nth=1)
    )
    assert [(r["reason"], r["frame_index"]) for r in batch.to_pylist()] == [(images.TRUNCATED, None)]


@pytest.mark.parametrize(
    ("container", "codec", "keep", "reason"),
    [
        ("matroska", "ffv1", 0.5, images.TRUNCATED),  # frames end before the duration declared
        ("avi", "mpeg4", 0.75, images.TRUNCATED),  # fewer frames than the header declares
        ("avi", "mpeg4", 0.5, images.UNREADABLE),  # not one frame decodes
        ("mp4", "mpeg4", 0.5, images.UNREADABLE),  # an MP4's index is at its end: no stream left
    ],
)
def test_a_damaged_video_is_rejected_whole(container: str, codec: str, keep: float, reason: str) -> None:
    data = video_bytes(class_frames([0, 1, 2] * 10, 20), container, codec)
    assert len(video.sampled_frames(data, VideoConfig(every_nth=1), 10**6)) == 30
    with pytest.raises(images.Rejected) as cut:
        video.sampled_frames(data[: int(len(data) * keep)], VideoConfig(every_nth=1), 10**6)
    assert cut.value.reason == reason, cut.value.detail


def test_bad_videos_are_one_clear_reason() -> None:
    data = video_bytes(class_frames([0, 1, 2, 0], 30))
    cases = {
        b"not a video at all": images.UNREADABLE,
        b"": images.UNREADABLE,
        images.image_id(b"x").encode(): images.UNREADABLE,
    }
    for bad, reason in cases.items():
        with pytest.raises(images.Rejected) as exc:
            video.sampled_frames(bad, VideoConfig(), 10**6)
        assert exc.value.reason == reason, bad
    with pytest.raises(images.Rejected, match="max_frames") as long:
        video.sampled_frames(data, VideoConfig(every_nth=1, max_frames=3), 10**6)
    assert long.value.reason == images.TOO_LARGE
    with pytest.raises(images.Rejected) as big:
        video.sampled_frames(data, VideoConfig(), 24 * 24 - 1)
    assert big.value.reason == images.DECOMPRESSION_BOMB


def test_frame_ids_are_per_video_and_index() -> None:
    ids = {video.frame_id(v, i) for v in ("a" * 64, "b" * 64) for i in range(3)}
    assert len(ids) == 6
    assert all(re.fullmatch(r"[0-9a-f]{64}", i) for i in ids)  # shaped like an image's content hash
    assert video.frame_id("a" * 64, 2) == hashlib.sha256(b"a" * 64 + b":2").hexdigest()
    assert "a" * 64 not in ids  # never a video's own id: a frame and its video are scored apart
    assert video.is_video("file:///x/CLIP.MP4", VideoConfig())
    assert not video.is_video("file:///x/clip.png", VideoConfig())
