"""Shared fixtures: fake AWS credentials for every test, moto, moto's server, and one Prefect test harness."""

from __future__ import annotations

import os

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")

from pathlib import Path
from typing import Iterator

import boto3
import pytest
from moto import mock_aws

from flows.emulator import FAKE_ENV, REAL_ENV, moto_server
from tasks.aws import AwsTarget, ClientFactory

REGION = "us-east-1"


@pytest.fixture(autouse=True)
def fake_aws_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No test can reach a real account: fake credentials, no profile, no endpoint unless a test sets one."""
    for key in (*REAL_ENV, "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"):
        monkeypatch.delenv(key, raising=False)
    for key, value in FAKE_ENV.items():
        monkeypatch.setenv(key, value)


@pytest.fixture
def aws() -> Iterator[None]:
    """moto's in-process mock of every AWS service."""
    with mock_aws():
        yield


@pytest.fixture
def clients(aws: None) -> ClientFactory:
    return ClientFactory(AwsTarget(region=REGION))


@pytest.fixture
def s3(clients: ClientFactory):
    return clients.client("s3")


@pytest.fixture
def bucket(s3) -> str:
    s3.create_bucket(Bucket="test-bucket")
    return "test-bucket"


@pytest.fixture(scope="session")
def prefect_harness() -> Iterator[str]:
    """One temporary Prefect server for the whole session (entering it costs ~12 s); yields its API URL."""
    from prefect.settings import PREFECT_API_URL
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=60):
        yield str(PREFECT_API_URL.value())


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


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """How many (AWS call, fault) pairs tests/test_faults.py covered, in the summary (CI does not pass -s)."""
    def pairs(*outcomes: str) -> set[str]:
        reports = [r for outcome in outcomes for r in terminalreporter.stats.get(outcome, [])]
        return {value for r in reports for key, value in r.user_properties if key == "fault_pair"}

    planned, broken = pairs("passed", "failed", "error"), pairs("failed", "error")
    if planned:
        terminalreporter.write_line(f"fault injection: {len(planned - broken)} of {len(planned)} (AWS call, fault) "
                                    "pairs covered")
