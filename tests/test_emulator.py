"""`python -m flows.emulator`: the demo's emulator and fake pipeline on their own, for the example cases."""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from flows.emulator import REAL_ENV, env_lines

ROOT = Path(__file__).resolve().parent.parent


def test_the_environment_is_printed_in_each_shells_syntax() -> None:
    env = {"AWS_ENDPOINT_URL": "http://127.0.0.1:4566", "AWS_REGION": "us-east-1"}
    assert env_lines(env, "sh")[:2] == ["export AWS_ENDPOINT_URL=http://127.0.0.1:4566", "export AWS_REGION=us-east-1"]
    assert env_lines(env, "sh")[2] == "unset " + " ".join(REAL_ENV)
    assert env_lines(env, "cmd")[:3] == ["set AWS_ENDPOINT_URL=http://127.0.0.1:4566", "set AWS_REGION=us-east-1",
                                         f"set {REAL_ENV[0]}="]
    assert env_lines(env, "powershell")[:3] == ["$env:AWS_ENDPOINT_URL = 'http://127.0.0.1:4566'",
                                                "$env:AWS_REGION = 'us-east-1'",
                                                f"Remove-Item Env:{REAL_ENV[0]} -ErrorAction SilentlyContinue"]


def read_until(lines: queue.Queue[str | None], proc: subprocess.Popen[str], marker: str, timeout: float) -> list[str]:
    seen: list[str] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            line = lines.get(timeout=1)
        except queue.Empty:
            continue
        if line is None:
            pytest.fail(f"the emulator ended (exit {proc.wait()}):\n" + "".join(seen))
        seen.append(line)
        if marker in line:
            return seen
    pytest.fail(f"no {marker!r} within {timeout:.0f} s:\n" + "".join(seen))


@pytest.mark.e2e
@pytest.mark.skipif(os.name == "nt", reason="SIGINT to a process")
def test_the_emulator_command_runs_an_example_case_and_stops_on_ctrl_c(prefect_harness, tmp_path) -> None:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "PREFECT_"))}
    base.update(PYTHONPATH=str(ROOT), PYTHONIOENCODING="utf-8", PREFECT_SERVER_ANALYTICS_ENABLED="false")
    emulator = subprocess.Popen([sys.executable, "-m", "flows.emulator", "--shell", "sh"], cwd=ROOT, env=base,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: queue.Queue[str | None] = queue.Queue()

    def pump() -> None:
        assert emulator.stdout
        for line in emulator.stdout:
            lines.put(line)
        lines.put(None)

    threading.Thread(target=pump, daemon=True).start()
    try:
        printed = read_until(lines, emulator, "Ctrl+C here stops the emulator", timeout=120)
        exported = dict(line.strip()[len("export "):].split("=", 1) for line in printed
                        if line.strip().startswith("export "))
        assert exported["AWS_ENDPOINT_URL"].startswith("http://127.0.0.1:")
        assert exported["AWS_ACCESS_KEY_ID"] == "testing"
        env = {**base, **exported, "PREFECT_API_URL": prefect_harness}
        case = subprocess.run([sys.executable, "-m", "flows.pipeline_test",
                               str(ROOT / "examples" / "cases" / "orders_ingestion.yaml"),
                               "--evidence-dir", str(tmp_path / "pack")],
                              cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240)
        assert case.returncode == 0, case.stdout + case.stderr
        assert "Case 'Orders ingestion' PASSED" in case.stdout
        emulator.send_signal(signal.SIGINT)
        assert emulator.wait(timeout=60) == 0
        rest = []
        while (line := lines.get(timeout=10)) is not None:
            rest.append(line)
        assert "Stopped." in "".join(rest)
    finally:
        if emulator.poll() is None:
            emulator.kill()
            emulator.wait()


def test_a_port_in_use_is_refused_at_once(capsys) -> None:
    import socket

    from flows.demo import emulator_main as main

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        assert main(["--port", str(taken.getsockname()[1])]) == 3
    assert "cannot be used" in capsys.readouterr().err


def test_the_emulators_lambda_rule_ends_with_it() -> None:
    """While an emulator runs, invoking a function that does not exist fails as on AWS; after it, this process's
    in-process mocks answer as moto makes them (a full run once saw a later test's Lambda 'not found')."""
    import boto3
    from moto import mock_aws

    from flows.emulator import moto_server, use_emulator

    def invoke_missing() -> int:
        client = boto3.client("lambda", region_name="us-east-1")
        try:
            return client.invoke(FunctionName="missing", Payload=b"{}")["StatusCode"]
        except client.exceptions.ResourceNotFoundException:
            return 404

    with moto_server(lambda_like_aws=True) as endpoint, use_emulator(endpoint):
        assert invoke_missing() == 404
    with mock_aws(config={"lambda": {"use_docker": False}}):
        assert invoke_missing() == 200
