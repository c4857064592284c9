#!/usr/bin/env bash
# Airflow on this machine for this repository: `airflow standalone` (api-server, scheduler,
# dag-processor, triggerer; SQLite, LocalExecutor with one task per core; the DAGs unpaused) with
# the repository's dags/ and plugins/, the
# `spark_default` connection (local[*] unless AIRFLOW_CONN_SPARK_DEFAULT says otherwise) and the
# `dvc` pool (size 1: DVC commands run one at a time). Prints where to log in and as whom.
#
#   make airflow                      # or: bash scripts/airflow-local.sh
#   AIRFLOW_PORT=8081 make airflow    # another port
#
# Variables (all optional): AIRFLOW_HOME (default .airflow/), AIRFLOW_PORT (8080),
# AIRFLOW_CONN_SPARK_DEFAULT (JSON), IMAGE_PLATFORM_WORKSPACE (where runs read params.yaml and
# write data/, models/, reports/: default this repository, as `dvc repro`), IMAGE_SCORING_CRON.
set -euo pipefail
REPO="$(cd "$(dirname "$0")/.." && pwd)"
BIN="${VENV_BIN:-$REPO/.venv/bin}"
PORT="${AIRFLOW_PORT:-8080}"

export PATH="$BIN:$PATH"  # spark-submit, dvc, airflow and the stages' python
export PYSPARK_PYTHON="${PYSPARK_PYTHON:-$BIN/python}"
export AIRFLOW_HOME="${AIRFLOW_HOME:-$REPO/.airflow}"
export AIRFLOW__CORE__DAGS_FOLDER="$REPO/dags"
export AIRFLOW__CORE__PLUGINS_FOLDER="$REPO/plugins"
export AIRFLOW__CORE__LOAD_EXAMPLES=False
export AIRFLOW__CORE__EXECUTOR=LocalExecutor
export AIRFLOW__API__HOST=127.0.0.1
export AIRFLOW__API__PORT="$PORT"
export AIRFLOW__API__BASE_URL="http://127.0.0.1:$PORT"
export AIRFLOW__CORE__EXECUTION_API_SERVER_URL="http://127.0.0.1:$PORT/execution/"
LOCAL_SPARK='{"conn_type": "spark", "host": "local[*]"}'
export AIRFLOW_CONN_SPARK_DEFAULT="${AIRFLOW_CONN_SPARK_DEFAULT:-$LOCAL_SPARK}"
export IMAGE_PLATFORM_WORKSPACE="${IMAGE_PLATFORM_WORKSPACE:-$REPO}"
export DVC_NO_ANALYTICS=1
# For local use: the project's DAGs start unpaused (a paused DAG's first trigger would only queue),
# and the executor runs as many tasks at once as the machine has cores (each is a Spark driver).
export AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION="${AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION:-False}"
CORES="$(nproc 2>/dev/null || getconf _NPROCESSORS_ONLN)"
export AIRFLOW__CORE__PARALLELISM="${AIRFLOW__CORE__PARALLELISM:-$CORES}"
# OpenLineage (the provider): every task run's events in the stages' namespace, and each stage task
# passes its run as the parent of the stage's own events. Unless the user configured OpenLineage
# (OPENLINEAGE_URL for Marquez, OPENLINEAGE_CONFIG, AIRFLOW__OPENLINEAGE__TRANSPORT), the file
# transport writes them beside the stages' (data/lineage/ of the workspace: airflow-*.json).
export AIRFLOW__OPENLINEAGE__NAMESPACE="${AIRFLOW__OPENLINEAGE__NAMESPACE:-${OPENLINEAGE_NAMESPACE:-image-platform}}"
if [[ -z "${AIRFLOW__OPENLINEAGE__TRANSPORT:-}${OPENLINEAGE_URL:-}${OPENLINEAGE_CONFIG:-}" ]]; then
  LINEAGE="$IMAGE_PLATFORM_WORKSPACE/data/lineage"
  mkdir -p "$LINEAGE"
  export AIRFLOW__OPENLINEAGE__TRANSPORT="{\"type\": \"file\", \"log_file_path\": \"$LINEAGE/airflow\", \"append\": false}"
fi

command -v airflow >/dev/null || { echo "error: airflow not found in $BIN: run 'make venv' first" >&2; exit 1; }
# AIRFLOW_HOME holds the metadata DB, the logs and the admin password: the user's alone. The
# folder is 0700 and what is made in it here 0600 (the password file from its first byte; a home
# made earlier is closed too). The private umask stays inside this block: Airflow and the stages it
# runs keep the user's own, so the champion, reports and data are shared as the user's files are.
USER_UMASK="$(umask)"
umask 077
mkdir -p "$AIRFLOW_HOME"
chmod -R go-rwx "$AIRFLOW_HOME"
airflow db migrate >"$AIRFLOW_HOME/db-migrate.log" 2>&1 \
  || { echo "error: 'airflow db migrate' failed, see $AIRFLOW_HOME/db-migrate.log" >&2; exit 1; }
airflow pools set dvc 1 "DVC commands, one at a time" >/dev/null

# The login: user admin (SimpleAuthManager), its password generated once and kept in AIRFLOW_HOME.
PASSWORDS="$AIRFLOW_HOME/simple_auth_manager_passwords.json.generated"
if [[ ! -s "$PASSWORDS" ]]; then
  python -c 'import json, secrets, sys; print(json.dumps({"admin": secrets.token_urlsafe(12)}))' >"$PASSWORDS"
fi
PASSWORD="$(python -c 'import json, sys; print(json.load(open(sys.argv[1]))["admin"])' "$PASSWORDS")"
umask "$USER_UMASK"
cat <<BANNER
================================================================================
 Airflow UI:   http://127.0.0.1:$PORT   (ready when the log below says "Airflow is ready")
 Log in as:    admin / $PASSWORD   (kept in $PASSWORDS)
 DAGs:         image_training_pipeline (Trigger -> fill the Params form), image_batch_scoring
 Spark:        $AIRFLOW_CONN_SPARK_DEFAULT
 Workspace:    $IMAGE_PLATFORM_WORKSPACE (params.yaml, data/, models/, reports/)
 Stop:         Ctrl-C
================================================================================
BANNER

# Airflow in a session of its own, stopped as a whole: on Ctrl-C or SIGTERM every component, task
# and Spark driver it started gets SIGTERM, and whatever still runs 20 s later SIGKILL.
setsid airflow standalone &
AIRFLOW_PID=$!
stop() {
  trap - INT TERM
  echo "stopping Airflow (process group $AIRFLOW_PID)" >&2
  kill -TERM -- "-$AIRFLOW_PID" 2>/dev/null || true
  for _ in $(seq 1 20); do
    kill -0 -- "-$AIRFLOW_PID" 2>/dev/null || exit 0
    sleep 1
  done
  kill -KILL -- "-$AIRFLOW_PID" 2>/dev/null || true
  exit 0
}
trap stop INT TERM
wait "$AIRFLOW_PID"
