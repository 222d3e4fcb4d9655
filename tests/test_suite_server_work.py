"""What a suite asks of its Prefect server (issue #28, item 8): never more cases at once than the server holds (by
its database and its pool), a server hiccup waited out (Prefect's client retries a lock call answered 503; a case
whose flow run could not be created is tried again, and reported "not run" only after a bounded time), and every
case's history read once per suite. Fakes only: no server, no sleep."""

from __future__ import annotations

import logging
import types
import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import httpx
import pytest
from prefect.settings import PREFECT_API_DATABASE_CONNECTION_URL, temporary_settings

from flows.evidence import history
from flows.run.prefect_client import ServerCapacity, bound_parallel, database_of, server_capacity
from flows.suite import flow as suite_flow
from flows.suite.pack import SuiteCaseResult
from flows.suite.progress import Progress
from flows.suite.spec import load_suite


def admin_settings(pool: int = 5, overflow: int = 10, driver: str | None = None) -> Any:
    body = {"server": {"database": {"driver": driver, "connection_url": "**********",
                                    "sqlalchemy": {"pool_size": pool, "max_overflow": overflow}}}}
    return lambda url: httpx.Response(200, json=body, request=httpx.Request("GET", url))


# ------------------------------------------------------------------------------------------------ the bound
@pytest.mark.parametrize(("url", "database", "cap"), [
    ("postgresql+asyncpg://prefect@db:5432/prefect", "postgresql", 15),
    ("sqlite+aiosqlite:////home/me/.prefect/prefect.db", "sqlite", 4),
])
def test_the_cap_follows_the_servers_database(url: str, database: str, cap: int) -> None:
    with temporary_settings({PREFECT_API_DATABASE_CONNECTION_URL: url}):
        capacity = server_capacity("http://prefect.test/api", get=admin_settings())
    assert (capacity.database, capacity.connections, capacity.max_parallel) == (database, 15, cap)


def test_the_servers_own_driver_and_pool_win() -> None:
    capacity = server_capacity("http://prefect.test/api", get=admin_settings(20, 20, "postgresql+asyncpg"))
    assert (capacity.database, capacity.max_parallel) == ("postgresql", 40)
    assert "DRIVER" in capacity.source
    small = server_capacity("http://prefect.test/api", get=admin_settings(2, 0, "sqlite+aiosqlite"))
    assert small.max_parallel == 1  # never 0, and half the pool on SQLite
    assert ServerCapacity("sqlite", 100, "x").max_parallel == 4


def test_a_server_that_cannot_say_is_taken_for_prefects_defaults() -> None:
    def down(url: str) -> Any:
        raise httpx.ConnectError("refused")

    capacity = server_capacity("http://prefect.test/api", get=down)
    assert capacity.connections == 15 and capacity.database == database_of(None) == "sqlite"
    assert server_capacity(None).source == "this process's temporary server"


def test_asking_for_more_than_the_server_holds_is_capped_with_a_log_line(caplog: pytest.LogCaptureFixture) -> None:
    sqlite = ServerCapacity("sqlite", 15, "Prefect's default")
    logger = logging.getLogger("test-bound")
    with caplog.at_level(logging.WARNING, "test-bound"):
        assert bound_parallel(None, sqlite, logger) == 4  # none asked: what the server holds, no line
        assert bound_parallel(3, sqlite, logger) == 3
        assert not caplog.records
        assert bound_parallel(100, sqlite, logger) == 4
    assert caplog.messages == ["max_parallel 100 is more than the Prefect server holds: 4 case(s) at once (its "
                               "database: sqlite, known from Prefect's default; its connection pool: 15); running 4 "
                               "at once"]
    assert bound_parallel(20, ServerCapacity("postgresql", 15, "x"), logger) == 15


def test_a_suite_without_max_parallel_leaves_it_to_the_server(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text("case: a\naws: {region: us-east-1}\nsteps:\n  - kind: expect_parameters\n"
                                     "    name: p\n    parameters: [{name: /x, equals: y}]\n")
    assert load_suite(tmp_path).spec.max_parallel is None
    assert load_suite(tmp_path, max_parallel=2).spec.max_parallel == 2


# ------------------------------------------------------------------------------------------------ hiccups
class Flaky:
    """An API that answers ``failures`` first (status codes), then 200 with ``body``."""

    def __init__(self, failures: list[int], body: Any) -> None:
        self.failures, self.body, self.calls = list(failures), body, 0

    def __call__(self, request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/csrf-token"):
            return httpx.Response(422, text="CSRF protection is disabled.")
        self.calls += 1
        if self.failures:
            return httpx.Response(self.failures.pop(0), json={"detail": "database is locked"})
        return httpx.Response(200, json=self.body)


def test_a_lock_call_answered_503_is_retried_by_prefects_client(monkeypatch: pytest.MonkeyPatch) -> None:
    """The locks (flows.run.locks) use Prefect's sync client: a 503 (Prefect's answer to `database is locked`) is
    sent again, not a lost case."""
    import prefect.client.base as base
    from prefect.client.orchestration import SyncPrefectClient

    slept: list[float] = []
    monkeypatch.setattr(base, "time", types.SimpleNamespace(**{**vars(base.time), "sleep": slept.append}))
    lease = str(uuid.uuid4())
    api = Flaky([503, 503], {"lease_id": lease, "limits": [{"name": "lock-a", "id": str(uuid.uuid4()),
                                                               "limit": 1}]})
    with SyncPrefectClient("http://prefect.test/api", httpx_settings={"transport": httpx.MockTransport(api)}) as c:
        response = c.increment_concurrency_slots_with_lease(["lock-a"], 1, "concurrency", 60.0)
    assert response.json()["lease_id"] == lease and api.calls == 3 and len(slept) == 2


def one_case_plan(tmp_path: Path) -> Any:
    (tmp_path / "cases").mkdir()
    (tmp_path / "cases" / "a.yaml").write_text("case: a\naws: {region: us-east-1}\nsteps:\n"
                                               "  - kind: expect_parameters\n    name: p\n"
                                               "    parameters: [{name: /x, equals: y}]\n")
    plan = load_suite(tmp_path / "cases")
    return plan, plan.cases[0]


def passed(case: Any) -> SuiteCaseResult:
    now = datetime.now(timezone.utc)
    return SuiteCaseResult(case=case.spec.case, path=str(case.path), status="passed", started_at=now, ended_at=now)


def test_a_case_whose_flow_run_could_not_be_created_is_tried_again(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    plan, case = one_case_plan(tmp_path)
    answers: list[Any] = [httpx.HTTPStatusError("503 Service Unavailable", request=httpx.Request("POST", "http://x"),
                                                response=httpx.Response(503)), passed(case)]

    def run_subflow(*args: Any) -> SuiteCaseResult:
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    monkeypatch.setattr(suite_flow, "_run_subflow", run_subflow)
    pauses: list[float] = []

    def pause(seconds: float) -> bool:
        pauses.append(seconds)
        return False

    outcome = suite_flow.run_case(plan, case, tmp_path / "pack", Progress(), pause=pause)
    assert outcome.status == "passed" and pauses == [suite_flow.CASE_RETRY_PAUSE_S] and not answers


def test_a_case_is_not_run_only_after_a_bounded_time_and_says_why(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    plan, case = one_case_plan(tmp_path)
    clock = {"t": datetime(2026, 12, 8, tzinfo=timezone.utc)}

    def now() -> datetime:
        return clock["t"]

    def pause(seconds: float) -> bool:
        from datetime import timedelta

        clock["t"] += timedelta(seconds=seconds)
        return False

    def run_subflow(*args: Any) -> SuiteCaseResult:
        raise httpx.ConnectError("connection dropped")

    monkeypatch.setattr(suite_flow, "_now", now)
    monkeypatch.setattr(suite_flow, "_run_subflow", run_subflow)
    outcome = suite_flow.run_case(plan, case, tmp_path / "pack", Progress(), retry_for=100, pause=pause)
    assert outcome.status == "not run"
    # 5 + 10 + 20 + 40 s of pauses fit in 100 s; the next (60 s) would not
    assert outcome.reason == "the case's flow run could not be run (5 tries in 75 s): ConnectError: connection dropped"


def test_a_case_that_wrote_its_pack_is_not_run_twice(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    plan, case = one_case_plan(tmp_path)
    tries = []

    def run_subflow(case: Any, pack_dir: Path, *args: Any) -> SuiteCaseResult:
        tries.append(1)
        pack_dir.mkdir(parents=True)  # it ran (and may have changed AWS) before its end could not be recorded
        raise httpx.ReadTimeout("timed out")

    monkeypatch.setattr(suite_flow, "_run_subflow", run_subflow)
    outcome = suite_flow.run_case(plan, case, tmp_path / "pack", Progress(), pause=lambda s: False)
    assert outcome.status == "not run" and len(tries) == 1 and outcome.pack == "cases/a"


def test_a_stopped_suite_does_not_wait_out_a_hiccup(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    plan, case = one_case_plan(tmp_path)

    def run_subflow(*args: Any) -> SuiteCaseResult:
        raise httpx.ConnectError("refused")

    monkeypatch.setattr(suite_flow, "_run_subflow", run_subflow)
    outcome = suite_flow.run_case(plan, case, tmp_path / "pack", Progress(), pause=lambda s: True)
    assert outcome.status == "not run" and "1 tries" in str(outcome.reason)


# ------------------------------------------------------------------------------------------------ history
class CountingClient:
    """A sync Prefect client's two history reads, counted: ``versions`` summary-table versions per key."""

    def __init__(self, keys: list[str], versions: int) -> None:
        self.reads: list[str] = []
        self.artifacts = [types.SimpleNamespace(key=k, flow_run_id=uuid.uuid4(), data='[{"status": "✅ passed"}]',
                                                description="passed · x (1.0 s)", created=None)
                          for _ in range(versions) for k in keys]

    def __enter__(self) -> CountingClient:
        return self

    def __exit__(self, *exc: Any) -> None:
        pass

    def read_artifacts(self, artifact_filter: Any, sort: Any, limit: int, offset: int = 0) -> list[Any]:
        assert limit <= history.PAGE
        self.reads.append("artifacts")
        return [a for a in self.artifacts if a.key in artifact_filter.key.any_][offset:offset + limit]

    def read_flow_runs(self, flow_run_filter: Any, limit: int | None = None) -> list[Any]:
        assert limit is not None and limit <= history.PAGE
        self.reads.append("flow_runs")
        return [types.SimpleNamespace(id=i, start_time=None, total_run_time=None) for i in flow_run_filter.id.any_]


def test_a_suite_reads_the_history_of_all_its_cases_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    import prefect.client.orchestration as orchestration

    keys = [f"case-c{i}" for i in range(8)]
    client = CountingClient(keys, versions=12)
    monkeypatch.setattr(orchestration, "get_client", lambda sync_client=False: client)
    got = history.read_histories(keys, limit=10)
    assert client.reads == ["artifacts", "flow_runs"]  # 2 requests for 8 cases (it was 2 per case)
    assert [len(got[k]) for k in keys] == [10] * 8
    client.reads.clear()
    many = [f"case-m{i}" for i in range(30)]  # 300 versions: two pages of each
    client = CountingClient(many, versions=10)
    monkeypatch.setattr(orchestration, "get_client", lambda sync_client=False: client)
    assert sum(len(v) for v in history.read_histories(many, limit=10).values()) == 300
    assert client.reads == ["artifacts", "artifacts", "flow_runs", "flow_runs"]


def test_a_case_of_a_suite_reads_no_history_of_its_own(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_read(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("a case in a suite read its history")

    monkeypatch.setattr(history, "read_history", no_read)
    earlier = [{"flow_run_id": f"r{i}", "status": "passed"} for i in range(12)]
    this_run = {"flow_run_id": "now", "status": "failed"}
    token = history.SUITE_HISTORY.set({"case-a": earlier})
    try:
        rows = history.case_history("case-a", this_run)
        assert rows[0] is this_run and [r["flow_run_id"] for r in rows[1:]] == [f"r{i}" for i in range(9)]
        assert history.case_history("case-new", this_run) == [this_run]
    finally:
        history.SUITE_HISTORY.reset(token)


# ------------------------------------------------------------------------------------------------ locks
class Renewals:
    def __init__(self, fail_first: bool = False, enough: int = 3) -> None:
        import threading

        self.calls, self.fail_first, self.enough, self.done = 0, fail_first, enough, threading.Event()

    def renew_concurrency_lease(self, lease_id: Any, lease: float) -> None:
        self.calls += 1
        if self.calls >= self.enough:
            self.done.set()
        if self.fail_first and self.calls == 1:
            raise httpx.ConnectError("dropped")


def test_a_lease_just_taken_is_not_renewed_at_once() -> None:
    """Prefect's own helper renews at the start, on a client of its own: a request (and a client) per case."""
    from flows.run.locks import renewed

    client = Renewals()
    with renewed(client, str(uuid.uuid4()), 60.0, logging.getLogger("test")):
        pass
    assert client.calls == 0


def test_a_held_lease_is_renewed_and_a_failed_renewal_tried_again(caplog: pytest.LogCaptureFixture) -> None:
    from flows.run.locks import renewed

    client = Renewals(fail_first=True)
    with caplog.at_level(logging.WARNING, "test-renew"), \
            renewed(client, str(uuid.uuid4()), 60.0, logging.getLogger("test-renew"), every=0.001):
        assert client.done.wait(30)  # an event, not a sleep: set by the third renewal
    assert client.calls >= 3 and "Could not renew the resource locks' lease" in caplog.text


def test_a_suite_of_three_reads_the_history_once(prefect_harness: Any, clients: Any, tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """End to end on Prefect's test server: one read for the suite, none per case, and each case's report still
    lists its run."""
    from flows.cli import main
    from tests.helpers import upload_case

    clients.client("s3").create_bucket(Bucket="suite-bucket")
    cases = tmp_path / "cases"
    for name in ("one", "two", "three"):
        upload_case(cases, name)
    reads: list[list[str]] = []
    read_histories = history.read_histories

    def counted(keys: list[str], *args: Any, **kwargs: Any) -> Any:
        reads.append(sorted(keys))
        return read_histories(keys, *args, **kwargs)

    def no_read(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("a case in a suite read its history")

    monkeypatch.setattr(suite_flow, "read_histories", counted)
    monkeypatch.setattr(history, "read_history", no_read)
    assert main([str(cases), "--evidence-dir", str(tmp_path / "pack")]) == 0
    assert reads == [["case-one", "case-three", "case-two"]]


def test_a_resource_named_after_the_run_takes_no_lock(monkeypatch: pytest.MonkeyPatch) -> None:
    """An S3 prefix with the run's flow run id in it (``{{ flow_run_id }}``) is the run's alone: only the shared
    parameter is locked (the case's five lock requests, four of them writes, are saved for such a prefix)."""
    import contextlib

    from flows.run import case_run

    run_id = str(uuid.uuid4())
    asked: list[list[str]] = []

    @contextlib.contextmanager
    def hold(resources: list[str], *args: Any, **kwargs: Any) -> Any:
        asked.append(resources)
        yield types.SimpleNamespace(resources=resources, lease_id=None)

    monkeypatch.setattr(case_run.locks, "hold", hold)
    monkeypatch.setattr(case_run, "release_dead_locks", lambda *args: None)
    case = types.SimpleNamespace(case="c", lock_timeout=5, aws=types.SimpleNamespace(journal_prefix=None))
    clients = types.SimpleNamespace(client=lambda name: None)
    ctx = types.SimpleNamespace(stop=None)
    resources = [f"s3:landing/in/{run_id}/", "ssm:/orders/source"]
    with case_run.locked(clients, resources, case, run_id, ctx, logging.getLogger("t")) as lock:  # type: ignore[arg-type]
        assert lock.resources == ["ssm:/orders/source"]
    assert asked == [["ssm:/orders/source"]]
    assert not case_run.run_own("s3:landing/in/local/", "local")  # no flow run: no id to trust


class HiccupLimits:
    """The lock request answered ``codes`` first (e.g. 500: the server's pool timed out), then granted."""

    def __init__(self, codes: list[int]) -> None:
        self.codes, self.calls = list(codes), 0

    def increment_concurrency_slots_with_lease(self, names: list[str], *_: Any) -> Any:
        self.calls += 1
        request = httpx.Request("POST", "http://prefect.test/api/v2/concurrency_limits/increment-with-lease")
        if self.codes:
            code = self.codes.pop(0)
            raise httpx.HTTPStatusError(str(code), request=request, response=httpx.Response(code, request=request))
        return httpx.Response(200, json={"lease_id": "lease-1", "limits": [{"name": n} for n in names]},
                              request=request)


def test_a_lock_request_answered_500_is_waited_out(monkeypatch: pytest.MonkeyPatch,
                                                   caplog: pytest.LogCaptureFixture) -> None:
    from flows.run import locks

    pauses: list[float] = []

    def no_wait(event: Any, seconds: float) -> bool:
        pauses.append(seconds)
        return False

    monkeypatch.setattr(locks, "wait_event", no_wait)
    client = HiccupLimits([500, 500])
    with caplog.at_level(logging.WARNING, "test-hiccup"):
        lease, _ = locks.acquire(["a"], str(uuid.uuid4()), timeout=60, lease=60,
                                 logger=logging.getLogger("test-hiccup"), client=client)
    assert lease == "lease-1" and client.calls == 3 and pauses == [1.0, 2.0]
    assert "The Prefect server answered 500 while taking the locks" in caplog.text
    # a refusal that is not a hiccup (422) is not asked again
    with pytest.raises(locks.LockError, match="refused the locks: 422"):
        locks.acquire(["a"], str(uuid.uuid4()), timeout=60, lease=60, logger=logging.getLogger("t"),
                      client=HiccupLimits([422]))
