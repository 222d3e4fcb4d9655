"""Deployments: prefect.yaml (one per example case), `prefect --no-prompt deploy --all` against a real
`prefect server start`, a run of a deployment by a process worker, deployments/serve.py and the team file.

The end-to-end test starts every process in a process group of its own (a new session on POSIX) and stops
each group (terminate, then kill), then checks that none of them, nor anything they started, is left.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any, Iterator
from zoneinfo import ZoneInfo

import pytest
import yaml

from flows.run.local_server import free_port
from tests.helpers import migrated_prefect_db

ROOT = Path(__file__).resolve().parent.parent
PREFECT_YAML = ROOT / "prefect.yaml"
ECS_YAML = ROOT / "deployments" / "prefect-ecs.yaml"
ENTRYPOINT = "flows/pipeline_test.py:pipeline_test"
DEMO_ENTRYPOINT = "flows/demo.py:pipeline_demo"
SUITE_ENTRYPOINT = "flows/suite/flow.py:pipeline_test_suite"
FLOW_NAME = "pipeline-test"
POOL = "pipeline-test"
HOME_PLACEHOLDER = "{{ $PIPELINE_TEST_HOME }}"
ECS_ENV = {
    "PIPELINE_TEST_IMAGE": "123456789012.dkr.ecr.eu-west-1.amazonaws.com/pipeline-test:test",
    "PIPELINE_TEST_ECS_CLUSTER": "pipeline-test",
    "PIPELINE_TEST_VPC_ID": "vpc-0123456789abcdef0",
    "PIPELINE_TEST_TASK_ROLE_ARN": "arn:aws:iam::123456789012:role/pipeline-test-task",
    "PIPELINE_TEST_EXECUTION_ROLE_ARN": "arn:aws:iam::123456789012:role/pipeline-test-execution",
}


def load_yaml(path: Path) -> dict[str, Any]:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def deployments_of(path: Path) -> dict[str, dict[str, Any]]:
    return {d["name"]: d for d in load_yaml(path)["deployments"]}


def full_name(name: str, deployment: dict[str, Any]) -> str:
    """flow/deployment, as the server and the CLI name a deployment."""
    flow = {ENTRYPOINT: FLOW_NAME, DEMO_ENTRYPOINT: "pipeline-test-demo",
            SUITE_ENTRYPOINT: "pipeline-test-suite"}[deployment["entrypoint"]]
    return f"{flow}/{name}"


def case_deployments_of(path: Path) -> dict[str, dict[str, Any]]:
    """The deployments that run one case (the flow pipeline-test, with its spec), not the demo's, not a suite's
    (nor `suite-case`, which a suite with `run_as: deployment` starts with a case of its own)."""
    return {n: d for n, d in deployments_of(path).items()
            if d["entrypoint"] == ENTRYPOINT and "spec" in d.get("parameters", {})}


def serve_module() -> Any:
    spec = importlib.util.spec_from_file_location("pipeline_test_serve", ROOT / "deployments" / "serve.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# --------------------------------------------------------------------------------- prefect.yaml, statically
def test_one_deployment_per_example_case_with_schedule_pool_and_limit() -> None:
    from flows.spec.load import load_spec

    config = load_yaml(PREFECT_YAML)
    assert config["pull"] == [{"prefect.deployments.steps.set_working_directory": {"directory": HOME_PLACEHOLDER}}]
    deployments = list(case_deployments_of(PREFECT_YAML).values())
    cases = {p.relative_to(ROOT).as_posix() for p in (ROOT / "examples" / "cases").glob("*.y*ml")}
    specs = [d["parameters"]["spec"] for d in deployments]
    assert cases <= set(specs), f"example cases without a deployment: {sorted(cases - set(specs))}"
    assert len(set(specs)) == len(specs), "two deployments of one case: their runs could overlap (the limit is per deployment)"
    assert len({d["name"] for d in deployments}) == len(deployments)
    for d in deployments:
        assert d["entrypoint"] == ENTRYPOINT and d["work_pool"]["name"] == POOL
        assert d["concurrency_limit"] == {"limit": 1, "collision_strategy": "ENQUEUE"}
        assert d["description"] and "pipeline-test" in d["tags"]
        assert d["schedules"], f"{d['name']}: no schedule"
        for schedule in d["schedules"]:
            assert schedule["cron"] and schedule["slug"]
            ZoneInfo(schedule["timezone"])  # a stated, real time zone
        # the case is valid, with the deployment's variables
        load_spec(ROOT / d["parameters"]["spec"], d["parameters"].get("variables"))
    # the nightly suite runs every example case; suite-case is what a suite's `run_as: deployment` starts
    from flows.suite.spec import load_suite

    everything = deployments_of(PREFECT_YAML)
    suites = [d for d in everything.values() if d["entrypoint"] == SUITE_ENTRYPOINT]
    assert [d["name"] for d in suites] == ["nightly-regression"] and suites[0]["schedules"]
    plan = load_suite(ROOT / suites[0]["parameters"]["suite"])
    assert {c.path.resolve() for c in plan.cases if c.row is None} == {ROOT / c for c in cases}
    assert [c.name for c in plan.cases if c.row] == ["Source ingestion [orders]", "Source ingestion [returns]"]
    assert everything["suite-case"]["entrypoint"] == ENTRYPOINT and not everything["suite-case"].get("schedules")


def test_the_demo_deployment_runs_the_example_case_on_its_own_emulator() -> None:
    from flows.demo import pipeline_demo

    demo = deployments_of(PREFECT_YAML)["demo"]
    assert demo["entrypoint"] == DEMO_ENTRYPOINT and demo["work_pool"]["name"] == POOL
    assert (ROOT / demo["parameters"]["case"]).is_file()
    assert set(demo["parameters"]) <= set(pipeline_demo.parameters.properties)
    assert not demo.get("schedules")  # it proves the set-up, not a pipeline: nothing runs it unasked


def test_project_folder_placeholder_resolves_at_deploy_time_or_else_at_run_time(monkeypatch) -> None:
    """What the pull step relies on: `prefect deploy` fills {{ $VAR }} from its environment when it is set,
    and keeps the placeholder for the worker's environment when it is not (Windows paths pass as they are)."""
    from prefect.utilities.templating import apply_values

    step = load_yaml(PREFECT_YAML)["pull"]
    monkeypatch.setenv("PIPELINE_TEST_HOME", r"C:\Users\Ana Lima\pipeline-test")
    resolved = apply_values(step, {}, remove_notset=False)  # as `prefect deploy` does with pull steps
    assert resolved[0]["prefect.deployments.steps.set_working_directory"]["directory"] == \
        r"C:\Users\Ana Lima\pipeline-test"
    monkeypatch.delenv("PIPELINE_TEST_HOME")
    assert apply_values(step, {}, remove_notset=False) == step


async def _read_deployment_id(api: str, name: str) -> Any:
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings({PREFECT_API_URL: api}):
        async with get_client() as client:
            return (await client.read_deployment_by_name(name)).id


async def _create_run(api: str, deployment_id: Any, parameters: dict[str, Any]) -> Any:
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings({PREFECT_API_URL: api}):
        async with get_client() as client:
            return await client.create_flow_run_from_deployment(deployment_id, parameters=parameters)


async def _read_run_tree(api: str, flow_run_id: Any) -> tuple[Any, list[Any], list[Any], list[Any]]:
    """A flow run, its subflow runs, and the logs and artifacts of all of them."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        ArtifactFilter,
        ArtifactFilterFlowRunId,
        FlowRunFilter,
        FlowRunFilterParentFlowRunId,
        LogFilter,
        LogFilterFlowRunId,
    )
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings({PREFECT_API_URL: api}):
        async with get_client() as client:
            run = await client.read_flow_run(flow_run_id)
            children = await client.read_flow_runs(
                flow_run_filter=FlowRunFilter(parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[flow_run_id])))
            ids = [flow_run_id, *(c.id for c in children)]
            logs = await client.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=ids)))
            artifacts = await client.read_artifacts(
                artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=ids)))
            return run, children, logs, artifacts


# ------------------------------------------------------------------------------------------ serve.py
@pytest.mark.e2e  # starts a process (tests/fixtures/tiers.py)
def test_serve_builds_the_deployments_of_prefect_yaml() -> None:
    serve = serve_module()
    declared = deployments_of(PREFECT_YAML)
    built = serve.build_deployments()
    assert [d.name for d in built] == list(declared)
    for d in built:
        want = declared[d.name]
        assert d.entrypoint == want["entrypoint"]
        assert f"{d.flow_name}/{d.name}" == full_name(d.name, want)
        assert d.parameters == want["parameters"] and d.tags == want["tags"]
        assert d.description == want["description"]
        if "concurrency_limit" in want:
            assert d.concurrency_limit == 1 and d.concurrency_options.collision_strategy.value == "ENQUEUE"
        assert d.work_pool_name is None  # served: no work pool
        got = [(s.schedule.cron, s.schedule.timezone, s.active, s.slug) for s in d.schedules]
        assert got == [(s["cron"], s["timezone"], s.get("active", True), s["slug"]) for s in want.get("schedules", [])]


@pytest.mark.e2e  # starts a process (tests/fixtures/tiers.py)
def test_serve_main_lists_and_never_serves_without_a_server(monkeypatch, capsys) -> None:
    from prefect.settings import PREFECT_API_URL, temporary_settings

    serve = serve_module()
    calls: list[Any] = []
    monkeypatch.setattr("prefect.serve", lambda *a, **k: calls.append(a))
    cwd = os.getcwd()
    try:
        assert serve.main(["--list"]) == 0
        assert "orders-ingestion: examples/cases/orders_ingestion.yaml - 30 6 * * 1-5 UTC (off)" in capsys.readouterr().out
        with temporary_settings({PREFECT_API_URL: None}):
            assert serve.main([]) == 2
        assert "No Prefect server configured" in capsys.readouterr().err
    finally:
        os.chdir(cwd)
    assert calls == []


# ----------------------------------------------------------------------------------------- the team file
def test_team_file_has_the_same_cases_parameters_and_schedules() -> None:
    local, team = case_deployments_of(PREFECT_YAML), deployments_of(ECS_YAML)
    assert list(team) == list(local)
    for name, d in team.items():
        for key in ("entrypoint", "parameters", "schedules", "concurrency_limit", "tags"):
            assert d[key] == local[name][key], f"{name}: {key} differs from prefect.yaml"
        assert d["work_pool"]["name"] == "pipeline-test-ecs"
        variables = d["work_pool"]["job_variables"]
        assert variables["image"] == "{{ $PIPELINE_TEST_IMAGE }}"  # nothing account-specific in the file
    assert load_yaml(ECS_YAML)["pull"] == [
        {"prefect.deployments.steps.set_working_directory": {"directory": "/opt/pipeline-test"}}]
    assert "WORKDIR /opt/pipeline-test" in (ROOT / "deployments" / "Dockerfile").read_text()


# ----------------------------------------------------------------------------- processes, for the e2e test
def port_open(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def _live_pids_with_marker(marker: str) -> list[int]:
    """Linux: live processes (not zombies) whose environment holds ``marker`` (our temporary PREFECT_HOME):
    everything the test started and everything those started, even once re-parented."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            stat = (entry / "stat").read_text()
            if stat[stat.rindex(")") + 2] == "Z":
                continue
            if marker.encode() in (entry / "environ").read_bytes():
                found.append(int(entry.name))
        except (OSError, ValueError, IndexError):
            continue
    return found


class Processes:
    """Starts commands in process groups of their own, and stops every group it started."""

    def __init__(self, logs: Path, marker: str) -> None:
        self.logs = logs
        self.marker = marker
        self.started: list[tuple[str, subprocess.Popen[bytes]]] = []

    def start(self, name: str, args: list[str], env: dict[str, str], cwd: Path) -> subprocess.Popen[bytes]:
        group = ({"creationflags": subprocess.CREATE_NEW_PROCESS_GROUP} if os.name == "nt"  # type: ignore[attr-defined]
                 else {"start_new_session": True})
        log = open(self.logs / f"{name}.log", "wb")  # noqa: SIM115 - closed with the process
        proc = subprocess.Popen(args, env=env, cwd=cwd, stdin=subprocess.DEVNULL, stdout=log,
                                stderr=subprocess.STDOUT, **group)
        log.close()
        self.started.append((name, proc))
        return proc

    def log(self, name: str) -> str:
        return (self.logs / f"{name}.log").read_text(encoding="utf-8", errors="replace")

    def wait(self, name: str, proc: subprocess.Popen[bytes], timeout: float) -> None:
        """Wait for a command; it must succeed."""
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.stop(proc)
            pytest.fail(f"{name} did not finish in {timeout} s:\n{self.log(name)[-4000:]}")
        assert proc.returncode == 0, f"{name} exited {proc.returncode}:\n{self.log(name)[-4000:]}"

    def run(self, name: str, args: list[str], env: dict[str, str], cwd: Path, timeout: float = 60) -> str:
        self.wait(name, self.start(name, args, env, cwd), timeout)
        return self.log(name)

    @staticmethod
    def stop(proc: subprocess.Popen[bytes], grace: float = 15) -> None:
        """Terminate the process's group, wait, then kill what is left of it."""
        if os.name == "nt":
            if proc.poll() is None:
                proc.send_signal(signal.CTRL_BREAK_EVENT)  # type: ignore[attr-defined]
                try:
                    proc.wait(timeout=grace)
                except subprocess.TimeoutExpired:
                    pass
            subprocess.run(["taskkill", "/F", "/T", "/PID", str(proc.pid)], capture_output=True)
            proc.wait(timeout=10)
            return
        try:
            os.killpg(proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and (proc.poll() is None or _group_alive(proc.pid)):
            time.sleep(0.1)
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait(timeout=10)

    def stop_all(self) -> None:
        for _, proc in reversed(self.started):
            self.stop(proc)

    def leftovers(self) -> list[int]:
        """Processes still alive from what was started (Linux: found by the marker in their environment;
        elsewhere: the started processes themselves)."""
        if Path("/proc/self/environ").exists():
            return _live_pids_with_marker(self.marker)
        return [proc.pid for _, proc in self.started if proc.poll() is None]

    def kill_leftovers(self) -> None:
        """A safety net after a test: stop what was started, then SIGKILL whatever of it (or its children) lives on."""
        self.stop_all()
        for pid in self.leftovers():
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass


def _state_and_group(pid: int | str) -> tuple[str, int] | None:
    """Linux: the state letter (Z: a zombie) and the process group of ``pid``, from /proc (None when it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text()
        rest = fields[fields.rindex(")") + 2:].split()
        return rest[0], int(rest[2])
    except (OSError, ValueError, IndexError):
        return None


def _group_of(pid: int) -> int | None:
    found = _state_and_group(pid)
    return found[1] if found else None


def _group_alive(pgid: int) -> bool:
    if not Path("/proc").is_dir():
        try:
            os.killpg(pgid, 0)
            return True
        except (ProcessLookupError, PermissionError):
            return False
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            found = _state_and_group(entry.name)
            if found and found[1] == pgid and found[0] != "Z":
                return True
    return False


@pytest.fixture
def processes(tmp_path: Path) -> Iterator[Processes]:
    (tmp_path / "logs").mkdir()
    procs = Processes(tmp_path / "logs", marker=str(tmp_path / "prefect-home"))
    try:
        yield procs
    finally:  # a safety net: the test itself stops everything and checks
        procs.kill_leftovers()


@pytest.mark.skipif(not Path("/proc/self/environ").exists() or not shutil.which("setsid"),
                    reason="the leftover check reads /proc (Linux)")
@pytest.mark.e2e  # starts a process (tests/fixtures/tiers.py)
def test_the_process_helper_stops_groups_and_sees_what_escaped(tmp_path: Path) -> None:
    marker = str(tmp_path / "marker-home")
    procs = Processes(tmp_path, marker)
    env = {**os.environ, "PREFECT_HOME": marker}
    # a shell with a child in its group, and a grandchild that leaves the group (setsid)
    script = "sleep 60 & setsid sleep 61 & wait"
    proc = procs.start("sleepers", ["sh", "-c", script], env, tmp_path)
    deadline = time.monotonic() + 10
    # all three there, the grandchild already out of the group (else the group's SIGTERM may still reach it)
    while (len(procs.leftovers()) < 3 or all(_group_of(p) == proc.pid for p in procs.leftovers())) \
            and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(procs.leftovers()) == 3
    procs.stop_all()
    assert proc.poll() is not None
    escaped = procs.leftovers()
    assert len(escaped) == 1  # stopping the group cannot reach it; the check still sees it
    for pid in escaped:
        os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 5
    while procs.leftovers() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert procs.leftovers() == []


def wait_for_health(api_url: str, server: subprocess.Popen[bytes], procs: Processes, timeout: float = 90) -> float:
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if server.poll() is not None:
            pytest.fail(f"prefect server start exited {server.returncode}:\n{procs.log('server')[-4000:]}")
        try:
            with urllib.request.urlopen(f"{api_url}/health", timeout=2) as response:  # noqa: S310 - loopback
                if response.status == 200:
                    return time.monotonic() - started
        except OSError:
            pass
        time.sleep(0.25)
    pytest.fail(f"the server did not answer /api/health in {timeout} s:\n{procs.log('server')[-4000:]}")


# ------------------------------------------------------------------------------------- the e2e tests
class DeployedServer:
    """One `prefect server start` for the module's end-to-end tests, with the documented set-up done once: the work
    pool, then `prefect --no-prompt deploy --all`."""

    def __init__(self, home: Path) -> None:
        self.port = free_port()
        self.api = f"http://127.0.0.1:{self.port}/api"
        self.base = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "AWS_", "PIPELINE_TEST_"))}
        self.base.update(PREFECT_HOME=str(home), PREFECT_API_URL=self.api,
                         PREFECT_UI_API_URL=self.api, PREFECT_SERVER_ANALYTICS_ENABLED="false",
                         PYTHONIOENCODING="utf-8", PYTHONUTF8="1")
        self.timings: dict[str, float] = {}
        self.deploy_output = ""
        self.yaml_before = PREFECT_YAML.read_bytes()


@pytest.fixture(scope="module")
def deployed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DeployedServer]:
    """The server, its work pool and every deployment of prefect.yaml; on the way out, every process the module
    started is stopped, and nothing of them (nor anything they started) may be left."""
    tmp = tmp_path_factory.mktemp("deployed")
    (tmp / "logs").mkdir()
    procs = Processes(tmp / "logs", marker=str(tmp / "prefect-home"))
    server = DeployedServer(tmp / "prefect-home")
    # a migrated empty database (made by this session's test harness), as after a first start: saves ~8 s here
    migrated_prefect_db(tmp / "prefect-home" / "prefect.db")
    prefect = [sys.executable, "-m", "prefect"]
    try:
        proc = procs.start("server", [*prefect, "server", "start", "--host", "127.0.0.1", "--port", str(server.port)],
                           server.base, tmp)
        server.timings["server up"] = wait_for_health(server.api, proc, procs)
        # the documented steps: create the work pool first (deploy fails without it), then deploy everything
        t = time.monotonic()
        procs.run("pool", [*prefect, "work-pool", "create", POOL, "--type", "process"], server.base, ROOT)
        server.deploy_output = procs.run("deploy", [*prefect, "--no-prompt", "deploy", "--all"],
                                         {**server.base, "PIPELINE_TEST_HOME": str(ROOT)}, ROOT)
        server.timings["pool + deploy"] = time.monotonic() - t
        yield server
        procs.stop_all()
        assert all(p.poll() is not None for _, p in procs.started)
        assert procs.leftovers() == []
        assert not port_open(server.port)
    finally:  # a safety net
        procs.kill_leftovers()


@pytest.mark.e2e
@pytest.mark.xdist_group("deploy-server")  # under pytest-xdist: the module's tests on one worker (conftest.py)
def test_deploy_all_on_a_real_server_and_a_process_worker_runs_a_case(tmp_path: Path, processes: Processes,
                                                                      deployed: DeployedServer) -> None:
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    timings = dict(deployed.timings)
    t0 = time.monotonic()
    api, base, port = deployed.api, deployed.base, deployed.port
    prefect = [sys.executable, "-m", "prefect"]
    declared = deployments_of(PREFECT_YAML)
    # the UI is told this port's API (PREFECT_UI_API_URL), not 4200's
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/ui-settings", timeout=5) as response:  # noqa: S310
        assert json.loads(response.read())["api_url"] == api
    out = deployed.deploy_output
    assert out.count("successfully created") == len(declared), out
    assert PREFECT_YAML.read_bytes() == deployed.yaml_before  # deploy wrote nothing back

    async def read_deployments() -> dict[str, Any]:
        async with get_client() as client:
            return {name: await client.read_deployment_by_name(full_name(name, d)) for name, d in declared.items()}

    with temporary_settings({PREFECT_API_URL: api}):
        server_side = asyncio.run(read_deployments())
        for name, want in declared.items():
            got = server_side[name]
            assert got.entrypoint == want["entrypoint"] and got.work_pool_name == POOL
            assert got.description == want["description"] and got.tags == want["tags"]
            assert got.parameters == want["parameters"]
            # the project folder, stored when deploying (PIPELINE_TEST_HOME was set)
            assert got.pull_steps == [{"prefect.deployments.steps.set_working_directory": {"directory": str(ROOT)}}]
            if "concurrency_limit" in want:  # the cases' (the demo has none: each run has its own emulator)
                assert got.global_concurrency_limit.limit == want["concurrency_limit"]["limit"] == 1
                assert got.concurrency_options.collision_strategy.value == \
                    want["concurrency_limit"]["collision_strategy"]
            assert [(s.schedule.cron, s.schedule.timezone, s.active, s.slug) for s in got.schedules] == \
                [(s["cron"], s["timezone"], s.get("active", True), s["slug"]) for s in want.get("schedules", [])]

        # serve.py sees these work-pool deployments and would not serve over them
        serve = serve_module()
        twins = asyncio.run(serve.work_pool_twins(serve.build_deployments()))
        assert twins == [(full_name(name, d), POOL) for name, d in declared.items()]

    # two runs of the demo's deployment, by a process worker started in another folder with no AWS set-up at
    # all (the run starts its own emulator and fake pipeline): one passes, one with a broken pipeline fails
    demo = declared["demo"]
    demo_id = asyncio.run(_read_deployment_id(api, "pipeline-test-demo/demo"))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    t = time.monotonic()
    runs = {}
    for verdict, extra in (("pass", {}), ("fail", {"break_pipeline": True})):
        # the packs go to the test's folder rather than the project's evidence/
        extra = {**extra, "evidence_dir": str(tmp_path / f"evidence-{verdict}")}
        runs[verdict] = (asyncio.run(_create_run(api, demo_id, extra)), extra)
    # the ECS work pool for the team file is made meanwhile (its check comes after the runs)
    ecs_pool = processes.start("ecs-pool", [*prefect, "work-pool", "create", "pipeline-test-ecs",
                                            "--type", "ecs"], base, tmp_path)
    processes.run("worker", [*prefect, "worker", "start", "--pool", POOL, "--run-once", "--limit", "2"],
                  base, elsewhere, timeout=150)
    timings["2 demo runs by the worker"] = time.monotonic() - t
    worker_log = processes.log("worker")
    assert "set_working_directory" in worker_log

    for verdict, (flow_run, extra) in runs.items():
        run, case_runs, logs, artifacts = asyncio.run(_read_run_tree(api, flow_run.id))
        assert run.name.startswith("demo-") and run.parameters == {**demo["parameters"], **extra}
        # the subflow, its verdict put first in its name when it ended (the key history page shows it)
        verdict_name = "✅ passed · orders-ingestion-" if verdict == "pass" else "❌ FAILED · orders-ingestion-"
        assert [r.name[:len(verdict_name)] for r in case_runs] == [verdict_name]
        assert any(a.key == "case-orders-ingestion" for a in artifacts), [a.key for a in artifacts]
        # the case report names the deployment that ran it, though the case is a subflow run of the demo's
        report = next(a.data for a in artifacts if a.key == "case-orders-ingestion-report")
        assert "not run from a deployment" not in report and "- **deployment**: demo\n" in report, report
        assert (tmp_path / f"evidence-{verdict}" / "manifest.json").is_file()  # the pack, where it was told
        text = "\n".join(log.message for log in logs)
        # a failed case is a failure, not a crash: no traceback, no stray "NoneType: None", in the UI's logs
        assert "Traceback" not in text and "NoneType: None" not in text and "unexpected exception" not in text
        if verdict == "pass":
            assert run.state.is_completed() and case_runs[0].state.is_completed(), f"{run.state}\n{worker_log[-6000:]}"
        else:
            assert run.state.is_failed() and case_runs[0].state.is_failed(), f"{run.state}\n{worker_log[-6000:]}"
            assert "failed at step 4 'curated-rows-match'" in run.state.message
            assert "first_row.orders" in run.state.message
    assert "Traceback" not in worker_log and "NoneType: None" not in worker_log

    # the team file deploys too (onto the ECS pool: no run, there is no ECS here), its job variables known
    # to the ECS worker's template
    t = time.monotonic()
    processes.wait("ecs-pool", ecs_pool, timeout=60)
    out = processes.run("deploy-ecs", [*prefect, "--no-prompt", "deploy", "--all", "--prefect-file",
                                       str(ECS_YAML.relative_to(ROOT))], {**base, **ECS_ENV}, ROOT)
    timings["ECS pool + deploy"] = time.monotonic() - t

    async def read_team() -> tuple[dict[str, Any], Any]:
        async with get_client() as client:
            pool = await client.read_work_pool("pipeline-test-ecs")
            return {n: await client.read_deployment_by_name(f"{FLOW_NAME}/{n}")
                    for n in case_deployments_of(ECS_YAML)}, pool

    with temporary_settings({PREFECT_API_URL: api}):
        team, ecs = asyncio.run(read_team())
    known = set(ecs.base_job_template["variables"]["properties"])
    for got in team.values():
        assert got.work_pool_name == "pipeline-test-ecs"
        assert got.job_variables["image"] == ECS_ENV["PIPELINE_TEST_IMAGE"]
        assert set(got.job_variables) <= known, set(got.job_variables) - known

    # stop everything this test started (the module's fixture checks, at its end, that nothing at all is left)
    t = time.monotonic()
    processes.stop_all()
    timings["stop"] = time.monotonic() - t
    assert all(proc.poll() is not None for _, proc in processes.started)
    timings["this test"] = time.monotonic() - t0
    print("timings:", ", ".join(f"{k} {v:.1f} s" for k, v in timings.items()))


# ------------------------------------------------------------------- a suite's cases as runs of a deployment
@pytest.mark.e2e
@pytest.mark.xdist_group("deploy-server")
def test_a_suite_runs_its_cases_as_runs_of_a_deployment_on_two_workers(tmp_path: Path, processes: Processes,
                                                                      deployed: DeployedServer) -> None:
    """`run_as: deployment`: the suite (in this process) starts each case as a run of `suite-case`; two process
    workers (one run at a time each) share them; the suite reads each result back from its pack."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from flows.emulator import emulator_env, moto_server
    from flows.evidence.pack.verify import verify
    from flows.run.command import drain_prefect_workers
    from flows.suite.cli import suite_result_of
    from flows.suite.flow import pipeline_test_suite

    api, base = deployed.api, deployed.base
    prefect = [sys.executable, "-m", "prefect"]

    cases = tmp_path / "suite" / "cases"
    (cases / "data").mkdir(parents=True)
    (cases / "data" / "orders.csv").write_text("id,amount\n1,10\n")
    for name in ("spread-one", "spread-two"):
        (cases / f"{name}.yaml").write_text(yaml.safe_dump({
            "case": name, "variables": {"bucket": "unset"}, "steps": [
                {"kind": "upload", "name": "land", "files": ["data/orders.csv"], "bucket": "{{ bucket }}",
                 "key_prefix": f"in/{name}/", "cleanup": True},
                {"kind": "expect_objects", "name": "landed", "bucket": "{{ bucket }}",
                 "keys": [f"in/{name}/orders.csv"]},
                # each case keeps its worker busy a while, so the other worker (polling every second) takes
                # the other run: the runs are spread, not raced for
                {"kind": "expect_objects", "name": "nothing-curated", "bucket": "{{ bucket }}",
                 "prefix": f"curated/{name}/", "absent": True, "hold": 4}]}))
    suite = tmp_path / "suite" / "suite.yaml"
    suite.write_text(yaml.safe_dump({"suite": "Spread", "cases": ["cases/*.yaml"], "variables": {"bucket": "spread"},
                                     "run_as": "deployment", "max_parallel": 2,
                                     "deployment": {"name": "pipeline-test/suite-case", "timeout": 240,
                                                    "poll_interval": 1}}))
    with moto_server() as endpoint:
        import boto3

        boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1").create_bucket(Bucket="spread")
        for worker in ("worker-1", "worker-2"):
            processes.start(worker, [*prefect, "worker", "start", "--pool", POOL, "--limit", "1",
                                     "--name", worker],
                            {**base, **emulator_env(endpoint), "PREFECT_WORKER_QUERY_SECONDS": "1"}, tmp_path)
        for worker in ("worker-1", "worker-2"):  # both polling before the runs exist
            deadline = time.monotonic() + 60
            while f"Worker '{worker}' started" not in processes.log(worker):
                assert time.monotonic() < deadline, processes.log(worker)[-3000:]
                time.sleep(0.2)
        with temporary_settings({PREFECT_API_URL: api}):
            state = pipeline_test_suite(suite=str(suite), evidence_dir=str(tmp_path / "pack"), return_state=True)
            # this process's logs of the suite go to the module's server, which stops after the module: send them
            # now, or Prefect's log worker keeps retrying against a dead server and a later flush in another test
            # (the canary's, the harness's end) waits for it (seen under xdist as a hang)
            drain_prefect_workers()
    result = suite_result_of(state)
    logs = processes.log("worker-1") + processes.log("worker-2")
    assert result is not None and result.passed, (state, result, logs[-6000:])
    assert [c.status for c in result.cases] == ["passed", "passed"]
    runs = [c.flow_run_id for c in result.cases]
    assert all(runs) and all(c.result and len(c.result.steps) == 4 for c in result.cases)  # read from the packs
    # each worker ran one of them: a run's own log lines ("View at .../flow-run/<id>") are in the log of the worker
    # whose process ran it (a worker that lost the race for a run only names it in its abort line)
    assert [sum(f"flow-run/{r}" in processes.log(w) for r in runs) for w in ("worker-1", "worker-2")] == [1, 1], \
        logs[-6000:]
    assert verify(tmp_path / "pack") == []
    assert (tmp_path / "pack" / "junit.xml").read_text().count("<testsuite ") == 2
    processes.stop_all()
    assert all(proc.poll() is not None for _, proc in processes.started)
