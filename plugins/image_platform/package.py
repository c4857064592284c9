"""The ``spark_jobs`` artifact a DAG run submits: a ``--py-files`` zip built from the working tree,
so a cluster runs exactly the code that was tested, stamped with its version.

The zip holds every ``spark_jobs/**/*.py`` (the stages and the library's sub-packages) and
``spark_jobs/_build_info.json`` (git commit, dirty flag, the content hash), which
:func:`spark_jobs.core.manifest.job_version` reads, so every manifest a packaged run writes names
the code it ran. Builds are named by content (``spark_jobs-<version>-<hash>.zip``):
building the same tree twice gives the same file.
"""

from __future__ import annotations

import hashlib
import json
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
_FIXED_TIME = (1980, 1, 1, 0, 0, 0)  # zip entries carry no build time: same tree, same bytes


def sources(repo: Path = REPO) -> list[Path]:
    """The package's files, sub-packages included (Python sources only: no caches, no local data)."""
    return sorted((repo / "spark_jobs").rglob("*.py"))


def build(out_dir: Path, repo: Path = REPO) -> Path:
    """Zip ``repo``'s ``spark_jobs`` into ``out_dir``; returns the zip (reused when it exists)."""
    from spark_jobs.core.atomic import atomic_file
    from spark_jobs.core.manifest import BUILD_INFO, git_stamp  # the stages' own stamp

    files = sources(repo)
    digest = hashlib.sha256()
    for path in files:  # by path relative to the repo: core/x.py and ml/x.py are different files
        digest.update(path.relative_to(repo).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    content = digest.hexdigest()[:16]
    version = _version(repo)
    target = out_dir / f"spark_jobs-{version}-{content}.zip"
    if target.exists():
        return target
    out_dir.mkdir(parents=True, exist_ok=True)
    info = {**git_stamp(repo / "spark_jobs"), "content_sha256_16": content}
    with atomic_file(target) as out, zipfile.ZipFile(out, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for path in files:
            archive.writestr(zipfile.ZipInfo(path.relative_to(repo).as_posix(), _FIXED_TIME), path.read_bytes())
        archive.writestr(zipfile.ZipInfo(f"spark_jobs/{BUILD_INFO}", _FIXED_TIME), json.dumps(info, sort_keys=True))
    return target


def _version(repo: Path) -> str:
    for line in (repo / "spark_jobs" / "__init__.py").read_text().splitlines():
        if line.startswith("__version__"):
            return line.split("=", 1)[1].strip().strip("\"'")
    return "0"
