"""The demo: the example case run against a small fake ingestion pipeline on a local AWS emulator.

    python -m flows.demo

Starts moto's server on 127.0.0.1 (a free port) and builds a fake orders pipeline on it:
- S3 buckets: landing, curated, and one for Athena's results;
- an SSM parameter, ``/demo/orders/source_bucket``, that tells the pipeline which bucket to read (it points at
  a production bucket until the test case points it at the landing bucket; the case puts it back);
- a Lambda function, ``demo-orders-ingest``, that the case invokes to start an ingestion;
- a DynamoDB table, ``demo-ingest-audit``, where the pipeline records each file it ingested, and its
  dead-letter queue, ``demo-orders-dlq`` (SQS), which stays empty while files load;
- a background worker standing in for the pipeline: it copies each file that lands under ``incoming/`` in the
  bucket the parameter names to ``curated/`` in the curated bucket after a short delay, writes an audit item
  for it, and makes the rows available to the Athena table ``demo_db.orders``; a file whose CSV header is not
  the orders header is moved to ``quarantine/`` in the landing bucket instead, and never reaches curated.
Then it runs ``examples/cases/orders_ingestion.yaml`` and the negative case ``orders_bad_header.yaml`` as Prefect
flows and prints the results and where to see the evidence. No AWS account, no network. ``--suite`` runs every
example case as one suite (``examples/nightly-suite.yaml``) instead. ``--fail`` breaks the fake pipeline (it
loses a row), to show what a failed case and its evidence look like. ``python -m flows.emulator`` runs the same
emulator and fake pipeline on their own until Ctrl+C, for running the example cases by hand.

The flow ``pipeline-test-demo`` (:func:`pipeline_demo`) runs one case the same way inside one flow run, the
case a subflow run of it: prefect.yaml's ``demo`` deployment runs it, so a worker or ``deployments/serve.py``
on a fresh machine runs a case that passes, with its evidence, and nothing else to set up.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import io
import json
import os
import signal
import socket
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Any, Iterator

import boto3
from prefect import flow, get_run_logger
from prefect.states import Failed

from flows.console import safe_output
from flows.emulator import SHELLS, emulator_env, env_lines, moto_api, moto_server, use_emulator
from flows.run import prefect_logs
from tasks.kit.polling import wait_done

ROOT = Path(__file__).resolve().parent.parent
DEMO_CASE = ROOT / "examples" / "cases" / "orders_ingestion.yaml"
#: the negative case: a file with a wrong header is quarantined, not loaded
NEGATIVE_CASE = ROOT / "examples" / "cases" / "orders_bad_header.yaml"
#: the header the pipeline accepts; any other file is quarantined
ORDERS_HEADER = "order_id,customer_id,order_date,amount,currency,status"
#: the header the pipeline accepts from each source (incoming/<source>/...); any other file is quarantined
SOURCE_HEADERS = {"orders": ORDERS_HEADER, "returns": "order_id,customer_id,return_date,amount,currency,reason"}
DEMO_SUITE = ROOT / "examples" / "nightly-suite.yaml"
REGION = "us-east-1"
LANDING_BUCKET = "demo-landing"
CURATED_BUCKET = "demo-curated"
ATHENA_BUCKET = "demo-athena-results"
SOURCE_PARAMETER = "/demo/orders/source_bucket"
PRODUCTION_SOURCE = "acme-prod-landing"
FUNCTION = "demo-orders-ingest"
AUDIT_TABLE = "demo-ingest-audit"
DEAD_LETTER_QUEUE = "demo-orders-dlq"
#: the function's answer to an invocation, and how many are kept queued
LAMBDA_ANSWER = json.dumps({"accepted": True, "source": "orders"})
LAMBDA_ANSWERS = 20
#: moto's account (its default): the emulator runs in this process, its backends are read here
MOTO_ACCOUNT = "123456789012"


class FakePipeline:
    """Stands in for the pipeline under test: reads its source bucket from SSM, copies landed files to the
    curated zone after ``delay`` seconds, and answers Athena with the rows it ingested (all but the last of each
    file when ``loses_a_row``: a broken pipeline, for a case that fails)."""

    def __init__(self, endpoint: str, delay: float = 2.0, interval: float = 0.2, loses_a_row: bool = False) -> None:
        self.endpoint = endpoint
        self.loses_a_row = loses_a_row
        self.s3 = boto3.client("s3", endpoint_url=endpoint, region_name=REGION)
        self.ssm = boto3.client("ssm", endpoint_url=endpoint, region_name=REGION)
        self.dynamodb = boto3.client("dynamodb", endpoint_url=endpoint, region_name=REGION)
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
        self.queue_lambda_answers()
        self.create_audit_resources()

    def queue_lambda_answers(self) -> None:
        """What the function answers: moto runs no code without Docker, its answers are queued (one per
        invocation). Kept at LAMBDA_ANSWERS or more, so a long-lived emulator (``python -m flows.emulator``)
        answers every run; checked on each pass of the pipeline."""
        from moto.awslambda_simple.models import lambda_simple_backends

        queued = len(lambda_simple_backends[MOTO_ACCOUNT][REGION].lambda_simple_results_queue)
        if queued < LAMBDA_ANSWERS:
            moto_api(self.endpoint, "static/lambda-simple/response",
                     {"region": REGION, "results": [LAMBDA_ANSWER] * (LAMBDA_ANSWERS - queued)})

    def create_audit_resources(self) -> None:
        """The audit table (one item per ingested file, keyed by its S3 URI) and the dead-letter queue."""
        self.dynamodb.create_table(TableName=AUDIT_TABLE, BillingMode="PAY_PER_REQUEST",
                                   KeySchema=[{"AttributeName": "file", "KeyType": "HASH"}],
                                   AttributeDefinitions=[{"AttributeName": "file", "AttributeType": "S"}])
        boto3.client("sqs", endpoint_url=self.endpoint, region_name=REGION).create_queue(QueueName=DEAD_LETTER_QUEUE)

    def write_audit(self, bucket: str, key: str, target: str, rows: int, total: Decimal) -> None:
        """The audit item of one ingested file: where it came from and went, its rows and total, when."""
        loaded_at = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        self.dynamodb.put_item(TableName=AUDIT_TABLE, Item={
            "file": {"S": f"s3://{bucket}/{key}"}, "status": {"S": "LOADED"}, "rows": {"N": str(rows)},
            "total_amount": {"N": f"{total:.2f}"}, "curated_key": {"S": f"s3://{CURATED_BUCKET}/{target}"},
            "loaded_at": {"S": loaded_at}})

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
        self.queue_lambda_answers()
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
        """Copy the file to the curated zone and make its rows what the Athena table answers; or, when its header
        is not its source's (``incoming/<source>/...``), move it to ``quarantine/`` in its own bucket instead."""
        body = self.s3.get_object(Bucket=bucket, Key=key)["Body"].read().decode()
        source = key[len("incoming/"):].split("/", 1)[0]
        if body.splitlines()[:1] != [SOURCE_HEADERS.get(source)]:
            self.s3.copy_object(Bucket=bucket, Key="quarantine/" + key[len("incoming/"):],
                                CopySource={"Bucket": bucket, "Key": key})
            self.s3.delete_object(Bucket=bucket, Key=key)
            return
        target = "curated/" + key[len("incoming/"):]
        self.s3.copy_object(Bucket=CURATED_BUCKET, Key=target, CopySource={"Bucket": bucket, "Key": key})
        rows = list(csv.DictReader(io.StringIO(body)))
        if self.loses_a_row:
            rows = rows[:-1]
        total = sum((Decimal(r["amount"]) for r in rows), Decimal("0"))
        self.write_audit(bucket, key, target, len(rows), total)
        # the table's answer to the case's next query (moto answers Athena from a queue, in order): a file's
        # rows replace the answers that a case stopped before its query left behind, so they never answer a
        # later run (the example cases take turns on the SSM parameter: one file at a time)
        from moto.athena.models import athena_backends

        athena_backends[MOTO_ACCOUNT][REGION].query_results_queue.clear()
        columns = [("orders", "bigint"), ("total_amount", "decimal(12,2)"), ("currencies", "bigint")]
        data = [[c for c, _ in columns], [str(len(rows)), f"{total:.2f}", str(len({r['currency'] for r in rows}))]]
        moto_api(self.endpoint, "static/athena/query-results", {"region": REGION, "results": [{
            "rows": [{"Data": [{"VarCharValue": v} for v in row]} for row in data],
            "column_info": [{"Name": n, "Label": n, "Type": t, "Nullable": "UNKNOWN", "CaseSensitive": False}
                            for n, t in columns],
        }]})


def where_to_look(result_url: str | None, case: str, temporary: bool) -> str:
    from flows.evidence.ui import case_key
    from flows.run.command import temporary_server_hint

    if result_url and not temporary:
        return (f"Evidence: open {result_url} (Artifacts tab), or the Artifacts page of the Prefect UI "
                f"(key {case_key(case)}).")
    return temporary_server_hint()


#: how often a deployment run of the demo says it is still starting the emulator (it takes ~20 s there)
PROGRESS_S = 5.0


@contextlib.contextmanager
def progress(say: Any, what: str, every: float | None = PROGRESS_S) -> Iterator[None]:
    """While the block runs, say every ``every`` seconds that ``what`` is still under way, with the time so far
    (None: say nothing), so a run's log is never silent for long."""
    done = threading.Event()
    started = time.monotonic()

    def beat() -> None:
        while every is not None and not done.wait(every):
            say(f"... still {what} ({time.monotonic() - started:.0f} s so far)")

    thread = threading.Thread(target=beat, name="demo-progress", daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join(1.0)


@contextlib.contextmanager
def demo_pipeline(loses_a_row: bool = False, say: Any = print, port: int = 0,
                  progress_every: float | None = None) -> Iterator[FakePipeline]:
    """The local emulator with the fake pipeline running on it, this process's AWS SDK pointed at it. ``port``:
    the emulator's (0: a free one); ``progress_every``: say every so many seconds that it is still starting."""
    say("Starting the local AWS emulator (moto) ...")
    with contextlib.ExitStack() as stack:
        with progress(say, "starting the local AWS emulator and the fake pipeline", progress_every):
            endpoint = stack.enter_context(moto_server(lambda_like_aws=True, port=port))
            stack.enter_context(use_emulator(endpoint))
            say(f"Emulator on {endpoint}; building the fake ingestion pipeline ...")
            pipeline = FakePipeline(endpoint, loses_a_row=loses_a_row)
            pipeline.create_resources()
            pipeline.start()
        try:
            yield pipeline
        finally:
            pipeline.stop()


def source_setting(pipeline: FakePipeline) -> str:
    return pipeline.ssm.get_parameter(Name=SOURCE_PARAMETER)["Parameter"]["Value"]


def _demo_run_name() -> str:
    return "demo-" + datetime.now().strftime("%Y%m%d-%H%M%S")


@flow(name="pipeline-test-demo", flow_run_name=_demo_run_name, log_prints=True)
def pipeline_demo(case: str = "examples/cases/orders_ingestion.yaml", break_pipeline: bool = False,
                  evidence_dir: str | None = None) -> Any:
    """The demo as one flow run: start the local AWS emulator and the fake pipeline, run the case (a path under
    the project folder) as a subflow run against them, and end as the case ended. ``break_pipeline``: the
    pipeline loses a row, so the case fails."""
    logger = get_run_logger()  # not print: the progress lines come from another thread, which print would miss
    with progress(logger.info, "loading the case's flow", PROGRESS_S):
        from flows.pipeline_test import pipeline_test

    with demo_pipeline(loses_a_row=break_pipeline, say=logger.info, progress_every=PROGRESS_S) as pipeline:
        state = pipeline_test(spec=str(ROOT / case), evidence_dir=evidence_dir, return_state=True)
        print(f"SSM {SOURCE_PARAMETER} after the case: {source_setting(pipeline)!r} "
              f"(it was {PRODUCTION_SOURCE!r} before)")
    if state.is_completed():
        return state
    return Failed(message=state.message, data=state.result(raise_on_failure=False))  # the case's message


def main(argv: list[str] | None = None) -> int:
    prefect_logs.install()  # a failed case is a failure in the logs, not a crash report
    safe_output()  # no UnicodeEncodeError on a cp1252 console or pipe (flows.console)
    parser = argparse.ArgumentParser(
        prog="python -m flows.demo",
        description="Run the example case against a fake ingestion pipeline on a local AWS emulator (no AWS "
                    "account, no network), and show where its evidence is.")
    parser.add_argument("--fail", action="store_true",
                        help="break the fake pipeline (it loses a row), to see what a failed case looks like")
    parser.add_argument("--suite", action="store_true", help="run every example case as one suite "
                        "(examples/nightly-suite.yaml): its progress, summary and suite evidence pack")
    args = parser.parse_args(argv)
    from flows.cli import format_result
    from flows.evidence.results import result_of
    from flows.pipeline_test import pipeline_test
    from flows.run.command import guarded, on_temporary_server

    if args.suite:  # the suite's own CLI: a temporary server when none is set, its exit codes
        from flows.cli import main as cli

        with demo_pipeline(loses_a_row=args.fail):
            return cli([str(DEMO_SUITE)])

    seen: dict[str, Any] = {}
    temporary = on_temporary_server()

    with contextlib.ExitStack() as stack, ThreadPoolExecutor(1, thread_name_prefix="demo-setup") as setup:
        # the emulator and the fake pipeline are built while the (temporary) Prefect server starts
        building = setup.submit(stack.enter_context, demo_pipeline(loses_a_row=args.fail))

        def run() -> int:
            wait_done(building)  # in slices: a signal's handler runs meanwhile (tasks.kit.polling)
            pipeline = building.result()
            states = [pipeline_test(spec=str(case), return_state=True) for case in (DEMO_CASE, NEGATIVE_CASE)]
            seen.update(results=[(state, result_of(state)) for state in states], setting=source_setting(pipeline))
            return 0

        # against PREFECT_API_URL when set, else a temporary server of its own (exit 3, one line, when there is
        # none); where to look is said once that server is gone
        code = guarded(run)
        building.exception()  # finished building (a failure was reported by run, if it ran) before the tear-down
    if not seen:
        return code
    passed, where = True, []
    for state, result in seen["results"]:
        print()
        if result is None:
            print(f"The demo's flow run ended {state.type.value}: {state.message}")
            passed = False
            continue
        print(format_result(result, with_link=False))
        where.append(where_to_look(result.ui_url, result.case, temporary))
        passed = passed and result.passed
    setting = seen["setting"]
    restored = "restored" if setting == PRODUCTION_SOURCE else "NOT restored"
    print(f"SSM {SOURCE_PARAMETER} after the runs: {setting!r} ({restored}: the cases changed it for the test)")
    for line in dict.fromkeys(where):  # the temporary server's hint once, a link per case otherwise
        print(line)
    print("Next: `python -m flows.emulator` keeps this emulator and its fake pipeline running, so you can run the "
          "example cases yourself (docs/running.md, Against the local emulator).")
    return 0 if passed else 1


def emulator_main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m flows.emulator",
        description="Run the local AWS emulator (moto's server on 127.0.0.1) with the demo's fake orders pipeline "
                    "on it until Ctrl+C, and print the environment that points a terminal at it: then the "
                    "example cases, the nightly suite and the example deployments run against it.")
    parser.add_argument("--port", type=int, default=0, help="the emulator's port (default: a free one)")
    parser.add_argument("--shell", choices=SHELLS, help="print the environment for this shell only (default: "
                        "sh on Linux and macOS, cmd and powershell on Windows)")
    parser.add_argument("--fail", action="store_true", help="break the fake pipeline (it loses a row)")
    args = parser.parse_args(argv)
    if args.port:  # moto's server would wait forever for a port it cannot bind
        try:
            with socket.socket() as sock:
                sock.bind(("127.0.0.1", args.port))
        except OSError as exc:
            print(f"Port {args.port} on 127.0.0.1 cannot be used ({exc.strerror or exc}): give another with --port, "
                  "or none for a free one.", file=sys.stderr)
            return 3
    stop = threading.Event()
    stops = [signal.SIGINT, signal.SIGTERM, *([signal.SIGBREAK] if hasattr(signal, "SIGBREAK") else [])]
    previous = {signum: signal.signal(signum, lambda *_: stop.set()) for signum in stops}
    say = lambda text: print(text, flush=True)  # noqa: E731
    try:
        say("Loading the fake pipeline ...")
        with demo_pipeline(loses_a_row=args.fail, say=say, port=args.port) as pipeline:
            shells = [args.shell] if args.shell else (["cmd", "powershell"] if os.name == "nt" else ["sh"])
            say(f"\nThe emulator is ready on {pipeline.endpoint}, with the demo's pipeline (buckets demo-landing, "
                "demo-curated, ...). Point another terminal at it:\n")
            for shell in shells:
                if len(shells) > 1:
                    say(f"  {'cmd' if shell == 'cmd' else 'PowerShell'}:")
                for line in env_lines(emulator_env(pipeline.endpoint), shell):
                    say(f"    {line}")
                say("")
            say("then run, for example:\n    python -m flows.pipeline_test examples/cases/orders_ingestion.yaml\n"
                "    python -m flows.pipeline_test examples/nightly-suite.yaml\n"
                "Ctrl+C here stops the emulator (everything in it is lost).")
            while not stop.wait(0.5):
                pass
            say("Stopping the emulator ...")
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    say("Stopped.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
