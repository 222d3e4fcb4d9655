"""A step kind outside the product, used exactly as a user would: ``PIPELINE_TEST_STEP_MODULES`` names its module
(tests/kinds/bucket_versioning.py, made by following docs/development.md's "Adding a step kind"), and the command line
in a child process validates a case with it, plans it, makes its IAM policy and runs it against the emulator (moto's
server), passing once and failing once. Without the variable the kind is unknown and the generated reference and
schemas never show it. The kind's own moto tests run under tests/test_iam_contract.py's recorder: every AWS call
its runner makes is one its footprint declares.

This process never imports the kind (its registry stays the product's, for the other tests of the same worker).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from flows.emulator import emulator_env
from flows.spec.model import STEP_MODULES_ENV, json_schema
from flows.spec.reference import reference
from tasks.kit.iam import actions_of
from tasks.kit.step import REGISTRY

ROOT = Path(__file__).resolve().parent.parent
MODULE = "tests.kinds.bucket_versioning"
KIND = "expect_bucket_versioning"
pytestmark = pytest.mark.e2e


def cli(args: list[str], cwd: Path, *, modules: str | None = MODULE, endpoint: str | None = None,
        api_url: str | None = None, program: str = "flows.pipeline_test") -> subprocess.CompletedProcess[str]:
    """``python -m flows.pipeline_test ARGS`` (or another ``program``) in a child process, with the kind's module
    named (or not)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "PREFECT_", STEP_MODULES_ENV))}
    env.update(emulator_env(endpoint or "http://127.0.0.1:9"), PYTHONPATH=str(ROOT), PYTHONIOENCODING="utf-8",
               PREFECT_SERVER_ANALYTICS_ENABLED="false")
    if modules is not None:
        env[STEP_MODULES_ENV] = modules
    if api_url:
        env["PREFECT_API_URL"] = api_url
    return subprocess.run([sys.executable, "-m", program, *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=180)


def write_case(folder: Path, bucket: str, status: str = "Enabled") -> Path:
    case = {"case": f"Versioned {bucket}", "aws": {"region": "us-east-1", "account_id": "123456789012"},
            "steps": [{"kind": KIND, "name": "versioned", "bucket": bucket, "status": status}]}
    path = folder / f"{bucket}.yaml"
    path.write_text(yaml.safe_dump(case, sort_keys=False), encoding="utf-8")
    return path


def test_without_the_variable_the_kind_is_unknown_and_never_documented(tmp_path: Path) -> None:
    assert KIND not in REGISTRY
    assert KIND not in reference() and KIND not in json.dumps(json_schema())
    assert KIND not in (ROOT / "docs/reference.md").read_text(encoding="utf-8")
    assert KIND not in (ROOT / "spec.schema.json").read_text(encoding="utf-8")
    proc = cli([str(write_case(tmp_path, "kind-bucket")), "--validate"], tmp_path, modules=None)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert f"unknown kind '{KIND}'" in proc.stdout + proc.stderr


def test_the_variable_loads_the_kind_for_validate_schema_plan_and_policy(tmp_path: Path) -> None:
    spec = str(write_case(tmp_path, "kind-bucket"))
    proc = cli([spec, "--validate"], tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "is valid: case 'Versioned kind-bucket', 1 step(s)" in proc.stdout

    proc = cli(["--schema"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "ExpectBucketVersioningStep" in json.loads(proc.stdout)["$defs"]

    proc = cli([spec, "--plan"], tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    reads = proc.stdout.split("Reads (only read):", 1)[1]
    assert "S3 bucket" in reads and "kind-bucket" in reads and "versioning state" in reads
    assert "Changes (what the run changes in AWS):\n  (none)" in proc.stdout

    proc = cli([spec, "--iam-policy"], tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    statements = json.loads(proc.stdout)["Statement"]
    assert {"Sid": "S3Buckets", "Effect": "Allow", "Action": ["s3:GetBucketVersioning"],
            "Resource": ["arn:aws:s3:::kind-bucket"]} in statements
    assert not any(a.startswith("s3:Put") for s in statements for a in s["Action"])

    proc = cli(["--check"], ROOT, program="flows.spec.reference")  # never writes the team's kind into the docs
    assert proc.returncode == 2 and f"{STEP_MODULES_ENV} is set ({MODULE})" in proc.stderr, proc.stderr


def test_a_bad_module_name_is_one_clear_line_and_exit_2(tmp_path: Path) -> None:
    proc = cli([str(write_case(tmp_path, "kind-bucket")), "--validate"], tmp_path, modules=f"{MODULE},no_such.kinds")
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert f"{STEP_MODULES_ENV} names 'no_such.kinds', which could not be loaded" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_the_kind_runs_against_the_emulator_passing_and_failing(moto_endpoint, emulated_s3, prefect_harness,
                                                                  tmp_path: Path) -> None:
    emulated_s3.create_bucket(Bucket="kind-versioned")
    emulated_s3.put_bucket_versioning(Bucket="kind-versioned", VersioningConfiguration={"Status": "Enabled"})
    emulated_s3.create_bucket(Bucket="kind-plain")

    proc = cli([str(write_case(tmp_path, "kind-versioned")), "--evidence-dir", str(tmp_path / "passed")], tmp_path,
               endpoint=moto_endpoint, api_url=prefect_harness)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "PASS  1     versioned" in proc.stdout

    proc = cli([str(write_case(tmp_path, "kind-plain")), "--evidence-dir", str(tmp_path / "failed")], tmp_path,
               endpoint=moto_endpoint, api_url=prefect_harness)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "FAIL  1     versioned" in proc.stdout
    assert "S3 bucket kind-plain: versioning is never enabled, expected Enabled" in proc.stdout
    report = (tmp_path / "failed" / "report.md").read_text(encoding="utf-8")
    assert "Bucket `kind-plain`: versioning never enabled, expected Enabled (GetBucketVersioning" in report
    report_json = json.loads((tmp_path / "failed" / "report.json").read_text(encoding="utf-8"))
    assert [(c["name"], c["expected"], c["actual"], c["verdict"]) for c in report_json["steps"][0]["checks"]] == [
        ("versioning", "Enabled", "never enabled", "failed")]
    assert emulated_s3.get_bucket_versioning(Bucket="kind-plain").get("Status") is None  # nothing changed


def test_every_aws_call_of_the_kind_is_declared_by_its_footprint(tmp_path: Path) -> None:
    """tests/test_iam_contract.py's rule, for a kind outside its KIND_TESTS: the kind's own moto tests run under
    the recorder (tests/fixtures/iam_calls.py), and every call its runner made is one of its footprint's actions."""
    calls = tmp_path / "calls.jsonl"
    env = {k: v for k, v in os.environ.items() if k != STEP_MODULES_ENV}
    env.update({STEP_MODULES_ENV: MODULE, "PIPELINE_TEST_IAM_CALLS": str(calls), "PYTHONPATH": str(ROOT)})
    proc = subprocess.run([sys.executable, "-m", "pytest", "tests/kinds/check_bucket_versioning.py", "-q", "-n", "0",
                           "-p", "tests.fixtures.iam_calls", "-p", "no:cacheprovider"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "4 passed" in proc.stdout
    recorded = [json.loads(line) for line in calls.read_text(encoding="utf-8").splitlines()]
    assert recorded and all(call.get("kind") == KIND for call in recorded), recorded
    undeclared = {(c["service"], c["operation"]) for c in recorded
                  if not set(actions_of(c["service"], c["operation"])) <= set(c["declared"])}
    assert not undeclared, f"AWS calls the footprint does not declare: {sorted(undeclared)}"
