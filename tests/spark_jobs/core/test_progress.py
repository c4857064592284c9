"""Progress lines of a stage's image pass: their text, and the counts they read from Spark."""

from __future__ import annotations

import logging
import time

import pytest

from spark_jobs.core import progress


def test_a_line_gives_done_of_total_the_rate_and_the_time_left() -> None:
    assert progress.line("ingest", "files", 4096, 16000, 10.0) == (
        "ingest: 4,096 / 16,000 files (26 %), 410 files/s, about 29 s left"
    )
    assert progress.line("score", "files", 0, 100, 3.0).endswith("0 files/s, time left not known yet")
    assert progress.line("features", "images", 10, 2000, 1.0).endswith("about 3 min 19 s left")
    assert progress.line("score", "files", 120, 100, 5.0).startswith("score: 100 / 100 files (100 %)")  # retried tasks
    assert progress.line("ingest", "files", 90, 90, 2.4, finished=True).endswith("38 files/s, done in 2 s")


@pytest.mark.spark
def test_the_counts_are_what_the_tasks_added(spark, caplog) -> None:
    def slow(batches, handled):
        for batch in batches:
            time.sleep(0.3)
            yield batch
            handled.add(batch.num_rows)

    with (
        caplog.at_level(logging.INFO, "spark_jobs.progress"),
        progress.reporting(spark, "test", "rows", 40, 0.2) as handled,
    ):
        frame = spark.range(40, numPartitions=4)
        rows = frame.mapInArrow(lambda it: slow(it, handled), frame.schema).count()
    assert rows == 40
    assert handled.value == 40  # every task's additions reached the driver
    lines = [r.getMessage() for r in caplog.records if r.name == "spark_jobs.progress"]
    assert lines, "no progress line while the tasks ran"
    done = [int(line.split(":")[1].split("/")[0].replace(",", "")) for line in lines]
    assert done == sorted(done)
    assert all(line.startswith("test: ") and "/ 40 rows" in line for line in lines)
    assert lines[-1].startswith("test: 40 / 40 rows (100 %)")
    assert "done in" in lines[-1]
