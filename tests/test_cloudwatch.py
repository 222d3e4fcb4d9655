"""CloudWatch steps (tasks/cloudwatch.py) against moto: ``expect_alarm_state`` and ``expect_log_events``."""

from __future__ import annotations

import time
from typing import Any

import pytest
from pydantic import ValidationError

from tasks.cloudwatch import MAX_LINE_CHARS, ExpectAlarmStateStep, ExpectLogEventsStep
from tasks.kit.aws import ClientFactory
from tasks.kit.errors import CHECK_FAILED, NOT_FOUND, TIMED_OUT, AwsCallError, CheckFailed, StepError
from tasks.kit.secrets import Secrets
from tests.helpers import FakeClock, run_step

ALARM = "orders-ingest-errors"
GROUP = "/aws/lambda/orders-ingest"
SECRET = "canary-LogSecret-9f8e7d"


@pytest.fixture
def cloudwatch(fresh_clients: ClientFactory) -> Any:
    cw = fresh_clients.client("cloudwatch")
    cw.put_metric_alarm(AlarmName=ALARM, MetricName="Errors", Namespace="AWS/Lambda", Statistic="Sum", Period=60,
                        EvaluationPeriods=1, Threshold=0, ComparisonOperator="GreaterThanThreshold")
    return cw


@pytest.fixture
def logs(fresh_clients: ClientFactory) -> Any:
    client = fresh_clients.client("logs")
    client.create_log_group(logGroupName=GROUP)
    client.create_log_stream(logGroupName=GROUP, logStreamName="2026/01/01/[$LATEST]abc")
    return client


def log(logs: Any, *messages: str, age: float = 0.0) -> None:
    now = int((time.time() - age) * 1000)
    logs.put_log_events(logGroupName=GROUP, logStreamName="2026/01/01/[$LATEST]abc",
                        logEvents=[{"timestamp": now + i, "message": m} for i, m in enumerate(messages)])


def alarm_step(**data: Any) -> ExpectAlarmStateStep:
    return ExpectAlarmStateStep.model_validate({"kind": "expect_alarm_state", "alarm": ALARM, "wait": {"timeout": 5},
                                                **data})


def logs_step(**data: Any) -> ExpectLogEventsStep:
    return ExpectLogEventsStep.model_validate({"kind": "expect_log_events", "log_group": GROUP,
                                               "wait": {"timeout": 5}, **data})


# ------------------------------------------------------------------------------------------------------ alarms
def test_alarm_that_goes_off_later_is_waited_for(cloudwatch: Any, fresh_clients: ClientFactory,
                                                 fake_clock: FakeClock) -> None:
    cloudwatch.set_alarm_state(AlarmName=ALARM, StateValue="OK", StateReason="all quiet")
    fake_clock.on_sleep = lambda t: cloudwatch.set_alarm_state(
        AlarmName=ALARM, StateValue="ALARM", StateReason="1 error in the last minute") if t >= 2 else None
    out = run_step(alarm_step(state="ALARM"), fresh_clients, fake_clock)
    assert out.details["state"] == "ALARM" and 2 <= fake_clock.t < 2.6
    assert "1 error in the last minute" in out.markdown and "GreaterThanThreshold" in out.markdown


def test_alarm_in_another_state_times_out_with_its_reason(cloudwatch: Any, fresh_clients: ClientFactory,
                                                          fake_clock: FakeClock) -> None:
    cloudwatch.set_alarm_state(AlarmName=ALARM, StateValue="ALARM", StateReason="3 errors")
    with pytest.raises(CheckFailed, match=r"timed out after 5 s .* in state OK; found ALARM \(3 errors\)") as info:
        run_step(alarm_step(state="OK"), fresh_clients, fake_clock)
    assert info.value.code == TIMED_OUT and info.value.details["state"] == "ALARM"


def test_alarm_that_leaves_its_state_during_the_hold_fails(cloudwatch: Any, fresh_clients: ClientFactory,
                                                           fake_clock: FakeClock) -> None:
    cloudwatch.set_alarm_state(AlarmName=ALARM, StateValue="OK", StateReason="quiet")
    fake_clock.on_sleep = lambda t: cloudwatch.set_alarm_state(
        AlarmName=ALARM, StateValue="ALARM", StateReason="boom") if t >= 3 else None
    with pytest.raises(CheckFailed, match="then no longer") as info:
        run_step(alarm_step(state="OK", hold=60), fresh_clients, fake_clock)
    assert info.value.code == CHECK_FAILED


def test_missing_alarm_fails_at_once(cloudwatch: Any, fresh_clients: ClientFactory, fake_clock: FakeClock) -> None:
    with pytest.raises(StepError, match="no such alarm") as info:
        run_step(alarm_step(alarm="nope", state="OK"), fresh_clients, fake_clock)
    assert info.value.code == NOT_FOUND and fake_clock.sleeps == []


# -------------------------------------------------------------------------------------------------- log events
def test_lines_since_the_case_began_are_counted_and_shown_masked(logs: Any, fresh_clients: ClientFactory,
                                                                 fake_clock: FakeClock) -> None:
    log(logs, "5 rows loaded (old run)", age=3600)  # before the case began: not counted
    started = time.time()
    log(logs, "START", f"5 rows loaded with token {SECRET}", "x" * 2000 + " rows loaded")
    out = run_step(logs_step(filter_pattern='"rows loaded"', matches={"min": 1}), fresh_clients, fake_clock,
                   started_at=started - 1, secrets=Secrets([SECRET]))
    assert out.details["count"] == 2
    messages = [line["message"] for line in out.details["lines"]]
    assert SECRET not in str(out.details) and SECRET not in out.markdown and "****" in messages[0]
    assert len(messages[1]) < MAX_LINE_CHARS + 30


def test_a_line_logged_later_is_waited_for(logs: Any, fresh_clients: ClientFactory, fake_clock: FakeClock) -> None:
    started = time.time()
    fake_clock.on_sleep = lambda t: log(logs, "5 rows loaded") if 1 <= t < 1.3 else None
    out = run_step(logs_step(filter_pattern='"5 rows loaded"', matches=1), fresh_clients, fake_clock, started_at=started - 1)
    assert out.details["count"] == 1 and 1 <= fake_clock.t < 1.6


def test_no_error_lines_and_an_error_fails_at_once(logs: Any, fresh_clients: ClientFactory, fake_clock: FakeClock) -> None:
    started = time.time() - 1
    log(logs, "all good")
    out = run_step(logs_step(filter_pattern="ERROR", matches=0), fresh_clients, fake_clock, started_at=started)
    assert out.details["count"] == 0
    log(logs, "ERROR could not parse line 3")
    with pytest.raises(CheckFailed, match="cannot hold any more; found 1 matching line") as info:
        run_step(logs_step(filter_pattern="ERROR", matches={"max": 0}, hold=30), fresh_clients, fake_clock,
                 started_at=started)
    assert info.value.code == CHECK_FAILED and "could not parse line 3" in (info.value.markdown or "")


def test_reading_is_bounded(logs: Any, fresh_clients: ClientFactory, fake_clock: FakeClock) -> None:
    started = time.time() - 1
    log(logs, *[f"line {i}" for i in range(30)])
    out = run_step(logs_step(max_events=10, shown_events=3), fresh_clients, fake_clock, started_at=started)
    assert out.details["count"] == 10 and out.details["capped"] and len(out.details["lines"]) == 3
    with pytest.raises(CheckFailed, match="at least 10 matching"):
        run_step(logs_step(max_events=10, matches={"max": 10}), fresh_clients, fake_clock, started_at=started)


def test_no_matching_line_times_out(logs: Any, fresh_clients: ClientFactory, fake_clock: FakeClock) -> None:
    with pytest.raises(CheckFailed, match="timed out after 5 s") as info:
        run_step(logs_step(filter_pattern="loaded"), fresh_clients, fake_clock)
    assert info.value.code == TIMED_OUT


def test_missing_log_group_fails_with_aws_code(fresh_clients: ClientFactory, fake_clock: FakeClock) -> None:
    with pytest.raises(AwsCallError, match="FilterLogEvents on log group /nope failed") as info:
        run_step(logs_step(log_group="/nope"), fresh_clients, fake_clock)
    assert info.value.code == "ResourceNotFoundException"


@pytest.mark.parametrize("model, data, message", [
    (ExpectAlarmStateStep, {"alarm": ALARM, "state": "RED"}, "'OK', 'ALARM' or 'INSUFFICIENT_DATA'"),
    (ExpectAlarmStateStep, {"alarm": "", "state": "OK"}, "an alarm name"),
    (ExpectLogEventsStep, {"log_group": "bad group!"}, "a log group name"),
    (ExpectLogEventsStep, {"log_group": GROUP, "matches": {"min": 2, "max": 1}}, "greater than max"),
    (ExpectLogEventsStep, {"log_group": GROUP, "filter_pattern": "x" * 1025}, "at most 1024"),
    (ExpectLogEventsStep, {"log_group": GROUP, "max_events": 0}, "greater than or equal to 1"),
])
def test_bad_input_is_refused_at_validation(model: Any, data: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        model.model_validate({"kind": model.model_fields["kind"].default, **data})
