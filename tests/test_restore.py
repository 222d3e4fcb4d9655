"""SSM parameters are always put back, and secrets never leak: flow runs under Prefect's test harness (moto)."""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path
from typing import Any

import pytest

import flows.run.engine
from flows.evidence.results import result_of
from flows.pipeline_test import pipeline_test

pytestmark = pytest.mark.usefixtures("prefect_harness")

CANARY = "canary-Secret-7f3a9e1d"  # a SecureString value that must never be seen anywhere


def snapshot_all(ssm: Any) -> dict[str, tuple[Any, ...]]:
    """Value, type, KMS key and description of every parameter (compared before and after a case)."""
    out = {}
    for page in ssm.get_paginator("describe_parameters").paginate():
        for meta in page["Parameters"]:
            value = ssm.get_parameter(Name=meta["Name"], WithDecryption=True)["Parameter"]["Value"]
            out[meta["Name"]] = (value, meta["Type"], meta.get("KeyId") if meta["Type"] == "SecureString" else None,
                                 meta.get("Description"))
    return out


@pytest.fixture
def ssm(clients):
    client = clients.client("ssm")
    key = clients.client("kms").create_key()["KeyMetadata"]["KeyId"]
    client.put_parameter(Name="/test/source", Value="prod-bucket", Type="String", Description="source bucket")
    client.put_parameter(Name="/test/list", Value="a,b", Type="StringList", Description="a list")
    client.put_parameter(Name="/test/token", Value="old-token-value", Type="SecureString", KeyId=key,
                         Description="api token")
    client.put_parameter(Name="/test/doomed", Value="keep me", Type="String", Description="deleted by the case")
    return client


def case(*last: dict[str, Any], name: str) -> dict[str, Any]:
    return {
        "case": name,
        "aws": {"region": "us-east-1", "allowed_parameter_prefixes": ["/test/"]},
        "steps": [
            {"kind": "set_parameters", "name": "change", "parameters": [
                {"name": "/test/source", "value": "test-bucket", "description": "changed"},
                {"name": "/test/list", "value": "x,y,z", "type": "StringList"},
                {"name": "/test/token", "value": CANARY, "type": "SecureString"},
                {"name": "/test/brand-new", "value": "created by the case"},
            ]},
            {"kind": "delete_parameters", "name": "remove", "names": ["/test/doomed"]},
            {"kind": "expect_parameters", "name": "check", "parameters": [
                {"name": "/test/token", "equals": CANARY, "type": "SecureString"},
                {"name": "/test/source", "equals": "test-bucket"}]},
            *last,
        ],
    }


FAILING = {"kind": "expect_parameters", "name": "fails", "parameters": [{"name": "/test/source", "equals": "nope"}]}


def test_last_step_fails_and_every_parameter_is_exactly_as_before(ssm, tmp_path: Path, caplog) -> None:
    before = snapshot_all(ssm)
    caplog.set_level(logging.DEBUG, logger="prefect")
    state = pipeline_test(spec=case(FAILING, name="Restore case"), base_dir=str(tmp_path), return_state=True)
    result = result_of(state)
    assert state.is_failed() and result is not None
    assert [(s.label, s.status) for s in result.steps] == [
        ("change", "passed"), ("remove", "passed"), ("check", "passed"), ("fails", "failed"), ("cleanup", "passed")]
    assert snapshot_all(ssm) == before
    # the restore is a step of the case, with before and after for each parameter, the secret masked
    cleanup = result.steps[-1]
    assert len(cleanup.details["actions"]) == 5
    assert_no_canary(result.model_dump_json(), caplog.text, read_artifact_texts(result.flow_run_id),
                     read_log_texts(result.flow_run_id))


def test_exception_inside_a_step_is_restored(ssm, tmp_path: Path, monkeypatch) -> None:
    import tasks.ssm

    before = snapshot_all(ssm)

    def explode(*_: Any, **__: Any) -> Any:
        raise RuntimeError("bug while comparing")

    monkeypatch.setattr(tasks.ssm, "compare", explode)
    state = pipeline_test(spec=case(name="Error case"), base_dir=str(tmp_path), return_state=True)
    result = result_of(state)
    assert result is not None and result.steps[2].status == "error"
    assert snapshot_all(ssm) == before


class Crash(BaseException):
    """Stands in for what ends a run abruptly (a SIGTERM surfaces in the flow as a BaseException, too)."""


def test_crash_of_the_flow_run_is_restored(ssm, tmp_path: Path, monkeypatch) -> None:
    """The run dies in the middle of the case: its own clean-up path undoes the changes at once."""
    before = snapshot_all(ssm)
    real_collect = flows.run.engine._collect

    def collect_then_die(placed: Any, future: Any, ctx: Any) -> Any:
        result = real_collect(placed, future, ctx)
        if placed.label == "remove":
            raise Crash()
        return result

    monkeypatch.setattr(flows.run.engine, "_collect", collect_then_die)
    with pytest.raises(Crash):
        pipeline_test(spec=case(name="Crash case"), base_dir=str(tmp_path), return_state=True)
    assert snapshot_all(ssm) == before
    # the evidence of what was done before the run stopped is kept, with the undo as its last step
    (pack,) = (Path.cwd() / "evidence" / "crash-case").iterdir()
    report = json.loads((pack / "report.json").read_text(encoding="utf-8"))
    # the step that was under way when the run stopped is listed as interrupted
    assert [s["label"] for s in report["steps"]] == ["change", "remove", "run stopped", "cleanup"]
    assert report["steps"][1]["status"] == "error" and report["steps"][1]["error_code"] == "Interrupted"
    assert report["status"] == "failed"
    assert flows.run.engine.LIVE == {} or all(not c.undo.actions for c in flows.run.engine.LIVE.values())


def test_hook_restores_what_is_left_pending(ssm, tmp_path: Path) -> None:
    """The on_crashed / on_cancellation hook: undoes whatever a run of this process left pending."""
    from tasks.kit.aws import AwsTarget, ClientFactory
    from tasks.kit.step import StepContext, UndoLog
    from tasks.ssm import SetParametersStep, run_set_parameters

    before = snapshot_all(ssm)
    ctx = StepContext(clients=ClientFactory(AwsTarget(region="us-east-1")), case_name="c", run_id="run-x",
                      label="change", undo=UndoLog())
    run_set_parameters(SetParametersStep(parameters=[{"name": "/test/source", "value": "elsewhere"}]), ctx)
    assert snapshot_all(ssm) != before
    flows.run.engine.LIVE["run-x"] = ctx

    class FlowRun:
        id = "run-x"

    flows.run.engine.undo_hook(None, FlowRun(), None)
    assert snapshot_all(ssm) == before and "run-x" not in flows.run.engine.LIVE


def test_guard_rail_refuses_writes_outside_allowed_prefixes(ssm, tmp_path: Path) -> None:
    spec = case(name="Guard case")
    spec["steps"][0]["parameters"].append({"name": "/prod/source", "value": "x"})
    before = snapshot_all(ssm)
    state = pipeline_test(spec=spec, base_dir=str(tmp_path), return_state=True)
    assert state.is_failed()
    assert "SSM parameter /prod/source is outside the allowed parameter prefixes (/test/)" in str(state.message)
    assert snapshot_all(ssm) == before


# ------------------------------------------------------------------------------------------------- helpers
def assert_no_canary(*texts: str) -> None:
    for text in texts:
        assert CANARY not in text
        assert json.dumps(CANARY)[1:-1] not in text


def read_artifact_texts(flow_run_id: str | None) -> str:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    async def go() -> str:
        async with get_client() as client:
            arts = await client.read_artifacts(
                artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id])))
        assert len(arts) >= 6
        return "\n".join(f"{a.description}\n{a.data}" for a in arts)

    return asyncio.run(go())


def read_log_texts(flow_run_id: str | None) -> str:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId
    from prefect.logging.handlers import APILogHandler

    async def go() -> str:
        await APILogHandler.aflush()  # logs reach the API in batches: send what is queued first
        async with get_client() as client:
            logs = await client.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id])))
        assert logs
        return "\n".join(entry.message for entry in logs)

    return asyncio.run(go())


def test_a_clean_up_that_cannot_restore_says_what_is_left_and_the_recover_command(ssm, tmp_path: Path,
                                                                                  monkeypatch) -> None:
    """The AWS endpoint is gone when the clean-up starts: the cleanup step names what is left undone (the
    journal still holds it) and the exact `recover` command; that command's work, once AWS answers again, puts
    everything back."""
    from botocore.exceptions import EndpointConnectionError

    import flows.pipeline_test
    from flows.cli import format_result
    from flows.run.recover import recover
    from tasks.kit.aws import AwsTarget, ClientFactory
    from tasks.kit.journal import read_entries

    before = snapshot_all(ssm)
    gone = {"now": False}

    def unreachable(model: Any, **_: Any) -> None:
        if gone["now"]:
            raise EndpointConnectionError(endpoint_url="https://ssm.us-east-1.amazonaws.com/")

    real_client = ClientFactory.client

    def client(self: ClientFactory, service: Any) -> Any:
        made = real_client(self, service)
        if service == "ssm":
            made.meta.events.register("before-call.ssm", unreachable, unique_id="endpoint-gone")
        return made

    real_cleanup = flows.run.engine.run_cleanup

    def cleanup_without_aws(ctx: Any) -> Any:
        gone["now"] = True
        return real_cleanup(ctx)

    monkeypatch.setattr(ClientFactory, "client", client)
    monkeypatch.setattr(flows.pipeline_test, "run_cleanup", cleanup_without_aws)
    spec = case(name="Gone case")
    spec["aws"]["journal_prefix"] = "/pipeline-test/gone"
    result = result_of(pipeline_test(spec=spec, base_dir=str(tmp_path), write_evidence=False, return_state=True))
    gone["now"] = False
    assert result is not None and result.steps[-1].label == "cleanup" and result.steps[-1].status == "error"
    error = result.steps[-1].error or ""
    assert ("left undone, kept in the undo journal: ssm:/test/brand-new, ssm:/test/doomed, ssm:/test/list, "
            "ssm:/test/source, ssm:/test/token") in error
    command = "python -m flows.pipeline_test recover --region us-east-1 --journal-prefix /pipeline-test/gone"
    assert f"`{command}`" in error and command in format_result(result)
    assert CANARY not in error
    assert len(read_entries(ssm, "/pipeline-test/gone")) == 5 and snapshot_all(ssm) != before

    # what that command does, once AWS answers again
    _, report = recover(ClientFactory(AwsTarget(region="us-east-1")), prefix="/pipeline-test/gone",
                        logger=logging.getLogger("test"))
    assert len(report.done) == 5 and not report.failed and not report.skipped
    assert snapshot_all(ssm) == before


def test_recover_without_credentials_says_so_in_one_line_at_once(monkeypatch, capsys, tmp_path: Path) -> None:
    import time

    from flows.cli import main

    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    t0 = time.monotonic()
    code = main(["recover", "--region", "us-east-1"])
    took = time.monotonic() - t0
    err = capsys.readouterr().err
    assert code == 3 and err.startswith("Could not run: no AWS credentials found") and err.count("\n") == 1, err
    assert "Traceback" not in err and took < 10  # before any Prefect server starts


def test_recover_that_cannot_read_the_journal_exits_3_without_a_traceback(monkeypatch, capsys) -> None:
    """Credentials, but the journal refuses them (AccessDenied): one line, exit 3."""
    import flows.run.recover
    from tasks.kit.errors import AwsCallError

    def denied(*_: Any, **__: Any) -> Any:
        raise AwsCallError("SSM GetParametersByPath (undo journal) on /pipeline-test/journal failed: "
                           "AccessDeniedException", code="AccessDeniedException")

    monkeypatch.setattr(flows.run.recover, "read_entries", denied)
    code = flows.run.recover.main(["--region", "us-east-1"])
    err = capsys.readouterr().err
    assert code == 3 and "Could not run: SSM GetParametersByPath (undo journal)" in err and "AccessDenied" in err
    assert "Traceback" not in err
