"""Step ``step_functions``: run (or wait for) a Step Functions execution and prove how it ended and what it gave.

The step starts an execution of a state machine with an input (templated JSON), naming it
``<name_prefix><run id>-<random>``, or waits for the one the pipeline started: the newest execution of the state
machine started since the case began, optionally only those whose name starts with ``name_prefix`` and whose input
matches ``match_input`` (a JSON subset and/or JMESPath, as ``expect``: with two files landing, or cases side by side,
the execution of the case's own file); the executions considered, and why each was taken or not, are in the
evidence. It waits with
the growing interval, stops the execution on timeout (``StopExecution``), checks the final status and, optionally,
the output (``json_subset`` and JMESPath, the checks of ``invoke_lambda``: :mod:`tasks.kit.json_expect`). A failed
execution fails the step with its ``error`` and ``cause`` and the state it failed in, from the execution history.

Fields listed in ``sensitive_fields`` (dotted paths) are masked in the input and output the evidence shows, and
their values are secrets of the run. Starting an execution is the pipeline's own work, not a change the case
undoes; an execution the step started is stopped when the case run is stopped while it waits.
"""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Annotated, Any, ClassVar, Literal

from pydantic import ConfigDict, Field, model_validator

from tasks.kit import markdown as md
from tasks.kit import nesting
from tasks.kit.checks import CheckRecord
from tasks.kit.console_links import console_link, literal
from tasks.kit.errors import AWS_ERRORS, TIMED_OUT, CheckFailed, StepError, aws_error
from tasks.kit.iam import Arns, Footprint, partition
from tasks.kit.json_expect import (
    MISSING,
    JsonExpect,
    JsonMasker,
    expect_checks,
    expect_mismatches,
    shown_json,
    truncate,
)
from tasks.kit.pipeline_runs import (
    RunWait,
    StateHistory,
    as_utc,
    duration_s,
    newest_since,
    took,
    watch_run,
    when,
)
from tasks.kit.secrets import parse_path, secrets_at
from tasks.kit.step import StepBase, StepContext, StepOutcome, format_duration, step_kind, template_aware

if TYPE_CHECKING:
    from types_boto3_stepfunctions import SFNClient
    from types_boto3_sts import STSClient

#: statuses after which an execution never changes again
FINAL_STATUSES = frozenset({"SUCCEEDED", "FAILED", "TIMED_OUT", "ABORTED", "PENDING_REDRIVE"})
#: Step Functions' limits: an execution's name, its input
MAX_NAME_CHARS = 80
MAX_INPUT_BYTES = 256 * 1024
#: the state shown while no execution of the pipeline's has been seen yet
NO_EXECUTION_YET = "NO EXECUTION YET"
#: the state shown while the pipeline's executions seen so far are none of the case's (name_prefix, match_input)
NO_MATCH_YET = "NO MATCHING EXECUTION YET"
#: how many of the executions considered the evidence lists (the newest)
MAX_CANDIDATES_SHOWN = 50
#: characters of the reason an execution was not the case's
MAX_WHY_NOT_CHARS = 500
#: how many executions are looked at for the pipeline's (ListExecutions' largest page, newest first)
EXECUTIONS_PAGE = 1000
#: how many history events are read (newest first) to find the state an execution failed in
HISTORY_EVENTS = 100
DEFAULT_PREFIX = "pipeline-test-"


_NAME_PREFIX = template_aware(r"[A-Za-z0-9_-]*", "letters, digits, - and _ only")


class ExecutionExpect(JsonExpect):
    """What the execution's output must contain."""


class ExecutionMatch(JsonExpect):
    """Which of the pipeline's executions is the case's: the one whose input contains this (a JSON subset and/or
    JMESPath expressions with their values, compared as `expect` compares the output)."""

    field_name: ClassVar[str] = "match_input"


class StepFunctionsStep(StepBase):
    """Start a Step Functions execution (or wait for the one the pipeline started), wait for it, check it."""

    #: an input may hold secrets: validation errors do not echo input
    model_config = ConfigDict(extra="forbid", populate_by_name=True, hide_input_in_errors=True)

    untemplated: ClassVar[frozenset[str]] = StepBase.untemplated | {"sensitive_fields"}

    kind: Literal["step_functions"] = "step_functions"
    state_machine: str = Field(..., min_length=1, max_length=2048,
                               description="The state machine's ARN, or its name (in the case's account and region).")
    start: bool = Field(
        True, description="Start an execution (true), or wait for the one the pipeline started (false): the newest "
        "execution started since the case began (with name_prefix: whose name starts with it; with match_input: "
        "whose input matches).")
    input: Any = Field(None, description="The execution's input, any JSON value (templated). With start only.")
    name_prefix: Annotated[str | None, _NAME_PREFIX] = Field(
        None, max_length=60,
        description="With start: the start of the execution's name (default `pipeline-test-`; the run id and a "
        "random part follow). Without start: only executions whose name starts with this are the pipeline's.")
    match_input: ExecutionMatch | None = Field(
        None, description="Without start: wait for the newest execution (since the case began) whose input matches "
        "this, e.g. the file the case uploaded, rather than the newest of all. The executions considered (name, "
        "start, matched or why not) are in the evidence.")
    sensitive_fields: list[str] = Field(
        default_factory=list,
        description="Dotted paths (db.password, users[*].token) masked in the input and output in the evidence.")
    wait: RunWait = Field(default_factory=RunWait, description="How long to wait for the execution to end and how "
                          "often to look (without start, it must also appear within this time).")
    stop_on_timeout: bool = Field(True, description="Stop the execution (StopExecution) when the wait times out.")
    expect_status: Literal["SUCCEEDED", "FAILED", "TIMED_OUT", "ABORTED"] = Field(
        "SUCCEEDED", description="The status the execution must end with.")
    expect: ExecutionExpect | None = Field(None, description="Checks on the execution's output (with "
                                           "expect_status SUCCEEDED).")

    @model_validator(mode="after")
    def _check(self) -> "StepFunctionsStep":
        if not self.start and "input" in self.model_fields_set:
            raise ValueError("input is for an execution the step starts (start: true); to find the pipeline's "
                             "execution by its input use match_input")
        if self.start and self.match_input is not None:
            raise ValueError("match_input finds an execution the pipeline started: it needs start: false")
        if self.expect is not None and self.expect_status != "SUCCEEDED":
            raise ValueError(f"expect checks the output, which only a SUCCEEDED execution has "
                             f"(expect_status is {self.expect_status})")
        for path in self.sensitive_fields:
            parse_path(path)
        size = len(json.dumps(self.input).encode("utf-8"))
        if size > MAX_INPUT_BYTES:
            raise ValueError(f"input is {size} bytes as JSON; Step Functions allows at most {MAX_INPUT_BYTES}")
        return self

    def secrets(self) -> list[str]:
        return secrets_at(self.input, self.sensitive_fields) if self.sensitive_fields else []


def execution_name(prefix: str | None, run_id: str) -> str:
    """``<prefix><run id's first 8>-<8 random hex>``, within Step Functions' 80 characters."""
    tail = f"{re.sub(r'[^A-Za-z0-9_-]', '', run_id)[:8]}-{uuid.uuid4().hex[:8]}"
    head = DEFAULT_PREFIX if prefix is None else prefix
    return head[: MAX_NAME_CHARS - len(tail)] + tail


def state_machine_arn(sfn: SFNClient, sts: STSClient | None, name_or_arn: str) -> str:
    """The ARN as given, or the ARN of a state machine named so in the caller's account and region."""
    if name_or_arn.startswith("arn:"):
        return name_or_arn
    assert sts is not None, "a state machine given by name needs an STS client"
    try:
        account = sts.get_caller_identity()["Account"]
    except AWS_ERRORS as exc:
        raise aws_error("STS GetCallerIdentity", f"state machine {name_or_arn}", exc) from None
    region = sfn.meta.region_name
    return f"arn:{partition(region)}:states:{region}:{account}:stateMachine:{name_or_arn}"


def start_execution(sfn: SFNClient, arn: str, name: str, document: Any) -> str:
    """StartExecution; the execution's ARN."""
    try:
        response = sfn.start_execution(stateMachineArn=arn, name=name, input=json.dumps(document))
    except AWS_ERRORS as exc:
        raise aws_error("Step Functions StartExecution", f"state machine {arn}", exc) from None
    return str(response["executionArn"])


def describe_execution(sfn: SFNClient, execution_arn: str) -> dict[str, Any]:
    try:
        return dict(sfn.describe_execution(executionArn=execution_arn))
    except AWS_ERRORS as exc:
        raise aws_error("Step Functions DescribeExecution", f"execution {execution_arn}", exc) from None


@dataclass
class Candidates:
    """The executions started since the case began that the step considered as the pipeline's, by ARN: name,
    start, whether it is the case's and, if not, why (each one's input is read once: it never changes)."""

    prefix: str | None
    match: ExecutionMatch | None
    masker: JsonMasker
    seen: dict[str, dict[str, Any]] = field(default_factory=dict)
    started: dict[str, float] = field(default_factory=dict)  # by ARN: the start, for the order (newest first)

    def accept(self, sfn: SFNClient, execution: dict[str, Any]) -> bool:
        arn = str(execution["executionArn"])
        if arn not in self.seen:
            name = str(execution.get("name", ""))
            why = self._why_not(sfn, arn, name)
            self.seen[arn] = {"name": name, "started": when(execution.get("startDate")), "matched": not why,
                              "why_not": why or None, "picked": False}
            moment = as_utc(execution.get("startDate"))
            self.started[arn] = moment.timestamp() if moment else 0.0
        return bool(self.seen[arn]["matched"])

    def _why_not(self, sfn: SFNClient, arn: str, name: str) -> str:
        if not name.startswith(self.prefix or ""):
            return f"its name does not start with {self.prefix}"
        if self.match is None:
            return ""
        try:
            document = _json(describe_execution(sfn, arn).get("input"))
        except StepError as exc:  # too deep to check: not this case's execution, whatever else it is
            return exc.message
        self.masker.learn(document)  # another file's input may hold secrets at the sensitive paths too
        if document is MISSING:
            return "its input is not JSON"
        return truncate("; ".join(expect_mismatches(self.match, document, self.masker)), MAX_WHY_NOT_CHARS)

    def pick(self, arn: str) -> None:
        self.seen[arn]["picked"] = True

    def to_list(self) -> list[dict[str, Any]]:
        """The newest first, at most MAX_CANDIDATES_SHOWN, with the secrets the run knows by now masked."""
        newest = sorted(self.seen, key=lambda arn: self.started[arn], reverse=True)
        return [{**self.seen[arn], "why_not": self.masker.text(self.seen[arn]["why_not"])
                 if self.seen[arn]["why_not"] else None} for arn in newest[:MAX_CANDIDATES_SHOWN]]

    def summary(self) -> str:
        """``2 considered: ingest-b ($.key: expected ..., got ...); ...`` for a timeout's message."""
        if not self.seen:
            return "none was started since the case began"
        shown = [f"{c['name']} ({c['why_not']})" for c in self.to_list()[:5]]
        more = len(self.seen) - len(shown)
        return f"{len(self.seen)} considered: " + "; ".join(shown) + (f"; and {more} more" if more > 0 else "")


def pipeline_execution(sfn: SFNClient, arn: str, since: float, candidates: Candidates) -> dict[str, Any] | None:
    """The newest execution of the state machine started at or after ``since`` that ``candidates`` takes (its name
    starts with the prefix, its input matches), or None; every execution since then is recorded there."""
    try:
        executions = sfn.list_executions(stateMachineArn=arn, maxResults=EXECUTIONS_PAGE)["executions"]
    except AWS_ERRORS as exc:
        raise aws_error("Step Functions ListExecutions", f"state machine {arn}", exc) from None
    found = newest_since([dict(e) for e in executions], lambda e: e.get("startDate"), since,
                         lambda e: candidates.accept(sfn, e))  # only those started since then are considered
    if found is not None:
        candidates.pick(str(found["executionArn"]))
    return found


def stop_execution(sfn: SFNClient, execution_arn: str, why: str) -> str:
    """StopExecution; what became of it, as a phrase for the evidence."""
    try:
        sfn.stop_execution(executionArn=execution_arn, error="PipelineTest.Stopped", cause=why)
    except AWS_ERRORS as exc:
        return f"could not stop it: {aws_error('Step Functions StopExecution', execution_arn, exc).message}"
    return "stopped it with StopExecution"


def failed_state(sfn: SFNClient, execution_arn: str) -> str | None:
    """The state the execution was in when it ended: the last state entered (highest event id) among the newest
    history events."""
    try:
        events = sfn.get_execution_history(executionArn=execution_arn, reverseOrder=True, maxResults=HISTORY_EVENTS,
                                           includeExecutionData=False)["events"]
    except AWS_ERRORS as exc:
        raise aws_error("Step Functions GetExecutionHistory", f"execution {execution_arn}", exc) from None
    entered = [(e["id"], e["stateEnteredEventDetails"]["name"]) for e in events
               if "stateEnteredEventDetails" in e and e["stateEnteredEventDetails"].get("name")]
    return str(max(entered)[1]) if entered else None


def _status(execution: dict[str, Any]) -> str:
    return str(execution.get("status") or NO_EXECUTION_YET)


def _json(text: Any) -> Any:
    if text is None:
        return MISSING
    try:
        return nesting.loads(text, "the execution's input or output")
    except nesting.NestingError as exc:
        raise StepError(f"{exc}: too deep to check") from None
    except (TypeError, ValueError):
        return MISSING


def step_functions_footprint(step: StepFunctionsStep, arns: Arns) -> Footprint:
    """Start an execution (or find the pipeline's), follow it, read its history; stop it on timeout. A state
    machine given by name is found in the caller's account (STS GetCallerIdentity)."""
    machine = arns.state_machine(step.state_machine)
    executions = arns.executions(machine)
    express = arns.executions(machine, "express")  # an Express state machine's executions
    fp = Footprint()
    if not step.state_machine.startswith("arn:"):
        fp.need("*", "sts:GetCallerIdentity")
    if step.start:
        fp.change("Step Functions execution", step.state_machine, "start an execution (not undone)")
        fp.need(machine, "states:StartExecution")
    else:
        fp.read("Step Functions executions", step.state_machine, "wait for the pipeline's execution")
        fp.need(machine, "states:ListExecutions")
        # the Service Authorization Reference lists Map Runs beside state machines for ListExecutions (parliament
        # wants both): the same machine's Map Runs, read only
        fp.need(arns.executions(machine, "mapRun"), "states:ListExecutions")
    fp.need(executions, "states:DescribeExecution", "states:GetExecutionHistory")
    fp.need(express, "states:DescribeExecution")
    if step.stop_on_timeout:
        fp.need(executions, "states:StopExecution")
    return fp


@step_kind(StepFunctionsStep, footprint=step_functions_footprint)
def run_step_functions(step: StepFunctionsStep, ctx: StepContext) -> StepOutcome:
    """Start (or find) the execution, wait for it to end (stopping it on timeout), check status and output."""
    sfn: SFNClient = ctx.clients.client("stepfunctions")
    masker = JsonMasker.for_paths(step.sensitive_fields, ctx.secrets)
    masker.learn(step.input)
    arn = state_machine_arn(sfn, ctx.clients.client("sts") if not step.state_machine.startswith("arn:") else None,
                            step.state_machine)
    execution_arn: str | None = None
    what = f"an execution of {arn}"
    if step.start:
        name = execution_name(step.name_prefix, ctx.run_id)
        execution_arn = start_execution(sfn, arn, name, step.input)
        what = f"Step Functions execution {name} of {arn}"
        ctx.logger.info("Started %s", what)
    else:
        ctx.logger.info("Waiting for the execution of %s that the pipeline starts", arn)
    seen: dict[str, Any] = {}
    candidates = Candidates(step.name_prefix, step.match_input, masker)

    def describe() -> dict[str, Any]:
        nonlocal execution_arn
        if execution_arn is None:
            found = pipeline_execution(sfn, arn, ctx.started_at, candidates)
            if found is None:
                return {"status": NO_MATCH_YET} if candidates.seen else {}
            execution_arn = str(found["executionArn"])
            ctx.logger.info("Found Step Functions execution %s, started %s", found.get("name"),
                            when(found.get("startDate")))
        seen.update(describe_execution(sfn, execution_arn))
        masker.learn(_json(seen.get("input")))  # the pipeline's input may hold secrets too
        return dict(seen)

    def stop() -> str:
        if execution_arn is None:
            return "there was no execution to stop"
        return stop_execution(sfn, execution_arn, f"pipeline-test stopped it (case {ctx.case_name}, run {ctx.run_id})")

    history = StateHistory(ctx.clock)
    try:
        watched = watch_run(describe, _status, lambda e: _status(e) in FINAL_STATUSES, step.wait, what=what, stop=stop,
                        stop_on_timeout=step.stop_on_timeout, started_here=step.start, logger=ctx.logger,
                        clock=ctx.clock, history=history)
    except StepError as exc:
        details = _details(step, arn, seen or ({"status": NO_MATCH_YET} if candidates.seen else {}), history, masker,
                           None, candidates)
        exc.details = {**exc.details, **details}
        exc.markdown = _markdown(details, [])
        message = exc.message
        if seen.get("name") and not step.start:
            message = message.replace(what, f"Step Functions execution {seen['name']} of {arn}")
        elif not step.start and exc.code == TIMED_OUT:
            message = _none_found(step, arn, candidates)
        raise exc.with_message(masker.text(message)) from None
    execution = watched.value
    output = _json(execution.get("output"))
    masker.learn(output)
    status = _status(execution)
    failed_in = failed_state(sfn, str(execution["executionArn"])) if status != "SUCCEEDED" else None
    details = _details(step, arn, execution, history, masker, failed_in, candidates)
    problems: list[str] = []
    checks = [CheckRecord.of("final status", status == step.expect_status, step.expect_status, status)]
    if status != step.expect_status:
        reason = f"{execution.get('error') or 'no error'}: {truncate(str(execution.get('cause') or 'no cause'), 1000)}"
        where = f" in state {failed_in}" if failed_in else ""
        problems.append(masker.text(f"Step Functions execution {execution.get('name')} ended {status}{where} "
                                    f"(expected {step.expect_status}): {reason}"))
        checks = [checks[0].model_copy(update={"actual": masker.text(f"{status}{where}: {reason}")})]
    elif step.expect is not None:
        if output is MISSING:
            problems.append(f"Step Functions execution {execution.get('name')} gave no JSON output to check")
            checks.append(CheckRecord.of("JSON output", False, "a JSON output to check", "none"))
        else:
            problems += expect_mismatches(step.expect, output, masker)
            checks += expect_checks(step.expect, output, masker)
    markdown = _markdown(details, problems)
    if problems:
        raise CheckFailed("; ".join(problems), details={**details, "problems": problems}, markdown=markdown,
                          checks=checks)
    checked = ", output as expected" if step.expect else ""
    return StepOutcome(
        summary=f"Step Functions execution {execution.get('name')} {status}{checked}{took(details['duration_s'])}",
        details=details,
        markdown=markdown,
        checks=checks,
        links=console_link(ctx, "stepfunctions", "states/home?region={region}#/v2/executions/details/"
                           + literal(str(execution["executionArn"])),
                           f"Step Functions execution {execution.get('name')}"),
    )



def _none_found(step: StepFunctionsStep, arn: str, candidates: Candidates) -> str:
    """The timeout's message when no execution was the case's: what was looked for, and what was considered."""
    wanted = " and ".join(w for w in (f"whose name starts with {step.name_prefix}" if step.name_prefix else "",
                                      "whose input matches match_input" if step.match_input else "") if w)
    return (f"no execution of {arn} {wanted + ' ' if wanted else ''}was started since the case began, within "
            f"{step.wait.timeout:g} s: {candidates.summary()}")


def _details(step: StepFunctionsStep, arn: str, execution: dict[str, Any], history: StateHistory,
             masker: JsonMasker, failed_in: str | None, candidates: Candidates) -> dict[str, Any]:
    document = _json(execution.get("input")) if execution.get("input") is not None else \
        step.input if step.start else MISSING
    output = _json(execution.get("output"))
    return {
        "state_machine": arn,
        "execution_arn": execution.get("executionArn"),
        "name": execution.get("name"),
        "started_by": "this step" if step.start else "the pipeline",
        "status": _status(execution),
        "expected_status": step.expect_status,
        "error": masker.text(str(execution["error"])) if execution.get("error") else None,
        "cause": masker.text(truncate(str(execution["cause"]), 4000)) if execution.get("cause") else None,
        "failed_state": failed_in,
        "started": when(execution.get("startDate")),
        "stopped": when(execution.get("stopDate")),
        "duration_s": duration_s(execution.get("startDate"), execution.get("stopDate")),
        "states_observed": history.to_list(),
        "input": shown_json(document, masker) if document is not MISSING else None,
        "output": shown_json(output, masker) if output is not MISSING else None,
        "match_input": shown_json(step.match_input.model_dump(exclude_unset=True), masker)
        if step.match_input else None,
        "candidates": None if step.start else candidates.to_list(),
        "candidates_considered": None if step.start else len(candidates.seen),
    }


def _markdown(details: dict[str, Any], problems: list[str]) -> str:
    rows: list[tuple[str, Any]] = [
        ("State machine", md.code(details["state_machine"])),
        ("Execution", md.code(details["name"] or "–")),
        ("Started by", details["started_by"]),
        ("Status", f"{details['status']} (expected {details['expected_status']})"),
        ("States observed", StateHistory.markdown_of(details["states_observed"])),
        ("Started / stopped", f"{details['started']} / {details['stopped']}"),
        ("Duration", "–" if details["duration_s"] is None else format_duration(details["duration_s"])),
    ]
    for label, key in (("Error", "error"), ("Cause", "cause"), ("Failed in state", "failed_state")):
        if details.get(key):
            rows.append((label, details[key]))
    parts: list[str] = [md.table(["Fact", "Value"], rows)]
    if details.get("input") is not None:
        parts.append("**Input**\n\n" + md.code_block(details["input"], "json"))
    if details.get("output") is not None:
        parts.append("**Output**\n\n" + md.code_block(details["output"], "json"))
    if details.get("candidates") is not None:
        parts.append(_candidates_markdown(details))
    if problems:
        parts.append("**Expectations not met**\n\n" + md.bullets(problems))
    return "\n\n".join(parts)


def _candidates_markdown(details: dict[str, Any]) -> str:
    """The executions considered as the pipeline's: which one the step took, and why each other was not."""
    rows = [[md.code(c["name"]), c["started"], "picked" if c["picked"] else "yes" if c["matched"] else "no",
             c["why_not"] or ("the newest that matches" if c["picked"] else "it matches, but a newer one does")]
            for c in details["candidates"]]
    count = details["candidates_considered"]
    head = f"**Executions considered** ({count} started since the case began"
    head += f"; the newest {len(rows)} shown)" if count > len(rows) else ")"
    if details.get("match_input") is not None:
        head += "\n\nmatch_input:\n\n" + md.code_block(details["match_input"], "json")
    if not rows:
        return head + "\n\nNone was started since the case began."
    return head + "\n\n" + md.table(["Execution", "Started", "Matches", "Why not"], rows)
