"""secret() and ssm() in templates (flows/spec/template_secrets.py): their shape at validation (no AWS call), the reads a
case names, the run's reader (once per run, registered as secrets at the source), its errors, the plan and policy.

(That the values are masked by every route of a whole run is the canary test's: tests/test_evidence_safety.py.)
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import boto3
import pytest

from flows.spec.load import SpecError, case_reads, parse_spec
from flows.spec.template_secrets import (
    PLACEHOLDER,
    Read,
    SecretReader,
    TemplateSecretError,
    reads_footprint,
)
from flows.spec.templating import render
from tasks.kit.aws import ClientFactory
from tasks.kit.iam import Arns
from tasks.kit.secrets import Secrets, mask

REGION = "us-east-1"
PASSWORD = "s3cr3t-password-42"


def case(value: str, **extra: Any) -> dict[str, Any]:
    return {"case": "c", "aws": {"region": REGION, "allowed_parameter_prefixes": ["/t/"]}, **extra,
            "steps": [{"kind": "set_parameters", "parameters": [{"name": "/t/p", "value": value,
                                                                  "type": "SecureString"}]}]}


@pytest.mark.parametrize("template", [
    '{{ secret("prod/db") }}', '{{ secret("prod/db", key="password") }}', "{{ ssm('/team/token') }}",
    '{{ secret("arn:aws:secretsmanager:us-east-1:123456789012:secret:prod/db-AbCdEf") }}',
    'x-{{ ssm("/a") ~ secret("b") }}-{% if ssm("/c") %}y{% endif %}',
])
@pytest.mark.usefixtures("no_aws")
def test_literal_calls_validate_without_any_aws_call(template: str, tmp_path: Path) -> None:
    spec = parse_spec(case(template), "c.yaml", tmp_path)
    assert spec.case == "c"
    assert PLACEHOLDER in render(template.split("{% if")[0], {"secret": lambda *a, **k: PLACEHOLDER,
                                                              "ssm": lambda *a: PLACEHOLDER})


@pytest.mark.parametrize(("template", "message"), [
    ("{{ secret(name) }}", "secret()'s argument must be a literal, non-empty string"),
    ('{{ secret("a" ~ "b") }}', "secret()'s argument must be a literal"),
    ('{{ secret("") }}', "must be a literal, non-empty string"),
    ('{{ secret("a", "b") }}', "secret() takes one literal string"),
    ('{{ secret("a", key=k) }}', "secret()'s key must be a literal string"),
    ('{{ secret("a", other="x") }}', "secret() takes no argument 'other'"),
    ('{{ ssm("/a", key="x") }}', "ssm() takes no argument 'key'"),
    ('{{ ssm(*names) }}', "ssm() takes one literal string"),
    ("{{ secret }}", "secret is a function: call it with a literal string"),
    ("{{ ssm | length }}", "ssm is a function"),
])
@pytest.mark.usefixtures("no_aws")
def test_calls_of_the_wrong_shape_are_refused_at_validation(template: str, message: str, tmp_path: Path) -> None:
    with pytest.raises(SpecError) as err:
        parse_spec(case(template, variables={"name": "n", "k": "k", "names": "x"}), "c.yaml", tmp_path)
    assert message in str(err.value) and "step 1" in str(err.value) and "field 'parameters[0].value'" in str(err.value)


def test_a_variable_cannot_be_named_like_a_function(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match="variable 'secret' is built in"):
        parse_spec(case("x", variables={"secret": "a"}), "c.yaml", tmp_path)


def test_case_reads_finds_every_read_once_in_variables_steps_and_template_files(tmp_path: Path) -> None:
    (tmp_path / "q.sql").write_text("SELECT * FROM t WHERE k = '{{ secret(\"sql/key\") }}'\n")
    spec = parse_spec({
        "case": "c", "aws": {"region": REGION, "allowed_parameter_prefixes": ["/t/"]},
        "variables": {"token": '{{ ssm("/team/token") }}'},
        "steps": [
            {"kind": "set_parameters", "parameters": [
                {"name": "/t/a", "value": '{{ secret("prod/db", key="password") }}', "type": "SecureString"},
                {"name": "/t/b", "value": '{{ ssm("/team/token") }}', "type": "SecureString"}]},
            {"kind": "athena_query", "sql_file": "q.sql"}]}, "c.yaml", tmp_path)
    assert case_reads(spec, tmp_path) == [Read("ssm", "/team/token"), Read("secret", "prod/db", "password"),
                                          Read("secret", "sql/key")]


@pytest.mark.usefixtures("no_aws")
def test_reads_declare_their_permissions() -> None:
    arns = Arns(account="123456789012", region=REGION)
    fp = reads_footprint([Read("secret", "prod/db", "password"), Read("ssm", "/team/token"),
                          Read("secret", "arn:aws:secretsmanager:us-east-1:123456789012:secret:x-AbCdEf")], arns)
    assert [(n.action, n.resource) for n in fp.needs] == [
        ("secretsmanager:GetSecretValue", "arn:aws:secretsmanager:us-east-1:123456789012:secret:prod/db-??????"),
        ("ssm:GetParameter", "arn:aws:ssm:us-east-1:123456789012:parameter/team/token"),
        ("secretsmanager:GetSecretValue", "arn:aws:secretsmanager:us-east-1:123456789012:secret:x-AbCdEf"),
        ("kms:Decrypt", "arn:aws:kms:us-east-1:123456789012:key/*"),
        ("kms:Decrypt", "arn:aws:kms:us-east-1:123456789012:key/*")]
    assert {n.condition_block()["StringEquals"]["kms:ViaService"] for n in fp.needs if n.service == "kms"} == {
        "secretsmanager.us-east-1.amazonaws.com", "ssm.us-east-1.amazonaws.com"}
    assert [(t.access, t.resource_kind, t.name) for t in fp.touches] == [
        ("read", "Secrets Manager secret", "prod/db"), ("read", "SSM parameter", "/team/token"),
        ("read", "Secrets Manager secret", "arn:aws:secretsmanager:us-east-1:123456789012:secret:x-AbCdEf")]


# ------------------------------------------------------------------------------------------------ the reader
@pytest.fixture
def stored(clients: ClientFactory) -> ClientFactory:
    sm = clients.client("secretsmanager")
    sm.create_secret(Name="prod/db", SecretString=json.dumps({"user": "app", "password": PASSWORD, "port": 5432}))
    sm.create_secret(Name="plain", SecretString="a-plain-text-secret")
    sm.create_secret(Name="binary", SecretBinary=b"\x00\x01")
    clients.client("ssm").put_parameter(Name="/team/token", Value="tok-123456789", Type="SecureString")
    return clients


def test_the_reader_reads_each_value_once_and_registers_it_at_the_source(stored: ClientFactory) -> None:
    calls: list[str] = []
    for service in ("secretsmanager", "ssm"):
        stored.client(service).meta.events.register(f"before-call.{service}", lambda model, **_: calls.append(model.name))
    secrets = Secrets()
    reader = SecretReader(lambda: stored, secrets)
    functions = reader.functions()
    values = {**functions}
    assert render('{{ secret("prod/db", key="password") }}', values) == PASSWORD
    assert PASSWORD in secrets and json.loads(secrets.values[0])["password"] == PASSWORD  # the whole string too
    assert render('{{ secret("prod/db", key="port") }}|{{ secret("plain") }}|{{ ssm("/team/token") }}', values) == \
        "5432|a-plain-text-secret|tok-123456789"
    assert render('{{ secret("prod/db", key="password") }}{{ ssm("/team/token") }}', values) == \
        PASSWORD + "tok-123456789"
    assert calls == ["GetSecretValue", "GetSecretValue", "GetSecretValue", "GetParameter"]  # once per secret/param
    assert {"a-plain-text-secret", "tok-123456789", "5432"} <= set(secrets)
    assert reader.warnings() == ['secret("prod/db", key="port") in a template: the value is shorter than 8 '
                                 "characters: it is masked where it is known to be secret, but not searched for in "
                                 "messages and log tails (it would mask ordinary words); use a longer value"]
    assert reader.scrub(f"boom: {PASSWORD} and 5432") == f"boom: {mask(PASSWORD)} and {mask('5432')}"


@pytest.mark.parametrize(("read", "message", "code"), [
    (Read("secret", "missing"), 'secret("missing") in a template: Secrets Manager GetSecretValue on missing failed',
     "ResourceNotFoundException"),
    (Read("ssm", "/missing"), 'ssm("/missing") in a template: SSM GetParameter on /missing failed',
     "ParameterNotFound"),
    (Read("secret", "prod/db", "nope"), "the secret has no key 'nope' (its keys: 'user', 'password', 'port')", None),
    (Read("secret", "plain", "k"), "the secret is not a JSON object, so it has no key 'k'", None),
    (Read("secret", "binary"), "the secret is binary (SecretBinary); only text secrets", None),
])
def test_what_cannot_be_read_names_the_secret_and_aws_error(stored: ClientFactory, read: Read, message: str,
                                                            code: str | None) -> None:
    with pytest.raises(TemplateSecretError) as err:
        SecretReader(lambda: stored, Secrets()).read_all([read])
    assert message in err.value.message and PASSWORD not in err.value.message
    if code:
        assert err.value.code == code and code in err.value.message


@pytest.mark.usefixtures("no_aws")
def test_plan_and_policy_name_the_reads_without_any_aws_call(tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    from flows.cli import main

    spec = case('{{ secret("prod/db", key="password") }}', variables={"t": '{{ ssm("/team/token") }}'})
    spec["aws"]["account_id"] = "123456789012"
    (tmp_path / "c.yaml").write_text(json.dumps(spec))
    assert main([str(tmp_path / "c.yaml"), "--plan", "--json"]) == 0
    plan = json.loads(capsys.readouterr().out)["plan"]
    assert [(r["resource_kind"], r["name"]) for r in plan["reads"]][:2] == [  # variables first
        ("SSM parameter", "/team/token"), ("Secrets Manager secret", "prod/db")]
    assert main([str(tmp_path / "c.yaml"), "--iam-policy", "--json"]) == 0
    policy = json.loads(capsys.readouterr().out)
    by_sid = {s["Sid"]: s for s in policy["Statement"]}
    assert by_sid["SecretsManagerSecrets"]["Resource"] == [
        "arn:aws:secretsmanager:us-east-1:123456789012:secret:prod/db-??????"]
    assert any(s["Action"] == ["ssm:GetParameter"] and
               "arn:aws:ssm:us-east-1:123456789012:parameter/team/token" in s["Resource"] for s in policy["Statement"])


@pytest.mark.usefixtures("prefect_harness")
def test_a_run_whose_secret_is_missing_does_not_start(stored: ClientFactory, tmp_path: Path) -> None:
    """Exit 3 before any change: the parameter the case would set was never written."""
    from flows.pipeline_test import pipeline_test
    from flows.run.recover import CouldNotRun

    (tmp_path / "c.yaml").write_text(json.dumps(case('{{ secret("missing") }}')))
    state = pipeline_test(spec=str(tmp_path / "c.yaml"), write_evidence=False, return_state=True)
    value = state.result(raise_on_failure=False)
    assert isinstance(value, CouldNotRun) and 'secret("missing") in a template' in str(value)
    assert "ResourceNotFoundException" in str(value)
    ssm = boto3.client("ssm", region_name=REGION)
    assert ssm.describe_parameters(ParameterFilters=[{"Key": "Name", "Values": ["/t/p"]}])["Parameters"] == []
