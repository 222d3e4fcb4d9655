"""Shared fixtures: fake AWS credentials for every test, moto, moto's server, one Prefect test harness, and the
one fake clock.

Fixture names mean one thing in every test file: ``clients`` is a ClientFactory inside a fresh function-scoped moto
mock; ``module_clients`` is one ClientFactory inside one moto mock for a whole module (``module_moto`` is that
mock, for ``reset()``), for files where making boto3 clients per test is the slow part; ``fake_clock`` is a
:class:`FakeClock`.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
import threading

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import boto3
import pytest
from moto import mock_aws

from flows.emulator import FAKE_ENV, REAL_ENV, moto_server
from flows.run.local_server import free_port
from tasks.kit.aws import AwsTarget, ClientFactory
from tasks.kit.polling import Clock

REGION = "us-east-1"
#: moto's settings for every in-process mock made here: Lambda runs without Docker
MOTO_CONFIG: Any = {"lambda": {"use_docker": False}}


@dataclass
class FakeClock:
    """A fake monotonic clock: time moves only when the code sleeps, by exactly the time slept.

    ``sleeps`` lists every sleep; ``on_sleep(t)`` (if set) is called after each, with the new time, so a test can
    change the world meanwhile. Pass ``.clock`` (a :class:`tasks.kit.polling.Clock`) to the code under test.
    """

    t: float = 0.0
    on_sleep: Callable[[float], None] | None = None
    sleeps: list[float] = field(default_factory=list)

    def now(self) -> float:
        return self.t

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.t += seconds
        if self.on_sleep:
            self.on_sleep(self.t)

    @property
    def clock(self) -> Clock:
        return Clock(now=self.now, sleep=self.sleep)


@contextlib.contextmanager
def failing_calls(client: Any, faults: dict[str, str]) -> Iterator[None]:
    """While the block runs, each operation named (``"GetJobRun"``) fails on ``client`` with that AWS error code
    and the message ``injected``, as botocore raises it once its retries are used up (a ``before-call`` hook)."""
    from botocore.exceptions import ClientError

    def fail(model: Any, **_: Any) -> None:
        if model.name in faults:
            response: Any = {"Error": {"Code": faults[model.name], "Message": "injected"},
                             "ResponseMetadata": {"HTTPStatusCode": 400, "RequestId": "req-1"}}
            raise ClientError(response, model.name)

    event = f"before-call.{client.meta.service_model.endpoint_prefix}"
    client.meta.events.register(event, fail, unique_id="failing-calls")
    try:
        yield
    finally:
        client.meta.events.unregister(event, unique_id="failing-calls")


@pytest.fixture
def fake_clock() -> FakeClock:
    return FakeClock()


def run_step(step: Any, clients: ClientFactory, clock: FakeClock, **context: Any) -> Any:
    """Run a step (a validated model) through its registered runner, on a fresh context with the fake clock."""
    from tasks.kit.step import REGISTRY, StepContext

    ctx = StepContext(clients=clients, case_name="case", run_id="run-1", label=step.name or step.kind,
                      clock_override=clock.clock, **context)
    return REGISTRY[step.kind].run(step, ctx)


def use_fake_aws_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fake credentials and region; no profile, no endpoint (general or per service) unless a test sets one."""
    for key in (*REAL_ENV, *(k for k in os.environ if k.startswith("AWS_ENDPOINT_URL"))):
        monkeypatch.delenv(key, raising=False)
    for key, value in FAKE_ENV.items():
        monkeypatch.setenv(key, value)


@pytest.fixture(autouse=True)
def fake_aws_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No test can reach a real account: fake credentials, no profile, no endpoint unless a test sets one."""
    use_fake_aws_env(monkeypatch)


@pytest.fixture
def aws() -> Iterator[None]:
    """moto's in-process mock of every AWS service."""
    with mock_aws(config=MOTO_CONFIG):
        yield


@pytest.fixture(scope="module")
def module_moto() -> Iterator[Any]:
    """One moto mock for a whole module (call ``module_moto.reset()`` for an empty account), with the fake
    environment set for as long as it lives (the autouse ``fake_aws_env`` is per test)."""
    with pytest.MonkeyPatch.context() as mp:
        use_fake_aws_env(mp)
        with mock_aws(config=MOTO_CONFIG) as mock:
            yield mock


@pytest.fixture(scope="module")
def module_clients(module_moto: Any) -> ClientFactory:
    """One client factory inside ``module_moto`` for a whole module (making boto3 clients is the slow part)."""
    return ClientFactory(AwsTarget(region=REGION))


@pytest.fixture
def clients(aws: None) -> ClientFactory:
    return ClientFactory(AwsTarget(region=REGION))


@pytest.fixture
def fresh_clients(module_moto: Any, module_clients: ClientFactory) -> ClientFactory:
    """``module_clients`` on an empty account (the module's mock reset): a fresh account per test, without making
    new boto3 clients per test."""
    module_moto.reset()
    return module_clients


@pytest.fixture
def s3(clients: ClientFactory):
    return clients.client("s3")


@pytest.fixture
def bucket(s3) -> str:
    s3.create_bucket(Bucket="test-bucket")
    return "test-bucket"


def migrated_prefect_db(target: Path) -> bool:
    """Put a copy of an empty, migrated Prefect database at ``target`` (a server's ``prefect.db``), if this machine
    has one for this Prefect version (see :func:`keep_migrated_prefect_db`). A server started on it skips the
    migrations (about 8 s of its start here); without one, the server migrates as usual. True when copied."""
    template = _migrated_template()
    if not template.exists():
        return False
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(template, target)
    return True


def keep_migrated_prefect_db(db: Path) -> None:
    """Keep a consistent copy of ``db`` (a just-started server's database, migrated and still empty) as this
    machine's template, written atomically so concurrent sessions (pytest-xdist workers) never see half a file."""
    import sqlite3

    template = _migrated_template()
    if template.exists():
        return
    partial = template.with_name(f"{template.name}.{os.getpid()}.partial")
    source, copy = sqlite3.connect(db), sqlite3.connect(partial)
    try:
        source.backup(copy)
    finally:
        source.close()
        copy.close()
    os.replace(partial, template)


def _migrated_template() -> Path:
    import tempfile

    import prefect

    return Path(tempfile.gettempdir()) / f"pipeline-test-prefect-{prefect.__version__}-migrated.db"


@pytest.fixture(autouse=True)
def _moto_checks_no_iam_after_a_test() -> Iterator[None]:
    """moto's IAM enforcement (``POST /moto-api/reset-auth``) is this process's: a test that turns it on and fails
    to turn it off would make every later test of the worker fail with InvalidClientTokenId. Off after each test."""
    yield
    from moto import settings
    from moto.core.authorization import ActionAuthenticatorMixin

    if settings.INITIAL_NO_AUTH_ACTION_COUNT != float("inf"):
        settings.INITIAL_NO_AUTH_ACTION_COUNT = float("inf")
        ActionAuthenticatorMixin.request_count = 0


@pytest.fixture
def chromium() -> str:
    """The chromium binary (Debian's package) for the browser tests: skipped without it on a workstation, failed
    in CI (CI set), where the browser tests must run (.ci/run installs it)."""
    binary = shutil.which("chromium") or shutil.which("chromium-browser")
    if binary:
        return binary
    if os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no"):
        pytest.fail("chromium is not installed but CI is set: the browser tests must run in CI "
                    "(install Debian's chromium package, as .ci/run does)")
    pytest.skip("chromium is not installed (Debian: apt-get install chromium); in CI (CI set) this test fails")


@pytest.fixture(scope="session")
def prefect_harness(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """One Prefect server for the whole session (a subprocess on a free port, on a database of its own); yields its
    API URL. What ``prefect.testing.utilities.prefect_test_harness`` does, with two differences: the database
    starts from this machine's migrated template when there is one, and the logs and events still queued at the
    end are given 10 s, not forever (under pytest-xdist its unbounded drain once hung a worker's last teardown)."""
    from prefect.context import _temporary_global_settings_context, get_settings_context
    from prefect.server.api.server import SubprocessASGIServer
    from prefect.settings import PREFECT_API_URL, PREFECT_SERVER_DATABASE_CONNECTION_URL, temporary_settings

    from flows.run.command import drain_prefect_workers

    db = tmp_path_factory.mktemp("prefect-harness") / "prefect.db"
    migrated = migrated_prefect_db(db)
    with contextlib.ExitStack() as stack:
        stack.enter_context(temporary_settings({PREFECT_SERVER_DATABASE_CONNECTION_URL: f"sqlite+aiosqlite:///{db}"}))
        server = SubprocessASGIServer(port=free_port())
        prior = SubprocessASGIServer._instances.get(None)
        # code that asks for the ephemeral server during a run finds this one, not a second one
        SubprocessASGIServer._instances[None] = server
        # its output (errors only: uvicorn's --log-level error) into server.log beside its database, kept by pytest
        # with the session's other temporary folders, for a failure's post-mortem
        with _stderr_to(db.parent / "server.log"):
            server.start(timeout=90)
        if not migrated:
            keep_migrated_prefect_db(db)
        stack.enter_context(temporary_settings({PREFECT_API_URL: server.api_url}))
        stack.enter_context(_temporary_global_settings_context(get_settings_context()))
        try:
            yield server.api_url
        finally:
            drain_prefect_workers(timeout=10)
            server.stop()
            if prior is not None:
                SubprocessASGIServer._instances[None] = prior
            else:
                SubprocessASGIServer._instances.pop(None, None)


def thread_stacks() -> str:
    """Every thread's stack in this process, for the message of a test whose wait ran out (where is it stuck?)."""
    import traceback

    names = {t.ident: t.name for t in threading.enumerate()}
    return "\n".join(f"--- {names.get(ident, ident)}\n" + "".join(traceback.format_stack(frame))
                     for ident, frame in sys._current_frames().items())


@contextlib.contextmanager
def _stderr_to(path: Path) -> Iterator[None]:
    """While inside, this process's stderr (file descriptor 2, which a subprocess started meanwhile inherits) is
    ``path``."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with path.open("ab") as log:
            os.dup2(log.fileno(), 2)
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)


@pytest.fixture(scope="session")
def moto_endpoint() -> Iterator[str]:
    """moto's threaded server on a free loopback port, for end-to-end tests."""
    with moto_server() as endpoint:
        yield endpoint


@pytest.fixture
def emulated_s3(moto_endpoint: str):
    """An S3 client on moto's server (state persists across tests in the session: use unique names)."""
    return boto3.client("s3", endpoint_url=moto_endpoint, region_name=REGION)


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    """A folder with a couple of small local test files."""
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "orders.csv").write_text("id,amount\n1,10\n2,20\n")
    (tmp_path / "data" / "customers.csv").write_text("id,name\n1,Ana\n")
    return tmp_path


@pytest.fixture(autouse=True)
def work_in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Run every test in its own folder, so evidence packs (written under ./evidence) never land in the repo."""
    monkeypatch.chdir(tmp_path)


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Under ``pytest -n 2 --dist loadgroup``, tests marked ``@pytest.mark.xdist_group("heavy-processes")`` (they
    start many processes of their own) go to one worker, one after the other. pytest-xdist 3.8.0 marks a group by
    setting ``item._nodeid``, which pytest 9.2 no longer reads; this sets the node id's ``@group`` suffix that its
    scheduler looks for (a no-op without --dist loadgroup)."""
    if not getattr(config.option, "loadgroup", False):
        return
    from _pytest.nodeid import NodeId

    for item in items:
        names = sorted({str(m.args[0] if m.args else m.kwargs.get("name", "default"))
                        for m in item.iter_markers("xdist_group")})
        if names and not item.nodeid.endswith("@" + "_".join(names)):
            item._id = NodeId.parse(f"{item.nodeid}@{'_'.join(names)}")  # type: ignore[attr-defined]


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """How many (AWS call, fault) pairs tests/test_faults.py covered, in the summary (CI does not pass -s)."""
    def pairs(*outcomes: str) -> set[str]:
        reports = [r for outcome in outcomes for r in terminalreporter.stats.get(outcome, [])]
        return {value for r in reports for key, value in getattr(r, "user_properties", ()) if key == "fault_pair"}

    planned, broken = pairs("passed", "failed", "error"), pairs("failed", "error")
    if planned:
        terminalreporter.write_line(f"fault injection: {len(planned - broken)} of {len(planned)} (AWS call, fault) "
                                    "pairs covered")



class RunProgress:
    """A progress line every :attr:`every` seconds of a test run, for CI logs and terminals where dots say little:
    ``progress: 120/412 tests done, 1 failed, 95 s; running: tests/test_deploy.py::test_x (62 s)``, and a line as
    soon as a test fails (``progress: failed tests/...``). A plugin on the controller only (pytest-xdist's workers
    report to it), registered by :func:`pytest_configure`; the dots and pytest's closing summary line stay as they
    are. ``PIPELINE_TEST_PROGRESS_S`` sets the interval (default 30; 0 turns it off)."""

    def __init__(self, reporter: Any, every: float, clock: Callable[[], float] | None = None) -> None:
        import time

        self.reporter, self.every, self.clock = reporter, every, clock or time.monotonic
        self.started = self.last = self.clock()
        self.done: set[str] = set()
        self.failed: set[str] = set()
        self.running: dict[str, float] = {}

    def line(self, text: str) -> None:
        if getattr(self.reporter, "_width_of_current_line", 0):  # after a row of dots
            self.reporter.write("\n")
        self.reporter.write_line(f"progress: {text}")

    def pytest_runtest_logstart(self, nodeid: str) -> None:
        if not self.running and not self.done:
            self.last = self.clock()  # the first line comes `every` seconds into the tests, not the collection
        self.running.setdefault(nodeid, self.clock())

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        if report.failed and report.nodeid not in self.failed:
            self.failed.add(report.nodeid)
            self.line(f"failed {report.nodeid} ({report.when}, at {self.clock() - self.started:.0f} s)")
        if report.when == "teardown":
            self.done.add(report.nodeid)
            self.running.pop(report.nodeid, None)
        now = self.clock()
        if now - self.last >= self.every:
            self.last = now
            total = getattr(self.reporter._session, "testscollected", 0) or "?"
            longest = sorted(self.running.items(), key=lambda item: item[1])[:2]
            running = ", ".join(f"{nodeid} ({now - since:.0f} s)" for nodeid, since in longest)
            self.line(f"{len(self.done)}/{total} tests done, {len(self.failed)} failed, {now - self.started:.0f} s"
                      + (f"; running: {running}" if running else ""))


@pytest.hookimpl(trylast=True)
def pytest_configure(config: pytest.Config) -> None:
    every = float(os.environ.get("PIPELINE_TEST_PROGRESS_S") or 30)
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    if every > 0 and reporter is not None and not hasattr(config, "workerinput"):
        config.pluginmanager.register(RunProgress(reporter, every), "pipeline-test-progress")
