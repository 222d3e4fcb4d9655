"""The generated IAM policy is enough, and no statement of it is spare: proved on moto's server with IAM enforced.

One emulator for the whole test: an admin user (for the fake pipeline and the checks) and a case-runner user are
made, then ``POST /moto-api/reset-auth`` with body ``0`` makes moto check every call's action (and S3's resources)
against the caller's policies. The demo's passing case runs in-process under the case-runner's keys: with the policy
that ``--iam-policy`` prints, it passes; with any one statement dropped, the preflight (simulated by the emulator's
SimulatePrincipalPolicy) stops it before its first change naming an action of that statement; without simulation
(the preflight's statement dropped too), it fails with AccessDenied naming the action, and whatever it had changed
is undone.

moto checks the *resources* of S3 calls only: any other call is checked as a call on resource ``*`` (moto does not
work out its ARN), which a statement scoped to ARNs never matches. So on the emulator every statement of another
service gets ``Resource: "*"`` (its actions are still checked, one statement at a time), and the S3 statements
are used as generated (their buckets and prefixes are checked too). moto also names one action its own way:
Lambda's Invoke is checked as ``lambda:Invoke`` (AWS: ``lambda:InvokeFunction``), so a statement with the one gets
the other too.
"""

from __future__ import annotations

import json
import os
import urllib.request
from pathlib import Path
from typing import Any, Iterator

import boto3
import pytest
from botocore.exceptions import ClientError

from flows import cli
from flows.demo import DEMO_CASE, LANDING_BUCKET, PRODUCTION_SOURCE, REGION, SOURCE_PARAMETER, FakePipeline
from flows.emulator import moto_api, moto_server, use_emulator
from flows.evidence.results import CaseResult, result_of
from flows.pipeline_test import pipeline_test

ACCOUNT = "123456789012"  # moto's account
#: actions moto checks under another name than AWS's
MOTO_NAMES = {"lambda:InvokeFunction": "lambda:Invoke"}
#: actions the demo's run never makes on the emulator, with why (a statement of only these cannot fail the case
#: there; on AWS they are needed: the contract test proves the kinds call them)
NOT_CALLED_ON_THE_EMULATOR = {
    "kms:Decrypt": "moto's SSM encrypts SecureStrings without calling KMS",
    "kms:Encrypt": "moto's SSM encrypts SecureStrings without calling KMS",
    "kms:GenerateDataKey": "moto's SSM encrypts SecureStrings without calling KMS",
    "glue:GetDatabase": "Athena reads the Glue catalog with the caller's permissions; moto's Athena does not",
    "glue:GetTable": "Athena reads the Glue catalog with the caller's permissions; moto's Athena does not",
    "glue:GetPartitions": "Athena reads the Glue catalog with the caller's permissions; moto's Athena does not",
    "s3:GetBucketLocation": "Athena writes its result with the caller's permissions; moto's Athena does not",
    "s3:ListMultipartUploadParts": "Athena writes its result with the caller's permissions; moto's Athena does not",
    "s3:ListBucketMultipartUploads": "only an interrupted multipart upload's undo lists the parts left",
}


def on_the_emulator(policy: dict[str, Any]) -> dict[str, Any]:
    """The policy as moto can check it: S3 statements as they are; any other with ``Resource: "*"`` and no
    condition (moto knows neither the ARN nor the condition keys of those calls)."""
    statements = []
    for statement in policy["Statement"]:
        if not all(action.startswith("s3:") for action in statement["Action"]):
            statement = {k: v for k, v in statement.items() if k != "Condition"} | {"Resource": "*"}
        actions = statement["Action"]
        statement = {**statement, "Action": actions + [MOTO_NAMES[a] for a in actions if a in MOTO_NAMES]}
        statements.append(statement)
    return {**policy, "Statement": statements}


def demo_policy(capsys: pytest.CaptureFixture[str]) -> dict[str, Any]:
    """What `python -m flows.pipeline_test examples/cases/orders_ingestion.yaml --iam-policy --account ...` prints."""
    capsys.readouterr()
    assert cli.main([str(DEMO_CASE), "--iam-policy", "--account", ACCOUNT]) == 0
    return json.loads(capsys.readouterr().out)


def enforce_iam(endpoint: str) -> None:
    request = urllib.request.Request(f"{endpoint}/moto-api/reset-auth", data=b"0", method="POST",
                                     headers={"Content-Type": "text/plain"})
    with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310 - loopback only
        response.read()


def unenforce_iam(endpoint: str) -> None:
    """moto's IAM checks off again and its backends empty: they are this process's, shared with every later test."""
    from moto import settings
    from moto.core.authorization import ActionAuthenticatorMixin

    settings.INITIAL_NO_AUTH_ACTION_COUNT = float("inf")
    ActionAuthenticatorMixin.request_count = 0
    moto_api(endpoint, "reset", {})


def user_with_keys(iam: Any, name: str, document: dict[str, Any]) -> dict[str, str]:
    iam.create_user(UserName=name)
    iam.put_user_policy(UserName=name, PolicyName="policy", PolicyDocument=json.dumps(document))
    key = iam.create_access_key(UserName=name)["AccessKey"]
    return {"AWS_ACCESS_KEY_ID": key["AccessKeyId"], "AWS_SECRET_ACCESS_KEY": key["SecretAccessKey"]}


class TolerantPipeline(FakePipeline):
    """The demo's fake pipeline, which skips a landed file that is gone before its turn (a run that failed early
    has already deleted it), instead of trying it again on every pass and never reaching the next run's file."""

    def process(self, bucket: str, key: str) -> None:
        try:
            super().process(bucket, key)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") not in ("NoSuchKey", "404"):
                raise


class Emulator:
    """The emulator with IAM enforced, the fake pipeline (as admin), and the case run as the case-runner."""

    def __init__(self, endpoint: str, policy: dict[str, Any], tmp: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        self.tmp = tmp
        self.monkeypatch = monkeypatch
        monkeypatch.delenv("AWS_SESSION_TOKEN", raising=False)
        iam = boto3.client("iam", endpoint_url=endpoint, region_name=REGION)
        self.admin = user_with_keys(iam, "admin", {"Version": "2012-10-17", "Statement": [
            {"Effect": "Allow", "Action": "*", "Resource": "*"}]})
        self.runner = user_with_keys(iam, "case-runner", on_the_emulator(policy))
        self.as_admin()
        self.session = boto3.Session(region_name=REGION)
        self.iam = self.session.client("iam", endpoint_url=endpoint)
        self.ssm = self.session.client("ssm", endpoint_url=endpoint)
        self.s3 = self.session.client("s3", endpoint_url=endpoint)
        self.pipeline = TolerantPipeline(endpoint, delay=0.3, interval=0.1)
        for name in ("s3", "ssm", "dynamodb"):
            setattr(self.pipeline, name, self.session.client(name, endpoint_url=endpoint))  # type: ignore[call-overload]
        self.pipeline.create_resources()
        # one answer of the function for every run of the case (moto runs no code without Docker)
        moto_api(endpoint, "static/lambda-simple/response",
                 {"region": REGION, "results": [json.dumps({"accepted": True, "source": "orders"})] * 40})
        enforce_iam(endpoint)
        self.pipeline.start()
        self.runs = 0

    def as_admin(self) -> None:
        for key, value in self.admin.items():
            self.monkeypatch.setenv(key, value)

    def run_case(self, policy: dict[str, Any]) -> tuple[CaseResult | None, str]:
        """The case's result (None when it could not start) and its errors, as one text."""
        self.iam.put_user_policy(UserName="case-runner", PolicyName="policy",
                                 PolicyDocument=json.dumps(on_the_emulator(policy)))
        self.runs += 1
        for key, value in self.runner.items():
            self.monkeypatch.setenv(key, value)
        try:
            state = pipeline_test(spec=str(DEMO_CASE), evidence_dir=str(self.tmp / f"pack-{self.runs}"),
                                  return_state=True)
        finally:
            self.as_admin()
        result = result_of(state)
        if result is None:  # could not run (e.g. the journal could not be read): nothing was changed
            return None, str(state.message)
        return result, "\n".join(f"{s.label}: {s.error}" for s in result.steps if s.error)

    def changed(self) -> list[str]:
        """What the case left changed: the pipeline's setting, files it landed, undo journal entries."""
        left = []
        value = self.ssm.get_parameter(Name=SOURCE_PARAMETER)["Parameter"]["Value"]
        if value != PRODUCTION_SOURCE:
            left.append(f"{SOURCE_PARAMETER} is {value!r}")
        landed = self.s3.list_objects_v2(Bucket=LANDING_BUCKET, Prefix="incoming/").get("Contents", [])
        left += [f"s3://{LANDING_BUCKET}/{o['Key']}" for o in landed]
        journal = self.ssm.get_parameters_by_path(Path="/pipeline-test/journal", Recursive=True)["Parameters"]
        left += [f"journal entry {p['Name']}" for p in journal]
        return left

    def recover(self) -> None:
        """As admin: `python -m flows.pipeline_test recover` puts back what a run could not undo."""
        assert cli.main(["recover"]) == 0

    def stop(self) -> None:
        self.pipeline.stop()


@pytest.fixture
def emulator(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
             capsys: pytest.CaptureFixture[str]) -> Iterator[tuple[Emulator, dict[str, Any]]]:
    policy = demo_policy(capsys)
    with moto_server(lambda_like_aws=True) as endpoint, use_emulator(endpoint):
        try:
            emulator = Emulator(endpoint, policy, tmp_path, monkeypatch)
            try:
                yield emulator, policy
            finally:
                emulator.stop()
        finally:
            unenforce_iam(endpoint)


#: the preflight's own statement: only the preflight needs it (without it, the preflight probes instead)
PREFLIGHT = "PermissionPreflight"


@pytest.mark.e2e
@pytest.mark.usefixtures("prefect_harness")
@pytest.mark.parametrize("preflight", ["simulation", "probes"])
def test_the_policy_is_enough_and_every_statement_is_needed(emulator: tuple[Emulator, dict[str, Any]],
                                                            preflight: str) -> None:
    """``simulation``: the generated policy as it is, so the preflight simulates (the emulator's
    SimulatePrincipalPolicy): any one statement dropped stops the run before its first change (could not run),
    naming an action of it, KMS and Glue statements too (the simulation evaluates the policy, whatever moto's
    services call). ``probes``: the preflight's statement dropped (read-only probes): the run stops no later than
    the first step that needs the permission, with every change undone (or, the undo refused, recovered) and the
    action named."""
    env, generated = emulator
    assert os.environ["AWS_ACCESS_KEY_ID"] == env.admin["AWS_ACCESS_KEY_ID"]
    assert PREFLIGHT in {s["Sid"] for s in generated["Statement"]}
    policy = generated if preflight == "simulation" else \
        {**generated, "Statement": [s for s in generated["Statement"] if s["Sid"] != PREFLIGHT]}
    result, errors = env.run_case(policy)
    assert result is not None and result.passed, errors
    assert env.changed() == []

    unexpected, undo_denied, skipped = [], [], []
    for statement in policy["Statement"]:
        sid = statement["Sid"]
        if preflight == "probes" and all(action in NOT_CALLED_ON_THE_EMULATOR for action in statement["Action"]):
            skipped.append(sid)
            continue
        result, errors = env.run_case({**policy, "Statement": [s for s in policy["Statement"] if s["Sid"] != sid]})
        if sid == PREFLIGHT:  # the preflight probes instead, and the case needs nothing else of it
            if result is None or not result.passed:
                unexpected.append(f"without {sid}: the case did not pass; errors:\n{errors}")
            continue
        denied = [line for line in errors.splitlines()
                  if ("denied" in line.lower() or "not authorized" in line.lower())
                  and any(action.lower() in line.lower() for action in statement["Action"])]
        if (result is not None and result.passed) or not denied:
            unexpected.append(f"without {sid} ({', '.join(statement['Action'])}): the case "
                              f"{'passed' if result is not None and result.passed else 'failed'}; errors:\n{errors}")
        if preflight == "simulation" and (result is not None
                                          or "the preflight (iam:SimulatePrincipalPolicy)" not in errors):
            unexpected.append(f"without {sid}: the preflight did not stop the run before its first change; "
                              f"errors:\n{errors}")
        left = env.changed()
        if left and all(line.startswith("cleanup") for line in denied):
            # the undo itself was refused: what it could not put back stays in the journal, and recover (run by
            # someone who may) puts it back
            assert any(item.startswith("journal entry") for item in left), left
            undo_denied.append(sid)
            env.recover()
            left = env.changed()
        if left:
            unexpected.append(f"without {sid}: left changed: {left}")
    assert not unexpected, "\n".join(unexpected)
    if preflight == "probes":
        assert {"GlueCatalog", "KmsKeys"} <= set(skipped) and len(skipped) < len(policy["Statement"]) // 2, skipped
