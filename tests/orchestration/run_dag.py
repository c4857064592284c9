"""Run one DAG with ``dag.test()`` (Airflow's in-process runner, the metadata DB of AIRFLOW_HOME)
and write the run's state and each task's final state as JSON into the file named by the last
argument. Run in a subprocess whose environment holds AIRFLOW_HOME, the spark_default connection
and IMAGE_PLATFORM_WORKSPACE.

    python run_dag.py <dags folder> <dag id> <run conf as JSON> <output file>
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from airflow.dag_processing.dagbag import DagBag


def main(dags_folder: str, dag_id: str, conf: str, out: str) -> None:
    bag = DagBag(dag_folder=dags_folder)
    if bag.import_errors:
        raise SystemExit(f"DAG import errors: {bag.import_errors}")
    run = bag.dags[dag_id].test(run_conf=json.loads(conf))
    tasks = {ti.task_id: str(ti.state) for ti in run.get_task_instances()}
    Path(out).write_text(json.dumps({"state": str(run.state), "tasks": tasks}))


if __name__ == "__main__":
    main(*sys.argv[1:5])
