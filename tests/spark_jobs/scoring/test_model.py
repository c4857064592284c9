"""Which model a scoring run uses and the version its rows are recorded under."""

from __future__ import annotations

from pathlib import Path

import pytest

from spark_jobs.core import atomic
from spark_jobs.core.config import ConfigError, load_config
from spark_jobs.ml.cards import ModelFiles, read_card
from spark_jobs.scoring import heads, model
from spark_jobs.scoring.config import ScoreParams
from tests.factories import REPO, model_folder


def _cfg(*overrides: str) -> ScoreParams:
    return load_config(REPO / "params.yaml", list(overrides), ScoreParams)


def test_the_champion_of_the_task_unless_a_model_is_named(tmp_path: Path) -> None:
    assert model.model_folder(_cfg()) == Path("models/champion/classifier")
    assert model.model_folder(_cfg("score.task=anomaly", f"evaluate.champion={tmp_path}")) == tmp_path / "anomaly"
    assert model.model_folder(_cfg(f"score.model={tmp_path / 'm'}")) == tmp_path / "m"


def test_an_int8_copy_and_a_cascade_are_versions_of_their_own(tmp_path: Path) -> None:
    cnn = model_folder(tmp_path / "cnn", version="cnn-v")
    light = model_folder(tmp_path / "mllib", kind="mllib", version="mllib-v")
    root = f"data.root={tmp_path / 'data'}"
    plain = model.scorer(_cfg(root, f"score.model={cnn}"))
    assert (plain.version, plain.kind, plain.decider) == ("cnn-v", "cnn", "cnn")
    assert plain.labels() == ["0", "1"]
    assert plain.describe() == {"folder": str(cnn), "pinned": str(plain.folder), "version": "cnn-v", "kind": "cnn"}
    int8 = model.scorer(_cfg(root, f"score.model={cnn}", "score.quantize=int8"))
    assert (int8.version, int8.decider) == ("cnn-v-int8", "cnn-int8")
    cascade = model.scorer(
        _cfg(
            root,
            f"score.model={cnn}",
            "score.cascade.enabled=true",
            f"score.cascade.light={light}",
            "score.cascade.confidence=0.8",
        )
    )
    assert (cascade.version, cascade.kind) == ("cascade-mllib-v+cnn-v@0.8", "cascade")
    with pytest.raises(ConfigError, match="int8 applies to cnn models"):
        model.scorer(_cfg(root, f"score.model={light}", "score.quantize=int8"))


def test_the_tile_cascade_is_a_version_of_its_own_and_needs_an_attention_model(tmp_path: Path) -> None:
    attention = model_folder(tmp_path / "att", kind="tiles_attention", version="att-v")
    root = f"data.root={tmp_path / 'data'}"
    screened = model.scorer(_cfg(root, f"score.model={attention}", "score.cascade.tile_fraction=0.25"))
    assert screened.version == "att-v-tiles@0.25"  # its rows are not the whole model's: scored anew
    assert model.scorer(_cfg(root, f"score.model={attention}")).version == "att-v"
    cnn = model_folder(tmp_path / "cnn", version="cnn-v")
    with pytest.raises(ConfigError, match="tile_fraction below 1 applies to tiles_attention models"):
        model.scorer(_cfg(root, f"score.model={cnn}", "score.cascade.tile_fraction=0.5"))
    card = read_card(attention)  # a tiles_attention model trained without a screen (screen_images 0)
    with pytest.raises(ConfigError, match="needs a tiles_attention model with a tile screen"):
        model.tile_screen(attention, card)
    (attention / "screen.json").write_text("{}")
    with pytest.raises(ConfigError, match="cannot read its tile screen"):
        model.tile_screen(attention, card.model_copy(update={"files": ModelFiles(screen="screen.json")}))


def test_an_anomaly_model_labels_its_rows_normal_or_anomaly(tmp_path: Path) -> None:
    folder = model_folder(tmp_path / "ae", kind="autoencoder", task="anomaly", version="ae-v")
    scored = model.scorer(_cfg(f"data.root={tmp_path / 'data'}", f"score.model={folder}"))
    assert scored.labels() == list(heads.ANOMALY_LABELS)


def test_an_mllib_model_needs_classical_or_sift_features(tmp_path: Path) -> None:
    folder = tmp_path / "m"
    folder.mkdir()
    (folder / "extractor.json").write_text('{"kind": "cnn"}')
    with pytest.raises(ConfigError, match="trained on cnn features is not supported"):
        model.descriptor_extractor(folder)


def test_a_run_scores_with_the_version_it_pinned_whatever_is_promoted(tmp_path: Path) -> None:
    champion = model_folder(tmp_path / "champion", version="cnn-1")
    cfg = _cfg(f"data.root={tmp_path / 'data'}", f"score.model={champion}")
    first = model.scorer(cfg)
    assert first.folder.parent == tmp_path / "data" / model.PINNED
    # A promotion replaces the champion's folder whole (atomic.copy_dir), as evaluate does.
    atomic.copy_dir(model_folder(tmp_path / "next", version="cnn-2"), champion, tmp_path / ".staging")
    assert (first.folder / "marker").read_text() == "cnn-1"  # what the running job reads: unchanged
    assert read_card(first.folder).version == "cnn-1"
    second = model.scorer(cfg)  # the next run (or micro-batch)
    assert (second.version, (second.folder / "marker").read_text()) == ("cnn-2", "cnn-2")
    assert model.scorer(cfg).folder == second.folder  # one copy per version


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ("tamper", "its weights' sha256 is .*, its card says .*: tampered or replaced since training; not loaded"),
        ("outside", "its card names '../elsewhere.pt', outside its folder; not followed"),
    ],
)
def test_weights_that_are_not_the_card_s_are_refused_on_the_driver(tmp_path: Path, change: str, message: str) -> None:
    folder = model_folder(tmp_path / "m", version="cnn-1")
    if change == "tamper":
        (folder / "model.pt").write_bytes(b"something else")
    else:
        (tmp_path / "elsewhere.pt").write_bytes(b"x")
        model_folder(folder, version="cnn-1", files=ModelFiles(weights="../elsewhere.pt"))
    with pytest.raises(ConfigError, match=message) as info:
        model.scorer(_cfg(f"data.root={tmp_path / 'data'}", f"score.model={folder}"))
    assert "\n" not in str(info.value)
    assert not (tmp_path / "data" / model.PINNED).exists()  # checked before anything is copied


def test_a_shadow_runs_beside_the_champion_only_on_its_pixels_and_in_its_task(tmp_path: Path) -> None:
    from spark_jobs.core.ingest_config import IngestConfig

    cnn = model_folder(tmp_path / "cnn", version="cnn-v")
    light = model_folder(tmp_path / "mllib", kind="mllib", version="mllib-v")
    root, champion = f"data.root={tmp_path / 'data'}", f"score.model={cnn}"
    paired = model.scorer(_cfg(root, champion, f"score.shadow={light}"))
    assert (paired.version, paired.shadow.version, paired.shadow.kind) == ("cnn-v", "mllib-v", "mllib")
    assert paired.describe()["shadow"]["version"] == "mllib-v"
    assert model.scorer(_cfg(root, champion)).shadow is None
    # "candidate": the model evaluate passed and did not promote, kept beside the champions
    champions = tmp_path / "champion"
    model_folder(champions / "candidates" / "classifier", kind="mllib", version="mllib-c")
    candidate = model.scorer(_cfg(root, champion, "score.shadow=candidate", f"evaluate.champion={champions}"))
    assert candidate.shadow.version == "mllib-c"
    with pytest.raises(ConfigError, match="evaluate has passed no model it did not promote yet"):
        model.scorer(_cfg(root, champion, "score.shadow=candidate", f"evaluate.champion={tmp_path / 'none'}"))
    refused = {
        "cannot agree or disagree with a classifier champion": model_folder(
            tmp_path / "ae", kind="autoencoder", task="anomaly", version="ae-v"
        ),
        "it is the champion itself": cnn,
        "trained on other pixels": model_folder(
            tmp_path / "big", version="big-v", ingest_settings=IngestConfig(image_size=64)
        ),
        "tiles models decode each file": model_folder(tmp_path / "att", kind="tiles_attention", version="att-v"),
    }
    for message, shadow in refused.items():
        with pytest.raises(ConfigError, match=message):
            model.scorer(_cfg(root, champion, f"score.shadow={shadow}"))
    cascade = (champion, "score.cascade.enabled=true", f"score.cascade.light={light}", f"score.shadow={light}")
    with pytest.raises(ConfigError, match="a cascade already runs two models"):
        model.scorer(_cfg(root, *cascade))
