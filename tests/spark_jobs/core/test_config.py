"""params.yaml loading: types, ranges, unknown keys and --set overrides, each a one-line error."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from spark_jobs.core.config import SECTIONS, ConfigError, Params, apply_overrides, load_config
from spark_jobs.core.session import master_url, spark_conf
from spark_jobs.params import Config, load
from tests.factories import REPO


def test_repo_params_load_with_documented_interface() -> None:
    cfg = load(REPO / "params.yaml")
    assert cfg.data.root == "data"
    assert cfg.ingest.source == "data/sample/digits"
    assert cfg.ingest.image_size == 32


def test_every_params_key_is_known_to_the_config() -> None:
    """params.yaml and the typed config agree both ways: no key in one that the other lacks."""
    tree = yaml.safe_load((REPO / "params.yaml").read_text())
    dumped = load(REPO / "params.yaml").model_dump(mode="json")

    def keys(node: object, prefix: str = "") -> set[str]:
        if not isinstance(node, dict) or prefix.endswith("conf"):
            return {prefix}
        return set().union(*(keys(v, f"{prefix}.{k}" if prefix else k) for k, v in node.items()))

    assert keys(tree) == keys(dumped)


def test_overrides_are_parsed_as_yaml_values() -> None:
    cfg = load(
        REPO / "params.yaml",
        ["ingest.image_size=64", "ingest.resize.policy=crop", "ingest.alpha_background=[1, 2, 3]", "data.root=/tmp/x"],
    )
    assert cfg.ingest.image_size == 64
    assert cfg.ingest.resize.policy == "crop"
    assert cfg.ingest.alpha_background == (1, 2, 3)
    assert cfg.data.root == "/tmp/x"


def test_override_values_are_read_by_the_parameter_s_type() -> None:
    cfg = load(
        REPO / "params.yaml",
        [
            "ingest.source=/data/photos #2",
            "score.inbox=s3://bucket/in: 'today'",
            "data.root=2026",
            "score.model=null",
            "spark.python=~/venv/bin/python # 3.11",
            "ingest.image_size=64",
            "train.local_mode=true",
            "evaluate.models=[cnn, mllib]",
        ],
    )
    assert cfg.ingest.source == "/data/photos #2"
    assert cfg.score.inbox == "s3://bucket/in: 'today'"
    assert cfg.data.root == "2026"
    assert cfg.score.model is None
    assert cfg.spark.python == "~/venv/bin/python # 3.11"
    assert cfg.ingest.image_size == 64
    assert cfg.train.local_mode is True
    assert cfg.evaluate.models == ("cnn", "mllib")


def test_overrides_do_not_touch_the_input_tree() -> None:
    tree = {"ingest": {"image_size": 32}}
    assert apply_overrides(tree, ["ingest.image_size=8"], Config) == {"ingest": {"image_size": 8}}
    assert tree == {"ingest": {"image_size": 32}}


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("ingest.imagesize=64", "unknown parameter ingest.imagesize"),
        ("ingest.image_size=big", "parameter ingest.image_size: Input should be a valid integer"),
        ("ingest.image_size=2", "parameter ingest.image_size: Input should be greater than or equal to 8"),
        ("ingest.resize.policy=squash", "parameter ingest.resize.policy: Input should be 'pad', 'crop' or 'stretch'"),
        ("ingest.split.train=0.9", "parameter ingest.split: train + val + test must be 1.0"),
        ("ingest.source=", "parameter ingest.source: is empty; name a folder or an s3:// prefix"),
        ("ingest.source=  ", "parameter ingest.source: is empty"),
        ("score.inbox=", "parameter score.inbox: is empty"),
        ("data.root=/", "parameter data.root: is the file system's root"),
        ("spark.master=lokal[2]", "parameter spark.master: is not a Spark master URL"),
        ("spark.master=spark://host", "parameter spark.master: is not a Spark master URL"),
        ("data.root=/tmp/..", "parameter data.root: is the file system's root"),
        ("train.seed=1000000000000000000000000000000", "parameter train.seed: Input should be less than or equal to"),
        ("ingest.split.seed=-1", "parameter ingest.split.seed: Input should be greater than or equal to 0"),
        ("gate.raw.max_quarantine_ratio=1.5", "parameter gate.raw.max_quarantine_ratio"),
        ("nosuchsection.key=1", "unknown parameter nosuchsection"),
        ("features.kind=surf", "parameter features.kind: Input should be 'classical', 'sift' or 'cnn'"),
        ("features.tiles.overlap=1.0", "parameter features.tiles.overlap: Input should be less than 1"),
        ("features.cnn.std=[1,0,1]", "parameter features.cnn.std.1: Input should be greater than 0"),
    ],
)
def test_bad_values_name_the_key_in_one_line(override: str, expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        load(REPO / "params.yaml", [override])
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(expected)


def test_malformed_override() -> None:
    with pytest.raises(ConfigError, match=r"expected section\.key=value"):
        load(REPO / "params.yaml", ["ingest.image_size"])


def test_missing_params_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load(tmp_path / "nope.yaml")


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "is a directory, not a regular file"),
        (b"\x89PNG\r\n\x1a\n\x00\xff\xfe", "is not UTF-8 text"),
        (b"ingest: [unclosed\n", "is not valid YAML"),
        (b"- a list\n", "expected a mapping of sections"),
        (b"ingest:\n  image_size: 32\n  image_size: 64\n", "duplicate key 'image_size'"),
        (b"ingest:\n  source: !!binary aGVsbG8=\n", r"tags \(tag:yaml.org,2002:binary\) are not allowed"),
        (b"ingest:\n  extensions: !!set {.png, .jpg}\n", r"tags \(tag:yaml.org,2002:set\) are not allowed"),
        (b"ingest:\n  source: !python/name:os.system\n", "tags .* are not allowed"),
        # billion laughs: nine levels of ten aliases each would be 10**9 strings
        (b'a: &a ["x","x"]\nb: &b [*a,*a]\nc: [*b,*b]\n', r"anchors and aliases \(&a\) are not allowed"),
        (b"x: " + b"y" * (2**20 + 10), "is over 1 MiB"),
        (b"x: " + b"[" * 100_000 + b"]" * 100_000, "nested too deeply"),
    ],
)
def test_an_unusable_params_file_is_one_line(tmp_path: Path, content: bytes | None, message: str) -> None:
    path = tmp_path / "params.yaml"
    if content is None:
        path.mkdir()
    else:
        path.write_bytes(content)
    with pytest.raises(ConfigError, match=message) as info:
        load(path)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("path", ["/dev/zero", "fifo"])
def test_a_params_path_that_is_not_a_regular_file_is_refused_without_reading(tmp_path: Path, path: str) -> None:
    if path == "fifo":
        path = str(tmp_path / "params.fifo")
        os.mkfifo(path)  # opening it to read would wait for a writer forever
    with pytest.raises(ConfigError, match="is a pipe, socket or device, not a regular file"):
        load(path)


def test_a_date_like_value_stays_text_and_long_values_are_cut(tmp_path: Path) -> None:
    path = tmp_path / "params.yaml"
    path.write_text("ingest:\n  source: 2024-01-05\n")
    cfg = load(path)
    assert cfg.ingest.source == "2024-01-05"  # a folder named by a date, not a datetime
    with pytest.raises(ConfigError) as info:
        load(path, ["ingest.image_size=" + "9" * 10**6 + "x"])
    assert len(str(info.value)) < 300
    assert "more characters" in str(info.value)


def test_paths_are_resolved_once_as_a_user_means_them(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    odd = os.fsdecode(bytes(tmp_path) + b"/caf\xe9 [1]%")
    uri = Path(odd).as_uri()
    cfg = load(
        REPO / "params.yaml",
        ["data.root=~/out", f"ingest.source={uri}", "score.inbox=file://localhost/in", "score.model=~/m"],
    )
    assert cfg.data.root == str(tmp_path / "home" / "out")  # never a folder named "~"
    assert cfg.ingest.source == odd  # the file: URI's %-escapes are the name's bytes
    assert (cfg.score.inbox, cfg.score.model) == ("/in", str(tmp_path / "home" / "m"))
    assert load(REPO / "params.yaml", ["data.root=data"]).data.root == "data"  # relative stays relative
    with pytest.raises(ConfigError, match="file on host 'elsewhere'"):
        load(REPO / "params.yaml", ["score.inbox=file://elsewhere/in"])
    with pytest.raises(ConfigError, match=r"data\.root: has bytes that are not UTF-8"):
        load(REPO / "params.yaml", [f"data.root={odd}"])


def test_spark_settings_come_from_params() -> None:
    cfg = load(
        REPO / "params.yaml",
        ["spark.arrow_max_records_per_batch=64", "spark.shuffle_partitions=3", "spark.task_max_failures=2"],
    )
    conf = spark_conf(cfg.spark)
    assert conf["spark.sql.execution.arrow.maxRecordsPerBatch"] == "64"
    assert conf["spark.sql.shuffle.partitions"] == "3"
    assert conf["spark.task.maxFailures"] == "2"
    assert conf["spark.pyspark.python"] == sys.executable
    assert conf["spark.sql.parquet.compression.codec"] == "zstd"
    assert conf["spark.memory.fraction"] == "0.6"
    # Local mode ignores spark.task.maxFailures; the master URL carries it instead.
    assert master_url(cfg.spark) == "local[*,2]"
    assert master_url(cfg.spark.model_copy(update={"master": "spark://h:7077"})) == "spark://h:7077"


def test_cli_rejects_bad_param_before_spark_starts() -> None:
    started = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "spark_jobs.ingest", "--set", "ingest.image_size=2"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert "parameter ingest.image_size" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert "SparkContext" not in proc.stderr
    assert "log4j" not in proc.stderr
    assert time.monotonic() - started < 30


def test_train_settings_from_the_command_line() -> None:
    cfg = load(REPO / "params.yaml", ["train.autoencoder.holdout_class=7", "train.local_mode=true"])
    assert cfg.train.autoencoder.holdout_class == "7"  # a class name, as the folder is called
    assert cfg.train.local_mode is True
    assert load(REPO / "params.yaml", ["train.autoencoder.holdout_class=null"]).train.autoencoder.holdout_class is None
    assert load(REPO / "params.yaml").train.local_mode == "auto"
    with pytest.raises(ConfigError, match=r"train\.local_mode"):
        load(REPO / "params.yaml", ["train.local_mode=sometimes"])
    with pytest.raises(ConfigError, match=r"batch_size must be >= train\.num_processes"):
        load(REPO / "params.yaml", ["train.num_processes=4", "train.cnn.batch_size=2"])
    with pytest.raises(ConfigError, match=r"evaluate\.models"):
        load(REPO / "params.yaml", ["evaluate.models=[cnn,cnn]"])


def test_the_whole_file_s_sections_are_the_known_ones() -> None:
    assert set(Config.model_fields) == set(SECTIONS)


def test_a_stage_reads_its_sections_and_leaves_the_others() -> None:
    from spark_jobs import ingest

    # A bad value in a section ingest does not read is the reading stage's to refuse, not ingest's.
    overrides = ["score.stream.trigger_s=-1", "train.cnn.epochs=many", "ingest.image_size=64"]
    cfg = load_config(REPO / "params.yaml", overrides, ingest.IngestParams)
    assert cfg.ingest.image_size == 64
    assert cfg.score.inbox == "data/sample/inbox"  # every stage reads the sources it must not write into
    assert not hasattr(cfg, "train")
    with pytest.raises(ConfigError, match=r"^parameter score.stream.trigger_s"):
        load(REPO / "params.yaml", overrides[:1])
    with pytest.raises(ConfigError, match=r"^unknown parameter ingst \(params.yaml's sections"):
        load_config(REPO / "params.yaml", ["ingst.image_size=64"], ingest.IngestParams)  # a typo still is an error
    with pytest.raises(ConfigError, match=r"^unknown parameter ingest.imagesize"):
        load_config(REPO / "params.yaml", ["ingest.imagesize=64"], ingest.IngestParams)


def test_views_of_another_stage_s_section_share_its_defaults() -> None:
    from spark_jobs import evaluate
    from spark_jobs.core.config import IngestSource, ScoreInbox
    from spark_jobs.ml.cards import Champions, TrainedModels
    from spark_jobs.scoring.config import ScoreParams

    whole = Config()
    assert IngestSource().source == whole.ingest.source
    assert ScoreInbox().inbox == whole.score.inbox
    assert TrainedModels().output == whole.train.output
    assert Champions().champion == whole.evaluate.champion
    assert evaluate.CascadeView().cascade == whole.score.cascade
    # What a stage records of its own sections is what the whole file holds.
    everything = load(REPO / "params.yaml")
    score = load_config(REPO / "params.yaml", [], ScoreParams)
    assert score.section("score", "gate.predictions", "data") == everything.section("score", "gate.predictions", "data")


def test_the_base_params_read_only_what_every_stage_reads() -> None:
    base = load_config(REPO / "params.yaml", ["features.kind=cnn"], Params)
    assert set(base.model_dump()) == {"data", "spark", "ingest", "score"}
    assert base.section("data") == {"data": {"root": "data"}}  # lock_wait_s is speed only
