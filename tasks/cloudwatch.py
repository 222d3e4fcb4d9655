"""CloudWatch steps, read-only: ``expect_alarm_state`` (an alarm is OK / ALARM / INSUFFICIENT_DATA within a
time, DescribeAlarms) and ``expect_log_events`` (lines in a log group since the case began that match a filter
pattern, FilterLogEvents, counted: e.g. at least one "5 rows loaded", or none matching ERROR).

Log events are read through every page, bounded (``max_events`` per look); the matching lines are the
evidence, masked with the run's secrets (:mod:`tasks.kit.secrets`), at most ``shown_events`` of them, each cut to
``MAX_LINE_CHARS`` characters.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Annotated, Any, Literal
from urllib.parse import quote

from pydantic import Field

from tasks.kit import markdown as md
from tasks.kit.console_links import console_link
from tasks.kit.errors import AWS_ERRORS, NOT_FOUND, StepError, aws_error
from tasks.kit.iam import Arns, Footprint
from tasks.kit.polling import MAX_WAIT_SECONDS, PollSettings
from tasks.kit.secrets import redact
from tasks.kit.step import StepBase, StepContext, StepOutcome, step_kind, template_aware
from tasks.kit.watch import Count, CountSpec, Watched, as_count, hold_field, unmet, watch

if TYPE_CHECKING:
    from types_boto3_cloudwatch import CloudWatchClient
    from types_boto3_logs import CloudWatchLogsClient

AlarmState = Literal["OK", "ALARM", "INSUFFICIENT_DATA"]
#: how many characters of one log line the evidence keeps
MAX_LINE_CHARS = 500

AlarmName = Annotated[str, template_aware(r"[^\x00-\x1f]{1,255}", "an alarm name is 1 to 255 characters")]
LogGroupName = Annotated[str, template_aware(r"[.\-_/#A-Za-z0-9]{1,512}", "a log group name is 1 to 512 letters, "
                                             "digits and '.', '-', '_', '/', '#'")]


# ------------------------------------------------------------------------------------------------------ alarms
class ExpectAlarmStateStep(StepBase):
    """Wait until a CloudWatch alarm (metric or composite) is in a state, e.g. ALARM after a bad file."""

    kind: Literal["expect_alarm_state"] = "expect_alarm_state"
    alarm: AlarmName = Field(..., description="The alarm's name.")
    state: AlarmState = Field(..., description="The state it must reach: OK, ALARM or INSUFFICIENT_DATA.")
    hold: float = hold_field("the state")
    wait: PollSettings = Field(default_factory=PollSettings, description="How long and how often to look.")

    def wanted(self) -> str:
        return f"CloudWatch alarm {self.alarm} in state {self.state}"


def describe_alarm(client: CloudWatchClient, name: str) -> dict[str, Any]:
    """The alarm (metric or composite) as DescribeAlarms gives it; a missing alarm raises NotFound."""
    try:
        found = client.describe_alarms(AlarmNames=[name], AlarmTypes=["MetricAlarm", "CompositeAlarm"])
    except AWS_ERRORS as exc:
        raise aws_error("CloudWatch DescribeAlarms", f"alarm {name}", exc) from None
    alarms = [*found.get("MetricAlarms", []), *found.get("CompositeAlarms", [])]
    if not alarms:
        raise StepError(f"CloudWatch DescribeAlarms on alarm {name}: no such alarm in this account and region",
                        code=NOT_FOUND)
    return dict(alarms[0])


def _alarm_state(alarm: dict[str, Any]) -> str:
    return f"{alarm.get('StateValue')} ({alarm.get('StateReason', '')})"


ALARM_FACTS = ("AlarmName", "StateValue", "StateReason", "StateUpdatedTimestamp", "Namespace", "MetricName",
               "Statistic", "ComparisonOperator", "Threshold", "Period", "EvaluationPeriods", "AlarmRule",
               "ActionsEnabled")


def expect_alarm_state_footprint(step: ExpectAlarmStateStep, arns: Arns) -> Footprint:
    fp = Footprint().read("CloudWatch alarm", step.alarm, f"state {step.state}")
    return fp.need(arns.cloudwatch_alarm(step.alarm), "cloudwatch:DescribeAlarms")


@step_kind(ExpectAlarmStateStep, footprint=expect_alarm_state_footprint)
def run_expect_alarm_state(step: ExpectAlarmStateStep, ctx: StepContext) -> StepOutcome:
    """Wait for the alarm's state; the evidence shows its state, reason, metric and threshold."""
    client = ctx.clients.client("cloudwatch")
    watched = watch(lambda: describe_alarm(client, step.alarm), lambda a: a.get("StateValue") == step.state,
                    step.wait, hold=step.hold, describe=_alarm_state, what=step.wanted(), logger=ctx.logger,
                    clock=ctx.clock)
    alarm = watched.value
    facts = {k: alarm[k] for k in ALARM_FACTS if k in alarm}
    details = {"alarm": step.alarm, "state": alarm.get("StateValue"), "expected_state": step.state,
               **{k: str(v) for k, v in facts.items()}, "checks": watched.checks,
               "waited_seconds": round(watched.waited, 3), "held_seconds": round(watched.held, 3)}
    markdown = "\n\n".join([
        f"Expected alarm {md.code(step.alarm)} in state {md.code(step.state)}; it was "
        f"{md.code(alarm.get('StateValue'))} {md.text(watched.timing())}.",
        md.table(["", ""], [[k, md.code(v)] for k, v in facts.items()])])
    if not watched.met:
        raise unmet(watched, step.wanted(), _alarm_state(alarm), details=details, markdown=markdown, check="state")
    link = console_link(ctx, "cloudwatch", f"cloudwatch/home?region={{region}}#alarmsV2:alarm/{quote(step.alarm)}",
                        f"CloudWatch alarm {step.alarm}")
    return StepOutcome(summary=f"alarm {step.alarm} is {step.state} {watched.timing()}", details=details,
                       markdown=markdown, links=link,
                       checks=[watched.record("state", step.wanted(), _alarm_state(alarm))])


# -------------------------------------------------------------------------------------------------- log events
class ExpectLogEventsStep(StepBase):
    """Count the lines of a log group, since the case began, that match a filter pattern."""

    kind: Literal["expect_log_events"] = "expect_log_events"
    log_group: LogGroupName = Field(..., description="Log group name, e.g. /aws/lambda/orders-ingest.")
    filter_pattern: str = Field("", max_length=1024, description="CloudWatch Logs filter pattern, e.g. "
                                "'\"5 rows loaded\"' (a phrase), 'ERROR', '?ERROR ?Exception'; empty: every line.")
    log_stream_prefix: str | None = Field(None, min_length=1, max_length=512, description="Only streams whose "
                                          "name starts with this.")
    matches: CountSpec = Field(default_factory=lambda: Count(min=1), description="How many matching lines: a "
                               "number (exactly), or {min: 1}, {max: 0} (none). Default: at least 1.")
    lookback: float = Field(0.0, ge=0, le=MAX_WAIT_SECONDS, description="Also look at lines up to this many "
                            "seconds before the case began (clock skew, or a pipeline started just before).")
    max_events: int = Field(1000, ge=1, le=100_000, description="Read at most this many matching lines per look "
                            "(bounded time and memory); more count as more than the maximum.")
    shown_events: int = Field(20, ge=0, le=200, description="How many matching lines the evidence shows (each "
                              "cut to 500 characters, masked).")
    hold: float = hold_field("the count")
    wait: PollSettings = Field(default_factory=PollSettings, description="How long and how often to look.")

    def count(self) -> Count:
        return as_count(self.matches)

    def wanted(self) -> str:
        pattern = f"matching {self.filter_pattern!r}" if self.filter_pattern else "(any)"
        return f"{self.count().describe()} line(s) {pattern} in log group {self.log_group} since the case began"


@dataclass
class LogLines:
    """One look at the log group: how many lines matched (up to the bound) and the first few of them."""

    count: int
    lines: list[dict[str, Any]] = field(default_factory=list)
    #: True when reading stopped at max_events (there may be more)
    capped: bool = False

    def describe(self) -> str:
        return f"{'at least ' if self.capped else ''}{self.count} matching line(s)"


def _line(event: dict[str, Any]) -> dict[str, Any]:
    message = str(event.get("message", "")).rstrip("\n")
    if len(message) > MAX_LINE_CHARS:
        message = message[:MAX_LINE_CHARS] + f"… [{len(message)} characters]"
    stamp = datetime.fromtimestamp(int(event.get("timestamp", 0)) / 1000, timezone.utc)
    return {"time": stamp.isoformat(timespec="milliseconds"), "stream": event.get("logStreamName", ""),
            "message": message}


def filter_log_events(client: CloudWatchLogsClient, step: ExpectLogEventsStep, start_ms: int, keep: int) -> LogLines:
    """FilterLogEvents from ``start_ms`` on, through every page up to ``step.max_events`` lines."""
    kwargs: dict[str, Any] = {"logGroupName": step.log_group, "startTime": start_ms}
    if step.filter_pattern:
        kwargs["filterPattern"] = step.filter_pattern
    if step.log_stream_prefix:
        kwargs["logStreamNamePrefix"] = step.log_stream_prefix
    seen = LogLines(0)
    try:
        for page in client.get_paginator("filter_log_events").paginate(**kwargs):
            for event in page.get("events", []):
                if seen.count >= step.max_events:
                    seen.capped = True
                    return seen
                seen.count += 1
                if len(seen.lines) < keep:
                    seen.lines.append(_line(dict(event)))
    except AWS_ERRORS as exc:
        raise aws_error("CloudWatch Logs FilterLogEvents", f"log group {step.log_group}", exc) from None
    return seen


def _log_markdown(step: ExpectLogEventsStep, start_ms: int, seen: LogLines, watched: Watched[LogLines],
                  ctx: StepContext) -> str:
    since = datetime.fromtimestamp(start_ms / 1000, timezone.utc).isoformat(timespec="seconds")
    rows = [[line["time"], md.code(line["stream"]), md.code(redact(line["message"], ctx.secrets))]
            for line in seen.lines]
    parts = [f"Expected {md.text(step.wanted())} ({md.code(since)}); found {md.text(seen.describe())} "
             f"{md.text(watched.timing())}."]
    if rows:
        more = f" (the first {len(rows)})" if seen.count > len(rows) else ""
        parts.append(f"**Matching lines{more}**, masked\n\n" + md.table(["time", "stream", "message"], rows))
    return "\n\n".join(parts)


def expect_log_events_footprint(step: ExpectLogEventsStep, arns: Arns) -> Footprint:
    fp = Footprint().read("CloudWatch log group", step.log_group, "filter events since the case began")
    return fp.need(arns.log_group(step.log_group), "logs:FilterLogEvents")


@step_kind(ExpectLogEventsStep, footprint=expect_log_events_footprint)
def run_expect_log_events(step: ExpectLogEventsStep, ctx: StepContext) -> StepOutcome:
    """Count the matching lines since the case began (a count that only grows: past its maximum, fail at once)."""
    client = ctx.clients.client("logs")
    start_ms = int((ctx.started_at - step.lookback) * 1000)
    count = step.count()
    watched = watch(lambda: filter_log_events(client, step, start_ms, step.shown_events),
                    lambda s: count.holds(s.count) and not (s.capped and count.exceeded(s.count + 1)), step.wait,
                    hold=step.hold, hopeless=lambda s: count.exceeded(s.count + (1 if s.capped else 0)),
                    describe=LogLines.describe, what=step.wanted(), logger=ctx.logger, clock=ctx.clock)
    seen = watched.value
    markdown = _log_markdown(step, start_ms, seen, watched, ctx)
    details = {"log_group": step.log_group, "filter_pattern": step.filter_pattern, "start_time_ms": start_ms,
               "count": seen.count, "capped": seen.capped, "checks": watched.checks,
               "lines": [{**line, "message": redact(line["message"], ctx.secrets)} for line in seen.lines],
               "waited_seconds": round(watched.waited, 3), "held_seconds": round(watched.held, 3)}
    if not watched.met:
        raise unmet(watched, step.wanted(), seen.describe(), details=details, markdown=markdown, check="events")
    link = console_link(ctx, "logs", "cloudwatch/home?region={region}#logsV2:log-groups/log-group/"
                        + quote(quote(step.log_group, safe=""), safe=""), f"log group {step.log_group}")
    return StepOutcome(summary=f"{seen.describe()} in {step.log_group} {watched.timing()}", details=details,
                       markdown=markdown, links=link, checks=[watched.record("events", step.wanted(), seen.describe())])
