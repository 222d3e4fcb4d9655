"""Evidence built for the Prefect UI's width (issue 11, items 3 to 7): wrapped messages, narrow tables, readable
checks before raw JSON, verdict words, the case's last runs, the pack and the UI pointing at each other, audit."""

from __future__ import annotations

import json
import re
from datetime import datetime, timedelta, timezone
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import boto3
import pytest
from botocore.exceptions import ClientError

from flows.evidence import audit
from flows.evidence import report as report_model
from flows.evidence.history import history_rows
from flows.evidence.markdown import case_markdown, step_description, step_markdown
from flows.evidence.pack import write as evidence_pack
from flows.evidence.results import CaseResult, StepResult
from tasks.kit import markdown as md
from tasks.kit.aws import AwsTarget, ClientFactory
from tasks.kit.checks import CheckRecord
from tasks.kit.step import StepOutcome

T0 = datetime(2026, 3, 14, 9, 26, 53, tzinfo=timezone.utc)
LONG = ("first_row.total_amount: expected == 1234.56 for the orders of the day after the pipeline's curation, got "
        "1200.00 (the curated table holds 5 rows, the landing file had 6; one row was quarantined as malformed)")
ATHENA_DETAILS = {"query_id": "q-1", "checks": [
    {"check": "first_row.total_amount ==", "passed": False, "relation": "==", "expected": "1234.56",
     "actual": "1200.00", "note": ""},
    {"check": "row_count", "passed": True, "relation": "", "expected": 5, "actual": 5, "note": ""}],
    "preview": [{"id": i, "total_amount": "1.00"} for i in range(20)]}
#: the same checks, typed, as the step's result carries them (report.html's checks table reads these)
ATHENA_CHECKS = [CheckRecord.of("first_row.total_amount", False, "== 1234.56", "1200.00"),
                 CheckRecord.of("row_count", True, 5, 5)]


def visible(line: str) -> str:
    """What a markdown line shows (roughly): escapes, entities and code fences taken out."""
    line = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", line)  # a link shows its text
    line = re.sub(r"&#?\w+;", "x", line)
    line = re.sub(r"\\(.)", r"\1", line)
    return line.replace("`", "").replace("**", "")


def table_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith("|")]


def code_blocks(text: str) -> list[str]:
    return re.findall(r"^(`{3,})[^\n]*\n(.*?)\n\1$", text, flags=re.S | re.M)


def failing_case(**kw: Any) -> CaseResult:
    steps = [
        StepResult(number="1", label="land-orders-file-with-a-rather-long-name-for-the-table", kind="upload",
                   status="passed", started_at=T0, duration_s=0.2, summary="uploaded 2 file(s), 276 B, to "
                   "s3://demo-landing/incoming/2026-03-14/a-long-prefix-that-would-make-a-wide-column/"),
        StepResult(number="2", label="orders-in-athena", kind="athena_query", status="failed", started_at=T0,
                   duration_s=1.5, error=LONG, error_code="CheckFailed", details=ATHENA_DETAILS,
                   checks=ATHENA_CHECKS),
        StepResult(number="end", label="cleanup", kind="cleanup", status="passed", duration_s=0.1, summary="done"),
    ]
    base: dict[str, Any] = dict(case="case-orders-ingestion", status="failed", flow_run_id="run-1",
                                ui_url="http://127.0.0.1:4321/runs/flow-run/run-1", started_at=T0,
                                ended_at=T0 + timedelta(seconds=3), duration_s=3.0, steps=steps)
    base.update(kw)
    return CaseResult(**base)


def test_failed_step_evidence_wraps_the_message_and_shows_raw_details_last() -> None:
    step = failing_case().steps[1]
    outcome_md = "**Checks**\n\n" + md.table(["check", "expected", "actual", "verdict"],
                                             [["first_row.total_amount", "== 1234.56", "1200.00", "❌ FAIL"]])
    text = step_markdown(step, StepOutcome(summary="", markdown=outcome_md))
    assert md.message(LONG) in text  # wrapped text, not a one-line code block
    assert all(LONG[:40] not in body for _, body in code_blocks(text))
    assert text.index("**Checks**") < text.index("What the step saw (raw)") < text.index('"query_id"')
    assert step_description(step) == "FAILED · step 2 orders-in-athena"  # the verdict first: a card cuts the rest
    assert step_description(failing_case().steps[0]).startswith("passed · step ")


def test_message_keeps_lines_and_escapes_each() -> None:
    shown = md.message("# not a heading\n| not | a row |\nthird")
    assert shown == "\\# not a heading  \n&#124; not &#124; a row &#124;  \nthird"
    assert "more lines" in md.message("\n".join(["x"] * 50), max_lines=10)


def test_case_report_fits_the_ui_width_and_names_pack_audit_and_history() -> None:
    pack = {"folder": "/work/evidence/case-orders-ingestion/20260314T092653Z-run-1", "manifest_sha256": "a" * 64,
            "s3_uri": "s3://evidence/packs/run-1/", "url": "http://127.0.0.1:5000/evidence/packs/run-1/"}
    context = {"aws": {"account_id": "123456789012", "caller_arn": "arn:aws:iam::123456789012:user/ci",
                       "region": "eu-west-1", "error_code": None}, "deployment": "orders/nightly",
               "work_pool": "ecs", "host": "runner-1", "os_user": "ci", "project_version": "0.1.0",
               "git_commit": "abc123def456", "prefect_version": "3.8.8", "boto3_version": "1.40.0"}
    history = [{"flow_run_id": f"run-{i}", "status": "failed" if i < 2 else "passed",
                "started": f"2026-03-{14 - i:02d} 09:00:00 UTC", "duration": "3.0 s",
                "failed_step": "2 orders-in-athena" if i < 2 else None,
                "url": f"http://127.0.0.1:4321/runs/flow-run/run-{i}"} for i in range(10)]
    notice = {"sent": False, "target": None, "reason": "Slack answered channel_not_found"}
    text = case_markdown(failing_case(pack=pack, audit=context, notice=notice), history)
    assert "**Slack notice**: not sent (Slack answered channel_not_found)" in text
    assert all(len(visible(line)) <= md.TABLE_WIDTH for line in table_lines(text)), \
        [visible(line) for line in table_lines(text) if len(visible(line)) > md.TABLE_WIDTH]
    assert not code_blocks(text)  # the first failure is wrapped text
    assert md.message(LONG) in text
    assert "a" * 64 in text and "/20260314T092653Z-run-1" in text and "s3://evidence/packs/run-1/" in text
    assert "123456789012" in text and "arn:aws:iam::123456789012:user/ci" in text and "orders/nightly" in text
    assert "### Last 10 runs of this case" in text and text.count("❌ failed") >= 3
    assert "[open](http://127.0.0.1:4321/runs/flow-run/run-9)" in text


def test_history_rows_from_the_summary_table_versions() -> None:
    def artifact(run: str, statuses: list[str], minutes: int) -> SimpleNamespace:
        rows = [{"step": f"{i + 1} s{i + 1}", "status": s} for i, s in enumerate(statuses)]
        return SimpleNamespace(flow_run_id=run, data=json.dumps(rows), created=T0 + timedelta(minutes=minutes))

    runs = {"r2": SimpleNamespace(start_time=T0 + timedelta(minutes=2), total_run_time=timedelta(seconds=4.5))}
    rows = history_rows([artifact("r2", ["✅ passed", "❌ failed", "⏭️ skipped"], 2),
                         artifact("r1", ["✅ passed", "✅ passed"], 1)], runs, lambda r: f"http://ui/{r}")
    assert [(r["status"], r["failed_step"], r["url"]) for r in rows] == [
        ("failed", "2 s2", "http://ui/r2"), ("passed", None, "http://ui/r1")]
    assert rows[0]["started"] == "2026-03-14 09:28:53 UTC" and rows[0]["duration"] == "4.5 s"
    assert rows[1]["started"] == "2026-03-14 09:27:53 UTC" and rows[1]["duration"] is None


@pytest.mark.e2e  # starts a process (tests/fixtures/tiers.py)
def test_audit_names_account_identity_and_versions(aws: None) -> None:
    found = audit.collect(ClientFactory(AwsTarget(region="eu-west-1")))
    assert found.aws.to_json() == {"account_id": "123456789012", "caller_arn": found.aws.caller_arn,
                                   "region": "eu-west-1", "error_code": None}
    assert found.aws.caller_arn and found.aws.caller_arn.startswith("arn:aws:")
    assert found.prefect_version and found.boto3_version and found.host
    assert found.deployment is None  # not run from a deployment


def test_audit_reads_the_deployment_off_the_runs_context(monkeypatch) -> None:
    """A run's deployment and work pool come from its own FlowRun (one API call for the deployment's name); a run
    with no deployment costs no API call at all."""
    import prefect.client.orchestration as orchestration
    from prefect.context import FlowRunContext

    calls: list[Any] = []

    class Client:
        def __enter__(self) -> Any:
            return self

        def __exit__(self, *exc: Any) -> None:
            pass

        def read_deployment(self, deployment_id: Any) -> Any:
            calls.append(deployment_id)
            return SimpleNamespace(name="orders-nightly")

    monkeypatch.setattr(orchestration, "get_client", lambda **_: Client())
    run = SimpleNamespace(deployment_id="dep-1", work_pool_name="local-process")
    monkeypatch.setattr(FlowRunContext, "get", classmethod(lambda cls: SimpleNamespace(flow_run=run)))
    assert audit._deployment() == ("orders-nightly", "local-process") and calls == ["dep-1"]
    run.deployment_id = None
    assert audit._deployment() == (None, None) and calls == ["dep-1"]


def test_audit_records_sts_refusal_instead_of_failing() -> None:
    class Refusing:
        region = "eu-west-1"

        def client(self, service: str) -> Any:
            assert service == "sts"
            return SimpleNamespace(get_caller_identity=self._refuse)

        @staticmethod
        def _refuse() -> None:
            raise ClientError({"Error": {"Code": "AccessDenied", "Message": "no"}}, "GetCallerIdentity")

    assert audit.aws_identity(Refusing()).to_json() == {"account_id": None, "caller_arn": None,
                                                        "region": "eu-west-1", "error_code": "AccessDenied"}


@pytest.mark.e2e  # starts a process (tests/fixtures/tiers.py)
def test_report_json_audit_follows_the_schema_and_html_shows_checks_first(aws: None, tmp_path: Path) -> None:
    import jsonschema

    result = failing_case(audit=audit.collect(ClientFactory(AwsTarget(region="eu-west-1"))))
    folder = evidence_pack.write_pack(result, None, tmp_path / "pack")
    report = json.loads((folder / "report.json").read_text(encoding="utf-8"))
    schema = json.loads(report_model.SCHEMA_FILE.read_text(encoding="utf-8"))
    jsonschema.Draft202012Validator(schema).validate(report)
    assert report["audit"]["aws"]["account_id"] == "123456789012"
    assert report["run"]["ui_url"] == "http://127.0.0.1:4321/runs/flow-run/run-1"  # the pack points at the UI
    page = (folder / "report.html").read_text(encoding="utf-8")
    section = page[page.index('id="step-2"'):]
    assert section.index('<table class="checks">') < section.index("Raw details (JSON)")
    assert "<td>== 1234.56</td><td>1200.00</td>" in section
    assert "123456789012" in page and "Who ran it, where" in page
    assert "123456789012" in (folder / "report.md").read_text(encoding="utf-8")


def test_report_html_reads_typed_checks_not_shapes_in_details(tmp_path: Path) -> None:
    """A check-like shape in details is no check; the typed checks are, with where they were made."""
    step = StepResult(number="1", label="landed", kind="expect_objects", status="passed", duration_s=0.1,
                      details={"objects": [{"key": "x", "checks": [{"check": "decoy", "passed": False}]}]},
                      checks=[CheckRecord.of("row count", True, "3", "3", where="out/a.csv")])
    result = CaseResult(case="typed checks", status="passed", started_at=T0, ended_at=T0, duration_s=0.1,
                        steps=[step])
    page = (evidence_pack.write_pack(result, None, tmp_path / "pack") / "report.html").read_text(encoding="utf-8")
    assert "<code>out/a.csv: row count</code></td><td>3</td><td>3</td>" in page
    assert "decoy" not in page[:page.index("Raw details")]
    report = json.loads((tmp_path / "pack" / "report.json").read_text(encoding="utf-8"))
    assert report["steps"][0]["checks"] == [{"name": "row count", "expected": "3", "actual": "3",
                                             "verdict": "passed", "where": "out/a.csv"}]


@pytest.mark.parametrize("value", ["", "   "])
def test_empty_values_show_a_dash_not_backticks(value: str) -> None:
    from tasks.awslambda import _markdown

    text = _markdown({"qualifier": value}, "{}", None, "", [])
    assert "- **qualifier**: –" in text and "``" not in text.split("**Payload")[0]


def test_boto3_is_the_real_one() -> None:  # the audit's version comes from the installed package
    assert audit._version("boto3") == boto3.__version__


def test_numbers_show_without_a_backslash_and_list_starts_stay_text() -> None:
    assert md.text("3.8 s") == "3.8 s" and md.text("0.1.0") == "0.1.0" and md.text("1.1 step") == "1.1 step"
    assert md.text("1. not a list") == "1\\. not a list" and md.text("2) nor") == "2\\) nor"


def test_code_blocks_can_be_broken_to_the_ui_width() -> None:
    sql = "SELECT " + ", ".join(f"column_{i}" for i in range(40)) + " FROM orders"
    block = md.code_block(sql, "sql", wrap=96)
    body = block.split("\n")[1:-1]
    assert len(body) > 1 and all(len(line) <= 96 for line in body)
    assert " ".join(line.strip() for line in body) == sql


def test_the_history_gives_each_run_its_own_duration_and_reads_in_the_singular() -> None:
    """One source for durations: a run's line in later reports shows the duration its own report gave (from
    its summary table's description), not the flow run's, which also counts Prefect's start and end."""
    from datetime import datetime, timedelta, timezone
    from types import SimpleNamespace

    from flows.evidence.history import history_rows
    from flows.evidence.markdown import _history_markdown

    artifact = SimpleNamespace(flow_run_id="r1", data="[]", created=datetime(2026, 12, 8, tzinfo=timezone.utc),
                               description="FAILED · Orders ingestion (3.6 s)")
    run = SimpleNamespace(start_time=artifact.created, total_run_time=timedelta(seconds=4.4))
    [row] = history_rows([artifact], {"r1": run}, lambda _: None)
    assert row["duration"] == "3.6 s"
    assert _history_markdown([row])[0] == "### The last run of this case"
