"""``severity: warn`` (issue #28, item 2) and baselines from history (item 3).

A check that only warns never fails its case: the step is ``warned``, the case ``PASSED with N warnings``, counted
in the CLI, the UI's markdown, report.json/md/html, JUnit (still valid against Jenkins' schema) and Slack. A
baseline compares a value with the case's own last passing runs, read from its evidence packs: it passes, warns
while there are too few runs, and fails outside its range.
"""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from flows.cli import format_result
from flows.evidence import report as report_model
from flows.evidence.markdown import case_markdown, step_markdown
from flows.evidence.notify import build_message
from flows.evidence.pack import verify as ep
from flows.evidence.results import CaseResult, result_of
from flows.pipeline_test import pipeline_test
from tasks.athena.checks import AthenaExpect, CheckAccumulator, baseline_checks
from tasks.athena.values import Column
from tasks.kit import baseline
from tasks.kit.errors import failed_checks
from tasks.kit.step import Baseline

JUNIT_XSD = Path(__file__).with_name("junit-10.xsd")
BUCKET = "warn-bucket"


def csv_rows(count: int) -> bytes:
    return ("id,amount\n" + "".join(f"{i},{i * 10}\n" for i in range(1, count + 1))).encode()


def spec(*steps: dict[str, Any], name: str = "Warned case") -> dict[str, Any]:
    return {"case": name, "aws": {"region": "us-east-1"}, "steps": list(steps)}


def content_step(content: dict[str, Any], **more: Any) -> dict[str, Any]:
    return {"kind": "expect_objects", "name": "output", "bucket": BUCKET, "keys": ["out/orders.csv"],
            "content": {"format": "csv", **content}, **more}


# ------------------------------------------------------------------------------------------------ severity
@pytest.mark.usefixtures("prefect_harness")
def test_warnings_pass_the_case_and_are_counted_everywhere(s3, tmp_path: Path) -> None:
    import jsonschema
    import xmlschema

    from tests.helpers import read_artifacts

    s3.create_bucket(Bucket=BUCKET)
    s3.put_object(Bucket=BUCKET, Key="out/orders.csv", Body=csv_rows(3))
    steps = [
        # a content check that warns (the row count), beside one that holds (amount >= 0)
        content_step({"row_count": 5, "severity": "warn", "conditions": {"amount": {"min": 0}}}),
        # a whole step that warns: the file never comes (a timeout waiting for it is a check that did not hold)
        {"kind": "expect_objects", "name": "late-file", "bucket": BUCKET, "keys": ["never.csv"],
         "wait": {"timeout": 0.2}, "severity": "warn"},
        {"kind": "expect_objects", "name": "listed", "bucket": BUCKET, "prefix": "out/", "count": 1},
    ]
    state = pipeline_test(spec=spec(*steps), base_dir=str(tmp_path), return_state=True)
    result = result_of(state)
    assert state.is_completed() and isinstance(result, CaseResult) and result.passed
    assert [s.status for s in result.steps] == ["warned", "warned", "passed"]
    assert result.warnings == 2 and result.verdict == "PASSED with 2 warnings"
    assert result.steps[0].warnings == ["out/orders.csv: row count: expected 5, got 3"]
    assert result.steps[0].error is None and "timed out" in result.steps[1].warnings[0]

    cli = format_result(result)
    assert cli.startswith("Case 'Warned case' PASSED with 2 warnings in ")
    assert "  WARN  1 " in cli and "row count: expected 5, got 3" in cli and "  PASS  3 " in cli

    folder = Path(result.evidence_dir or "")
    assert ep.verify(folder) == []
    report = json.loads((folder / "report.json").read_text(encoding="utf-8"))
    jsonschema.Draft202012Validator(json.loads(report_model.SCHEMA_FILE.read_text(encoding="utf-8"))).validate(report)
    assert (report["status"], report["verdict"], report["warnings"]) == ("passed", "PASSED with 2 warnings", 2)
    assert report["counts"]["warned"] == 2 and report["counts"]["passed"] == 1 and report["first_failure"] is None
    assert report["steps"][0]["status"] == "warned" and report["steps"][0]["warnings"]
    assert report["steps"][0]["details"]["content"][0]["checks"][0]["severity"] == "warn"

    markdown = (folder / "report.md").read_text(encoding="utf-8")
    assert "⚠️ PASSED with 2 warnings" in markdown and "⚠️ warned" in markdown and "⚠️ WARN" in markdown
    assert "PASSED with 2 warnings" in (folder / "report.html").read_text(encoding="utf-8")

    junit = folder / "junit.xml"
    assert [str(e.reason) for e in xmlschema.XMLSchema(str(JUNIT_XSD)).iter_errors(str(junit))] == []
    root = ET.parse(junit).getroot()
    props = {p.get("name"): p.get("value") for p in root.iter("property")}
    assert props["warnings"] == "2" and props["verdict"] == "PASSED with 2 warnings"
    assert root.get("failures") == "0" and root.get("errors") == "0"
    first = next(root.iter("testcase"))
    assert [c.tag for c in first] == ["system-out"] and "WARNING: out/orders.csv: row count" in (first[0].text or "")

    slack = build_message(result)
    assert ":warning: *pipeline-test: case 'Warned case' PASSED with 2 warnings*" in slack
    assert "*2 warnings:*" in slack and "row count: expected 5, got 3" in slack

    assert "# Warned case: ⚠️ PASSED with 2 warnings" in case_markdown(result)
    assert "1 of 3 passed, 2 warned (2 warnings)" in case_markdown(result)
    assert "### Warnings (1)" in step_markdown(result.steps[0], None)
    cards = {a.key: a.description for a in read_artifacts(result.flow_run_id or "") if a.key}
    assert any(d.startswith("passed with 2 warnings · Warned case") for d in cards.values()), cards


def test_an_error_beside_a_warning_fails_the_step_and_names_both() -> None:
    assert failed_checks([], 3) is None
    warned = failed_checks([("warn", "a: expected 1, got 2")], 3)
    assert warned is not None and warned.severity == "warn" and warned.warnings == ["a: expected 1, got 2"]
    assert warned.message == "1 of 3 checks warned: a: expected 1, got 2"
    both = failed_checks([("warn", "a: expected 1, got 2"), ("error", "b: expected 3, got 4")], 3)
    assert both is not None and both.severity == "error"
    assert both.message == "1 of 3 checks failed: b: expected 3, got 4 (and 1 warning(s): a: expected 1, got 2)"


def test_athena_severity_of_the_expect_and_of_a_first_row_column() -> None:
    columns = [Column("n", "bigint"), Column("total", "bigint")]
    expect = AthenaExpect.model_validate({"row_count": 2, "first_row": {"total": {"gt": 100, "severity": "warn"}}})
    checks = CheckAccumulator(expect, columns)
    checks.feed({"n": 1, "total": 5})
    checks.feed({"n": 2, "total": 7})
    results = {c.check: c for c in checks.results()}
    assert results["row_count"].passed and results["row_count"].severity == "error"
    gt = results["first_row.total >"]
    assert not gt.passed and gt.severity == "warn" and gt.line().startswith("⚠️ WARN first_row.total")
    whole = AthenaExpect.model_validate({"row_count": 3, "severity": "warn"})
    acc = CheckAccumulator(whole, columns)
    assert [c.severity for c in acc.results()] == ["warn"]


# ------------------------------------------------------------------------------------------------ baselines
def past(*values: float, metric: str = "row_count", step: str = "q") -> baseline.History:
    runs = [baseline.PastRun(f"evidence/c/2026120{i}T000000Z-run{i}", f"run-{i}", None, {step: {metric: v}})
            for i, v in enumerate(values, 1)]
    return baseline.History(runs=runs)


def test_athena_row_count_and_column_sum_against_a_baseline_pass_warn_and_fail() -> None:
    columns = [Column("amount", "decimal(10,2)")]
    expect = AthenaExpect.model_validate({"row_count": {"within_pct_of_baseline": 20, "runs": 3},
                                          "column_sums": {"amount": {"within_pct_of_baseline": 10, "runs": 2}}})
    acc = CheckAccumulator(expect, columns)
    assert acc.needs_every_row  # the sums need every row's value
    for amount in ("10.50", "20.50", None):
        acc.feed({"amount": None if amount is None else Decimal(amount)})
    history = baseline.History(runs=[
        baseline.PastRun("p1", "run-1", None, {"q": {"row_count": 3, "column_sums.amount": 30}}),
        baseline.PastRun("p2", "run-2", None, {"q": {"row_count": 3.5, "column_sums.amount": 40}}),
        baseline.PastRun("p3", "run-3", None, {"q": {"row_count": 2.5}})])
    checks, record = baseline_checks(expect, acc, "q", history)
    by = {c.check: c for c in checks}
    assert by["row_count (baseline)"].passed  # 3 rows, within 20% of 3
    # 31 against the mean 35 of two runs, ±10%: 31.5 to 38.5
    assert not by["column_sums.amount (baseline)"].passed and by["column_sums.amount (baseline)"].severity == "error"
    assert "within 10% of 35 (mean of 2 runs): 31.5 to 38.5, got 31" in by["column_sums.amount (baseline)"].text()
    assert record["row_count"]["value"] == 3 and [r["flow_run_id"] for r in record["row_count"]["runs"]] == [
        "run-1", "run-2", "run-3"]
    # too few past runs: a warning that says so, never a failure
    few, _ = baseline_checks(expect, acc, "q", past(3))
    row = next(c for c in few if c.check == "row_count (baseline)")
    assert not row.passed and row.severity == "warn" and "only 1 found, no baseline yet" in row.text()


def test_history_reads_the_newest_passing_packs_only_bounded(tmp_path: Path) -> None:
    folder = tmp_path / "evidence" / "c"

    def pack(name: str, status: str, value: float, case: str = "C") -> None:
        (folder / name).mkdir(parents=True)
        report = {"status": status, "case": {"name": case}, "run": {"flow_run_id": name},
                  "steps": [{"label": "q", "details": {"baselines": {"row_count": {"value": value}}}}]}
        (folder / name / "report.json").write_text(json.dumps(report), encoding="utf-8")

    pack("20261201T000000Z-a", "passed", 1)
    pack("20261202T000000Z-b", "passed", 2)
    pack("20261203T000000Z-c", "failed", 99)
    pack("20261204T000000Z-d", "passed", 4, case="Another")
    pack("20261205T000000Z-e", "passed", 5)
    (folder / "20261206T000000Z-own").mkdir()
    history = baseline.read_history([folder], "C", runs=2, own=folder / "20261206T000000Z-own")
    assert [r.flow_run_id for r in history.runs] == ["20261205T000000Z-e", "20261202T000000Z-b"]
    assert history.read == 4  # the newest first, until 2 passing runs of this case: never the oldest
    assert history.values("q", "row_count", 2) == [(5.0, history.runs[0]), (2.0, history.runs[1])]
    capped = baseline.read_history([folder], "C", runs=1)
    assert capped.read == 1
    (folder / "20261207T000000Z-big").mkdir()
    (folder / "20261207T000000Z-big" / "report.json").write_bytes(b" " * (baseline.REPORT_MAX_BYTES + 1))
    big = baseline.read_history([folder], "C", runs=1)
    assert "larger than" in big.problems[0] and big.runs[0].flow_run_id == "20261205T000000Z-e"


@pytest.mark.usefixtures("prefect_harness")
def test_a_content_baseline_warns_then_passes_then_fails_from_the_case_packs(s3, tmp_path: Path) -> None:
    s3.create_bucket(Bucket=BUCKET)
    s3.put_object(Bucket=BUCKET, Key="out/orders.csv", Body=csv_rows(10))
    case = spec(content_step({"row_count": {"within_pct_of_baseline": 20, "runs": 2}}), name="Baseline case")

    def run() -> CaseResult:
        result = result_of(pipeline_test(spec=case, base_dir=str(tmp_path), return_state=True))
        assert isinstance(result, CaseResult)
        return result

    first = run()  # no past run: a warning that says so; the case passes and its pack records the value
    assert first.passed and first.steps[0].status == "warned" and first.warnings == 1
    assert "only 0 found, no baseline yet" in first.steps[0].warnings[0]
    second = run()
    assert second.passed and "only 1 found" in second.steps[0].warnings[0]
    third = run()  # two passing runs of 10 rows: 10 is within 20%
    assert third.passed and third.steps[0].status == "passed" and third.warnings == 0
    recorded = third.steps[0].details["baselines"]["row_count"]
    assert (recorded["value"], recorded["baseline"], recorded["runs_found"]) == (10, 10, 2)
    assert [r["flow_run_id"] for r in recorded["runs"]] == [second.flow_run_id, first.flow_run_id]
    assert {Path(r["pack"]).resolve() for r in recorded["runs"]} == {
        Path(second.evidence_dir or "").resolve(), Path(first.evidence_dir or "").resolve()}
    s3.put_object(Bucket=BUCKET, Key="out/orders.csv", Body=csv_rows(15))
    fourth = run()  # 15 rows against 10 ± 2: the step fails
    assert not fourth.passed and fourth.steps[0].status == "failed"
    assert "row_count (baseline): expected within 20% of 10 (mean of 2 runs): 8 to 12, got 15" in (
        fourth.steps[0].error or "")
    report = json.loads((Path(fourth.evidence_dir or "") / "report.json").read_text(encoding="utf-8"))
    assert report["steps"][0]["details"]["baselines"]["row_count"]["runs_found"] == 2


def test_a_baseline_model_is_bounded() -> None:
    from pydantic import ValidationError

    assert Baseline.model_validate({"within_pct_of_baseline": 20}).runs == 7
    for bad in ({"within_pct_of_baseline": 0}, {"within_pct_of_baseline": 20, "runs": 51}, {"runs": 3}):
        with pytest.raises(ValidationError):
            Baseline.model_validate(bad)


def test_a_suite_counts_warnings_and_a_case_with_warnings_passes() -> None:
    from datetime import datetime, timezone

    from flows.evidence.results import StepResult
    from flows.suite.cli import format_suite
    from flows.suite.flow import summary_rows
    from flows.suite.pack import SuiteCaseResult, SuiteResult, index_html, suite_report

    now = datetime(2026, 12, 8, tzinfo=timezone.utc)

    def case(name: str, *steps: StepResult) -> SuiteCaseResult:
        result = CaseResult(case=name, status="passed", started_at=now, ended_at=now, duration_s=0.0,
                            steps=list(steps))
        return SuiteCaseResult(case=name, path=f"{name}.yaml", status="passed", started_at=now, ended_at=now,
                               result=result)

    warned = StepResult(number="1", label="count", kind="athena_query", status="warned",
                        warnings=["row_count: expected 3, got 2", "first_row.n >: expected > 0, got 0"])
    clean = StepResult(number="1", label="count", kind="athena_query", status="passed")
    suite = SuiteResult(suite="Nightly", started_at=now, ended_at=now, cases=[case("a", warned), case("b", clean)])
    assert suite.passed and suite.warnings == 2
    assert suite.counts_text() == "2 passed, 0 failed, 0 not run (2 warnings in 1 case)"
    text = format_suite(suite)
    assert "2 passed, 0 failed, 0 not run (2 warnings in 1 case)" in text
    assert "  WARN    a" in text and "2 warnings: step 1 'count': row_count: expected 3, got 2" in text
    assert [row["verdict"] for row in summary_rows(suite)] == ["⚠️ passed, 2 warnings", "✅ passed"]
    assert "PASSED, 2 warnings" in index_html(suite)
    report = suite_report(suite)
    assert report.warnings == 2 and [c.warnings for c in report.cases] == [2, 0]


@pytest.mark.parametrize(("took", "status"), [(1.2, "passed"), (3.0, "failed")])
def test_a_step_duration_against_its_baseline(took: float, status: str) -> None:
    from flows.evidence.results import StepResult
    from flows.run.engine import _duration_against_baseline
    from flows.spec.model import PlacedStep
    from tasks.kit.step import StepContext
    from tasks.s3.steps import ExpectObjectsStep

    step = ExpectObjectsStep.model_validate({"kind": "expect_objects", "name": "q", "bucket": BUCKET, "keys": ["k"],
                                             "duration_baseline": {"within_pct_of_baseline": 50, "runs": 2}})
    ctx = StepContext(clients=None, case_name="c", run_id="r", label="q",  # type: ignore[arg-type]
                      history=past(1.0, 1.0, metric="duration_s"))
    result = StepResult(number="1", label="q", kind="expect_objects", status="passed", duration_s=took)
    _duration_against_baseline(PlacedStep("1", step), ctx, result)
    assert result.status == status and result.details["baselines"]["duration_s"]["baseline"] == 1.0
    assert [r["flow_run_id"] for r in result.details["baselines"]["duration_s"]["runs"]] == ["run-1", "run-2"]
    ctx.history = None  # no past run: a warning, never a failure
    first = StepResult(number="1", label="q", kind="expect_objects", status="passed", duration_s=took)
    _duration_against_baseline(PlacedStep("1", step), ctx, first)
    assert first.status == "warned" and "no baseline yet" in first.warnings[0]


def test_history_also_reads_the_packs_uploaded_to_s3(s3, tmp_path: Path) -> None:
    s3.create_bucket(Bucket=BUCKET)

    def report(value: float, status: str = "passed") -> bytes:
        return json.dumps({"status": status, "case": {"name": "C"}, "run": {"flow_run_id": f"run-{value:g}"},
                           "steps": [{"label": "q", "details": {"baselines": {"row_count": {"value": value}}}}]}
                          ).encode()

    prefix = "pipeline-test-evidence/c/"
    s3.put_object(Bucket=BUCKET, Key=prefix + "20261201T000000Z-a/report.json", Body=report(1))
    s3.put_object(Bucket=BUCKET, Key=prefix + "20261203T000000Z-c/report.json", Body=report(3, "failed"))
    s3.put_object(Bucket=BUCKET, Key=prefix + "20261204T000000Z-d/report.json", Body=report(40))
    local = tmp_path / "evidence" / "c" / "20261204T000000Z-d"  # the same pack, also kept locally: read from here
    local.mkdir(parents=True)
    (local / "report.json").write_bytes(report(4))
    history = baseline.read_history([local.parent], "C", runs=2, s3=baseline.S3Packs(s3, BUCKET, prefix))
    assert [r.values["q"]["row_count"] for r in history.runs] == [4.0, 1.0] and history.read == 3
    assert history.runs[1].pack == f"s3://{BUCKET}/{prefix}20261201T000000Z-a/"
    assert history.searched[-1] == f"s3://{BUCKET}/{prefix}"
    refused = baseline.read_history([], "C", runs=2, s3=baseline.S3Packs(s3, "no-such-bucket-here", prefix))
    assert refused.runs == [] and "NoSuchBucket" in refused.problems[0]


def test_the_plan_names_the_reads_of_earlier_packs_in_s3() -> None:
    from flows.plan.changes import run_footprint
    from flows.spec.model import CaseSpec
    from tasks.kit.iam import Arns

    case = CaseSpec.model_validate({**spec(content_step({"row_count": {"within_pct_of_baseline": 20}})),
                                    "evidence": {"bucket": BUCKET}})
    needs = {(n.resource, n.action) for n in run_footprint(case, Arns(), False).needs}
    assert (f"arn:aws:s3:::{BUCKET}", "s3:ListBucket") in needs
    assert (f"arn:aws:s3:::{BUCKET}/pipeline-test-evidence/*", "s3:GetObject") in needs


def test_a_notice_on_warnings_only_when_asked() -> None:
    from datetime import datetime, timezone

    from flows.evidence.notify import NotifySettings
    from flows.evidence.results import StepResult

    now = datetime(2026, 12, 8, tzinfo=timezone.utc)
    step = StepResult(number="1", label="q", kind="athena_query", status="warned", warnings=["row_count: low"])
    warned = CaseResult(case="C", status="passed", started_at=now, ended_at=now, duration_s=1, steps=[step])
    clean = warned.model_copy(update={"steps": [step.model_copy(update={"status": "passed", "warnings": []})]})
    on_warning = NotifySettings(slack_webhook_block="x", when=["failure", "warning"])
    assert on_warning.wants(warned) and not on_warning.wants(clean)
    assert not NotifySettings(slack_webhook_block="x").wants(warned)
