"""The evidence pack: complete for passing and failing runs, verifiable, valid JUnit, no secrets, readable in a
real browser. Results are built directly: no Prefect server and no AWS (moto only for the upload)."""

from __future__ import annotations

import errno
import html
import json
import logging
import os
import re
import shutil
import subprocess
import sys
from datetime import datetime, timedelta, timezone
from html.parser import HTMLParser
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import yaml

from flows.evidence import report as report_model
from flows.evidence.pack import files as pack_files
from flows.evidence.pack import folder as pack_folder
from flows.evidence.pack import verify as ep
from flows.evidence.pack import write as pack_write
from flows.evidence.pack.folder import PackFolderError
from flows.evidence.pack.write import redact_result
from flows.evidence.report import SUITE_SCHEMA_FILE, CaseReport, read_case_report, read_suite_report
from flows.evidence.results import CaseResult, StepResult
from flows.spec.load import parse_spec
from flows.spec.model import CaseSpec
from flows.suite.pack import SuiteCaseResult, SuiteResult, result_from_pack, write_suite_pack
from tasks.kit import markdown as md
from tasks.kit.files import HashedItem, StepFile
from tasks.kit.secrets import mask

T0 = datetime(2026, 3, 14, 9, 26, 53, tzinfo=timezone.utc)
RUN_ID = "0f5e2a9c-1b2d-4c3e-8f90-123456789abc"
CASE = "Orders ingestion"
SHA_ORDERS = "a" * 64
SHA_CUSTOMERS = "b" * 64
SPEC_YAML = """\
# the case under test
case: Orders ingestion
description: Orders land and the pipeline copies them to the curated zone.
variables:
  landing_bucket: demo-landing
steps:
  - kind: upload
    name: land-orders-file
    files: [data/orders.csv, data/customers.csv]
    bucket: "{{ landing_bucket }}"
    key_prefix: incoming/
  - kind: parallel
    name: outputs
    steps:
      - {kind: expect_objects, name: curated-file-written, bucket: demo-curated, prefix: curated/, count: 1}
      - {kind: expect_objects, name: rejects-empty, bucket: demo-curated, keys: [rejects/_EMPTY]}
  - kind: expect_objects
    name: archive-written
    bucket: demo-archive
    prefix: archive/
"""
FAILURE_MESSAGE = "expected exactly 1 object(s) matching '*' under s3://demo-curated/curated/, found 0"
ERROR_MESSAGE = "unexpected KeyError: 'Contents' <while listing & checking>"
ALL_FILES = ("report.json", "report.md", "report.html", "junit.xml", "spec.yaml", "manifest.json")


# ------------------------------------------------------------------------------------------------ fixtures
@pytest.fixture(autouse=True)
def _spec_files(data_dir: Path) -> None:
    """The files SPEC_YAML uploads exist in the working folder (validation checks local files)."""


def _case_spec() -> CaseSpec:
    return parse_spec(yaml.safe_load(SPEC_YAML), "<spec>", Path.cwd())


def _upload_step() -> StepResult:
    uploads = [
        {"local_path": "data/orders.csv", "bucket": "demo-landing", "key": "incoming/orders.csv", "size": 259,
         "sha256": SHA_ORDERS, "etag": '"e1"', "request_id": "REQ-UP-1"},
        {"local_path": "data/customers.csv", "bucket": "demo-landing", "key": "incoming/customers.csv",
         "size": 17, "sha256": SHA_CUSTOMERS, "etag": '"e2"', "request_id": "REQ-UP-2"},
    ]
    return StepResult(number="1", label="land-orders-file", kind="upload", status="passed", started_at=T0,
                      duration_s=0.21, summary="uploaded 2 file(s), 276 B, to s3://demo-landing/incoming/",
                      details={"bucket": "demo-landing", "uploads": uploads}, request_ids=["REQ-UP-1", "REQ-UP-2"],
                      items=[HashedItem.input(local_path=u["local_path"], bucket=u["bucket"], key=u["key"],
                                              size=u["size"], sha256=u["sha256"]) for u in uploads])


def _check(number: str, label: str, group: str | None = None, **kw: object) -> StepResult:
    base: dict[str, object] = dict(number=number, label=label, kind="expect_objects", group=group,
                                   status="passed", started_at=T0 + timedelta(seconds=1), duration_s=2.3,
                                   summary="found 1 object(s)", details={"found": ["curated/orders.csv"]},
                                   request_ids=[f"REQ-{number}"])
    base.update(kw)
    return StepResult(**base)  # type: ignore[arg-type]


def _cleanup() -> StepResult:
    return StepResult(number="end", label="cleanup", kind="cleanup", status="passed", started_at=T0,
                      duration_s=0.05, summary="1 of 1 clean-up action(s) done",
                      details={"actions": [{"what": "delete 2 uploaded object(s)", "step": "land-orders-file"}]})


def _result(steps: list[StepResult], status: str) -> CaseResult:
    return CaseResult(case=CASE, description="Orders land and the pipeline copies them to the curated zone.",
                      status=status, flow_run_id=RUN_ID,  # type: ignore[arg-type]
                      ui_url=f"http://127.0.0.1:4200/runs/flow-run/{RUN_ID}", started_at=T0,
                      ended_at=T0 + timedelta(seconds=3), duration_s=3.0,
                      variables={"run_date": "2026-03-14", "landing_bucket": "demo-landing"}, steps=steps)


def passing_result() -> CaseResult:
    steps = [_upload_step(), _check("2.1", "curated-file-written", "outputs"),
             _check("2.2", "rejects-empty", "outputs"), _check("3", "archive-written"), _cleanup()]
    return _result(steps, "passed")


def failing_result() -> CaseResult:
    steps = [
        _upload_step(),
        _check("2.1", "curated-file-written", "outputs", status="failed", error=FAILURE_MESSAGE,
               error_code="CountMismatch", summary="", details={"found": [], "waited_s": 60.0}),
        _check("2.2", "rejects-empty", "outputs", status="error", error=ERROR_MESSAGE, error_code="KeyError",
               summary="", details={}, request_ids=[]),
        StepResult(number="3", label="archive-written", kind="expect_objects", status="skipped",
                   summary="not run: an earlier step failed"),
        _cleanup(),
    ]
    return _result(steps, "failed")


def write(result: CaseResult, tmp_path: Path, **kw: object) -> Path:
    folder = pack_files.default_pack_dir(tmp_path / "evidence", result)
    return pack_write.write_pack(result, _case_spec(), folder, spec_text=SPEC_YAML, spec_path="cases/orders.yaml",
                         generated_at=T0 + timedelta(seconds=4), **kw)  # type: ignore[arg-type]


@pytest.fixture
def passing_pack(tmp_path: Path) -> Path:
    return write(passing_result(), tmp_path)


@pytest.fixture
def failing_pack(tmp_path: Path) -> Path:
    return write(failing_result(), tmp_path)


def _json(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


# --------------------------------------------------------------------------------------- a complete pack
def test_default_folder_and_prefix_name_the_case_time_and_run() -> None:
    result = passing_result()
    folder = pack_files.default_pack_dir(Path("evidence"), result)
    assert folder.as_posix() == "evidence/orders-ingestion/20260314T092653Z-0f5e2a9c"
    assert pack_files.pack_prefix("/audit/pipeline-test/", result) == \
        "audit/pipeline-test/orders-ingestion/20260314T092653Z-0f5e2a9c/"
    assert pack_files.pack_prefix("", result.model_copy(update={"flow_run_id": None})).endswith("-local/")


@pytest.mark.parametrize("make", [passing_result, failing_result], ids=["passed", "failed"])
def test_a_run_leaves_a_complete_intact_pack(make, tmp_path: Path) -> None:
    result = make()
    folder = write(result, tmp_path)
    assert sorted(p.name for p in folder.iterdir()) == sorted(ALL_FILES)
    assert ep.verify(folder) == []
    manifest = _json(folder / "manifest.json")
    assert {f["path"] for f in manifest["files"]} == set(ALL_FILES) - {"manifest.json"}
    for entry in manifest["files"]:
        assert entry["sha256"] == ep.sha256_file(folder / entry["path"])
        assert entry["size"] == (folder / entry["path"]).stat().st_size
    assert [(i["location"], i["sha256"]) for i in manifest["inputs"]] == [
        ("s3://demo-landing/incoming/orders.csv", SHA_ORDERS),
        ("s3://demo-landing/incoming/customers.csv", SHA_CUSTOMERS)]
    assert manifest["status"] == result.status and manifest["flow_run_id"] == RUN_ID
    assert (folder / "spec.yaml").read_text(encoding="utf-8") == SPEC_YAML


def test_report_json_follows_its_schema_and_says_what_the_issue_asks(failing_pack: Path) -> None:
    import jsonschema

    schema = json.loads(report_model.SCHEMA_FILE.read_text(encoding="utf-8"))
    report = _json(failing_pack / "report.json")
    jsonschema.Draft202012Validator(schema, format_checker=jsonschema.FormatChecker()).validate(report)
    assert (report["schema"], report["schema_version"]) == ("pipeline-test/evidence-report", 1)
    assert report["case"]["name"] == CASE and report["status"] == "failed"
    assert report["spec"]["sha256"] == pack_files.sha256_bytes(SPEC_YAML.encode("utf-8"))
    assert report["spec"]["case_sha256"] and report["spec"]["validated"]["case"] == CASE
    assert report["run"]["flow_run_id"] == RUN_ID and report["run"]["ui_url"].endswith(RUN_ID)
    assert report["run"]["started_at"] == "2026-03-14T09:26:53Z"
    assert report["variables"]["landing_bucket"] == "demo-landing"
    assert report["counts"] == {"total": 5, "passed": 2, "warned": 0, "failed": 1, "error": 1,
                                "skipped": 1}
    assert report["first_failure"]["label"] == "curated-file-written"
    step = report["steps"][0]
    assert (step["kind"], step["status"], step["duration_s"]) == ("upload", "passed", 0.21)
    assert step["request_ids"] == ["REQ-UP-1", "REQ-UP-2"] and step["details"]["uploads"][0]["sha256"] == SHA_ORDERS


def test_report_json_round_trips_through_the_models(failing_pack: Path) -> None:
    """report.json is a CaseReport: read back, dumped again, it is the same JSON; the suite's reading of it (a case
    a worker ran) gives the result back, all but what only the run knew (hashed items, files, where its pack is)."""
    text = (failing_pack / "report.json").read_text(encoding="utf-8")
    report = read_case_report(failing_pack)
    assert report.to_json() == json.loads(text)
    assert CaseReport.model_validate_json(json.dumps(report.to_json())) == report
    assert report.schema_ == "pipeline-test/evidence-report" and report.counts.failed == 1
    back = CaseResult.from_report(report)
    original = redact_result(failing_result(), [])
    assert back.model_dump(exclude={"steps"}) == original.model_dump(exclude={"steps"})
    assert [s.model_dump(exclude={"items", "files"}) for s in back.steps] == \
        [s.model_dump(exclude={"items", "files"}) for s in original.steps]
    assert result_from_pack(failing_pack) == back and result_from_pack(failing_pack.parent / "none") is None


def test_a_report_json_of_an_older_pack_still_reads(failing_pack: Path) -> None:
    """Fields added within version 1 (audit, notice, a step's evidence, links and checks) may be absent."""
    data = _json(failing_pack / "report.json")
    for name in ("audit", "notice"):
        data.pop(name)
    for step in data["steps"]:
        for name in ("evidence", "links", "checks"):
            step.pop(name)
    old = CaseReport.model_validate(data)
    assert old.audit is None and old.steps[0].links == [] and old.steps[0].evidence == ""
    with pytest.raises(ValueError, match="schema_version"):
        CaseReport.model_validate({**data, "schema_version": 2})


def test_a_suite_report_json_round_trips_through_the_models(tmp_path: Path) -> None:
    import jsonschema

    suite = tmp_path / "suite"
    pack_write.write_pack(failing_result(), _case_spec(), suite / "cases" / "orders-ingestion")
    case = SuiteCaseResult(case=CASE, path="cases/orders.yaml", status="failed", started_at=T0, ended_at=T0,
                           result=failing_result(), pack="cases/orders-ingestion")
    gone = SuiteCaseResult(case="Other", path="cases/other.yaml", status="not run", started_at=T0, ended_at=T0,
                           reason="its locks could not be had")
    write_suite_pack(SuiteResult(suite="nightly", started_at=T0, ended_at=T0, cases=[case, gone]), suite)
    data = _json(suite / "report.json")
    jsonschema.Draft202012Validator(json.loads(SUITE_SCHEMA_FILE.read_text(encoding="utf-8"))).validate(data)
    report = read_suite_report(suite)
    assert report.to_json() == data and data["counts"] == {"passed": 0, "failed": 1, "not run": 1}
    assert [(c.case, c.status, c.failed_step) for c in report.cases] == [(CASE, "failed", "2.1"),
                                                                         ("Other", "not run", None)]


def test_report_markdown_has_the_case_report_and_every_step(failing_pack: Path) -> None:
    text = (failing_pack / "report.md").read_text(encoding="utf-8")
    assert text.startswith(f"# {CASE}: ")
    assert md.message(FAILURE_MESSAGE) in text and md.message(ERROR_MESSAGE) in text  # as wrapped, escaped text
    for label in ("land-orders-file", "curated-file-written", "rejects-empty", "archive-written", "cleanup"):
        assert f"· {label} ·" in text
    assert SHA_ORDERS in text and "python -m flows.pipeline_test verify" in text


def test_query_results_with_a_recorded_hash_are_in_the_manifest(tmp_path: Path) -> None:
    result = passing_result()
    query = StepResult(number="4", label="orders-table", kind="athena_query", status="passed",
                       details={"query_id": "q-123", "output_location": "s3://results/q-123.csv", "row_count": 2,
                                "result_sha256": "C" * 64},
                       items=[HashedItem.query_result(query_id="q-123", location="s3://results/q-123.csv", rows=2,
                                                      sha256="C" * 64)])
    result = result.model_copy(update={"steps": [*result.steps[:-1], query, result.steps[-1]]})
    folder = write(result, tmp_path)
    manifest = _json(folder / "manifest.json")
    assert manifest["query_results"] == [{"kind": "query_result", "step": "4", "label": "orders-table",
                                          "location": "s3://results/q-123.csv", "sha256": "c" * 64, "size": None,
                                          "local_path": None, "query_id": "q-123", "rows": 2}]
    assert ep.verify(folder) == []


def test_a_pack_goes_only_into_a_new_or_empty_folder(tmp_path: Path) -> None:
    folder = tmp_path / "pack"
    folder.mkdir()
    (folder / "notes.txt").write_text("mine", encoding="utf-8")
    with pytest.raises(PackFolderError, match="not empty"):
        pack_write.write_pack(passing_result(), None, folder)
    assert not list(tmp_path.glob(".*"))  # no temporary folder left
    bare = pack_write.write_pack(passing_result(), None, tmp_path / "bare")  # no spec: no copy, still intact
    assert sorted(p.name for p in bare.iterdir()) == sorted(set(ALL_FILES) - {"spec.yaml"})
    assert ep.verify(bare) == []


# ------------------------------------------------------------------------------------------------ verify
@pytest.mark.parametrize("name", [n for n in ALL_FILES if n != "manifest.json"])
def test_verify_names_a_file_with_one_byte_changed(failing_pack: Path, name: str,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    assert ep.main(["verify", str(failing_pack)]) == 0
    assert "is intact" in capsys.readouterr().out
    path = failing_pack / name
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    problems = ep.verify(failing_pack)
    assert len(problems) == 1 and problems[0].startswith(f"{name}: changed")
    assert ep.main(["verify", str(failing_pack)]) == 1
    out = capsys.readouterr().out
    assert "NOT intact" in out and f"{name}: changed" in out


@pytest.mark.e2e  # starts a process (tests/fixtures/tiers.py)
def test_verify_from_the_command_line(passing_pack: Path) -> None:
    cmd = [sys.executable, "-m", "flows.evidence.pack.verify", "verify", str(passing_pack)]
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=Path(__file__).parents[1], timeout=60)
    assert done.returncode == 0 and "is intact" in done.stdout, done.stderr
    (passing_pack / "junit.xml").write_text("<testsuites/>", encoding="utf-8")
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=Path(__file__).parents[1], timeout=60)
    assert done.returncode == 1 and "junit.xml: changed" in done.stdout


def test_verify_names_a_deleted_and_an_added_file(passing_pack: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (passing_pack / "report.html").unlink()
    (passing_pack / "extra.txt").write_text("slipped in\n", encoding="utf-8")
    (passing_pack / "sub").mkdir()
    (passing_pack / "sub" / "more.json").write_text("{}", encoding="utf-8")
    assert ep.verify(passing_pack) == ["report.html: missing", "extra.txt: extra (not in manifest.json)",
                                       "sub/more.json: extra (not in manifest.json)"]
    assert ep.main(["verify", str(passing_pack)]) == 1
    out = capsys.readouterr().out
    assert "report.html: missing" in out and "extra.txt: extra" in out


def test_verify_without_or_with_a_tampered_manifest(passing_pack: Path) -> None:
    anchor = ep.manifest_sha256(passing_pack)
    assert ep.verify(passing_pack, anchor) == []
    manifest = _json(passing_pack / "manifest.json")
    manifest["files"] = [f for f in manifest["files"] if f["path"] != "report.md"]  # hide a file from the check
    (passing_pack / "manifest.json").write_text(json.dumps(manifest), encoding="utf-8")
    problems = ep.verify(passing_pack, anchor)
    assert problems[0].startswith("manifest.json: changed")
    assert "report.md: not listed in manifest.json (every pack has it)" in problems
    (passing_pack / "manifest.json").unlink()
    assert ep.verify(passing_pack)[0].startswith("manifest.json: missing")
    assert ep.verify(passing_pack / "nope") == [f"{passing_pack / 'nope'}: not a folder"]


def test_verify_refuses_manifest_paths_outside_the_pack(passing_pack: Path) -> None:
    manifest = _json(passing_pack / "manifest.json")
    manifest["files"].append({"path": "../outside.txt", "size": 1, "sha256": "0" * 64})
    (passing_pack / "manifest.json").write_text(json.dumps(manifest), encoding="utf-8")
    assert any("bad file entry" in p for p in ep.verify(passing_pack))


@pytest.mark.parametrize("make, names", [
    (lambda pack: (pack / "root").symlink_to("/"), ["root: extra (a link, which a pack never holds)"]),
    (lambda pack: (pack / "loop").symlink_to("."), ["loop: extra (a link, which a pack never holds)"]),
    (lambda pack: (pack / "gone").symlink_to("nowhere"), ["gone: extra (a link, which a pack never holds)"]),
    (lambda pack: (pack / "copy.md").symlink_to(pack / "report.md"), ["copy.md: extra (a link"]),
    (lambda pack: (pack / "empty").mkdir(), ["empty/: extra (an empty folder, not in manifest.json)"]),
    (lambda pack: os.mkfifo(pack / "pipe"), ["pipe: extra (not a regular file)"]),
], ids=["link-to-root", "link-to-itself", "dangling-link", "link-to-a-file", "empty-folder", "fifo"])
def test_verify_counts_links_and_unlisted_folders_as_extras(passing_pack: Path, make, names: list[str]) -> None:
    """``ln -s / root`` or ``ln -s . loop`` inside a pack used to leave it "intact": links are never followed."""
    assert ep.verify(passing_pack) == []
    make(passing_pack)
    problems = ep.verify(passing_pack)
    assert len(problems) == 1 and problems[0].startswith(names[0]), problems
    assert ep.main(["verify", str(passing_pack)]) == 1


def test_verify_refuses_a_listed_file_replaced_by_a_link(passing_pack: Path, tmp_path: Path) -> None:
    outside = tmp_path / "report.md"
    outside.write_bytes((passing_pack / "report.md").read_bytes())  # the same bytes, elsewhere
    (passing_pack / "report.md").unlink()
    (passing_pack / "report.md").symlink_to(outside)
    assert ep.verify(passing_pack) == ["report.md: not a regular file of the pack (a link, a folder, or under a link)",
                                       "report.md: extra (a link, which a pack never holds)"]


def test_verify_of_a_deeply_nested_manifest_is_a_problem_not_a_traceback(passing_pack: Path,
                                                                         capsys: pytest.CaptureFixture[str]) -> None:
    (passing_pack / "manifest.json").write_text("[" * 100_000 + "]" * 100_000, encoding="utf-8")
    assert ep.verify(passing_pack) == ["manifest.json: unreadable (the manifest nests deeper than 64 levels)"]
    assert ep.main(["verify", str(passing_pack)]) == 1
    assert "Traceback" not in capsys.readouterr().err


# ------------------------------------------------------------------------------------------------- junit
def test_report_html_is_self_contained(failing_pack: Path) -> None:
    page = (failing_pack / "report.html").read_text(encoding="utf-8")
    assert "Content-Security-Policy" in page and "default-src 'none'" in page  # the browser fetches nothing
    for needle in ("<script", "<link", "<img", "<iframe", " src=", "@import", "url("):
        assert needle not in page.lower()
    assert "&lt;while listing &amp; checking&gt;" in page  # every text is escaped
    hrefs = re.findall(r'href="([^"]*)"', page)
    assert all(h.startswith("#") or h.startswith("http://127.0.0.1:4200/") for h in hrefs)


def test_report_html_links_only_http_urls(tmp_path: Path) -> None:
    result = failing_result().model_copy(update={"ui_url": "javascript:alert(1)"})
    page = (write(result, tmp_path) / "report.html").read_text(encoding="utf-8")
    assert "javascript:" not in page and f"<code>{RUN_ID}</code>" in page


def test_junit_is_valid_with_one_testcase_per_step(failing_pack: Path) -> None:
    from junitparser import Error, Failure, JUnitXml, Skipped

    xml = JUnitXml.fromfile(str(failing_pack / "junit.xml"))
    suites = list(xml)
    assert len(suites) == 1
    suite = suites[0]
    assert (suite.name, suite.tests, suite.failures, suite.errors, suite.skipped) == (CASE, 5, 1, 1, 1)
    cases = list(suite)
    assert [c.name for c in cases] == ["1 land-orders-file", "2.1 curated-file-written", "2.2 rejects-empty",
                                       "3 archive-written", "end cleanup"]
    assert {c.classname for c in cases} == {CASE}
    by_name = {c.name: c for c in cases}
    assert by_name["1 land-orders-file"].is_passed and by_name["end cleanup"].is_passed
    (failure,) = by_name["2.1 curated-file-written"].result
    assert isinstance(failure, Failure) and failure.message == FAILURE_MESSAGE and failure.type == "CountMismatch"
    (error,) = by_name["2.2 rejects-empty"].result
    assert isinstance(error, Error) and error.message == ERROR_MESSAGE
    (skipped,) = by_name["3 archive-written"].result
    assert isinstance(skipped, Skipped)
    assert abs(by_name["1 land-orders-file"].time - 0.21) < 1e-9


def test_junit_of_a_passing_run_has_no_failures(passing_pack: Path) -> None:
    from junitparser import JUnitXml

    (suite,) = list(JUnitXml.fromfile(str(passing_pack / "junit.xml")))
    assert (suite.tests, suite.failures, suite.errors, suite.skipped) == (5, 0, 0, 0)
    assert all(c.is_passed for c in suite)


JUNIT_XSD = Path(__file__).with_name("junit-10.xsd")


@pytest.mark.parametrize("pack", ["failing_pack", "passing_pack"])
def test_junit_is_valid_against_the_jenkins_xunit_schema(pack: str, request: pytest.FixtureRequest) -> None:
    """junit-10.xsd of Jenkins' xUnit plugin (e.g. no ``skipped`` attribute on <testsuites>); the failing run
    has a passed, a failed, an error and a skipped step, each with its own element."""
    from xml.etree import ElementTree as ET

    import xmlschema

    junit = request.getfixturevalue(pack) / "junit.xml"
    errors = [str(e.reason) for e in xmlschema.XMLSchema(str(JUNIT_XSD)).iter_errors(str(junit))]
    assert errors == []
    outcome = {c.get("name"): [e.tag for e in c if e.tag != "system-out"] for c in ET.parse(junit).iter("testcase")}
    if pack == "failing_pack":
        assert outcome == {"1 land-orders-file": [], "2.1 curated-file-written": ["failure"],
                           "2.2 rejects-empty": ["error"], "3 archive-written": ["skipped"], "end cleanup": []}
    else:
        assert all(tags == [] for tags in outcome.values())


def test_junit_drops_characters_xml_cannot_carry(tmp_path: Path) -> None:
    from junitparser import JUnitXml

    result = failing_result()
    steps = list(result.steps)
    steps[1] = steps[1].model_copy(update={"error": "bad \x1b[31mcolour\x1b[0m and \x00 nul"})
    folder = write(result.model_copy(update={"steps": steps}), tmp_path)
    (suite,) = list(JUnitXml.fromfile(str(folder / "junit.xml")))
    assert list(suite)[1].result[0].message == "bad [31mcolour[0m and  nul"


# ------------------------------------------------------------------------------------------------ secrets
CANARIES = ("CANARY-7f3a9c1e-do-not-leak", 'C4N4RY<&>"\'\\-x9')


def _forms(secret: str) -> list[str]:
    """How a secret could appear in a file: as is, HTML/XML-escaped, JSON-escaped."""
    return sorted({secret, html.escape(secret, quote=True), html.escape(secret, quote=False),
                   json.dumps(secret)[1:-1], json.dumps(secret, ensure_ascii=False)[1:-1],
                   secret.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace('"', "&quot;")})


def test_no_secret_reaches_any_file_of_the_pack(tmp_path: Path) -> None:
    plain, tricky = CANARIES
    result = failing_result()
    steps = list(result.steps)
    steps[0] = steps[0].model_copy(update={"summary": f"uploaded with token {plain}",
                                           "details": {**steps[0].details, "password": tricky, "note": [f"in a list {plain}"]}})
    steps[1] = steps[1].model_copy(update={"error": f"{FAILURE_MESSAGE} (auth {tricky})",
                                           "description": f"uses {plain}", "request_ids": [f"id-{plain}"]})
    result = result.model_copy(update={"steps": steps, "variables": {**result.variables, "api_key": tricky},
                                       "description": f"desc {plain}"})
    spec_text = SPEC_YAML + f"# leaked in a comment: {plain} {tricky}\n"
    case = parse_spec({**yaml.safe_load(SPEC_YAML), "description": f"case {plain}"}, "<spec>", Path.cwd())
    # keys and names (a spec's path, a step's label) are never masked, by design: values are
    folder = pack_write.write_pack(result, case, tmp_path / "pack", spec_text=spec_text, spec_path="cases/orders.yaml",
                           secrets=list(CANARIES))
    files = ep.pack_files(folder)
    assert set(files) == set(ALL_FILES)
    for name in files:
        text = (folder / name).read_text(encoding="utf-8")
        for secret in CANARIES:
            for form in _forms(secret):
                assert form not in text, f"{name} holds the secret as {form!r}"
    report = (folder / "report.json").read_text(encoding="utf-8")
    assert mask(plain) in report and mask(tricky) in report  # masked, visibly, not dropped
    spec = _json(folder / "report.json")["spec"]
    assert spec["redacted"] is True  # and its hashes are of what the pack shows, so no guess can be confirmed
    assert spec["sha256"] == ep.sha256_file(folder / "spec.yaml")
    assert spec["case_sha256"] == pack_files.sha256_bytes(
        json.dumps(spec["validated"], sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8"))
    assert ep.verify(folder) == []


def test_the_spec_copy_and_its_hash_match_the_file_byte_for_byte(tmp_path: Path) -> None:
    spec_file = tmp_path / "orders.yaml"
    spec_file.write_bytes(SPEC_YAML.replace("\n", "\r\n").encode("utf-8"))  # a Windows checkout
    folder = pack_write.write_pack(passing_result(), _case_spec(), tmp_path / "pack", spec_path=spec_file)
    assert (folder / "spec.yaml").read_bytes() == spec_file.read_bytes()
    report = _json(folder / "report.json")
    assert report["spec"]["sha256"] == ep.sha256_file(spec_file) and report["spec"]["source"] == str(spec_file)
    assert ep.verify(folder) == []


# ------------------------------------------------------------------------ whole or nothing, the same bytes on every OS
class _TextMode:
    """A file written through the C runtime's text mode, as Windows does for a file opened without O_BINARY: every
    LF written becomes CRLF."""

    def __init__(self, handle: Any) -> None:
        self.handle = handle

    def write(self, data: bytes) -> int:
        return self.handle.write(bytes(data).replace(b"\n", b"\r\n"))

    def __enter__(self) -> _TextMode:
        return self

    def __exit__(self, *exc: object) -> None:
        self.handle.close()


class _FakeOs:
    """``flows.evidence.pack.folder``'s view of Windows, on Linux: ``O_BINARY`` exists, a file opened without it is in text
    mode; ``name`` is "nt" only when asked; ``fail`` makes opening a file of that name fail with that errno."""

    O_BINARY = 1 << 29  # a bit Linux's open() never sees: it is taken off before the real call

    def __init__(self, name: str = "posix", fail: tuple[str, int] | None = None) -> None:
        self.name = name
        self.fail = fail
        self.text_fds: set[int] = set()
        self.opened: list[tuple[str, bool]] = []

    def __getattr__(self, attr: str) -> Any:
        return getattr(os, attr)

    def open(self, path: Any, flags: int, mode: int = 0o777) -> int:
        if self.fail and Path(path).name.startswith(self.fail[0]):
            raise OSError(self.fail[1], os.strerror(self.fail[1]), str(path))
        fd = os.open(path, flags & ~self.O_BINARY, mode)
        self.opened.append((Path(path).name, bool(flags & self.O_BINARY)))
        if not flags & self.O_BINARY:
            self.text_fds.add(fd)
        return fd

    def rename(self, src: Any, dst: Any) -> None:
        if self.name == "nt" and os.path.exists(dst):  # Windows renames onto nothing, not even an empty folder
            raise FileExistsError(183, "Cannot create a file when that file already exists", str(dst))
        os.rename(src, dst)

    def fdopen(self, fd: int, mode: str = "r") -> Any:
        handle = os.fdopen(fd, mode)
        return _TextMode(handle) if fd in self.text_fds else handle


def _with_step_file(tmp_path: Path) -> CaseResult:
    """The passing result, its check 3 having written a CSV for the pack (copied under steps/3/)."""
    scratch = tmp_path / "scratch" / "missing.csv"
    scratch.parent.mkdir()
    scratch.write_bytes(b"id,amount\n7,10\n")
    result = passing_result()
    result.steps[3].files = [StepFile.of(scratch, "reconcile/missing.csv")]
    return result


def _pack_bytes(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def test_every_pack_file_is_written_in_binary_mode_so_windows_writes_the_same_bytes(tmp_path: Path,
                                                                                    monkeypatch) -> None:
    """On Windows a file opened without O_BINARY is text mode (LF written as CRLF): simulated, no pack file may hold
    a CR, report.json's spec.sha256 is the spec copy's, and a CRLF spec stays byte for byte (not CR CR LF)."""
    windows = _FakeOs()
    monkeypatch.setattr(pack_folder, "os", windows)
    spec_lf = tmp_path / "orders.yaml"
    spec_lf.write_bytes(SPEC_YAML.encode("utf-8"))
    folder = pack_write.write_pack(_with_step_file(tmp_path), _case_spec(), tmp_path / "lf", spec_path=spec_lf)
    files = _pack_bytes(folder)
    assert set(files) == {*ALL_FILES, "steps/3/reconcile/missing.csv"}
    assert [name for name, data in files.items() if b"\r" in data] == []
    report = _json(folder / "report.json")
    assert report["spec"]["sha256"] == ep.sha256_file(folder / "spec.yaml") == ep.sha256_file(spec_lf)
    assert windows.opened and all(binary for _, binary in windows.opened), windows.opened
    assert files["steps/3/reconcile/missing.csv"] == b"id,amount\n7,10\n"
    assert ep.verify(folder) == []

    spec_crlf = tmp_path / "windows.yaml"
    spec_crlf.write_bytes(SPEC_YAML.replace("\n", "\r\n").encode("utf-8"))
    folder = pack_write.write_pack(passing_result(), _case_spec(), tmp_path / "crlf", spec_path=spec_crlf)
    assert (folder / "spec.yaml").read_bytes() == spec_crlf.read_bytes()
    assert _json(folder / "report.json")["spec"]["sha256"] == ep.sha256_file(spec_crlf)
    assert [n for n, data in _pack_bytes(folder).items() if b"\r" in data] == ["spec.yaml"]

    # a suite's pack over it: its own files too
    suite = tmp_path / "suite"
    pack_write.write_pack(passing_result(), _case_spec(), suite / "cases" / "orders-ingestion", spec_path=spec_lf)
    case = SuiteCaseResult(case=CASE, path=str(spec_lf), status="passed", started_at=T0, ended_at=T0,
                           result=passing_result(), pack="cases/orders-ingestion")
    write_suite_pack(SuiteResult(suite="nightly", started_at=T0, ended_at=T0, cases=[case]), suite)
    assert [n for n, data in _pack_bytes(suite).items() if b"\r" in data] == []
    assert ep.verify(suite) == [] and not list(tmp_path.glob(".*"))


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EROFS])
@pytest.mark.parametrize("failing", ["report.html", "manifest.json", "missing.csv"])
def test_a_pack_that_cannot_be_written_leaves_nothing_behind(tmp_path: Path, monkeypatch, code: int,
                                                             failing: str) -> None:
    monkeypatch.setattr(pack_folder, "os", _FakeOs(fail=(failing, code)))
    before = sorted(tmp_path.iterdir())
    with pytest.raises(OSError, match=os.strerror(code)):
        pack_write.write_pack(_with_step_file(tmp_path), _case_spec(), tmp_path / "pack", spec_text=SPEC_YAML)
    assert sorted(p for p in tmp_path.iterdir() if p.name != "scratch") == before  # no pack, no temporary folder


def test_a_suite_pack_that_cannot_be_written_leaves_only_its_cases_packs(tmp_path: Path, monkeypatch) -> None:
    from flows.suite.cli import exit_code

    suite = tmp_path / "suite"
    pack_write.write_pack(passing_result(), None, suite / "cases" / "orders-ingestion")
    case = SuiteCaseResult(case=CASE, path="orders.yaml", status="passed", started_at=T0, ended_at=T0,
                           result=passing_result(), pack="cases/orders-ingestion")
    result = SuiteResult(suite="nightly", started_at=T0, ended_at=T0, cases=[case])
    monkeypatch.setattr(pack_folder, "os", _FakeOs(fail=("manifest.json", errno.ENOSPC)))
    with pytest.raises(OSError, match="No space left"):
        write_suite_pack(result, suite)
    assert sorted(p.name for p in suite.iterdir()) == ["cases"] and not list(tmp_path.glob(".*"))
    assert ep.verify(suite / "cases" / "orders-ingestion") == []  # the case's own pack is whole
    assert exit_code(result) == 0
    result.evidence_error = "the suite's evidence pack could not be written"
    assert exit_code(result) == 4


def test_a_full_or_read_only_folder_is_refused_when_claimed(tmp_path: Path, monkeypatch) -> None:
    """The claim (before the run) writes a probe: ENOSPC or EROFS there refuse the folder, and leave nothing."""
    from flows.run.command import check_evidence_dir
    from flows.run.recover import CouldNotRun

    for code in (errno.ENOSPC, errno.EROFS):
        monkeypatch.setattr(pack_folder, "os", _FakeOs(fail=(".", code)))  # the probe's name starts with "."
        with pytest.raises(PackFolderError, match=re.escape(f"cannot be written ({os.strerror(code)})")):
            pack_folder.claim(tmp_path / "pack", True)
        with pytest.raises(CouldNotRun, match=re.escape(os.strerror(code))):
            check_evidence_dir(tmp_path / "pack", "case.yaml")
        with pytest.raises(CouldNotRun, match=re.escape(os.strerror(code))):
            check_evidence_dir(None, "case.yaml", tmp_path / "evidence" / "orders")
        assert not (tmp_path / "pack").exists() and not list(tmp_path.glob(".*"))


def test_two_runs_given_one_folder_one_is_refused_and_nothing_mixes(tmp_path: Path) -> None:
    folder = tmp_path / "pack"
    first = pack_folder.claim(folder, True)  # the first run, before its first change
    with pytest.raises(PackFolderError, match="another run is writing an evidence pack to"):
        pack_folder.claim(folder, True)
    with pytest.raises(PackFolderError, match="another run is writing"):
        pack_write.write_pack(failing_result(), None, folder)
    folder.mkdir()  # an empty folder in its place meanwhile is fine: the pack replaces it
    assert pack_write.write_pack(passing_result(), None, folder, claim=first) == folder
    assert ep.verify(folder) == [] and _json(folder / "report.json")["status"] == "passed"
    with pytest.raises(PackFolderError, match="is not empty"):
        pack_folder.claim(folder, True)
    assert not list(tmp_path.glob(".*"))

    other = tmp_path / "other"
    late = pack_folder.claim(other, True)
    other.mkdir()
    (other / "notes.txt").write_text("someone else's", encoding="utf-8")
    with pytest.raises(PackFolderError, match="was filled by something else"):
        pack_write.write_pack(passing_result(), None, other, claim=late)
    assert sorted(p.name for p in other.iterdir()) == ["notes.txt"] and not list(tmp_path.glob(".*"))


def _fake_windows(monkeypatch, icacls: subprocess.CompletedProcess | None = None,
                  whoami: str | None = '"host\\ana","S-1-5-21-1-2-3-1001"\r\n') -> list[list[str]]:
    calls: list[list[str]] = []

    def run(command: list[str], **kw: Any) -> subprocess.CompletedProcess:
        calls.append(command)
        assert kw.get("timeout") and not kw.get("shell")
        if command[0] == "whoami":
            if whoami is None:
                raise FileNotFoundError(2, "No such file or directory", "whoami")
            return subprocess.CompletedProcess(command, 0, whoami, "")
        return icacls or subprocess.CompletedProcess(command, 0, "", "")

    monkeypatch.setattr(pack_folder, "os", _FakeOs(name="nt"))
    monkeypatch.setattr(pack_folder, "subprocess", SimpleNamespace(run=run, SubprocessError=subprocess.SubprocessError))
    return calls


def test_a_private_pack_on_windows_gets_an_owner_only_access_list(tmp_path: Path, monkeypatch, caplog) -> None:
    calls = _fake_windows(monkeypatch)
    (tmp_path / "pack").mkdir()  # an empty folder given with --evidence-dir: Windows renames onto nothing
    folder = pack_write.write_pack(passing_result(), None, tmp_path / "pack", private=True)
    staging = str(pack_folder.staging_dir(tmp_path / "pack"))  # set before the first file, renamed with the pack
    assert calls == [["whoami", "/user", "/fo", "csv", "/nh"],
                     ["icacls", staging, "/inheritance:r", "/grant:r", "*S-1-5-21-1-2-3-1001:(OI)(CI)F", "/q"]]
    assert ep.verify(folder) == [] and "could not be made private" not in caplog.text

    monkeypatch.setenv("USERNAME", "ana")  # whoami missing: the user's name
    calls = _fake_windows(monkeypatch, whoami=None)
    pack_write.write_pack(passing_result(), None, tmp_path / "named", private=True)
    assert calls[-1][-2] == "ana:(OI)(CI)F"

    calls = _fake_windows(monkeypatch)  # not private: no access list
    pack_write.write_pack(passing_result(), None, tmp_path / "open", private=False)
    assert calls == []


def test_a_pack_that_cannot_be_made_private_on_windows_says_so(tmp_path: Path, monkeypatch, caplog) -> None:
    denied = subprocess.CompletedProcess(["icacls"], 5, "", "Access is denied.\r\n")
    _fake_windows(monkeypatch, icacls=denied)
    with caplog.at_level(logging.WARNING, logger="flows.evidence.pack.folder"):
        folder = pack_write.write_pack(passing_result(), None, tmp_path / "pack", private=True)
    assert ep.verify(folder) == []  # the pack is still written, and the warning names its folder
    assert (f"The evidence pack {tmp_path / 'pack'} could not be made private (icacls: Access is denied.)"
            in caplog.text)


# ---------------------------------------------------------------------------------------------- S3 upload
def test_upload_pack_puts_every_file_encrypted_manifest_last(failing_pack: Path, s3, bucket: str) -> None:
    prefix = pack_files.pack_prefix("evidence/", failing_result())
    keys = ep.upload_pack(s3, failing_pack, bucket, prefix)
    assert keys[-1] == prefix + "manifest.json"
    assert sorted(keys) == sorted(prefix + n for n in ALL_FILES)
    for key in keys:
        head = s3.head_object(Bucket=bucket, Key=key)
        assert head["ServerSideEncryption"] == "AES256"
        body = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
        assert body == (failing_pack / key.removeprefix(prefix)).read_bytes()
    assert s3.head_object(Bucket=bucket, Key=prefix + "report.html")["ContentType"].startswith("text/html")
    from tasks.kit.errors import AwsCallError

    with pytest.raises(AwsCallError, match="PreconditionFailed"):  # evidence is never replaced
        ep.upload_pack(s3, failing_pack, bucket, prefix)


def test_upload_pack_with_kms_and_refusals(passing_pack: Path, clients, s3, bucket: str) -> None:
    key_id = clients.client("kms").create_key()["KeyMetadata"]["KeyId"]
    keys = ep.upload_pack(s3, passing_pack, bucket, "kms/", sse="aws:kms", kms_key_id=key_id)
    head = s3.head_object(Bucket=bucket, Key=keys[0])
    assert head["ServerSideEncryption"] == "aws:kms" and key_id in head["SSEKMSKeyId"]
    with pytest.raises(ValueError, match="kms_key_id goes with"):
        ep.upload_pack(s3, passing_pack, bucket, "x/", kms_key_id=key_id)
    with pytest.raises(ValueError, match="sse must be"):
        ep.upload_pack(s3, passing_pack, bucket, "x/", sse="aes")
    (passing_pack / "report.md").write_text("edited", encoding="utf-8")
    with pytest.raises(ValueError, match="report.md: changed"):
        ep.upload_pack(s3, passing_pack, bucket, "x/")
    assert "Contents" not in s3.list_objects_v2(Bucket=bucket, Prefix="x/")


# -------------------------------------------------------------------------------------------- the browser
class _VisibleText(HTMLParser):
    """The text a reader sees: everything in <body> except <style>, <script> and <template>."""

    def __init__(self) -> None:
        super().__init__()
        self.parts: list[str] = []
        self._hidden = 0
        self._in_body = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "body":
            self._in_body = True
        if tag in ("style", "script", "template", "head"):
            self._hidden += 1

    def handle_endtag(self, tag: str) -> None:
        if tag in ("style", "script", "template", "head"):
            self._hidden = max(0, self._hidden - 1)

    def handle_data(self, data: str) -> None:
        if self._in_body and not self._hidden:
            self.parts.append(data)

    @property
    def text(self) -> str:
        return " ".join(" ".join(self.parts).split())


def _rendered_dom(binary: str, page: Path, tmp_path: Path) -> str:
    cmd = [binary, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           f"--user-data-dir={tmp_path / 'chromium-profile'}", "--dump-dom", page.resolve().as_uri()]
    done = subprocess.run(cmd, capture_output=True, text=True, encoding="utf-8", timeout=90)
    assert done.returncode == 0 and "<body" in done.stdout, f"chromium failed: {done.stderr[-2000:]}"
    return done.stdout


@pytest.mark.e2e  # starts a process (tests/fixtures/tiers.py)
def test_report_html_reads_right_in_a_real_browser(failing_pack: Path, tmp_path: Path, chromium: str) -> None:
    binary = chromium
    dom = _rendered_dom(binary, failing_pack / "report.html", tmp_path)
    parser = _VisibleText()
    parser.feed(dom)
    text = parser.text
    assert f"{CASE} FAILED" in text  # the heading: case and verdict
    assert "2 of 5 passed, 1 failed, 1 error, 1 skipped" in text
    for label in ("land-orders-file", "curated-file-written", "rejects-empty", "archive-written", "cleanup"):
        assert label in text
    assert FAILURE_MESSAGE in text and ERROR_MESSAGE in text  # escaped in the file, shown as written
    for word in ("PASSED", "FAILED", "ERROR", "SKIPPED"):
        assert word in text
    table = text[text.index("# step kind status duration detail"):]
    assert table.index("curated-file-written") < table.index("rejects-empty") < table.index("land-orders-file")
    assert "<script" not in dom.lower()


@pytest.mark.e2e  # starts a process (tests/fixtures/tiers.py)
def test_report_html_of_a_passing_run_in_a_real_browser(passing_pack: Path, tmp_path: Path, chromium: str) -> None:
    binary = chromium
    dom = _rendered_dom(binary, passing_pack / "report.html", tmp_path)
    parser = _VisibleText()
    parser.feed(dom)
    text = parser.text
    assert f"{CASE} PASSED" in text and "5 of 5 passed" in text
    assert 'class="failure-box"' not in dom and "FAILED" not in text and "ERROR" not in text
    assert SHA_ORDERS in text and SHA_CUSTOMERS in text  # the hashed inputs are shown


@pytest.mark.e2e  # starts a process (tests/fixtures/tiers.py)
def test_specs_data_and_docs_are_checked_out_with_lf_on_every_os() -> None:
    """.gitattributes pins LF for what is hashed byte for byte (a spec's sha256 must not depend on the checkout),
    and every such file in the repository is LF already."""
    root = Path(__file__).resolve().parent.parent
    if shutil.which("git") is None or not (root / ".git").exists():
        pytest.skip("not a git checkout")
    names = ["a.yaml", "a.yml", "a.json", "a.jsonl", "a.csv", "a.md", "examples/cases/data/x.txt"]
    done = subprocess.run(["git", "check-attr", "eol", "--", *names], cwd=root, capture_output=True, text=True,
                          check=True)
    assert done.stdout.splitlines() == [f"{n}: eol: lf" for n in names]
    eols = subprocess.run(["git", "ls-files", "--eol", "--", "*.yaml", "*.yml", "*.json", "*.csv", "*.md",
                           "examples"], cwd=root, capture_output=True, text=True, check=True).stdout.splitlines()
    assert eols and [line for line in eols if not line.startswith("i/lf")] == []


def test_cases_of_a_suite_whose_names_slug_alike_get_packs_of_their_own() -> None:
    from flows.suite.flow import case_pack

    cases = [SimpleNamespace(spec=SimpleNamespace(case=name)) for name in ("Orders v1", "orders-v1", "Orders v1",
                                                                           "orders-v1-2", "")]
    plan = SimpleNamespace(cases=cases)
    assert [case_pack(plan, c) for c in cases] == [  # type: ignore[arg-type]
        "cases/orders-v1", "cases/orders-v1-2", "cases/orders-v1-3", "cases/orders-v1-2-2", "cases/case"]
