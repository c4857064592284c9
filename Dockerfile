# The project image: Airflow 3 (api-server, scheduler, dag-processor, triggerer) and the Spark
# master and workers all run it, so the driver, the executors' Python workers and the DAGs use
# the same locked environment (requirements-deploy.lock: the project's pins plus the deployment's
# Postgres provider, without the test tools) and Java 17.
FROM python:3.11-slim-bookworm

RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends openjdk-17-jre-headless git procps tini \
 && rm -rf /var/lib/apt/lists/*

ENV PROJECT=/opt/image-platform \
    VIRTUAL_ENV=/opt/venv \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
ENV PATH="$VIRTUAL_ENV/bin:$PATH" \
    PYSPARK_PYTHON="$VIRTUAL_ENV/bin/python" \
    SPARK_HOME="$VIRTUAL_ENV/lib/python3.11/site-packages/pyspark"

WORKDIR $PROJECT
# Dependencies first (a layer that changes only with the lock). The lock pins the CPU build of
# torch (+cpu), which lives on PyTorch's own index.
COPY requirements-deploy.lock constraints.txt ./
RUN python -m venv "$VIRTUAL_ENV" \
 && pip install --no-deps --extra-index-url https://download.pytorch.org/whl/cpu -r requirements-deploy.lock
COPY pyproject.toml README.md ./
COPY spark_jobs ./spark_jobs
RUN pip install --no-deps --no-build-isolation -e . \
 && python -m spark_jobs.core.jvm
COPY dags ./dags
COPY plugins ./plugins
COPY dvc.yaml params.yaml .dvcignore ./

ENTRYPOINT ["/usr/bin/tini", "--"]
