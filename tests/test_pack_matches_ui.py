"""The evidence pack holds what the UI shows: each step's evidence in report.md is its UI artifact, rendered by
the same code from the same typed result (``StepResult.evidence`` and ``.links``), for every step kind; its
tables and links are in the pack too; and what it checked is typed (``StepResult.checks``): in report.json, and
report.html's checks table is made from it."""

from __future__ import annotations

import asyncio
import html
import json
import re
import time
from pathlib import Path
from typing import Any, Iterator

import pytest
import requests
from moto import mock_aws
from moto.stepfunctions.parser.utils import TMP_THREADS

from flows.evidence.results import result_of
from flows.pipeline_test import pipeline_test
from tasks.kit.aws import AwsTarget, ClientFactory
from tasks.kit.step import REGISTRY
from tests.helpers import MOTO_CONFIG, REGION

pytestmark = pytest.mark.usefixtures("prefect_harness")

#: kinds that change or read and check nothing: every other kind gives typed checks
CHECKLESS_KINDS = {"set_parameters", "delete_parameters", "upload", "cleanup"}
#: the kinds each test below runs (each asserts its case ran exactly these; together they are every kind)
KINDS = {
    "s3 and ssm": {"set_parameters", "upload", "expect_objects", "expect_parameters", "expect_queue_depth"},
    "more": {"delete_parameters", "expect_dynamodb_items", "expect_alarm_state"},
    "compute": {"invoke_lambda", "glue_job", "glue_crawler", "expect_log_events", "step_functions"},
    "athena": {"athena_query"},
}


def flow_artifacts(flow_run_id: str) -> list[Any]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    async def go() -> list[Any]:
        async with get_client() as client:
            return await client.read_artifacts(
                artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id])))

    return asyncio.run(go())


def step_artifacts(flow_run_id: str) -> dict[str, str]:
    """The step cards' markdown, by their first line (``## Step N · name · verdict``)."""
    return {a.data.split("\n", 1)[0]: a.data for a in flow_artifacts(flow_run_id)
            if a.type == "markdown" and isinstance(a.data, str) and a.data.startswith("## Step")}


def assert_pack_holds_ui(result: Any, kinds: str) -> None:
    """Every step that ran: its UI card, verbatim, in report.md; its evidence carried on its result; its other cards
    (tables, links) in the pack; its checks typed, the same in report.json, and in report.html's checks table."""
    artifacts = flow_artifacts(str(result.flow_run_id))
    ui = step_artifacts(str(result.flow_run_id))
    folder = Path(result.evidence_dir)
    report = (folder / "report.md").read_text(encoding="utf-8")
    report_json = json.loads((folder / "report.json").read_text(encoding="utf-8"))
    page = html.unescape((folder / "report.html").read_text(encoding="utf-8"))
    assert {s.kind for s in result.steps} - {"cleanup"} == KINDS[kinds]
    # the case report: every line of it in report.md, but for what only exists once the pack is written (where it
    # is, its manifest's hash) and the history of earlier runs (read back from the server, not this run's evidence)
    [case_report] = [a.data for a in artifacts if a.type == "markdown" and (a.key or "").endswith("-report")]
    kept = case_report.split("### Evidence pack")[0].split("### Last ")[0].split("### The last run")[0]
    missing = [line for line in kept.splitlines() if line.strip() and line not in report]
    assert not missing, f"lines of the UI's case report not in report.md: {missing}"
    # the case's summary table: each row's cells in report.md (as it reads: markdown's escapes taken out)
    [summary] = [json.loads(a.data) for a in artifacts if a.type == "table" and (a.key or "").startswith("case-")]
    shown = html.unescape(re.sub(r"\\(.)", r"\1", report))
    for row in summary:
        assert all(str(cell) in shown for cell in row.values()), f"summary row {row} not in report.md"
    for index, step in enumerate(result.steps):
        if step.status == "skipped":
            continue
        what = f"step {step.number} {step.label} ({step.kind})"
        [card] = [text for first, text in ui.items() if f" · {step.label} · " in first]
        assert card.rstrip("\n") in report, f"{what}: the pack lacks its UI evidence"
        assert step.evidence and step.evidence in card
        # the step's other cards: each table's cells and each link are in the pack too
        packed = json.dumps(report_json["steps"][index], ensure_ascii=False)
        for artifact in artifacts:
            if not (artifact.description or "").startswith(f"step {step.number} {step.label} · "):
                continue
            if artifact.type == "table":
                for row in json.loads(artifact.data):
                    for value in row.values():
                        assert str(value) in packed, f"{what}: {value!r} of its UI table not in the pack"
            elif artifact.type == "link":
                assert artifact.data in report, f"{what}: its link {artifact.data} not in the pack"
        # typed checks: on the result, in report.json as they are, each in report.html's checks table
        assert report_json["steps"][index].get("checks", []) == [c.model_dump(mode="json") for c in step.checks]
        if step.kind not in CHECKLESS_KINDS and step.status != "error":
            assert step.checks, f"{what}: no typed checks"
            assert (step.status == "failed") == any(not c.passed for c in step.checks), f"{what}: {step.checks}"
        section = page[page.index(f'id="step-{step.number}"'):]
        section = section[:section.index("</section>")]
        for check in step.checks:
            name = f"{check.where}: {check.name}" if check.where else check.name
            assert f"<code>{name}</code></td><td>{check.expected}</td><td>{check.actual}</td>" in section, \
                f"{what}: check {name} not in report.html"


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
    assert_pack_holds_ui(result, "s3 and ssm")
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
    assert_pack_holds_ui(result, "more")
    assert ssm.get_parameter(Name="/flow/feature")["Parameter"]["Value"] == "on"  # put back


@pytest.fixture
def sfn_clients() -> Iterator[ClientFactory]:
    """moto, running state machines for real (as tests/test_stepfunctions.py does); its threads ended after."""
    with mock_aws(config={**MOTO_CONFIG, "stepfunctions": {"execute_state_machine": True}}):
        yield ClientFactory(AwsTarget(region=REGION))
        for thread in list(TMP_THREADS):
            thread.join(5)


def test_report_md_holds_the_ui_evidence_of_the_compute_kinds(sfn_clients: ClientFactory, tmp_path: Path) -> None:
    """invoke_lambda, step_functions (passing and failing), glue_job, glue_crawler, expect_log_events."""
    clients = sfn_clients
    sfn, glue, logs = clients.client("stepfunctions"), clients.client("glue"), clients.client("logs")
    role = "arn:aws:iam::123456789012:role/test"
    load = {"StartAt": "Load", "States": {"Load": {"Type": "Pass", "End": True, "Parameters": {"rows": 5,
                                                                                               "file.$": "$.file"}}}}
    reject = {"StartAt": "Validate", "States": {"Validate": {"Type": "Fail", "Error": "BadFile",
                                                             "Cause": "row 3 has no id"}}}
    for name, definition in (("load", load), ("reject", reject)):
        sfn.create_state_machine(name=name, definition=json.dumps(definition), roleArn=role)
    glue.create_job(Name="transform", Role="glue-role", Command={"Name": "glueetl", "ScriptLocation": "s3://c/j.py"})
    glue.create_database(DatabaseInput={"Name": "curated"})
    glue.create_crawler(Name="crawler", Role="glue-role", DatabaseName="curated",
                        Targets={"S3Targets": [{"Path": "s3://curated/orders/"}]})
    glue.create_table(DatabaseName="curated", TableInput={
        "Name": "orders", "StorageDescriptor": {"Columns": [{"Name": "id", "Type": "bigint"}]},
        "PartitionKeys": [{"Name": "dt", "Type": "string"}]})
    logs.create_log_group(logGroupName="/pipeline/ingest")
    logs.create_log_stream(logGroupName="/pipeline/ingest", logStreamName="run-1")
    logs.put_log_events(logGroupName="/pipeline/ingest", logStreamName="run-1",
                        logEvents=[{"timestamp": int(time.time() * 1000), "message": "5 rows loaded"}])
    wait = {"timeout": 20, "initial": 0.05}
    steps = [
        {"kind": "invoke_lambda", "name": "ingest", "function": "ingest", "payload": {"rows": 5},
         "expect": {"json_subset": {"rows": 5}, "jmespath": {"rows": 5}}},
        {"kind": "glue_job", "name": "transform", "job": "transform", "wait": wait},
        {"kind": "glue_crawler", "name": "catalog", "crawler": "crawler", "database": "curated", "wait": wait,
         "tables": [{"name": "orders", "columns": ["id:bigint"], "partition_keys": ["dt"]}]},
        {"kind": "expect_log_events", "name": "loaded-logged", "log_group": "/pipeline/ingest",
         "filter_pattern": '"rows loaded"', "lookback": 60, "wait": {"timeout": 5}},
        {"kind": "step_functions", "name": "load", "state_machine": "load", "wait": wait,
         "input": {"file": "in/orders.csv"}, "expect": {"jmespath": {"rows": 5, "file": "in/orders.csv"}}},
        {"kind": "step_functions", "name": "validate", "state_machine": "reject", "wait": wait},
    ]
    state = pipeline_test(spec={"case": "Pack as UI, compute", "aws": {"region": REGION}, "steps": steps},
                          base_dir=str(tmp_path), return_state=True)
    result = result_of(state)
    assert result is not None and result.evidence_dir
    assert [s.status for s in result.steps] == ["passed"] * 5 + ["failed"], [s.error for s in result.steps]
    assert_pack_holds_ui(result, "compute")
    checks = {s.label: {c.name: c for c in s.checks} for s in result.steps}
    assert checks["ingest"]["rows"].actual == "5" and checks["ingest"]["status"].expected == "200"
    assert checks["catalog"]["table"].where == "curated.orders" and checks["catalog"]["table"].passed
    assert checks["validate"]["final status"].actual.startswith("FAILED in state Validate: BadFile")


def test_report_md_holds_the_ui_evidence_of_athena(clients: ClientFactory, tmp_path: Path) -> None:
    """athena_query, passing and failing: its preview table, SQL and checks are in the pack as in the UI."""
    clients.client("s3").create_bucket(Bucket="athena-results")
    for total in ("12.50", "12.50"):
        result_set = {"rows": [{"Data": [{"VarCharValue": "id"}, {"VarCharValue": "total"}]},
                               {"Data": [{"VarCharValue": "1"}, {"VarCharValue": total}]}],
                      "column_info": [{"Name": n, "Label": n, "Type": t, "Nullable": "UNKNOWN",
                                       "CaseSensitive": False} for n, t in (("id", "integer"), ("total", "decimal"))]}
        response = requests.post("http://motoapi.amazonaws.com/moto-api/static/athena/query-results",
                                 json={"region": REGION, "results": [result_set]})
        assert response.status_code == 201
    query = {"kind": "athena_query", "database": "curated", "output_location": "s3://athena-results/q/",
             "sql": "SELECT id, total FROM orders"}
    steps = [{**query, "name": "orders-total", "expect": {"row_count": 1, "first_row": {"total": {"gt": 10}}}},
             {**query, "name": "orders-count", "expect": {"min_rows": 2}}]
    state = pipeline_test(spec={"case": "Pack as UI, Athena", "aws": {"region": REGION}, "steps": steps},
                          base_dir=str(tmp_path), return_state=True)
    result = result_of(state)
    assert result is not None and result.evidence_dir
    assert [s.status for s in result.steps] == ["passed", "failed"], [s.error for s in result.steps]
    assert_pack_holds_ui(result, "athena")
    [failed] = [c for c in result.steps[1].checks if not c.passed]
    assert (failed.name, failed.expected, failed.actual) == ("min_rows", ">= 2", "1")


def test_every_step_kind_is_compared() -> None:
    """The cases above ran every registered kind between them (each asserts it ran its KINDS)."""
    assert set().union(*KINDS.values()) == set(REGISTRY) - {"cleanup"}
