"""Rules written once: the same expression evaluated by pyarrow and by Spark, with SQL's nulls."""

from __future__ import annotations

import pyarrow as pa
import pytest

from spark_jobs.quality import rules
from spark_jobs.quality.rules import col

TOP = pa.list_(pa.struct([("label", pa.string()), ("probability", pa.float32())]))
TABLE = pa.table(
    {
        "label": pa.array(["a", "b", None, "z"]),
        "p": pa.array([0.2, 1.5, None, -0.1], pa.float64()),
        "top": pa.array(
            [
                [{"label": "a", "probability": 0.5}, {"label": "b", "probability": 0.3}],
                [],
                None,
                [{"label": "z", "probability": None}],
            ],
            TOP,
        ),
    }
)
EXPRESSIONS = {
    "in_set": col("label").isin(["a", "b"]),
    "not_in_set": ~col("label").isin(["a", "b"]),
    "out_of_range": (col("p") < 0.0) | (col("p") > 1.0),
    "null_and": col("label").is_null() & (col("p") > 0.0),
    "null_or": (col("p") > 1.0) | col("label").is_not_null(),
    "size": col("top").list_size(),
    "sum": col("top").list_sum("probability"),
    "empty": col("top").list_size() < 1,
}
EXPECTED = {
    "in_set": [True, True, None, False],  # null IN (...) is null
    "not_in_set": [False, False, None, True],  # and so is its negation: a null rule catches nulls
    "out_of_range": [False, True, None, True],
    "null_and": [False, False, None, False],  # false & null is false
    "null_or": [True, True, None, True],  # true | null is true
    "size": [2, 0, None, 1],
    "sum": [pytest.approx(0.8), 0.0, None, None],  # an empty list sums to 0, a null element makes null
    "empty": [False, True, None, False],
}


@pytest.mark.parametrize("name", EXPRESSIONS)
def test_pyarrow_evaluates_with_sql_nulls(name: str) -> None:
    assert rules.to_arrow(EXPRESSIONS[name], TABLE).to_pylist() == EXPECTED[name]


def test_a_rule_breaks_only_where_it_is_true() -> None:
    assert rules.broken_count(rules.to_arrow(EXPRESSIONS["not_in_set"], TABLE)) == 1
    assert rules.broken_count(rules.to_arrow(col("label").is_null(), TABLE)) == 1
    assert rules.nulls(["a", "b"]) == {"null_a": col("a").is_null(), "null_b": col("b").is_null()}


def test_an_unknown_operator_is_an_error() -> None:
    with pytest.raises(ValueError, match="unknown rule operator 'xor'"):
        rules.to_arrow(rules.Expr("xor", ()), TABLE)


@pytest.mark.spark
def test_spark_evaluates_the_same_expressions(spark) -> None:
    from pyspark.sql.pandas.types import from_arrow_schema

    frame = spark.createDataFrame(TABLE.to_pylist(), from_arrow_schema(TABLE.schema))
    columns = [rules.to_spark(e).alias(n) for n, e in EXPRESSIONS.items()]
    got = [row.asDict() for row in frame.select(*columns).collect()]
    for name, expected in EXPECTED.items():
        assert [r[name] for r in got] == expected, name
