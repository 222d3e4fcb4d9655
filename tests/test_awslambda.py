"""Step ``invoke_lambda`` (tasks/awslambda.py) against moto's Lambda without Docker.

moto's no-Docker Lambda echoes the payload, accepts any function name and cannot return a function error or a
log tail. The ``scripted`` fixture wraps ``LambdaSimpleBackend.invoke`` so that it checks the function exists
and replies with what a test queued: payload, ``x-amz-function-error``, ``x-amz-log-result`` and
``x-amz-executed-version`` headers. It also records the request headers (client context, log type).
"""

from __future__ import annotations

import base64
import io
import json
import logging
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from botocore.stub import Stubber
from moto.awslambda_simple.models import LambdaSimpleBackend
from moto.core import DEFAULT_ACCOUNT_ID
from moto.moto_api._internal.models import moto_api_backend
from pydantic import ValidationError

from tasks.awslambda import (
    EXPECTED_STATUS,
    MAX_SHOWN_CHARS,
    InvokeLambdaStep,
    decode_log_tail,
    encode_client_context,
    function_label,
    function_name,
    invoke,
)
from tasks.kit.aws import ClientFactory
from tasks.kit.errors import CHECK_FAILED, AwsCallError, CheckFailed, StepError
from tasks.kit.json_compare import jmespath_mismatches, json_equal, json_subset_mismatches
from tasks.kit.json_expect import truncate
from tasks.kit.secrets import mask
from tasks.kit.step import REGISTRY, StepContext, StepOutcome

REGION = "us-east-1"
FUNCTION = "ingest"
CANARY = "canary-LambdaSecret-3c4d5e"


# --- fixtures ------------------------------------------------------------------------------------------------------


@dataclass
class Reply:
    """What the scripted function answers to one invocation."""

    payload: Any = None  # JSON value; None echoes the request like moto does
    raw: bytes | None = None  # a non-JSON body
    function_error: str | None = None  # "Unhandled" or "Handled"
    log: str | None = None  # the log text, base64-encoded into x-amz-log-result
    executed_version: str = "$LATEST"


@dataclass
class Script:
    """Replies to hand out, and the requests seen."""

    replies: list[Reply] = field(default_factory=list)
    requests: list[dict[str, Any]] = field(default_factory=list)

    def reply(self, **kwargs: Any) -> Reply:
        reply = Reply(**kwargs)
        self.replies.append(reply)
        return reply


def _zip() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("handler.py", "def handler(event, context):\n    return event\n")
    return buf.getvalue()


@pytest.fixture
def ctx(module_moto: Any, module_clients: ClientFactory, tmp_path: Path) -> StepContext:
    """A fresh moto account with function ``ingest`` (version 1 published, alias ``live``)."""
    module_moto.reset()
    iam = module_clients.client("iam")
    role = iam.create_role(RoleName="lambda-role", AssumeRolePolicyDocument="{}")["Role"]["Arn"]
    client = module_clients.client("lambda")
    client.create_function(FunctionName=FUNCTION, Runtime="python3.12", Role=role, Handler="handler.handler",
                           Code={"ZipFile": _zip()}, Publish=True)
    client.create_alias(FunctionName=FUNCTION, Name="live", FunctionVersion="1")
    return StepContext(clients=module_clients, case_name="case", run_id="run-1", label="invoke", spec_dir=tmp_path,
                       logger=logging.getLogger("test.awslambda"))


@pytest.fixture
def scripted(monkeypatch: pytest.MonkeyPatch) -> Script:
    """Make moto's no-Docker invoke check the function and answer as queued (else echo, as moto does)."""
    script = Script()
    original = LambdaSimpleBackend.invoke

    def invoke_(self: LambdaSimpleBackend, function_name: str, qualifier: str | None, body: Any, headers: Any,
                response_headers: dict[str, str]) -> Any:
        self.get_function(function_name, qualifier)  # raises ResourceNotFoundException (404) if absent
        script.requests.append({
            "function": function_name, "qualifier": qualifier, "body": body,
            "log_type": headers.get("X-Amz-Log-Type"), "client_context": headers.get("X-Amz-Client-Context"),
            "invocation_type": headers.get("X-Amz-Invocation-Type"),
        })
        if not script.replies:
            return original(self, function_name, qualifier, body, headers, response_headers)
        reply = script.replies.pop(0)
        if reply.function_error:
            response_headers["x-amz-function-error"] = reply.function_error
        if reply.log is not None:
            response_headers["x-amz-log-result"] = base64.b64encode(reply.log.encode()).decode()
        response_headers["x-amz-executed-version"] = reply.executed_version
        if reply.raw is not None:
            return reply.raw
        return json.dumps(reply.payload).encode() if reply.payload is not None else (body or "").encode()

    monkeypatch.setattr(LambdaSimpleBackend, "invoke", invoke_)
    return script


def run(step: InvokeLambdaStep, ctx: StepContext) -> StepOutcome:
    return REGISTRY["invoke_lambda"].run(step, ctx)


def step(**kwargs: Any) -> InvokeLambdaStep:
    return InvokeLambdaStep(**{"function": FUNCTION, **kwargs})


def everything(outcome: StepOutcome) -> str:
    return "\n".join([outcome.summary, json.dumps(outcome.details), outcome.markdown, json.dumps(outcome.tables),
                      " ".join(link.url + link.text for link in outcome.links),
                      json.dumps([c.model_dump() for c in outcome.checks])])


# --- models -------------------------------------------------------------------------------------------------------


def test_model_validation() -> None:
    with pytest.raises(ValidationError, match="payload or payload_file"):
        step(payload={"a": 1}, payload_file="p.json")
    with pytest.raises(ValidationError, match="expect needs invocation_type RequestResponse"):
        step(invocation_type="Event", expect={"json_subset": {"ok": True}})
    with pytest.raises(ValidationError, match="invalid JMESPath"):
        step(expect={"jmespath": {"a[": 1}})
    with pytest.raises(ValidationError, match="json_subset and/or jmespath"):
        step(expect={})
    with pytest.raises(ValidationError, match="malformed path"):
        step(sensitive_fields=["a..b"])
    with pytest.raises(ValidationError, match="at most 3583"):
        step(client_context={"custom": {"blob": "x" * 3000}})
    with pytest.raises(ValidationError):
        step(invocation_type="Async")
    with pytest.raises(ValidationError):
        step(payloads={})
    assert step(expect={"json_subset": None}).expect.has_subset
    assert "payload_file" in InvokeLambdaStep.template_files
    assert "sensitive_fields" in InvokeLambdaStep.untemplated and "name" in InvokeLambdaStep.untemplated


def test_client_context_encoding_and_limit() -> None:
    encoded = encode_client_context({"custom": {"case": "c1"}})
    assert json.loads(base64.b64decode(encoded)) == {"custom": {"case": "c1"}}
    # the limit is on the base64 text: 2687 bytes of JSON encode to exactly 3584 characters
    with pytest.raises(ValueError):
        encode_client_context({"k": "x" * (2687 - len('{"k":""}'))})
    assert len(encode_client_context({"k": "x" * (2685 - len('{"k":""}'))})) <= 3583


def test_helpers() -> None:
    assert function_label("f", None) == "f" and function_label("f", "live") == "f:live"
    assert function_name("arn:aws:lambda:us-east-1:123456789012:function:ingest:live") == "ingest"
    assert function_name("123456789012:function:ingest") == "ingest"
    assert function_name("ingest:3") == "ingest" and function_name("ingest") == "ingest"
    assert decode_log_tail(None) == "" and decode_log_tail("not base64!") == ""
    assert decode_log_tail(base64.b64encode(b"a" * 5000 + b"END").decode()) == "a" * 4093 + "END"
    assert truncate("abc", 5) == "abc"
    assert truncate("x" * 10, 4).startswith("xxxx\n… [truncated: showing 4 of 10 characters]")
    assert EXPECTED_STATUS == {"RequestResponse": 200, "Event": 202, "DryRun": 204}


@pytest.mark.parametrize(
    ("expected", "actual", "problems"),
    [
        ({"a": 1}, {"a": 1, "b": 2}, []),
        ({"a": {"b": [1, {"c": "x"}]}}, {"a": {"b": [1, {"c": "x", "d": 0}]}}, []),
        ({"a": 1}, {"a": 2}, ["$.a: expected 1, got 2"]),
        ({"a": 1}, {}, ["$.a: missing (expected 1)"]),
        ({"a": True}, {"a": 1}, ["$.a: expected true, got 1"]),
        ({"a": 1.0}, {"a": 1}, []),
        ({"l": [1, 2]}, {"l": [1]}, ["$.l: expected 2 items, got 1"]),
        ({"l": [1]}, {"l": "x"}, ['$.l: expected a list, got "x"']),
        ({"o": {}}, {"o": []}, ["$.o: expected an object, got []"]),
        ({"l": [{"k": 1}]}, {"l": [{"k": 2}]}, ["$.l[0].k: expected 1, got 2"]),
        (None, None, []),
    ],
)
def test_json_subset_mismatches(expected: Any, actual: Any, problems: list[str]) -> None:
    assert json_subset_mismatches(expected, actual) == problems


def test_jmespath_mismatches_and_json_equal() -> None:
    doc = {"rows": [{"id": 1}, {"id": 2}], "status": "ok", "flag": True}
    assert jmespath_mismatches({"length(rows)": 2, "status": "ok", "rows[0]": {"id": 1}}, doc) == []
    assert jmespath_mismatches({"flag": 1, "missing": None}, doc) == ["flag: expected 1, got true"]
    assert jmespath_mismatches({"status": "bad"}, doc) == ['status: expected "bad", got "ok"']
    assert not json_equal({"a": [True]}, {"a": [1]}) and json_equal({"a": [1.0]}, {"a": [1]})


# --- invocation statuses ------------------------------------------------------------------------------------------


def test_request_response_succeeds_with_log_tail_and_evidence(ctx: StepContext, scripted: Script) -> None:
    scripted.reply(payload={"status": "ok", "rows": 3}, log="START RequestId: 1\nprocessed 3 rows\nEND",
                   executed_version="1")
    sent: list[dict[str, Any]] = []
    ctx.clients.client("lambda").meta.events.register("provide-client-params.lambda.Invoke",
                                                      lambda params, **_: sent.append(dict(params)))
    outcome = run(step(qualifier="live", payload={"bucket": "test-bucket"}, client_context={"custom": {"c": 1}},
                       expect={"json_subset": {"status": "ok"}, "jmespath": {"rows": 3}}), ctx)
    req = scripted.requests[0]
    assert req["log_type"] == "Tail"
    # moto reads the qualifier from a lowercase query parameter that boto3 never sends: check what was sent
    assert sent[0]["Qualifier"] == "live" and sent[0]["LogType"] == "Tail"
    assert json.loads(base64.b64decode(req["client_context"])) == {"custom": {"c": 1}}
    assert json.loads(req["body"]) == {"bucket": "test-bucket"}
    assert outcome.summary == "ingest:live: RequestResponse returned 200, response as expected"
    d = outcome.details
    assert (d["status"], d["executed_version"], d["qualifier"], d["invocation_type"]) == (
        200, "1", "live", "RequestResponse")
    assert d["response"] == {"status": "ok", "rows": 3}
    assert d["payload"] == {"bucket": "test-bucket"}
    assert "processed 3 rows" in d["log_tail"] and "processed 3 rows" in outcome.markdown
    assert d["request_id"] and outcome.request_ids == [d["request_id"]]
    assert "- **executed version**: `1`" in outcome.markdown and "test-bucket" in outcome.markdown
    # in-process moto keeps AWS's own endpoint, so the console link is made as for real AWS
    assert [link.url for link in outcome.links] == [
        "https://us-east-1.console.aws.amazon.com/lambda/home?region=us-east-1#/functions/ingest"]
    json.dumps(d)


def test_event_succeeds_with_202_and_no_response(ctx: StepContext, scripted: Script) -> None:
    outcome = run(step(invocation_type="Event", payload={"a": 1}), ctx)
    assert scripted.requests[0]["log_type"] is None  # no log tail for async invocations
    assert outcome.details["status"] == 202
    assert "response" not in outcome.details and "log_tail" not in outcome.details
    assert outcome.summary == "ingest: Event returned 202"
    assert "**Response**" not in outcome.markdown


def test_dry_run_succeeds_with_204(ctx: StepContext, scripted: Script) -> None:
    outcome = run(step(invocation_type="DryRun"), ctx)
    assert outcome.details["status"] == 204 and outcome.summary == "ingest: DryRun returned 204"
    assert scripted.requests[0]["body"] in (None, "", b"")


@pytest.mark.parametrize(("invocation_type", "wrong"), [("RequestResponse", 202), ("Event", 200), ("DryRun", 200)])
def test_an_unexpected_status_fails(ctx: StepContext, invocation_type: str, wrong: int) -> None:
    client = ctx.clients.client("lambda")
    with Stubber(client) as stub:
        stub.add_response("invoke", {"StatusCode": wrong, "Payload": io.BytesIO(b"")})
        with pytest.raises(StepError, match=f"returned status {wrong}; a {invocation_type} invocation succeeds "
                                            f"with {EXPECTED_STATUS[invocation_type]}") as info:
            run(step(invocation_type=invocation_type), ctx)
    assert info.value.details["status"] == wrong


@pytest.mark.parametrize("kind", ["Unhandled", "Handled"])
def test_a_function_error_fails_with_error_type_and_message(ctx: StepContext, scripted: Script, kind: str) -> None:
    scripted.reply(payload={"errorType": "KeyError", "errorMessage": "'bucket'", "stackTrace": ["line 3"]},
                   function_error=kind, log="Traceback...\nKeyError: 'bucket'")
    with pytest.raises(StepError) as info:
        run(step(payload={}), ctx)
    err = info.value
    assert err.message == f"Lambda function ingest failed with a function error ({kind}): KeyError: 'bucket'"
    assert isinstance(err, CheckFailed) and err.code == CHECK_FAILED
    assert "KeyError: 'bucket'" in err.details["log_tail"]
    assert err.details["status"] == 200 and err.details["request_id"]
    assert "Log tail" in (err.markdown or "")


def test_a_function_error_without_a_json_payload(ctx: StepContext, scripted: Script) -> None:
    scripted.reply(raw=b"Task timed out after 3.00 seconds", function_error="Unhandled")
    with pytest.raises(StepError, match=r"\(Unhandled\): Task timed out after 3.00 seconds"):
        run(step(), ctx)


def test_an_unknown_function_fails_naming_it(ctx: StepContext, scripted: Script) -> None:
    with pytest.raises(AwsCallError) as info:
        run(step(function="no-such-function", qualifier="live"), ctx)
    assert info.value.code == "ResourceNotFoundException"
    assert info.value.message.startswith("Lambda Invoke on no-such-function:live failed: ResourceNotFoundException")
    assert info.value.__cause__ is None


def test_moto_alone_accepts_any_function_name(ctx: StepContext) -> None:
    """Without the scripted fixture moto echoes even for a function that does not exist (a moto quirk)."""
    outcome = run(step(function="does-not-exist", payload={"echo": 1}), ctx)
    assert outcome.details["response"] == {"echo": 1}


def test_results_queued_through_motos_own_api(ctx: StepContext) -> None:
    """moto's in-process equivalent of POST /moto-api/static/lambda-simple/response."""
    moto_api_backend.set_lambda_simple_result(json.dumps({"queued": True}), DEFAULT_ACCOUNT_ID, REGION)
    outcome = run(step(payload={"a": 1}, expect={"json_subset": {"queued": True}}), ctx)
    assert outcome.details["response"] == {"queued": True}


def test_log_tail_keeps_the_last_4_kb(ctx: StepContext, scripted: Script) -> None:
    scripted.reply(payload={}, log="x" * 6000 + "THE END")
    outcome = run(step(), ctx)
    tail = outcome.details["log_tail"]
    assert len(tail.encode()) == 4096 and tail.endswith("THE END")


# --- expectations -------------------------------------------------------------------------------------------------


def test_expectations_not_met_fail_listing_each(ctx: StepContext, scripted: Script) -> None:
    scripted.reply(payload={"status": "partial", "rows": [1, 2]})
    with pytest.raises(StepError) as info:
        run(step(expect={"json_subset": {"status": "ok"}, "jmespath": {"length(rows)": 3}}), ctx)
    assert info.value.message == '$.status: expected "ok", got "partial"; length(rows): expected 3, got 2'
    assert info.value.details["problems"] == ['$.status: expected "ok", got "partial"',
                                              "length(rows): expected 3, got 2"]
    assert "Expectations not met" in (info.value.markdown or "")
    assert [(c.name, c.verdict, c.expected, c.actual) for c in info.value.checks] == [
        ("status", "passed", "200", "200"), ("function error", "passed", "none", "none"),
        ("json_subset", "failed", '{"status": "ok"}', '$.status: expected "ok", got "partial"'),
        ("length(rows)", "failed", "3", "2")]


def test_expect_on_a_non_json_response_fails(ctx: StepContext, scripted: Script) -> None:
    scripted.reply(raw=b"plain text")
    with pytest.raises(StepError, match="returned no JSON payload to check: 'plain text'"):
        run(step(expect={"jmespath": {"a": 1}}), ctx)


def test_a_non_json_response_without_expect_is_shown_as_text(ctx: StepContext, scripted: Script) -> None:
    scripted.reply(raw=b"plain text")
    outcome = run(step(), ctx)
    assert outcome.details["response"] == "plain text" and "plain text" in outcome.markdown


def test_a_large_response_is_truncated(ctx: StepContext, scripted: Script) -> None:
    scripted.reply(payload={"rows": ["r" * 50] * 1000})
    outcome = run(step(), ctx)
    assert outcome.details["response_bytes"] > MAX_SHOWN_CHARS
    assert isinstance(outcome.details["response"], str) and "[truncated: showing 4000 of" in outcome.details["response"]
    assert "[truncated: showing 4000 of" in outcome.markdown
    assert len(outcome.markdown) < 3 * MAX_SHOWN_CHARS


# --- payload files --------------------------------------------------------------------------------------------------


def test_payload_file_is_rendered_with_the_case_variables(ctx: StepContext, scripted: Script) -> None:
    (ctx.spec_dir / "event.json").write_text('{"bucket": "{{ bucket }}", "n": 2}', encoding="utf-8")
    ctx.render = lambda text: text.replace("{{ bucket }}", "test-bucket")
    outcome = run(step(payload_file="event.json"), ctx)
    assert json.loads(scripted.requests[0]["body"]) == {"bucket": "test-bucket", "n": 2}
    assert outcome.details["payload"] == {"bucket": "test-bucket", "n": 2}


def test_payload_file_errors(ctx: StepContext) -> None:
    with pytest.raises(StepError, match="cannot read payload_file missing.json"):
        run(step(payload_file="missing.json"), ctx)
    (ctx.spec_dir / "bad.json").write_text("{not json", encoding="utf-8")
    with pytest.raises(StepError, match=r"payload_file bad.json is not valid JSON after templating: .*line 1"):
        run(step(payload_file="bad.json"), ctx)


def test_invoke_function_sends_no_payload_when_none(ctx: StepContext, scripted: Script) -> None:
    response = invoke(ctx.clients.client("lambda"), FUNCTION, None)
    assert response["StatusCode"] == 200 and isinstance(response["Payload"], bytes)
    assert scripted.requests[0]["body"] in (None, "", b"")


# --- secrets ------------------------------------------------------------------------------------------------------


def test_sensitive_fields_never_leak(ctx: StepContext, scripted: Script, caplog: pytest.LogCaptureFixture) -> None:
    """The canary is in the payload, echoed in the response, printed in the log and in the error message."""
    caplog.set_level(logging.INFO)
    caplog.set_level(logging.DEBUG, logger="test.awslambda")
    payload = {"db": {"host": "h", "password": CANARY}, "users": [{"name": "a", "token": CANARY + "-t"}]}
    sensitive = ["db.password", "users[*].token"]
    scripted.reply(payload={"echo": {"db": {"password": CANARY}}, "ok": True},
                   log=f"event: {json.dumps(payload)}\nconnecting with {CANARY}")
    texts: list[str] = []
    outcome = run(step(payload=payload, sensitive_fields=sensitive,
                       expect={"json_subset": {"ok": True}, "jmespath": {"echo.db.password": CANARY}}), ctx)
    texts.append(everything(outcome))
    assert outcome.checks[-1].expected == outcome.checks[-1].actual == '"****"'  # the secret expected, masked
    assert outcome.details["payload"]["db"] == {"host": "h", "password": mask(CANARY)}
    assert outcome.details["payload"]["users"][0]["name"] == "a"
    assert mask(CANARY) in outcome.details["log_tail"]

    # failure paths: a mismatch on the sensitive field, then a function error that repeats the secret
    scripted.reply(payload={"db": {"password": CANARY + "-other"}})
    with pytest.raises(StepError) as info:
        run(step(payload=payload, sensitive_fields=sensitive,
                 expect={"json_subset": {"db": {"password": CANARY}}, "jmespath": {"db.password": CANARY}}), ctx)
    texts += [str(info.value), json.dumps(info.value.details), json.dumps([c.model_dump() for c in info.value.checks])]
    assert "$.db.password: expected ****, got ****" in info.value.message
    assert [(c.expected, c.actual) for c in info.value.checks[2:]] == [
        ('{"db": {"password": "****"}}', '$.db.password: expected ****, got ****'), ('"****"', '"****"')]
    scripted.reply(payload={"errorType": "AuthError", "errorMessage": f"login failed for {CANARY}"},
                   function_error="Unhandled", log=f"password={CANARY}")
    with pytest.raises(StepError) as info:
        run(step(payload=payload, sensitive_fields=sensitive), ctx)
    texts += [str(info.value), json.dumps(info.value.details)]
    assert f"AuthError: login failed for {mask(CANARY)}" in info.value.message
    texts.append(caplog.text)
    blob = "\n".join(texts)
    assert CANARY not in blob


def test_no_console_link_for_an_emulator_endpoint() -> None:
    from types import SimpleNamespace

    from tasks.awslambda import _links

    emulator = SimpleNamespace(meta=SimpleNamespace(endpoint_url="http://localhost:5000", region_name=REGION))
    assert _links(emulator, step()) == []


def test_sensitive_payload_values_are_declared_secrets_for_the_whole_run() -> None:
    step = InvokeLambdaStep(function="f", payload={"auth": {"token": "tok-123"}, "n": 1},
                            sensitive_fields=["auth.token"])
    assert "tok-123" in step.secrets()
    assert InvokeLambdaStep(function="f", payload={"auth": {"token": "x"}}).secrets() == []
