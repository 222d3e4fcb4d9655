"""Helpers the tests share, imported under this one name (``from tests.helpers import FakeClock``): the fake clock,
fault injection on a boto3 client, running a step through its registered runner, the fake AWS environment, the
migrated Prefect database template, and the small builders several test files use (a CLI case, a minimal step of
every kind, Athena results through moto's API, the environment of a CLI against moto's server).

Fixtures live in ``tests/fixtures/`` (loaded as plugins by ``tests/conftest.py``); no test module imports another.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest
import requests
import yaml
from moto.athena.models import athena_backends
from moto.core import DEFAULT_ACCOUNT_ID

from flows.emulator import FAKE_ENV, REAL_ENV, emulator_env
from flows.evidence.results import CaseResult
from tasks.kit.aws import ClientFactory
from tasks.kit.polling import Clock
from tasks.kit.step import REGISTRY, StepBase, StepContext

ROOT = Path(__file__).resolve().parent.parent
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


def run_step(step: Any, clients: ClientFactory, clock: FakeClock, **context: Any) -> Any:
    """Run a step (a validated model) through its registered runner, on a fresh context with the fake clock."""
    ctx = StepContext(clients=clients, case_name="case", run_id="run-1", label=step.name or step.kind,
                      clock_override=clock.clock, **context)
    return REGISTRY[step.kind].run(step, ctx)


def use_fake_aws_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fake credentials and region; no profile, no endpoint (general or per service) unless a test sets one."""
    for key in (*REAL_ENV, *(k for k in os.environ if k.startswith("AWS_ENDPOINT_URL"))):
        monkeypatch.delenv(key, raising=False)
    for key, value in FAKE_ENV.items():
        monkeypatch.setenv(key, value)


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


def thread_stacks() -> str:
    """Every thread's stack in this process, for the message of a test whose wait ran out (where is it stuck?)."""
    import traceback

    names = {t.ident: t.name for t in threading.enumerate()}
    return "\n".join(f"--- {names.get(ident, ident)}\n" + "".join(traceback.format_stack(frame))
                     for ident, frame in sys._current_frames().items())


# ------------------------------------------------------------------ builders several test files use
def write_cli_case(folder: Path, bucket: str, **step_overrides: Any) -> Path:
    (folder / "data").mkdir(exist_ok=True)
    (folder / "data" / "orders.csv").write_text("id,amount\n1,10\n")
    case = {
        "case": "CLI case",
        "variables": {"bucket": bucket},
        "steps": [
            {"kind": "upload", "name": "land", "files": ["data/orders.csv"], "bucket": "{{ bucket }}",
             "key": "in/orders.csv"},
            {"kind": "expect_objects", "name": "landed", "bucket": "{{ bucket }}", "keys": ["in/orders.csv"],
             "min_size": 1, "wait": {"timeout": 2}, **step_overrides},
        ],
    }
    path = folder / "case.yaml"
    path.write_text(yaml.safe_dump(case, sort_keys=False))
    return path


def read_artifacts(flow_run_id: str) -> list[Any]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    async def go() -> list[Any]:
        async with get_client() as client:
            return await client.read_artifacts(
                artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id])))

    return asyncio.run(go())


def assert_complete_pack(result: CaseResult, steps: int) -> None:
    """The run left an intact evidence pack under ./evidence with one JUnit testcase per step."""
    import xml.etree.ElementTree as ET

    from flows.evidence.pack.verify import verify

    assert result.evidence_dir is not None
    folder = Path(result.evidence_dir)
    assert folder.parent.parent == Path.cwd() / "evidence"
    assert {p.name for p in folder.iterdir()} == {"report.json", "report.md", "report.html", "junit.xml",
                                                  "manifest.json"}
    assert verify(folder) == []
    assert len(list(ET.parse(folder / "junit.xml").getroot().iter("testcase"))) == steps
    report = json.loads((folder / "report.json").read_text(encoding="utf-8"))
    assert report["status"] == result.status and report["run"]["flow_run_id"] == result.flow_run_id


def env_for(endpoint: str, api_url: str | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "PREFECT_"))}
    env.update(emulator_env(endpoint), PYTHONPATH=str(ROOT), PREFECT_SERVER_ANALYTICS_ENABLED="false",
               PYTHONIOENCODING="utf-8")
    if api_url:
        env["PREFECT_API_URL"] = api_url
    return env


def temp_server_env(env: dict[str, str], home: Path) -> dict[str, str]:
    """The CLI's own temporary server, with a Prefect home of its own (not the user's database), on a migrated
    empty database when this machine has one (what a user's second run finds)."""
    migrated_prefect_db(home / "prefect.db")
    return {**env, "PREFECT_HOME": str(home)}


@dataclass
class Minimal:
    """A minimal valid step of a kind (with its undo switched on, for kinds that change state), and what the
    account and spec folder need for its runner to get as far as the change."""

    data: dict[str, Any]
    seed: Callable[[ClientFactory, Path], None] = lambda clients, spec_dir: None


def _seed_upload(clients: ClientFactory, spec_dir: Path) -> None:
    clients.client("s3").create_bucket(Bucket="contract-bucket")
    (spec_dir / "orders.csv").write_text("id,amount\n1,10\n")


def _seed_parameter(clients: ClientFactory, spec_dir: Path) -> None:
    clients.client("ssm").put_parameter(Name="/contract/p", Value="before", Type="String")


MINIMAL: dict[str, Minimal] = {
    "upload": Minimal({"files": ["orders.csv"], "bucket": "contract-bucket", "key_prefix": "in/", "cleanup": True},
                      _seed_upload),
    "expect_objects": Minimal({"bucket": "contract-bucket", "prefix": "out/"}),
    "invoke_lambda": Minimal({"function": "ingest"}),
    "set_parameters": Minimal({"parameters": [{"name": "/contract/p", "value": "after"}]}, _seed_parameter),
    "delete_parameters": Minimal({"names": ["/contract/p"]}, _seed_parameter),
    "expect_parameters": Minimal({"parameters": [{"name": "/contract/p", "equals": "before"}]}),
    "athena_query": Minimal({"sql": "SELECT 1"}),
    "expect_dynamodb_items": Minimal({"table": "contract-table", "key": {"pk": "a"}}),
    "expect_queue_depth": Minimal({"queue": "contract-dlq", "messages": 0}),
    "expect_alarm_state": Minimal({"alarm": "contract-alarm", "state": "OK"}),
    "expect_log_events": Minimal({"log_group": "/contract/logs"}),
    "glue_job": Minimal({"job": "transform"}),
    "glue_crawler": Minimal({"crawler": "curated"}),
    "step_functions": Minimal({"state_machine": "ingest"}),
}


def minimal(kind: str) -> StepBase:
    return REGISTRY[kind].model.model_validate({"kind": kind, **MINIMAL[kind].data})


def flow_spec(*steps: dict[str, Any], name: str = "Flow test") -> dict[str, Any]:
    return {"case": name, "variables": {"bucket": "flow-bucket"}, "aws": {"region": "us-east-1"},
            "steps": list(steps)}


UPLOAD = {"kind": "upload", "name": "land", "files": ["data/orders.csv"], "bucket": "{{ bucket }}",
          "key_prefix": "in/{{ flow_run_id }}/", "cleanup": True}


def read_task_runs(flow_run_id: str) -> list[Any]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    async def go() -> list[Any]:
        async with get_client() as client:
            return await client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))

    return asyncio.run(go())


def upload_case(folder: Path, name: str, bucket: str = "suite-bucket", *, expect: str | None = None,
                tags: list[str] | None = None, **extra: Any) -> Path:
    """A small case: land a file under its own prefix, then expect ``expect`` (default: the landed file)."""
    (folder / "data").mkdir(parents=True, exist_ok=True)
    (folder / "data" / "orders.csv").write_text("id,amount\n1,10\n")
    prefix = f"in/{name}/"
    case = {"case": name, "tags": tags or [], "variables": {"bucket": bucket},
            "steps": [
                {"kind": "upload", "name": "land", "files": ["data/orders.csv"], "bucket": "{{ bucket }}",
                 "key_prefix": prefix, "cleanup": True},
                {"kind": "expect_objects", "name": "landed", "bucket": "{{ bucket }}",
                 "keys": [expect or f"{prefix}orders.csv"], "wait": {"timeout": 0.3, "initial": 0.05}, **extra}]}
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(case, sort_keys=False))
    return path


# ------------------------------------------------------------------ Athena on moto (tests/test_athena*.py)
MOTO_API = "http://motoapi.amazonaws.com/moto-api"


BUCKET = "athena-results"


OUTPUT = f"s3://{BUCKET}/results/"


def backend() -> Any:
    return athena_backends[DEFAULT_ACCOUNT_ID][REGION]


def manual_states(times: int) -> None:
    """QUEUED -> RUNNING -> SUCCEEDED, each step after ``times`` GetQueryExecution calls (moto's state manager)."""
    response = requests.post(
        f"{MOTO_API}/state-manager/set-transition",
        json={"model_name": "athena::execution", "transition": {"progression": "manual", "times": times}},
    )
    assert response.status_code == 201


def inject(columns: list[tuple[str, str]], rows: list[list[str | None]], header: bool = True) -> None:
    """Queue a result for the next query through moto's API; Athena's header row first, like Athena."""
    data = ([[name for name, _ in columns]] if header else []) + rows
    result = {
        "rows": [{"Data": [{} if v is None else {"VarCharValue": v} for v in row]} for row in data],
        "column_info": [
            {"Name": n, "Label": n, "Type": t, "Nullable": "UNKNOWN", "CaseSensitive": t == "varchar"}
            for n, t in columns
        ],
    }
    response = requests.post(f"{MOTO_API}/static/athena/query-results", json={"region": REGION, "results": [result]})
    assert response.status_code == 201


def athena_context(clients: ClientFactory, spec_dir: Path, clock: FakeClock | None = None) -> StepContext:
    return StepContext(
        clients=clients, case_name="case", run_id="run-1", label="athena", spec_dir=spec_dir,
        render=lambda text: text.replace("{{ table }}", "orders"), clock_override=clock.clock if clock else None,
    )
