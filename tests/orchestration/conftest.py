"""Airflow environments for the orchestration tests (see :mod:`tests.orchestration.airflow_setup`;
the session's migrated one, ``airflow_db``, is in tests/conftest.py)."""

from __future__ import annotations

import pytest

from tests.orchestration.airflow_setup import airflow_environment


@pytest.fixture(scope="module")
def airflow_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """The Airflow environment of a fresh AIRFLOW_HOME (no metadata DB)."""
    return airflow_environment(tmp_path_factory.mktemp("airflow-home"))
