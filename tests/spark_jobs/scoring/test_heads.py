"""The prediction columns the heads make, on inline arrays."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from spark_jobs.scoring import heads


def test_class_columns_sort_and_cut_top_k() -> None:
    probabilities = np.array([[0.1, 0.6, 0.3], [0.4, 0.2, 0.4]], dtype=np.float32)
    label, probability, top, anomaly_score, is_anomaly, tile_count, top_tiles = heads.class_columns(
        probabilities, ["a", "b", "c"], 2
    )
    assert label.to_pylist() == ["b", "a"]  # a tie goes to the first class, as argmax does
    assert probability.to_pylist() == pytest.approx([0.6, 0.4])
    assert [[(t["label"], round(t["probability"], 3)) for t in row] for row in top.to_pylist()] == [
        [("b", 0.6), ("c", 0.3)],
        [("a", 0.4), ("c", 0.4)],
    ]
    assert anomaly_score.null_count == is_anomaly.null_count == tile_count.null_count == top_tiles.null_count == 2
    _, _, top, *_ = heads.class_columns(probabilities, ["a", "b", "c"], 5)
    assert [len(row) for row in top.to_pylist()] == [3, 3]


def test_anomaly_columns_flag_above_the_threshold() -> None:
    label, probability, top, score, flagged, tiles, _top_tiles = heads.anomaly_columns(np.array([0.1, 0.5, 0.9]), 0.5)
    assert label.to_pylist() == ["normal", "normal", "anomaly"]  # at the threshold is normal
    assert flagged.to_pylist() == [False, False, True]
    assert score.to_pylist() == [0.1, 0.5, 0.9]
    assert probability.null_count == top.null_count == tiles.null_count == 3


def test_top_k_batches_turn_mllib_probabilities_into_prediction_rows() -> None:
    keys = {
        f.name: pa.array(v, f.type)
        for f, v in zip(heads.KEY_FIELDS, (["i1"], ["u1"], [None], [None], [None]), strict=True)
    }
    batch = pa.RecordBatch.from_pydict({**keys, "probabilities": pa.array([[0.2, 0.7, 0.1]], pa.list_(pa.float64()))})
    (out,) = list(heads.top_k_batches(iter([batch, batch.slice(0, 0)]), ("a", "b", "c"), 2))
    assert out.schema == heads.PREDICTED_ROW
    row = out.to_pylist()[0]
    assert (row["image_id"], row["predicted_label"]) == ("i1", "b")
    assert [t["label"] for t in row["top_k"]] == ["b", "a"]


@pytest.mark.parametrize("task", ["classifier", "anomaly"])
def test_a_torch_head_gives_each_row_its_embedding_from_the_same_pass(tmp_path, task: str) -> None:
    import torch

    from spark_jobs.ml import inference, models
    from tests.spark_jobs.ml.test_inference import _model

    model = _model(tmp_path, task)
    predictor = inference.Predictor(model, batch_size=2, threads=1)
    plain = heads.TorchHead(predictor, ("0", "1", "2"), 2, threshold=0.1)
    embedding = heads.TorchHead(predictor, ("0", "1", "2"), 2, threshold=0.1, embeds=True)
    assert heads.EMBEDDING.name not in plain.outputs().names
    assert embedding.outputs().names == [*heads.PREDICTED_FIELDS.names, heads.EMBEDDING.name]
    pixels = np.random.default_rng(5).integers(0, 255, (5, 8, 8, 3), dtype=np.uint8)
    with_it, without = embedding(pixels), plain(pixels)
    for name in heads.PREDICTED_FIELDS.names:  # the predictions do not change
        assert with_it[name].equals(without[name]), name
    vectors = np.array(with_it[heads.EMBEDDING.name].to_pylist(), dtype=np.float32)
    with torch.inference_mode():
        expected = models.embedded(model.load(), model.architecture, models.to_tensor(pixels)).embedding.numpy()
    np.testing.assert_allclose(vectors, expected, rtol=1e-5, atol=1e-6)


def test_a_paired_head_runs_both_models_on_the_same_pixels_the_shadow_s_columns_prefixed() -> None:
    def first_values(pixels: np.ndarray) -> np.ndarray:
        return pixels.reshape(len(pixels), -1)[:, :4].astype(np.float32)

    def doubled(pixels: np.ndarray) -> np.ndarray:
        return first_values(pixels) * 2

    paired = heads.Paired(heads.Descriptors(first_values), heads.Descriptors(doubled))
    assert paired.outputs().names == ["raw", "shadow_raw"]
    pixels = np.random.default_rng(6).integers(0, 255, (3, 4, 4, 3), dtype=np.uint8)
    out = paired(pixels)
    assert out["raw"].to_pylist() == first_values(pixels).tolist()
    assert out["shadow_raw"].to_pylist() == doubled(pixels).tolist()
