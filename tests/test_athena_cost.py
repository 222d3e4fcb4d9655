"""The Athena cost guard (tasks/athena/cost.py): a query's ``max_scanned_bytes``, the case's total
(``aws.athena_max_scanned_bytes``), a query stopped while it scans too much, the workgroup's own limit.

moto always reports 0 bytes scanned: the statistics (and, for the workgroup's limit, the state) a query shows are
set by an ``after-call`` hook on GetQueryExecution, as Athena would report them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import pytest
from pydantic import ValidationError

from flows.spec.model import AwsSettings
from tasks.athena import AthenaQueryStep, run_athena_query
from tasks.athena.cost import show_bytes, workgroup_cutoff
from tasks.kit.aws import ClientFactory
from tasks.kit.errors import CHECK_FAILED, CheckFailed, StepError
from tasks.kit.step import Meter
from tests.helpers import OUTPUT, FakeClock, backend, inject, manual_states
from tests.helpers import athena_context as context

GB = 10**9
pytestmark = pytest.mark.usefixtures("athena_clients")


def report_scanned(clients: ClientFactory, scanned: Callable[[dict[str, Any]], int],
                   status: dict[str, Any] | None = None) -> None:
    """GetQueryExecution reports ``scanned(execution)`` bytes (and ``status``, when given) for every query."""

    def edit(parsed: dict[str, Any], **_: Any) -> None:
        execution = parsed["QueryExecution"]
        execution.setdefault("Statistics", {})["DataScannedInBytes"] = scanned(execution)
        if status is not None:
            execution["Status"] = {**execution["Status"], **status}

    clients.client("athena").meta.events.register("after-call.athena.GetQueryExecution", edit)


def step(**fields: Any) -> AthenaQueryStep:
    return AthenaQueryStep.model_validate({"kind": "athena_query", "sql": "SELECT 1 AS n", "output_location": OUTPUT,
                                           **fields})


def one_row() -> None:
    inject([("n", "integer")], [["1"]])


def test_sizes_are_numbers_or_units_and_never_zero() -> None:
    assert step(max_scanned_bytes="10 GB").max_scanned_bytes == 10 * GB
    assert step(max_scanned_bytes="1 GiB").max_scanned_bytes == 2**30
    assert step(max_scanned_bytes=5000).max_scanned_bytes == 5000
    assert AwsSettings.model_validate({"athena_max_scanned_bytes": "2TB"}).athena_max_scanned_bytes == 2000 * GB
    for bad, message in ((0, "more than 0 bytes"), ("ten", "could not parse"), (-1, "could not parse")):
        with pytest.raises(ValidationError, match=message):
            step(max_scanned_bytes=bad)
    assert show_bytes(2 * GB) == "2 GB (2,000,000,000 bytes)" and show_bytes(12) == "12 bytes"


def test_a_query_under_its_cap_passes_with_the_bytes_and_the_limit_in_the_evidence(
        clients: ClientFactory, fake_clock: FakeClock, tmp_path: Path) -> None:
    one_row()
    report_scanned(clients, lambda _: 3 * 1024**2)
    outcome = run_athena_query(step(max_scanned_bytes="10 MB"), context(clients, tmp_path, fake_clock))
    assert outcome.details["data_scanned_bytes"] == 3 * 1024**2 and outcome.details["max_scanned_bytes"] == 10**7
    assert outcome.details["checks"][-1] == {
        "check": "max_scanned_bytes", "passed": True, "relation": "<=", "expected": 10**7, "actual": 3 * 1024**2,
        "note": ""}
    assert "- **Data scanned**: 3.15 MB (3,145,728 bytes), at most 10 MB (10,000,000 bytes)" in outcome.markdown
    assert "| ✅ PASS | max_scanned_bytes | &lt;= 10 MB (10,000,000 bytes) | 3.15 MB (3,145,728 bytes) |" \
        in outcome.markdown


def test_a_query_that_scanned_more_than_its_cap_fails_its_step(clients: ClientFactory, fake_clock: FakeClock,
                                                                tmp_path: Path) -> None:
    one_row()
    report_scanned(clients, lambda _: 2 * GB)
    with pytest.raises(CheckFailed) as err:
        run_athena_query(step(max_scanned_bytes="1 GB", expect={"row_count": 1}),
                         context(clients, tmp_path, fake_clock))
    failure = err.value
    assert failure.code == CHECK_FAILED  # a failed check, not a crash
    assert str(failure) == ("1 of 2 checks failed: max_scanned_bytes: expected <= 1 GB (1,000,000,000 bytes), got "
                            "2 GB (2,000,000,000 bytes)")
    assert failure.details["data_scanned_bytes"] == 2 * GB and failure.details["max_scanned_bytes"] == GB
    assert "| ❌ FAIL | max_scanned_bytes | &lt;= 1 GB (1,000,000,000 bytes) | 2 GB (2,000,000,000 bytes) |" \
        in (failure.markdown or "")
    assert failure.hashed_items  # the result was read: the evidence of what the query returned stays


def test_a_query_whose_progress_shows_too_much_is_stopped_at_once(clients: ClientFactory,
                                                                   fake_clock: FakeClock, tmp_path: Path) -> None:
    manual_states(times=10**6)  # the query would run until its timeout
    seen: list[int] = []

    def growing(execution: dict[str, Any]) -> int:
        seen.append(len(seen) + 1)
        return len(seen) * 400 * 10**6  # 0.4 GB more at every check

    report_scanned(clients, growing)
    ctx = context(clients, tmp_path, fake_clock)
    with pytest.raises(CheckFailed) as err:
        run_athena_query(step(max_scanned_bytes="1 GB", wait={"timeout": 600}), ctx)
    assert len(seen) == 3 and fake_clock.t < 600  # stopped at the first check over 1 GB, not at the timeout
    [execution] = backend().executions.values()
    assert execution.status == "CANCELLED"  # StopQueryExecution reached Athena
    message = str(err.value)
    assert message.startswith(f"Athena query {execution.id} scanned 1.2 GB (1,200,000,000 bytes), more than it may "
                              "(at most 1 GB (1,000,000,000 bytes)); stopped it with StopQueryExecution")
    assert err.value.details["stopped_by"] == "pipeline-test" and err.value.details["data_scanned_bytes"] == 12 * 10**8
    assert "❌ FAIL" in (err.value.markdown or "") and ctx.scanned.total == 12 * 10**8  # Athena bills it anyway


def test_the_case_total_is_shared_by_its_queries(clients: ClientFactory, fake_clock: FakeClock,
                                                 tmp_path: Path) -> None:
    ctx = context(clients, tmp_path, fake_clock)
    ctx.scanned = Meter(3 * GB)
    report_scanned(clients, lambda _: 2 * GB)
    one_row()
    first = run_athena_query(step(), ctx)
    assert first.details["checks"][-1]["check"] == "aws.athena_max_scanned_bytes" and first.details["checks"][-1]["passed"]
    one_row()
    with pytest.raises(CheckFailed, match=r"aws.athena_max_scanned_bytes: expected <= 3 GB \(3,000,000,000 bytes\), "
                                          r"got 4 GB \(4,000,000,000 bytes\)$"):
        run_athena_query(step(), ctx)
    calls = len(backend().executions)
    with pytest.raises(CheckFailed, match="already scanned 4 GB .* this query was not started") as err:
        run_athena_query(step(), ctx)
    assert len(backend().executions) == calls  # nothing was sent to Athena
    assert err.value.details == {"case_scanned_bytes": 4 * GB, "case_max_scanned_bytes": 3 * GB}
    [check] = err.value.checks  # typed, for report.json and report.html
    assert (check.name, check.verdict, check.expected, check.actual) == (
        "aws.athena_max_scanned_bytes", "failed", "< 3 GB (3,000,000,000 bytes)",
        "4 GB (4,000,000,000 bytes) (before this query)")


def test_a_query_the_workgroup_limit_cancelled_is_a_failed_check(clients: ClientFactory,
                                                                  fake_clock: FakeClock, tmp_path: Path) -> None:
    reason = "Query cancelled! : Bytes scanned limit was exceeded"
    report_scanned(clients, lambda _: 10 * 1024**2, {"State": "CANCELLED", "StateChangeReason": reason})
    with pytest.raises(CheckFailed) as err:
        run_athena_query(step(), context(clients, tmp_path, fake_clock))
    assert str(err.value) == (f"Athena query {err.value.details['query_id']} was cancelled by its workgroup's limit on "
                              "bytes scanned per query after scanning 10.5 MB (10,485,760 bytes): " + reason)
    assert err.value.details["stopped_by"] == "workgroup"


def test_any_other_cancelled_query_is_still_an_error(clients: ClientFactory, fake_clock: FakeClock,
                                                     tmp_path: Path) -> None:
    report_scanned(clients, lambda _: 0, {"State": "CANCELLED", "StateChangeReason": "cancelled by a user"})
    with pytest.raises(StepError) as err:
        run_athena_query(step(max_scanned_bytes=10), context(clients, tmp_path, fake_clock))
    assert not isinstance(err.value, CheckFailed) and "cancelled by a user" in str(err.value)


def test_the_workgroup_limit_is_read_with_get_work_group(clients: ClientFactory) -> None:
    athena = clients.client("athena")
    athena.create_work_group(Name="capped", Configuration={"BytesScannedCutoffPerQuery": 10 * 1024**3})
    assert workgroup_cutoff(athena, "capped") == 10 * 1024**3
    assert workgroup_cutoff(athena, "primary") is None
