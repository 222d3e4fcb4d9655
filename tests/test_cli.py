"""End to end: the CLI in a subprocess, against moto's server (AWS_ENDPOINT_URL) and the test Prefect server."""

from __future__ import annotations

import http.server
import json
import os
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any, Iterator

import pytest
import yaml

from flows.emulator import emulator_env
from tests.helpers import write_cli_case as write_case

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.e2e


def run_cli(args: list[str], endpoint: str, api_url: str | None, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "PREFECT_"))}
    env.update(emulator_env(endpoint))
    env["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
    env["PYTHONPATH"] = str(ROOT)
    env["PYTHONIOENCODING"] = "utf-8"
    if api_url:
        env["PREFECT_API_URL"] = api_url
    return subprocess.run([sys.executable, "-m", "flows.pipeline_test", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=180)


def test_cli_runs_a_case_against_the_emulator(moto_endpoint, emulated_s3, prefect_harness, tmp_path) -> None:
    emulated_s3.create_bucket(Bucket="cli-pass")
    spec = write_case(tmp_path, "cli-pass")
    proc = run_cli([str(spec)], moto_endpoint, prefect_harness, tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Case 'CLI case' PASSED" in proc.stdout
    assert "PASS  1     land" in proc.stdout and "PASS  2     landed" in proc.stdout
    assert emulated_s3.head_object(Bucket="cli-pass", Key="in/orders.csv")["ContentLength"] == 15
    # a second run refuses to overwrite the object: the case fails with exit code 1 (the step could not do what
    # it was asked, an ERROR, not a check that did not hold)
    proc = run_cli([str(spec)], moto_endpoint, prefect_harness, tmp_path)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "ERROR 1     land" in proc.stdout and "refusing to overwrite" in proc.stdout
    assert "SKIP  2     landed" in proc.stdout


def test_cli_json_output_and_var_override(moto_endpoint, emulated_s3, prefect_harness, tmp_path) -> None:
    emulated_s3.create_bucket(Bucket="cli-json")
    spec = write_case(tmp_path, "no-such-bucket-here")
    proc = run_cli([str(spec), "--var", "bucket=cli-json", "--json"], moto_endpoint, prefect_harness, tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    result = json.loads(proc.stdout[proc.stdout.index("{"):])
    assert result["status"] == "passed" and result["variables"]["bucket"] == "cli-json"


class CountingHandler(http.server.BaseHTTPRequestHandler):
    requests: list[str] = []

    def do_GET(self) -> None:  # noqa: N802
        CountingHandler.requests.append(self.path)
        self.send_response(500)
        self.end_headers()

    do_PUT = do_POST = do_HEAD = do_GET  # noqa: N815

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def counting_endpoint() -> Iterator[str]:
    """A loopback HTTP server that counts every request (stands in for AWS to prove none is made)."""
    CountingHandler.requests = []
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), CountingHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_invalid_spec_exits_2_names_step_and_field_and_calls_nothing(counting_endpoint, tmp_path) -> None:
    spec = write_case(tmp_path, "some-bucket", min_sizee=1)
    proc = run_cli([str(spec)], counting_endpoint, None, tmp_path)
    assert proc.returncode == 2
    assert "step 2 'landed' (expect_objects): field 'min_sizee': unknown field" in proc.stderr
    assert "no AWS call was made" in proc.stderr
    assert CountingHandler.requests == []


def test_validate_and_schema(tmp_path, monkeypatch, capsys) -> None:
    """--validate and --schema make no AWS call (in-process: the CLI's exit codes are covered above)."""
    from flows.cli import main

    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")  # nothing listens: any call would fail
    spec = write_case(tmp_path, "some-bucket")
    assert main([str(spec), "--validate"]) == 0
    assert "is valid: case 'CLI case', 2 step(s)" in capsys.readouterr().out
    assert main(["--schema"]) == 0
    assert json.loads(capsys.readouterr().out)["title"] == "Pipeline test case"


CANARY = "canary-Secret-cli-91b2"


def secret_case(folder: Path, wait_timeout: float, fail: bool = False) -> Path:
    case = {
        "case": "CLI secret case",
        "aws": {"allowed_parameter_prefixes": ["/cli/"]},
        "steps": [
            {"kind": "set_parameters", "name": "point-at-test", "parameters": [
                {"name": "/cli/source", "value": "test-bucket"},
                {"name": "/cli/token", "value": CANARY, "type": "SecureString"}]},
            {"kind": "expect_parameters", "name": "token-set", "parameters": [
                {"name": "/cli/token", "equals": CANARY, "type": "SecureString"}]},
            {"kind": "expect_objects", "name": "output", "bucket": "cli-secret", "keys": ["never.csv"],
             "wait": {"timeout": wait_timeout}},
        ],
    }
    path = folder / "secret.yaml"
    path.write_text(yaml.safe_dump(case, sort_keys=False))
    return path


def test_cli_output_never_shows_a_secure_string(moto_endpoint, emulated_s3, prefect_harness, tmp_path) -> None:
    import boto3

    ssm = boto3.client("ssm", endpoint_url=moto_endpoint, region_name="us-east-1")
    ssm.put_parameter(Name="/cli/source", Value="prod-bucket", Type="String", Overwrite=True)
    emulated_s3.create_bucket(Bucket="cli-secret")
    proc = run_cli([str(secret_case(tmp_path, 0.5)), "--json"], moto_endpoint, prefect_harness, tmp_path)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert CANARY not in proc.stdout + proc.stderr  # the result on stdout, every log line on stderr
    result = json.loads(proc.stdout[proc.stdout.index("{"):])
    assert [(s["label"], s["status"]) for s in result["steps"]] == [
        ("point-at-test", "passed"), ("token-set", "passed"), ("output", "failed"), ("cleanup", "passed")]
    assert "****" in proc.stdout  # the result shows the masked form instead (no fingerprint without a key)
    pack = Path(result["evidence_dir"])
    assert all(CANARY not in f.read_text(encoding="utf-8") for f in pack.iterdir())
    assert ssm.get_parameter(Name="/cli/source")["Parameter"]["Value"] == "prod-bucket"
    with pytest.raises(ssm.exceptions.ParameterNotFound):
        ssm.get_parameter(Name="/cli/token")


def test_cancelled_run_puts_parameters_back(moto_endpoint, emulated_s3, prefect_harness, tmp_path) -> None:
    """A run stopped with SIGTERM (how a worker cancels a flow run's process) restores what it changed."""
    import signal
    import time

    import boto3

    ssm = boto3.client("ssm", endpoint_url=moto_endpoint, region_name="us-east-1")
    ssm.put_parameter(Name="/cli/source", Value="prod-bucket", Type="String", Overwrite=True,
                      Description="source bucket")
    ssm.delete_parameters(Names=["/cli/token"])
    emulated_s3.create_bucket(Bucket="cli-secret")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "PREFECT_"))}
    env.update(emulator_env(moto_endpoint), PREFECT_API_URL=prefect_harness, PYTHONPATH=str(ROOT),
               PREFECT_SERVER_ANALYTICS_ENABLED="false")
    proc = subprocess.Popen([sys.executable, "-m", "flows.pipeline_test", str(secret_case(tmp_path, 120))],
                            cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:  # wait until the case has changed the setting and is waiting
            value = ssm.get_parameter(Name="/cli/source")["Parameter"]["Value"]
            if value == "test-bucket":
                break
            assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
            time.sleep(0.2)
        else:
            pytest.fail("the case never changed the parameter")
        time.sleep(1.5)  # well into the waiting step
        proc.send_signal(signal.SIGTERM)
        output, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode != 0
    param = ssm.get_parameter(Name="/cli/source")["Parameter"]
    assert param["Value"] == "prod-bucket"
    meta = ssm.describe_parameters(ParameterFilters=[{"Key": "Name", "Values": ["/cli/source"]}])["Parameters"][0]
    assert meta["Description"] == "source bucket" and meta["Type"] == "String"
    with pytest.raises(ssm.exceptions.ParameterNotFound):
        ssm.get_parameter(Name="/cli/token")
    assert "undoing 2 change(s) now" in output
    assert CANARY not in output
