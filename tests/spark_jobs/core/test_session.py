"""What the session module reads of Spark without starting it: the task metrics of a run's jobs in
an event log, the settings a Spark config gives the session, and the checks of those settings."""

from __future__ import annotations

import json

import pytest

from spark_jobs.core.config import ConfigError, Params, SparkConfig, validate
from spark_jobs.core.session import PEAK, _check_sql_conf, spark_conf, summarise_events


def _event(kind: str, **fields: object) -> bytes:
    return json.dumps({"Event": kind, **fields}, separators=(",", ":")).encode() + b"\n"


def _task(stage: int, run_ms: int, peak: int, deserialize: int = 3) -> bytes:
    metrics = {
        "Executor Run Time": run_ms,
        "Executor CPU Time": run_ms * 500_000,  # ns
        "Executor Deserialize Time": deserialize,
        "JVM GC Time": 1,
        "Result Serialization Time": 0,
        "Peak Execution Memory": peak,
        "Shuffle Read Metrics": {"Remote Bytes Read": 5, "Local Bytes Read": 7},
        "Shuffle Write Metrics": {"Shuffle Bytes Written": 11},
    }
    return _event("SparkListenerTaskEnd", **{"Stage ID": stage, "Stage Attempt ID": 0, "Task Metrics": metrics})


def test_task_metrics_sum_the_run_s_stages_only() -> None:
    lines = [
        _event(
            "SparkListenerJobStart", **{"Job ID": 0, "Stage IDs": [0, 1], "Properties": {"spark.jobGroup.id": "me"}}
        ),
        _event(
            "SparkListenerJobStart", **{"Job ID": 1, "Stage IDs": [2], "Properties": {"spark.jobGroup.id": "other"}}
        ),
        _task(0, 100, 10),
        _task(0, 50, 30),
        _task(1, 20, 20),
        _task(2, 999, 999),  # another run's job
        _event(
            "SparkListenerStageCompleted",
            **{"Stage Info": {"Stage ID": 0, "Stage Attempt ID": 0, "Stage Name": "decode"}},
        ),
        b'{"Event":"SparkListenerEnvironmentUpdate","x":1}\n',
    ]
    metrics = summarise_events(lines, "me")
    total = metrics["total"]
    assert total["tasks"] == 3
    assert total["executor_run_time_ms"] == 170
    assert total["executor_cpu_time_ms"] == 85  # ns -> ms
    assert total["executor_deserialize_time_ms"] == 9
    assert (total["shuffle_read_bytes"], total["shuffle_local_read_bytes"], total["shuffle_write_bytes"]) == (
        15,
        21,
        33,
    )
    assert total["peak_execution_memory_bytes"] == 30  # a peak is the largest, not a sum
    assert [(s["stage_id"], s["name"], s["tasks"]) for s in metrics["stages"]] == [(0, "decode", 2), (1, "", 1)]
    assert summarise_events(lines, "nobody") == {"total": {k: 0 for k in total}, "stages": []}


def test_spark_conf_carries_the_params_and_extra_keys() -> None:
    conf = spark_conf(SparkConfig(master="local[2]", shuffle_partitions=3, conf={"spark.ui.enabled": "true"}))
    assert conf["spark.sql.shuffle.partitions"] == "3"
    assert conf["spark.ui.enabled"] == "true"
    assert PEAK == "peak_execution_memory_bytes"


@pytest.mark.parametrize(
    ("conf", "message"),
    [
        ({"spark.executor.memory": "lots"}, "spark.executor.memory: 'lots' is not a size"),
        ({"spark.sql.shuffle.partitions": "abc"}, "spark.sql.shuffle.partitions: 'abc' is not an integer"),
        ({"spark.eventLog.enabled": "yes"}, "spark.eventLog.enabled: 'yes' is not true or false"),
    ],
)
def test_spark_settings_of_the_wrong_type_are_refused_before_spark_starts(conf: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as info:
        validate({"spark": {"conf": conf}}, Params)
    assert "\n" not in str(info.value)


@pytest.mark.spark
def test_other_sql_settings_are_checked_by_spark_itself(spark) -> None:
    before = spark.conf.get("spark.sql.autoBroadcastJoinThreshold")
    with pytest.raises(ConfigError, match=r"^spark.conf: .*'huge'.*autoBroadcastJoinThreshold") as info:
        _check_sql_conf(spark, {"spark.sql.autoBroadcastJoinThreshold": "huge"})
    assert "\n" not in str(info.value)
    assert spark.conf.get("spark.sql.autoBroadcastJoinThreshold") == before


def test_spark_s_progress_bar_only_in_a_terminal(monkeypatch) -> None:
    import sys

    monkeypatch.setattr(sys.stdout, "isatty", lambda: False)
    assert spark_conf(SparkConfig())["spark.ui.showConsoleProgress"] == "false"  # a log: progress lines instead
    monkeypatch.setattr(sys.stdout, "isatty", lambda: True)
    assert spark_conf(SparkConfig())["spark.ui.showConsoleProgress"] == "true"
