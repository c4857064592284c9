"""The package's layout (DESIGN.md #15, #17): ``spark_jobs/<stage>.py`` are entry points that import
the library's wings, never one another; the wings are layered, core -> imaging, quality -> ml ->
scoring -> lineage, stages, and a wing imports only wings below it (and itself)."""

from __future__ import annotations

import pytest

from spark_jobs.__main__ import STAGES
from tests.factories import REPO
from tests.test_dvc_deps import import_closure, imported_modules

STAGE_FILES = {f"spark_jobs/{s}.py" for s in STAGES}
# Each wing, and the wings it may import (besides itself).
LAYERS = {
    "core": set(),
    "imaging": {"core"},
    "quality": {"core"},
    "ml": {"core", "imaging", "quality"},
    "scoring": {"core", "imaging", "quality", "ml"},
    "lineage": {"core", "imaging", "quality", "ml", "scoring"},
}
LIBRARY = sorted(
    str(p.relative_to(REPO))
    for p in (REPO / "spark_jobs").glob("*/*.py")
    if p.name not in ("__init__.py", "__main__.py")
)


def wing(module: str) -> str | None:
    """``spark_jobs/<wing>/x.py`` -> ``<wing>``; None for a stage (or the package's entry point)."""
    parts = module.split("/")
    return parts[1] if len(parts) == 3 else None


def layer_breaches(imports: dict[str, set[str]]) -> list[str]:
    """``importer -> imported`` for every import (of ``{module: modules it imports}``) that goes
    to a wing the importer's wing may not import, or from the library to a stage."""
    breaches = []
    for module, imported in sorted(imports.items()):
        own = wing(module)
        if own is None:
            continue
        for other in sorted(imported):
            target = wing(other)
            if target is None or (target != own and target not in LAYERS[own]):
                breaches.append(f"{module} -> {other}")
    return breaches


def test_every_wing_has_its_place_in_the_layers() -> None:
    wings = {p.name for p in (REPO / "spark_jobs").iterdir() if (p / "__init__.py").exists()}
    assert wings == set(LAYERS)


def test_the_wings_import_only_wings_below_them() -> None:
    assert layer_breaches({m: imported_modules(m) for m in LIBRARY}) == []


def test_the_layer_check_can_fail() -> None:
    # A probe: core importing the gate (as the runner once did), quality importing imaging (as the
    # suites once did for SPLITS), the library importing a stage.
    probe = {
        "spark_jobs/core/runner.py": {"spark_jobs/quality/gate.py", "spark_jobs/core/locks.py"},
        "spark_jobs/quality/suites.py": {"spark_jobs/imaging/images.py"},
        "spark_jobs/ml/models.py": {"spark_jobs/core/store.py"},
        "spark_jobs/scoring/scan.py": {"spark_jobs/score.py"},
        "spark_jobs/score.py": {"spark_jobs/scoring/scan.py"},
    }
    assert layer_breaches(probe) == [
        "spark_jobs/core/runner.py -> spark_jobs/quality/gate.py",
        "spark_jobs/quality/suites.py -> spark_jobs/imaging/images.py",
        "spark_jobs/scoring/scan.py -> spark_jobs/score.py",
    ]


@pytest.mark.parametrize("stage", STAGES)
def test_a_stage_imports_no_other_stage(stage: str) -> None:
    own = f"spark_jobs/{stage}.py"
    assert imported_modules(own), f"{own} imports nothing from the library: the check would be empty"
    others = (import_closure(own) - {own}) & STAGE_FILES
    assert not others, f"{own} imports the stage module(s) {sorted(others)}: move what it needs to the library"


@pytest.mark.parametrize("module", LIBRARY)
def test_the_library_imports_no_stage(module: str) -> None:
    assert not import_closure(module) & STAGE_FILES


def test_the_library_is_in_named_sub_packages() -> None:
    top = {p.name for p in (REPO / "spark_jobs").glob("*.py")}
    assert top == {"__init__.py", "__main__.py", "params.py"} | {f"{s}.py" for s in STAGES}
    for package in LAYERS:
        doc = (REPO / "spark_jobs" / package / "__init__.py").read_text()
        assert doc.startswith('"""'), package
        assert len(doc.strip().splitlines()) == 2, package


@pytest.mark.parametrize("module", [*LIBRARY, *sorted(STAGE_FILES)])
def test_no_stage_reads_the_whole_params_file(module: str) -> None:
    # spark_jobs/params.py imports every section's schema: a stage importing it would depend on all of them.
    assert "spark_jobs/params.py" not in import_closure(module)


MAX_FUNCTION_LINES = 60


def long_functions(source: str, limit: int = MAX_FUNCTION_LINES) -> list[tuple[str, int]]:
    """``(name, lines)`` of every function (methods and nested ones too) of ``source`` longer than
    ``limit`` lines, its decorators, signature and docstring included."""
    import ast

    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            start = min([node.lineno, *(d.lineno for d in node.decorator_list)])
            lines = node.end_lineno - start + 1
            if lines > limit:
                found.append((node.name, lines))
    return found


@pytest.mark.parametrize(
    "path",
    sorted(
        str(p.relative_to(REPO)) for folder in ("spark_jobs", "plugins", "dags") for p in (REPO / folder).rglob("*.py")
    ),
)
def test_no_function_is_over_60_lines(path: str) -> None:
    assert long_functions((REPO / path).read_text()) == []


def test_the_length_check_can_fail() -> None:
    body = "\n".join(f"    x{i} = {i}" for i in range(59))
    assert long_functions(f"def fits():\n{body}\n") == []  # 60 lines
    assert long_functions(f"@decorated\ndef too_long():\n{body}\n") == [("too_long", 61)]
    inner = body.replace("    ", "            ") + "\n            x = 60"  # 60 lines under its def
    nested = f"class A:\n    def method(self):\n        def inner():\n{inner}\n        return 1\n"
    assert long_functions(nested) == [("method", 63), ("inner", 61)]


@pytest.mark.parametrize("module", LIBRARY)
def test_each_library_module_has_a_test_module_of_its_own(module: str) -> None:
    _, package, name = module.split("/")
    assert (REPO / "tests" / "spark_jobs" / package / f"test_{name}").is_file(), f"{module} has no test module"
