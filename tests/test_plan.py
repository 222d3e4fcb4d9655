"""``--plan`` and ``--iam-policy`` from the command line: what a case or suite will change, read, undo and lock, and
the policy it needs; no AWS call, no Prefect server, no credentials."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from flows import cli
from flows.plan.changes import merged, shown
from flows.run import command

ROOT = Path(__file__).resolve().parent.parent
DEMO = ROOT / "examples/cases/orders_ingestion.yaml"
SUITE = ROOT / "examples/nightly-suite.yaml"


@pytest.fixture
def no_aws_no_server(monkeypatch: pytest.MonkeyPatch, no_aws: list[str]) -> list[str]:  # noqa: F811
    """Fail any AWS call (test_bad_input's ``no_aws``), and any start of a Prefect server; no credentials at all."""
    calls = no_aws

    def no_server(*args: Any, **kwargs: Any) -> Any:
        calls.append("prefect server")
        raise AssertionError("the plan started a Prefect server")

    monkeypatch.setattr(command, "temporary_server", no_server)
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "PREFECT_API_URL"):
        monkeypatch.delenv(key, raising=False)
    return calls


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = cli.main([*argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_the_demo_plan_lists_changes_reads_undo_and_locks(no_aws_no_server: list[str],
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, str(DEMO), "--plan")
    assert code == 0, err
    assert all(len(line) <= 120 for line in out.splitlines()), max(out.splitlines(), key=len)
    changes = out.split("Changes")[1].split("Undo")[0]
    assert "/demo/orders/source_bucket" in changes and "set (String)" in changes
    assert "s3://demo-landing/incoming/orders/" in changes and "<flow_run_id>/" in changes
    assert "demo-orders-ingest" in changes and "/pipeline-test/journal/" in changes
    undo = out.split("Undo")[1].split("Reads")[0]
    assert "put back as it was" in undo and "delete what this case" in undo
    reads = out.split("Reads")[1].split("Locks")[0]
    assert "demo-ingest-audit" in reads and "demo-orders-dlq" in reads and "demo-curated" in reads
    assert "ssm:/demo/orders/source_bucket" in out.split("Locks")[1]
    assert "placeholder" not in err and no_aws_no_server == []


def test_the_plan_as_json_never_holds_a_secure_value(tmp_path: Path, no_aws_no_server: list[str],
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    spec = tmp_path / "case.yaml"
    spec.write_text(yaml.safe_dump({
        "case": "Secret", "aws": {"region": "eu-west-1"}, "variables": {"token": "tok-3f9a-very-secret"},
        "steps": [{"kind": "set_parameters", "name": "token", "parameters": [
            {"name": "/test/token", "value": "{{ token }}", "type": "SecureString"}]}]}))
    code, out, err = run(capsys, str(spec), "--plan", "--json")
    assert code == 0, err
    plan = json.loads(out)["plan"]
    assert "tok-3f9a-very-secret" not in out
    assert plan["changes"][0] == {"resource_kind": "SSM parameter", "name": "/test/token",
                                  "detail": "set (SecureString)",
                                  "needed_by": [{"case": "Secret", "step": "token"}]}
    assert plan["cases"][0]["steps"][0]["locks"] == ["ssm:/test/token"]


def test_a_suite_plan_is_the_union_with_the_cases_that_need_each_item(no_aws_no_server: list[str],
                                                                      capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, str(SUITE), "--plan", "--json")
    assert code == 0, err
    plan = json.loads(out)["plan"]
    assert len(plan["cases"]) >= 2
    setting = [i for i in plan["changes"] if i["name"] == "/demo/orders/source_bucket"]
    assert len(setting) == 1 and len({w["case"] for w in setting[0]["needed_by"]}) >= 2


def test_the_policy_of_the_demo_names_the_account_and_region(no_aws_no_server: list[str],
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, str(DEMO), "--iam-policy", "--account", "210987654321", "--region", "eu-west-1",
                         "--kms-key-arn", "arn:aws:kms:eu-west-1:210987654321:key/1234abcd-12ab-34cd-56ef-1234567890ab")
    assert code == 0, err
    policy = json.loads(out)
    assert policy["Version"] == "2012-10-17"
    by_sid = {s["Sid"]: s for s in policy["Statement"]}
    assert by_sid["SsmParameters"]["Resource"] == ["arn:aws:ssm:eu-west-1:210987654321:parameter/demo/orders/source_bucket"]
    assert by_sid["KmsKeys"]["Resource"] == ["arn:aws:kms:eu-west-1:210987654321:key/1234abcd-12ab-34cd-56ef-1234567890ab"]
    assert "Condition" not in by_sid["KmsKeys"]
    assert by_sid["UndoJournal"]["Resource"] == ["arn:aws:ssm:eu-west-1:210987654321:parameter/pipeline-test/journal",
                                                 "arn:aws:ssm:eu-west-1:210987654321:parameter/pipeline-test/journal/*"]
    objects = [s for s in policy["Statement"] if "s3:PutObjectTagging" in s["Action"]]
    assert objects[0]["Resource"] == ["arn:aws:s3:::demo-landing/incoming/orders/*/*"]  # what varies per run: *
    assert "Warning" not in err  # account, region and key given


def test_without_an_account_the_policy_says_star_and_warns(no_aws_no_server: list[str],
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, str(DEMO), "--iam-policy")
    assert code == 0
    assert ":us-east-1:*:" in out and "pass --account" in err and "kms:ViaService" in out


def test_plan_and_policy_together_as_json(no_aws_no_server: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, str(DEMO), "--plan", "--iam-policy", "--json")
    assert code == 0
    both = json.loads(out)
    assert set(both) == {"plan", "iam_policy"}


@pytest.mark.parametrize("a, b, expected", [
    ("x/1901-02-03/y", "x/2088-11-29/y", "x/*/y"),
    ("same", "same", "same"),
    ("arn:aws:s3:::b/in/aaaa/*", "arn:aws:s3:::b/in/bbbb/*", "arn:aws:s3:::b/in/*/*"),
])
def test_what_varies_per_run_is_a_wildcard(a: str, b: str, expected: str) -> None:
    assert merged(a, b) == expected


def test_placeholders_put_back_the_built_ins() -> None:
    values = {"run_timestamp": "19010203T040506", "flow_run_id": "aaaa", "run_date": "1901-02-03",
              "run_time": "040506"}
    assert shown("in/1901-02-03/aaaa/19010203T040506.csv", values) == "in/<run_date>/<flow_run_id>/<run_timestamp>.csv"


def test_docs_quote_the_current_output(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """docs/aws.md shows the real --plan and --iam-policy output of the demo case: it must stay what they print."""
    monkeypatch.chdir(ROOT)
    page = (ROOT / "docs/aws.md").read_text(encoding="utf-8")
    for flag in ("--plan", "--iam-policy"):
        code, out, err = run(capsys, "examples/cases/orders_ingestion.yaml", flag)
        assert code == 0
        for text in (out.rstrip(), err.rstrip()):
            assert text in page, f"docs/aws.md does not show the current output of {flag}; paste it again:\n{text}"
