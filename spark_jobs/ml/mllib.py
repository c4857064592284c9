"""Spark MLlib parts shared by features, train, evaluate and score: the scaler + PCA transform of
classical and SIFT descriptors, SIFT's visual-word codebook (KMeans), and the MLlib classifier
read from and applied to a features table."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from pydantic import Field

from spark_jobs.core.config import Section
from spark_jobs.core.store import spark_path
from spark_jobs.ml.cards import read_card

if TYPE_CHECKING:
    from pyspark.ml import PipelineModel
    from pyspark.sql import DataFrame

TRANSFORM = "transform"
CLASSIFIER = "classifier"


class MllibConfig(Section):
    """``train.mllib``: the classical model."""

    classifier: Literal["logistic_regression", "random_forest"] = "logistic_regression"
    max_iter: int = Field(200, ge=1)
    reg_param: float = Field(0.001, ge=0.0)
    elastic_net_param: float = Field(0.0, ge=0.0, le=1.0)
    num_trees: int = Field(100, ge=1)
    max_depth: int = Field(12, ge=1, le=30)


def fit_transform(raw: DataFrame, k: int) -> PipelineModel:
    """StandardScaler + PCA(k) on the ``raw`` vectors of the train split only."""
    from pyspark.ml import Pipeline
    from pyspark.ml.feature import PCA, StandardScaler
    from pyspark.ml.functions import array_to_vector
    from pyspark.sql import functions as F

    train = raw.where(F.col("split") == "train").select(array_to_vector("raw").alias("raw_vector"))
    pipeline = Pipeline(
        stages=[
            StandardScaler(inputCol="raw_vector", outputCol="scaled", withMean=True, withStd=True),
            PCA(k=k, inputCol="scaled", outputCol="pca"),
        ]
    )
    return pipeline.fit(train)


def fit_codebook(descriptors: DataFrame, words: int, iterations: int, seed: int) -> np.ndarray:
    """The ``words`` visual words of a bag-of-words model: MLlib KMeans' centres of the
    ``descriptor`` arrays (fewer when the descriptors hold fewer distinct points)."""
    from pyspark.ml.clustering import KMeans
    from pyspark.ml.functions import array_to_vector

    vectors = descriptors.select(array_to_vector("descriptor").alias("descriptor"))
    model = KMeans(k=words, maxIter=iterations, seed=seed, featuresCol="descriptor").fit(vectors)
    return np.array(model.clusterCenters(), dtype=np.float32)


def apply_transform(model: PipelineModel, raw: DataFrame) -> DataFrame:
    """``raw`` with its ``raw`` descriptors replaced by the fitted transform's output, as a float
    array in ``features``: the same call at features time and at scoring time."""
    from pyspark.ml.functions import array_to_vector, vector_to_array

    with_vector = raw.withColumn("raw_vector", array_to_vector("raw"))
    out = model.transform(with_vector).withColumn("features", vector_to_array("pca", "float32"))
    return out.drop("raw", "raw_vector", "scaled", "pca")


def mllib_input(table: DataFrame, classes: list[str], weights: list[float] | None = None) -> DataFrame:
    """``table`` plus what MLlib estimators read: ``features_vector`` (a Vector), ``label_index``
    (the label's position in ``classes`` as a double, null for an unknown label) and, with
    ``weights``, a per-row ``weight`` of its class."""
    from pyspark.ml.functions import array_to_vector
    from pyspark.sql import functions as F

    index = F.create_map(*[x for i, c in enumerate(classes) for x in (F.lit(c), F.lit(float(i)))])
    out = table.withColumn("features_vector", array_to_vector("features")).withColumn(
        "label_index", index[F.col("label")]
    )
    if weights is not None:
        by_class = F.create_map(*[x for c, w in zip(classes, weights, strict=True) for x in (F.lit(c), F.lit(w))])
        out = out.withColumn("weight", by_class[F.col("label")])
    return out


def mllib_classify(folder: Path, table: DataFrame, classes: list[str], keep: tuple[str, ...]) -> DataFrame:
    """The MLlib classifier of the model ``folder`` on a table with ``features``: its ``keep``
    columns, then ``prediction`` (class index), ``probability`` (of that class) and
    ``probabilities`` (of every class, float arrays)."""
    from pyspark.ml.functions import vector_to_array
    from pyspark.sql import functions as F

    scored = mllib_classifier(folder).transform(mllib_input(table, classes))
    probabilities = vector_to_array("probability", "float32")
    return scored.select(
        *keep,
        F.col("prediction").cast("int").alias("prediction"),
        F.array_max(probabilities).alias("probability"),
        probabilities.alias("probabilities"),
    )


def mllib_estimator(m: MllibConfig, seed: int, weighted: bool) -> Any:
    """The configured MLlib classifier, reading ``features_vector``/``label_index`` (and ``weight``)."""
    from pyspark.ml.classification import LogisticRegression, RandomForestClassifier

    common: dict[str, Any] = {"featuresCol": "features_vector", "labelCol": "label_index"}
    if weighted:
        common["weightCol"] = "weight"
    if m.classifier == "random_forest":
        return RandomForestClassifier(numTrees=m.num_trees, maxDepth=m.max_depth, seed=seed, **common)
    return LogisticRegression(
        maxIter=m.max_iter, regParam=m.reg_param, elasticNetParam=m.elastic_net_param, family="multinomial", **common
    )


def mllib_classifier(folder: Path) -> Any:
    """The MLlib classifier saved in a ``mllib`` model folder."""
    from pyspark.ml.classification import LogisticRegressionModel, RandomForestClassificationModel

    card = read_card(folder)
    loader = RandomForestClassificationModel if card.mllib_classifier == "random_forest" else LogisticRegressionModel
    return loader.load(spark_path(folder / CLASSIFIER))
