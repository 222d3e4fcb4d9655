"""The demo: the example case run against a small fake ingestion pipeline on a local AWS emulator.

    python -m flows.demo            the example case
    python -m flows.demo --suite    every example case as one suite (examples/nightly-suite.yaml)

Starts moto's server on 127.0.0.1 (a free port) and builds a fake orders pipeline on it:
- S3 buckets: landing, curated, and one for Athena's results;
- an SSM parameter, ``/demo/orders/source_bucket``, that tells the pipeline which bucket to read (it points at
  a production bucket until the test case points it at the landing bucket; the case puts it back);
- a Lambda function, ``demo-orders-ingest``, that the case invokes to start an ingestion;
- a background worker standing in for the pipeline: it copies each file that lands under ``incoming/`` in the
  bucket the parameter names to ``curated/`` in the curated bucket after a short delay, and makes the rows
  available to the Athena table ``demo_db.orders``.
Then it runs ``examples/cases/orders_ingestion.yaml`` as a Prefect flow and prints the result and where to see
the evidence. No AWS account, no network.
"""

from __future__ import annotations

import csv
import io
import json
import sys
import threading
import time
from decimal import Decimal
from pathlib import Path
from typing import Any

import boto3

from flows.emulator import moto_api, moto_server, use_emulator

ROOT = Path(__file__).resolve().parent.parent
DEMO_CASE = ROOT / "examples" / "cases" / "orders_ingestion.yaml"
DEMO_SUITE = ROOT / "examples" / "nightly-suite.yaml"
REGION = "us-east-1"
LANDING_BUCKET = "demo-landing"
CURATED_BUCKET = "demo-curated"
ATHENA_BUCKET = "demo-athena-results"
SOURCE_PARAMETER = "/demo/orders/source_bucket"
PRODUCTION_SOURCE = "acme-prod-landing"
FUNCTION = "demo-orders-ingest"


class FakePipeline:
    """Stands in for the pipeline under test: reads its source bucket from SSM, copies landed files to the
    curated zone after ``delay`` seconds, and answers Athena with the rows it ingested."""

    def __init__(self, endpoint: str, delay: float = 2.0, interval: float = 0.2) -> None:
        self.endpoint = endpoint
        self.s3: Any = boto3.client("s3", endpoint_url=endpoint, region_name=REGION)
        self.ssm: Any = boto3.client("ssm", endpoint_url=endpoint, region_name=REGION)
        self.delay = delay
        self.interval = interval
        self.seen: dict[tuple[str, str], float] = {}
        self.done: set[tuple[str, str]] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="fake-pipeline", daemon=True)

    def create_resources(self) -> None:
        """Buckets, the pipeline's setting and its Lambda function, as they would exist in the account."""
        for bucket in (LANDING_BUCKET, CURATED_BUCKET, ATHENA_BUCKET):
            self.s3.create_bucket(Bucket=bucket)
        self.ssm.put_parameter(Name=SOURCE_PARAMETER, Value=PRODUCTION_SOURCE, Type="String",
                               Description="Bucket the orders pipeline reads new files from")
        iam = boto3.client("iam", endpoint_url=self.endpoint, region_name=REGION)
        role = iam.create_role(RoleName="demo-orders-ingest", AssumeRolePolicyDocument=json.dumps({
            "Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "sts:AssumeRole",
                                                    "Principal": {"Service": "lambda.amazonaws.com"}}]}))
        boto3.client("lambda", endpoint_url=self.endpoint, region_name=REGION).create_function(
            FunctionName=FUNCTION, Runtime="python3.12", Role=role["Role"]["Arn"], Handler="app.handler",
            Code={"ZipFile": b"PK\x05\x06" + b"\x00" * 18}, Description="Starts an orders ingestion")
        # what the function answers (moto runs no code without Docker: its answers are queued here, one for each
        # example case, so the demo's suite has one per case)
        cases = max(1, len(list(DEMO_CASE.parent.glob("*.yaml"))))
        moto_api(self.endpoint, "static/lambda-simple/response",
                 {"region": REGION, "results": [json.dumps({"accepted": True, "source": "orders"})] * cases})

    def start(self) -> "FakePipeline":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.tick(time.monotonic())
            except Exception as exc:  # keep the stand-in alive; the test case will notice missing output
                print(f"fake pipeline: {exc}", file=sys.stderr)

    def tick(self, now: float) -> None:
        """One pass: note new files in the configured source bucket, process those that waited ``delay``."""
        source = self.ssm.get_parameter(Name=SOURCE_PARAMETER)["Parameter"]["Value"]
        if source != LANDING_BUCKET:
            return  # pointed at production: nothing to see here
        for page in self.s3.get_paginator("list_objects_v2").paginate(Bucket=source, Prefix="incoming/"):
            for obj in page.get("Contents", []):
                self.seen.setdefault((source, obj["Key"]), now)
        for (bucket, key), first_seen in list(self.seen.items()):
            if (bucket, key) not in self.done and now - first_seen >= self.delay:
                self.process(bucket, key)
                self.done.add((bucket, key))

    def process(self, bucket: str, key: str) -> None:
        """Copy the file to the curated zone and make its rows what the Athena table answers."""
        target = "curated/" + key[len("incoming/"):]
        self.s3.copy_object(Bucket=CURATED_BUCKET, Key=target, CopySource={"Bucket": bucket, "Key": key})
        body = self.s3.get_object(Bucket=bucket, Key=key)["Body"].read().decode()
        rows = list(csv.DictReader(io.StringIO(body)))
        total = sum((Decimal(r["amount"]) for r in rows), Decimal("0"))
        columns = [("orders", "bigint"), ("total_amount", "decimal(12,2)"), ("currencies", "bigint")]
        data = [[c for c, _ in columns], [str(len(rows)), f"{total:.2f}", str(len({r['currency'] for r in rows}))]]
        moto_api(self.endpoint, "static/athena/query-results", {"region": REGION, "results": [{
            "rows": [{"Data": [{"VarCharValue": v} for v in row]} for row in data],
            "column_info": [{"Name": n, "Label": n, "Type": t, "Nullable": "UNKNOWN", "CaseSensitive": False}
                            for n, t in columns],
        }]})


def where_to_look(result_url: str | None, case: str) -> str:
    from prefect.settings import get_current_settings

    from flows.evidence import case_key

    settings = get_current_settings()
    if settings.api.url and result_url:
        return (f"Evidence: open {result_url} (Artifacts tab), or the Artifacts page of the Prefect UI "
                f"(key {case_key(case)}).")
    return ("Evidence: this run used a temporary Prefect server; its records are kept in "
            f"{settings.home}. Run `prefect server start` and open http://127.0.0.1:4200 to see the run and its "
            "artifacts (see docs/server-and-deployments.md).")


def run_suite(args: list[str]) -> int:
    """The example cases as one suite against the emulator, through the suite's CLI (progress, summary, pack,
    exit code); ``args`` go to it (e.g. ``--max-parallel 2``)."""
    from flows.pipeline_test import main as cli

    print("Starting the local AWS emulator (moto) ...")
    with moto_server(lambda_like_aws=True) as endpoint, use_emulator(endpoint):
        pipeline = FakePipeline(endpoint)
        pipeline.create_resources()
        pipeline.start()
        try:
            return cli([str(DEMO_SUITE), *args])
        finally:
            pipeline.stop()


def main(argv: list[str] | None = None) -> int:
    from flows.pipeline_test import format_result, pipeline_test, result_of

    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--suite"]:
        return run_suite(argv[1:])

    print("Starting the local AWS emulator (moto) ...")
    with moto_server(lambda_like_aws=True) as endpoint, use_emulator(endpoint):
        print(f"Emulator on {endpoint}; building the fake ingestion pipeline ...")
        pipeline = FakePipeline(endpoint)
        pipeline.create_resources()
        pipeline.start()
        try:
            state = pipeline_test(spec=str(DEMO_CASE), return_state=True)
        finally:
            pipeline.stop()
        setting = pipeline.ssm.get_parameter(Name=SOURCE_PARAMETER)["Parameter"]["Value"]
    result = result_of(state)
    print()
    if result is None:
        print(f"The demo's flow run ended {state.type.value}: {state.message}")
        return 1
    print(format_result(result, with_link=False))
    restored = "restored" if setting == PRODUCTION_SOURCE else "NOT restored"
    print(f"SSM {SOURCE_PARAMETER} after the run: {setting!r} ({restored}: the case changed it for the test)")
    print(where_to_look(result.ui_url, result.case))
    return 0 if result.passed else 1


if __name__ == "__main__":
    sys.exit(main())
