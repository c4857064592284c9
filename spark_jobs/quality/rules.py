"""Row rules written once and evaluated by two engines: a Spark column (a gate's one aggregation
job over a table) or a pyarrow mask (a few rows on the driver: a stream's micro-batch).

A rule is an :class:`Expr` built from :func:`col` and :func:`lit` with comparisons, ``&``,
``|``, ``~``, :meth:`Expr.is_null`, :meth:`Expr.isin`, :meth:`Expr.list_size` and
:meth:`Expr.list_sum`; :func:`to_spark` and :func:`to_arrow` compile it. Both follow SQL's
three-valued logic: a comparison with null is null, ``null & false`` is false, ``null | true`` is
true, ``~null`` is null; and a gate counts a row as breaking a rule only where the rule is true
(:func:`broken_count`), so a null is caught by a null rule, not twice.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa

if TYPE_CHECKING:
    from pyspark.sql import Column


@dataclass(frozen=True)
class Expr:
    """One node of a rule: an operator and its arguments (expressions or plain values)."""

    op: str
    args: tuple[Any, ...]

    def __and__(self, other: Expr) -> Expr:
        return Expr("and", (self, other))

    def __or__(self, other: Expr) -> Expr:
        return Expr("or", (self, other))

    def __invert__(self) -> Expr:
        return Expr("not", (self,))

    def __lt__(self, other: Any) -> Expr:
        return Expr("lt", (self, _expr(other)))

    def __gt__(self, other: Any) -> Expr:
        return Expr("gt", (self, _expr(other)))

    def is_null(self) -> Expr:
        return Expr("is_null", (self,))

    def is_not_null(self) -> Expr:
        return ~Expr("is_null", (self,))

    def isin(self, values: list[Any]) -> Expr:
        return Expr("isin", (self, tuple(values)))

    def list_size(self) -> Expr:
        """Elements of a list column (null for a null list)."""
        return Expr("list_size", (self,))

    def list_sum(self, field: str) -> Expr:
        """The sum of one numeric field of a list of structs (0.0 for an empty list, null for a
        null list or when an element's field is null)."""
        return Expr("list_sum", (self, field))


def col(name: str) -> Expr:
    return Expr("col", (name,))


def lit(value: Any) -> Expr:
    return Expr("lit", (value,))


def _expr(value: Any) -> Expr:
    return value if isinstance(value, Expr) else lit(value)


def nulls(columns: list[str] | tuple[str, ...]) -> dict[str, Expr]:
    """``null_<column>`` rules: the column is null."""
    return {f"null_{c}": col(c).is_null() for c in columns}


# ---- Spark ----------------------------------------------------------------------------------


def to_spark(expr: Expr) -> Column:
    """``expr`` as a Spark column."""
    from pyspark.sql import functions as F

    op, args = expr.op, expr.args
    if op == "col":
        return F.col(args[0])
    if op == "lit":
        return F.lit(args[0])
    if op == "and":
        return to_spark(args[0]) & to_spark(args[1])
    if op == "or":
        return to_spark(args[0]) | to_spark(args[1])
    if op == "not":
        return ~to_spark(args[0])
    if op == "lt":
        return to_spark(args[0]) < to_spark(args[1])
    if op == "gt":
        return to_spark(args[0]) > to_spark(args[1])
    if op == "is_null":
        return to_spark(args[0]).isNull()
    if op == "isin":
        return to_spark(args[0]).isin(list(args[1]))
    if op == "list_size":
        values = to_spark(args[0])
        return F.when(values.isNotNull(), F.size(values))
    if op == "list_sum":
        values, field = to_spark(args[0]), args[1]
        return F.aggregate(values, F.lit(0.0).cast("double"), lambda acc, x: acc + x[field])
    raise ValueError(f"unknown rule operator {op!r}")


# ---- pyarrow --------------------------------------------------------------------------------


def to_arrow(expr: Expr, table: pa.Table) -> pa.Array:
    """``expr`` evaluated over ``table`` with pyarrow (one value per row)."""
    import pyarrow.compute as pc

    op, args = expr.op, expr.args
    if op == "col":
        return table[args[0]].combine_chunks()
    if op == "lit":
        return pa.scalar(args[0])
    if op == "and":
        return pc.and_kleene(to_arrow(args[0], table), to_arrow(args[1], table))
    if op == "or":
        return pc.or_kleene(to_arrow(args[0], table), to_arrow(args[1], table))
    if op == "not":
        return pc.invert(to_arrow(args[0], table))
    if op == "lt":
        return pc.less(to_arrow(args[0], table), to_arrow(args[1], table))
    if op == "gt":
        return pc.greater(to_arrow(args[0], table), to_arrow(args[1], table))
    if op == "is_null":
        return pc.is_null(to_arrow(args[0], table))
    if op == "isin":
        values = to_arrow(args[0], table)
        found = pc.is_in(values, value_set=pa.array(list(args[1]), values.type))
        return pc.if_else(pc.is_null(values), pa.scalar(None, pa.bool_()), found)  # SQL: null IN (...) is null
    if op == "list_size":
        return pc.list_value_length(to_arrow(args[0], table))
    if op == "list_sum":
        return _list_sum(to_arrow(args[0], table), args[1])
    raise ValueError(f"unknown rule operator {op!r}")


def _list_sum(lists: pa.Array, field: str) -> pa.Array:
    import pyarrow.compute as pc

    flat = pc.struct_field(pc.list_flatten(lists), field).cast(pa.float64())
    parents = pc.list_parent_indices(lists).to_numpy()
    sums = np.bincount(parents, weights=flat.to_numpy(zero_copy_only=False), minlength=len(lists))
    # a null element makes its list's sum NaN here: null, as in Spark
    return pa.array(sums, mask=(pc.is_null(lists).to_numpy(zero_copy_only=False) | np.isnan(sums)))


def broken_count(mask: pa.Array) -> int:
    """Rows a rule holds for (null counts as not broken), as a gate counts them."""
    import pyarrow.compute as pc

    return int(pc.sum(pc.fill_null(mask, False).cast(pa.int64())).as_py() or 0)
