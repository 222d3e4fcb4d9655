"""The permission preflight (flows/run/preflight.py): simulation on the emulator (its SimulatePrincipalPolicy, answered
from moto's policy evaluator), read-only probes on moto with IAM enforced, and the error branches with botocore's
Stubber (SimulatePrincipalPolicy refused, throttled, an unknown principal, an assumed role).

On the emulator a case-runner user gets exactly the policy ``--iam-policy`` prints for a small case (a String and
a SecureString parameter, an upload, a secret read by a template), then ``POST /moto-api/reset-auth`` (body ``0``)
makes moto check every call. With the whole policy the preflight allows the run; with any one statement removed
it names what is missing before the first change (exit 3 for a run, nothing changed).
"""

from __future__ import annotations

import contextlib
import json
import urllib.request
import uuid
from datetime import datetime, timezone
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Callable, Iterator

import boto3
import pytest
from botocore.exceptions import ClientError

from flows.emulator import moto_server, use_emulator
from flows.run.engine import render_case
from flows.run.preflight import Preflight, check, principal_of
from flows.spec.load import load_spec
from flows.spec.model import CaseSpec
from flows.spec.templating import builtin_values, resolve_variables
from tasks.kit.aws import AwsTarget, ClientFactory
from tasks.kit.iam import Need

REGION = "us-east-1"
ACCOUNT = "123456789012"
CASE = {
    "case": "preflight e2e",
    "aws": {"region": REGION, "account_id": ACCOUNT, "allowed_parameter_prefixes": ["/pf/"]},
    "variables": {"token": '{{ secret("pf/token") }}'},
    "steps": [
        {"kind": "set_parameters", "name": "settings", "parameters": [
            {"name": "/pf/mode", "value": "on"},
            {"name": "/pf/token", "value": "{{ token }}", "type": "SecureString"}]},
        {"kind": "upload", "name": "land", "files": ["in.csv"], "bucket": "pf-landing", "key": "in/{{ run_date }}.csv",
         "cleanup": True},
        {"kind": "expect_parameters", "name": "check", "parameters": [{"name": "/pf/mode", "equals": "on"}]},
    ],
}


# ---------------------------------------------------------------------------------------------------- units
@pytest.mark.parametrize(("caller", "principal"), [
    ("arn:aws:iam::123456789012:user/ci", "arn:aws:iam::123456789012:user/ci"),
    ("arn:aws:iam::123456789012:user/team/ci", "arn:aws:iam::123456789012:user/team/ci"),
    ("arn:aws:sts::123456789012:assumed-role/TestRole/botocore-session-1",
     "arn:aws:iam::123456789012:role/TestRole"),
    ("arn:aws-cn:sts::123456789012:assumed-role/R/s", "arn:aws-cn:iam::123456789012:role/R"),
    ("arn:aws:iam::123456789012:root", None),
    ("arn:aws:sts::123456789012:federated-user/bob", None),
])
def test_the_principal_simulated_for_a_caller(caller: str, principal: str | None) -> None:
    assert principal_of(caller) == principal


def write_case(folder: Path, spec: dict[str, Any] = CASE) -> Path:
    (folder / "in.csv").write_text("id\n1\n")
    path = folder / "case.yaml"
    path.write_text(json.dumps(spec))
    return path


def rendered(folder: Path) -> tuple[CaseSpec, CaseSpec]:
    case, _ = load_spec(write_case(folder))
    values = resolve_variables(case.variables, builtin_values(case.case, "r", datetime.now(timezone.utc),
                                                              case.timezone))
    return case, render_case(case, values)


Answer = Callable[[str, str, dict[str, Any]], Any]


class Answered:
    """A ClientFactory stand-in: every call of its clients is answered by ``answer(service, operation, params)``
    (a botocore before-call hook in the service's place): a dict is the response, a string an error code."""

    def __init__(self, answer: Answer) -> None:
        self.region = REGION
        self.answer = answer
        self.calls: list[tuple[str, str, dict[str, Any]]] = []
        self._clients: dict[str, Any] = {}

    def client(self, service: str) -> Any:
        if service not in self._clients:
            client = boto3.client(service, region_name=REGION, aws_access_key_id="a", aws_secret_access_key="b")
            client.meta.events.register_first(f"before-parameter-build.{service}", self._keep)
            client.meta.events.register_first(f"before-call.{service}", self._call)
            self._clients[service] = client
        return self._clients[service]

    @staticmethod
    def _keep(params: dict[str, Any], context: dict[str, Any], **_: Any) -> None:
        context["api_params"] = dict(params)  # the call's parameters as the caller gave them

    def _call(self, model: Any, context: dict[str, Any], **_: Any) -> Any:
        service, params = model.service_model.service_name, context.get("api_params", {})
        self.calls.append((service, model.name, params))
        reply = self.answer(service, model.name, params)
        if isinstance(reply, str):
            return SimpleNamespace(status_code=400), {"Error": {"Code": reply, "Message": "refused"}}
        return SimpleNamespace(status_code=200), reply

    def operations(self, service: str) -> list[str]:
        return [op for s, op, _ in self.calls if s == service]


def world(caller_arn: str, simulate: Any = None, probes: dict[tuple[str, str], str] | None = None) -> Answer:
    """STS says who calls; IAM answers ``simulate`` (an error code, or a function of the params); probes answer
    empty, except those in ``probes`` ((service, operation) -> error code)."""

    def answer(service: str, operation: str, params: dict[str, Any]) -> Any:
        if operation == "GetCallerIdentity":
            return {"Arn": caller_arn, "UserId": "u", "Account": ACCOUNT}
        if operation == "SimulatePrincipalPolicy":
            if isinstance(simulate, str):
                return simulate
            decide = simulate or (lambda action, resource: "allowed")
            return {"IsTruncated": False, "EvaluationResults": [
                {"EvalActionName": a, "EvalResourceName": params["ResourceArns"][0],
                 "EvalDecision": decide(a, params["ResourceArns"][0])} for a in params["ActionNames"]]}
        return (probes or {}).get((service, operation)) or {}

    return answer


@pytest.mark.parametrize(("code", "note"), [
    ("AccessDenied", "No simulation: iam:SimulatePrincipalPolicy on arn:aws:iam::123456789012:user/ci failed "
                     "(AccessDenied"),
    ("Throttling", "failed (Throttling"),
    ("NoSuchEntity", "failed (NoSuchEntity"),
])
def test_without_simulation_the_preflight_probes_and_says_it_is_weaker(tmp_path: Path, code: str, note: str) -> None:
    case, steps = rendered(tmp_path)
    clients = Answered(world("arn:aws:iam::123456789012:user/ci", simulate=code))
    result = check(case, steps, tmp_path, clients)  # type: ignore[arg-type]
    assert result.method == "probes" and result.ok, result
    assert any(n.startswith("No simulation") and note in n for n in result.notes), result.notes
    summary = result.summary()
    assert "Preflight by read-only probes for arn:aws:iam::123456789012:user/ci (weaker than a simulation" in summary
    assert "action(s) not checked, having no cheap read-only probe: " in summary and "s3:DeleteObject" in summary
    probes = [op for s, op, _ in clients.calls if s in ("ssm", "s3")]
    assert result.checked == len(probes) >= 5 and set(probes) <= {
        "GetParameter", "GetParameterHistory", "DescribeParameters", "GetParametersByPath", "ListMultipartUploads"}


def test_a_probe_that_is_refused_names_the_action_and_resource(tmp_path: Path) -> None:
    case, steps = rendered(tmp_path)
    clients = Answered(world("arn:aws:iam::123456789012:root",  # IAM cannot simulate the root user: probes at once
                             probes={("ssm", "GetParameter"): "AccessDeniedException",
                                     ("s3", "ListMultipartUploads"): "AccessDenied"}))
    result = check(case, steps, tmp_path, clients)  # type: ignore[arg-type]
    assert clients.operations("iam") == []
    assert [(d.action, d.resource) for d in result.denied] == [
        ("ssm:GetParameter", f"arn:aws:ssm:{REGION}:{ACCOUNT}:parameter/pf/mode"),
        ("ssm:GetParameter", f"arn:aws:ssm:{REGION}:{ACCOUNT}:parameter/pf/token"),
        ("s3:ListBucketMultipartUploads", "arn:aws:s3:::pf-landing")]
    refusal = result.refusal(case.case)
    assert refusal.startswith("case 'preflight e2e' did not start: the preflight (a read-only probe) found that "
                              "arn:aws:iam::123456789012:root is denied what the case needs: ssm:GetParameter on "
                              f"arn:aws:ssm:{REGION}:{ACCOUNT}:parameter/pf/mode (needed by step 1 'settings'")
    assert "Nothing was changed" in refusal


def test_an_assumed_role_is_simulated_as_its_role_with_the_conditions_the_run_meets(tmp_path: Path) -> None:
    case, steps = rendered(tmp_path)
    clients = Answered(world("arn:aws:sts::123456789012:assumed-role/Tester/s1"))
    result = check(case, steps, tmp_path, clients)  # type: ignore[arg-type]
    assert result.method == "simulation" and result.ok and result.checked == result.needs
    seen = [params for s, op, params in clients.calls if op == "SimulatePrincipalPolicy"]
    assert {p["PolicySourceArn"] for p in seen} == {"arn:aws:iam::123456789012:role/Tester"}
    kms = [p for p in seen if p["ResourceArns"][0].startswith("arn:aws:kms:")]
    assert {e["ContextKeyValues"][0] for p in kms for e in p["ContextEntries"]} == {
        f"ssm.{REGION}.amazonaws.com", f"secretsmanager.{REGION}.amazonaws.com"}
    assert clients.operations("ssm") == clients.operations("s3") == []  # no probe when the simulation answers


def test_a_denied_simulation_names_action_resource_and_step(tmp_path: Path) -> None:
    case, steps = rendered(tmp_path)

    def decide(action: str, resource: str) -> str:
        return "implicitDeny" if resource.endswith("parameter/pf/mode") and action == "ssm:PutParameter" else "allowed"

    result = check(case, steps, tmp_path, Answered(world("arn:aws:iam::123456789012:user/ci", decide)))  # type: ignore[arg-type]
    assert [d.text() for d in result.denied] == [
        f"ssm:PutParameter on arn:aws:ssm:{REGION}:{ACCOUNT}:parameter/pf/mode (needed by step 1 'settings'; "
        "implicitDeny)"]


# ------------------------------------------------------------------------------------- on the emulator, IAM on
def post(endpoint: str, path: str, body: bytes) -> None:
    request = urllib.request.Request(f"{endpoint}/moto-api/{path}", data=body, method="POST",
                                     headers={"Content-Type": "text/plain"})  # not a form: moto reads the raw body
    with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310 - loopback only
        response.read()


def user(iam: Any, name: str, document: dict[str, Any]) -> dict[str, str]:
    iam.create_user(UserName=name)
    iam.put_user_policy(UserName=name, PolicyName="policy", PolicyDocument=json.dumps(document))
    key = iam.create_access_key(UserName=name)["AccessKey"]
    return {"AWS_ACCESS_KEY_ID": key["AccessKeyId"], "AWS_SECRET_ACCESS_KEY": key["SecretAccessKey"]}


@pytest.fixture
def enforced(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
             capsys: pytest.CaptureFixture[str]) -> Iterator[SimpleNamespace]:
    """The emulator with IAM enforced: an admin, a case-runner with the case's generated policy; a secret."""
    from moto import settings
    from moto.core.authorization import ActionAuthenticatorMixin

    from flows.cli import main

    spec = write_case(tmp_path)
    assert main([str(spec), "--iam-policy", "--json"]) == 0
    policy = json.loads(capsys.readouterr().out)
    with moto_server() as endpoint, use_emulator(endpoint):
        monkeypatch.delenv("AWS_SESSION_TOKEN", raising=False)
        iam = boto3.client("iam", region_name=REGION)
        suffix = uuid.uuid4().hex[:8]  # moto's backends are the process's: names of this test's own
        admin = user(iam, f"pf-admin-{suffix}", {"Version": "2012-10-17", "Statement": [
            {"Effect": "Allow", "Action": "*", "Resource": "*"}]})
        runner = user(iam, f"pf-runner-{suffix}", policy)
        with contextlib.suppress(ClientError):  # the process's moto keeps them from an earlier test
            boto3.client("s3", region_name=REGION).create_bucket(Bucket="pf-landing")
        with contextlib.suppress(ClientError):
            boto3.client("secretsmanager", region_name=REGION).create_secret(Name="pf/token",
                                                                              SecretString="pf-token-value-123")
        post(endpoint, "reset-auth", b"0")
        try:
            yield SimpleNamespace(endpoint=endpoint, policy=policy, spec=spec, admin=admin, runner=runner,
                                  monkeypatch=monkeypatch, runner_name=f"pf-runner-{suffix}")
        finally:
            settings.INITIAL_NO_AUTH_ACTION_COUNT = float("inf")  # the process's moto: unchecked again
            ActionAuthenticatorMixin.request_count = 0
            post(endpoint, "reset", b"{}")  # and its backends empty


def as_user(env: SimpleNamespace, keys: dict[str, str]) -> None:
    for key, value in keys.items():
        env.monkeypatch.setenv(key, value)


def with_policy(env: SimpleNamespace, document: dict[str, Any]) -> None:
    as_user(env, env.admin)
    boto3.Session().client("iam", region_name=REGION).put_user_policy(UserName=env.runner_name, PolicyName="policy",
                                                            PolicyDocument=json.dumps(document))
    as_user(env, env.runner)


def moto_checkable(policy: dict[str, Any]) -> dict[str, Any]:
    """The policy as moto's own checks can hold it: moto checks the resources of S3 calls only, any other call as
    one on resource ``*``; so every other statement gets ``Resource: "*"`` (its actions still count) and no
    condition. (The simulation answers from the policy as it is: the emulator's SimulatePrincipalPolicy matches
    every resource.)"""
    return {**policy, "Statement": [
        s if s["Resource"] and all(r.startswith("arn:aws:s3:::") for r in s["Resource"])
        else {k: v for k, v in s.items() if k != "Condition"} | {"Resource": "*"} for s in policy["Statement"]]}


def preflight(env: SimpleNamespace, folder: Path) -> Preflight:
    case, steps = rendered(folder)
    return check(case, steps, folder, ClientFactory(AwsTarget(region=REGION)))


def test_simulation_on_the_emulator_finds_each_statement_missing(enforced: SimpleNamespace, tmp_path: Path) -> None:
    """With the generated policy every need is allowed; without any one statement, the preflight names an action of
    that statement (the preflight's own statement aside: without it the preflight probes, and still allows)."""
    with_policy(enforced, enforced.policy)
    whole = preflight(enforced, tmp_path)
    assert whole.method == "simulation" and whole.ok, whole.summary()
    assert whole.caller == f"arn:aws:iam::{ACCOUNT}:user/{enforced.runner_name}"
    statements = enforced.policy["Statement"]
    assert {"PermissionPreflight", "SecretsManagerSecrets", "UndoJournal", "KmsKeys"} <= {s["Sid"] for s in statements}
    for statement in statements:
        with_policy(enforced, {**enforced.policy, "Statement": [s for s in statements if s is not statement]})
        result = preflight(enforced, tmp_path)
        if statement["Sid"] == "PermissionPreflight":  # (its probes meet moto's resource-less checks: not asserted)
            assert result.method == "probes" and "AccessDenied" in " ".join(result.notes)
            continue
        assert not result.ok, statement
        assert {d.action for d in result.denied} & set(statement["Action"]), (statement, result.denied)


def test_probes_on_the_emulator_find_what_can_be_read(enforced: SimpleNamespace, tmp_path: Path) -> None:
    """Without the preflight's statement: probes, on moto with IAM enforced. With the rest of the policy they pass;
    without the statements that allow ssm:GetParameter, the probe of each parameter is refused."""
    policy = moto_checkable(enforced.policy)
    statements = [s for s in policy["Statement"] if s["Sid"] != "PermissionPreflight"]
    with_policy(enforced, {**policy, "Statement": statements})
    allowed = preflight(enforced, tmp_path)
    assert allowed.method == "probes" and allowed.ok and allowed.checked >= 5, allowed.summary()
    with_policy(enforced, {**policy, "Statement": [s for s in statements if "ssm:GetParameter" not in s["Action"]]})
    result = preflight(enforced, tmp_path)
    assert result.method == "probes" and not result.ok
    assert {(d.action, d.resource) for d in result.denied} >= {
        ("ssm:GetParameter", f"arn:aws:ssm:{REGION}:{ACCOUNT}:parameter/pf/mode")}


@pytest.mark.usefixtures("prefect_harness")
def test_a_run_missing_a_permission_stops_before_its_first_change(enforced: SimpleNamespace, tmp_path: Path) -> None:
    from flows.pipeline_test import pipeline_test
    from flows.run.recover import CouldNotRun

    policy = moto_checkable(enforced.policy)
    with_policy(enforced, {**policy, "Statement": [s for s in policy["Statement"] if s["Sid"] != "S3Objects"]})
    state = pipeline_test(spec=str(enforced.spec), write_evidence=False, return_state=True)
    value = state.result(raise_on_failure=False)
    assert isinstance(value, CouldNotRun), value
    message = str(value)
    assert "s3:PutObject on arn:aws:s3:::pf-landing/in/" in message and "needed by step 2 'land'" in message
    assert f"arn:aws:iam::{ACCOUNT}:user/{enforced.runner_name} is denied what" in message and "iam:SimulatePrincipalPolicy" in message
    as_user(enforced, enforced.admin)
    ssm = boto3.Session().client("ssm", region_name=REGION)  # a new session: the default one keeps its keys
    assert ssm.describe_parameters()["Parameters"] == []  # nothing was set, not even the journal


def test_needs_are_hashable_for_grouping() -> None:
    assert len({Need("ssm:GetParameter", "a"), Need("ssm:GetParameter", "a")}) == 1


# ------------------------------------------------------------------------------------------------ the CLI
def no_prefect_server(monkeypatch: pytest.MonkeyPatch) -> None:
    from flows import cli
    from flows.run import command

    def refuse() -> Any:
        raise AssertionError("--preflight started a Prefect server")

    monkeypatch.setattr(command, "prefect_api", refuse)
    monkeypatch.setattr(cli, "guarded", lambda run: refuse())


def test_preflight_alone_checks_and_exits_without_a_prefect_server(clients: ClientFactory, tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch,
                                                                     capsys: pytest.CaptureFixture[str]) -> None:
    from flows.cli import main

    no_prefect_server(monkeypatch)
    clients.client("secretsmanager").create_secret(Name="pf/token", SecretString="pf-token-value-123")
    clients.client("athena").create_work_group(Name="capped", Configuration={"BytesScannedCutoffPerQuery": 10**10})
    spec = {**CASE, "steps": [*CASE["steps"], {"kind": "athena_query", "sql": "SELECT 1", "workgroup": "capped",
                                               "output_location": "s3://pf-landing/athena/"}]}
    assert main([str(write_case(tmp_path, spec)), "--preflight"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("Preflight") and "all allowed" in out  # in-process moto: probes (no simulation there)
    assert "Athena workgroup capped: at most 10 GB (10,000,000,000 bytes) scanned per query" in out
    assert clients.client("ssm").describe_parameters()["Parameters"] == []  # nothing changed


def test_preflight_without_credentials_exits_3(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    from flows.cli import main

    no_prefect_server(monkeypatch)
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    for name in ("AWS_SHARED_CREDENTIALS_FILE", "AWS_CONFIG_FILE"):
        monkeypatch.setenv(name, str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    assert main([str(write_case(tmp_path)), "--preflight"]) == 3
    assert "Could not run: the preflight could not reach AWS as anyone: Unable to locate credentials" in \
        capsys.readouterr().err


def test_preflight_flags_are_for_a_case(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from flows.cli import main

    write_case(tmp_path)
    assert main([str(tmp_path), "--preflight"]) == 2
    assert "--preflight and --no-preflight are for a case, not the suite" in capsys.readouterr().err
