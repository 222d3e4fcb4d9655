"""Runs of two Prefect servers on one machine (two PREFECT_HOMEs: two users, or a user and a worker) against one
AWS account: their locks cannot see each other, the undo journal in AWS can. Real CLIs, each with the temporary
Prefect server of its own home, against moto's server.

Run A (home A) changes a parameter and waits. Meanwhile, from home B: `recover` skips A's changes (A is alive:
its claim's lease is live) and says so; a run of another case on the same parameter refuses to start (exit 3),
naming A (its case, run id, host and pid), and changes nothing. A then goes on, still sees its own value, and
puts everything back."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import boto3
import pytest
import yaml

from tasks.kit.journal import read_claims, read_entries
from tests.helpers import env_for, temp_server_env

pytestmark = [pytest.mark.e2e, pytest.mark.xdist_group("heavy-processes")]

PREFIX = "/pipeline-test-two-homes"
PARAMETER = "/two-homes/source"


def write_case(folder: Path, name: str, value: str, *, hold: bool) -> Path:
    steps: list[dict[str, Any]] = [{"kind": "set_parameters", "name": "set", "parameters": [
        {"name": PARAMETER, "value": value}]}]
    if hold:
        steps.append({"kind": "expect_objects", "name": "hold", "bucket": "two-homes", "keys": ["go"],
                      "wait": {"timeout": 240, "initial": 0.2, "max_interval": 1}})
    steps.append({"kind": "expect_parameters", "name": "still-mine", "parameters": [
        {"name": PARAMETER, "equals": value}]})
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump({"case": name, "aws": {"region": "us-east-1", "journal_prefix": PREFIX},
                                    "steps": steps}, sort_keys=False))
    return path


def test_a_run_of_another_prefect_server_is_left_alone_and_refused(moto_endpoint: str, tmp_path: Path) -> None:
    ssm = boto3.client("ssm", endpoint_url=moto_endpoint, region_name="us-east-1")
    s3 = boto3.client("s3", endpoint_url=moto_endpoint, region_name="us-east-1")
    ssm.put_parameter(Name=PARAMETER, Value="prod-bucket", Type="String", Overwrite=True)
    s3.create_bucket(Bucket="two-homes")
    base = env_for(moto_endpoint, None)
    home_a = temp_server_env(base, tmp_path / "home-a")
    home_b = temp_server_env(base, tmp_path / "home-b")

    def cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "flows.pipeline_test", *args], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=180)

    a = subprocess.Popen([sys.executable, "-m", "flows.pipeline_test",
                          str(write_case(tmp_path, "Case A", "value-a", hold=True)), "--no-evidence"],
                         cwd=tmp_path, env=home_a, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 150  # generous: the CLIs share 2 cores here
        while ssm.get_parameter(Name=PARAMETER)["Parameter"]["Value"] != "value-a":
            assert a.poll() is None and time.monotonic() < deadline, f"A never changed it:\n{a.communicate()[0]}"
            time.sleep(0.2)
        (claim,) = read_claims(ssm, PREFIX)
        assert claim.case == "Case A" and claim.owner["pid"] == a.pid and claim.owner["host"] == socket.gethostname()

        recovered = cli(home_b, "recover", "--region", "us-east-1", "--journal-prefix", PREFIX)
        assert f"SKIPPED   ssm:{PARAMETER}: run {claim.run_id} of case 'Case A' on host {socket.gethostname()} " \
               f"pid {a.pid}" in recovered.stdout, recovered.stdout + recovered.stderr
        assert "is alive, lease until" in recovered.stdout and "0 restored" in recovered.stdout
        assert ssm.get_parameter(Name=PARAMETER)["Parameter"]["Value"] == "value-a"  # A's change stands

        refused = cli(home_b, str(write_case(tmp_path, "Case B", "value-b", hold=False)), "--no-evidence")
        assert refused.returncode == 3, refused.stdout + refused.stderr
        assert (f"Could not run: case 'Case B' did not start: run {claim.run_id} of case 'Case A' on host "
                f"{socket.gethostname()} pid {a.pid}") in refused.stderr, refused.stderr
        assert "nothing was changed" in refused.stderr and "Traceback" not in refused.stdout + refused.stderr
        history = [h["Value"] for h in ssm.get_parameter_history(Name=PARAMETER)["Parameters"]]
        assert "value-b" not in history
    finally:
        s3.put_object(Bucket="two-homes", Key="go", Body=b"")  # A may finish now
        try:
            output, _ = a.communicate(timeout=150)
        except subprocess.TimeoutExpired:
            a.kill()
            output = "(still running after 150 s: killed)\n" + a.communicate()[0]
    assert a.returncode == 0, output  # A still saw its own value at its end: nobody undid it meanwhile
    assert ssm.get_parameter(Name=PARAMETER)["Parameter"]["Value"] == "prod-bucket"
    assert read_entries(ssm, PREFIX) == [] and read_claims(ssm, PREFIX) == []
