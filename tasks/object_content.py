"""What an S3 object holds: content checks for ``expect_objects``, read streamed in bounded memory.

:class:`ObjectContent` is what a spec asks (format, row count, columns, a pass-through copy of an uploaded file,
per-column conditions); :func:`check_object` reads one object and returns an :class:`ObjectReport` (every check,
passed or not, with what was read and what was held in memory); :func:`content_markdown` is its evidence.

How each format is read:

- ``csv``, ``jsonl``: one GET, streamed (``Body.read`` in 256 KiB chunks), gunzipped on the fly when the key ends
  in ``.gz`` or the object starts with gzip's magic bytes, decoded incrementally, one line / row at a time (a line
  longer than :data:`tasks.object_stream.MAX_LINE_CHARS` fails the check rather than growing memory);
- ``json``: the same stream; a top-level array is parsed one element at a time (an element may be up to
  :data:`tasks.object_stream.MAX_JSON_VALUE_CHARS`), a top-level object is one record (up to the same size);
- ``parquet``: random access through ranged GETs (:class:`tasks.object_stream.RangedObject`, no temporary
  file): the footer gives the row count, column names and types without reading any data; per-column conditions
  read only the columns they name, one record batch at a time.

The SHA-256 (``same_as_upload``) is of the bytes as stored, computed in the same pass (for parquet, one more
streamed pass); sizes are compared first, so a copy of the wrong size is not downloaded at all.
"""

from __future__ import annotations

import codecs
import csv
import fnmatch
import gzip
import hashlib
import io
import json
import re
import threading
import zlib
from dataclasses import dataclass, field
from datetime import date, datetime
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator, Literal, Union

from pydantic import Field, StrictBool, StrictFloat, StrictInt, field_validator, model_validator

from tasks import markdown, nesting
from tasks.base import SpecModel, format_bytes
from tasks.errors import AWS_ERRORS, OBJECT_TOO_LARGE, StepError, aws_error
from tasks.object_stream import CHUNK, RangedObject, ReadStats, Unreadable, json_values, lines, open_stream
from tasks.status import check_verdict

if TYPE_CHECKING:
    from types_boto3_s3 import S3Client

MIB = 1024 * 1024
#: content checks read at most this many objects per step
MAX_OBJECTS = 50
#: how many rows a parquet record batch holds while conditions are checked
PARQUET_BATCH_ROWS = 10_000
#: examples kept per failed condition
EXAMPLES = 3

Scalar = Union[StrictBool, StrictInt, StrictFloat, str]
Bound = Union[StrictInt, StrictFloat, str]


# ------------------------------------------------------------------------------------------------- the models
class ObjectCsvOptions(SpecModel):
    """How a CSV object is written (Python's csv module reads it)."""

    delimiter: str = Field(",", min_length=1, max_length=1, description="The field separator, one character "
                           "(`\\t` for tab-separated).")
    quote_char: str = Field('"', min_length=1, max_length=1, description="The quote character, one character.")
    header: bool = Field(True, description="The first row holds the column names.")
    names: list[str] | None = Field(None, min_length=1, description="Column names when `header: false`, for "
                                    "`conditions` (the header gives them otherwise).")
    encoding: str = Field("utf-8", description="Text encoding (a Python codec name: utf-8, utf-8-sig, latin-1, "
                          "cp1252, ...).")
    null_values: list[str] = Field([""], description="Cell texts that count as null (for `not_null`; other "
                                   "conditions skip nulls).")

    @field_validator("encoding")
    @classmethod
    def _known_encoding(cls, value: str) -> str:
        try:
            info = codecs.lookup(value)
        except LookupError:
            raise ValueError(f"unknown encoding {value!r} (use a Python codec name such as utf-8 or latin-1)") \
                from None
        if not getattr(info, "_is_text_encoding", True):
            raise ValueError(f"{value!r} is not a text encoding (it is a codec for bytes, such as zlib or base64); "
                             "use a text encoding such as utf-8 or latin-1")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> "ObjectCsvOptions":
        if self.delimiter == self.quote_char:
            raise ValueError("'delimiter' and 'quote_char' must differ")
        if self.delimiter in "\r\n" or self.quote_char in "\r\n":
            raise ValueError("'delimiter' and 'quote_char' cannot be a line break")
        if self.header and self.names is not None:
            raise ValueError("'names' goes with header: false (with a header, the header names the columns)")
        return self


class ObjectColumnRule(SpecModel):
    """Conditions on every value of one column; nulls are only checked by `not_null` (and ignored by `unique`)."""

    not_null: bool = Field(False, description="No value is null (CSV: a cell in `null_values`; JSON: null or a "
                           "missing key; parquet: null).")
    unique: bool = Field(False, description="No value occurs twice (a 64-bit hash per distinct value is kept).")
    one_of: list[Scalar] | None = Field(None, min_length=1, description="Every value is one of these (compared as "
                                        "text: `1` matches CSV's `1`, `true` JSON's true).")
    min: Bound | None = Field(None, description="Every value is at least this: a number compares numerically (a "
                              "value that is not a number fails), a text as text (ISO dates as dates on parquet).")
    max: Bound | None = Field(None, description="Every value is at most this (compared as for `min`).")
    regex: str | None = Field(None, max_length=1000, description="Every value (as text) matches this regular "
                              "expression in full (Python syntax).")

    @field_validator("regex")
    @classmethod
    def _compiles(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                re.compile(value)
            except re.error as exc:
                raise ValueError(f"not a valid regular expression: {exc}") from None
        return value

    @model_validator(mode="after")
    def _something(self) -> "ObjectColumnRule":
        if not (self.not_null or self.unique) and all(
                getattr(self, f) is None for f in ("one_of", "min", "max", "regex")):
            raise ValueError("give at least one of not_null, unique, one_of, min, max, regex")
        if self.min is not None and self.max is not None and _comparable_bounds(self.min, self.max) \
                and self.min > self.max:  # type: ignore[operator]
            raise ValueError(f"min ({self.min}) is greater than max ({self.max})")
        return self


def _comparable_bounds(a: Any, b: Any) -> bool:
    return isinstance(a, str) == isinstance(b, str)


class SameAsUpload(SpecModel):
    """The object is a byte-for-byte copy of a file an `upload` step of the case sent."""

    step: str = Field(..., description="The name of the `upload` step (in this case) that sent the file.")
    file: str = Field(..., description="The file, as that step's `files` names it (or a path one of its glob "
                      "patterns matches), relative to the spec; written without templates.")


class ObjectContent(SpecModel):
    """What every matching object must hold, read streamed in bounded memory (see docs/steps.md)."""

    format: Literal["csv", "jsonl", "json", "parquet"] | None = Field(
        None, description="How to read the object; needed by every check but `same_as_upload`. `json`: a "
        "top-level array of records, or one object.")
    compression: Literal["auto", "gzip", "none"] = Field(
        "auto", description="`auto`: gunzip when the key ends in `.gz` or the object starts with gzip's magic "
        "bytes. Parquet is never gzipped as a whole (its pages are compressed inside).")
    csv: ObjectCsvOptions | None = Field(None, description="CSV options (with format: csv).")
    row_count: int | None = Field(None, ge=0, description="Exactly this many rows (records; CSV: after the header).")
    min_rows: int | None = Field(None, ge=0, description="At least this many rows.")
    max_rows: int | None = Field(None, ge=0, description="At most this many rows.")
    columns: list[str] | None = Field(None, min_length=1, description="The column names (CSV: the header; JSON: "
                                      "every record's keys; parquet: the schema's).")
    columns_ordered: bool = Field(True, description="`columns` must be in this order; false: as a set.")
    column_types: dict[str, str] | None = Field(
        None, min_length=1, description="Parquet only: column -> type as pyarrow names it (`int64`, `string`, "
        "`double`, `decimal128(12, 2)`, `date32[day]`, `timestamp[us, tz=UTC]`).")
    conditions: dict[str, ObjectColumnRule] = Field(
        default_factory=dict, description="Column -> conditions every value must meet; checked on objects of up "
        "to `conditions_max_mb`.")
    conditions_max_mb: int = Field(64, ge=1, le=1024, description="`conditions` are checked on objects of up to "
                                   "this size (MiB, as stored); a larger one stops the step as not checkable.")
    same_as_upload: SameAsUpload | None = Field(None, description="The object's SHA-256 equals the uploaded file's "
                                                "(a pass-through copy); sizes are compared first.")

    @model_validator(mode="after")
    def _consistent(self) -> "ObjectContent":
        parsed = [name for name in ("row_count", "min_rows", "max_rows", "columns", "column_types")
                  if getattr(self, name) is not None] + (["conditions"] if self.conditions else [])
        if not parsed and self.same_as_upload is None:
            raise ValueError("give at least one check: row_count, min_rows, max_rows, columns, column_types, "
                             "conditions or same_as_upload")
        if parsed and self.format is None:
            raise ValueError(f"'format' is needed to check {', '.join(repr(p) for p in parsed)} (csv, jsonl, json or "
                             "parquet)")
        if self.csv is not None and self.format != "csv":
            raise ValueError("'csv' options go with format: csv")
        if self.column_types is not None and self.format != "parquet":
            raise ValueError("'column_types' goes with format: parquet (CSV and JSON carry no column types)")
        if self.format == "parquet" and self.compression == "gzip":
            raise ValueError("a parquet object is not gzipped as a whole (its pages are compressed inside): "
                             "leave 'compression' at auto")
        if self.min_rows is not None and self.max_rows is not None and self.min_rows > self.max_rows:
            raise ValueError(f"min_rows ({self.min_rows}) is greater than max_rows ({self.max_rows})")
        csv_opts = self.csv or ObjectCsvOptions.model_validate({})
        if self.format == "csv" and not csv_opts.header:
            if self.columns is not None:
                raise ValueError("'columns' needs csv.header: true (without a header the object names no columns)")
            unknown = sorted(set(self.conditions) - set(csv_opts.names or []))
            if unknown:
                raise ValueError(f"conditions on {', '.join(unknown)}: with csv.header: false, name the columns in "
                                 "csv.names")
        return self

    def upload_check(self, case: Any) -> list[str]:
        """``same_as_upload`` names an upload step of ``case`` and one of its files (see ``StepBase.case_checks``)."""
        ref = self.same_as_upload
        if ref is None:
            return []
        where = "field 'content.same_as_upload"
        if "{{" in ref.file or "{%" in ref.file:
            return [f"{where}.file': write the file without templates"]
        step = next((s for s in _case_steps(case) if getattr(s, "name", None) == ref.step), None)
        if step is None or getattr(step, "kind", None) != "upload":
            return [f"{where}.step': no upload step named {ref.step!r} in the case"]
        wanted = ref.file.replace("\\", "/")
        patterns = [f.replace("\\", "/") for f in step.files]
        # a file the upload names as it is, or one of its globs matches: relative, with no '..' (so it lies where
        # the upload's files lie, which validation confines)
        plain = not wanted.startswith("/") and ":" not in wanted and ".." not in wanted.split("/")
        if not any(wanted == p or (plain and any(c in p for c in "*?[") and fnmatch.fnmatchcase(wanted, p))
                   for p in patterns):
            return [f"{where}.file': {ref.file!r} is not one of the files of step {ref.step!r} "
                    f"({', '.join(step.files)})"]
        return []


def _case_steps(case: Any) -> Iterator[Any]:
    for item in getattr(case, "steps", []):
        if getattr(item, "kind", None) == "parallel":
            yield from item.steps
        else:
            yield item


# ---------------------------------------------------------------------------------------------- the results
@dataclass
class Check:
    """One check of an object: what, expected, actual (as text), and whether it held."""

    check: str
    expected: str
    actual: str
    passed: bool

    def line(self) -> str:
        return f"{check_verdict(self.passed)} {self.check}: expected {self.expected}, got {self.actual}"


@dataclass
class ObjectReport:
    """The content checks of one object."""

    key: str
    size: int
    format: str
    checks: list[Check] = field(default_factory=list)
    stats: ReadStats = field(default_factory=ReadStats)

    @property
    def passed(self) -> bool:
        return all(c.passed for c in self.checks)

    def to_dict(self) -> dict[str, Any]:
        return {"key": self.key, "size": self.size, "format": self.format, "passed": self.passed,
                "bytes_read": self.stats.bytes_read, "requests": self.stats.requests,
                "gunzipped": self.stats.gunzipped, "held_in_memory": self.stats.held,
                "checks": [c.__dict__ for c in self.checks]}


# ------------------------------------------------------------------------------------------------- the checks
def _text(value: Any) -> str:
    if type(value) is str:
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (dict, list)):
        return json.dumps(value, sort_keys=True)
    return str(value)


def _shown(value: Any, limit: int = 60) -> str:
    if value is None:
        return "null"
    text = repr(value) if isinstance(value, str) else _text(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


Comparator = Callable[[Any], Union[int, None]]


def comparator(bound: Any) -> Comparator:
    """A function giving -1, 0 or 1 as a value is below, at or above ``bound``, or None when they cannot be
    compared: a number bound compares numbers exactly (a text must read as a finite number), a text bound compares
    dates and timestamps as such (the bound in ISO form) and anything else as text."""
    if isinstance(bound, (int, float)):
        limit = Decimal(str(bound))

        def numeric(value: Any) -> int | None:
            if type(value) is not str and (isinstance(value, bool) or not isinstance(value, (int, float, Decimal))):
                return None
            try:
                number = Decimal(value if type(value) is str else str(value))
            except InvalidOperation:
                return None
            return (number > limit) - (number < limit) if number.is_finite() else None

        return numeric

    def other(value: Any) -> int | None:
        try:
            if isinstance(value, datetime):
                when = datetime.fromisoformat(bound)
                return (value > when) - (value < when)
            if isinstance(value, date):
                day = date.fromisoformat(bound)
                return (value > day) - (value < day)
        except (ValueError, TypeError):
            return None
        text = _text(value)
        return (text > bound) - (text < bound)

    return other


class _Column:
    """What the conditions on one column saw so far (counters, examples; for `unique`, a digest per value)."""

    def __init__(self, name: str, rule: ObjectColumnRule) -> None:
        self.name, self.rule = name, rule
        self.allowed = {_text(v) for v in rule.one_of} if rule.one_of is not None else None
        self.pattern = re.compile(rule.regex) if rule.regex is not None else None
        self.above_min = comparator(rule.min) if rule.min is not None else None
        self.below_max = comparator(rule.max) if rule.max is not None else None
        #: for unique: the 64-bit hash of each distinct value's text (Python's keyed SipHash: a collision, which
        #: would report a false duplicate, is about 1 in 10^7 at a million values)
        self.seen: set[int] | None = set() if rule.unique else None
        self.bad: dict[str, list[Any]] = {}  # condition -> [count, examples]
        self.missing = False

    def _fail(self, condition: str, row: int, value: Any) -> None:
        entry = self.bad.setdefault(condition, [0, []])
        entry[0] += 1
        if len(entry[1]) < EXAMPLES:
            entry[1].append(f"row {row}: {_shown(value)}")

    def add(self, value: Any, row: int, is_null: bool) -> None:
        rule = self.rule
        if is_null:
            if rule.not_null:
                self._fail("not_null", row, None)
            return
        if self.seen is not None:
            digest = hash(_text(value))
            if digest in self.seen:
                self._fail("unique", row, value)
            else:
                self.seen.add(digest)
        if self.allowed is not None and _text(value) not in self.allowed:
            self._fail("one_of", row, value)
        if self.above_min is not None and self.above_min(value) in (None, -1):
            self._fail("min", row, value)
        if self.below_max is not None and self.below_max(value) in (None, 1):
            self._fail("max", row, value)
        if self.pattern is not None and not self.pattern.fullmatch(_text(value)):
            self._fail("regex", row, value)

    def checks(self) -> list[Check]:
        rule = self.rule
        wanted = {"not_null": (rule.not_null, "no null"), "unique": (rule.unique, "no value twice"),
                  "one_of": (rule.one_of is not None, f"one of {', '.join(_shown(v) for v in rule.one_of or [])}"),
                  "min": (rule.min is not None, f"≥ {_shown(rule.min)}"),
                  "max": (rule.max is not None, f"≤ {_shown(rule.max)}"),
                  "regex": (rule.regex is not None, f"matches {rule.regex}")}
        out = []
        for condition, (asked, expected) in wanted.items():
            if not asked:
                continue
            label = f"{self.name}: {condition}"
            if self.missing:
                out.append(Check(label, expected, "no such column", False))
            elif condition in self.bad:
                count, examples = self.bad[condition]
                out.append(Check(label, expected, f"{count:,} value(s) broke it: {'; '.join(examples)}", False))
            else:
                out.append(Check(label, expected, "every value", True))
        return out


@dataclass
class _Tally:
    """What a pass over the records found: rows, columns, the conditions' state, and the first odd record."""

    content: ObjectContent
    rows: int = 0
    columns: list[str] | None = None
    #: (record number, what is odd about its columns): CSV rows with another field count, JSON records with other keys
    odd: tuple[int, str] | None = None
    odd_count: int = 0
    state: dict[str, _Column] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.state = {name: _Column(name, rule) for name, rule in self.content.conditions.items()}

    def note_odd(self, row: int, what: str) -> None:
        self.odd_count += 1
        if self.odd is None:
            self.odd = (row, what)


def _csv_pass(stream: io.BufferedIOBase, content: ObjectContent, tally: _Tally) -> None:
    opts = content.csv or ObjectCsvOptions.model_validate({})
    text = io.TextIOWrapper(stream, encoding=opts.encoding, newline="")  # type: ignore[type-var]
    reader = csv.reader(lines(text), delimiter=opts.delimiter, quotechar=opts.quote_char)
    names = opts.names
    if opts.header:
        names = next(reader, [])
        tally.columns = names
    index = {n: i for i, n in reversed(list(enumerate(names or [])))}
    for column in tally.state.values():
        column.missing = column.name not in index
    nulls = set(opts.null_values)
    checked = [(c.add, index[c.name]) for c in tally.state.values() if not c.missing]
    width, count = len(names) if names else None, 0
    for row in reader:
        if not row:
            continue  # a blank line is no row
        count += 1
        if width is not None and len(row) != width:
            tally.note_odd(count, f"{len(row)} field(s)")
        for add, i in checked:
            value = row[i] if i < len(row) else None
            add(value, count, value is None or value in nulls)
    tally.rows = count


def _record_pass(records: Iterable[Any], tally: _Tally) -> None:
    """JSON records: the first one's keys are the columns; a record with other keys (in another order too, unless
    columns_ordered is false) is noted."""
    same: Callable[[list[str], list[str]], bool] = (
        (lambda a, b: a == b) if tally.content.columns_ordered else (lambda a, b: set(a) == set(b)))
    for record in records:
        tally.rows += 1
        keys = list(record) if isinstance(record, dict) else []
        if tally.rows == 1:
            tally.columns = keys
        elif not same(keys, tally.columns or []):
            tally.note_odd(tally.rows, f"keys {', '.join(keys) or '(not an object)'}")
        for column in tally.state.values():
            value = record.get(column.name) if isinstance(record, dict) else None
            column.add(value, tally.rows, value is None)


def _jsonl_records(stream: io.BufferedIOBase) -> Iterator[Any]:
    text = io.TextIOWrapper(stream, encoding="utf-8-sig", newline="")  # type: ignore[type-var]
    for number, line in enumerate(lines(text), 1):
        if line.strip():
            try:
                yield nesting.loads(line, f"line {number}")
            except ValueError as exc:
                raise Unreadable(f"line {number}: not valid JSON: {exc}") from None


def _count_checks(content: ObjectContent, rows: int) -> list[Check]:
    out = []
    if content.row_count is not None:
        out.append(Check("row count", f"{content.row_count:,}", f"{rows:,}", rows == content.row_count))
    if content.min_rows is not None:
        out.append(Check("row count (min)", f"≥ {content.min_rows:,}", f"{rows:,}", rows >= content.min_rows))
    if content.max_rows is not None:
        out.append(Check("row count (max)", f"≤ {content.max_rows:,}", f"{rows:,}", rows <= content.max_rows))
    return out


def _columns_check(content: ObjectContent, found: list[str] | None, odd: str | None = None) -> list[Check]:
    if content.columns is None:
        return []
    found = found or []
    passed = found == content.columns if content.columns_ordered else set(found) == set(content.columns)
    how = "in this order" if content.columns_ordered else "in any order"
    actual = ", ".join(found) or "none"
    if passed and odd:
        passed, actual = False, f"{actual}; but {odd}"
    elif not passed and not content.columns_ordered:
        missing, extra = sorted(set(content.columns) - set(found)), sorted(set(found) - set(content.columns))
        actual += f" (missing: {', '.join(missing) or 'none'}; unexpected: {', '.join(extra) or 'none'})"
    return [Check("columns", f"{', '.join(content.columns)} ({how})", actual, passed)]


def _shape_checks(content: ObjectContent, tally: _Tally) -> list[Check]:
    odd = None
    if tally.odd is not None:
        row, what = tally.odd
        unit = "row" if content.format == "csv" else "record"
        odd = f"{tally.odd_count:,} {unit}(s) differ, first {unit} {row}: {what}"
    out = _count_checks(content, tally.rows) + _columns_check(content, tally.columns, odd)
    if content.format == "csv" and tally.columns is not None and content.columns is None:
        width = len(tally.columns)
        out.append(Check("fields per row", f"{width} (as the header)", odd or f"{width} in every row", odd is None))
    for column in tally.state.values():
        out += column.checks()
    return out


def _held(content: ObjectContent) -> str:
    what = {"csv": "one row at a time", "jsonl": "one line at a time", "json": "one array element at a time",
            "parquet": "the footer metadata"}.get(content.format or "", "one 256 KiB chunk at a time")
    if content.format == "parquet" and content.conditions:
        what += f", then one batch of {PARQUET_BATCH_ROWS:,} rows of the conditions' columns"
    if any(rule.unique for rule in content.conditions.values()):
        what += "; for unique, a 64-bit hash per distinct value"
    return what


def _streamed(client: S3Client, bucket: str, key: str, content: ObjectContent, stats: ReadStats,
              stop: threading.Event | None, parse: Callable[[io.BufferedIOBase], list[Check]] | None) -> tuple[
                  list[Check], str]:
    """One streamed GET of the object: the checks ``parse`` makes, and the SHA-256 of the bytes as stored."""
    uri = f"s3://{bucket}/{key}"
    try:
        body = client.get_object(Bucket=bucket, Key=key)["Body"]
    except AWS_ERRORS as exc:
        raise aws_error("S3 GetObject", uri, exc) from None
    stats.requests += 1
    try:
        stream, raw = open_stream(body, key, content.compression, stats, stop)
        try:
            checks = parse(stream) if parse is not None else []
        except Unreadable as exc:
            checks = [Check("readable as " + (content.format or "bytes"), "well-formed", str(exc), False)]
        except (UnicodeDecodeError, csv.Error, EOFError, OSError, zlib.error, RecursionError) as exc:
            checks = [Check("readable as " + (content.format or "bytes"), "well-formed", _reason(exc), False)]
        while raw.read(CHUNK):  # the rest, so the digest covers every byte stored
            pass
    except AWS_ERRORS as exc:
        raise aws_error("S3 GetObject (reading the body)", uri, exc) from None
    finally:
        body.close()
    return checks, raw.sha256.hexdigest()


def _reason(exc: Exception) -> str:
    if isinstance(exc, UnicodeDecodeError):
        return f"not valid {exc.encoding} text ({exc.reason}: {exc.object[exc.start:exc.end]!r})"
    if isinstance(exc, (EOFError, gzip.BadGzipFile, zlib.error)):
        return f"not a complete gzip stream ({exc})"
    if isinstance(exc, RecursionError):
        return "JSON nested too deeply to read"
    return f"{type(exc).__name__}: {exc}"


def _parquet_checks(client: S3Client, bucket: str, key: str, size: int, content: ObjectContent, stats: ReadStats,
                    stop: threading.Event | None) -> list[Check]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    source = RangedObject(client, bucket, key, size, stats, stop)
    try:
        head = source.read(2) if size >= 2 else b""
        if head == b"\x1f\x8b":
            raise Unreadable("the object is gzipped as a whole: a parquet file cannot be read that way")
        source.seek(0)
        parquet = pq.ParquetFile(source)
        schema = parquet.schema_arrow
        tally = _Tally(content, rows=parquet.metadata.num_rows, columns=list(schema.names))
        out = _count_checks(content, tally.rows) + _columns_check(content, tally.columns)
        for name, wanted in (content.column_types or {}).items():
            actual = str(schema.field(name).type) if name in schema.names else "no such column"
            out.append(Check(f"{name}: type", wanted, actual, actual == wanted))
        present = [c for c in tally.state.values() if c.name in schema.names]
        for column in tally.state.values():
            column.missing = column.name not in schema.names
        if present:
            row = 0
            for batch in parquet.iter_batches(batch_size=PARQUET_BATCH_ROWS, columns=[c.name for c in present]):
                values = {c.name: batch.column(c.name).to_pylist() for c in present}
                for offset in range(batch.num_rows):
                    for column in present:
                        value = values[column.name][offset]
                        column.add(value, row + offset + 1, value is None)
                row += batch.num_rows
        for column in tally.state.values():
            out += column.checks()
        return out
    except Unreadable as exc:
        return [Check("readable as parquet", "a parquet file", str(exc), False)]
    except (pa.ArrowException, OSError) as exc:
        return [Check("readable as parquet", "a parquet file", f"{type(exc).__name__}: {exc}", False)]


@dataclass(frozen=True)
class LocalFile:
    """The uploaded file a copy is compared with: its path as the spec names it, size and SHA-256."""

    name: str
    size: int
    sha256: str

    @classmethod
    def of(cls, path: Path, name: str) -> "LocalFile":
        digest = hashlib.sha256()
        with path.open("rb") as fh:
            while block := fh.read(CHUNK * 4):
                digest.update(block)
        return cls(name, path.stat().st_size, digest.hexdigest())


def check_object(client: S3Client, bucket: str, key: str, size: int, content: ObjectContent, *,
                 upload: LocalFile | None = None, stop: threading.Event | None = None) -> ObjectReport:
    """Read one object (``size`` as LIST or HEAD gave it) and run the content checks on it; every check is
    reported, passed or not. AWS errors raise (naming the object); content that cannot be read is a failed check.
    """
    report = ObjectReport(key, size, content.format or "bytes")
    stats = report.stats
    stats.held = _held(content)
    uri = f"s3://{bucket}/{key}"
    if content.conditions and size > content.conditions_max_mb * MIB:
        raise StepError(f"{uri} is {format_bytes(size)}, above conditions_max_mb ({content.conditions_max_mb} MiB): "
                        "its column conditions were not checked (raise the limit, or check fewer objects)",
                        code=OBJECT_TOO_LARGE)
    same_size = upload is None or upload.size == size
    copy_check: list[Check] = []
    if upload is not None and not same_size:
        copy_check = [Check(f"same as {upload.name}", f"{format_bytes(upload.size)}, SHA-256 {upload.sha256[:16]}…",
                            f"{format_bytes(size)} (another size: not read)", False)]

    def parse(stream: io.BufferedIOBase) -> list[Check]:
        tally = _Tally(content)
        if content.format == "csv":
            _csv_pass(stream, content, tally)
        elif content.format == "jsonl":
            _record_pass(_jsonl_records(stream), tally)
        else:
            text = io.TextIOWrapper(stream, encoding="utf-8-sig", newline="")  # type: ignore[type-var]
            _record_pass(json_values(text), tally)
        return _shape_checks(content, tally)

    if content.format == "parquet":
        report.checks += _parquet_checks(client, bucket, key, size, content, stats, stop)
        if upload is not None and same_size:
            _, sha256 = _streamed(client, bucket, key, content.model_copy(update={"compression": "none"}), stats,
                                  stop, None)
            copy_check = [_copy_check(upload, sha256)]
    elif content.format is not None or (upload is not None and same_size):
        checks, sha256 = _streamed(client, bucket, key, content, stats, stop,
                                   parse if content.format is not None else None)
        report.checks += checks
        if upload is not None and same_size:
            copy_check = [_copy_check(upload, sha256)]
    report.checks += copy_check
    return report


def _copy_check(upload: LocalFile, sha256: str) -> Check:
    return Check(f"same as {upload.name}", f"SHA-256 {upload.sha256}", f"SHA-256 {sha256}", sha256 == upload.sha256)


# ------------------------------------------------------------------------------------------------ the evidence
#: the longest a check's text is shown in the UI (the table cuts it further to fit, listing it whole below)
SHOWN = 300

def content_markdown(reports: list[ObjectReport]) -> markdown.Md:
    """Per object: what was read, what was held in memory, and a table of verdict, check, expected, actual."""
    parts: list[str] = []
    for report in reports:
        read = (f"read {format_bytes(report.stats.bytes_read)} of {format_bytes(report.size)} in "
                f"{report.stats.requests} GET(s)" + (", gunzipped on the fly" if report.stats.gunzipped else ""))
        parts += [f"Content of {markdown.code(report.key)} as {markdown.code(report.format)}: {markdown.text(read)}; "
                  f"held in memory: {markdown.text(report.stats.held)}.", "",
                  markdown.table(["verdict", "check", "expected", "actual"],
                                 [[check_verdict(c.passed), markdown.shorten(c.check, SHOWN),
                                   markdown.shorten(c.expected, SHOWN), markdown.shorten(c.actual, SHOWN)]
                                  for c in report.checks]), ""]
    return markdown.Md("\n".join(parts).rstrip())
