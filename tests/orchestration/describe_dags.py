"""Parse the DAGs folder as Airflow's DAG processor does and write what a test needs to know as
JSON into the file named by the second argument (Airflow logs to stdout): import errors, warnings
raised while parsing, parse time per file, and each DAG's schedule, Params and tasks. Run in a
subprocess with AIRFLOW_HOME set to a scratch folder."""

from __future__ import annotations

import json
import sys
import time
import warnings
from pathlib import Path

from airflow.dag_processing.dagbag import DagBag


def describe(dags_folder: str) -> dict:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        started = time.perf_counter()
        bag = DagBag(dag_folder=dags_folder)
        elapsed = time.perf_counter() - started
    dags = {}
    for dag_id, dag in bag.dags.items():
        dags[dag_id] = {
            "schedule": repr(dag.timetable),
            "catchup": dag.catchup,
            "max_active_runs": dag.max_active_runs,
            "params": {k: dag.params.get_param(k).schema for k in dag.params},
            "param_defaults": {k: dag.params.get_param(k).value for k in dag.params},
            "tasks": {
                t.task_id: {
                    "type": type(t).__name__,
                    "downstream": sorted(t.downstream_task_ids),
                    "retries": t.retries,
                    "application": getattr(t, "application", None),
                    "application_args": getattr(t, "application_args", None),
                    "param_keys": getattr(t, "param_keys", None),
                    "py_files": getattr(t, "py_files", None),
                    "conn_id": getattr(t, "_conn_id", None),
                    "outlets": [getattr(o, "name", str(o)) for o in t.outlets],
                    "pool": t.pool,
                }
                for t in dag.tasks
            },
        }
    return {
        "import_errors": {str(k): str(v) for k, v in bag.import_errors.items()},
        "warnings": [f"{w.category.__name__}: {w.message} ({w.filename})" for w in caught],
        "parse_seconds": {s.file: s.duration.total_seconds() for s in bag.dagbag_stats},
        "total_seconds": elapsed,
        "dags": dags,
    }


if __name__ == "__main__":
    Path(sys.argv[2]).write_text(json.dumps(describe(sys.argv[1]), default=str))
