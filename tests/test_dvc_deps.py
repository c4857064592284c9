"""dvc.yaml invalidates exactly: every stage's deps list every project module its command imports
(directly or through other modules, at module level or inside functions), and nothing else."""

from __future__ import annotations

import ast
import re

import pytest
import yaml

from tests.factories import REPO

PACKAGE = REPO / "spark_jobs"


def imported_modules(module: str) -> set[str]:
    """The ``spark_jobs`` modules ``module`` imports anywhere in its source."""
    found: set[str] = set()
    for node in ast.walk(ast.parse((PACKAGE / f"{module}.py").read_text())):
        if isinstance(node, ast.ImportFrom) and node.module == "spark_jobs":
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("spark_jobs."):
            found.add(node.module.split(".")[1])
        elif isinstance(node, ast.Import):
            found |= {a.name.split(".")[1] for a in node.names if a.name.startswith("spark_jobs.")}
    return {m for m in found if (PACKAGE / f"{m}.py").exists()}


def import_closure(module: str) -> set[str]:
    seen: set[str] = set()
    todo = [module]
    while todo:
        current = todo.pop()
        if current not in seen:
            seen.add(current)
            todo += imported_modules(current)
    return seen


def _stages() -> dict[str, dict]:
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    return {name: stage.get("do", stage) for name, stage in stages.items()}


@pytest.mark.parametrize("stage", sorted(_stages()))
def test_deps_are_the_import_closure_of_the_stage_s_command(stage: str) -> None:
    body = _stages()[stage]
    module = re.search(r"python -m spark_jobs\.(\w+)", body["cmd"]).group(1)
    listed = {d.removeprefix("spark_jobs/").removesuffix(".py") for d in body["deps"] if d.startswith("spark_jobs/")}
    closure = import_closure(module)
    assert not closure - listed, f"{stage}: imports {sorted(closure - listed)} but dvc.yaml does not list them"
    assert not listed - closure, f"{stage}: dvc.yaml lists {sorted(listed - closure)}, which it does not import"


def test_the_closure_follows_imports_inside_functions() -> None:
    # score reaches models (the torch loader) only through inference's and train's imports.
    assert {"ingest", "scoring", "inference", "models", "images", "store", "config"} <= import_closure("score")
