"""The package's layout (DESIGN.md #15): ``spark_jobs/<stage>.py`` are entry points that import
the library sub-packages, never one another; the library never imports a stage."""

from __future__ import annotations

import pytest

from spark_jobs.__main__ import STAGES
from tests.factories import REPO
from tests.test_dvc_deps import import_closure, imported_modules

STAGE_FILES = {f"spark_jobs/{s}.py" for s in STAGES}
LIBRARY = sorted(str(p.relative_to(REPO)) for p in (REPO / "spark_jobs").glob("*/*.py") if p.name != "__init__.py")


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
    assert top == {"__init__.py", "__main__.py"} | {f"{s}.py" for s in STAGES}
    for package in ("core", "imaging", "ml", "quality"):
        doc = (REPO / "spark_jobs" / package / "__init__.py").read_text()
        assert doc.startswith('"""'), package
        assert len(doc.strip().splitlines()) == 2, package
