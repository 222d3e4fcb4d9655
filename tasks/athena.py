"""Step ``athena_query``: run one Athena query, wait for it without running on, read typed rows, check them.

The plain functions take boto3 clients, so they are tested without Prefect:

* :func:`check_sql` decides with sqlglot (Athena dialect) whether the SQL is one reading statement (SELECT,
  WITH, VALUES, SHOW, DESCRIBE, EXPLAIN); the runner calls it before any AWS call, the spec validator can too.
* :func:`start_query`, :func:`wait_for_query` (the project's growing-interval :func:`~tasks.polling.poll`; on
  timeout the query is stopped with ``StopQueryExecution``), :func:`fetch_results` (typed rows), and
  :func:`run_query` for all three.
* :func:`evaluate_checks` runs the step's ``expect`` on the rows and reports every check, passed or not.

Reading results: the first page of ``GetQueryResults`` (1,000 rows, Athena's maximum page) always comes from
the API, since it also carries the column types. When it is the only page the result is *small* and that is
all. When Athena says there is more (a ``NextToken``), the result is *large*: the rows are streamed from the
CSV result file in S3 in one ``GetObject`` (a 100,000-row result is 1 call instead of 100); if the file
cannot be read (no ``s3:GetObject`` permission, not Athena's CSV, a value past the csv module's field size
limit) the step logs why and pages on instead.
Either way the rows are typed the same way from the result metadata.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import math
import re
from dataclasses import dataclass, field
from datetime import date, datetime, time as dtime, timezone
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Annotated, Any, Callable, ClassVar, Iterable, Iterator, Literal, Sequence
from zoneinfo import ZoneInfo

import sqlglot
from pydantic import Field, field_validator, model_validator
from sqlglot import exp
from sqlglot.dialects.dialect import Dialect
from sqlglot.errors import ParseError, TokenError
from sqlglot.tokens import Token, TokenType

from tasks import markdown
from tasks.aws import is_real_aws
from tasks.base import (Link, SpecModel, StepBase, StepContext, StepOutcome, format_bytes, step_kind,
                        template_aware)
from tasks.errors import AWS_ERRORS, StepError, aws_error, request_id
from tasks.polling import MAX_INTERVAL_SECONDS, MAX_WAIT_SECONDS, Clock, PollSettings, poll
from tasks.s3 import S3_URI_KEY

__all__ = [
    "AthenaExpect",
    "AthenaQueryStep",
    "AthenaWait",
    "CheckResult",
    "Column",
    "ColumnCondition",
    "QueryResult",
    "QueryRun",
    "SqlCheck",
    "check_sql",
    "check_step_sql",
    "classify_sql",
    "coerce_expected",
    "columns_from_metadata",
    "console_url",
    "convert_value",
    "evaluate_checks",
    "failure_message",
    "fetch_results",
    "json_safe",
    "load_sql",
    "parse_athena_csv",
    "read_result_csv",
    "run_athena_query",
    "run_query",
    "split_s3_uri",
    "start_query",
    "stop_query",
    "wait_for_query",
]

#: Athena's largest GetQueryResults page; a result bigger than one page is read from the CSV result file
PAGE_SIZE = 1000
#: states after which a query never changes again
TERMINAL_STATES = frozenset({"SUCCEEDED", "FAILED", "CANCELLED"})
#: what AthenaError.ErrorCategory's numbers mean
ERROR_CATEGORIES = {1: "SYSTEM", 2: "USER", 3: "OTHER"}
#: the statements that run without allow_write
READ_KINDS = ("SELECT", "WITH", "VALUES", "SHOW", "DESCRIBE", "EXPLAIN")

_log = logging.getLogger(__name__)
Logger = logging.Logger | logging.LoggerAdapter


# --------------------------------------------------------------------------------------------------------
# Read-only check
# --------------------------------------------------------------------------------------------------------

_DIALECT = Dialect.get_or_raise("athena")
_READ_ROOTS: tuple[type[exp.Expr], ...] = (exp.Select, exp.SetOperation, exp.Subquery, exp.Values, exp.Describe)
#: nodes that change data or metadata; one anywhere in a statement makes it a write
_WRITE_NODES: tuple[type[exp.Expr], ...] = tuple(
    getattr(exp, name)
    for name in ("Insert", "Update", "Delete", "Merge", "Create", "Drop", "Alter", "Command", "Into",
                 "TruncateTable", "Copy", "LoadData", "Grant", "Revoke", "Analyze", "Refresh", "Use", "Set",
                 "Transaction", "Commit", "Rollback", "Cache", "Uncache", "Kill", "Pragma")
    if hasattr(exp, name)
)
_EXPLAIN_OPTIONS = frozenset({"FORMAT", "TYPE"})


@dataclass(frozen=True)
class SqlCheck:
    """What :func:`classify_sql` found: the kind of statement, whether it only reads, its ``?`` parameters."""

    kind: str
    read_only: bool
    #: number of ``?`` placeholders, None when the statement was not parsed in full (SHOW, commands)
    placeholders: int | None = None
    #: the parser's complaint when sqlglot could not parse the statement
    parse_error: str | None = None


def _tokenize(sql: str) -> list[Token]:
    """sqlglot's Athena tokens, without its internal Hive marker; unreadable SQL is a StepError."""
    try:
        tokens = _DIALECT.tokenize(sql)
    except TokenError as exc:
        raise StepError(f"The SQL could not be read (an unclosed quote or comment?): {exc}") from None
    return [t for t in tokens if t.token_type != TokenType.HIVE_TOKEN_STREAM]


def _split_statements(tokens: list[Token]) -> list[list[Token]]:
    """Tokens grouped into statements at top-level semicolons (a ';' in a string is no separator)."""
    statements: list[list[Token]] = [[]]
    for token in tokens:
        if token.token_type == TokenType.SEMICOLON:
            statements.append([])
        else:
            statements[-1].append(token)
    return [s for s in statements if s]


def _parse_error_text(exc: ParseError) -> str:
    """The first parse error as 'line L, col C: description', without the terminal underline codes."""
    errors = exc.errors or []
    if not errors:
        return re.sub(r"\x1b\[[0-9;]*m", "", str(exc)).splitlines()[0]
    first = errors[0]
    return f"line {first.get('line')}, col {first.get('col')}: {first.get('description')}"


def _explain_target(text: str) -> tuple[bool, str]:
    """Strip EXPLAIN's ANALYZE, VERBOSE and ``(FORMAT ..., TYPE ...)`` options; return (analyze, statement)."""
    analyze = False
    while True:
        tokens = _tokenize(text)
        if not tokens:
            raise StepError("The SQL is EXPLAIN without a statement to explain")
        head = tokens[0]
        word = head.text.upper()
        if word in ("ANALYZE", "VERBOSE"):
            analyze = analyze or word == "ANALYZE"
            text = text[head.end + 1:]
            continue
        if head.token_type == TokenType.L_PAREN and len(tokens) > 1 and tokens[1].text.upper() in _EXPLAIN_OPTIONS:
            close = next((t for t in tokens if t.token_type == TokenType.R_PAREN), None)
            if close is None:
                raise StepError("The SQL's EXPLAIN options have no closing parenthesis")
            text = text[close.end + 1:]
            continue
        return analyze, text


def _classify_parsed(expression: exp.Expr) -> SqlCheck:
    """Read-only when the root is a query or DESCRIBE and nothing inside it writes."""
    placeholders = len(list(expression.find_all(exp.Placeholder)))
    if isinstance(expression, exp.Command):
        return SqlCheck(str(expression.this).upper(), False, None)
    if isinstance(expression, _READ_ROOTS):
        writer = expression.find(*_WRITE_NODES)
        if writer is not None:
            return SqlCheck(writer.key.upper(), False, placeholders)
        if isinstance(expression, exp.Describe):
            kind = "DESCRIBE"
        elif isinstance(expression, exp.Values):
            kind = "VALUES"
        elif expression.args.get("with_") or expression.args.get("with"):
            kind = "WITH"
        else:
            kind = "SELECT"
        return SqlCheck(kind, True, placeholders)
    return SqlCheck(expression.key.upper(), False, placeholders)


def _classify_statement(sql: str, tokens: list[Token]) -> SqlCheck:
    """Classify one statement: SHOW and commands by their first token, EXPLAIN by its target, the rest parsed."""
    head = tokens[0]
    if head.token_type == TokenType.SHOW:
        return SqlCheck("SHOW", True, None)
    if head.token_type == TokenType.COMMAND and head.text.upper() == "EXPLAIN":
        analyze, target = _explain_target(sql[head.end + 1:])
        inner = classify_sql(target)
        # plain EXPLAIN only plans; EXPLAIN ANALYZE runs the statement, so it reads only if its target does
        read_only = inner.read_only or (not analyze and inner.parse_error is None)
        kind = "EXPLAIN ANALYZE" if analyze else "EXPLAIN"
        return SqlCheck(kind, read_only, inner.placeholders, inner.parse_error)
    if head.token_type == TokenType.COMMAND:
        return SqlCheck(head.text.upper(), False, None)
    try:
        expression = sqlglot.parse_one(sql, read=_DIALECT)
    except ParseError as exc:
        return SqlCheck(head.text.upper(), False, None, _parse_error_text(exc))
    return _classify_parsed(expression)


def classify_sql(sql: str) -> SqlCheck:
    """Parse ``sql`` with sqlglot (Athena dialect) and say what it is; empty or several statements are errors."""
    statements = _split_statements(_tokenize(sql))
    if not statements:
        raise StepError("The SQL is empty")
    if len(statements) > 1:
        raise StepError(
            f"The SQL holds {len(statements)} statements separated by ';'; an athena_query step runs exactly "
            "one (split it into several steps)"
        )
    return _classify_statement(sql, statements[0])


def check_sql(sql: str, *, allow_write: bool = False, parameters: Sequence[str] = ()) -> SqlCheck:
    """Refuse what must not reach Athena: several statements, unparseable or writing SQL, wrong ``?`` count.

    The runner calls this before any AWS call; a spec validator can call it on the templated SQL. With
    ``allow_write`` any single statement passes, even one sqlglot cannot parse (Athena will judge it).
    """
    found = classify_sql(sql)
    if not allow_write:
        if found.parse_error:
            raise StepError(
                f"The SQL could not be parsed ({found.parse_error}), so it cannot be shown to be read-only; "
                "fix it, or set allow_write: true to send it to Athena as it is"
            )
        if not found.read_only:
            raise StepError(
                f"Refused to run a {found.kind} statement: athena_query runs only reading statements "
                f"({', '.join(READ_KINDS)}) unless the step sets allow_write: true"
            )
    if found.placeholders is not None and found.placeholders != len(parameters):
        raise StepError(
            f"The SQL has {found.placeholders} '?' placeholder(s) but the step gives {len(parameters)} "
            "parameter(s); give one parameter per '?', in order"
        )
    return found


# --------------------------------------------------------------------------------------------------------
# Typing values
# --------------------------------------------------------------------------------------------------------


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


def columns_from_metadata(column_info: list[dict[str, Any]]) -> list[Column]:
    """``ResultSetMetadata.ColumnInfo`` -> columns (name, type)."""
    names = [str(info.get("Name") or info.get("Label") or f"_col{i}") for i, info in enumerate(column_info)]
    return [
        Column(name=unique, type=str(info.get("Type") or "varchar"), source_name=name,
               label=str(info.get("Label") or name))
        for unique, name, info in zip(_unique_names(names), names, column_info)
    ]


class _RowTyper:
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


# --------------------------------------------------------------------------------------------------------
# Athena calls: start, wait, stop
# --------------------------------------------------------------------------------------------------------


def _record(request_ids: list[str] | None, response: dict[str, Any]) -> None:
    """Keep a response's request id for the evidence."""
    rid = request_id(response)
    if request_ids is not None and rid:
        request_ids.append(rid)


def start_query(
    athena: Any,
    sql: str,
    *,
    database: str | None = None,
    catalog: str = "AwsDataCatalog",
    workgroup: str = "primary",
    output_location: str | None = None,
    parameters: Sequence[str] = (),
    request_ids: list[str] | None = None,
) -> str:
    """StartQueryExecution; returns the query id. Values go in ``parameters`` (``?``), never into the SQL."""
    context: dict[str, str] = {"Catalog": catalog}
    if database:
        context["Database"] = database
    kwargs: dict[str, Any] = {"QueryString": sql, "QueryExecutionContext": context, "WorkGroup": workgroup}
    if output_location:
        kwargs["ResultConfiguration"] = {"OutputLocation": output_location}
    if parameters:
        kwargs["ExecutionParameters"] = list(parameters)
    try:
        response = athena.start_query_execution(**kwargs)
    except AWS_ERRORS as exc:
        raise aws_error("Athena StartQueryExecution", f"workgroup {workgroup}", exc) from None
    _record(request_ids, response)
    return str(response["QueryExecutionId"])


def get_execution(athena: Any, query_id: str, request_ids: list[str] | None = None) -> dict[str, Any]:
    """GetQueryExecution's ``QueryExecution``."""
    try:
        response = athena.get_query_execution(QueryExecutionId=query_id)
    except AWS_ERRORS as exc:
        raise aws_error("Athena GetQueryExecution", f"query {query_id}", exc) from None
    _record(request_ids, response)
    return response["QueryExecution"]


def stop_query(athena: Any, query_id: str, request_ids: list[str] | None = None) -> str | None:
    """StopQueryExecution, so nothing runs on and bills; returns why stopping failed, or None."""
    try:
        response = athena.stop_query_execution(QueryExecutionId=query_id)
    except AWS_ERRORS as exc:
        return aws_error("Athena StopQueryExecution", f"query {query_id}", exc).message
    _record(request_ids, response)
    return None


def state_of(execution: dict[str, Any]) -> str:
    """The execution's state (QUEUED, RUNNING, SUCCEEDED, FAILED, CANCELLED)."""
    return str(execution.get("Status", {}).get("State") or "UNKNOWN")


def _describe_progress(execution: dict[str, Any]) -> str:
    """A progress line's state: ``RUNNING, 3.2 MB scanned``."""
    scanned = execution.get("Statistics", {}).get("DataScannedInBytes")
    state = state_of(execution)
    return f"{state}, {format_bytes(scanned)} scanned" if scanned else state


def failure_message(execution: dict[str, Any]) -> str:
    """Why a query FAILED or was CANCELLED, with Athena's state change reason and error category and type."""
    status = execution.get("Status", {})
    query_id = execution.get("QueryExecutionId", "?")
    reason = status.get("StateChangeReason") or "Athena gave no reason"
    text = f"Athena query {query_id} {state_of(execution)}: {reason}"
    error = status.get("AthenaError") or {}
    facts = []
    if "ErrorCategory" in error:
        category = error["ErrorCategory"]
        facts.append(f"error category {ERROR_CATEGORIES.get(category, category)}")
    if "ErrorType" in error:
        facts.append(f"error type {error['ErrorType']}")
    if error.get("Retryable"):
        facts.append("retryable")
    return text + (f" ({', '.join(facts)})" if facts else "")


def wait_for_query(
    athena: Any,
    query_id: str,
    settings: PollSettings,
    *,
    logger: Logger | None = None,
    clock: Clock | None = None,
    request_ids: list[str] | None = None,
) -> dict[str, Any]:
    """Wait until the query ends; return its SUCCEEDED execution.

    Checks at once, then at growing intervals (:func:`~tasks.polling.poll`). On timeout, or when waiting is
    interrupted (an AWS error, a cancelled flow), the query is stopped so it does not run on. A FAILED or
    CANCELLED query is a StepError with Athena's reason.
    """
    try:
        outcome = poll(
            lambda: get_execution(athena, query_id, request_ids),
            lambda execution: state_of(execution) in TERMINAL_STATES,
            settings,
            describe=_describe_progress,
            what=f"Athena query {query_id}",
            logger=logger,
            clock=clock,
        )
    except BaseException:
        stop_query(athena, query_id, request_ids)
        raise
    execution = outcome.value
    if not outcome.done:
        problem = stop_query(athena, query_id, request_ids)
        stopped = "stopped it with StopQueryExecution" if problem is None else f"could not stop it: {problem}"
        raise StepError(
            f"Athena query {query_id} did not finish within {settings.timeout:g} s (still {state_of(execution)} "
            f"after {outcome.checks} checks); {stopped}",
            code="Timeout",
            details={"query_id": query_id, "state": state_of(execution), "stopped": problem is None},
        )
    if state_of(execution) != "SUCCEEDED":
        status = execution.get("Status", {})
        raise StepError(
            failure_message(execution),
            code=state_of(execution),
            details={
                "query_id": query_id,
                "state": state_of(execution),
                "reason": status.get("StateChangeReason"),
                "athena_error": status.get("AthenaError"),
            },
        )
    return execution


# --------------------------------------------------------------------------------------------------------
# Results: GetQueryResults pages or the CSV result file
# --------------------------------------------------------------------------------------------------------


@dataclass
class QueryResult:
    """Typed rows and where they came from (``GetQueryResults`` or the result file's S3 URI)."""

    columns: list[Column]
    rows: list[dict[str, Any]]
    source: str
    pages: int = 0

    @property
    def column_names(self) -> list[str]:
        return [c.name for c in self.columns]


def split_s3_uri(uri: str) -> tuple[str, str]:
    """``s3://bucket/a/b.csv`` -> ``("bucket", "a/b.csv")``."""
    if not uri.startswith("s3://"):
        raise StepError(f"Not an S3 URI: {uri!r}")
    bucket, _, key = uri[len("s3://"):].partition("/")
    if not bucket or not key:
        raise StepError(f"Not an S3 object URI (s3://bucket/key): {uri!r}")
    return bucket, key


#: one raw CSV field with the comma after it: quoted (quotes kept) or bare
_CSV_RAW_FIELD = re.compile(r'(?:"[^"]*(?:""[^"]*)*"|[^,"\r\n]*)(?:,|$)')


def _mark_nulls(raw: str, fields: list[str]) -> list[str | None]:
    """Make the empty *unquoted* fields of a record None; the slow path, for records with an empty value.

    ``fields`` is csv's reading of the record ``raw``; one C-level ``findall`` gives the raw fields, whose
    first character says whether each was quoted.
    """
    if not fields:  # a blank line: the one value of a one-column row is NULL
        return [None]
    tokens = _CSV_RAW_FIELD.findall(raw.rstrip("\r\n"))
    if len(tokens) < len(fields):
        raise csv.Error(f"cannot split record {raw[:80]!r}")
    marked: list[str | None] = list(fields)
    for i, value in enumerate(fields):
        if value == "" and not tokens[i].startswith('"'):
            marked[i] = None
    return marked


class _LineTap:
    """Hands lines to csv.reader and keeps those of the current record, for the null-aware slow path."""

    def __init__(self, lines: Iterable[str]) -> None:
        self._lines = iter(lines)
        self.taken: list[str] = []

    def __iter__(self) -> "_LineTap":
        return self

    def __next__(self) -> str:
        line = next(self._lines)
        self.taken.append(line)
        return line


def parse_athena_csv(lines: Iterable[str]) -> Iterator[list[str | None]]:
    """Records of an Athena CSV result file as lists of texts, None for SQL NULL.

    Athena quotes every value and writes NULL as an empty unquoted field, so ``,,`` is NULL and ``,"",`` an
    empty string. Python's csv module reads both as ``''``; it does the fast work here, and only records
    holding an empty value are looked at again by :func:`_mark_nulls`, which tells the two apart.
    """
    tap = _LineTap(lines)
    for fields in csv.reader(tap, strict=True):
        raw = "".join(tap.taken)
        tap.taken.clear()
        yield _mark_nulls(raw, fields) if not fields or "" in fields else fields


def _body_lines(body: Any, chunk_size: int = 1 << 20) -> Iterator[str]:
    """The lines of an S3 object body, streamed, decoded, with their line ends (csv needs them)."""
    for line in body.iter_lines(chunk_size=chunk_size, keepends=True):
        yield line.decode("utf-8")


def read_result_csv(
    s3: Any,
    location: str,
    columns: list[Column],
    *,
    request_ids: list[str] | None = None,
) -> list[dict[str, Any]]:
    """Stream Athena's CSV result file at ``location`` (one GetObject) into typed rows.

    The file starts with a header row, which must name the query's columns.
    """
    bucket, key = split_s3_uri(location)
    typer = _RowTyper(columns)
    try:
        response = s3.get_object(Bucket=bucket, Key=key)
        _record(request_ids, response)
        body = response["Body"]
        try:
            records = parse_athena_csv(_body_lines(body))
            header = next(records, None)
            if header is None:
                raise StepError(f"The Athena result file {location} is empty (no header row)")
            if not _is_header(header, columns):
                raise StepError(
                    f"The Athena result file {location} starts with {header}, not the header row of the "
                    f"query's columns {[c.source_name or c.name for c in columns]}"
                )
            return [typer(values) for values in records]
        finally:
            body.close()
    except AWS_ERRORS as exc:
        raise aws_error("S3 GetObject", location, exc) from None
    except (csv.Error, UnicodeDecodeError) as exc:
        raise StepError(f"The Athena result file {location} is not valid CSV: {exc}") from None


def _is_header(row: Sequence[str | None], columns: list[Column]) -> bool:
    """Whether a row repeats the column names: the header Athena puts first in a SELECT's results and file.

    Decided by content rather than by statement type (as PyAthena does): SHOW and DESCRIBE results have no
    header row, and a stand-in that leaves the header out must not lose a data row.
    """
    return len(row) == len(columns) and all(v in c.header_names() for v, c in zip(row, columns))


def _page_values(page: dict[str, Any]) -> list[list[str | None]]:
    """A GetQueryResults page's rows as lists of texts; a datum without VarCharValue is NULL."""
    return [[d.get("VarCharValue") for d in row.get("Data", [])] for row in page.get("ResultSet", {}).get("Rows", [])]


def _csv_location(execution: dict[str, Any]) -> str | None:
    """The execution's CSV result file, if it has one (SELECTs do; SHOW and DDL write text files)."""
    location = execution.get("ResultConfiguration", {}).get("OutputLocation")
    if location and location.endswith(".csv") and execution.get("StatementType", "DML") == "DML":
        return str(location)
    return None


def fetch_results(
    athena: Any,
    s3: Any,
    execution: dict[str, Any],
    *,
    page_size: int = PAGE_SIZE,
    request_ids: list[str] | None = None,
    logger: Logger | None = None,
) -> QueryResult:
    """All rows of a SUCCEEDED query, typed by the result metadata.

    The first ``GetQueryResults`` page (with the metadata) decides: one page is a small result, read from the
    paginator; more is a large one, streamed from the CSV result file (falling back to paging when that file
    cannot be read).
    """
    log = logger or _log
    query_id = str(execution["QueryExecutionId"])
    pages = iter(athena.get_paginator("get_query_results").paginate(
        QueryExecutionId=query_id, PaginationConfig={"PageSize": page_size}
    ))
    resource = f"query {query_id}"
    try:
        first = next(pages)
    except AWS_ERRORS as exc:
        raise aws_error("Athena GetQueryResults", resource, exc) from None
    _record(request_ids, first)
    columns = columns_from_metadata(first.get("ResultSet", {}).get("ResultSetMetadata", {}).get("ColumnInfo", []))
    typer = _RowTyper(columns)
    values = _page_values(first)
    if values and _is_header(values[0], columns):
        values = values[1:]
    location = _csv_location(execution)
    if first.get("NextToken") and location:
        try:
            rows = read_result_csv(s3, location, columns, request_ids=request_ids)
            log.info("Read %d rows of Athena query %s from its result file %s", len(rows), query_id, location)
            return QueryResult(columns, rows, location, pages=1)
        except StepError as exc:  # no permission, no file, a file that is not Athena's CSV, ...
            log.warning("Could not read the result file (%s); paging GetQueryResults instead", exc.message)
    rows = [typer(v) for v in values]
    count = 1
    try:
        for page in pages:
            _record(request_ids, page)
            rows.extend(typer(v) for v in _page_values(page))
            count += 1
    except AWS_ERRORS as exc:
        raise aws_error("Athena GetQueryResults", resource, exc) from None
    log.info("Read %d rows of Athena query %s in %d GetQueryResults page(s)", len(rows), query_id, count)
    return QueryResult(columns, rows, "GetQueryResults", pages=count)


@dataclass
class QueryRun:
    """A finished query: its final execution, its typed result, how long we waited, the AWS request ids."""

    query_id: str
    execution: dict[str, Any]
    result: QueryResult
    elapsed: float
    request_ids: list[str] = field(default_factory=list)


def run_query(
    athena: Any,
    s3: Any,
    sql: str,
    *,
    database: str | None = None,
    catalog: str = "AwsDataCatalog",
    workgroup: str = "primary",
    output_location: str | None = None,
    parameters: Sequence[str] = (),
    wait: PollSettings | None = None,
    page_size: int = PAGE_SIZE,
    logger: Logger | None = None,
    clock: Clock | None = None,
) -> QueryRun:
    """Start, wait for (stopping it on timeout) and read one query. Call :func:`check_sql` first."""
    log = logger or _log
    clock = clock or Clock()
    ids: list[str] = []
    started = clock.now()
    query_id = start_query(
        athena, sql, database=database, catalog=catalog, workgroup=workgroup,
        output_location=output_location, parameters=parameters, request_ids=ids,
    )
    log.info("Started Athena query %s in workgroup %s", query_id, workgroup)
    execution = wait_for_query(
        athena, query_id, wait or AthenaWait(), logger=log, clock=clock, request_ids=ids
    )
    elapsed = clock.now() - started
    log.info("Athena query %s SUCCEEDED after %.1f s; reading its results", query_id, elapsed)
    result = fetch_results(athena, s3, execution, page_size=page_size, request_ids=ids, logger=log)
    return QueryRun(query_id, execution, result, elapsed, ids)


# --------------------------------------------------------------------------------------------------------
# Checks
# --------------------------------------------------------------------------------------------------------


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
                and self.columns is None and self.rows is None and not self.first_row)


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


# --------------------------------------------------------------------------------------------------------
# Evidence helpers
# --------------------------------------------------------------------------------------------------------


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



def console_url(region: str, query_id: str) -> str:
    """The query in the Athena console's history."""
    return f"https://{region}.console.aws.amazon.com/athena/home?region={region}#/query-editor/history/{query_id}"


def preview_table(rows: list[dict[str, Any]], columns: list[str]) -> str:
    """Result rows as a markdown table (NULL for a null; every name and value escaped)."""
    if not columns:
        return "_(no columns)_"
    return markdown.table(columns, [["NULL" if row.get(c) is None else json_safe(row.get(c)) for c in columns]
                                    for row in rows])


# --------------------------------------------------------------------------------------------------------
# The step
# --------------------------------------------------------------------------------------------------------


class AthenaWait(PollSettings):
    """Waiting for a query: as :class:`PollSettings`, but a query may take up to 10 minutes by default."""

    timeout: float = Field(600.0, gt=0, le=MAX_WAIT_SECONDS,
                           description="Stop the query and fail after this many seconds.")
    initial: float = Field(0.2, gt=0, le=MAX_INTERVAL_SECONDS,
                           description="First interval between checks (a 2 s query is seen at once).")


class AthenaQueryStep(StepBase):
    """Run one Athena query (read-only unless allowed), wait for it, and check its rows."""

    template_files: ClassVar[frozenset[str]] = frozenset({"sql_file"})

    kind: Literal["athena_query"] = "athena_query"
    sql: str | None = Field(None, description="The SQL, templated with the case's variables. Give sql or sql_file.")
    sql_file: str | None = Field(
        None,
        description="A file holding the SQL, relative to the spec; its content is templated. Give sql or sql_file.",
    )
    parameters: list[str] = Field(
        default_factory=list,
        description="Athena execution parameters, one per `?` in the SQL, in order. Each is a SQL literal: "
                    "`'2024-01-31'` (with quotes) for a string, `42` for a number. Use these for values "
                    "rather than templating them into the SQL.",
    )
    database: str | None = Field(None, description="The database (Glue schema) unqualified table names refer to.")
    catalog: str = Field("AwsDataCatalog", description="The data catalog.")
    workgroup: str = Field("primary", description="The Athena workgroup to run in.")
    output_location: Annotated[str | None, template_aware(r"s3://[^/]+(/.*)?", "an S3 URI: s3://bucket/prefix/"),
                               S3_URI_KEY] = Field(
        None,
        description="Where Athena writes the result (s3://bucket/prefix/); optional when the workgroup sets one.",
    )
    allow_write: bool = Field(
        False,
        description="Allow statements other than SELECT, WITH, VALUES, SHOW, DESCRIBE and EXPLAIN "
                    "(INSERT, CTAS, DDL, MSCK, ...). Off by default: a test should not change data by accident.",
    )
    wait: AthenaWait = Field(
        default_factory=AthenaWait,
        description="How long to wait for the query (it is stopped when this runs out) and how often to check.",
    )
    preview_rows: int = Field(20, ge=0, le=1000, description="How many rows to show in the evidence.")
    expect: AthenaExpect = Field(default_factory=AthenaExpect, description="Checks on the result.")

    @model_validator(mode="after")
    def _one_source(self) -> "AthenaQueryStep":
        if (self.sql is None) == (self.sql_file is None):
            raise ValueError("give exactly one of sql and sql_file")
        if self.sql is not None and not self.sql.strip():
            raise ValueError("sql is empty")
        return self

    @field_validator("sql_file")
    @classmethod
    def _not_blank(cls, value: str | None) -> str | None:
        if value is not None and not value.strip():
            raise ValueError("sql_file is empty")
        return value

    def rendered_checks(self, spec_dir: Path, render: Callable[[str], str]) -> list[str]:
        """Refuse writes and multiple statements at validation time, before anything is sent to Athena."""
        try:
            check_step_sql(self, spec_dir, render)
        except StepError as exc:
            return [f"field {'sql_file' if self.sql_file else 'sql'!r}: {exc.message}"]
        return []


def load_sql(step: AthenaQueryStep, spec_dir: Path, render: Callable[[str], str]) -> str:
    """The SQL as it will run: inline (already templated by the engine), or the file's content rendered."""
    if step.sql is not None:
        return step.sql
    assert step.sql_file is not None
    path = Path(spec_dir) / step.sql_file
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise StepError(f"Cannot read sql_file {step.sql_file} ({path}): {exc.strerror or exc}") from None
    return render(text)


def check_step_sql(step: AthenaQueryStep, spec_dir: Path, render: Callable[[str], str]) -> tuple[str, SqlCheck]:
    """The step's SQL as it will run, and :func:`check_sql`'s verdict on it; for the runner and the validator."""
    sql = load_sql(step, spec_dir, render)
    return sql, check_sql(sql, allow_write=step.allow_write, parameters=step.parameters)


def _facts(run: QueryRun, step: AthenaQueryStep) -> dict[str, Any]:
    """The query's facts for details and evidence (Athena's statistics, in ms and bytes)."""
    stats = run.execution.get("Statistics", {})
    return {
        "query_id": run.query_id,
        "workgroup": run.execution.get("WorkGroup") or step.workgroup,
        "catalog": step.catalog,
        "database": step.database,
        "state": state_of(run.execution),
        "statement_type": run.execution.get("StatementType"),
        "output_location": run.execution.get("ResultConfiguration", {}).get("OutputLocation"),
        "engine_time_ms": stats.get("EngineExecutionTimeInMillis"),
        "queue_time_ms": stats.get("QueryQueueTimeInMillis"),
        "total_time_ms": stats.get("TotalExecutionTimeInMillis"),
        "data_scanned_bytes": stats.get("DataScannedInBytes"),
        "waited_s": round(run.elapsed, 3),
        "row_count": len(run.result.rows),
        "result_source": run.result.source,
    }


def _seconds(facts: dict[str, Any]) -> float:
    """Athena's total time when it reports one, else how long we waited."""
    total = facts.get("total_time_ms")
    return total / 1000 if total else float(facts["waited_s"])


def _summary(facts: dict[str, Any], checks: list[CheckResult]) -> str:
    """``12 rows, 3 checks passed (1.4 s, 2.1 KB scanned)``."""
    rows = facts["row_count"]
    text = f"{rows} row{'s' if rows != 1 else ''}"
    passed = sum(c.passed for c in checks)
    if checks:
        text += f", {passed} check{'s' if passed != 1 else ''} passed"
        if passed < len(checks):
            text += f", {len(checks) - passed} failed"
    return text + f" ({_seconds(facts):.1f} s, {format_bytes(facts['data_scanned_bytes'])} scanned)"


def _ms(value: Any) -> str:
    return "–" if value is None else f"{value / 1000:.1f} s"


def _markdown(sql: str, step: AthenaQueryStep, facts: dict[str, Any], run: QueryRun,
              preview: list[dict[str, Any]], checks: list[CheckResult]) -> str:
    """The evidence body: SQL, facts, preview rows, checks."""
    fact_rows = [
        ("Query id", markdown.code(facts["query_id"])),
        ("Workgroup", facts["workgroup"]),
        ("Catalog / database", f"{facts['catalog']} / {facts['database'] or '–'}"),
        ("State", facts["state"]),
        ("Engine time", _ms(facts["engine_time_ms"])),
        ("Queue time", _ms(facts["queue_time_ms"])),
        ("Data scanned", format_bytes(facts["data_scanned_bytes"])),
        ("Rows", f"{facts['row_count']} (read from {facts['result_source']})"),
    ]
    if step.parameters:
        fact_rows.insert(1, ("Parameters", markdown.Md(", ".join(markdown.cell(markdown.code(p))
                                                                 for p in step.parameters))))
    parts = [
        markdown.code_block(sql.strip(), "sql"),
        markdown.table(["Fact", "Value"], fact_rows),
        f"**Preview** ({len(preview)} of {facts['row_count']} rows)\n\n"
        + preview_table(preview, run.result.column_names),
    ]
    if checks:
        parts.append("**Checks**\n\n" + markdown.bullets(c.line() for c in checks))
    return "\n\n".join(parts)


def result_digest(columns: list[dict[str, str]], rows: list[dict[str, Any]]) -> str:
    """SHA-256 of the whole typed result (columns and every row, as canonical JSON), for the evidence manifest:
    the same rows give the same digest whether they were paged or read from the result file."""
    canonical = json.dumps({"columns": columns, "rows": json_safe(rows)}, sort_keys=True, separators=(",", ":"),
                           ensure_ascii=False)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def _outcome(sql: str, step: AthenaQueryStep, run: QueryRun, checks: list[CheckResult],
             region: str | None, endpoint: str) -> StepOutcome:
    """Summary, details, evidence, preview table and console link of a finished query."""
    facts = _facts(run, step)
    preview = run.result.rows[: step.preview_rows]
    safe_preview = json_safe(preview)
    columns = [{"name": c.name, "type": c.type} for c in run.result.columns]
    details = {
        "sql": sql,
        "parameters": list(step.parameters),
        **facts,
        "columns": columns,
        "result_sha256": result_digest(columns, run.result.rows),
        "preview": safe_preview,
        "checks": [c.to_dict() for c in checks],
    }
    links = []
    if region and is_real_aws(endpoint):
        links.append(Link(console_url(region, run.query_id), f"Athena query {run.query_id}"))
    return StepOutcome(
        summary=_summary(facts, checks),
        details=details,
        markdown=_markdown(sql, step, facts, run, preview, checks),
        links=links,
        tables={"preview": safe_preview},
        request_ids=list(run.request_ids),
    )


@step_kind(AthenaQueryStep)
def run_athena_query(step: AthenaQueryStep, ctx: StepContext) -> StepOutcome:
    """Check the SQL (nothing is sent if it writes without allow_write), run it, wait, read, check."""
    sql, found = check_step_sql(step, ctx.spec_dir, ctx.render)
    ctx.logger.info("Running %s statement on Athena (workgroup %s, catalog %s, database %s)",
                    found.kind, step.workgroup, step.catalog, step.database or "-")
    athena = ctx.clients.client("athena")
    run = run_query(
        athena,
        ctx.clients.client("s3"),
        sql,
        database=step.database,
        catalog=step.catalog,
        workgroup=step.workgroup,
        output_location=step.output_location,
        parameters=step.parameters,
        wait=step.wait,
        logger=ctx.logger,
        clock=ctx.clock,
    )
    checks = evaluate_checks(step.expect, run.result)
    outcome = _outcome(sql, step, run, checks, athena.meta.region_name, str(athena.meta.endpoint_url))
    failed = [c for c in checks if not c.passed]
    if failed:
        raise StepError(
            f"{len(failed)} of {len(checks)} checks failed: " + "; ".join(c.line()[2:] for c in failed),
            code="ChecksFailed",
            details={**outcome.details, "markdown": outcome.markdown},
        )
    ctx.logger.info("Athena query %s: %s", run.query_id, outcome.summary)
    return outcome
