"""Overlapping runs never leave a setting changed: runs that change one SSM parameter serialize on its lock (a
Prefect global concurrency limit), each sees its own value while it runs, and the original is back at the end.
Flow runs in threads of one process, against Prefect's test harness and moto."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from flows.pipeline_test import pipeline_test, result_of
from flows.results import CaseResult
from tasks.journal import read_entries

pytestmark = pytest.mark.usefixtures("prefect_harness")

SECRET = "prod-Secret-value-42"


@pytest.fixture
def ssm(clients):
    client = clients.client("ssm")
    client.put_parameter(Name="/shared/source", Value="prod-bucket", Type="String", Description="prod")
    client.put_parameter(Name="/shared/token", Value=SECRET, Type="SecureString")
    return client


def case(name: str, value: str, *, hold: float = 0.0) -> dict[str, Any]:
    """Set the shared parameters to ``value``, (optionally wait a while), then check the run still sees them."""
    steps: list[dict[str, Any]] = [
        {"kind": "set_parameters", "name": "set", "parameters": [
            {"name": "/shared/source", "value": value},
            {"name": "/shared/token", "value": f"{value}-token", "type": "SecureString"}]},
    ]
    if hold:
        # a wait that ends by its timeout (nothing ever lands there): the run keeps its values this long
        steps.append({"kind": "expect_objects", "name": "hold", "bucket": "overlap", "prefix": "never/",
                      "wait": {"timeout": hold, "initial": 0.05}, "continue_on_failure": True})
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
    clients.client("s3").create_bucket(Bucket="overlap")
    with ThreadPoolExecutor(5) as pool:
        results = list(pool.map(lambda i: run(case("Same case", f"test-{i}", hold=0.3), tmp_path), range(5)))
    assert all(still_mine(r) for r in results), [r.first_failure for r in results]
    assert originals(ssm) == ("prod-bucket", SECRET, "prod")
    # they took turns: in the parameter's history every test value is followed by the restore of the original
    history = [h["Value"] for h in ssm.get_parameter_history(Name="/shared/source")["Parameters"]]
    assert history[0] == "prod-bucket" and len(history) == 11, history
    assert history[1::2] == [h for h in history[1::2] if h.startswith("test-")] and len(set(history[1::2])) == 5
    assert set(history[2::2]) == {"prod-bucket"}, history
    assert read_entries(ssm) == []  # nothing left in the undo journal


@pytest.mark.parametrize("shape", ["crossing", "nested"])
def test_two_cases_that_set_one_parameter(ssm, clients, tmp_path: Path, shape: str) -> None:
    """A starts and changes the parameter; B starts while A runs. Crossing: B would end after A; nested: B is
    short and would end inside A. Either way B waits for A's restore, then changes and restores it itself."""
    clients.client("s3").create_bucket(Bucket="overlap")
    first: list[CaseResult] = []
    a = threading.Thread(target=lambda: first.append(run(case("Case A", "value-a", hold=1.0), tmp_path)))
    a.start()
    deadline = time.monotonic() + 30
    while ssm.get_parameter(Name="/shared/source")["Parameter"]["Value"] != "value-a":
        assert time.monotonic() < deadline and a.is_alive()
        time.sleep(0.02)
    second = run(case("Case B", "value-b", hold=1.5 if shape == "crossing" else 0.0), tmp_path)
    a.join(30)
    (result_a,) = first
    assert still_mine(result_a) and still_mine(second)
    assert second.locks and second.locks["waited_seconds"] > 0.3  # B waited for A's lock, and says so
    history = [h["Value"] for h in ssm.get_parameter_history(Name="/shared/source")["Parameters"]]
    assert history == ["prod-bucket", "value-a", "prod-bucket", "value-b", "prod-bucket"]
    assert originals(ssm) == ("prod-bucket", SECRET, "prod")
