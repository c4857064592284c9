"""dvc.yaml invalidates exactly: every stage's deps list every project module its command imports
(directly or through other modules, at module level or inside functions), and nothing else."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
import yaml

from tests.factories import REPO

PACKAGE = REPO / "spark_jobs"


def module_file(dotted: str) -> str | None:
    """``spark_jobs.core.config`` -> ``spark_jobs/core/config.py`` when that module file exists
    (packages' ``__init__`` files hold docstrings only and are not deps)."""
    path = dotted.replace(".", "/") + ".py"
    return path if (REPO / path).is_file() else None


def imported_modules(path: str) -> set[str]:
    """The ``spark_jobs`` module files the module at ``path`` imports anywhere in its source."""
    found: set[str] = set()
    for node in ast.walk(ast.parse((REPO / path).read_text())):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("spark_jobs"):
            for alias in node.names:
                found.add(module_file(f"{node.module}.{alias.name}") or module_file(node.module) or "")
        elif isinstance(node, ast.Import):
            found |= {module_file(a.name) or "" for a in node.names if a.name.startswith("spark_jobs.")}
    return found - {""}


def import_closure(path: str) -> set[str]:
    seen: set[str] = set()
    todo = [path]
    while todo:
        current = todo.pop()
        if current not in seen:
            seen.add(current)
            todo += imported_modules(current)
    return seen


# Each pipeline file and where spark_jobs/ is from its folder (a stage's wdir).
DVC_FILES = {"dvc.yaml": "", "grids/dvc.yaml": "../", "find/dvc.yaml": "../"}


def _stages(dvcfile: str) -> dict[str, dict]:
    stages = yaml.safe_load((REPO / dvcfile).read_text())["stages"]
    return {name: stage.get("do", stage) for name, stage in stages.items()}


@pytest.mark.parametrize(("dvcfile", "stage"), [(f, s) for f in DVC_FILES for s in sorted(_stages(f))])
def test_deps_are_the_import_closure_of_the_stage_s_command(dvcfile: str, stage: str) -> None:
    body, prefix = _stages(dvcfile)[stage], DVC_FILES[dvcfile]
    module = re.search(r"python -m spark_jobs\.(\w+)", body["cmd"]).group(1)
    listed = {d.removeprefix(prefix) for d in body["deps"] if d.startswith(f"{prefix}spark_jobs/")}
    closure = import_closure(f"spark_jobs/{module}.py")
    assert not closure - listed, f"{stage}: imports {sorted(closure - listed)} but {dvcfile} does not list them"
    assert not listed - closure, f"{stage}: {dvcfile} lists {sorted(listed - closure)}, which it does not import"


def test_the_closure_follows_imports_inside_functions() -> None:
    # score reaches models (the torch loader) only through inference's imports, and the runner
    # imports the session (Spark's task metrics) only inside a function.
    reached = {"imaging/partitions", "scoring/scan", "ml/inference", "ml/models", "imaging/images", "core/store"}
    assert {f"spark_jobs/{m}.py" for m in reached | {"core/config"}} <= import_closure("spark_jobs/score.py")
    assert "spark_jobs/core/session.py" in import_closure("spark_jobs/core/runner.py")


def test_editing_the_stream_s_settings_reruns_no_training_stage() -> None:
    """``score.stream``'s schema is a dependency of the score stage only, as DVC itself reads the
    pipeline: editing it changes no other stage in ``dvc status`` (the closure test above holds
    each stage's deps to what its command imports)."""
    import inspect

    from spark_jobs.scoring.config import StreamConfig
    from tests.factories import dvc_view

    schema = Path(inspect.getsourcefile(StreamConfig)).resolve().relative_to(REPO).as_posix()
    for dvcfile, prefix in DVC_FILES.items():
        depending = {name for name, stage in dvc_view(REPO, dvcfile).items() if f"{prefix}{schema}" in stage["deps"]}
        assert depending == {"score"}, f"{dvcfile}: {schema} is a dependency of {sorted(depending)}"
