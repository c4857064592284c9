"""Versioning a run's outputs with DVC: ``dvc commit`` of the stages a DAG run produced (their
outputs go to the DVC cache and their hashes to ``dvc.lock``), then ``dvc push`` when a remote is
configured. Two DVC commands in one workspace collide on DVC's lock, so the DAGs run this in the
``dvc`` pool (one slot).

A run triggered with Params (``--set`` overrides) first writes them into the workspace's
params.yaml (:func:`record_params`, comments kept), as ``dvc exp run --set-param`` does, so
``dvc.lock`` records the parameters and inputs that really made the outputs and ``dvc status`` is
clean afterwards; ``git diff params.yaml dvc.lock`` shows what the run changed. Only a successful
run gets there: a failed one leaves params.yaml as it was.
"""

from __future__ import annotations

import logging
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

POOL = "dvc"


class DvcError(RuntimeError):
    """A DVC command failed; the message holds its output."""


def dvc(repo: Path, *args: str, timeout: float = 1800) -> str:
    """Run one DVC command in ``repo``; its output, or :class:`DvcError` with it."""
    exe = shutil.which("dvc")
    if exe is None:
        raise DvcError("dvc is not on PATH: install the project's environment (make venv) for the Airflow workers")
    # --wait-for-lock: a stage task checking DVC's status (stages.up_to_date) holds the lock briefly.
    result = subprocess.run([exe, "--wait-for-lock", *args], cwd=repo, capture_output=True, text=True, timeout=timeout)
    output = (result.stdout + result.stderr).strip()
    if result.returncode != 0:
        raise DvcError(f"dvc {' '.join(args)} failed (exit {result.returncode}) in {repo}:\n{output}")
    return output


def record_params(repo: Path, overrides: Sequence[str]) -> dict[str, Any]:
    """Write ``key.path=value`` overrides into ``repo/params.yaml``, each value read as the stages
    read it (:func:`spark_jobs.core.config.set_override`, the stages' own parser), keeping the file's
    comments and layout; the file is replaced in one rename. Returns the changed values."""
    from ruamel.yaml import YAML

    from spark_jobs.core.atomic import atomic_file
    from spark_jobs.core.config import set_override
    from spark_jobs.params import Config

    yaml = YAML()  # round-trip: comments and key order survive
    yaml.preserve_quotes = True
    path = repo / "params.yaml"
    tree = yaml.load(path.read_text())
    changed = {}
    for override in overrides:
        key, value, differs = set_override(tree, override, Config, existing="params.yaml")
        if differs:
            changed[key] = value
    if changed:
        with atomic_file(path, "w") as out:
            yaml.dump(tree, out)
    return changed


def version_outputs(repo: Path, stages: Sequence[str]) -> dict[str, Any]:
    """Commit the outputs of ``stages`` to the DVC cache and ``dvc.lock``; push them when a remote
    is configured. Returns what was done (for the task log and XCom)."""
    dvc(repo, "commit", "--force", *stages)
    remotes = dvc(repo, "remote", "list").splitlines()
    pushed = False
    if remotes:
        dvc(repo, "push", *stages)
        pushed = True
    log.info("versioned %s with DVC in %s%s", ", ".join(stages), repo, f"; pushed to {remotes[0]}" if pushed else "")
    return {"stages": list(stages), "pushed": pushed, "remote": remotes[0].split()[0] if remotes else None}
