"""Champions: the challenger of each task, the gate's table, and what a verdict promotes or keeps
aside, without changing the results it is given."""

from __future__ import annotations

import copy
import json
from pathlib import Path

from spark_jobs.core.verdict import GateResult
from spark_jobs.ml import cards, promotion
from tests.factories import model_card, model_folder


def _results() -> dict[str, dict]:
    return {
        "mllib": {"version": "mllib-v", "task": "classifier", "accuracy": 0.95, "macro_f1": 0.94},
        "cnn": {"version": "cnn-v", "task": "classifier", "accuracy": 0.99, "macro_f1": 0.99, "per_class": {}},
        "autoencoder": {"version": "ae-v", "task": "anomaly", "auroc": 0.9, "threshold": 0.3, "holdout_classes": ["9"]},
    }


def test_the_challenger_is_the_best_of_its_task() -> None:
    results = _results()
    assert promotion.challengers(results) == {"anomaly": "autoencoder", "classifier": "cnn"}
    assert promotion.headline("anomaly", results["autoencoder"]) == 0.9
    tie = results | {"mllib": results["mllib"] | {"accuracy": 0.99, "macro_f1": 0.995}}
    assert promotion.challenger(tie, "classifier") == "mllib"  # macro-F1 breaks the tie
    assert promotion.challenger(results, "nothing") is None


def test_standing_and_the_gate_table_do_not_touch_the_results() -> None:
    results = _results()
    before = copy.deepcopy(results)
    champion = cards.Promotion(
        task="classifier",
        kind="cnn",
        version="old",
        metrics={"accuracy": 0.995},
        promoted_at="t",
        job_version=model_card().job_version,
    )
    standings = promotion.standing(results, {"classifier": champion, "anomaly": None}, promotion.challengers(results))
    assert results == before
    assert standings["cnn"]["vs_champion"] == {"version": "old", "gap": 0.005}
    assert (standings["cnn"]["challenger"], standings["mllib"]["challenger"]) == (True, False)
    assert standings["autoencoder"]["vs_champion"] is None
    table = promotion.gate_table(standings).set_index("model")
    assert table.loc["cnn", "regression"] == 0.005  # the challenger is judged against the champion
    assert table.loc["mllib"].isna()["regression"]  # the others on the absolute thresholds alone
    assert table.loc["autoencoder", "auroc"] == 0.9


def test_settle_promotes_the_passing_challenger_and_keeps_the_failed_aside(tmp_path: Path) -> None:
    places = promotion.Places(tmp_path / "models", tmp_path / "models" / "champion", tmp_path / "models" / "rejected")
    cards_ = {
        "cnn": model_card(version="cnn-v"),
        "mllib": model_card(kind="mllib", version="mllib-v"),
        "autoencoder": model_card(kind="autoencoder", task="anomaly", version="ae-v"),
    }
    for kind, card in cards_.items():
        model_folder(places.models / kind, kind=card.kind, task=card.task, version=card.version)
    results = _results()
    chosen = promotion.challengers(results)
    standings = promotion.standing(results, {"classifier": None, "anomaly": None}, chosen)
    failed = {
        "batch": "autoencoder",
        "expectation": "expect_column_values_to_be_between",
        "kwargs": {},
        "success": False,
        "observed": {},
    }
    verdict = GateResult("evaluate", False, [failed])
    settled, rejected = promotion.settle(places, cards_, standings, chosen, verdict)
    assert {k: (r["gate"], r["promoted"]) for k, r in settled.items()} == {
        "mllib": ("passed", False),
        "cnn": ("passed", True),
        "autoencoder": ("failed", False),
    }
    assert "gate" not in standings["cnn"]  # the input is left as it was
    assert cards.read_promotion(places.champions / "classifier").version == "cnn-v"
    assert not (places.champions / "anomaly").exists()
    assert rejected == {"autoencoder": places.rejected / "ae-v"}
    assert json.loads((rejected["autoencoder"] / "metrics.json").read_text())["gate"] == "failed"
    assert "autoencoder" in (rejected["autoencoder"] / "gate_summary.txt").read_text()
    document = promotion.metrics_document(places.champions, settled, {}, None, verdict)
    assert (document["accuracy"], document["champion"]) == (0.99, {"kind": "cnn", "version": "cnn-v"})
    assert document["anomaly_champion"] is None
    (places.champions / "classifier" / "untouched").write_text("a copy would replace the folder")
    promotion.settle(places, cards_, standings, chosen, verdict)  # the same champion again: left as it is
    assert (places.champions / "classifier" / "untouched").exists()
    # the model that passed and was not promoted is the task's candidate (score.shadow: candidate)
    assert cards.read_card(cards.candidate_folder(places.champions, "classifier")).version == "mllib-v"
    assert not cards.candidate_folder(places.champions, "anomaly").exists()

    # a challenger held back (its shadow runs have not agreed yet) stays out; it is now the candidate
    held, _ = promotion.settle(places, cards_, standings, chosen, verdict, {"classifier": "too few shadow runs"})
    assert (held["cnn"]["promoted"], held["cnn"]["held"], held["mllib"]["held"]) == (False, "too few shadow runs", None)
    assert cards.read_card(cards.candidate_folder(places.champions, "classifier")).version == "cnn-v"


def test_a_challenger_waits_for_enough_shadow_runs_that_agree_pooled() -> None:
    need = promotion.PromotionConfig(min_shadow_agreement=0.9, shadow_runs=3)
    assert promotion.shadow_hold([], promotion.PromotionConfig()) is None  # no requirement: never held
    assert "2 shadow run(s) of it" in promotion.shadow_hold([(1.0, 10), (1.0, 10)], need)
    # pooled over the last three (newest first): (0.95 * 100 + 0.5 * 10 + 1.0 * 10) / 120 = 0.917
    assert promotion.shadow_hold([(0.95, 100), (0.5, 10), (1.0, 10), (0.0, 1000)], need) is None
    assert promotion.shadow_hold([(0.8, 100), (0.95, 100), (0.95, 100)], need) is None  # 0.9 exactly
    held = promotion.shadow_hold([(0.8, 100), (0.9, 100), (0.9, 100)], need)
    assert "agreed with the champion on 0.867 of 300 images in its last 3 shadow runs" in held
    assert held.endswith("below evaluate.promotion.min_shadow_agreement (0.9)")


def test_metrics_json_keeps_pointing_beside_accuracy_and_n_a_for_a_model_without_attention() -> None:
    document = {
        "accuracy": 0.99,
        "macro_f1": 0.98,
        "anomaly_champion": None,
        "models": {
            "tiles_attention": {
                "task": "classifier",
                "accuracy": 0.99,
                "macro_f1": 0.98,
                "pointing_accuracy": 0.97,
                "pointing_images": 181,
                "gate": "passed",
                "test_rows": 264,
            }
        },
        "baselines": {
            "tiles_gru": {"task": "classifier", "accuracy": 0.97, "macro_f1": 0.96, "pointing_accuracy": "n/a"}
        },
    }
    out = promotion.headline_metrics(document)
    assert out["tiles_attention"] == {"accuracy": 0.99, "macro_f1": 0.98, "pointing_accuracy": 0.97, "passed": True}
    assert out["tiles_gru"]["pointing_accuracy"] == "n/a"
