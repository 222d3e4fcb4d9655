"""Overlapping runs never leave a setting changed: runs that change one SSM parameter serialize on its lock (a
Prefect global concurrency limit), each sees its own value while it runs, and the original is back at the end.
Flow runs in threads of one process, against Prefect's test harness and moto."""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from flows.evidence.results import CaseResult, result_of
from flows.pipeline_test import pipeline_test
from tasks.kit.journal import read_entries
from tests.helpers import thread_stacks

pytestmark = pytest.mark.usefixtures("prefect_harness")

SECRET = "prod-Secret-value-42"


@pytest.fixture
def ssm(clients):
    client = clients.client("ssm")
    client.put_parameter(Name="/shared/source", Value="prod-bucket", Type="String", Description="prod")
    client.put_parameter(Name="/shared/token", Value=SECRET, Type="SecureString")
    return client


def case(name: str, value: str, *, hold: str | None = None) -> dict[str, Any]:
    """Set the shared parameters to ``value``, (optionally hold them until the test puts the object ``hold``),
    then check the run still sees its own values."""
    steps: list[dict[str, Any]] = [
        {"kind": "set_parameters", "name": "set", "parameters": [
            {"name": "/shared/source", "value": value},
            {"name": "/shared/token", "value": f"{value}-token", "type": "SecureString"}]},
    ]
    if hold:
        steps.append({"kind": "expect_objects", "name": "hold", "bucket": "overlap", "keys": [hold],
                      "wait": {"timeout": 60, "initial": 0.05, "max_interval": 0.2}})
    steps.append({"kind": "expect_parameters", "name": "still-mine", "parameters": [
        {"name": "/shared/source", "equals": value},
        {"name": "/shared/token", "equals": f"{value}-token", "type": "SecureString"}]})
    return {"case": name, "aws": {"region": "us-east-1"}, "steps": steps}


def run(spec: dict[str, Any], tmp_path: Path) -> CaseResult:
    result = result_of(pipeline_test(spec=spec, base_dir=str(tmp_path), write_evidence=False, return_state=True))
    assert result is not None
    return result


def originals(ssm) -> tuple[str, str, str]:
    source = ssm.get_parameter(Name="/shared/source")["Parameter"]
    token = ssm.get_parameter(Name="/shared/token", WithDecryption=True)["Parameter"]["Value"]
    meta = ssm.describe_parameters(ParameterFilters=[{"Key": "Name", "Values": ["/shared/source"]}])["Parameters"]
    return source["Value"], token, meta[0].get("Description")


def still_mine(result: CaseResult) -> bool:
    return next(s for s in result.steps if s.label == "still-mine").status == "passed"


def test_five_runs_of_one_case_at_once(ssm, clients, tmp_path: Path) -> None:
    s3 = clients.client("s3")
    s3.create_bucket(Bucket="overlap")
    s3.put_object(Bucket="overlap", Key="go", Body=b"")  # each run's hold step passes at its first look
    with ThreadPoolExecutor(5) as pool:
        results = list(pool.map(lambda i: run(case("Same case", f"test-{i}", hold="go"), tmp_path), range(5)))
    assert all(r.passed for r in results), [r.first_failure for r in results]
    assert originals(ssm) == ("prod-bucket", SECRET, "prod")
    # they took turns: in the parameter's history every test value is followed by the restore of the original
    history = [h["Value"] for h in ssm.get_parameter_history(Name="/shared/source")["Parameters"]]
    assert history[0] == "prod-bucket" and len(history) == 11, history
    assert history[1::2] == [h for h in history[1::2] if h.startswith("test-")] and len(set(history[1::2])) == 5
    assert set(history[2::2]) == {"prod-bucket"}, history
    assert read_entries(ssm) == []  # nothing left in the undo journal


class WaitingSeen(logging.Handler):
    """Set when a run logs that it waits for a lock another run holds."""

    def __init__(self) -> None:
        super().__init__()
        self.event = threading.Event()

    def emit(self, record: logging.LogRecord) -> None:
        if record.getMessage().startswith("Waiting for") and "lock(s) that another run holds" in record.getMessage():
            self.event.set()


def wait_for(condition: Any, what: str) -> None:
    deadline = time.monotonic() + 30
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting until {what}"
        time.sleep(0.05)


@pytest.mark.parametrize("shape", ["crossing", "nested"])
def test_two_cases_that_set_one_parameter(ssm, clients, tmp_path: Path, shape: str) -> None:
    """A changes the parameter and holds it; B starts while A runs (crossing: B holds it too, so it would end
    after A; nested: B is short and would end inside A). B waits for A's restore, then sets and restores it."""
    s3 = clients.client("s3")
    waiting = WaitingSeen()
    logging.getLogger("prefect.flow_runs").addHandler(waiting)
    s3.create_bucket(Bucket="overlap")
    got: dict[str, CaseResult] = {}
    a = threading.Thread(target=lambda: got.update(a=run(case("Case A", "value-a", hold=f"go-a-{shape}"),
                                                          tmp_path)))
    a.start()
    wait_for(lambda: ssm.get_parameter(Name="/shared/source")["Parameter"]["Value"] == "value-a", "A changed it")
    b = threading.Thread(target=lambda: got.update(b=run(case("Case B", "value-b", hold=(
        f"go-b-{shape}" if shape == "crossing" else None)), tmp_path)))
    b.start()
    try:
        assert waiting.event.wait(60), "B never waited for A's lock"
    finally:
        logging.getLogger("prefect.flow_runs").removeHandler(waiting)
    s3.put_object(Bucket="overlap", Key=f"go-a-{shape}", Body=b"")  # A may finish now
    s3.put_object(Bucket="overlap", Key=f"go-b-{shape}", Body=b"")
    # generous: Prefect's SQLite-backed test server now and then stalls under load (its lock calls with it)
    a.join(150)
    b.join(150)
    assert not a.is_alive() and not b.is_alive(), f"a run did not end; this process's threads:\n{thread_stacks()}"
    assert got["a"].passed and got["b"].passed, (got["a"].first_failure, got["b"].first_failure)
    assert got["b"].locks and got["b"].locks.waited_seconds > 0  # B says that it waited
    history = [h["Value"] for h in ssm.get_parameter_history(Name="/shared/source")["Parameters"]]
    assert history == ["prod-bucket", "value-a", "prod-bucket", "value-b", "prod-bucket"]
    assert originals(ssm) == ("prod-bucket", SECRET, "prod")


def test_a_run_that_cannot_get_its_lock_in_time_changes_nothing(ssm, tmp_path: Path) -> None:
    """Another run holds the parameter past the case's lock_timeout: the case does not start (exit 3 in the
    CLI), says why, and the parameter is untouched."""
    from flows.run import locks
    from flows.run.recover import CouldNotRun

    spec = {**case("Impatient", "value-x"), "lock_timeout": 1}
    with locks.hold(["ssm:/shared/source"], "other-run", timeout=5, logger=logging.getLogger("test")):
        state = pipeline_test(spec=spec, base_dir=str(tmp_path), write_evidence=False, return_state=True)
    assert result_of(state) is None
    reason = state.result(raise_on_failure=False)
    assert isinstance(reason, CouldNotRun) and "timed out after 1 s" in str(reason)
    assert originals(ssm) == ("prod-bucket", SECRET, "prod")
    # visibly not a test failure: Cancelled named NotRun (grey in the UI), with an artifact that says why and what to do
    assert state.type.value == "CANCELLED" and state.name == "NotRun", state
    assert state.message.startswith("could not run, nothing was changed: ")
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    with get_client(sync_client=True) as client:
        [artifact] = client.read_artifacts(artifact_filter=ArtifactFilter(
            key=ArtifactFilterKey(any_=["case-impatient-not-run"])), limit=1)
    assert str(artifact.flow_run_id) == str(state.state_details.flow_run_id)
    assert artifact.description == "NOT RUN · Impatient" and "timed out after 1 s" in str(artifact.data)
    assert "nothing was changed" in str(artifact.data) and "recover" in str(artifact.data)


def test_the_cli_exits_3_when_the_prefect_api_is_down(tmp_path: Path, capsys) -> None:
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from flows.cli import main

    (tmp_path / "case.yaml").write_text(__import__("json").dumps(case("Down", "value-y")))
    with temporary_settings({PREFECT_API_URL: "http://127.0.0.1:9/api"}):
        code = main([str(tmp_path / "case.yaml")])
    assert code == 3
    err = capsys.readouterr().err
    assert "Could not run: the Prefect API at http://127.0.0.1:9/api did not answer" in err
    assert "Traceback" not in err


# ------------------------------------------------------------------ runs of other Prefect servers, and lock limits
def other_servers_run(clients, *, value: str, run_id: str = "run-of-server-b") -> Any:
    """What a live run on another Prefect server leaves in AWS: its claim (a lease) and the undo of its change;
    this server's locks know nothing of it."""
    from tasks.kit.journal import Heartbeat, SsmJournal
    from tasks.kit.step import StepContext, UndoLog
    from tasks.ssm import SetParametersStep, run_set_parameters

    ssm = clients.client("ssm")
    claim = Heartbeat(ssm, run_id=run_id, case="Case B", resources=["ssm:/shared/source"],
                      logger=logging.getLogger("test"))
    claim.owner = {"host": "laptop-b", "pid": 4242, "user": "ana"}
    claim.claim()
    ctx = StepContext(clients=clients, case_name="Case B", run_id=run_id, label="set", spec_dir=Path.cwd(),
                      undo=UndoLog(journal=SsmJournal(ssm, run_id=run_id, case="Case B")))
    run_set_parameters(SetParametersStep.model_validate({"kind": "set_parameters", "parameters": [
        {"name": "/shared/source", "value": value}]}), ctx)
    return claim


def test_recover_skips_a_live_run_of_another_server_and_recovers_it_once_its_lease_ran_out(ssm, clients) -> None:
    from datetime import timedelta

    from flows.run.recover import recover
    from tasks.kit.journal import read_claims, utcnow

    other_servers_run(clients, value="value-b")
    found, report = recover(clients, prefix=None, logger=logging.getLogger("test"))
    assert len(found) == 1 and not report.done and len(report.skipped) == 1
    assert report.lines()[0].startswith("  SKIPPED   ssm:/shared/source: run run-of-server-b of case 'Case B' on host "
                                        "laptop-b pid 4242 (user ana) is alive, lease until ")
    assert ssm.get_parameter(Name="/shared/source")["Parameter"]["Value"] == "value-b"
    # the run died (no renewal for a lease and more): the next recover puts the value back and forgets its claim
    later = utcnow() + timedelta(seconds=121)
    _, report = recover(clients, prefix=None, logger=logging.getLogger("test"), now=lambda: later)
    assert len(report.done) == 1 and not report.skipped
    assert originals(ssm) == ("prod-bucket", SECRET, "prod")
    assert read_entries(ssm) == [] and read_claims(ssm) == []


def test_a_run_refuses_to_start_when_a_live_run_of_another_server_holds_its_parameter(ssm, clients,
                                                                                      tmp_path: Path) -> None:
    """The other run's lock is on another server: this one gets its own lock at once, then finds the other's
    claim in the journal and refuses (exit 3 in the CLI), naming that run, before changing anything."""
    from flows.run.recover import CouldNotRun
    from tasks.kit.journal import read_claims

    claim = other_servers_run(clients, value="value-b")
    state = pipeline_test(spec=case("Case A", "value-a"), base_dir=str(tmp_path), write_evidence=False,
                          return_state=True)
    reason = state.result(raise_on_failure=False)
    assert isinstance(reason, CouldNotRun), reason
    assert ("case 'Case A' did not start: run run-of-server-b of case 'Case B' on host laptop-b pid 4242 (user ana) "
            "is changing ssm:/shared/source now") in str(reason)
    assert ssm.get_parameter(Name="/shared/source")["Parameter"]["Value"] == "value-b"  # untouched by A
    assert [c.run_id for c in read_claims(ssm)] == [claim.run_id]  # A's own claim is gone


def test_a_run_leaves_no_lock_limit_behind(ssm, tmp_path: Path) -> None:
    from prefect.client.orchestration import get_client

    from flows.run.locks import lock_name

    assert run(case("Tidy", "value-t"), tmp_path).passed
    with get_client(sync_client=True) as client:
        names = {limit.name for limit in client.read_global_concurrency_limits(limit=200)}
    assert not names & {lock_name("ssm:/shared/source"), lock_name("ssm:/shared/token")}, names


class FakeLimits:
    """A sync Prefect client's concurrency-limit calls, in memory: ``taken`` by another process at the moment
    this one creates (409), and limits deleted by their last holder while this one waits."""

    def __init__(self, existing: set[str], *, taken: set[str] = frozenset(), gone_once: set[str] = frozenset()):
        import httpx

        self.httpx = httpx
        self.limits, self.taken, self.gone_once = set(existing), set(taken), set(gone_once)
        self.created: list[str] = []
        self.released: list[str] = []

    def read_global_concurrency_limit_by_name(self, name: str) -> Any:
        from prefect.exceptions import ObjectNotFound

        if name not in self.limits:
            raise ObjectNotFound(http_exc=Exception("404"))
        return name

    def create_global_concurrency_limit(self, limit: Any) -> None:
        from prefect.exceptions import ObjectAlreadyExists

        from flows.run import locks

        assert locks._CREATING.locked()  # one creation at a time in this process
        if limit.name in self.taken:  # another process created it a moment ago: the API answers 409 Conflict
            request = self.httpx.Request("POST", "http://prefect/api/v2/concurrency_limits/")
            conflict = self.httpx.HTTPStatusError("409", request=request,
                                                  response=self.httpx.Response(409, request=request))
            self.limits.add(limit.name)
            raise ObjectAlreadyExists(http_exc=conflict)
        self.limits.add(limit.name)
        self.created.append(limit.name)

    def increment_concurrency_slots_with_lease(self, names: list[str], *_: Any) -> Any:
        self.limits -= self.gone_once  # deleted by the run that held them, once
        self.gone_once = set()
        lease = f"lease-{len(self.released) + 1}"
        return self.httpx.Response(200, json={"lease_id": lease, "limits": [
            {"name": n} for n in names if n in self.limits]})

    def release_concurrency_slots_with_lease(self, lease_id: Any) -> None:
        self.released.append(str(lease_id))


def test_creating_a_lock_another_process_just_created_is_quiet() -> None:
    from flows.run.locks import ensure_limits

    client = FakeLimits({"a"}, taken={"b"})
    ensure_limits(["a", "b", "c"], client)
    assert client.created == ["c"] and client.limits == {"a", "b", "c"}


def test_a_waiting_run_creates_again_the_lock_its_last_holder_deleted(monkeypatch) -> None:
    """The increment takes the slots of the limits that exist (here ``b``) and leaves out ``a``, just deleted:
    the run gives ``b``'s slot back, creates ``a`` again and takes both."""
    import uuid as uuid_module

    from flows.run import locks

    monkeypatch.setattr(uuid_module, "UUID", lambda value: value)  # the fake's lease ids are not UUIDs
    client = FakeLimits({"a", "b"}, gone_once={"a"})
    lease, _ = locks.acquire(["a", "b"], "run-1", timeout=5, lease=60, logger=logging.getLogger("test"),
                             client=client)
    assert client.released == ["lease-1"] and client.created == ["a"] and lease == "lease-2"


def test_the_lock_wait_names_only_the_locks_another_run_holds() -> None:
    """A run waiting for a shared parameter's lock does not list its own unique S3 prefix as held by another."""
    from types import SimpleNamespace

    from flows.run.locks import held_by_others

    class Client:
        def read_global_concurrency_limit_by_name(self, name: str) -> Any:
            return SimpleNamespace(active_slots=1 if name == "shared" else 0, limit=1)

    assert held_by_others(["own-prefix", "shared"], Client()) == ["shared"]

    class Down:
        def read_global_concurrency_limit_by_name(self, name: str) -> Any:
            raise RuntimeError("server gone")

    assert held_by_others(["own-prefix", "shared"], Down()) == ["own-prefix", "shared"]  # cannot tell: all
