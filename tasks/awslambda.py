"""Step ``invoke_lambda``: invoke a Lambda function and prove that it did what it should.

Unlike a bare ``Invoke`` call (and prefect-aws's ``LambdaFunction.invoke``), the step checks the result: the
status code must be the one the invocation type promises (200 RequestResponse, 202 Event, 204 DryRun) and there
must be no ``FunctionError``; a function error fails the step with the function's ``errorType`` and
``errorMessage``. RequestResponse invocations ask for the log tail (``LogType=Tail``), whose decoded last 4 KB
go into the evidence. An optional ``expect`` checks the response payload with a JSON subset and/or JMESPath
expressions.

Fields listed in ``sensitive_fields`` (dotted paths, see :mod:`tasks.kit.secrets`) are masked where they are
*reported*: at their paths in the payload sent and in the response (and in what a check shows of them), and
their values, which become secrets of the run, are redacted from the log tail and from error messages (values
of at least 8 characters). What is *compared* is never masked: a check of another field that happens to hold
the same short string shows it as it is.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, ClassVar, Literal

from pydantic import ConfigDict, Field, model_validator

from tasks.kit import markdown as md
from tasks.kit import nesting
from tasks.kit.checks import CheckRecord
from tasks.kit.console_links import links_for, literal
from tasks.kit.errors import AWS_ERRORS, CheckFailed, StepError, aws_error, request_id
from tasks.kit.iam import Arns, Footprint
from tasks.kit.json_expect import (
    MAX_SHOWN_CHARS,
    MISSING,
    JsonExpect,
    JsonMasker,
    expect_checks,
    expect_mismatches,
    parse_json,
    shown_json,
    truncate,
)
from tasks.kit.secrets import parse_path, secrets_at
from tasks.kit.step import Link, StepBase, StepContext, StepOutcome, step_kind

if TYPE_CHECKING:
    from types_boto3_lambda import LambdaClient

InvocationType = Literal["RequestResponse", "Event", "DryRun"]

#: the status code that each invocation type returns on success
EXPECTED_STATUS: dict[str, int] = {"RequestResponse": 200, "Event": 202, "DryRun": 204}
#: AWS's limit on the base64-encoded client context
MAX_CLIENT_CONTEXT_BYTES = 3583
#: how much of the log tail the evidence keeps (AWS returns at most the last 4 KB anyway)
LOG_TAIL_BYTES = 4096


class LambdaExpect(JsonExpect):
    """What the response payload must contain."""


class InvokeLambdaStep(StepBase):
    """Invoke a Lambda function and check status, function error and (optionally) the response payload."""

    #: a payload may hold secrets: validation errors do not echo input (the spec's root model needs this too)
    model_config = ConfigDict(extra="forbid", populate_by_name=True, hide_input_in_errors=True)

    untemplated: ClassVar[frozenset[str]] = StepBase.untemplated | {"sensitive_fields"}
    template_files: ClassVar[frozenset[str]] = frozenset({"payload_file"})

    kind: Literal["invoke_lambda"] = "invoke_lambda"
    function: str = Field(..., min_length=1, description="Function name, partial ARN or ARN.")
    qualifier: str | None = Field(None, min_length=1, description="Version or alias to invoke.")
    invocation_type: InvocationType = Field(
        "RequestResponse", description="RequestResponse (wait for the result), Event (async) or DryRun."
    )
    payload: Any = Field(None, description="The event, any JSON value (templated).")
    payload_file: str | None = Field(
        None, description="A JSON file (relative to the spec) whose content is templated and sent as the event."
    )
    client_context: dict[str, Any] | None = Field(
        None,
        description="Client context passed to the function (sent base64-encoded; at most 3583 bytes encoded; "
        "Lambda passes it to synchronous invocations only).",
    )
    sensitive_fields: list[str] = Field(
        default_factory=list,
        description="Dotted paths (db.password, users[*].token) masked in the payload and response in the evidence.",
    )
    expect: LambdaExpect | None = Field(None, description="Checks on the response payload (RequestResponse only).")

    @model_validator(mode="after")
    def _check(self) -> "InvokeLambdaStep":
        if self.payload_file is not None and "payload" in self.model_fields_set:
            raise ValueError("give payload or payload_file, not both")
        if self.expect is not None and self.invocation_type != "RequestResponse":
            raise ValueError(f"expect needs invocation_type RequestResponse ({self.invocation_type} has no response)")
        for path in self.sensitive_fields:
            parse_path(path)
        if self.client_context is not None:
            encode_client_context(self.client_context)
        return self

    def rendered_checks(self, spec_dir: Path, render: Callable[[str], str]) -> list[str]:
        """A payload_file must be readable JSON once rendered: found before the run, not when invoking."""
        if self.payload_file is None:
            return []
        try:
            load_payload(self, spec_dir, render)
        except StepError as exc:
            return [f"field 'payload_file': {exc.message}"]
        return []

    def secrets(self) -> list[str]:
        """Values at the sensitive paths of an inline payload: the engine masks them in every output of the run."""
        return secrets_at(self.payload, self.sensitive_fields) if self.sensitive_fields else []


# --- plain functions -------------------------------------------------------------------------------------------


def encode_client_context(context: dict[str, Any]) -> str:
    """Base64 of the context's compact JSON, as Invoke wants it; ValueError when over AWS's 3583 bytes."""
    encoded = base64.b64encode(json.dumps(context, separators=(",", ":")).encode("utf-8")).decode("ascii")
    if len(encoded) > MAX_CLIENT_CONTEXT_BYTES:
        raise ValueError(
            f"client_context is {len(encoded)} bytes base64-encoded; AWS allows at most {MAX_CLIENT_CONTEXT_BYTES}"
        )
    return encoded


def function_label(function: str, qualifier: str | None) -> str:
    """How the evidence names the invoked function: ``name`` or ``name:qualifier``."""
    return f"{function}:{qualifier}" if qualifier else function


def function_name(function: str) -> str:
    """The bare function name of a name, partial ARN or ARN (for console links)."""
    parts = function.split(":")
    if "function" in parts[:-1]:
        return parts[parts.index("function") + 1]
    return parts[0]


def load_payload(step: InvokeLambdaStep, spec_dir: Path, render: Callable[[str], str]) -> Any:
    """The event to send: the inline payload (already templated), or the payload file's rendered JSON."""
    if step.payload_file is None:
        return step.payload
    path = (spec_dir / step.payload_file).resolve()
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise StepError(f"cannot read payload_file {step.payload_file} ({path}): {exc.strerror or exc}") from None
    rendered = render(text)
    try:
        return nesting.loads(rendered, f"payload_file {step.payload_file}")
    except nesting.NestingError as exc:
        raise StepError(str(exc)) from None
    except json.JSONDecodeError as exc:
        raise StepError(
            f"payload_file {step.payload_file} is not valid JSON after templating: {exc.msg} "
            f"(line {exc.lineno}, column {exc.colno})"
        ) from None


def invoke(
    client: LambdaClient,
    function: str,
    payload: Any,
    *,
    qualifier: str | None = None,
    invocation_type: str = "RequestResponse",
    client_context: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Call Invoke and return its response with ``Payload`` read into bytes; AWS failures raise AwsCallError.

    Asks for the log tail on RequestResponse invocations. ``payload`` is any JSON value (``None`` sends none).
    """
    kwargs: dict[str, Any] = {"FunctionName": function, "InvocationType": invocation_type}
    if payload is not None:
        kwargs["Payload"] = json.dumps(payload).encode("utf-8")
    if qualifier:
        kwargs["Qualifier"] = qualifier
    if invocation_type == "RequestResponse":
        kwargs["LogType"] = "Tail"
    if client_context is not None:
        kwargs["ClientContext"] = encode_client_context(client_context)
    try:
        response = client.invoke(**kwargs)
    except AWS_ERRORS as exc:
        raise aws_error("Lambda Invoke", function_label(function, qualifier), exc) from None
    body = response.get("Payload")
    return {**response, "Payload": body.read() if body is not None else b""}


def decode_log_tail(log_result: str | None, limit: int = LOG_TAIL_BYTES) -> str:
    """The decoded last ``limit`` bytes of an Invoke ``LogResult`` (base64), or "" when there is none."""
    if not log_result:
        return ""
    try:
        raw = base64.b64decode(log_result)
    except ValueError:
        return ""
    return raw[-limit:].decode("utf-8", errors="replace")


def _response_text(body: bytes, parsed: Any, masker: JsonMasker) -> str:
    """The response payload as shown in the evidence: masked, pretty-printed JSON or text, truncated."""
    if parsed is not MISSING:
        return shown_json(parsed, masker)
    return masker.text(truncate(body.decode("utf-8", errors="replace")))


def _function_error(label: str, kind: str, parsed: Any, body: bytes, masker: JsonMasker) -> str:
    """The message for a function error: errorType and errorMessage from the function's error payload."""
    if isinstance(parsed, dict) and ("errorType" in parsed or "errorMessage" in parsed):
        what = f"{parsed.get('errorType', 'Error')}: {parsed.get('errorMessage', '')}"
    else:
        what = truncate(body.decode("utf-8", errors="replace"), 500) or "no error payload"
    return masker.text(f"Lambda function {label} failed with a function error ({kind}): {what}")


def _markdown(facts: dict[str, Any], payload_text: str, response_text: str | None, log_tail: str,
              problems: list[str]) -> str:
    """The readable part first (expectations not met, the call's facts), the payload, response and log last."""
    parts = ["**Expectations not met** (FAIL)\n\n" + md.bullets(problems)] if problems else []
    parts.append(md.facts((k, md.code(v) if str(v).strip() else "–") for k, v in facts.items()))
    parts.append("**Payload sent**\n\n" + md.code_block(payload_text, "json"))
    if response_text is not None:
        parts.append("**Response**\n\n" + md.code_block(response_text))
    if log_tail:
        parts.append("**Log tail** (last 4 KB)\n\n" + md.code_block(log_tail))
    return "\n\n".join(parts)


def _links(client: LambdaClient, step: InvokeLambdaStep) -> list[Link]:
    name = function_name(step.function)
    return links_for(str(client.meta.endpoint_url), client.meta.region_name,
                     "lambda/home?region={region}#/functions/" + literal(name), f"Lambda function {name}")


def invoke_lambda_footprint(step: InvokeLambdaStep, arns: Arns) -> Footprint:
    """One Invoke of the function (or its version or alias)."""
    function = step.function if step.qualifier is None else f"{step.function}:{step.qualifier}"
    fp = Footprint().change("Lambda invocation", function, f"invoke ({step.invocation_type})")
    if not function.startswith("arn:") and ":function:" in function:  # a partial ARN: account:function:name
        account, _, rest = function.partition(":function:")
        function = f"arn:{arns.partition}:lambda:{arns.region}:{account}:function:{rest}"
    return fp.need(arns.lambda_function(function), "lambda:InvokeFunction")


@step_kind(InvokeLambdaStep, footprint=invoke_lambda_footprint)
def run_invoke_lambda(step: InvokeLambdaStep, ctx: StepContext) -> StepOutcome:
    """Invoke the function, check status, function error and expectations, and record the evidence."""
    masker = JsonMasker.for_paths(step.sensitive_fields, ctx.secrets)
    label = function_label(step.function, step.qualifier)
    payload = load_payload(step, ctx.spec_dir, ctx.render)
    masker.learn(payload)
    client = ctx.clients.client("lambda")
    ctx.logger.info("Invoking Lambda function %s (%s)", label, step.invocation_type)
    try:
        response = invoke(client, step.function, payload, qualifier=step.qualifier,
                          invocation_type=step.invocation_type, client_context=step.client_context)
    except StepError as exc:
        raise exc.with_message(masker.text(exc.message)) from None

    status = int(response.get("StatusCode", 0))
    body: bytes = response["Payload"]
    has_response = step.invocation_type == "RequestResponse"
    parsed = parse_json(body) if has_response else MISSING
    masker.learn(parsed)
    log_tail = masker.text(decode_log_tail(response.get("LogResult")))
    rid = request_id(response)
    facts = {
        "function": step.function,
        "qualifier": step.qualifier or "",
        "executed version": response.get("ExecutedVersion") or "n/a",
        "invocation type": step.invocation_type,
        "status": status,
        "request id": rid or "n/a",
    }
    details: dict[str, Any] = {k.replace(" ", "_"): v for k, v in facts.items()}
    details["payload"] = _details_payload(payload, masker)
    response_text = _response_text(body, parsed, masker) if has_response else None
    if has_response:
        details["response"] = _details_response(body, parsed, masker)
        details["response_bytes"] = len(body)
        details["log_tail"] = log_tail

    problems = _problems(step, status, response.get("FunctionError"), parsed, body, label, masker)
    markdown = _markdown(facts, shown_json(payload, masker), response_text, log_tail, problems)
    checks = _checks(step, status, response.get("FunctionError"), parsed, masker)
    if problems:
        details["problems"] = problems
        # the evidence body rides along so the engine can show it for the failed step too
        raise CheckFailed("; ".join(problems), details=details, markdown=markdown, checks=checks)
    ctx.logger.info("Lambda function %s returned %s (request id %s)", label, status, rid)
    checked = ", response as expected" if step.expect else ""
    return StepOutcome(
        summary=f"{label}: {step.invocation_type} returned {status}{checked}",
        details=details,
        markdown=markdown,
        links=_links(client, step),
        request_ids=[rid] if rid else [],
        checks=checks,
    )


def _details_payload(payload: Any, masker: JsonMasker) -> Any:
    """The payload for ``details``: the masked JSON when small, else the truncated (redacted) text."""
    if len(json.dumps(payload, default=str)) <= MAX_SHOWN_CHARS:
        return masker.doc(payload)
    return shown_json(payload, masker)


def _details_response(body: bytes, parsed: Any, masker: JsonMasker) -> Any:
    """The response for ``details``: the masked JSON when small, else the truncated (redacted) text."""
    if parsed is not MISSING and len(body) <= MAX_SHOWN_CHARS:
        return masker.doc(parsed)
    return _response_text(body, parsed, masker)


def _checks(step: InvokeLambdaStep, status: int, function_error: str | None, parsed: Any,
            masker: JsonMasker) -> list[CheckRecord]:
    """What the step checked, typed, in the order of :func:`_problems`: the status, no function error, then the
    expectations (only when the ones before held: a failed call has no payload to check)."""
    expected = EXPECTED_STATUS[step.invocation_type]
    checks = [CheckRecord.of("status", status == expected, expected, status)]
    if status != expected:
        return checks
    checks.append(CheckRecord.of("function error", not function_error, "none", function_error or "none"))
    if function_error or step.expect is None:
        return checks
    if parsed is MISSING:
        return checks + [CheckRecord.of("JSON payload", False, "a JSON payload to check", "none")]
    return checks + expect_checks(step.expect, parsed, masker)


def _problems(step: InvokeLambdaStep, status: int, function_error: str | None, parsed: Any, body: bytes,
              label: str, masker: JsonMasker) -> list[str]:
    """Everything wrong with the invocation's result, most fundamental first (each line already redacted)."""
    expected = EXPECTED_STATUS[step.invocation_type]
    if status != expected:
        return [f"Lambda function {label} returned status {status}; a {step.invocation_type} invocation "
                f"succeeds with {expected}"]
    if function_error:
        return [_function_error(label, function_error, parsed, body, masker)]
    if step.expect is None:
        return []
    if parsed is MISSING:
        return [f"Lambda function {label} returned no JSON payload to check: "
                f"{masker.text(truncate(body.decode('utf-8', errors='replace'), 200))!r}"]
    return expect_mismatches(step.expect, parsed, masker)
