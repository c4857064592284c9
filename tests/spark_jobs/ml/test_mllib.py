"""The MLlib parts: the estimator the params configure, and the input rows it reads."""

from __future__ import annotations

import numpy as np
import pytest

from spark_jobs.ml.mllib import MllibConfig, fit_codebook, mllib_estimator, mllib_input

pytestmark = pytest.mark.spark  # MLlib's estimators are JVM objects


def test_the_estimator_follows_the_params(spark) -> None:
    forest = mllib_estimator(MllibConfig(classifier="random_forest", num_trees=7, max_depth=3), 42, weighted=True)
    assert (forest.getNumTrees(), forest.getMaxDepth(), forest.getSeed(), forest.getWeightCol()) == (7, 3, 42, "weight")
    logistic = mllib_estimator(MllibConfig(reg_param=0.5, max_iter=9), 0, weighted=False)
    assert (logistic.getRegParam(), logistic.getMaxIter(), logistic.getFamily()) == (0.5, 9, "multinomial")
    assert not logistic.isSet("weightCol")


def test_input_rows_index_the_label_and_weigh_its_class(spark) -> None:
    table = spark.createDataFrame(
        [("b", [1.0, 2.0]), ("a", [3.0, 4.0]), ("z", [0.0, 0.0])], "label string, features array<float>"
    )
    rows = {r["label"]: r for r in mllib_input(table, ["a", "b"], [0.5, 2.0]).collect()}
    assert (rows["a"]["label_index"], rows["b"]["label_index"], rows["z"]["label_index"]) == (0.0, 1.0, None)
    assert (rows["a"]["weight"], rows["b"]["weight"]) == (0.5, 2.0)
    assert list(rows["b"]["features_vector"]) == [1.0, 2.0]
    assert "weight" not in mllib_input(table, ["a", "b"]).columns


def test_the_codebook_is_kmeans_centres_of_the_descriptors(spark) -> None:
    rows = [([0.0, 0.0],), ([0.0, 2.0],), ([10.0, 10.0],), ([12.0, 10.0],), ([11.0, 13.0],)]
    descriptors = spark.createDataFrame(rows, "descriptor array<float>")
    centres = fit_codebook(descriptors, words=2, iterations=10, seed=0)
    assert centres.dtype == np.float32
    np.testing.assert_allclose(sorted(centres.tolist()), [[0.0, 1.0], [11.0, 11.0]], atol=1e-5)
