"""Suites: many cases in one flow run, each a subflow run, side by side (in-process: Prefect's test harness and
moto); every case validated first; the suite's summary artifact, evidence pack and junit.xml; exit codes."""

from __future__ import annotations

import http.server
import json
import threading
import time
from pathlib import Path
from typing import Any, Iterator

import pytest
import yaml

from flows.cli import main
from flows.evidence.pack.verify import verify
from flows.spec.load import SpecError
from flows.suite.cli import suite_result_of
from flows.suite.flow import pipeline_test_suite, suite_key
from flows.suite.spec import load_suite
from tasks.kit.journal import read_entries
from tests.helpers import thread_stacks, upload_case

JUNIT_XSD = Path(__file__).with_name("junit-10.xsd")


# ------------------------------------------------------------------------------------------------ validation
def test_a_bad_case_in_a_folder_makes_the_suite_invalid_and_nothing_runs(tmp_path: Path, capsys, monkeypatch) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")  # nothing listens: any AWS call would fail
    cases = tmp_path / "cases"
    upload_case(cases, "good-one")
    upload_case(cases, "bad-one", min_sizee=1)
    assert main([str(cases)]) == 2
    err = capsys.readouterr().err
    assert "bad-one.yaml" in err and "step 2 'landed' (expect_objects): field 'min_sizee': unknown field" in err
    assert "Nothing was run" in err
    assert not (tmp_path / "evidence").exists()


def test_a_suite_file_selects_cases_by_glob_and_tag_and_gives_them_its_variables(tmp_path: Path) -> None:
    upload_case(tmp_path / "cases", "orders-a", tags=["orders"])
    upload_case(tmp_path / "cases", "orders-b", tags=["orders", "nightly"])
    upload_case(tmp_path / "cases", "customers", tags=["customers"])
    suite = tmp_path / "suite.yaml"
    suite.write_text(yaml.safe_dump({"suite": "Nightly", "cases": ["cases/*.yaml"], "tags": ["orders"],
                                     "variables": {"bucket": "env-bucket"}, "max_parallel": 2}))
    plan = load_suite(suite)
    assert [c.spec.case for c in plan.cases] == ["orders-a", "orders-b"] and len(plan.skipped) == 1
    assert all(c.variables == {"bucket": "env-bucket"} for c in plan.cases)
    assert [c.spec.case for c in load_suite(suite, tags=["customers"]).cases] == ["customers"]
    assert load_suite(suite, overrides={"bucket": "other"}, max_parallel=5).spec.max_parallel == 5
    with pytest.raises(SpecError, match="'buckett' is declared by no case of the suite"):
        load_suite(suite, overrides={"buckett": "typo"})
    suite.write_text(yaml.safe_dump({"suite": "Nightly", "cases": ["cases/missing.yaml"], "max_paralel": 2}))
    with pytest.raises(SpecError) as caught:
        load_suite(suite)
    assert "max_paralel" in str(caught.value)


# ------------------------------------------------------------------------------------------------ running
@pytest.fixture
def suite_bucket(prefect_harness, clients) -> Any:
    s3 = clients.client("s3")
    s3.create_bucket(Bucket="suite-bucket")
    return s3


def test_parallel_suite_with_one_failing_case(suite_bucket, tmp_path: Path, capsys) -> None:
    cases = tmp_path / "cases"
    for name in ("first", "second"):
        upload_case(cases, name)
    upload_case(cases, "broken", expect="in/broken/never.csv")
    pack = tmp_path / "suite-pack"
    code = main([str(cases), "--max-parallel", "3", "--evidence-dir", str(pack)])
    out = capsys.readouterr()
    assert code == 1, out.out + out.err
    assert "1 failed" in out.out and "PASS    first" in out.out and "FAIL    broken" in out.out
    assert "step 2 'landed' failed" in out.out
    # every case has its own pack in the suite's, linked from index.html; the whole tree verifies
    report = json.loads((pack / "report.json").read_text())
    assert {c["case"]: c["status"] for c in report["cases"]} == {"broken": "failed", "first": "passed",
                                                                 "second": "passed"}
    for c in report["cases"]:
        assert verify(pack / c["pack"]) == []
        assert f'href="{c["pack"]}/report.html"' in (pack / "index.html").read_text()
    assert verify(pack) == []
    html = (pack / "index.html").read_text()
    assert html.count("<rect ") == 3 and 'data-status="failed"' in html and "<script" not in html
    # junit: one testsuite per case, valid against Jenkins' xUnit schema
    from xml.etree import ElementTree as ET

    import xmlschema

    assert [str(e.reason) for e in xmlschema.XMLSchema(str(JUNIT_XSD)).iter_errors(str(pack / "junit.xml"))] == []
    suites = {s.get("name"): s for s in ET.parse(pack / "junit.xml").iter("testsuite")}
    assert set(suites) == {"broken", "first", "second"} and suites["broken"].get("failures") == "1"
    # nothing left behind: every upload was undone
    assert suite_bucket.list_objects_v2(Bucket="suite-bucket").get("KeyCount") == 0
    # a changed file fails the verify
    (pack / "cases" / "first" / "report.md").write_text("tampered")
    assert any("cases/first/report.md: changed" in p for p in verify(pack))


def test_the_suite_flow_publishes_its_summary_under_a_stable_key(suite_bucket, tmp_path: Path) -> None:
    from prefect.client.orchestration import get_client

    upload_case(tmp_path / "cases", "only")
    state = pipeline_test_suite(suite=str(tmp_path / "cases"), evidence_dir=str(tmp_path / "p"), return_state=True)
    result = suite_result_of(state)
    assert state.is_completed() and result is not None and result.passed
    case = result.cases[0]
    assert case.flow_run_id and case.flow_run_id != result.flow_run_id

    async def read() -> tuple[Any, Any]:
        async with get_client() as client:
            artifact = await client.read_latest_artifacts()
            child = await client.read_flow_run(case.flow_run_id)
            return artifact, child

    import asyncio

    artifacts, child = asyncio.run(read())
    assert suite_key("cases") in {a.key for a in artifacts}
    # the case ran as a subflow of the suite's flow run
    assert child.parent_task_run_id is not None


def case_setting(name: str, value: str) -> dict[str, Any]:
    return {"case": name, "aws": {"region": "us-east-1"}, "steps": [
        {"kind": "set_parameters", "name": "set", "parameters": [{"name": "/shared/source", "value": value}]},
        {"kind": "expect_objects", "name": "hold", "bucket": "suite-bucket", "keys": ["go"],
         "wait": {"timeout": 30, "initial": 0.05, "max_interval": 0.2}},
        {"kind": "expect_parameters", "name": "still-mine", "parameters": [
            {"name": "/shared/source", "equals": value}]}]}


def test_two_cases_of_a_suite_that_set_one_parameter_take_turns(suite_bucket, clients, tmp_path: Path) -> None:
    """Both cases start side by side; the one that gets the parameter's lock sets it and holds it (until the test
    puts ``go``), the other waits for the lock (the suite's progress says so), then sets and restores it."""
    from flows.suite.progress import PROGRESS, Progress

    ssm = clients.client("ssm")
    ssm.put_parameter(Name="/shared/source", Value="prod-bucket", Type="String")
    cases = tmp_path / "cases"
    cases.mkdir()
    for name, value in (("setter-a", "value-a"), ("setter-b", "value-b")):
        (cases / f"{name}.yaml").write_text(json.dumps(case_setting(name, value)))
    progress = Progress()
    got: dict[str, Any] = {}

    def run() -> None:
        token = PROGRESS.set(progress)
        got["state"] = pipeline_test_suite(suite=str(cases), max_parallel=2, evidence_dir=str(tmp_path / "p"),
                                           return_state=True)
        PROGRESS.reset(token)

    thread = threading.Thread(target=run)
    thread.start()
    # generous: Prefect's SQLite-backed test server now and then stalls for up to a minute under load (once seen
    # here under pytest -n 2, before any case had started)
    deadline = time.monotonic() + 150
    while not progress.waiting_lock:  # one case holds the parameter, the other waits for its lock
        if time.monotonic() > deadline or not thread.is_alive():
            pytest.fail(f"no case ever waited for the other's lock; this process's threads:\n{thread_stacks()}")
        time.sleep(0.05)
    assert ssm.get_parameter(Name="/shared/source")["Parameter"]["Value"] in ("value-a", "value-b")
    assert "1 waiting for a lock" in progress.line()
    suite_bucket.put_object(Bucket="suite-bucket", Key="go", Body=b"")
    thread.join(150)
    result = suite_result_of(got["state"])
    assert result is not None and result.passed, [c.why for c in result.cases] if result else got["state"]
    history = [h["Value"] for h in ssm.get_parameter_history(Name="/shared/source")["Parameters"]]
    assert history[0::2] == ["prod-bucket"] * 3 and sorted(history[1::2]) == ["value-a", "value-b"], history
    assert read_entries(ssm) == []
    # one of them waited for the other: through the other's whole hold, longer than the other waited for the lock
    # (no bound in seconds: on a loaded machine even an uncontended lock can take a while to be granted)
    waits = sorted(c.result.locks.waited_seconds for c in result.cases if c.result and c.result.locks)
    assert len(waits) == 2 and waits[1] > waits[0], waits


# ------------------------------------------------------------------------------------------------ exit 3
def test_the_suite_exits_3_when_the_prefect_api_is_down(tmp_path: Path, capsys) -> None:
    from prefect.settings import PREFECT_API_URL, temporary_settings

    upload_case(tmp_path / "cases", "down")
    with temporary_settings({PREFECT_API_URL: "http://127.0.0.1:9/api"}):
        code = main([str(tmp_path / "cases")])
    err = capsys.readouterr().err
    assert code == 3 and "did not answer" in err and "Traceback" not in err


class Refusing(http.server.BaseHTTPRequestHandler):
    """A Prefect API that is up, registers flows, and refuses to create a flow run (503), as a busy server does."""

    def do_GET(self) -> None:  # noqa: N802
        path = self.path.split("?")[0].rstrip("/")
        body: Any = None
        if path.endswith("/health"):
            body = True
        elif path.endswith("/admin/version"):
            import prefect

            body = prefect.__version__
        elif path.endswith("/csrf-token"):
            body = {"token": "t", "expiration": "2099-01-01T00:00:00Z", "client": "c"}
        elif path.endswith("/flows") and self.command == "POST":
            body = {"id": "5b8b0c1e-3f1a-4c9e-9a53-2f0c2f6f7e11", "name": "pipeline-test"}
        self.send_response(200 if body is not None else 503)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(json.dumps(body if body is not None else {"detail": "Service Unavailable"}).encode())

    def do_POST(self) -> None:  # noqa: N802
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.do_GET()

    do_PATCH = do_PUT = do_DELETE = do_POST  # noqa: N815

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def refusing_api() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Refusing)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/api"
    server.shutdown()


@pytest.mark.parametrize("what", ["case", "suite"])
def test_a_503_on_creating_the_flow_run_is_exit_3(refusing_api: str, tmp_path: Path, capsys, what: str) -> None:
    from prefect.settings import PREFECT_API_URL, PREFECT_CLIENT_MAX_RETRIES, temporary_settings

    path = upload_case(tmp_path / "cases", "refused")
    with temporary_settings({PREFECT_API_URL: refusing_api, PREFECT_CLIENT_MAX_RETRIES: 0}):
        code = main([str(path if what == "case" else path.parent), "--no-evidence"] if what == "case"
                    else [str(path.parent)])
    err = capsys.readouterr().err
    assert code == 3, err
    assert "Could not run" in err and "503 Service Unavailable on POST /api/flow_runs/" in err, err
    assert "Traceback" not in err


def test_ctrl_c_stops_every_running_case_and_each_puts_its_changes_back(suite_bucket, clients, tmp_path: Path,
                                                                        capsys) -> None:
    """SIGINT while two cases wait (each having changed its own parameter): exit 130, both put back."""
    import os
    import signal

    ssm = clients.client("ssm")
    cases = tmp_path / "cases"
    cases.mkdir()
    for name in ("stop-a", "stop-b"):
        ssm.put_parameter(Name=f"/stop/{name}", Value="prod", Type="String")
        spec = case_setting(name, "test")
        spec["steps"][0]["parameters"][0]["name"] = f"/stop/{name}"
        spec["steps"][1]["keys"] = ["never"]
        spec["steps"][2]["parameters"][0]["name"] = f"/stop/{name}"
        (cases / f"{name}.yaml").write_text(json.dumps(spec))

    def interrupt_when_both_changed() -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            values = [ssm.get_parameter(Name=f"/stop/{n}")["Parameter"]["Value"] for n in ("stop-a", "stop-b")]
            if values == ["test", "test"]:
                time.sleep(0.5)  # well into the waiting step
                os.kill(os.getpid(), signal.SIGINT)
                return
            time.sleep(0.05)

    watcher = threading.Thread(target=interrupt_when_both_changed, daemon=True)
    watcher.start()
    code = main([str(cases), "--evidence-dir", str(tmp_path / "p")])
    watcher.join(5)
    err = capsys.readouterr().err
    assert code == 130, err
    assert [ssm.get_parameter(Name=f"/stop/{n}")["Parameter"]["Value"] for n in ("stop-a", "stop-b")] == ["prod"] * 2
    assert read_entries(ssm) == []
    assert verify(tmp_path / "p") == []  # the suite's pack, with the cases that ended
