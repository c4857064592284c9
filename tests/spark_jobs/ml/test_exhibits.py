from __future__ import annotations

import csv

import numpy as np
import pandas as pd

from spark_jobs.ml import exhibits
from spark_jobs.quality.report import MAX_THUMBS


def _classifier_rows(n: int = 60) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, n)
    predicted = np.where(rng.random(n) < 0.8, labels, (labels + 1) % 3)
    frame = pd.DataFrame(
        {
            "image_id": [f"id{i:03d}" for i in range(n)],
            "label": [str(v) for v in labels],
            "prediction": predicted,
            "probability": rng.uniform(0.34, 1.0, n),
        }
    )
    return exhibits.labelled(frame, ["0", "1", "2"], "classifier", None)


def test_the_wrong_come_most_confident_first_and_the_unsure_right_least_confident_first() -> None:
    rows = _classifier_rows()
    wrong, unsure = exhibits.picks(rows)
    assert len(wrong) == int((rows["predicted"] != rows["label"]).sum()) > 0
    assert not wrong["correct"].any()
    assert unsure["correct"].all()
    assert list(wrong["probability"]) == sorted(wrong["probability"], reverse=True)
    assert list(unsure["probability"]) == sorted(unsure["probability"])
    assert len(unsure) == exhibits.LEAST_CONFIDENT
    right = rows[rows["correct"]]
    assert unsure["probability"].max() <= right["probability"].nsmallest(exhibits.LEAST_CONFIDENT + 1).max()


def test_a_prediction_outside_the_classes_is_wrong_not_a_crash() -> None:
    frame = pd.DataFrame({"image_id": ["a"], "label": ["0"], "prediction": [7], "probability": [0.9]})
    rows = exhibits.labelled(frame, ["0", "1"], "classifier", None)
    assert rows["predicted"].tolist() == [None]
    assert not rows["correct"].any()


def test_anomaly_errors_are_false_alarms_and_misses_farthest_from_the_threshold_first() -> None:
    frame = pd.DataFrame(
        {
            "image_id": list("abcdef"),
            "label": ["0", "0", "0", "9", "9", "9"],
            "score": [0.1, 0.9, 0.6, 0.05, 0.8, 0.2],
            "is_anomaly": [False, False, False, True, True, True],
        }
    )
    rows = exhibits.labelled(frame, ["0"], "anomaly", 0.5)
    wrong, second = exhibits.picks(rows)
    assert set(wrong["image_id"]) == {"b", "c", "d", "f"}  # two false alarms, two misses
    assert wrong["image_id"].tolist()[:2] == ["b", "c"]  # the highest false alarm first
    assert second.empty
    [gallery] = exhibits.galleries("autoencoder", rows, {}, {})
    assert gallery.total == 4
    assert "score" in gallery.thumbs[0].caption[-1]


def test_galleries_draw_the_pictures_they_have_and_count_all(tmp_path) -> None:
    rows = _classifier_rows(400)
    ids = exhibits.shown_ids(rows)
    pixels = {i: {"pixels": bytes([i.__hash__() % 256]) * 8 * 8 * 3, "height": 8, "width": 8} for i in ids[:5]}
    uris = {i: f"file:///data/{i}.png" for i in rows["image_id"]}
    wrong, unsure = exhibits.galleries("cnn", rows, pixels, uris)
    assert wrong.total == int((~rows["correct"]).sum()) > MAX_THUMBS
    assert len(wrong.thumbs) == MAX_THUMBS
    drawn = [t for t in (*wrong.thumbs, *unsure.thumbs) if t.png is not None]
    assert len(drawn) == 5
    assert all(t.png.startswith(b"\x89PNG") for t in drawn)
    first = wrong.thumbs[0].caption
    assert first[0].endswith(".png")
    assert "→ predicted" in first[1]
    assert first[2].startswith("probability")


def test_the_predictions_file_names_every_test_image_by_id_and_source(tmp_path) -> None:
    rows = _classifier_rows(30)
    uris = {i: f"s3://bucket/in/{i}.png" for i in rows["image_id"]}
    path = exhibits.write_predictions(tmp_path, "cnn", rows, uris)
    assert path == tmp_path / "plots" / "cnn" / exhibits.PREDICTIONS
    with path.open() as f:
        read = list(csv.DictReader(f))
    assert len(read) == 30
    assert set(read[0]) == {"image_id", "source_uri", "label", "predicted", "probability", "correct"}
    assert {r["source_uri"] for r in read} == set(uris.values())
    assert [r["source_uri"] for r in read] == sorted(r["source_uri"] for r in read)


def test_the_quarantine_gallery_draws_what_still_decodes_and_names_the_rest(tmp_path) -> None:
    from PIL import Image

    good = tmp_path / "cat" / "dup.png"
    good.parent.mkdir()
    Image.new("RGB", (20, 20), (0, 90, 200)).save(good)
    records = [
        {"source_uri": good.as_uri(), "reason": "duplicate", "detail": "same bytes as cat/a.png"},
        {"source_uri": (tmp_path / "gone.png").as_uri(), "reason": "truncated", "detail": None},
    ]
    gallery = exhibits.quarantine_gallery(records, total=5)
    assert gallery.total == 5
    assert [t.caption for t in gallery.thumbs] == [
        ("cat/dup.png", "duplicate", "same bytes as cat/a.png"),
        (f"{tmp_path.name}/gone.png", "truncated"),
    ]
    assert gallery.thumbs[0].png.startswith(b"\x89PNG")
    assert gallery.thumbs[1].png is None  # gone since: named, no picture


def test_quarantined_files_are_grouped_by_reason_the_commonest_first(tmp_path) -> None:
    records = [
        {"source_uri": (tmp_path / f"{reason}{i}.png").as_uri(), "reason": reason, "detail": ""}
        for reason, n in (("truncated", 1), ("empty", 2))
        for i in range(n)
    ]
    galleries = exhibits.quarantine_galleries(records, {"truncated": 1, "empty": 7})
    assert [(g.title, g.total, len(g.thumbs)) for g in galleries] == [
        ("Quarantined: empty", 7, 2),
        ("Quarantined: truncated", 1, 1),
    ]
    assert [g.title for g in exhibits.quarantine_galleries([], {})] == ["Quarantined files"]  # none: said so


def _pixels(value: int) -> dict:
    return {"pixels": bytes([value]) * 4 * 4 * 3, "height": 4, "width": 4}


def test_clusters_are_shown_the_largest_first_with_their_splits() -> None:
    members = [
        {"cluster_id": "b", "source_uri": "file:///x/c/1.png", "split": "train", "score": 1.0, **_pixels(10)},
        {"cluster_id": "a", "source_uri": "file:///x/c/2.png", "split": "test", "score": 0.97, **_pixels(20)},
        {"cluster_id": "b", "source_uri": "file:///x/c/3.png", "split": "train", "score": 0.99, **_pixels(30)},
        {"cluster_id": "b", "source_uri": "file:///x/c/4.png", "split": "train", "score": 0.99, **_pixels(40)},
        {"cluster_id": "a", "source_uri": "file:///x/c/5.png", "split": "test", "score": 1.0, **_pixels(50)},
    ]
    galleries = exhibits.cluster_galleries(members, clusters=9, images_in_clusters=30)
    assert [(g.title, g.total) for g in galleries] == [
        ("Near-duplicate cluster 1 of 9", 3),
        ("Near-duplicate cluster 2 of 9", 2),
    ]
    assert galleries[0].thumbs[1].caption == ("c/3.png", "split train", "match 0.990")
    assert "30 images" in galleries[0].note
    assert all(t.png.startswith(b"\x89PNG") for g in galleries for t in g.thumbs)


def test_each_flag_gets_its_gallery_with_the_figure_behind_it() -> None:
    flagged = [
        {"flag": "dark", "source_uri": "file:///x/a/1.png", "label": "a", "figure_name": "brightness", "figure": 0.04}
        | _pixels(5),
        {"flag": "blurry", "source_uri": "file:///x/a/2.png", "label": "a", "figure_name": "sharpness", "figure": 3.2}
        | _pixels(90),
    ]
    galleries = exhibits.flag_galleries(flagged, {"dark": 40, "blurry": 1})
    assert [(g.title, g.total) for g in galleries] == [("Flagged blurry", 1), ("Flagged dark", 40)]
    assert galleries[1].thumbs[0].caption == ("a/1.png", "a", "brightness 0.04")
