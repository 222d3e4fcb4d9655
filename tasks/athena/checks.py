"""Checks on a query's typed rows: row count, columns, expected rows, conditions on the first row.

:func:`evaluate_checks` runs an :class:`AthenaExpect` on a :class:`~tasks.athena.values.QueryResult` and
reports every check, passed or not. It needs nothing of the step but its ``expect``, so any SQL step kind
that produces a QueryResult can use it.
"""

from __future__ import annotations

import json
from collections import Counter
from decimal import Decimal
from typing import Annotated, Any, Callable, Literal

from pydantic import Field, model_validator

from tasks.athena.reconcile import Reconcile
from tasks.athena.values import CheckResult, Column, QueryResult, Shown, coerce_expected
from tasks.kit import baseline
from tasks.kit.baseline import History
from tasks.kit.step import Baseline, Severity, SpecModel, severity_field

__all__ = ["AthenaExpect", "CheckAccumulator", "CheckResult", "ColumnCondition", "Shown", "baseline_checks",
           "coerce_expected", "evaluate_checks"]


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
    severity: Severity | None = severity_field("one of these conditions", None)

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

    row_count: Annotated[int, Field(ge=0)] | Baseline | None = Field(
        None, description="The result has exactly this many rows; or, as a baseline "
        "(`{within_pct_of_baseline: 20, runs: 7}`), about as many as in the case's last passing runs.")
    column_sums: dict[str, Baseline] = Field(
        default_factory=dict, description="Column -> baseline: the sum of the column's values (numbers; NULLs "
        "left out) is within a percentage of its sum in the case's last passing runs.")
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
    severity: Severity = severity_field("a check of this `expect` (a `first_row` column or a baseline may say its "
                                        "own)")

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
        return (self.row_count is None and not self.column_sums and self.min_rows is None and self.max_rows is None
                and self.columns is None and self.rows is None and not self.first_row and self.reconcile is None)


def _count_checks(expect: AthenaExpect, count: int) -> list[CheckResult]:
    checks = []
    if isinstance(expect.row_count, int):
        checks.append(CheckResult("row_count", count == expect.row_count, expect.row_count, count))
    if expect.min_rows is not None:
        checks.append(CheckResult("min_rows", count >= expect.min_rows, expect.min_rows, count, relation=">="))
    if expect.max_rows is not None:
        checks.append(CheckResult("max_rows", count <= expect.max_rows, expect.max_rows, count, relation="<="))
    return checks


_SHOWN_FOUND = 20
_SHOWN_DIFF = 10


def _hashable(value: Any) -> Any:
    """An expected value that cannot be a row's (a list or mapping under a scalar column) as its JSON text."""
    return json.dumps(value, sort_keys=True, default=str) if isinstance(value, (list, dict)) else value


class _RowsCheck:
    """``expect.rows`` fed row by row: holds the expected rows, counters and the first rows of each kind."""

    def __init__(self, expect: AthenaExpect, columns: list[Column]) -> None:
        assert expect.rows is not None
        self.expect = expect
        self.label = f"rows ({expect.rows_match}, {'in order' if expect.ordered else 'any order'})"
        self.names = list(expect.rows[0]) if expect.rows else []
        types = {c.name: c.type for c in columns}
        self.unknown = [n for n in self.names if n not in types]
        self.column_names = [c.name for c in columns]
        self.wanted = [] if self.unknown else [tuple(_hashable(coerce_expected(row[n], types[n])) for n in self.names)
                                               for row in expect.rows]
        self.found = 0
        self.shown: list[tuple[Any, ...]] = []  # the first rows found (ordered)
        self.same = True  # ordered exact: every row so far equals the expected one at its place
        self.next_wanted = 0  # ordered contains: how many expected rows were seen in order
        self.left = Counter(self.wanted)  # any order: expected rows not found yet
        self.unexpected: list[tuple[Any, ...]] = []
        self.unexpected_count = 0

    def feed(self, row: dict[str, Any]) -> None:
        if self.unknown:
            return
        item = tuple(row[n] for n in self.names)
        position = self.found
        self.found += 1
        if self.expect.ordered:
            if len(self.shown) < _SHOWN_FOUND:
                self.shown.append(item)
            if self.expect.rows_match == "exact":
                self.same = self.same and position < len(self.wanted) and self.wanted[position] == item
            elif self.next_wanted < len(self.wanted) and self.wanted[self.next_wanted] == item:
                self.next_wanted += 1
            return
        if self.left[item] > 0:
            self.left[item] -= 1
        elif self.expect.rows_match == "exact":
            self.unexpected_count += 1
            if len(self.unexpected) < _SHOWN_DIFF:
                self.unexpected.append(item)

    def result(self) -> CheckResult:
        expect = self.expect
        if self.unknown:
            return CheckResult(self.label, False, expect.rows, f"no column(s) {self.unknown} in the result "
                                                               f"(columns: {self.column_names})")
        as_dict = lambda values: dict(zip(self.names, values))  # noqa: E731
        if expect.ordered:
            if expect.rows_match == "exact":
                passed = self.same and self.found == len(self.wanted)
            else:
                passed = self.next_wanted == len(self.wanted)
            shown = f", first {_SHOWN_FOUND} shown" if self.found > _SHOWN_FOUND else ""
            note = "" if passed else f"{self.found} rows found{shown}"
            return CheckResult(self.label, passed, expect.rows, [as_dict(v) for v in self.shown], note)
        left = Counter(self.left)
        missing = []
        for item in self.wanted:  # in the expected rows' order
            if left[item] > 0:
                left[item] -= 1
                missing.append(item)
        passed = not missing and not self.unexpected_count
        actual: Any = {"missing": [as_dict(v) for v in missing[:_SHOWN_DIFF]],
                       "unexpected": [as_dict(v) for v in self.unexpected]}
        note = "" if passed else f"{len(missing)} expected row(s) missing, {self.unexpected_count} unexpected row(s)"
        if passed:
            actual = (f"all {len(self.wanted)} expected row(s) found"
                      + (" and no others" if expect.rows_match == "exact" else ""))
        return CheckResult(self.label, passed, expect.rows, actual, note)


class CheckAccumulator:
    """The checks of an :class:`AthenaExpect` fed the result row by row, so no check needs all the rows.

    Held in memory: the row count, the first row (first_row conditions), the first ``preview_rows`` rows (the
    evidence), and for ``rows`` the expected rows with counters and the first few rows found or unexpected.
    """

    def __init__(self, expect: AthenaExpect, columns: list[Column], preview_rows: int = 0) -> None:
        self.expect = expect
        self.columns = columns
        self.preview_rows = preview_rows
        self.count = 0
        self.first: dict[str, Any] | None = None
        self.preview: list[dict[str, Any]] = []
        self.rows = _RowsCheck(expect, columns) if expect.rows is not None else None
        #: column -> the sum of its numbers so far (``column_sums``), and the columns with a value not a number
        self.sums: dict[str, Decimal] = {name: Decimal(0) for name in expect.column_sums}
        self.not_numbers: set[str] = set()

    @property
    def needs_every_row(self) -> bool:
        """Whether a check needs every row's values (``rows``); otherwise only the first ``preview_rows`` (at
        least one) are needed and the others may only be counted (``count += 1``)."""
        return self.rows is not None or bool(self.sums)

    def feed(self, row: dict[str, Any]) -> None:
        if self.count == 0:
            self.first = row
        self.count += 1
        if len(self.preview) < self.preview_rows:
            self.preview.append(row)
        if self.rows is not None:
            self.rows.feed(row)
        for name in self.sums:
            value = row.get(name)
            if isinstance(value, bool) or value is None:
                continue
            if isinstance(value, (int, Decimal)):
                self.sums[name] += value
            elif isinstance(value, float) and value == value and abs(value) != float("inf"):
                self.sums[name] += Decimal(str(value))
            else:
                self.not_numbers.add(name)

    def close(self) -> None:
        """Nothing to release."""

    def results(self) -> list[CheckResult]:
        """Every check of ``expect``, passed or failed."""
        expect = self.expect
        checks = _count_checks(expect, self.count)
        names = [c.name for c in self.columns]
        if expect.columns is not None:
            checks.append(CheckResult("columns", names == expect.columns, expect.columns, names))
        if self.rows is not None:
            checks.append(self.rows.result())
        for check in checks:
            check.severity = expect.severity
        for name, condition in expect.first_row.items():
            for check in _column_checks(name, condition, self.columns, self.first):
                check.severity = condition.severity or expect.severity
                checks.append(check)
        return checks


_COMPARISONS: dict[str, tuple[str, Callable[[Any, Any], bool]]] = {
    "equals": ("==", lambda a, b: a == b),
    "gt": (">", lambda a, b: a > b),
    "ge": (">=", lambda a, b: a >= b),
    "lt": ("<", lambda a, b: a < b),
    "le": ("<=", lambda a, b: a <= b),
}


def _column_checks(name: str, condition: ColumnCondition, columns: list[Column],
                   first: dict[str, Any] | None) -> list[CheckResult]:
    """The conditions on one column of the first row (None: the result has no rows)."""
    prefix = f"first_row.{name}"
    asked = [(op, getattr(condition, op)) for op in _COMPARISONS if getattr(condition, op) is not None]
    if condition.not_null:
        asked.append(("not_null", None))
    if condition.is_null:
        asked.append(("is_null", None))
    types = {c.name: c.type for c in columns}
    if first is None or name not in types:
        why = "no rows" if first is None else f"no column {name!r} (columns: {[c.name for c in columns]})"
        return [CheckResult(f"{prefix} {op}", False, wanted, why, relation=_COMPARISONS.get(op, (op,))[0])
                for op, wanted in asked]
    value = first[name]
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


def baseline_checks(expect: AthenaExpect, checks: CheckAccumulator, step: str,
                    history: History | None) -> tuple[list[CheckResult], dict[str, Any]]:
    """The checks of ``expect`` against the case's past runs (``row_count`` as a baseline, ``column_sums``), and
    what goes in the step's ``details.baselines`` (each value, its baseline and the runs it came from)."""
    measured = []
    out: list[CheckResult] = []
    if isinstance(expect.row_count, Baseline):
        measured.append(baseline.check(expect.row_count, step, "row_count", checks.count, history,
                                       expect.severity))
    names = [c.name for c in checks.columns]
    for name, spec in expect.column_sums.items():
        if name not in names or name in checks.not_numbers:
            why = f"no column {name!r}" if name not in names else "values that are not numbers"
            out.append(CheckResult(f"column_sums.{name}", False, Shown("a column of numbers"), Shown(why),
                                   severity=spec.severity or expect.severity))
            continue
        measured.append(baseline.check(spec, step, f"column_sums.{name}", float(checks.sums[name]), history,
                                       expect.severity))
    out += [CheckResult(f"{b.metric} (baseline)", b.passed, Shown(b.expected()), b.value, severity=b.severity)
            for b in measured]
    return out, {b.metric: b.record() for b in measured}


def evaluate_checks(expect: AthenaExpect, result: QueryResult) -> list[CheckResult]:
    """Run every check of ``expect`` on the result's rows (a :class:`CheckAccumulator` fed them all)."""
    checks = CheckAccumulator(expect, result.columns)
    for row in result.rows:
        checks.feed(row)
    return checks.results()


