"""Parse the DAGs folder as Airflow's DAG processor does and write what a test needs to know as
JSON into the file named by the second argument (Airflow logs to stdout): import errors, warnings
raised while parsing, parse time per file, the database queries and connections parsing made (as
Airflow's own example-DAG tests check: none of either), and each DAG's schedule, Params and tasks.
Run in a subprocess with AIRFLOW_HOME set to a scratch folder."""

from __future__ import annotations

import json
import socket
import sys
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from airflow.dag_processing.dagbag import DagBag
from airflow.sdk import BaseHook
from sqlalchemy import event
from sqlalchemy.engine import Engine


@contextmanager
def watched() -> Iterator[dict[str, list[str]]]:
    """Records every SQL statement any engine runs, every socket connection and every Airflow
    connection looked up while the block runs (they still happen: this only watches)."""
    seen: dict[str, list[str]] = {"queries": [], "sockets": [], "connections": []}

    def on_query(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        seen["queries"].append(statement)

    real_connect, real_lookup = socket.socket.connect, BaseHook.get_connection

    def connect(sock: socket.socket, address: Any) -> Any:
        seen["sockets"].append(repr(address))
        return real_connect(sock, address)

    def lookup(conn_id: str) -> Any:
        seen["connections"].append(conn_id)
        return real_lookup(conn_id)

    event.listen(Engine, "before_cursor_execute", on_query)
    socket.socket.connect, BaseHook.get_connection = connect, staticmethod(lookup)
    try:
        yield seen
    finally:
        event.remove(Engine, "before_cursor_execute", on_query)
        socket.socket.connect, BaseHook.get_connection = real_connect, staticmethod(real_lookup)


def describe(dags_folder: str) -> dict:
    with warnings.catch_warnings(record=True) as caught, watched() as seen:
        warnings.simplefilter("always")
        started = time.perf_counter()
        bag = DagBag(dag_folder=dags_folder)
        elapsed = time.perf_counter() - started
    dags = {}
    for dag_id, dag in bag.dags.items():
        dags[dag_id] = {
            "schedule": repr(dag.timetable),
            "start_date": dag.start_date.isoformat() if dag.start_date else None,
            "start_date_tz": str(dag.start_date.tzinfo) if dag.start_date else None,
            "doc_md": dag.doc_md,
            "catchup": dag.catchup,
            "max_active_runs": dag.max_active_runs,
            "params": {k: json.loads(json.dumps(dag.params.get_param(k).schema)) for k in dag.params},
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
                    "trigger_rule": str(getattr(t.trigger_rule, "value", t.trigger_rule)),
                    "workdir": (getattr(t, "env_vars", None) or {}).get("IMAGE_PLATFORM_WORKDIR"),
                }
                for t in dag.tasks
            },
        }
    return {
        "import_errors": {str(k): str(v) for k, v in bag.import_errors.items()},
        "warnings": [f"{w.category.__name__}: {w.message} ({w.filename})" for w in caught],
        "parse_seconds": {s.file: s.duration.total_seconds() for s in bag.dagbag_stats},
        "total_seconds": elapsed,
        "parse_io": seen,
        "dags": dags,
    }


if __name__ == "__main__":
    Path(sys.argv[2]).write_text(json.dumps(describe(sys.argv[1]), default=str))
