"""The evidence pack holds what the UI shows: each step's evidence in report.md is its UI artifact, rendered by
the same code from the same typed result (``StepResult.evidence`` and ``.links``), per step kind."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from flows.evidence.results import result_of
from flows.pipeline_test import pipeline_test

pytestmark = pytest.mark.usefixtures("prefect_harness")


def step_artifacts(flow_run_id: str) -> dict[str, str]:
    """The step cards' markdown, by their first line (``## Step N · name · verdict``)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    async def go() -> list[Any]:
        async with get_client() as client:
            return await client.read_artifacts(
                artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id])))

    return {a.data.split("\n", 1)[0]: a.data for a in asyncio.run(go())
            if a.type == "markdown" and isinstance(a.data, str) and a.data.startswith("## Step")}


def assert_pack_holds_ui(result: Any) -> None:
    """Every step that ran: its UI card, verbatim, in report.md; its evidence carried on its result."""
    ui = step_artifacts(str(result.flow_run_id))
    report = (Path(result.evidence_dir) / "report.md").read_text(encoding="utf-8")
    for step in result.steps:
        if step.status == "skipped":
            continue
        [card] = [text for first, text in ui.items() if f" · {step.label} · " in first]
        assert card.rstrip("\n") in report, f"step {step.number} {step.label} ({step.kind}): the pack lacks its UI evidence"
        assert step.evidence and step.evidence in card


def test_report_md_holds_every_step_s_ui_evidence_whole(clients, data_dir: Path) -> None:
    s3, ssm, sqs = clients.client("s3"), clients.client("ssm"), clients.client("sqs")
    s3.create_bucket(Bucket="flow-bucket")
    ssm.put_parameter(Name="/flow/source", Value="prod", Type="String")
    sqs.create_queue(QueueName="dlq")
    steps = [
        {"kind": "set_parameters", "name": "point", "parameters": [{"name": "/flow/source", "value": "test"}]},
        {"kind": "upload", "name": "land", "files": ["data/orders.csv"], "bucket": "flow-bucket",
         "key_prefix": "in/{{ flow_run_id }}/", "cleanup": True},
        {"kind": "expect_objects", "name": "landed", "bucket": "flow-bucket", "prefix": "in/{{ flow_run_id }}/",
         "count": 1, "wait": {"timeout": 5}, "content": {"format": "csv", "row_count": 2}},
        {"kind": "expect_objects", "name": "nothing-rejected", "bucket": "flow-bucket",
         "prefix": "rejected/{{ flow_run_id }}/", "absent": True, "hold": 0.2},
        {"kind": "expect_parameters", "name": "still-test", "parameters": [{"name": "/flow/source", "equals": "x"}]},
        {"kind": "expect_queue_depth", "name": "no-dead-letters", "queue": "dlq", "messages": 0},
    ]
    state = pipeline_test(spec={"case": "Pack as UI", "aws": {"region": "us-east-1"}, "steps": steps},
                          base_dir=str(data_dir), return_state=True)
    result = result_of(state)
    assert result is not None and result.evidence_dir
    assert [s.status for s in result.steps] == ["passed", "passed", "passed", "passed", "failed", "skipped",
                                                "passed"]
    assert_pack_holds_ui(result)
    # the absent step's pack says what was watched, as the UI does
    absent = next(s for s in result.steps if s.label == "nothing-rejected")
    assert "Watched objects matching" in absent.evidence and "rejected/" in absent.evidence


def test_report_md_holds_the_ui_evidence_of_more_kinds(clients, data_dir: Path) -> None:
    """DynamoDB, CloudWatch alarms and deleted parameters: the same, with a failing step among them."""
    ddb, cw, ssm = clients.client("dynamodb"), clients.client("cloudwatch"), clients.client("ssm")
    ddb.create_table(TableName="audit", BillingMode="PAY_PER_REQUEST",
                     KeySchema=[{"AttributeName": "file", "KeyType": "HASH"}],
                     AttributeDefinitions=[{"AttributeName": "file", "AttributeType": "S"}])
    ddb.put_item(TableName="audit", Item={"file": {"S": "a.csv"}, "status": {"S": "LOADED"}, "rows": {"N": "5"}})
    cw.put_metric_alarm(AlarmName="ingest-errors", MetricName="Errors", Namespace="Ingest", Statistic="Sum",
                        Period=60, EvaluationPeriods=1, Threshold=1, ComparisonOperator="GreaterThanThreshold")
    ssm.put_parameter(Name="/flow/feature", Value="on", Type="String")
    steps = [
        {"kind": "delete_parameters", "name": "feature-off", "names": ["/flow/feature"]},
        {"kind": "expect_dynamodb_items", "name": "audited", "table": "audit", "key": {"file": "a.csv"},
         "expect": {"attributes": {"status": "LOADED", "rows": 5}}},
        {"kind": "expect_alarm_state", "name": "alarm-raised", "alarm": "ingest-errors", "state": "ALARM",
         "wait": {"timeout": 1}},
    ]
    state = pipeline_test(spec={"case": "Pack as UI, more kinds", "aws": {"region": "us-east-1"}, "steps": steps},
                          base_dir=str(data_dir), return_state=True)
    result = result_of(state)
    assert result is not None and result.evidence_dir
    assert [s.status for s in result.steps] == ["passed", "passed", "failed", "passed"], result.first_failure
    assert_pack_holds_ui(result)
    assert ssm.get_parameter(Name="/flow/feature")["Parameter"]["Value"] == "on"  # put back
