"""The IAM contract of every step kind: it declares a footprint (its IAM actions, next to its runner), every action
it declares exists (policy-sentry's copy of the AWS Service Authorization Reference), the policies made from cases
pass parliament's lint, and every AWS call a kind's runner makes while the kind's own moto tests run is declared.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest
import yaml

import flows.spec.model  # noqa: F401  (fills the registry)
from flows.plan.changes import Plan, plan_case, run_footprint
from flows.plan.iam_policy import build_policy
from flows.spec.load import parse_spec
from flows.spec.model import iter_steps
from tasks.kit.iam import OPERATION_ACTIONS, Arns, actions_of
from tasks.kit.step import REGISTRY, footprint
from tests.fixtures.iam_calls import ENV, KIND_TESTS, RECORDER
from tests.helpers import minimal

ROOT = Path(__file__).resolve().parent.parent
ARNS = Arns("123456789012", "eu-west-1")
#: a case that uses every kind in its widest form (writes, SecureStrings, KMS, waits for the pipeline's runs)
EVERY_KIND: dict[str, Any] = {
    "case": "Every kind",
    "variables": {"bucket": "landing-bucket"},
    "aws": {"region": "eu-west-1", "account_id": "123456789012", "allowed_parameter_prefixes": ["/test/"],
            "journal_prefix": "/team/journal"},
    "evidence": {"bucket": "evidence-bucket", "sse": "aws:kms", "kms_key_id":
                 "arn:aws:kms:eu-west-1:123456789012:key/11111111-2222-3333-4444-555555555555"},
    "steps": [
        {"kind": "upload", "name": "land", "files": ["orders.csv"], "bucket": "{{ bucket }}",
         "key_prefix": "in/{{ run_date }}/{{ flow_run_id }}/", "cleanup": True, "sse": "aws:kms",
         "content_type": "text/csv"},
        {"kind": "expect_objects", "name": "landed", "bucket": "{{ bucket }}", "prefix": "in/",
         "content": {"format": "csv", "row_count": 1}},
        {"kind": "expect_objects", "name": "keys", "bucket": "{{ bucket }}", "keys": ["in/a.csv"]},
        {"kind": "set_parameters", "name": "point", "parameters": [
            {"name": "/test/source", "value": "x"},
            {"name": "/test/token", "value": "s3cr3t-value", "type": "SecureString"}]},
        {"kind": "delete_parameters", "name": "drop", "names": ["/test/old"]},
        {"kind": "expect_parameters", "name": "check", "parameters": [{"name": "/prod/flag", "equals": "on"}]},
        {"kind": "invoke_lambda", "name": "start", "function": "ingest", "qualifier": "live"},
        {"kind": "athena_query", "name": "rows", "sql": "SELECT 1", "database": "db",
         "output_location": "s3://results-bucket/athena/"},
        {"kind": "expect_dynamodb_items", "name": "audit", "table": "audit", "key": {"pk": "a"}},
        {"kind": "expect_dynamodb_items", "name": "by-index", "table": "audit",
         "query": {"key_condition": "pk = :p", "values": {":p": "a"}, "index": "by-status"}},
        {"kind": "expect_queue_depth", "name": "dlq", "queue": "dlq", "messages": 0},
        {"kind": "expect_alarm_state", "name": "alarm", "alarm": "errors", "state": "OK"},
        {"kind": "expect_log_events", "name": "logs", "log_group": "/aws/lambda/ingest"},
        {"kind": "glue_job", "name": "job", "job": "transform"},
        {"kind": "glue_job", "name": "pipeline-job", "job": "transform2", "start": False},
        {"kind": "glue_crawler", "name": "crawl", "crawler": "curated", "database": "db",
         "tables": [{"name": "orders"}]},
        {"kind": "step_functions", "name": "sfn", "state_machine": "ingest"},
        {"kind": "step_functions", "name": "sfn-arn", "start": False,
         "state_machine": "arn:aws:states:eu-west-1:123456789012:stateMachine:other"},
    ],
}


def every_kind_plan(tmp_path: Path) -> Plan:
    (tmp_path / "orders.csv").write_text("id\n1\n")
    case = parse_spec(EVERY_KIND, "every.yaml", tmp_path)
    return Plan("every kind", [plan_case(case, tmp_path, "every.yaml", ARNS)])


def test_every_registered_kind_declares_its_footprint() -> None:
    missing = [kind for kind, registered in sorted(REGISTRY.items()) if registered.footprint is None]
    assert not missing, f"step kinds without a footprint (@step_kind(Model, footprint=...)): {missing}"
    for kind in REGISTRY:
        fp = footprint(minimal(kind), ARNS)
        assert fp.needs, f"{kind}: a footprint that needs no IAM action"
        assert fp.touches, f"{kind}: a footprint that shows nothing in the plan"


def test_the_case_uses_every_kind(tmp_path: Path) -> None:
    plan = every_kind_plan(tmp_path)
    assert {s.kind for s in plan.cases[0].steps} == set(REGISTRY)


def _declared_actions(tmp_path: Path) -> set[str]:
    plan = every_kind_plan(tmp_path)
    actions = {need.action for _, need in plan.cases[0].needs()}
    actions |= {a for ops in OPERATION_ACTIONS.values() for acts in ops.values() for a in acts}
    return actions


def test_every_declared_action_exists_in_the_service_authorization_reference(tmp_path: Path) -> None:
    from policy_sentry.querying.actions import get_action_data

    unknown = []
    for action in sorted(_declared_actions(tmp_path)):
        service, name = action.split(":")
        data = get_action_data(service, name)
        if not data or not any(d["action"].lower() == action.lower() for d in data.get(service, [])):
            unknown.append(action)
    assert not unknown, f"actions AWS does not have (policy-sentry's database): {unknown}"


def _parliament_findings(document: dict[str, Any]) -> list[str]:
    from parliament import analyze_policy_string, enhance_finding

    policy = analyze_policy_string(json.dumps(document))
    out = []
    for finding in policy.findings:
        enhance_finding(finding)
        if finding.severity.upper() not in ("LOW", "INFO"):
            out.append(f"{finding.severity} {finding.issue}: {finding.detail} at {finding.location}")
    return out


def test_policies_pass_parliaments_lint(tmp_path: Path) -> None:
    every = build_policy(every_kind_plan(tmp_path)).document
    example = yaml.safe_load((ROOT / "examples/cases/orders_ingestion.yaml").read_text())
    case = parse_spec(example, "orders_ingestion.yaml", ROOT / "examples/cases")
    demo = build_policy(Plan("demo", [plan_case(case, ROOT / "examples/cases", "demo", ARNS)])).document
    for document in (every, demo):
        assert document["Version"] == "2012-10-17"
        assert _parliament_findings(document) == []


def test_a_read_only_parameter_is_never_writable(tmp_path: Path) -> None:
    document = build_policy(every_kind_plan(tmp_path)).document
    read_only = "arn:aws:ssm:eu-west-1:123456789012:parameter/prod/flag"
    for statement in document["Statement"]:
        if read_only in statement["Resource"]:
            assert set(statement["Action"]) == {"ssm:GetParameter"}, statement


# ------------------------------------------------------------------------------- every call is declared
def _recorded_calls(request: pytest.FixtureRequest, tmp_path: Path) -> list[dict[str, Any]]:
    """The calls recorded while the kinds' own tests ran in this session, on this worker (``tests/fixtures/iam_calls``
    groups them with this test and runs this test last); when they are not in the session (this file alone), they
    are run in a child pytest under the same recorder."""
    recorder = request.config.stash[RECORDER]
    if recorder.complete():
        return recorder.calls
    out = tmp_path / "calls.jsonl"
    env = {**os.environ, ENV: str(out),
           "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-m", "pytest", *[f"tests/{f}" for f in KIND_TESTS], "-q", "-n", "0",
                           "-m", "not e2e", "-p", "no:cacheprovider", "-x"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, f"the kinds' tests failed under the recorder:\n{proc.stdout[-3000:]}"
    return [json.loads(line) for line in out.read_text().splitlines()]


def _family(kind: str) -> str:
    module = REGISTRY[kind].model.__module__
    return module.split(".")[1]


def test_every_aws_call_a_kind_makes_is_declared(request: pytest.FixtureRequest, tmp_path: Path) -> None:
    calls = _recorded_calls(request, tmp_path)
    undeclared: dict[str, set[str]] = defaultdict(set)
    by_family: dict[str, set[str]] = defaultdict(set)
    seen_kinds = set()
    for call in calls:
        if "kind" in call:
            seen_kinds.add(call["kind"])
            by_family[_family(call["kind"])] |= set(call["declared"])
            for action in actions_of(call["service"], call["operation"]):
                if action not in call["declared"]:
                    undeclared[call["kind"]].add(f"{call['service']} {call['operation']} -> {action} "
                                                 f"(in {call['test']})")
    # the run's own calls (journal, audit, evidence upload): what run_footprint declares for a case that changes
    # something and uploads its evidence encrypted
    case = parse_spec(EVERY_KIND | {"steps": EVERY_KIND["steps"][3:4]}, "run.yaml", tmp_path)
    by_family["run"] |= {n.action for n in run_footprint(case, ARNS, True).needs}
    # the preflight calls only what the case needs: each probe is one of a step's or the run's declared actions
    by_family["preflight"] = set().union(*by_family.values())
    for call in calls:
        if "family" in call:
            for action in actions_of(call["service"], call["operation"]):
                if action not in by_family[call["family"]]:
                    undeclared[f"family {call['family']}"].add(f"{call['service']} {call['operation']} -> "
                                                               f"{action} (in {call['test']})")
    assert not undeclared, "AWS calls no footprint declares:\n" + "\n".join(
        f"{who}: {line}" for who, lines in sorted(undeclared.items()) for line in sorted(lines))
    assert seen_kinds == set(REGISTRY), f"kinds whose runner no test ran: {sorted(set(REGISTRY) - seen_kinds)}"


@pytest.mark.parametrize("service, operation, expected", [
    ("s3", "ListObjectsV2", ("s3:ListBucket",)),
    ("s3", "HeadObject", ("s3:GetObject",)),
    ("s3", "UploadPart", ("s3:PutObject",)),
    ("stepfunctions", "StartExecution", ("states:StartExecution",)),
    ("ssm", "PutParameter", ("ssm:PutParameter",)),
])
def test_operations_map_to_their_iam_actions(service: str, operation: str, expected: tuple[str, ...]) -> None:
    assert actions_of(service, operation) == expected


def test_every_step_of_the_case_has_needs(tmp_path: Path) -> None:
    plan = every_kind_plan(tmp_path)
    labels = {p.label for p in iter_steps(parse_spec(EVERY_KIND, "every.yaml", tmp_path))}
    assert labels == {s.label for s in plan.cases[0].steps if s.footprint.needs}


def test_a_denial_names_the_iam_action() -> None:
    """S3 says only "Access Denied" and a HEAD's 403 nothing: every client of ClientFactory adds the action; a
    message that names it already (SSM's, IAM's own wording) is left as it is."""
    from botocore.exceptions import ClientError
    from botocore.stub import Stubber

    from tasks.kit.aws import AwsTarget, ClientFactory

    clients = ClientFactory(AwsTarget(region="us-east-1"))
    s3, ssm = clients.client("s3"), clients.client("ssm")
    with Stubber(s3) as stub:
        stub.add_client_error("head_object", "403", "Forbidden", 403)
        stub.add_client_error("list_objects_v2", "AccessDenied", "Access Denied", 403)
        with pytest.raises(ClientError, match=r"Forbidden \(needs IAM action s3:GetObject\)"):
            s3.head_object(Bucket="b", Key="k")
        with pytest.raises(ClientError, match=r"Access Denied \(needs IAM action s3:ListBucket\)"):
            s3.list_objects_v2(Bucket="b")
    said = "User: arn:aws:iam::123456789012:user/u is not authorized to perform: ssm:GetParameter on resource: x"
    with Stubber(ssm) as stub:
        stub.add_client_error("get_parameter", "AccessDeniedException", said, 400)
        with pytest.raises(ClientError) as caught:
            ssm.get_parameter(Name="x")
    assert caught.value.response["Error"]["Message"] == said
