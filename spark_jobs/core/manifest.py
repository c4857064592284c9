"""``_manifest.json``: what made an output folder (stage, code, params, inputs, counts, gate, timings)."""

from __future__ import annotations

import functools
import hashlib
import importlib.resources
import json
import subprocess
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from spark_jobs import __version__
from spark_jobs.core.config import params_hash

MANIFEST = "_manifest.json"
BUILD_INFO = "_build_info.json"  # written into the --py-files zip by plugins/image_platform/package.py


def git_stamp(folder: Path) -> dict[str, Any]:
    """``{"git_commit", "dirty"}`` of the code under ``folder``: the one version stamp, used for a
    stage's manifest and for the ``--py-files`` build (``plugins/image_platform/package.py``)."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=folder, capture_output=True, text=True, check=True, timeout=10
        ).stdout.strip()
        dirty = bool(
            subprocess.run(
                ["git", "status", "--porcelain", "--", "."], cwd=folder, capture_output=True, text=True, timeout=10
            ).stdout.strip()
        )
    except (OSError, subprocess.SubprocessError):
        commit, dirty = "unknown", False
    return {"git_commit": commit or "unknown", "dirty": dirty}


@functools.cache
def job_version() -> dict[str, Any]:
    """Package version and git commit of the running code (from a build stamp when packaged)."""
    stamp = importlib.resources.files("spark_jobs").joinpath(BUILD_INFO)  # also inside a zip
    if stamp.is_file():
        return {"package": __version__, **json.loads(stamp.read_text())}
    return {"package": __version__, **git_stamp(Path(__file__).resolve().parents[1])}  # the whole package


def job_version_label(version: dict[str, Any] | None = None) -> str:
    """:func:`job_version` as one short string for table columns: ``0.1.0+15d8cfdd3027[-dirty]``."""
    v = version or job_version()
    commit = str(v.get("git_commit", "unknown"))[:12]
    return f"{v.get('package')}+{commit}{'-dirty' if v.get('dirty') else ''}"


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def file_hash(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def build(
    stage: str,
    params: dict[str, Any],
    inputs: dict[str, Any],
    counts: dict[str, Any],
    gate: dict[str, Any],
    timings: dict[str, Any],
    spark: dict[str, Any] | None = None,
    run_id: str | None = None,
) -> dict[str, Any]:
    """The manifest document of one stage run."""
    return {
        "stage": stage,
        "run_id": run_id,
        "job_version": job_version(),
        "params": params,
        "params_hash": params_hash(params),
        "inputs": inputs,
        "counts": counts,
        "gate": gate,
        "timings": timings,
        "spark": spark or {},
    }


def write_json(path: Path, doc: Any, sort_keys: bool = True) -> Path:
    """``doc`` as indented JSON at ``path`` (manifests, cards, metrics, validation results)."""
    path.write_text(json.dumps(doc, indent=2, sort_keys=sort_keys, default=str) + "\n")
    return path


def write(folder: Path, manifest: dict[str, Any], name: str = MANIFEST, sort_keys: bool = True) -> Path:
    return write_json(folder / name, manifest, sort_keys)


def read(folder: Path) -> dict[str, Any]:
    return json.loads((folder / MANIFEST).read_text())
