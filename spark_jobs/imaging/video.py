"""Video files scored frame by frame: decoded in memory with PyAV (FFmpeg's libraries ship in its
wheel), every ``every_nth`` frame kept as a picture for the image path (:func:`images.decode_frame`).

A frame is identified by its video's content hash and its index in presentation order
(:func:`frame_id`), so exactly-once holds per ``(video_id, frame_index)`` with the same id set as
images. A video that cannot be decoded to its end is rejected as a whole (``truncated`` or
``unreadable``): none of its frames is scored, so a damaged file is one quarantine record, never a
partly scored video that a repaired copy would then complete under another id.
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from PIL import Image
from pydantic import Field

from spark_jobs.core.config import Extensions, Section
from spark_jobs.imaging import images

T = TypeVar("T")


class VideoConfig(Section):
    """``score.video``: every ``every_nth`` decoded frame of a video file is scored as an image."""

    extensions: Extensions = (".mp4", ".avi", ".mkv", ".mov", ".webm")
    every_nth: int = Field(10, ge=1)
    max_frames: int = Field(1000, ge=1)  # sampled frames per video; a longer one is quarantined


@dataclass(frozen=True)
class Frame(Generic[T]):
    """One sampled frame: its index among the decoded frames, its time in seconds, and what
    ``prepare`` made of its picture (the picture itself by default)."""

    index: int
    time: float | None
    image: T


def is_video(uri: str, cfg: VideoConfig) -> bool:
    return images.has_extension(uri, cfg.extensions)


def frame_id(video_id: str, index: int) -> str:
    """The ``image_id`` of a video's frame (sha256 hex, like an image's content hash)."""
    return hashlib.sha256(f"{video_id}:{index}".encode()).hexdigest()


def _picture(image: Image.Image) -> Any:
    return image


def sampled_frames(
    data: bytes, cfg: VideoConfig, max_pixels: int, prepare: Callable[[Image.Image], T] = _picture
) -> list[Frame[T]]:
    """Frames ``0, n, 2n, ...`` (``n`` = ``cfg.every_nth``) of the file's first video stream, each
    turned by ``prepare`` as it is decoded (scoring keeps the image path's small resized pixels,
    never a video's full-size frames: memory stays that of one frame, whatever the length or the
    resolution), or :class:`images.Rejected`: no video stream, frames over ``max_pixels``, more
    than ``cfg.max_frames`` sampled frames, or a file that ends before the frames or duration its
    header declares (``truncated``) or that FFmpeg cannot read (``unreadable``)."""
    import av

    with images.any_failure_rejected(), av.open(io.BytesIO(data), mode="r") as container:
        if not container.streams.video:  # e.g. an MP4 cut before its index (written last)
            raise images.Rejected(images.UNREADABLE, "no decodable video stream")
        stream = container.streams.video[0]
        if stream.width * stream.height > max_pixels:
            raise images.Rejected(
                images.DECOMPRESSION_BOMB, f"{stream.width}x{stream.height} frames > {max_pixels} pixels"
            )
        frames: list[Frame[T]] = []
        decoded, last = 0, None
        try:
            for decoded, frame in enumerate(container.decode(stream), start=1):
                last = frame.time
                if (decoded - 1) % cfg.every_nth:
                    continue
                if len(frames) == cfg.max_frames:
                    raise images.Rejected(
                        images.TOO_LARGE, f"more than {cfg.max_frames} sampled frames (score.video.max_frames)"
                    )
                frames.append(Frame(decoded - 1, frame.time, prepare(frame.to_image())))
        except av.error.FFmpegError as exc:
            if not decoded:
                raise
            raise images.Rejected(images.TRUNCATED, f"decoding stopped after {decoded} frames: {exc}"[:500]) from None
        declared, duration = stream.frames, container.duration
        rate = float(stream.average_rate or 0) or None
    if declared and decoded < declared:
        raise images.Rejected(images.TRUNCATED, f"{decoded} of the {declared} frames its header declares decode")
    if duration and rate and last is not None and last + 1.5 / rate < duration / 1e6:
        raise images.Rejected(images.TRUNCATED, f"frames end at {last:.2f} s of the {duration / 1e6:.2f} s declared")
    if not frames:
        raise images.Rejected(images.EMPTY, "no decodable frame")
    return frames
