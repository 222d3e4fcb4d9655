"""Signals to the CLI: whatever stops a run, what it changed is put back, and the secrets never show.

SIGINT (Ctrl+C) and SIGTERM (a worker cancelling, `kill`), once or twice 10 ms apart (a second signal must not
cut the undo short), to the process or to its whole process group (a terminal's Ctrl+C; with no
PREFECT_API_URL, the temporary Prefect server must survive it long enough for the run to record its end, then
stop). SIGKILL gets no chance to undo: the undo journal in SSM keeps what to do, a new run refuses to start on
those leftovers, and `recover` puts them back. The scenarios run side by side (each its own CLI process and
parameters) against moto's server and the test Prefect server."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import boto3
import pytest
import yaml

from tasks.kit.journal import read_entries
from tests.helpers import env_for, temp_server_env

ROOT = Path(__file__).resolve().parent.parent
pytestmark = [pytest.mark.e2e, pytest.mark.skipif(os.name == "nt", reason="POSIX signals"),
              pytest.mark.xdist_group("heavy-processes")]

ORIGINAL = "original-Secret-5d1c0b"  # the SecureString's value before the case: never shown either
CANARY = "canary-Secret-93b7e2"  # the value the case sets


def journal_prefix(name: str) -> str:
    """Each scenario its own journal, so `recover` in one never meets another's (live) entries."""
    return f"/pipeline-test-signals/{name}"


def write_case(folder: Path, name: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "data.csv").write_text("id\n1\n")
    spec = {
        "case": f"Signal {name}",
        "aws": {"region": "us-east-1", "max_attempts": 2, "journal_prefix": journal_prefix(name)},
        "steps": [
            {"kind": "set_parameters", "name": "change", "parameters": [
                {"name": f"/sig/{name}/source", "value": "test-bucket"},
                {"name": f"/sig/{name}/token", "value": CANARY, "type": "SecureString"}]},
            {"kind": "upload", "name": "land", "files": ["data.csv"], "bucket": f"sig-{name}", "key": "in/data.csv",
             "cleanup": True},
            {"kind": "expect_objects", "name": "wait", "bucket": f"sig-{name}", "keys": ["never/there.csv"],
             "wait": {"timeout": 300}},
        ],
    }
    path = folder / "case.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


class Scenario:
    def __init__(self, name: str, endpoint: str, api_url: str | None, folder: Path) -> None:
        self.name, self.endpoint, self.api_url, self.folder = name, endpoint, api_url, folder
        self.ssm = boto3.client("ssm", endpoint_url=endpoint, region_name="us-east-1")
        self.s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
        self.ssm.put_parameter(Name=f"/sig/{name}/source", Value="prod-bucket", Type="String", Overwrite=True)
        self.ssm.put_parameter(Name=f"/sig/{name}/token", Value=ORIGINAL, Type="SecureString", Overwrite=True)
        self.s3.create_bucket(Bucket=f"sig-{name}")
        self.spec = write_case(folder, name)

    def cli(self, *args: str, wait: bool = True, api: bool = True) -> Any:
        command = [sys.executable, "-m", "flows.pipeline_test", *args]
        env = env_for(self.endpoint, self.api_url if api else None)
        if not api:
            env = temp_server_env(env, self.folder / "prefect-home")
        if wait:
            return subprocess.run(command, cwd=self.folder, env=env, capture_output=True, text=True, timeout=120)
        return subprocess.Popen(command, cwd=self.folder, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True, start_new_session=True)

    def changed(self) -> bool:
        return self.ssm.get_parameter(Name=f"/sig/{self.name}/source")["Parameter"]["Value"] == "test-bucket"

    def uploaded(self) -> bool:
        return self.s3.list_objects_v2(Bucket=f"sig-{self.name}").get("KeyCount", 0) > 0

    def wait_until_changed(self, proc: subprocess.Popen[str]) -> None:
        deadline = time.monotonic() + 150  # generous, as below: the CLIs share 2 cores here
        while not (self.changed() and self.uploaded()):
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                pytest.fail(f"{self.name}: the case never changed anything:\n{proc.communicate()[0]}")
            time.sleep(0.1)
        time.sleep(0.5)  # into the waiting step

    def as_before(self) -> bool:
        source = self.ssm.get_parameter(Name=f"/sig/{self.name}/source")["Parameter"]["Value"]
        token = self.ssm.get_parameter(Name=f"/sig/{self.name}/token", WithDecryption=True)["Parameter"]["Value"]
        return source == "prod-bucket" and token == ORIGINAL and not self.uploaded()

    def journal(self) -> list[Any]:
        return read_entries(self.ssm, journal_prefix(self.name))


def deliver(proc: subprocess.Popen[str], sig: signal.Signals, times: int, group: bool) -> None:
    for i in range(times):
        if i:
            time.sleep(0.01)
        (os.killpg if group else os.kill)(proc.pid, sig)


def stop_scenario(sc: Scenario, sig: signal.Signals, times: int, group: bool) -> dict[str, Any]:
    # Ctrl+C to the group is what a terminal does: run that one with the CLI's own temporary server
    temp_server = group and sig == signal.SIGINT and times == 2
    proc = sc.cli(str(sc.spec), wait=False, api=not temp_server)
    sc.wait_until_changed(proc)
    servers = subprocess.run(["pgrep", "-P", str(proc.pid), "-f", "flows.run.local_server"], capture_output=True,
                             text=True).stdout.split()
    t0 = time.monotonic()
    deliver(proc, sig, times, group)
    try:
        output, _ = proc.communicate(timeout=150)  # generous: the CLIs share 2 cores here
    except subprocess.TimeoutExpired:
        proc.kill()
        output = "(still running after 150 s: killed)\n" + proc.communicate()[0]
    return {"code": proc.returncode, "output": output, "seconds": time.monotonic() - t0, "servers": servers,
            "temp_server": temp_server, "as_before": sc.as_before(), "journal": sc.journal()}


def kill_then_refuse_then_recover(sc: Scenario) -> dict[str, Any]:
    proc = sc.cli(str(sc.spec), wait=False)
    sc.wait_until_changed(proc)
    proc.kill()
    proc.communicate(timeout=30)
    entries = sc.journal()
    left = {"changed": sc.changed(), "journal": len(entries)}
    refused = sc.cli(str(sc.spec))
    still_changed = sc.changed()
    recovered = sc.cli("recover", "--region", "us-east-1", "--journal-prefix", journal_prefix(sc.name))
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings({PREFECT_API_URL: sc.api_url}), get_client(sync_client=True) as client:
        killed_state = client.read_flow_run(entries[0].run_id).state if entries else None  # type: ignore[arg-type]
    return {"left": left, "refused": refused, "still_changed": still_changed, "recovered": recovered,
            "as_before": sc.as_before(), "journal": sc.journal(), "killed_state": killed_state}


#: every pair of (signal, once or twice, to the process or its group) in 4 runs instead of all 8 combinations;
#: SIGINT twice to the group is a terminal's Ctrl+C, Ctrl+C, run with the CLI's own temporary server
MATRIX = [(signal.SIGINT, 1, False), (signal.SIGINT, 2, True), (signal.SIGTERM, 1, True), (signal.SIGTERM, 2, False)]


def test_signals_always_leave_aws_as_it_was(moto_endpoint, prefect_harness, tmp_path: Path) -> None:
    scenarios = {f"{s.name.lower()}-{t}x-{'group' if g else 'pid'}": (s, t, g) for s, t, g in MATRIX}
    made = {name: Scenario(name, moto_endpoint, prefect_harness, tmp_path / name) for name in [*scenarios, "kill"]}
    # at most 3 CLIs at once: the test server is SQLite-backed (concurrent writers get 'database is locked' and
    # back off for seconds), and under pytest -n 2 the other worker is busy too
    with ThreadPoolExecutor(3) as pool:
        futures = {name: pool.submit(stop_scenario, made[name], *args) for name, args in scenarios.items()}
        killed = pool.submit(kill_then_refuse_then_recover, made["kill"])
        outcomes = {name: f.result() for name, f in futures.items()}
        kill = killed.result()
    for name, out in outcomes.items():
        where = f"{name}:\n{out['output']}"
        assert out["as_before"], where
        assert out["journal"] == [], where  # every undo done and forgotten
        assert out["code"] == 130, where
        assert "Interrupted: the run was stopped" in out["output"], where
        assert "Traceback" not in out["output"], where
        assert CANARY not in out["output"] and ORIGINAL not in out["output"], where
        if out["temp_server"]:
            assert out["servers"], f"{name}: no temporary server was started"
            assert out["seconds"] < 30, where
            gone = subprocess.run(["ps", "-o", "pid=", "-p", ",".join(out["servers"])], capture_output=True, text=True)
            assert not gone.stdout.strip(), f"{name}: the temporary server is still running"
    # SIGKILL: no undo in the process; the journal keeps it; a new run refuses; recover puts it back
    assert kill["left"] == {"changed": True, "journal": 3}
    assert kill["refused"].returncode == 3, kill["refused"].stderr
    assert "python -m flows.pipeline_test recover" in kill["refused"].stderr
    assert kill["still_changed"], "the refused run must not have touched anything"
    assert kill["recovered"].returncode == 0, kill["recovered"].stdout + kill["recovered"].stderr
    assert "3 restored" in kill["recovered"].stdout
    assert kill["as_before"] and kill["journal"] == []
    # the killed run's flow run, left Running by the dead process, is Crashed, saying who found it and what was done
    state = kill["killed_state"]
    assert state is not None and state.type.value == "CRASHED", state
    assert state.message.startswith("found dead by "), state.message
    for text in (kill["refused"].stdout, kill["refused"].stderr, kill["recovered"].stdout, kill["recovered"].stderr):
        assert CANARY not in text and ORIGINAL not in text and "Traceback" not in text
