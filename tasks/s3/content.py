"""What an S3 object holds: content checks for ``expect_objects``, read streamed in bounded memory.

:class:`ObjectContent` is what a spec asks (format, row count, columns, a pass-through copy of an uploaded file,
per-column conditions); :func:`check_object` reads one object and returns an :class:`ObjectReport` (every check,
passed or not, with what was read and what was held in memory); :func:`content_markdown` is its evidence.

How each format is read:

- ``csv``, ``jsonl``: one GET, streamed (``Body.read`` in 256 KiB chunks), gunzipped on the fly when the key ends
  in ``.gz`` or the object starts with gzip's magic bytes, decoded incrementally, one line / row at a time (a line
  longer than :data:`tasks.s3.stream.MAX_LINE_CHARS` fails the check rather than growing memory);
- ``json``: the same stream; a top-level array is parsed one element at a time (an element may be up to
  :data:`tasks.s3.stream.MAX_JSON_VALUE_CHARS`), a top-level object is one record (up to the same size);
- ``parquet``: random access through ranged GETs (:class:`tasks.s3.stream.RangedObject`, no temporary
  file): the footer gives the row count, column names and types without reading any data; per-column conditions
  read only the columns they name, one record batch at a time.

The SHA-256 (``same_as_upload``) is of the bytes as stored, computed in the same pass (for parquet, one more
streamed pass); sizes are compared first, so a copy of the wrong size is not downloaded at all.
"""

from __future__ import annotations

import csv
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
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator, Union

from tasks.kit import markdown, nesting
from tasks.kit.checks import CheckRecord
from tasks.kit.errors import AWS_ERRORS, OBJECT_TOO_LARGE, StepError, aws_error
from tasks.kit.status import check_verdict
from tasks.kit.step import format_bytes
from tasks.s3.content_spec import ObjectColumnRule, ObjectContent, ObjectCsvOptions
from tasks.s3.stream import CHUNK, RangedObject, ReadStats, Unreadable, json_values, lines, open_stream

if TYPE_CHECKING:
    from types_boto3_s3 import S3Client

MIB = 1024 * 1024
#: content checks read at most this many objects per step
MAX_OBJECTS = 50
#: how many rows a parquet record batch holds while conditions are checked
PARQUET_BATCH_ROWS = 10_000
#: examples kept per failed condition
EXAMPLES = 3


# ---------------------------------------------------------------------------------------------- the results
@dataclass
class Check:
    """One check of an object: what, expected, actual (as text), and whether it held."""

    check: str
    expected: str
    actual: str
    passed: bool
    #: ``warn``: when it does not hold it is a warning (the step is warned); None: the content's severity
    severity: str | None = None

    @property
    def mark(self) -> str:
        return check_verdict(self.passed, warn=self.severity == "warn")

    def line(self) -> str:
        return f"{self.mark} {self.check}: expected {self.expected}, got {self.actual}"


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

    def records(self) -> list[CheckRecord]:
        """The typed records of this object's checks (where: its key)."""
        return [CheckRecord.of(c.check, c.passed, c.expected, c.actual, where=self.key, severity=c.severity)
                for c in self.checks]

    def to_dict(self) -> dict[str, Any]:
        return {"key": self.key, "size": self.size, "format": self.format, "passed": self.passed,
                "bytes_read": self.stats.bytes_read, "requests": self.stats.requests,
                "gunzipped": self.stats.gunzipped, "held_in_memory": self.stats.held, "rows": self.stats.rows,
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
                out.append(Check(label, expected, "no such column", False, self.rule.severity))
            elif condition in self.bad:
                count, examples = self.bad[condition]
                out.append(Check(label, expected, f"{count:,} value(s) broke it: {'; '.join(examples)}", False,
                                 self.rule.severity))
            else:
                out.append(Check(label, expected, "every value", True, self.rule.severity))
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
    if isinstance(content.row_count, int):
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
        stats.rows = tally.rows
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
        stats.rows = tally.rows
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
    for check in report.checks:
        check.severity = check.severity or content.severity
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
                                 [[c.mark, markdown.shorten(c.check, SHOWN),
                                   markdown.shorten(c.expected, SHOWN), markdown.shorten(c.actual, SHOWN)]
                                  for c in report.checks]), ""]
    return markdown.Md("\n".join(parts).rstrip())
