"""Checks on a query's typed rows: row count, columns, expected rows, conditions on the first row.

:func:`evaluate_checks` runs an :class:`AthenaExpect` on a :class:`~tasks.athena.values.QueryResult` and
reports every check, passed or not. It needs nothing of the step but its ``expect``, so any SQL step kind
that produces a QueryResult can use it.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime
from datetime import time as dtime
from decimal import Decimal, InvalidOperation
from typing import Any, Callable, Literal

from pydantic import Field, model_validator

from tasks.athena.reconcile import Reconcile
from tasks.athena.values import CONVERTERS, QueryResult, json_safe, normalise_type
from tasks.base import SpecModel

__all__ = ["AthenaExpect", "CheckResult", "ColumnCondition", "coerce_expected", "evaluate_checks"]


class ColumnCondition(SpecModel):
    """Conditions on one column of the first result row; all given ones must hold."""

    equals: Any = Field(None, description="The value must equal this (compared as the column's type). "
                                          "`null` here means no check; use `is_null` to expect a NULL.")
    gt: Any = Field(None, description="The value must be greater than this.")
    ge: Any = Field(None, description="The value must be greater than or equal to this.")
    lt: Any = Field(None, description="The value must be less than this.")
    le: Any = Field(None, description="The value must be less than or equal to this.")
    not_null: bool = Field(False, description="When true, the value must not be NULL.")
    is_null: bool = Field(False, description="When true, the value must be NULL.")

    @model_validator(mode="after")
    def _something_to_check(self) -> "ColumnCondition":
        if self.not_null and self.is_null:
            raise ValueError("not_null and is_null cannot both be true")
        if not self.not_null and not self.is_null and all(
            getattr(self, op) is None for op in ("equals", "gt", "ge", "lt", "le")
        ):
            raise ValueError("give at least one of equals, gt, ge, lt, le, not_null, is_null")
        return self


class AthenaExpect(SpecModel):
    """What the query's result must show. Every check is run and reported; the step fails if any fails."""

    row_count: int | None = Field(None, ge=0, description="The result has exactly this many rows.")
    min_rows: int | None = Field(None, ge=0, description="The result has at least this many rows.")
    max_rows: int | None = Field(None, ge=0, description="The result has at most this many rows.")
    columns: list[str] | None = Field(None, description="The result's column names, exactly and in this order.")
    rows: list[dict[str, Any]] | None = Field(
        None,
        description="Expected rows, as column -> value (values compared as the column's type, e.g. '2024-01-31' "
                    "for a date). Only the columns named here are compared; every row must name the same columns.",
    )
    rows_match: Literal["exact", "contains"] = Field(
        "exact",
        description="`exact`: the result is exactly these rows; `contains`: the result has at least these rows.",
    )
    ordered: bool = Field(
        False, description="Compare `rows` in order (the query should have an ORDER BY); by default order is ignored."
    )
    first_row: dict[str, ColumnCondition] = Field(
        default_factory=dict, description="Conditions on the first row's columns: column -> conditions."
    )
    reconcile: Reconcile | None = Field(
        None, description="Compare the whole result with an expected dataset (a local CSV or JSONL file, or inline "
                          "rows) on key columns: rows missing, rows unexpected, values that differ.")

    @model_validator(mode="after")
    def _consistent(self) -> "AthenaExpect":
        if self.min_rows is not None and self.max_rows is not None and self.min_rows > self.max_rows:
            raise ValueError(f"min_rows ({self.min_rows}) is greater than max_rows ({self.max_rows})")
        if self.rows:
            keys = [sorted(row) for row in self.rows]
            if not keys[0]:
                raise ValueError("expected rows must name at least one column")
            if any(k != keys[0] for k in keys):
                raise ValueError("every expected row must name the same columns")
        return self

    def is_empty(self) -> bool:
        """True when nothing is to be checked."""
        return (self.row_count is None and self.min_rows is None and self.max_rows is None
                and self.columns is None and self.rows is None and not self.first_row and self.reconcile is None)


@dataclass
class CheckResult:
    """One check: which, whether it passed, what was expected and what was found."""

    check: str
    passed: bool
    expected: Any
    actual: Any
    note: str = ""
    #: how actual must relate to expected when not by equality: ">=", "<", "is not", ...
    relation: str = ""

    def line(self) -> str:
        """``❌ row_count: expected 3, got 2``; ``✅ first_row.total >: expected > 0, got 12``."""
        mark = "✅" if self.passed else "❌"
        relation = f"{self.relation} " if self.relation else ""
        text = f"{mark} {self.check}: expected {relation}{_show(self.expected)}, got {_show(self.actual)}"
        return text + (f" ({self.note})" if self.note else "")

    def to_dict(self) -> dict[str, Any]:
        return json_safe({"check": self.check, "passed": self.passed, "relation": self.relation,
                          "expected": self.expected, "actual": self.actual, "note": self.note})


_INT_TYPES = frozenset({"tinyint", "smallint", "integer", "int", "bigint"})


def coerce_expected(value: Any, athena_type: str) -> Any:
    """A value from the spec as the column's Python type, so ``'2024-01-31'`` equals a date and ``1.5`` a
    Decimal; left as is when it cannot be converted (then it simply does not match)."""
    if value is None:
        return None
    base = normalise_type(athena_type)
    converter = CONVERTERS.get(base)
    try:
        if converter is None:
            if isinstance(value, bool):
                return "true" if value else "false"
            return value if isinstance(value, str) else str(value)
        if isinstance(value, str):
            return converter(value)
        if base == "decimal" and isinstance(value, (int, float)) and not isinstance(value, bool):
            return Decimal(str(value))
        if base in _INT_TYPES and isinstance(value, float) and value.is_integer():
            return int(value)
        if base == "timestamp" and isinstance(value, date) and not isinstance(value, datetime):
            return datetime(value.year, value.month, value.day)
    except (ValueError, InvalidOperation):
        return value
    return value


def _count_checks(expect: AthenaExpect, count: int) -> list[CheckResult]:
    checks = []
    if expect.row_count is not None:
        checks.append(CheckResult("row_count", count == expect.row_count, expect.row_count, count))
    if expect.min_rows is not None:
        checks.append(CheckResult("min_rows", count >= expect.min_rows, expect.min_rows, count, relation=">="))
    if expect.max_rows is not None:
        checks.append(CheckResult("max_rows", count <= expect.max_rows, expect.max_rows, count, relation="<="))
    return checks


def _is_subsequence(wanted: list[tuple[Any, ...]], found: list[tuple[Any, ...]]) -> bool:
    rest = iter(found)
    return all(any(item == candidate for candidate in rest) for item in wanted)


def _rows_check(expect: AthenaExpect, result: QueryResult) -> CheckResult:
    """Expected rows against the result, projected on the columns the expected rows name."""
    assert expect.rows is not None
    label = f"rows ({expect.rows_match}, {'in order' if expect.ordered else 'any order'})"
    names = list(expect.rows[0]) if expect.rows else []
    types = {c.name: c.type for c in result.columns}
    unknown = [n for n in names if n not in types]
    if unknown:
        return CheckResult(label, False, expect.rows, f"no column(s) {unknown} in the result "
                                                      f"(columns: {result.column_names})")
    wanted = [tuple(coerce_expected(row[n], types[n]) for n in names) for row in expect.rows]
    found = [tuple(row[n] for n in names) for row in result.rows]
    as_dict = lambda values: dict(zip(names, values))  # noqa: E731
    if expect.ordered:
        passed = found == wanted if expect.rows_match == "exact" else _is_subsequence(wanted, found)
        shown = ", first 20 shown" if len(found) > 20 else ""
        note = "" if passed else f"{len(found)} rows found{shown}"
        return CheckResult(label, passed, expect.rows, [as_dict(v) for v in found[:20]], note)
    remaining = list(found)
    missing = []
    for item in wanted:
        if item in remaining:
            remaining.remove(item)
        else:
            missing.append(item)
    unexpected = remaining if expect.rows_match == "exact" else []
    passed = not missing and not unexpected
    actual: Any = {"missing": [as_dict(v) for v in missing[:10]], "unexpected": [as_dict(v) for v in unexpected[:10]]}
    note = "" if passed else f"{len(missing)} expected row(s) missing, {len(unexpected)} unexpected row(s)"
    if passed:
        actual = f"all {len(wanted)} expected row(s) found" + (" and no others" if expect.rows_match == "exact" else "")
    return CheckResult(label, passed, expect.rows, actual, note)


_COMPARISONS: dict[str, tuple[str, Callable[[Any, Any], bool]]] = {
    "equals": ("==", lambda a, b: a == b),
    "gt": (">", lambda a, b: a > b),
    "ge": (">=", lambda a, b: a >= b),
    "lt": ("<", lambda a, b: a < b),
    "le": ("<=", lambda a, b: a <= b),
}


def _column_checks(name: str, condition: ColumnCondition, result: QueryResult) -> list[CheckResult]:
    """The conditions on one column of the first row."""
    prefix = f"first_row.{name}"
    asked = [(op, getattr(condition, op)) for op in _COMPARISONS if getattr(condition, op) is not None]
    if condition.not_null:
        asked.append(("not_null", None))
    if condition.is_null:
        asked.append(("is_null", None))
    types = {c.name: c.type for c in result.columns}
    if not result.rows or name not in types:
        why = "no rows" if not result.rows else f"no column {name!r} (columns: {result.column_names})"
        return [CheckResult(f"{prefix} {op}", False, wanted, why, relation=_COMPARISONS.get(op, (op,))[0])
                for op, wanted in asked]
    value = result.rows[0][name]
    checks = []
    for op, wanted in asked:
        if op == "not_null":
            checks.append(CheckResult(f"{prefix} not_null", value is not None, None, value, relation="not"))
            continue
        if op == "is_null":
            checks.append(CheckResult(f"{prefix} is_null", value is None, None, value))
            continue
        symbol, compare = _COMPARISONS[op]
        target = coerce_expected(wanted, types[name])
        try:
            passed, note = bool(compare(value, target)), ""
        except TypeError:
            passed, note = False, f"cannot compare {type(value).__name__} with {type(target).__name__}"
        checks.append(CheckResult(f"{prefix} {symbol}", passed, target, value, note, relation=symbol))
    return checks


def evaluate_checks(expect: AthenaExpect, result: QueryResult) -> list[CheckResult]:
    """Run every check of ``expect`` on the result; all are returned, passed or failed."""
    checks = _count_checks(expect, len(result.rows))
    if expect.columns is not None:
        checks.append(CheckResult("columns", result.column_names == expect.columns, expect.columns,
                                  result.column_names))
    if expect.rows is not None:
        checks.append(_rows_check(expect, result))
    for name, condition in expect.first_row.items():
        checks.extend(_column_checks(name, condition, result))
    return checks


def _show(value: Any) -> str:
    """A value for a message, short: strings quoted (so '' differs from NULL), numbers and dates bare."""
    if value is None:
        text = "NULL"
    elif isinstance(value, (Decimal, date, dtime)):
        text = str(json_safe(value))
    elif isinstance(value, str):
        text = repr(value)
    else:
        text = str(json_safe(value))
    return text if len(text) <= 300 else text[:297] + "..."
