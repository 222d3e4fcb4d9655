"""Step ``athena_query``: run one Athena query, wait for it without running on, read typed rows, check them.

The package is split by concern; the plain functions take boto3 clients, so they are tested without Prefect:

* :mod:`tasks.athena.sql_guard`: :func:`check_sql` decides with sqlglot (Athena dialect) whether the SQL is one
  reading statement (SELECT, WITH, VALUES, SHOW, DESCRIBE, EXPLAIN); the runner calls it before any AWS call,
  the spec validator can too.
* :mod:`tasks.athena.values`: Athena's texts typed by column type (:func:`convert_value`), result columns,
  :class:`QueryResult`, :func:`json_safe`.
* :mod:`tasks.athena.client`: :func:`start_query`, :func:`wait_for_query` (with :class:`AthenaWait`; on
  timeout the query is stopped with ``StopQueryExecution``), :func:`fetch_results` (the first
  ``GetQueryResults`` page, then the CSV result file in S3 for a large result), and :func:`run_query` for
  all three.
* :mod:`tasks.athena.checks`: :func:`evaluate_checks` runs an :class:`AthenaExpect` on the rows and reports
  every check, passed or not; it needs only a :class:`QueryResult`, so other SQL step kinds can use it.
* :mod:`tasks.athena.evidence`: summary, details, markdown and console link of a finished query.
* :mod:`tasks.athena.step`: the :class:`AthenaQueryStep` model and its runner, registered with ``@step_kind``
  when this package is imported.

The names below are re-exported here, so ``from tasks.athena import ...`` works as before the split.
"""

from __future__ import annotations

from tasks.athena.checks import AthenaExpect, CheckResult, ColumnCondition, coerce_expected, evaluate_checks
from tasks.athena.client import (
    ERROR_CATEGORIES,
    PAGE_SIZE,
    TERMINAL_STATES,
    AthenaWait,
    QueryRun,
    failure_message,
    fetch_results,
    get_execution,
    parse_athena_csv,
    read_result_csv,
    run_query,
    split_s3_uri,
    start_query,
    state_of,
    stop_query,
    wait_for_query,
)
from tasks.athena.evidence import console_path, preview_table, result_digest
from tasks.athena.sql_guard import READ_KINDS, SqlCheck, check_sql, classify_sql
from tasks.athena.step import AthenaQueryStep, check_step_sql, load_sql, run_athena_query
from tasks.athena.values import (
    CONVERTERS,
    Column,
    QueryResult,
    columns_from_metadata,
    convert_value,
    json_safe,
    normalise_type,
)

__all__ = [
    "CONVERTERS",
    "ERROR_CATEGORIES",
    "PAGE_SIZE",
    "READ_KINDS",
    "TERMINAL_STATES",
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
    "console_path",
    "convert_value",
    "evaluate_checks",
    "failure_message",
    "fetch_results",
    "get_execution",
    "json_safe",
    "load_sql",
    "normalise_type",
    "parse_athena_csv",
    "preview_table",
    "read_result_csv",
    "result_digest",
    "run_athena_query",
    "run_query",
    "split_s3_uri",
    "start_query",
    "state_of",
    "stop_query",
    "wait_for_query",
]
