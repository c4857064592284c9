"""Run the stage task of one dvc.yaml stage (``stages.stage_task``: spark-submit of the packaged
jobs through the ``spark_default`` connection) as an Airflow worker runs it, outside a DAG run,
and print its outcome: STAGE-OK, or FAIL-NO-RETRY and the reason (AirflowFailException: the
task is not retried). Everything spark-submit prints is logged to stderr, as to a task log. Run
in a subprocess whose environment holds the connection (AIRFLOW_CONN_SPARK_DEFAULT) and, when
the stage runs elsewhere than the repository, IMAGE_PLATFORM_WORKSPACE.

    python run_stage.py <stage, e.g. train@cnn> <packaged zip> <overrides as a JSON list>
"""

from __future__ import annotations

import json
import logging
import sys

from airflow.sdk.exceptions import AirflowFailException
from image_platform import stages


def main(stage: str, py_files: str, overrides: str) -> None:
    logging.basicConfig(level=logging.INFO, stream=sys.stderr)
    task = stages.stage_task(
        stage.replace("@", "_"), stages.dvc_commands()[stage], py_files=py_files, overrides=json.loads(overrides)
    )
    try:
        task.execute(context={})
    except AirflowFailException as exc:
        print("FAIL-NO-RETRY:", exc)
    else:
        print("STAGE-OK")


if __name__ == "__main__":
    main(*sys.argv[1:4])
