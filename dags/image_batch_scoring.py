"""image_batch_scoring: score what arrived in the inbox since the last run with the champion model,
every hour (cron from the ``IMAGE_SCORING_CRON`` environment variable) and whenever the training
pipeline updates the champion. Incremental by the score stage's exactly-once logic: images the
champion already scored are skipped. While a scoring stream holds the inbox (``score.mode=stream``,
run as a service: see the README), the score task ends successfully with "stream active" and
publishes nothing. Orchestration only.

The cron string is the one thing read from the environment while parsing: a schedule must be known
then, and an Airflow Variable would query the database on every parse. A scoring run that
published predictions sends an ``image_platform_predictions`` event whose ``extra`` says where, its
run id and how many images it scored; a run that found nothing new sends none."""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta

from airflow.sdk import DAG, AssetOrTimeSchedule, CronTriggerTimetable, task
from image_platform import stages, versioning
from image_platform.assets import CHAMPION, PREDICTIONS_OUT

with DAG(
    dag_id="image_batch_scoring",
    description="Score newly arrived images with the champion model, exactly once per image and model version",
    schedule=AssetOrTimeSchedule(
        timetable=CronTriggerTimetable(os.environ.get("IMAGE_SCORING_CRON", "@hourly"), timezone="UTC"),
        assets=CHAMPION,
    ),
    start_date=datetime(2026, 1, 1, tzinfo=UTC),
    catchup=False,
    max_active_runs=1,
    tags=["image-platform", "scoring"],
    doc_md=__doc__,
    default_args={"retries": 2, "retry_delay": timedelta(minutes=1)},
) as dag:
    score = stages.stage_task("score", stages.dvc_commands()["score"], outlets=[PREDICTIONS_OUT])

    @task(pool=versioning.POOL)
    def version() -> dict:
        """The predictions and score quarantine into the DVC cache (and remote)."""
        return versioning.version_outputs(stages.workspace(), ["score"])

    stages.package_task() >> score >> version()
