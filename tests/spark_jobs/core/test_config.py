"""params.yaml loading: types, ranges, unknown keys and --set overrides, each a one-line error."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from spark_jobs.core.config import ConfigError, apply_overrides, load_config
from spark_jobs.core.session import master_url, spark_conf
from tests.factories import REPO


def test_repo_params_load_with_documented_interface() -> None:
    cfg = load_config(REPO / "params.yaml")
    assert cfg.data.root == "data"
    assert cfg.ingest.source == "data/sample/digits"
    assert cfg.ingest.image_size == 32


def test_every_params_key_is_known_to_the_config() -> None:
    """params.yaml and the typed config agree both ways: no key in one that the other lacks."""
    tree = yaml.safe_load((REPO / "params.yaml").read_text())
    dumped = load_config(REPO / "params.yaml").model_dump(mode="json")

    def keys(node: object, prefix: str = "") -> set[str]:
        if not isinstance(node, dict) or prefix.endswith("conf"):
            return {prefix}
        return set().union(*(keys(v, f"{prefix}.{k}" if prefix else k) for k, v in node.items()))

    assert keys(tree) == keys(dumped)


def test_overrides_are_parsed_as_yaml_values() -> None:
    cfg = load_config(
        REPO / "params.yaml",
        ["ingest.image_size=64", "ingest.resize.policy=crop", "ingest.alpha_background=[1, 2, 3]", "data.root=/tmp/x"],
    )
    assert cfg.ingest.image_size == 64
    assert cfg.ingest.resize.policy == "crop"
    assert cfg.ingest.alpha_background == (1, 2, 3)
    assert cfg.data.root == "/tmp/x"


def test_override_values_are_read_by_the_parameter_s_type() -> None:
    cfg = load_config(
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
    assert apply_overrides(tree, ["ingest.image_size=8"]) == {"ingest": {"image_size": 8}}
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
        ("features.kind=sift", "parameter features.kind: Input should be 'classical' or 'cnn'"),
        ("features.tiles.overlap=1.0", "parameter features.tiles.overlap: Input should be less than 1"),
        ("features.cnn.std=[1,0,1]", "parameter features.cnn.std.1: Input should be greater than 0"),
    ],
)
def test_bad_values_name_the_key_in_one_line(override: str, expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(REPO / "params.yaml", [override])
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(expected)


def test_malformed_override() -> None:
    with pytest.raises(ConfigError, match=r"expected section\.key=value"):
        load_config(REPO / "params.yaml", ["ingest.image_size"])


def test_missing_params_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "is a directory, not a file"),
        (b"\x89PNG\r\n\x1a\n\x00\xff\xfe", "is not UTF-8 text"),
        (b"ingest: [unclosed\n", "is not valid YAML"),
        (b"- a list\n", "expected a mapping of sections"),
    ],
)
def test_an_unusable_params_file_is_one_line(tmp_path: Path, content: bytes | None, message: str) -> None:
    path = tmp_path / "params.yaml"
    if content is None:
        path.mkdir()
    else:
        path.write_bytes(content)
    with pytest.raises(ConfigError, match=message) as info:
        load_config(path)
    assert "\n" not in str(info.value)


def test_spark_settings_come_from_params() -> None:
    cfg = load_config(
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


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({"pca_k": 400}, "pca_k=400 exceeds the descriptor length 372 of 32px images"),
        ({"hog_pixels_per_cell": 32}, "a 32px image holds no HOG block"),
        ({}, None),
    ],
)
def test_classical_settings_that_cannot_describe_the_images(changes: dict, expected: str | None) -> None:
    classical = load_config(REPO / "params.yaml").features.classical.model_copy(update=changes)
    problem = classical.problem(32)
    if expected is None:
        assert problem is None
    else:
        assert problem.startswith(expected)


def test_classical_descriptors_too_long_for_mllib_pca() -> None:
    classical = load_config(REPO / "params.yaml").features.classical
    assert classical.descriptor_dim(256) == 34644
    assert classical.problem(256).startswith("256px images give descriptors of length 34644 > 8192")
    assert classical.model_copy(update={"hog_pixels_per_cell": 32}).problem(256) is None


def test_train_settings_from_the_command_line() -> None:
    cfg = load_config(REPO / "params.yaml", ["train.autoencoder.holdout_class=7", "train.local_mode=true"])
    assert cfg.train.autoencoder.holdout_class == "7"  # a class name, as the folder is called
    assert cfg.train.local_mode is True
    assert (
        load_config(REPO / "params.yaml", ["train.autoencoder.holdout_class=null"]).train.autoencoder.holdout_class
        is None
    )
    assert load_config(REPO / "params.yaml").train.local_mode == "auto"
    with pytest.raises(ConfigError, match=r"train\.local_mode"):
        load_config(REPO / "params.yaml", ["train.local_mode=sometimes"])
    with pytest.raises(ConfigError, match=r"batch_size must be >= train\.num_processes"):
        load_config(REPO / "params.yaml", ["train.num_processes=4", "train.cnn.batch_size=2"])
    with pytest.raises(ConfigError, match=r"evaluate\.models"):
        load_config(REPO / "params.yaml", ["evaluate.models=[cnn,cnn]"])


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("data.root={tmp}/a-file/data", "a-file is a file, not a folder"),
        ("spark.python={tmp}/no-such-python", "no-such-python: no executable interpreter there"),
        ("spark.python={tmp}/a-file", "a-file: no executable interpreter there"),
    ],
)
def test_unusable_local_paths_stop_a_stage_before_spark(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, override: str, message: str
) -> None:
    from spark_jobs import ingest

    (tmp_path / "a-file").write_text("not a folder")
    argv = ["--params", str(REPO / "params.yaml"), "--set", f"data.root={tmp_path / 'data'}"]
    assert ingest.main([*argv, "--set", override.format(tmp=tmp_path)]) == 2
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 1, errors
    assert message in errors[0]


@pytest.mark.parametrize(
    ("stage", "overrides", "folder"),
    [
        ("ingest", ["data.root={src}"], "{src}/ingest"),  # a class folder named "ingest" would be replaced
        ("ingest", ["data.root={src}/0"], "{src}/0/ingest"),
        ("ingest", ["ingest.source={tmp}/data/ingest"], "{tmp}/data/ingest"),
        ("ingest", ["ingest.source={tmp}/data"], "{tmp}/data/ingest"),
        ("score", ["score.inbox={tmp}/data/predictions/incoming"], "{tmp}/data/predictions"),
        ("train", ["train.output={src}"], "{src}/mllib"),
        ("evaluate", ["evaluate.champion={src}/champion"], "{src}/champion"),
    ],
)
def test_a_stage_never_writes_into_a_source(tmp_path: Path, caplog, stage: str, overrides, folder: str) -> None:
    """Refused before Spark starts, and nothing in the source changes."""
    import importlib

    src = tmp_path / "src"
    (src / "ingest").mkdir(parents=True)
    (src / "ingest" / "a.png").write_bytes(b"an image of the class 'ingest'")
    values = {"src": src, "tmp": tmp_path}
    argv = ["--params", str(REPO / "params.yaml"), "--set", f"data.root={tmp_path / 'data'}"]
    argv += ["--set", f"ingest.source={src}", "--set", f"score.inbox={tmp_path / 'inbox'}"]
    for override in overrides:
        argv += ["--set", override.format(**values)]
    assert importlib.import_module(f"spark_jobs.{stage}").main(argv) == 2
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 1, errors
    assert f"{stage} would write to {folder.format(**values)}, which overlaps" in errors[0]
    assert (src / "ingest" / "a.png").read_bytes() == b"an image of the class 'ingest'"


def test_the_bundled_layout_overlaps_no_output() -> None:
    from spark_jobs.core.jobs import check_sources_untouched

    cfg = load_config(REPO / "params.yaml")
    for stage in ("ingest", "backbone", "features", "train", "evaluate", "score"):
        check_sources_untouched(stage, cfg)
