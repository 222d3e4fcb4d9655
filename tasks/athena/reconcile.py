"""Reconciliation: a query's result against an expected dataset (a local CSV or JSONL file, or inline rows).

:class:`Reconcile` is the spec (``expect.reconcile`` of ``athena_query``). :class:`Reconciler` keys the
expected rows in memory (key columns -> the compared values, typed as the result's Athena types), then is fed
the actual rows one by one (:meth:`Reconciler.feed`), so the result itself is never held: what stays in
memory is the expected set, the counters, the first ``show`` differences of each kind, and nothing else. Every
difference goes to a CSV file per kind (``missing.csv``, ``unexpected.csv``, ``differences.csv``) when a folder
is given, for the evidence pack.

Values are compared as the result column's Athena type: decimals exactly, dates, timestamps (with zones: the
same instant), booleans; NULL equals only NULL (an empty CSV field is NULL); floats (``double``, ``real``,
``float``) within ``float_tolerance``.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import IO, Any, Iterator, Literal

from pydantic import Field, model_validator

from tasks.athena.values import CheckResult, Column, coerce_expected, json_safe, normalise_type
from tasks.kit import nesting
from tasks.kit.errors import StepError
from tasks.kit.step import SpecModel

__all__ = ["DIFF_FILES", "Reconcile", "ReconcileReport", "Reconciler", "expected_rows"]

#: the CSV file of each kind of difference
DIFF_FILES = {"missing": "missing.csv", "unexpected": "unexpected.csv", "differences": "differences.csv"}
_FLOAT_TYPES = frozenset({"double", "float", "real"})


class Reconcile(SpecModel):
    """Compare the whole result with an expected dataset, row by row on key columns."""

    file: str | None = Field(
        None, description="A local CSV (with a header row) or JSONL file of the expected rows, relative to the "
                          "spec (e.g. the very file uploaded). Give file or rows.")
    rows: list[dict[str, Any]] | None = Field(None, description="The expected rows inline, as column -> value. "
                                                                "Give file or rows.")
    format: Literal["csv", "jsonl"] | None = Field(
        None, description="The file's format; by default from its extension (.csv, .jsonl or .ndjson).")
    key: list[str] = Field(..., min_length=1, description="The result columns that identify a row (unique in the "
                                                         "expected data).")
    columns: dict[str, str] = Field(
        default_factory=dict,
        description="Result column -> the expected data's column, where the names differ. Every result column "
                    "found in the expected data (after this mapping) is compared.")
    float_tolerance: float = Field(0.0, ge=0, description="Floats (double, real) equal when they differ by at most "
                                                          "this much; decimals are always compared exactly.")
    show: int = Field(20, ge=0, le=1000, description="How many differences of each kind the evidence shows; all "
                                                     "of them are in the evidence pack's CSV files.")

    @model_validator(mode="after")
    def _one_source(self) -> "Reconcile":
        if (self.file is None) == (self.rows is None):
            raise ValueError("give exactly one of file and rows")
        if self.file is not None and self.format is None and not self.file.lower().endswith(
                (".csv", ".jsonl", ".ndjson")) and "{{" not in self.file:
            raise ValueError("give format (csv or jsonl): the file's extension does not say")
        if len(set(self.key)) != len(self.key):
            raise ValueError("key names a column twice")
        return self

    def file_format(self) -> str:
        assert self.file is not None
        return self.format or ("csv" if self.file.lower().endswith(".csv") else "jsonl")


def expected_rows(spec: Reconcile, spec_dir: Path) -> tuple[list[str], Iterator[dict[str, Any]]]:
    """The expected data's column names and its rows, streamed from the file (or the inline rows)."""
    if spec.rows is not None:
        names = list(dict.fromkeys(name for row in spec.rows for name in row))
        return names, iter(spec.rows)
    assert spec.file is not None
    path = Path(spec_dir) / spec.file
    try:
        handle = open(path, encoding="utf-8-sig", newline="")
    except OSError as exc:
        raise StepError(f"Cannot read expect.reconcile.file {spec.file} ({path}): {exc.strerror or exc}") from None
    if spec.file_format() == "csv":
        reader = csv.reader(handle)
        header = next(reader, None)
        if not header:
            handle.close()
            raise StepError(f"expect.reconcile.file {spec.file} is empty: a CSV file needs a header row")
        return header, _csv_rows(handle, reader, header, spec.file)
    first = _peek_jsonl(handle, spec.file)
    return (list(first[0]) if first else []), _jsonl_rows(handle, first, spec.file)


def _csv_rows(handle: IO[str], reader: Any, header: list[str], name: str) -> Iterator[dict[str, Any]]:
    with handle:
        for record in reader:
            if not record:
                continue
            if len(record) != len(header):
                raise StepError(f"expect.reconcile.file {name} line {reader.line_num}: {len(record)} values, "
                                f"but the header names {len(header)} columns")
            yield {k: (v if v != "" else None) for k, v in zip(header, record)}


def _peek_jsonl(handle: IO[str], name: str) -> list[dict[str, Any]]:
    for number, line in enumerate(handle, 1):
        if line.strip():
            return [_json_line(line, number, name)]
    return []


def _json_line(line: str, number: int, name: str) -> dict[str, Any]:
    try:
        value = nesting.loads(line, f"expect.reconcile.file {name} line {number}", parse_float=str)
    except nesting.NestingError as exc:
        raise StepError(str(exc)) from None
    except ValueError as exc:
        raise StepError(f"expect.reconcile.file {name} line {number} is not JSON: {exc}") from None
    if not isinstance(value, dict):
        raise StepError(f"expect.reconcile.file {name} line {number} is not a JSON object")
    return value


def _jsonl_rows(handle: IO[str], first: list[dict[str, Any]], name: str) -> Iterator[dict[str, Any]]:
    with handle:
        yield from first
        for number, line in enumerate(handle, 2):
            if line.strip():
                yield _json_line(line, number, name)


def _typed(value: Any, athena_type: str) -> Any:
    """An expected value as the column's Python value (see :func:`coerce_expected`); ISO timestamps with zones too."""
    if isinstance(value, str) and normalise_type(athena_type) == "timestamp with time zone":
        try:
            stamp = datetime.fromisoformat(value)
            if stamp.tzinfo is not None:
                return stamp
        except ValueError:
            pass
    return coerce_expected(value, athena_type)


@dataclass
class ReconcileReport:
    """Counts of each kind of difference and the first ``show`` of each (rows as column -> JSON-safe value)."""

    expected: int = 0
    actual: int = 0
    matched: int = 0
    compared: list[str] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=lambda: {k: 0 for k in DIFF_FILES})
    first: dict[str, list[dict[str, Any]]] = field(default_factory=lambda: {k: [] for k in DIFF_FILES})
    files: dict[str, Path] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return not any(self.counts.values())

    def check(self) -> CheckResult:
        """``reconcile differences: expected 0, got 3 (1 missing, 1 unexpected, 1 differing value(s); ...)``."""
        counts = self.counts
        note = (f"{counts['missing']} missing, {counts['unexpected']} unexpected, {counts['differences']} "
                f"differing value(s); {self.expected} expected rows, {self.actual} result rows, compared on "
                f"{', '.join(self.compared)}")
        return CheckResult("reconcile differences", self.passed, 0, sum(counts.values()), note)

    def to_dict(self) -> dict[str, Any]:
        return {"expected_rows": self.expected, "actual_rows": self.actual, "matched_rows": self.matched,
                "compared_columns": self.compared, "counts": dict(self.counts), "first": self.first,
                "files": {k: p.name for k, p in self.files.items()}}


class Reconciler:
    """Keys the expected rows, then is fed the result's typed rows; :meth:`finish` reports the differences."""

    def __init__(self, spec: Reconcile, columns: list[Column], spec_dir: Path, out_dir: Path | None = None) -> None:
        self.spec = spec
        names, rows = expected_rows(spec, spec_dir)
        types = {c.name: c.type for c in columns}
        source = {c.name: spec.columns.get(c.name, c.name) for c in columns}
        problems = [f"key column {k!r} is not a result column" for k in spec.key if k not in types]
        problems += [f"columns names {k!r}, not a result column" for k in spec.columns if k not in types]
        problems += [f"the expected data has no column {source[c]!r} (for result column {c!r})"
                     for c in [*spec.key, *spec.columns] if c in source and source[c] not in names]
        if problems:
            raise StepError("expect.reconcile: " + "; ".join(dict.fromkeys(problems))
                            + f" (result columns: {list(types)}; expected data's columns: {names})")
        self.key = list(spec.key)
        self.values = [c.name for c in columns if c.name not in self.key and source[c.name] in names]
        self.types = types
        self.report = ReconcileReport(compared=[*self.key, *self.values])
        self.float_columns = {c for c in self.values if normalise_type(types[c]) in _FLOAT_TYPES}
        self.expected: dict[tuple[Any, ...], tuple[Any, ...]] = {}
        for number, row in enumerate(rows, 1):
            key = tuple(_typed(row.get(source[k]), types[k]) for k in self.key)
            if key in self.expected:
                raise StepError(f"expect.reconcile: expected row {number} repeats the key "
                                f"{dict(zip(self.key, json_safe(list(key))))}; the key columns must be unique")
            self.expected[key] = tuple(_typed(row.get(source[c]), types[c]) for c in self.values)
        self.report.expected = len(self.expected)
        self._handles: dict[str, IO[str]] = {}
        self._writers: dict[str, Any] = {}
        if out_dir is not None:
            out_dir.mkdir(parents=True, exist_ok=True)
            headers = {"missing": [*self.key, *self.values], "unexpected": [*self.key, *self.values],
                       "differences": [*self.key, "column", "expected", "actual"]}
            for kind, name in DIFF_FILES.items():
                path = out_dir / name
                handle = open(path, "w", encoding="utf-8", newline="")
                self._handles[kind] = handle
                self._writers[kind] = csv.writer(handle, lineterminator="\n")
                self._writers[kind].writerow(headers[kind])
                self.report.files[kind] = path

    def _equal(self, column: str, expected: Any, actual: Any) -> bool:
        if expected == actual:
            return True
        if column in self.float_columns and isinstance(actual, float) and expected is not None:
            try:
                wanted = float(expected)
            except (TypeError, ValueError):
                return False
            if math.isnan(wanted) and math.isnan(actual):
                return True
            return abs(wanted - actual) <= self.spec.float_tolerance
        return False

    def _record(self, kind: str, row: dict[str, Any], csv_values: list[Any]) -> None:
        self.report.counts[kind] += 1
        if len(self.report.first[kind]) < self.spec.show:
            self.report.first[kind].append(json_safe(row))
        if kind in self._writers:
            self._writers[kind].writerow(["" if v is None else json_safe(v) for v in csv_values])

    def feed(self, row: dict[str, Any]) -> None:
        """One actual (typed) row."""
        self.report.actual += 1
        key = tuple(row[k] for k in self.key)
        wanted = self.expected.pop(key, None)
        actual = tuple(row[c] for c in self.values)
        if wanted is None:
            self._record("unexpected", dict(zip(self.report.compared, key + actual)), [*key, *actual])
            return
        same = True
        for column, exp, act in zip(self.values, wanted, actual):
            if not self._equal(column, exp, act):
                same = False
                keyed = dict(zip(self.key, key))
                self._record("differences", {**keyed, "column": column, "expected": exp, "actual": act},
                             [*key, column, "NULL" if exp is None else json_safe(exp),
                              "NULL" if act is None else json_safe(act)])
        self.report.matched += same

    def finish(self) -> ReconcileReport:
        """Every expected row not seen is missing; the diff files are closed."""
        try:
            for key, values in self.expected.items():
                self._record("missing", dict(zip(self.report.compared, key + values)), [*key, *values])
            self.expected.clear()
        finally:
            self.close()
        return self.report

    def close(self) -> None:
        for handle in self._handles.values():
            handle.close()
        self._handles.clear()
