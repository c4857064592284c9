"""Run a stage by name, the entry point Airflow submits:

    python -m spark_jobs <stage> [--params params.yaml] [--set key=value ...]
    spark-submit --py-files spark_jobs-<build>.zip spark_jobs/__main__.py <stage> [--set key=value ...]

The stage module is imported by name (never run as ``__main__``), so every function and object
Spark ships to executors is pickled by reference to the packaged code. ``IMAGE_PLATFORM_WORKDIR``,
when set, is the folder relative paths (``params.yaml``, ``data/``, ``models/``) are resolved from,
as they are for ``dvc repro`` run in the repository.
"""

from __future__ import annotations

import importlib
import os
import sys

STAGES = ("sample", "ingest", "backbone", "features", "train", "evaluate", "score")
EXIT_USAGE = 2


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] not in STAGES:
        given = repr(args[0]) if args else "nothing"
        print(f"spark_jobs: the first argument must be a stage ({', '.join(STAGES)}); got {given}", file=sys.stderr)
        return EXIT_USAGE
    workdir = os.environ.get("IMAGE_PLATFORM_WORKDIR")
    if workdir:
        os.chdir(workdir)
    stage = importlib.import_module(f"spark_jobs.{args[0]}")
    return stage.main(args[1:])


if __name__ == "__main__":
    from spark_jobs.core.jobs import exit_process

    exit_process(main())
