"""Athena's values as Python: columns from the result metadata, texts typed by column type, JSON-safe values.

Athena returns every value as text; :data:`CONVERTERS` maps its types to Python (``decimal`` -> Decimal,
``date`` -> date, ...), any other type stays a string and SQL NULL is None. :class:`QueryResult` holds typed
rows, whatever read them (the check functions of :mod:`tasks.athena.checks` only need this).
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from dataclasses import dataclass
from datetime import date, datetime, timezone
from datetime import time as dtime
from decimal import Decimal, InvalidOperation
from typing import Any, Callable, Iterable, Mapping, Sequence
from zoneinfo import ZoneInfo

from tasks.kit.checks import CheckRecord
from tasks.kit.errors import StepError
from tasks.kit.markdown import shorten
from tasks.kit.status import check_verdict

__all__ = [
    "CONVERTERS",
    "Column",
    "QueryResult",
    "ResultDigest",
    "RowTyper",
    "columns_from_metadata",
    "convert_value",
    "json_safe",
    "normalise_type",
    "result_digest",
]


@dataclass(frozen=True)
class Column:
    """A result column: its (unique) name in the rows, Athena's type, and the name Athena gave it."""

    name: str
    type: str
    #: Athena's Name and Label (the header row of a result repeats the labels)
    source_name: str = ""
    label: str = ""

    def header_names(self) -> set[str]:
        """The texts a header row may hold for this column."""
        return {n for n in (self.source_name, self.label, self.name) if n}


def normalise_type(athena_type: str) -> str:
    """``decimal(10,2)`` -> ``decimal``, ``timestamp(3) with time zone`` -> ``timestamp with time zone``."""
    return " ".join(re.sub(r"\(.*?\)", " ", athena_type.lower()).split())


def _to_bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    raise ValueError(f"not a boolean: {text!r}")


def _to_timestamp_tz(text: str) -> datetime | str:
    """``2024-01-02 03:04:05.123 UTC`` or ``... Europe/Paris`` or ``... +01:00``; left as text if unknown."""
    stamp, _, zone = text.strip().rpartition(" ")
    try:
        if zone.upper() in ("UTC", "Z"):
            return datetime.fromisoformat(stamp).replace(tzinfo=timezone.utc)
        if zone[:1] in "+-":
            return datetime.fromisoformat(stamp + zone)
        return datetime.fromisoformat(stamp).replace(tzinfo=ZoneInfo(zone))
    except (ValueError, KeyError):
        return text


CONVERTERS: dict[str, Callable[[str], Any]] = {
    "tinyint": int, "smallint": int, "integer": int, "int": int, "bigint": int,
    "decimal": Decimal,
    "double": float, "float": float, "real": float,
    "boolean": _to_bool,
    "date": date.fromisoformat,
    "timestamp": datetime.fromisoformat,
    "timestamp with time zone": _to_timestamp_tz,
    "time": dtime.fromisoformat,
}
"""Athena type -> function from Athena's text to a Python value; any other type (varchar, char, json, array,
map, row, varbinary, ...) stays a string."""


def convert_value(text: str | None, athena_type: str) -> Any:
    """Athena's text for one value -> a Python value of its column's type (None for SQL NULL)."""
    if text is None:
        return None
    converter = CONVERTERS.get(normalise_type(athena_type))
    if converter is None:
        return text
    try:
        return converter(text)
    except (ValueError, InvalidOperation):
        raise StepError(f"Athena returned {text!r} for a {athena_type} value, which cannot be read as one") from None


def _unique_names(names: list[str]) -> list[str]:
    """Column names as row keys: a repeated name gets ``_2``, ``_3`` so no value is lost."""
    seen: dict[str, int] = {}
    unique: list[str] = []
    for name in names:
        count = seen.get(name, 0) + 1
        seen[name] = count
        unique.append(name if count == 1 else f"{name}_{count}")
    return unique


def columns_from_metadata(column_info: Sequence[Mapping[str, Any]]) -> list[Column]:
    """``ResultSetMetadata.ColumnInfo`` -> columns (name, type)."""
    names = [str(info.get("Name") or info.get("Label") or f"_col{i}") for i, info in enumerate(column_info)]
    return [
        Column(name=unique, type=str(info.get("Type") or "varchar"), source_name=name,
               label=str(info.get("Label") or name))
        for unique, name, info in zip(_unique_names(names), names, column_info)
    ]


class RowTyper:
    """Turns lists of Athena texts into dicts of typed values, with the converters looked up once per column."""

    def __init__(self, columns: list[Column]) -> None:
        self.columns = columns
        self.names = [c.name for c in columns]
        self.converters = [CONVERTERS.get(normalise_type(c.type)) for c in columns]

    def __call__(self, values: Sequence[str | None]) -> dict[str, Any]:
        if len(values) != len(self.columns):
            raise StepError(
                f"A result row has {len(values)} values but the result has {len(self.columns)} columns "
                f"({', '.join(self.names)})"
            )
        try:
            return {
                name: value if value is None or convert is None else convert(value)
                for name, convert, value in zip(self.names, self.converters, values)
            }
        except (ValueError, InvalidOperation):
            # find the culprit for a clear message
            for column, value in zip(self.columns, values):
                convert_value(value, column.type)
            raise  # pragma: no cover


@dataclass
class QueryResult:
    """Typed rows and where they came from (``GetQueryResults`` or the result file's S3 URI)."""

    columns: list[Column]
    rows: list[dict[str, Any]]
    source: str
    pages: int = 0
    #: how many rows there were when they were streamed into checks rather than kept (then ``rows`` is empty)
    count: int | None = None
    #: the result's SHA-256 (:class:`ResultDigest`), when it was read
    sha256: str | None = None

    @property
    def row_count(self) -> int:
        return len(self.rows) if self.count is None else self.count

    @property
    def column_names(self) -> list[str]:
        return [c.name for c in self.columns]


def json_safe(value: Any) -> Any:
    """Decimals, dates, times and odd floats as strings, recursively, so the value is JSON."""
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, (datetime, date, dtime)):
        return value.isoformat()
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, bytes):
        return value.hex()
    return value


class ResultDigest:
    """SHA-256 of a whole result as Athena returned it, fed row by row: the canonical JSON (compact, UTF-8)
    ``{"columns":[{"name":..,"type":..},..],"rows":[[text or null,..],..]}`` of the columns and every row's texts
    (None for NULL), the same whether the rows were paged or read from the result file; fed a batch of rows at
    a time (one ``json.dumps`` per batch), so nothing holds the rows."""

    def __init__(self, columns: list[Column]) -> None:
        self._hash = hashlib.sha256()
        head = [{"name": c.name, "type": c.type} for c in columns]
        self._hash.update(('{"columns":' + _canonical(head) + ',"rows":[').encode("utf-8"))
        self._any = False

    def feed(self, rows: Sequence[Sequence[str | None]]) -> None:
        """A batch of rows' texts, in order (one ``json.dumps`` for the batch)."""
        if not rows:
            return
        text = _canonical(rows if isinstance(rows, list) else list(rows))[1:-1]
        self._hash.update(((',' if self._any else '') + text).encode("utf-8"))
        self._any = True

    def close(self) -> None:
        """Nothing to release."""

    def hexdigest(self) -> str:
        final = self._hash.copy()
        final.update(b"]}")
        return final.hexdigest()


def _canonical(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def result_digest(columns: list[Column], rows: Iterable[Sequence[str | None]]) -> str:
    """:class:`ResultDigest` of the given rows' texts."""
    digest = ResultDigest(columns)
    batch: list[Sequence[str | None]] = []
    for values in rows:
        batch.append(values)
        if len(batch) >= 1000:
            digest.feed(batch)
            batch = []
    digest.feed(batch)
    return digest.hexdigest()


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
    #: ``warn``: when it does not hold, it is a warning (the step is warned), not a failure
    severity: str = "error"

    @property
    def mark(self) -> str:
        """``✅ PASS``, ``❌ FAIL``, or ``⚠️ WARN`` for a warning check that did not hold."""
        return check_verdict(self.passed, warn=self.severity == "warn")

    @property
    def name(self) -> str:
        """The check's label without its relation (``first_row.total``, not ``first_row.total >``)."""
        suffix = f" {self.relation}"
        return self.check[: -len(suffix)] if self.relation and self.check.endswith(suffix) else self.check

    def text(self) -> str:
        """``row_count: expected 3, got 2``; ``first_row.total: expected > 0, got 12``."""
        relation = f"{self.relation} " if self.relation else ""
        text = f"{self.name}: expected {relation}{show_value(self.expected)}, got {show_value(self.actual)}"
        return text + (f" ({self.note})" if self.note else "")

    def line(self) -> str:
        """``❌ FAIL row_count: expected 3, got 2``; ``✅ PASS first_row.total: expected > 0, got 12``."""
        return f"{self.mark} {self.text()}"

    def row(self, width: int = 300) -> list[str]:
        """verdict, check, expected, actual: short cells for a table that fits the UI (the pack has them whole)."""
        relation = f"{self.relation} " if self.relation else ""
        actual = show_value(self.actual) + (f" ({self.note})" if self.note else "")
        return [self.mark, shorten(self.name, width),
                shorten(relation + show_value(self.expected), width), shorten(actual, width)]

    def record(self) -> CheckRecord:
        """The typed record of this check (expected with its relation, actual with its note), as the pack shows it."""
        relation = f"{self.relation} " if self.relation else ""
        actual = show_value(self.actual) + (f" ({self.note})" if self.note else "")
        return CheckRecord.of(self.name, self.passed, relation + show_value(self.expected), actual,
                              severity=self.severity)

    def to_dict(self) -> dict[str, Any]:
        return json_safe({"check": self.check, "passed": self.passed, "relation": self.relation,
                          "expected": self.expected, "actual": self.actual, "note": self.note,
                          **({"severity": "warn"} if self.severity == "warn" else {})})


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


class Shown(str):
    """A text a check shows as it is (not quoted as a string value is): e.g. a baseline's range."""


def show_value(value: Any) -> str:
    """A value for a message, short: strings quoted (so '' differs from NULL), numbers and dates bare."""
    if isinstance(value, Shown):
        text = str(value)
    elif value is None:
        text = "NULL"
    elif isinstance(value, (Decimal, date, dtime)):
        text = str(json_safe(value))
    elif isinstance(value, str):
        text = repr(value)
    else:
        text = str(json_safe(value))
    return text if len(text) <= 300 else text[:297] + "..."
