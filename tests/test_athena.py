"""Tests of the athena_query step: read-only check, waiting, typed results both ways, checks, the runner.

Everything runs against moto in-process (no AWS, no network) with a fake clock. Results are injected through
moto's API (``/moto-api/static/athena/query-results``, a FIFO queue taken by the next query) and states are
driven by moto's state manager (manual progression). Moto's GetQueryResults returns every row at once, so
paging is tested with botocore's Stubber and with event hooks that slice moto's answer as Athena pages it.
"""

from __future__ import annotations

import json
import logging
from datetime import date, datetime, timedelta, timezone
from datetime import time as dtime
from decimal import Decimal
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.stub import Stubber
from pydantic import ValidationError

import tasks.athena as athena_mod
import tasks.athena.evidence as athena_evidence
from tasks.athena import (
    AthenaExpect,
    AthenaQueryStep,
    Column,
    QueryResult,
    check_sql,
    classify_sql,
    coerce_expected,
    columns_from_metadata,
    convert_value,
    evaluate_checks,
    fetch_results,
    json_safe,
    parse_athena_csv,
    read_result_csv,
    result_digest,
    run_athena_query,
    run_query,
    start_query,
    wait_for_query,
)
from tasks.kit.aws import ClientFactory
from tasks.kit.errors import CHECK_FAILED, CheckFailed, StepError
from tasks.kit.polling import PollSettings
from tasks.kit.step import REGISTRY
from tests.helpers import BUCKET, OUTPUT, FakeClock, backend, inject, manual_states
from tests.helpers import athena_context as context

REGION = "us-east-1"

# --------------------------------------------------------------------------------------------------------
# Fixtures and helpers
# --------------------------------------------------------------------------------------------------------


def record_calls(client: Any, service: str) -> list[str]:
    """The operations a client sends, in order (a botocore event hook)."""
    calls: list[str] = []
    client.meta.events.register(f"before-call.{service}", lambda model, **_: calls.append(model.name))
    return calls


def page_like_athena(client: Any) -> None:
    """Make moto's GetQueryResults honour MaxResults and NextToken, as Athena does (moto returns all rows)."""

    def remember(params: dict[str, Any], context: dict[str, Any], **_: Any) -> None:
        context["page"] = (int(params.get("MaxResults", 1000)), int(params.get("NextToken") or 0))

    def cut(parsed: dict[str, Any], context: dict[str, Any], **_: Any) -> None:
        size, start = context["page"]
        rows = parsed["ResultSet"]["Rows"]
        parsed["ResultSet"]["Rows"] = rows[start:start + size]
        if start + size < len(rows):
            parsed["NextToken"] = str(start + size)

    client.meta.events.register("before-parameter-build.athena.GetQueryResults", remember)
    client.meta.events.register("after-call.athena.GetQueryResults", cut)


# A result with every type, as Athena's text, and the same rows typed
ALL_COLUMNS = [
    ("id", "integer"), ("big", "bigint"), ("small", "smallint"), ("tiny", "tinyint"),
    ("amount", "decimal"), ("ratio", "double"), ("f", "float"), ("r", "real"),
    ("ok", "boolean"), ("day", "date"), ("at", "timestamp"), ("name", "varchar"), ("tags", "array"),
]
ALL_TEXT: list[list[str | None]] = [
    ["1", "9007199254740993", "-3", "7", "12.50", "0.25", "1.5", "2.5", "true",
     "2024-01-31", "2024-01-31 12:34:56.789", "Ann, the first", "[a, b]"],
    ["2", None, None, None, None, None, None, None, "false", None, None, "", None],
]
ALL_TYPED: list[dict[str, Any]] = [
    {"id": 1, "big": 9007199254740993, "small": -3, "tiny": 7, "amount": Decimal("12.50"), "ratio": 0.25,
     "f": 1.5, "r": 2.5, "ok": True, "day": date(2024, 1, 31), "at": datetime(2024, 1, 31, 12, 34, 56, 789000),
     "name": "Ann, the first", "tags": "[a, b]"},
    {"id": 2, "big": None, "small": None, "tiny": None, "amount": None, "ratio": None, "f": None, "r": None,
     "ok": False, "day": None, "at": None, "name": "", "tags": None},
]


def typed_equal(actual: list[dict[str, Any]], expected: list[dict[str, Any]]) -> bool:
    """Equal values *and* types (1 == 1.0 == True in Python, which would hide a typing bug)."""
    return actual == expected and all(
        type(a[k]) is type(e[k]) for a, e in zip(actual, expected) for k in e
    )


def execution_of(clients: ClientFactory, query_id: str) -> dict[str, Any]:
    return clients.client("athena").get_query_execution(QueryExecutionId=query_id)["QueryExecution"]


# --------------------------------------------------------------------------------------------------------
# Read-only check
# --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("sql", "kind"),
    [
        ("SELECT 1", "SELECT"),
        ("select * from orders where day = current_date;", "SELECT"),
        ("WITH a AS (SELECT 1 AS x) SELECT x FROM a", "WITH"),
        ("SELECT 1 UNION ALL SELECT 2", "SELECT"),
        ("(SELECT 1)", "SELECT"),
        ("VALUES (1, 'a')", "VALUES"),
        ("SHOW TABLES IN sales", "SHOW"),
        ("SHOW CREATE TABLE sales.orders", "SHOW"),
        ("DESCRIBE sales.orders", "DESCRIBE"),
        ("EXPLAIN SELECT * FROM t", "EXPLAIN"),
        ("EXPLAIN (FORMAT JSON) SELECT * FROM t", "EXPLAIN"),
        ("EXPLAIN ANALYZE SELECT count(*) FROM t", "EXPLAIN ANALYZE"),
        ("-- a comment; with a semicolon\nSELECT 'a;b' AS x", "SELECT"),
    ],
)
def test_reading_statements_pass(sql: str, kind: str) -> None:
    assert check_sql(sql).kind == kind


@pytest.mark.parametrize(
    ("sql", "kind"),
    [
        ("INSERT INTO t SELECT 1", "INSERT"),
        ("WITH a AS (SELECT 1 AS x) INSERT INTO t SELECT x FROM a", "INSERT"),
        ("CREATE TABLE t2 AS SELECT * FROM t", "CREATE"),
        ("CREATE EXTERNAL TABLE t (a int) LOCATION 's3://b/p/'", "CREATE"),
        ("DROP TABLE t", "DROP"),
        ("ALTER TABLE t ADD COLUMNS (c int)", "ALTER"),
        ("DELETE FROM t WHERE a = 1", "DELETE"),
        ("UPDATE t SET a = 1", "UPDATE"),
        ("MERGE INTO t USING s ON t.a = s.a WHEN MATCHED THEN DELETE", "MERGE"),
        ("MSCK REPAIR TABLE t", "MSCK REPAIR"),
        ("UNLOAD (SELECT 1) TO 's3://b/p/' WITH (format = 'PARQUET')", "UNLOAD"),
        ("VACUUM t", "VACUUM"),
        ("EXPLAIN ANALYZE INSERT INTO t VALUES (1)", "EXPLAIN ANALYZE"),
    ],
)
def test_writing_statements_refused_unless_allowed(sql: str, kind: str) -> None:
    with pytest.raises(StepError, match=rf"Refused to run a {kind} statement.*allow_write: true"):
        check_sql(sql)
    assert check_sql(sql, allow_write=True).kind == kind


@pytest.mark.parametrize("allow_write", [False, True])
def test_multiple_statements_always_rejected(allow_write: bool) -> None:
    with pytest.raises(StepError, match="2 statements"):
        check_sql("SELECT 1; DROP TABLE t", allow_write=allow_write)
    with pytest.raises(StepError, match="3 statements"):
        check_sql("SELECT 1; SELECT 2; SELECT 3;", allow_write=allow_write)


def test_unparseable_and_empty_sql_give_clear_errors() -> None:
    with pytest.raises(StepError, match=r"could not be parsed \(line 1, col \d+: .*\).*read-only"):
        check_sql("SELEC 1 FROM t")
    with pytest.raises(StepError, match="could not be read"):
        check_sql("SELECT 'unclosed")
    with pytest.raises(StepError, match="empty"):
        check_sql("  ;  ")
    # with allow_write sqlglot's opinion does not block Athena's own
    assert check_sql("SELEC 1 FROM t", allow_write=True).parse_error


def test_placeholders_must_match_parameters() -> None:
    sql = "SELECT * FROM t WHERE day = ? AND region = ? AND note = 'why?'"
    assert check_sql(sql, parameters=["DATE '2024-01-31'", "'eu'"]).placeholders == 2
    with pytest.raises(StepError, match="2 '\\?' placeholder\\(s\\) but the step gives 1"):
        check_sql(sql, parameters=["'eu'"])


def test_plain_explain_of_a_write_only_plans_it() -> None:
    assert classify_sql("EXPLAIN INSERT INTO t VALUES (1)").read_only
    assert not classify_sql("EXPLAIN ANALYZE VERBOSE INSERT INTO t VALUES (1)").read_only


# --------------------------------------------------------------------------------------------------------
# Typing
# --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("athena_type", "text", "expected"),
    [
        ("integer", "-42", -42),
        ("bigint", "9223372036854775807", 9223372036854775807),
        ("smallint", "12", 12),
        ("tinyint", "1", 1),
        ("decimal", "0.10", Decimal("0.10")),
        ("decimal(38,9)", "123456789.123456789", Decimal("123456789.123456789")),
        ("double", "0.1", 0.1),
        ("double", "Infinity", float("inf")),
        ("float", "-1.5", -1.5),
        ("real", "3.25", 3.25),
        ("boolean", "true", True),
        ("boolean", "false", False),
        ("date", "2024-02-29", date(2024, 2, 29)),
        ("timestamp", "2024-02-29 23:59:59.123", datetime(2024, 2, 29, 23, 59, 59, 123000)),
        ("timestamp(3)", "2024-02-29 23:59:59", datetime(2024, 2, 29, 23, 59, 59)),
        ("timestamp with time zone", "2024-02-29 23:59:59.000 UTC",
         datetime(2024, 2, 29, 23, 59, 59, tzinfo=timezone.utc)),
        ("timestamp with time zone", "2024-02-29 23:59:59.000 +01:00",
         datetime(2024, 2, 29, 23, 59, 59, tzinfo=timezone(timedelta(hours=1)))),
        ("time", "12:30:00.500", dtime(12, 30, 0, 500000)),
        ("varchar", "007", "007"),
        ("char", "x", "x"),
        ("json", '{"a": 1}', '{"a": 1}'),
        ("varchar", "", ""),
        ("integer", None, None),
        ("varchar", None, None),
    ],
)
def test_values_are_typed_by_athena_type(athena_type: str, text: str | None, expected: Any) -> None:
    value = convert_value(text, athena_type)
    assert value == expected and type(value) is type(expected)


def test_double_nan_and_bad_values() -> None:
    assert convert_value("NaN", "double") != convert_value("NaN", "double")  # a real NaN
    with pytest.raises(StepError, match=r"'abc' for a integer value"):
        convert_value("abc", "integer")
    with pytest.raises(StepError, match="boolean"):
        convert_value("yes", "boolean")


def test_repeated_column_names_keep_every_value() -> None:
    columns = columns_from_metadata([{"Name": "a", "Type": "integer"}, {"Name": "a", "Type": "varchar"}])
    assert [c.name for c in columns] == ["a", "a_2"]
    assert [c.source_name for c in columns] == ["a", "a"]


# --------------------------------------------------------------------------------------------------------
# CSV parsing
# --------------------------------------------------------------------------------------------------------


def test_csv_tells_null_from_empty_string_and_unquotes() -> None:
    text = (
        '"id","note","other"\n'
        '"1",,""\n'                       # NULL, then empty string
        '"2","say ""hi""","a,b"\n'        # doubled quotes, comma in value
        '"3","two\nlines",\n'              # newline in a value, trailing NULL
        '"4","ünïcode","x"\r\n'            # CRLF line end
    )
    records = list(parse_athena_csv(text.splitlines(keepends=True)))
    assert records == [
        ["id", "note", "other"],
        ["1", None, ""],
        ["2", 'say "hi"', "a,b"],
        ["3", "two\nlines", None],
        ["4", "ünïcode", "x"],
    ]


def test_csv_single_null_column_is_an_empty_line() -> None:
    assert list(parse_athena_csv(['"x"\n', "\n", '""\n', '"v"\n'])) == [["x"], [None], [""], ["v"]]


# --------------------------------------------------------------------------------------------------------
# Waiting
# --------------------------------------------------------------------------------------------------------


def test_wait_checks_at_once_then_at_growing_intervals(
    athena_clients: ClientFactory, caplog: pytest.LogCaptureFixture
) -> None:
    manual_states(times=4)  # QUEUED for 4 checks, RUNNING for 4, then SUCCEEDED
    athena = athena_clients.client("athena")
    calls = record_calls(athena, "athena")
    query_id = start_query(athena, "SELECT 1", output_location=OUTPUT)
    fake = FakeClock()
    settings = PollSettings(timeout=600, initial=0.2, factor=1.5, max_interval=1.0, log_every=0.5)
    with caplog.at_level(logging.INFO):
        execution = wait_for_query(athena, query_id, settings, clock=fake.clock)
    assert execution["Status"]["State"] == "SUCCEEDED"
    checks = calls.count("GetQueryExecution")
    assert checks == 8
    assert len(fake.sleeps) == checks - 1  # no sleep before the first check nor after the last
    assert fake.sleeps[:4] == pytest.approx([0.2, 0.3, 0.45, 0.675])
    assert max(fake.sleeps) == 1.0  # capped
    assert "StopQueryExecution" not in calls
    assert any("Waiting for Athena query" in r.getMessage() and "QUEUED" in r.getMessage() for r in caplog.records)
    assert any("RUNNING" in r.getMessage() for r in caplog.records)


def test_timeout_stops_the_query(athena_clients: ClientFactory) -> None:
    manual_states(times=10**6)  # never leaves QUEUED
    athena = athena_clients.client("athena")
    calls = record_calls(athena, "athena")
    query_id = start_query(athena, "SELECT 1", output_location=OUTPUT)
    fake = FakeClock()
    expected = r"did not finish within 30 s \(still QUEUED.*stopped it with StopQueryExecution"
    with pytest.raises(StepError, match=expected) as err:
        wait_for_query(athena, query_id, PollSettings(timeout=30), clock=fake.clock)
    assert err.value.code == "Timeout"
    assert calls[-1] == "StopQueryExecution"
    assert backend().executions[query_id].status == "CANCELLED"  # the stop reached moto
    assert fake.t == pytest.approx(30)  # never slept past the deadline
    assert calls.count("GetQueryExecution") < 30  # growing interval: few calls


def test_failed_query_fails_the_step(athena_clients: ClientFactory) -> None:
    manual_states(times=10**6)
    athena = athena_clients.client("athena")
    query_id = start_query(athena, "SELECT 1", output_location=OUTPUT)
    fake = FakeClock(on_sleep=lambda _: setattr(backend().executions[query_id], "status", "FAILED"))
    with pytest.raises(StepError, match=rf"Athena query {query_id} FAILED: Athena gave no reason") as err:
        wait_for_query(athena, query_id, PollSettings(), clock=fake.clock)
    assert err.value.code == "FAILED"
    assert len(fake.sleeps) == 1


def test_failed_query_message_has_reason_and_error_category() -> None:
    athena = boto3.client("athena", region_name=REGION)
    stub = Stubber(athena)
    stub.add_response(
        "get_query_execution",
        {"QueryExecution": {"QueryExecutionId": "q-1", "Status": {
            "State": "FAILED",
            "StateChangeReason": "TABLE_NOT_FOUND: line 1:15: Table 'awsdatacatalog.sales.ordrs' does not exist",
            "AthenaError": {"ErrorCategory": 2, "ErrorType": 1301, "Retryable": False},
        }}},
        {"QueryExecutionId": "q-1"},
    )
    with stub, pytest.raises(StepError) as err:
        wait_for_query(athena, "q-1", PollSettings(), clock=FakeClock().clock)
    assert str(err.value) == (
        "Athena query q-1 FAILED: TABLE_NOT_FOUND: line 1:15: Table 'awsdatacatalog.sales.ordrs' does not exist "
        "(error category USER, error type 1301)"
    )
    assert err.value.details["athena_error"]["ErrorType"] == 1301


def test_query_stopped_elsewhere_is_cancelled(athena_clients: ClientFactory) -> None:
    manual_states(times=10**6)
    athena = athena_clients.client("athena")
    query_id = start_query(athena, "SELECT 1", output_location=OUTPUT)
    fake = FakeClock(on_sleep=lambda _: boto3.client("athena", region_name=REGION)
                     .stop_query_execution(QueryExecutionId=query_id))
    with pytest.raises(StepError, match=rf"{query_id} CANCELLED"):
        wait_for_query(athena, query_id, PollSettings(), clock=fake.clock)


def test_interrupted_wait_stops_the_query(athena_clients: ClientFactory) -> None:
    manual_states(times=10**6)
    athena = athena_clients.client("athena")
    query_id = start_query(athena, "SELECT 1", output_location=OUTPUT)

    def interrupt(_: float) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        wait_for_query(athena, query_id, PollSettings(), clock=FakeClock(on_sleep=interrupt).clock)
    assert backend().executions[query_id].status == "CANCELLED"


# --------------------------------------------------------------------------------------------------------
# Results
# --------------------------------------------------------------------------------------------------------


def test_start_query_passes_context_workgroup_location_and_parameters(athena_clients: ClientFactory) -> None:
    athena = athena_clients.client("athena")
    athena.create_work_group(Name="tests", Configuration={})
    query_id = start_query(
        athena, "SELECT * FROM orders WHERE day = ?", database="sales", catalog="AwsDataCatalog",
        workgroup="tests", output_location=OUTPUT, parameters=["DATE '2024-01-31'"],
    )
    execution = execution_of(athena_clients, query_id)
    assert execution["QueryExecutionContext"] == {"Catalog": "AwsDataCatalog", "Database": "sales"}
    assert execution["WorkGroup"] == "tests"
    assert execution["ExecutionParameters"] == ["DATE '2024-01-31'"]
    assert execution["ResultConfiguration"]["OutputLocation"] == f"{OUTPUT}{query_id}.csv"


def test_start_query_error_names_action_and_code(athena_clients: ClientFactory) -> None:
    with pytest.raises(StepError, match="Athena StartQueryExecution on workgroup nope failed: InvalidRequestException"):
        start_query(athena_clients.client("athena"), "SELECT 1", workgroup="nope")


def test_paginator_and_result_file_give_the_same_typed_rows(athena_clients: ClientFactory) -> None:
    athena, s3 = athena_clients.client("athena"), athena_clients.client("s3")
    inject(ALL_COLUMNS, ALL_TEXT)  # moto writes the CSV result file to the output location
    query_id = start_query(athena, "SELECT * FROM everything", output_location=OUTPUT)
    execution = execution_of(athena_clients, query_id)

    paged = fetch_results(athena, s3, execution)
    assert paged.source == "GetQueryResults"
    assert [c.type for c in paged.columns] == [t for _, t in ALL_COLUMNS]
    assert typed_equal(paged.rows, ALL_TYPED)  # header row dropped, nulls and "" kept apart

    from_file = read_result_csv(s3, execution["ResultConfiguration"]["OutputLocation"], paged.columns)
    assert typed_equal(from_file, ALL_TYPED)


def _many_rows(count: int) -> list[list[str | None]]:
    return [[str(i), f"{i}.5", None if i % 3 == 0 else f"name {i}", "" if i % 4 == 0 else "x"] for i in range(count)]


MANY_COLUMNS = [("n", "integer"), ("amount", "decimal"), ("name", "varchar"), ("flag", "varchar")]


def test_large_result_is_streamed_from_the_result_file(athena_clients: ClientFactory) -> None:
    athena, s3 = athena_clients.client("athena"), athena_clients.client("s3")
    page_like_athena(athena)
    inject(MANY_COLUMNS, _many_rows(25))
    query_id = start_query(athena, "SELECT * FROM many", output_location=OUTPUT)
    execution = execution_of(athena_clients, query_id)
    athena_calls, s3_calls = record_calls(athena, "athena"), record_calls(s3, "s3")

    from_file = fetch_results(athena, s3, execution, page_size=10)
    assert from_file.source == execution["ResultConfiguration"]["OutputLocation"]
    assert athena_calls == ["GetQueryResults"] and s3_calls == ["GetObject"]  # one page for the types, one GET

    # the same result paged through (no result file): 3 pages of 10 rows, header only on the first
    paged = fetch_results(athena, s3, {**execution, "ResultConfiguration": {}}, page_size=10)
    assert paged.source == "GetQueryResults" and paged.pages == 3
    assert len(from_file.rows) == 25
    assert typed_equal(from_file.rows, paged.rows)
    assert from_file.sha256 == paged.sha256 is not None  # one digest either way
    assert paged.sha256 == result_digest(paged.columns, _many_rows(25))  # of Athena's texts, NULLs as null
    assert from_file.rows[3] == {"n": 3, "amount": Decimal("3.5"), "name": None, "flag": "x"}
    assert from_file.rows[4]["flag"] == ""


def test_seeded_result_file_with_quotes_newlines_and_nulls(athena_clients: ClientFactory) -> None:
    """A result file as Athena writes it (moto's own writer does not escape quotes), seeded where the query's
    output location says."""
    athena, s3 = athena_clients.client("athena"), athena_clients.client("s3")
    page_like_athena(athena)
    columns = [("id", "integer"), ("note", "varchar"), ("at", "timestamp")]
    inject(columns, [["1", "a", None], ["2", "b", None]])
    query_id = start_query(athena, "SELECT * FROM notes", output_location=OUTPUT)
    execution = execution_of(athena_clients, query_id)
    s3.put_object(
        Bucket=BUCKET, Key=f"results/{query_id}.csv",
        Body='"id","note","at"\n"1","say ""hi"", twice",\n"2","",\n"3","two\nlines","2024-01-01 00:00:00.000"\n',
    )
    result = fetch_results(athena, s3, execution, page_size=2)
    assert result.source.endswith(f"{query_id}.csv")
    assert result.rows == [
        {"id": 1, "note": 'say "hi", twice', "at": None},
        {"id": 2, "note": "", "at": None},
        {"id": 3, "note": "two\nlines", "at": datetime(2024, 1, 1)},
    ]


def test_unreadable_result_file_falls_back_to_paging(athena_clients: ClientFactory, caplog: pytest.LogCaptureFixture) -> None:
    athena, s3 = athena_clients.client("athena"), athena_clients.client("s3")
    page_like_athena(athena)
    inject(MANY_COLUMNS, _many_rows(5))
    query_id = start_query(athena, "SELECT * FROM many", output_location="s3://no-such-bucket/results/")
    execution = execution_of(athena_clients, query_id)
    with caplog.at_level(logging.WARNING):
        result = fetch_results(athena, s3, execution, page_size=2)
    assert result.source == "GetQueryResults" and result.pages == 3 and len(result.rows) == 5
    assert "NoSuchBucket" in caplog.text and "paging GetQueryResults instead" in caplog.text


def test_result_file_that_is_not_athena_csv_falls_back_to_paging(athena_clients: ClientFactory) -> None:
    athena, s3 = athena_clients.client("athena"), athena_clients.client("s3")
    page_like_athena(athena)
    inject(MANY_COLUMNS, _many_rows(5))
    query_id = start_query(athena, "SELECT * FROM many", output_location=OUTPUT)
    s3.put_object(Bucket=BUCKET, Key=f"results/{query_id}.csv", Body='"n","amount","name","flag"\n"1","2"x,\n')
    result = fetch_results(athena, s3, execution_of(athena_clients, query_id), page_size=2)
    assert result.source == "GetQueryResults" and len(result.rows) == 5


def test_result_file_with_other_columns_is_an_error(athena_clients: ClientFactory) -> None:
    s3 = athena_clients.client("s3")
    s3.put_object(Bucket=BUCKET, Key="x.csv", Body='"a","b"\n"1","2"\n')
    with pytest.raises(StepError, match=r"starts with \['a', 'b'\], not the header row"):
        read_result_csv(s3, f"s3://{BUCKET}/x.csv", [Column("a", "integer", "a"), Column("c", "integer", "c")])
    s3.put_object(Bucket=BUCKET, Key="bad.csv", Body='"a"\n"1"x\n')
    with pytest.raises(StepError, match="bad.csv is not valid CSV"):
        read_result_csv(s3, f"s3://{BUCKET}/bad.csv", [Column("a", "integer", "a")])
    with pytest.raises(StepError, match="S3 GetObject on s3://athena-results/missing.csv failed: NoSuchKey"):
        read_result_csv(s3, f"s3://{BUCKET}/missing.csv", [Column("a", "integer", "a")])


def _page(rows: list[list[str | None]], columns: list[tuple[str, str]], token: str | None = None) -> dict[str, Any]:
    page: dict[str, Any] = {"ResultSet": {
        "Rows": [{"Data": [{} if v is None else {"VarCharValue": v} for v in row]} for row in rows],
        "ResultSetMetadata": {"ColumnInfo": [{"Name": n, "Label": n, "Type": t} for n, t in columns]},
    }}
    if token:
        page["NextToken"] = token
    return page


def test_paginator_pages_through_athena_pages_with_stubber() -> None:
    athena = boto3.client("athena", region_name=REGION)
    columns = [("n", "bigint"), ("label", "varchar")]
    stub = Stubber(athena)
    stub.add_response("get_query_results", _page([["n", "label"], ["1", "one"], ["2", None]], columns, "t1"),
                      {"QueryExecutionId": "q-1", "MaxResults": 1000})
    stub.add_response("get_query_results", _page([["3", "n"]], columns),
                      {"QueryExecutionId": "q-1", "MaxResults": 1000, "NextToken": "t1"})
    execution = {"QueryExecutionId": "q-1", "StatementType": "DML"}  # no result file: page through
    with stub:
        result = fetch_results(athena, None, execution)
    stub.assert_no_pending_responses()
    assert result.pages == 2
    assert result.rows == [{"n": 1, "label": "one"}, {"n": 2, "label": None}, {"n": 3, "label": "n"}]


def test_show_results_have_no_header_row() -> None:
    athena = boto3.client("athena", region_name=REGION)
    stub = Stubber(athena)
    stub.add_response("get_query_results", _page([["orders"], ["customers"]], [("tab_name", "varchar")]),
                      {"QueryExecutionId": "q-2", "MaxResults": 1000})
    with stub:
        result = fetch_results(athena, None, {"QueryExecutionId": "q-2", "StatementType": "UTILITY"})
    assert result.rows == [{"tab_name": "orders"}, {"tab_name": "customers"}]


def test_run_query_returns_rows_facts_and_request_ids(athena_clients: ClientFactory) -> None:
    manual_states(times=1)
    inject(MANY_COLUMNS, _many_rows(3))
    fake = FakeClock()
    run = run_query(athena_clients.client("athena"), athena_clients.client("s3"), "SELECT * FROM many",
                    output_location=OUTPUT, clock=fake.clock)
    assert run.execution["Status"]["State"] == "SUCCEEDED"
    assert len(run.result.rows) == 3
    assert run.elapsed == pytest.approx(sum(fake.sleeps)) and run.elapsed > 0
    assert len(run.request_ids) >= 4 and all(run.request_ids)


# --------------------------------------------------------------------------------------------------------
# Checks
# --------------------------------------------------------------------------------------------------------

CHECK_COLUMNS = [Column("id", "integer", "id"), Column("amount", "decimal", "amount"),
                 Column("day", "date", "day"), Column("name", "varchar", "name")]
CHECK_ROWS = [
    {"id": 1, "amount": Decimal("10.50"), "day": date(2024, 1, 31), "name": "a"},
    {"id": 2, "amount": Decimal("0.10"), "day": date(2024, 2, 1), "name": None},
    {"id": 3, "amount": None, "day": date(2024, 2, 2), "name": "c"},
]
RESULT = QueryResult(CHECK_COLUMNS, CHECK_ROWS, "GetQueryResults", 1)


def outcome(expect: dict[str, Any], result: QueryResult = RESULT) -> list[tuple[str, bool]]:
    return [(c.check, c.passed) for c in evaluate_checks(AthenaExpect.model_validate(expect), result)]


@pytest.mark.parametrize(
    ("expect", "passed"),
    [
        ({"row_count": 3}, True), ({"row_count": 2}, False),
        ({"min_rows": 3}, True), ({"min_rows": 4}, False),
        ({"max_rows": 3}, True), ({"max_rows": 2}, False),
        ({"columns": ["id", "amount", "day", "name"]}, True), ({"columns": ["id", "name"]}, False),
        # exact rows, any order; values compared as the column's type (decimal, date from text)
        ({"rows": [{"id": 3, "amount": None}, {"id": 1, "amount": 10.5}, {"id": 2, "amount": "0.1"}]}, True),
        ({"rows": [{"id": 1, "amount": 10.5}, {"id": 2, "amount": 0.1}]}, False),  # one row unexpected
        ({"rows": [{"id": 1, "day": "2024-01-31"}, {"id": 2, "day": "2024-02-01"},
                   {"id": 3, "day": date(2024, 2, 2)}]}, True),
        ({"rows": [{"id": 1, "day": "2024-01-30"}, {"id": 2, "day": "2024-02-01"},
                   {"id": 3, "day": "2024-02-02"}]}, False),
        # contained rows
        ({"rows": [{"name": "c"}, {"name": None}], "rows_match": "contains"}, True),
        ({"rows": [{"name": "c"}, {"name": "zz"}], "rows_match": "contains"}, False),
        ({"rows": [{"name": "a"}, {"name": "a"}], "rows_match": "contains"}, False),  # duplicates count
        # ordered
        ({"rows": [{"id": 1}, {"id": 2}, {"id": 3}], "ordered": True}, True),
        ({"rows": [{"id": 2}, {"id": 1}, {"id": 3}], "ordered": True}, False),
        ({"rows": [{"id": 1}, {"id": 3}], "ordered": True, "rows_match": "contains"}, True),
        ({"rows": [{"id": 3}, {"id": 1}], "ordered": True, "rows_match": "contains"}, False),
        ({"rows": [{"nope": 1}]}, False),
        # first row
        ({"first_row": {"id": {"equals": 1}}}, True), ({"first_row": {"id": {"equals": 2}}}, False),
        ({"first_row": {"amount": {"equals": "10.5"}}}, True), ({"first_row": {"amount": {"equals": 10.51}}}, False),
        ({"first_row": {"amount": {"gt": 10}}}, True), ({"first_row": {"amount": {"gt": 10.5}}}, False),
        ({"first_row": {"amount": {"ge": 10.5}}}, True), ({"first_row": {"amount": {"ge": 10.51}}}, False),
        ({"first_row": {"id": {"lt": 2}}}, True), ({"first_row": {"id": {"lt": 1}}}, False),
        ({"first_row": {"id": {"le": 1}}}, True), ({"first_row": {"id": {"le": 0}}}, False),
        ({"first_row": {"day": {"ge": "2024-01-01", "lt": "2024-02-01"}}}, True),
        ({"first_row": {"day": {"gt": "2024-01-31"}}}, False),
        ({"first_row": {"name": {"not_null": True}}}, True),
        ({"first_row": {"name": {"is_null": True}}}, False),
        ({"first_row": {"id": {"gt": "abc"}}}, False),  # cannot be compared: fails, does not crash
        ({"first_row": {"missing": {"not_null": True}}}, False),
    ],
)
def test_each_check_passes_or_fails(expect: dict[str, Any], passed: bool) -> None:
    results = outcome(expect)
    assert results and all(p == passed for _, p in results), results


def test_duplicate_rows_count_in_exact_rows() -> None:
    twice = QueryResult(CHECK_COLUMNS, [CHECK_ROWS[0], CHECK_ROWS[0]], "GetQueryResults", 1)
    assert outcome({"rows": [{"id": 1}]}, twice) == [("rows (exact, any order)", False)]
    assert outcome({"rows": [{"id": 1}, {"id": 1}]}, twice) == [("rows (exact, any order)", True)]
    assert outcome({"rows": [{"id": 1}], "rows_match": "contains"}, twice) == [("rows (contains, any order)", True)]


def test_null_and_empty_results_fail_first_row_checks() -> None:
    empty = QueryResult(CHECK_COLUMNS, [], "GetQueryResults", 1)
    checks = evaluate_checks(AthenaExpect.model_validate({"first_row": {"id": {"equals": 1, "not_null": True}}}), empty)
    assert [(c.passed, c.actual) for c in checks] == [(False, "no rows"), (False, "no rows")]
    second_first = QueryResult(CHECK_COLUMNS, CHECK_ROWS[2:], "GetQueryResults", 1)
    [check] = evaluate_checks(AthenaExpect.model_validate({"first_row": {"amount": {"gt": 0}}}), second_first)
    assert not check.passed and "cannot compare NoneType" in check.note


def test_failed_checks_say_which_with_expected_and_actual() -> None:
    expect = AthenaExpect.model_validate({
        "row_count": 2, "max_rows": 10,
        "rows": [{"id": 1}, {"id": 4}],
        "first_row": {"amount": {"lt": 5}},
    })
    second_first = QueryResult(CHECK_COLUMNS, CHECK_ROWS[1:] + CHECK_ROWS[:1], "GetQueryResults", 1)
    lines = [c.line() for c in evaluate_checks(expect, RESULT)]
    lines += [c.line() for c in evaluate_checks(
        AthenaExpect.model_validate({"first_row": {"name": {"not_null": True}}}), second_first)]
    assert lines == [
        "❌ FAIL row_count: expected 2, got 3",
        "✅ PASS max_rows: expected <= 10, got 3",
        "❌ FAIL rows (exact, any order): expected [{'id': 1}, {'id': 4}], got {'missing': [{'id': 4}], "
        "'unexpected': [{'id': 2}, {'id': 3}]} (1 expected row(s) missing, 2 unexpected row(s))",
        "❌ FAIL first_row.amount: expected < 5, got 10.50",  # the relation once, not 'amount <: expected <'
        "❌ FAIL first_row.name not_null: expected not NULL, got NULL",
    ]


def test_coerce_expected_to_column_type() -> None:
    assert coerce_expected(1.1, "decimal(10,2)") == Decimal("1.1")
    assert coerce_expected("2024-01-31 10:00:00", "timestamp") == datetime(2024, 1, 31, 10)
    assert coerce_expected(date(2024, 1, 31), "timestamp") == datetime(2024, 1, 31)
    assert coerce_expected(3.0, "bigint") == 3 and type(coerce_expected(3.0, "bigint")) is int
    assert coerce_expected(True, "varchar") == "true"
    assert coerce_expected("not a number", "integer") == "not a number"  # left as is: simply does not match


# --------------------------------------------------------------------------------------------------------
# The spec model
# --------------------------------------------------------------------------------------------------------


def test_model_defaults_registration_and_schema() -> None:
    step = AthenaQueryStep.model_validate({"kind": "athena_query", "sql": "SELECT 1"})
    assert (step.catalog, step.workgroup, step.allow_write) == ("AwsDataCatalog", "primary", False)
    assert step.preview_rows == 20
    assert (step.wait.timeout, step.wait.initial) == (600.0, 0.2)
    tuned = AthenaQueryStep.model_validate({"kind": "athena_query", "sql": "SELECT 1", "wait": {"max_interval": 5}})
    assert (tuned.wait.timeout, tuned.wait.max_interval) == (600.0, 5)  # the other defaults stay the Athena ones
    assert REGISTRY["athena_query"].model is AthenaQueryStep and REGISTRY["athena_query"].run is run_athena_query
    assert AthenaQueryStep.template_files == frozenset({"sql_file"})
    schema = AthenaQueryStep.model_json_schema()
    assert "allow_write" in schema["properties"] and schema["properties"]["allow_write"]["description"]
    assert schema["$defs"]["AthenaExpect"]["properties"]["rows_match"]["description"]


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({}, "exactly one of sql and sql_file"),
        ({"sql": "SELECT 1", "sql_file": "q.sql"}, "exactly one of sql and sql_file"),
        ({"sql": "   "}, "sql is empty"),
        ({"sql": "SELECT 1", "databse": "x"}, "Extra inputs are not permitted"),
        ({"sql": "SELECT 1", "expect": {"row_cont": 1}}, "Extra inputs are not permitted"),
        ({"sql": "SELECT 1", "expect": {"min_rows": 5, "max_rows": 1}}, "greater than max_rows"),
        ({"sql": "SELECT 1", "expect": {"rows": [{"a": 1}, {"b": 2}]}}, "same columns"),
        ({"sql": "SELECT 1", "expect": {"first_row": {"a": {}}}}, "at least one of"),
        ({"sql": "SELECT 1", "expect": {"first_row": {"a": {"is_null": True, "not_null": True}}}}, "cannot both"),
        ({"sql": "SELECT 1", "output_location": "bucket/prefix"}, "an S3 URI"),
        ({"sql": "SELECT 1", "wait": {"timeout": 0}}, "greater than 0"),
    ],
)
def test_model_rejects_bad_specs(data: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        AthenaQueryStep.model_validate({"kind": "athena_query", **data})


# --------------------------------------------------------------------------------------------------------
# The runner
# --------------------------------------------------------------------------------------------------------


def test_runner_success_evidence(athena_clients: ClientFactory, fake_clock: FakeClock, tmp_path: Path) -> None:
    manual_states(times=2)
    inject(ALL_COLUMNS, ALL_TEXT)
    (tmp_path / "q.sql").write_text("SELECT * FROM {{ table }} WHERE id > ? ORDER BY id\n")
    step = AthenaQueryStep.model_validate({
        "kind": "athena_query", "name": "orders are there", "sql_file": "q.sql", "parameters": ["0"],
        "database": "sales", "output_location": OUTPUT, "preview_rows": 1,
        "expect": {"row_count": 2, "first_row": {"amount": {"equals": 12.5}, "name": {"not_null": True}}},
    })
    result = run_athena_query(step, context(athena_clients, tmp_path, fake_clock))

    execution = backend().executions[result.details["query_id"]]
    assert execution.query == "SELECT * FROM orders WHERE id > ? ORDER BY id\n"  # the file, rendered
    assert execution.execution_parameters == ["0"]
    assert result.summary.startswith("2 rows, 3 checks passed (") and result.summary.endswith(" s, 0 B scanned)")
    details = result.details
    assert details["sql"] == execution.query and details["state"] == "SUCCEEDED"
    assert details["workgroup"] == "primary" and details["row_count"] == 2
    for key in ("engine_time_ms", "queue_time_ms", "data_scanned_bytes"):
        assert key in details
    assert json.loads(json.dumps(details)) == details  # JSON-safe
    assert details["preview"] == [json_safe(ALL_TYPED[0])] and details["preview"][0]["amount"] == "12.50"
    assert [c["passed"] for c in details["checks"]] == [True, True, True]
    assert result.tables == {"preview": details["preview"]}
    assert "```sql\nSELECT * FROM orders WHERE id > ? ORDER BY id\n```" in result.markdown
    assert "- **Data scanned**: 0 B" in result.markdown and "| ✅ PASS | row_count | 2 | 2 |" in result.markdown
    assert result.markdown.index("**Checks**") < result.markdown.index("```sql")  # the readable checks first
    assert "| 1 | 9007199254740993 |" in result.markdown and "Ann, the first" in result.markdown
    assert result.request_ids
    # in-process moto answers at AWS's own endpoint, so the console link is made
    query_id = details["query_id"]
    assert [link.url for link in result.links] == [
        f"https://us-east-1.console.aws.amazon.com/athena/home?region=us-east-1#/query-editor/history/{query_id}"
    ]


def test_runner_makes_no_console_link_for_an_emulator(monkeypatch: pytest.MonkeyPatch) -> None:
    run = athena_mod.QueryRun("q-9", {"Status": {"State": "SUCCEEDED"}}, RESULT, 0.5)
    step = AthenaQueryStep.model_validate({"kind": "athena_query", "sql": "SELECT 1"})
    outcome_moto = athena_evidence.query_outcome("SELECT 1", step, run, [], REGION, "http://localhost:5000")
    outcome_aws = athena_evidence.query_outcome("SELECT 1", step, run, [], REGION, "https://athena.us-east-1.amazonaws.com")
    assert outcome_moto.links == [] and len(outcome_aws.links) == 1
    assert outcome_moto.summary == "3 rows (0.5 s, 0 B scanned)"


def test_runner_refuses_writes_before_any_call(athena_clients: ClientFactory, fake_clock: FakeClock, tmp_path: Path) -> None:
    athena = athena_clients.client("athena")
    calls = record_calls(athena, "athena")
    step = AthenaQueryStep.model_validate({"kind": "athena_query", "sql": "DROP TABLE sales.orders"})
    with pytest.raises(StepError, match="Refused to run a DROP statement"):
        run_athena_query(step, context(athena_clients, tmp_path, fake_clock))
    assert calls == [] and backend().executions == {}


def test_runner_rejects_multiple_statements_before_any_call(athena_clients: ClientFactory, fake_clock: FakeClock,
                                                            tmp_path: Path) -> None:
    step = AthenaQueryStep.model_validate({"kind": "athena_query", "sql": "SELECT 1; SELECT 2", "allow_write": True})
    with pytest.raises(StepError, match="2 statements"):
        run_athena_query(step, context(athena_clients, tmp_path, fake_clock))
    assert backend().executions == {}


def test_runner_allows_writes_when_asked(athena_clients: ClientFactory, fake_clock: FakeClock, tmp_path: Path) -> None:
    step = AthenaQueryStep.model_validate(
        {"kind": "athena_query", "sql": "MSCK REPAIR TABLE sales.orders", "allow_write": True,
         "output_location": OUTPUT}
    )
    result = run_athena_query(step, context(athena_clients, tmp_path, fake_clock))
    assert result.summary.startswith("0 rows (")
    assert [e.query for e in backend().executions.values()] == ["MSCK REPAIR TABLE sales.orders"]


def test_runner_reports_all_failing_checks(athena_clients: ClientFactory, fake_clock: FakeClock, tmp_path: Path) -> None:
    inject(ALL_COLUMNS, ALL_TEXT)
    step = AthenaQueryStep.model_validate({
        "kind": "athena_query", "sql": "SELECT * FROM orders", "output_location": OUTPUT,
        "expect": {"row_count": 3, "min_rows": 1, "columns": ["id"], "first_row": {"ok": {"equals": False}}},
    })
    with pytest.raises(CheckFailed) as err:
        run_athena_query(step, context(athena_clients, tmp_path, fake_clock))
    message = str(err.value)
    assert message.startswith("3 of 4 checks failed: row_count: expected 3, got 2; columns: expected ['id'], got [")
    assert message.endswith("first_row.ok: expected == False, got True")
    assert err.value.code == CHECK_FAILED
    assert [c["passed"] for c in err.value.details["checks"]] == [False, True, False, False]
    assert "| ❌ FAIL | row_count | 3 | 2 |" in (err.value.markdown or "") and err.value.details["query_id"]
    [item] = err.value.hashed_items  # the failed query's result still goes into the evidence pack
    assert item.kind == "query_result" and item.sha256 == err.value.details["result_sha256"] and item.rows == 2


def test_runner_timeout_stops_the_query(athena_clients: ClientFactory, fake_clock: FakeClock, tmp_path: Path) -> None:
    manual_states(times=10**6)
    step = AthenaQueryStep.model_validate(
        {"kind": "athena_query", "sql": "SELECT 1", "output_location": OUTPUT, "wait": {"timeout": 5}}
    )
    with pytest.raises(StepError, match="did not finish within 5 s"):
        run_athena_query(step, context(athena_clients, tmp_path, fake_clock))
    [execution] = backend().executions.values()
    assert execution.status == "CANCELLED"
    assert fake_clock.t == pytest.approx(5)
