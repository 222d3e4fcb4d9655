"""Slack notices: the message posted to a webhook (a local HTTP server on 127.0.0.1 stands in for Slack), when
one is sent, and that a broken webhook is logged and never raises nor shows its URL."""

from __future__ import annotations

import asyncio
import http.server
import json
import logging
import threading
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Iterator

import pytest
import yaml
from pydantic import ValidationError

from flows.evidence.notify import NotifySettings, build_message, notify, run_url
from flows.evidence.report import Audit, PackRef
from flows.evidence.results import CaseResult, StepResult
from flows.run.local_server import free_port

CANARY = "T0CANARY/B0CANARY/canary-" + uuid.uuid4().hex
TOKEN = "xoxb-canary-" + uuid.uuid4().hex


class SlackStub(http.server.BaseHTTPRequestHandler):
    """Answers like Slack: a webhook POST gets `ok` (or the status set in `status`); chat.postMessage gets
    JSON. Every request is recorded."""

    status = 200
    chat_reply: dict[str, Any] = {"ok": True}
    requests: list[dict[str, Any]] = []

    def do_POST(self) -> None:  # noqa: N802
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        SlackStub.requests.append({"path": self.path, "headers": dict(self.headers), "body": body.decode()})
        if self.path.endswith("chat.postMessage"):
            payload = json.dumps(SlackStub.chat_reply).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
        else:
            payload = b"ok" if SlackStub.status < 400 else b"internal_error"
            self.send_response(SlackStub.status)
            self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def slack() -> Iterator[str]:
    SlackStub.status, SlackStub.chat_reply, SlackStub.requests = 200, {"ok": True}, []
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), SlackStub)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def save_webhook(url: str) -> str:
    from prefect_slack import SlackWebhook

    name = f"test-slack-{uuid.uuid4().hex[:8]}"
    SlackWebhook(url=url).save(name)
    return name


def failed_result(ui_url: str | None = "http://127.0.0.1:4200/runs/flow-run/RUN") -> CaseResult:
    start = datetime(2026, 1, 5, 6, 30, tzinfo=timezone.utc)
    run_id = str(uuid.uuid4())
    return CaseResult(
        case="Orders ingestion", status="failed", flow_run_id=run_id,
        ui_url=ui_url.replace("RUN", run_id) if ui_url else None, started_at=start,
        ended_at=start + timedelta(seconds=61), duration_s=61.0, variables={"run_date": "2026-01-05"},
        steps=[
            StepResult(number="1", label="land-orders-file", kind="upload", status="passed", duration_s=0.2,
                       summary="uploaded 1 file(s)"),
            StepResult(number="2", label="curated-file-written", kind="expect_objects", status="failed",
                       duration_s=60.0, error_code="Timeout",
                       error="no object under s3://demo-curated/curated/orders/ after 60 s (found: a<b & c.tmp)"),
            StepResult(number="3", label="athena-count", kind="athena_query", status="skipped"),
            StepResult(number="end", label="cleanup", kind="cleanup", status="passed", duration_s=0.1),
        ])


def passed_result() -> CaseResult:
    result = failed_result()
    steps = [s.model_copy(update={"status": "passed", "error": None, "error_code": None}) for s in result.steps]
    return result.model_copy(update={"status": "passed", "steps": steps})


def posted_text() -> str:
    assert len(SlackStub.requests) == 1, SlackStub.requests
    return json.loads(SlackStub.requests[0]["body"])["text"]


# ------------------------------------------------------------------------------------------- the settings
def test_settings_from_yaml_and_their_rules() -> None:
    raw = yaml.safe_load("notify:\n  slack_webhook_block: data-tests\n  when: [failure, success]\n")["notify"]
    settings = NotifySettings.model_validate(raw)
    assert settings.slack_webhook_block == "data-tests" and settings.when == ["failure", "success"]
    assert NotifySettings(slack_webhook_block="x").when == ["failure"]
    assert NotifySettings(slack_credentials_block="bot", channel="#data-tests").channel == "#data-tests"
    bad = [
        {},                                                            # no target
        {"slack_webhook_block": "a", "slack_credentials_block": "b", "channel": "#c"},  # two targets
        {"slack_credentials_block": "bot"},                            # no channel
        {"slack_webhook_block": "a", "channel": "#c"},                 # channel with a webhook
        {"slack_webhook_block": "a", "when": ["always"]},              # unknown moment
        {"slack_webhook_block": "a", "when": []},
        {"slack_webhook_block": "a", "webhook_url": "https://hooks.slack.com/x"},  # extra="forbid"
    ]
    for data in bad:
        with pytest.raises(ValidationError):
            NotifySettings.model_validate(data)


def test_message_text_escapes_and_links() -> None:
    result = failed_result()
    text = build_message(result)
    assert "case 'Orders ingestion' FAILED" in text
    assert "`2` curated-file-written · expect_objects · failed" in text
    assert "`3` athena-count · athena_query · skipped" in text
    assert "*Failed at step 2 'curated-file-written'* [Timeout]:" in text
    assert "(found: a&lt;b &amp; c.tmp)" in text  # mrkdwn-escaped
    assert f"<{result.ui_url}|Open the flow run in Prefect>" in text


def test_run_link_from_prefect_ui_url() -> None:
    from prefect.settings import PREFECT_UI_URL, temporary_settings

    result = failed_result(ui_url=None)
    with temporary_settings({PREFECT_UI_URL: "http://127.0.0.1:4200"}):
        assert run_url(result) == f"http://127.0.0.1:4200/runs/flow-run/{result.flow_run_id}"
        assert run_url(result, "http://127.0.0.1:9/x") == "http://127.0.0.1:9/x"  # the caller's wins


# ----------------------------------------------------------------------------------------- the webhook
def test_failed_case_posts_case_failing_step_and_run_link(prefect_harness, slack) -> None:
    name = save_webhook(f"{slack}/services/{CANARY}")
    result = failed_result()
    notify(result, NotifySettings(slack_webhook_block=name))
    assert SlackStub.requests[0]["path"] == f"/services/{CANARY}"
    text = posted_text()
    assert "Orders ingestion" in text and "FAILED" in text
    assert "Failed at step 2 'curated-file-written'" in text and "no object under s3://demo-curated" in text
    assert f"<{result.ui_url}|" in text
    assert CANARY not in text


def test_notice_names_deployment_variables_and_pack() -> None:
    result = failed_result().model_copy(update={
        "audit": Audit(deployment="orders/nightly", work_pool="ecs"),
        "variables": {"run_date": "2026-03-14", **{f"v{i}": f"x{i}" for i in range(10)}},
        "pack": PackRef(folder="/e/p", manifest_sha256="a" * 64, s3_uri="s3://ev/p/")})
    text = build_message(result)
    assert "Deployment `orders/nightly` (work pool `ecs`)" in text
    assert "`run_date`=`2026-03-14`" in text and "and 3 more" in text
    assert "Evidence pack: `s3://ev/p/`" in text
    local = build_message(result.model_copy(update={"pack": PackRef(folder="/e/p"), "audit": None}))
    assert "Evidence pack: `/e/p` (on the host that ran the case)" in local and "Deployment" not in local


def test_when_decides_whether_to_send(prefect_harness, slack) -> None:
    name = save_webhook(f"{slack}/services/{CANARY}")
    notify(passed_result(), NotifySettings(slack_webhook_block=name))           # failure only: no notice
    notify(failed_result(), NotifySettings(slack_webhook_block=name, when=["success"]))
    notify(failed_result(), None)
    assert SlackStub.requests == []
    notify(passed_result(), {"slack_webhook_block": name, "when": ["failure", "success"]})
    text = posted_text()
    assert "case 'Orders ingestion' PASSED" in text and "Failed at step" not in text


@pytest.mark.parametrize("how", ["http-500", "refused", "bad-url", "missing-block"])
def test_broken_webhook_logs_without_the_url_and_does_not_raise(prefect_harness, slack, how, caplog, capfd) -> None:
    caplog.set_level(logging.DEBUG)  # slack_sdk logs URLs at DEBUG: they must not get through either
    if how == "http-500":
        SlackStub.status = 500
        name = save_webhook(f"{slack}/services/{CANARY}")
    elif how == "refused":
        name = save_webhook(f"http://127.0.0.1:{free_port()}/services/{CANARY}")
    elif how == "bad-url":
        name = save_webhook(f"hooks.slack.invalid/services/{CANARY}")  # urllib names the URL in its error
    else:
        name = "no-such-block-" + uuid.uuid4().hex[:6]
    notify(failed_result(), NotifySettings(slack_webhook_block=name))  # does not raise
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and "Slack notice" in r.getMessage()]
    assert len(warnings) == 1, caplog.text
    assert "Orders ingestion" in warnings[0] and "not sent" in warnings[0]
    if how == "http-500":
        assert "HTTP 500" in warnings[0]
    out, err = capfd.readouterr()
    for text in (caplog.text, out, err):
        assert CANARY not in text and "canary-" not in text


def test_inside_a_flow_a_broken_webhook_leaves_the_run_completed_and_its_logs_clean(prefect_harness, slack) -> None:
    from prefect import flow
    from prefect.artifacts import create_markdown_artifact
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId, LogFilter, LogFilterFlowRunId
    from prefect.runtime import flow_run

    SlackStub.status = 500
    name = save_webhook(f"{slack}/services/{CANARY}")

    @flow(name="notify-test")
    def end_of_case() -> str:
        create_markdown_artifact("# evidence", key="notify-test")
        notify(failed_result(), NotifySettings(slack_webhook_block=name))
        return str(flow_run.id)

    state = end_of_case(return_state=True)
    assert state.is_completed()
    run_id = state.result()
    assert len(SlackStub.requests) == 1

    async def read() -> tuple[list[Any], list[Any]]:
        async with get_client() as client:
            logs = await client.read_logs(LogFilter(flow_run_id=LogFilterFlowRunId(any_=[uuid.UUID(run_id)])))
            artifacts = await client.read_artifacts(
                artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[uuid.UUID(run_id)])))
            return logs, artifacts

    for _ in range(50):  # logs are shipped to the API in batches
        logs, artifacts = asyncio.run(read())
        if any("Slack notice" in log.message for log in logs):
            break
        import time

        time.sleep(0.1)
    messages = [log.message for log in logs]
    assert any("Slack notice for case 'Orders ingestion' not sent: the webhook answered HTTP 500" in m
               for m in messages), messages
    assert all(CANARY not in m for m in messages)
    assert all(CANARY not in json.dumps(a.data) for a in artifacts)


# ----------------------------------------------------------------------------- credentials and a channel
@pytest.fixture
def slack_api(slack, monkeypatch) -> str:
    """SlackCredentials' client pointed at the stub instead of slack.com."""
    from prefect_slack import SlackCredentials
    from slack_sdk.web.async_client import AsyncWebClient

    monkeypatch.setattr(SlackCredentials, "get_client",
                        lambda self: AsyncWebClient(token=self.token.get_secret_value(), base_url=f"{slack}/api/"))
    return slack


def save_credentials() -> str:
    from prefect_slack import SlackCredentials

    name = f"test-slack-bot-{uuid.uuid4().hex[:8]}"
    SlackCredentials(token=TOKEN).save(name)
    return name


def test_credentials_post_to_the_channel(prefect_harness, slack_api) -> None:
    name = save_credentials()
    notify(failed_result(), NotifySettings(slack_credentials_block=name, channel="#data-tests"))
    assert len(SlackStub.requests) == 1
    request = SlackStub.requests[0]
    assert request["path"] == "/api/chat.postMessage"
    assert request["headers"]["Authorization"] == f"Bearer {TOKEN}"
    body = json.loads(request["body"])
    assert body["channel"] == "#data-tests" and "Failed at step 2 'curated-file-written'" in body["text"]


def test_credentials_refused_by_slack_is_logged_without_the_token(prefect_harness, slack_api, caplog) -> None:
    caplog.set_level(logging.DEBUG)
    SlackStub.chat_reply = {"ok": False, "error": "channel_not_found"}
    name = save_credentials()
    notify(failed_result(), NotifySettings(slack_credentials_block=name, channel="#nowhere"))
    assert "not sent" in caplog.text and "channel_not_found" in caplog.text
    assert TOKEN not in caplog.text


# ----------------------------------------------------------------------------------------- wired in the flow
def test_the_flow_sends_the_case_notice_and_a_broken_webhook_never_changes_the_result(
        prefect_harness, slack, s3, tmp_path) -> None:
    from flows.evidence.results import result_of
    from flows.pipeline_test import pipeline_test

    s3.create_bucket(Bucket="notify-bucket")
    spec = {"case": "Notify case", "notify": {"slack_webhook_block": save_webhook(f"{slack}/services/{CANARY}")},
            "aws": {"region": "us-east-1"},
            "steps": [{"kind": "expect_objects", "name": "missing-output", "bucket": "notify-bucket",
                       "keys": ["never.csv"], "wait": {"timeout": 0.2}}]}
    state = pipeline_test(spec=spec, base_dir=str(tmp_path), return_state=True)
    result = result_of(state)
    assert state.is_failed() and result is not None
    text = posted_text()
    assert "Notify case" in text and "missing-output" in text and "timed out" in text
    assert result.flow_run_id in text  # the link to the run
    # it names the key variables and where the pack is; the pack and the UI record that it was sent
    assert "`run_date`=" in text and f"Evidence pack: `{result.evidence_dir}`" in text
    assert result.notice is not None and result.notice.sent and result.notice.target and result.notice.reason is None
    report = json.loads((Path(result.evidence_dir or "") / "report.json").read_text(encoding="utf-8"))
    assert report["notice"]["sent"] is True and CANARY not in json.dumps(report)
    # a passing case sends nothing by default (when: [failure]); a broken webhook leaves the result alone
    SlackStub.requests = []
    spec["steps"] = [{"kind": "expect_objects", "name": "bucket-listed", "bucket": "notify-bucket", "prefix": "",
                      "count": 0}]
    assert result_of(pipeline_test(spec=spec, base_dir=str(tmp_path), return_state=True)).passed
    assert SlackStub.requests == []
    spec["notify"] = {"slack_webhook_block": save_webhook(f"http://127.0.0.1:{free_port()}/x"),
                      "when": ["success", "failure"]}
    state = pipeline_test(spec=spec, base_dir=str(tmp_path), return_state=True)
    assert state.is_completed() and result_of(state).passed
    notice = result_of(state).notice
    assert notice is not None and notice.sent is False and "Connect" in (notice.reason or "")
