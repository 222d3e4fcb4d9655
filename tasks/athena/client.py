"""Athena calls on a boto3 client: start a query, wait for it (stopping it on timeout), read its typed rows.

* :func:`start_query`, :func:`wait_for_query` (the project's growing-interval :func:`~tasks.kit.polling.poll`; on
  timeout the query is stopped with ``StopQueryExecution``), :func:`fetch_results` (typed rows), and
  :func:`run_query` for all three.

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
import io
import logging
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator, Mapping, Protocol, Sequence, TypeVar, cast

from pydantic import Field

from tasks.athena.cost import ScanLimit, stopped_over_limit, workgroup_cancelled
from tasks.athena.values import Column, QueryResult, ResultDigest, RowTyper, columns_from_metadata
from tasks.kit.errors import AWS_ERRORS, TIMED_OUT, StepError, aws_error, request_id
from tasks.kit.polling import MAX_INTERVAL_SECONDS, MAX_WAIT_SECONDS, MIN_INITIAL_SECONDS, Clock, PollSettings, poll
from tasks.kit.step import format_bytes

if TYPE_CHECKING:
    from types_boto3_athena import AthenaClient
    from types_boto3_s3 import S3Client

__all__ = [
    "ERROR_CATEGORIES",
    "PAGE_SIZE",
    "TERMINAL_STATES",
    "AthenaWait",
    "QueryRun",
    "ReadInfo",
    "RowSink",
    "failure_message",
    "fetch_results",
    "get_execution",
    "parse_athena_csv",
    "read_result_csv",
    "read_results",
    "run_query",
    "split_s3_uri",
    "start_query",
    "state_of",
    "stop_query",
    "stream_result_csv",
    "wait_for_query",
]

#: Athena's largest GetQueryResults page; a result bigger than one page is read from the CSV result file
PAGE_SIZE = 1000
#: rows handed to a sink at once when reading the result file (a page's worth)
FEED_BATCH = 1000
#: states after which a query never changes again
TERMINAL_STATES = frozenset({"SUCCEEDED", "FAILED", "CANCELLED"})
#: what AthenaError.ErrorCategory's numbers mean
ERROR_CATEGORIES = {1: "SYSTEM", 2: "USER", 3: "OTHER"}

#: the package's logger (as before it was split), for calls made without one
_log = logging.getLogger("tasks.athena")
Logger = logging.Logger | logging.LoggerAdapter


# --------------------------------------------------------------------------------------------------------
# Athena calls: start, wait, stop
# --------------------------------------------------------------------------------------------------------


def _record(request_ids: list[str] | None, response: Mapping[str, Any]) -> None:
    """Keep a response's request id for the evidence."""
    rid = request_id(response)
    if request_ids is not None and rid:
        request_ids.append(rid)


def start_query(
    athena: AthenaClient,
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


def get_execution(athena: AthenaClient, query_id: str, request_ids: list[str] | None = None) -> dict[str, Any]:
    """GetQueryExecution's ``QueryExecution``."""
    try:
        response = athena.get_query_execution(QueryExecutionId=query_id)
    except AWS_ERRORS as exc:
        raise aws_error("Athena GetQueryExecution", f"query {query_id}", exc) from None
    _record(request_ids, response)
    # the execution is read as plain JSON (its typed form has only the keys Athena documents)
    return cast("dict[str, Any]", response["QueryExecution"])


def stop_query(athena: AthenaClient, query_id: str, request_ids: list[str] | None = None) -> str | None:
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


class AthenaWait(PollSettings):
    """Waiting for a query: as :class:`PollSettings`, but a query may take up to 10 minutes by default."""

    timeout: float = Field(600.0, gt=0, le=MAX_WAIT_SECONDS,
                           description="Stop the query and fail after this many seconds.")
    initial: float = Field(0.2, ge=MIN_INITIAL_SECONDS, le=MAX_INTERVAL_SECONDS,
                           description="First interval between checks (a 2 s query is seen at once).")


def wait_for_query(
    athena: AthenaClient,
    query_id: str,
    settings: PollSettings,
    *,
    logger: Logger | None = None,
    clock: Clock | None = None,
    request_ids: list[str] | None = None,
    limit: ScanLimit | None = None,
) -> dict[str, Any]:
    """Wait until the query ends; return its SUCCEEDED execution.

    Checks at once, then at growing intervals (:func:`~tasks.kit.polling.poll`). On timeout, or when waiting is
    interrupted (an AWS error, a cancelled flow), the query is stopped so it does not run on. A FAILED or
    CANCELLED query is a StepError with Athena's reason. With a ``limit`` (the cost guard), a query whose progress
    shows more bytes scanned than it may is stopped at once, and one the workgroup's own limit cancelled, both a
    CheckFailed with the bytes and the limit.
    """
    try:
        outcome = poll(
            lambda: get_execution(athena, query_id, request_ids),
            lambda execution: state_of(execution) in TERMINAL_STATES or (limit is not None and limit.over(execution)),
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
    if limit is not None and state_of(execution) not in TERMINAL_STATES and limit.over(execution):
        raise stopped_over_limit(query_id, execution, limit, stop_query(athena, query_id, request_ids))
    if not outcome.done:
        problem = stop_query(athena, query_id, request_ids)
        stopped = "stopped it with StopQueryExecution" if problem is None else f"could not stop it: {problem}"
        raise StepError(
            f"Athena query {query_id} did not finish within {settings.timeout:g} s (still {state_of(execution)} "
            f"after {outcome.checks} checks); {stopped}",
            code=TIMED_OUT,
            details={"query_id": query_id, "state": state_of(execution), "stopped": problem is None},
        )
    if state_of(execution) != "SUCCEEDED":
        if limit is not None and workgroup_cancelled(execution):
            raise stopped_over_limit(query_id, execution, limit, None, by_workgroup=True)
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


def parse_athena_csv(lines: Iterable[str]) -> Iterator[list[str | None]]:
    """Records of an Athena CSV result file as lists of texts, None for SQL NULL.

    Athena quotes every value and writes NULL as an empty unquoted field, so ``,,`` is NULL and ``,"",`` an
    empty string. Python's csv module reads both as ``''``; it does the fast work here, and only records
    holding an empty value are looked at again by :func:`_mark_nulls`, which tells the two apart (the lines of
    the current record are kept for it).
    """
    taken: list[str] = []

    def tap() -> Iterator[str]:
        for line in lines:
            taken.append(line)
            yield line

    for fields in csv.reader(tap(), strict=True):
        if not fields or "" in fields:
            yield _mark_nulls("".join(taken), fields)
        else:
            yield list[str | None](fields)
        taken.clear()


def _body_lines(body: Any, chunk_size: int = 1 << 20) -> Iterator[str]:
    """The lines of an S3 object body, streamed, decoded, with their line ends (csv needs them): a TextIOWrapper
    (C speed) when the body is a readable stream, as botocore's StreamingBody is."""
    if isinstance(body, io.IOBase) and body.readable():
        return io.TextIOWrapper(body, encoding="utf-8", newline="")  # type: ignore[type-var]
    return (line.decode("utf-8") for line in body.iter_lines(chunk_size=chunk_size, keepends=True))


def stream_result_csv(
    s3: S3Client,
    location: str,
    columns: list[Column],
    feed: Callable[[list[list[str | None]]], None],
    *,
    request_ids: list[str] | None = None,
) -> int:
    """Stream Athena's CSV result file at ``location`` (one GetObject), handing the rows' texts (None for NULL)
    to ``feed`` as they are read, :data:`FEED_BATCH` rows at a time (nothing keeps them); returns how many rows
    there were.

    The file starts with a header row, which must name the query's columns.
    """
    bucket, key = split_s3_uri(location)
    count = 0
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
            width = len(columns)
            batch: list[list[str | None]] = []
            for values in records:
                if len(values) != width:
                    raise StepError(f"A row of the Athena result file {location} has {len(values)} values, but "
                                    f"the result has {width} columns")
                batch.append(values)
                if len(batch) >= FEED_BATCH:
                    feed(batch)
                    count += len(batch)
                    batch = []
            if batch:
                feed(batch)
                count += len(batch)
            return count
        finally:
            body.close()
    except AWS_ERRORS as exc:
        raise aws_error("S3 GetObject", location, exc) from None
    except (csv.Error, UnicodeDecodeError) as exc:
        raise StepError(f"The Athena result file {location} is not valid CSV: {exc}") from None


def read_result_csv(
    s3: Any,
    location: str,
    columns: list[Column],
    *,
    request_ids: list[str] | None = None,
) -> list[dict[str, Any]]:
    """Athena's CSV result file at ``location`` as a list of typed rows (:func:`stream_result_csv`, kept)."""
    typer = RowTyper(columns)
    rows: list[dict[str, Any]] = []
    stream_result_csv(s3, location, columns, lambda batch: rows.extend(typer(v) for v in batch),
                      request_ids=request_ids)
    return rows


def _is_header(row: Sequence[str | None], columns: list[Column]) -> bool:
    """Whether a row repeats the column names: the header Athena puts first in a SELECT's results and file.

    Decided by content rather than by statement type (as PyAthena does): SHOW and DESCRIBE results have no
    header row, and a stand-in that leaves the header out must not lose a data row.
    """
    return len(row) == len(columns) and all(v in c.header_names() for v, c in zip(row, columns))


def _page_values(page: Mapping[str, Any]) -> list[list[str | None]]:
    """A GetQueryResults page's rows as lists of texts; a datum without VarCharValue is NULL."""
    return [[d.get("VarCharValue") for d in row.get("Data", [])] for row in page.get("ResultSet", {}).get("Rows", [])]


def _csv_location(execution: dict[str, Any]) -> str | None:
    """The execution's CSV result file, if it has one (SELECTs do; SHOW and DDL write text files)."""
    location = execution.get("ResultConfiguration", {}).get("OutputLocation")
    if location and location.endswith(".csv") and execution.get("StatementType", "DML") == "DML":
        return str(location)
    return None


class RowSink(Protocol):
    """What a result is read into, in batches of rows as Athena's texts (None for NULL), e.g. checks as
    accumulators that type what they need (:class:`~tasks.athena.values.RowTyper`); ``close`` when it is dropped."""

    def feed(self, rows: list[list[str | None]]) -> None:
        """A batch of rows (at most :data:`FEED_BATCH`), in order."""

    def close(self) -> None: ...


SinkT = TypeVar("SinkT", bound=RowSink)


@dataclass
class ReadInfo:
    """How a result was read: its columns, where from (the file's URI or ``GetQueryResults``), pages, rows."""

    columns: list[Column]
    source: str
    pages: int
    rows: int


def read_results(
    athena: AthenaClient,
    s3: S3Client,
    execution: dict[str, Any],
    make_sink: Callable[[list[Column]], SinkT],
    *,
    page_size: int = PAGE_SIZE,
    request_ids: list[str] | None = None,
    logger: Logger | None = None,
) -> tuple[SinkT, ReadInfo]:
    """Every row of a SUCCEEDED query, typed by the result metadata, fed to a sink as it is read.

    The first ``GetQueryResults`` page (with the metadata) decides: one page is a small result, read from the
    paginator; more is a large one, streamed from the CSV result file. When that file cannot be read (even half
    way), the sink is closed and a new one (``make_sink`` again) is fed by paging instead. Only the sink decides
    what is kept: nothing here holds more than one page.
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
    values = _page_values(first)
    if values and _is_header(values[0], columns):
        values = values[1:]
    location = _csv_location(execution)
    if first.get("NextToken") and location:
        sink = make_sink(columns)
        try:
            count = stream_result_csv(s3, location, columns, sink.feed, request_ids=request_ids)
            log.info("Read %d rows of Athena query %s from its result file %s", count, query_id, location)
            return sink, ReadInfo(columns, location, 1, count)
        except StepError as exc:  # no permission, no file, a file that is not Athena's CSV, ...
            sink.close()
            log.warning("Could not read the result file (%s); paging GetQueryResults instead", exc.message)
    sink = make_sink(columns)
    try:
        if values:
            sink.feed(values)
        total, count = len(values), 1
        for page in pages:
            _record(request_ids, page)
            page_rows = _page_values(page)
            if page_rows:
                sink.feed(page_rows)
            total += len(page_rows)
            count += 1
    except AWS_ERRORS as exc:
        sink.close()
        raise aws_error("Athena GetQueryResults", resource, exc) from None
    except BaseException:
        sink.close()
        raise
    log.info("Read %d rows of Athena query %s in %d GetQueryResults page(s)", total, query_id, count)
    return sink, ReadInfo(columns, "GetQueryResults", count, total)


class _ListSink:
    """Keeps every row, typed, and the result's digest: :func:`fetch_results`."""

    def __init__(self, columns: list[Column]) -> None:
        self.typer = RowTyper(columns)
        self.digest = ResultDigest(columns)
        self.rows: list[dict[str, Any]] = []

    def feed(self, rows: list[list[str | None]]) -> None:
        self.rows.extend(self.typer(v) for v in rows)
        self.digest.feed(rows)

    def close(self) -> None:
        self.rows = []


def fetch_results(
    athena: Any,
    s3: Any,
    execution: dict[str, Any],
    *,
    page_size: int = PAGE_SIZE,
    request_ids: list[str] | None = None,
    logger: Logger | None = None,
) -> QueryResult:
    """All rows of a SUCCEEDED query, typed by the result metadata, in memory (:func:`read_results` into a list;
    for results of any size, read into accumulators with :func:`read_results` instead)."""
    sink, info = read_results(athena, s3, execution, _ListSink, page_size=page_size,
                              request_ids=request_ids, logger=logger)
    return QueryResult(info.columns, sink.rows, info.source, pages=info.pages, sha256=sink.digest.hexdigest())


# --------------------------------------------------------------------------------------------------------
# One query from start to typed rows
# --------------------------------------------------------------------------------------------------------


@dataclass
class QueryRun:
    """A finished query: its final execution, its typed result, how long we waited, the AWS request ids."""

    query_id: str
    execution: dict[str, Any]
    result: QueryResult
    elapsed: float
    request_ids: list[str] = field(default_factory=list)
    #: what the rows were read into, when :func:`run_query` was given ``make_sink`` (then ``result.rows`` is empty)
    sink: Any = None


def run_query(
    athena: AthenaClient,
    s3: S3Client,
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
    make_sink: Callable[[list[Column]], RowSink] | None = None,
    limit: ScanLimit | None = None,
) -> QueryRun:
    """Start, wait for (stopping it on timeout) and read one query. Call :func:`check_sql` first.

    Without ``make_sink`` the rows are kept in ``result.rows``; with it they are fed to the sink as they are read
    (:func:`read_results`) and only counted (``result.count``): results of any size in bounded memory. With a
    ``limit``, the query is stopped once it scans more than it may (see :func:`wait_for_query`).
    """
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
        athena, query_id, wait or AthenaWait(), logger=log, clock=clock, request_ids=ids, limit=limit
    )
    elapsed = clock.now() - started
    log.info("Athena query %s SUCCEEDED after %.1f s; reading its results", query_id, elapsed)
    if make_sink is None:
        result = fetch_results(athena, s3, execution, page_size=page_size, request_ids=ids, logger=log)
        return QueryRun(query_id, execution, result, elapsed, ids)
    sink, info = read_results(athena, s3, execution, make_sink, page_size=page_size, request_ids=ids, logger=log)
    result = QueryResult(info.columns, [], info.source, pages=info.pages, count=info.rows)
    return QueryRun(query_id, execution, result, elapsed, ids, sink)
