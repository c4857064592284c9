"""Progress of a stage's pass over images, logged every ``data.progress_s`` seconds while it runs:
images done, of how many, the rate and the time left.

The count is Spark's own: a task adds the images it has handled to an accumulator
(:func:`reporting` yields it), and Spark sends a task's additions to the driver as the task ends.
A line therefore moves as tasks finish, never by a guess; a task Spark runs again (a lost
executor) counts twice, so the figure is capped at the total.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pyspark import Accumulator
    from pyspark.sql import SparkSession

log = logging.getLogger("spark_jobs.progress")


def _duration(seconds: float) -> str:
    seconds = round(seconds)
    if seconds < 60:
        return f"{seconds} s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes} min {seconds:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


def line(stage: str, what: str, done: int, total: int, seconds: float, finished: bool = False) -> str:
    """``ingest: 4,096 / 16,000 images (26 %), 410 images/s, about 29 s left`` (``finished``: the
    pass's last line, ``..., done in 39 s``)."""
    done = min(done, total)
    share = 100.0 * done / total if total else 100.0
    rate = done / seconds if seconds > 0 else 0.0
    left = f"about {_duration((total - done) / rate)} left" if rate > 0 else "time left not known yet"
    if finished:
        left = f"done in {_duration(seconds)}"
    return f"{stage}: {done:,} / {total:,} {what} ({share:.0f} %), {rate:,.0f} {what}/s, {left}"


@contextlib.contextmanager
def reporting(spark: SparkSession, stage: str, what: str, total: int, every_s: float) -> Iterator[Accumulator]:
    """For the block: an accumulator the block's tasks add their handled ``what`` to, and a
    driver thread logging :func:`line` every ``every_s`` seconds, and a last line when the block
    ends without an error (none with ``every_s`` 0 or nothing to do)."""
    counter = spark.sparkContext.accumulator(0)
    stop = threading.Event()
    started = time.monotonic()

    def report() -> None:
        while not stop.wait(every_s):
            log.info("%s", line(stage, what, int(counter.value), total, time.monotonic() - started))

    thread = threading.Thread(target=report, name=f"{stage}-progress", daemon=True)
    if every_s > 0 and total > 0:
        thread.start()
    try:
        yield counter
    finally:
        stop.set()
        if thread.is_alive():
            thread.join(timeout=every_s + 1)
    if every_s > 0 and total > 0:  # the pass finished: its last line, however short it was
        log.info("%s", line(stage, what, int(counter.value), total, time.monotonic() - started, finished=True))
