"""Airflow environments for the orchestration tests (see :mod:`tests.orchestration.airflow_setup`)."""

from __future__ import annotations

import subprocess

import pytest

from tests.orchestration.airflow_setup import BIN, airflow_environment


@pytest.fixture(scope="module")
def airflow_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """The Airflow environment of a fresh AIRFLOW_HOME (no metadata DB)."""
    return airflow_environment(tmp_path_factory.mktemp("airflow-home"))


@pytest.fixture(scope="module")
def airflow_db(airflow_env: dict[str, str]) -> dict[str, str]:
    """:func:`airflow_env` with its SQLite metadata DB migrated and the ``dvc`` pool (size 1)."""
    for cmd in (["db", "migrate"], ["pools", "set", "dvc", "1", "DVC commands, one at a time"]):
        subprocess.run([str(BIN / "airflow"), *cmd], env=airflow_env, capture_output=True, check=True, timeout=600)
    return airflow_env
