"""The demo: the example case run against a small fake ingestion pipeline on a local AWS emulator.

    python -m flows.demo

Starts moto's server on 127.0.0.1 (a free port), creates the pipeline's buckets, starts a background worker
that stands in for the real pipeline (it copies each file that lands under ``incoming/`` in the landing
bucket to ``curated/`` in the curated bucket after a short delay), runs ``examples/cases/orders_ingestion.yaml``
as a Prefect flow, and prints the result and where to see the evidence. No AWS account, no network.
"""

from __future__ import annotations

import sys
import threading
import time
from pathlib import Path
from typing import Any

import boto3

from flows.emulator import moto_server, use_emulator

ROOT = Path(__file__).resolve().parent.parent
DEMO_CASE = ROOT / "examples" / "cases" / "orders_ingestion.yaml"
LANDING_BUCKET = "demo-landing"
CURATED_BUCKET = "demo-curated"


class FakePipeline:
    """Stands in for the pipeline under test: copies landed files to the curated zone after ``delay`` seconds."""

    def __init__(self, endpoint: str, delay: float = 2.0, interval: float = 0.2) -> None:
        self.s3: Any = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
        self.delay = delay
        self.interval = interval
        self.seen: dict[str, float] = {}
        self.done: set[str] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="fake-pipeline", daemon=True)

    def create_resources(self) -> None:
        for bucket in (LANDING_BUCKET, CURATED_BUCKET):
            self.s3.create_bucket(Bucket=bucket)

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
        """One pass: note new landed files, and process those that have waited ``delay`` seconds."""
        for page in self.s3.get_paginator("list_objects_v2").paginate(Bucket=LANDING_BUCKET, Prefix="incoming/"):
            for obj in page.get("Contents", []):
                self.seen.setdefault(obj["Key"], now)
        for key, first_seen in list(self.seen.items()):
            if key not in self.done and now - first_seen >= self.delay:
                target = "curated/" + key[len("incoming/"):]
                self.s3.copy_object(Bucket=CURATED_BUCKET, Key=target,
                                    CopySource={"Bucket": LANDING_BUCKET, "Key": key})
                self.done.add(key)


def where_to_look(result_url: str | None) -> str:
    from prefect.settings import get_current_settings

    settings = get_current_settings()
    if settings.api.url and result_url:
        return (f"Evidence: open {result_url} (Artifacts tab), or the Artifacts page of the Prefect UI "
                "(key case-orders-ingestion).")
    return ("Evidence: this run used a temporary Prefect server; its records are kept in "
            f"{settings.home}. Run `prefect server start` and open http://127.0.0.1:4200 to see the run and its "
            "artifacts (see the README's 'Local Prefect server').")


def main() -> int:
    from flows.pipeline_test import format_result, pipeline_test, result_of

    print("Starting the local AWS emulator (moto) ...")
    with moto_server() as endpoint, use_emulator(endpoint):
        print(f"Emulator on {endpoint}; building the fake ingestion pipeline ...")
        pipeline = FakePipeline(endpoint)
        pipeline.create_resources()
        pipeline.start()
        try:
            state = pipeline_test(spec=str(DEMO_CASE), return_state=True)
        finally:
            pipeline.stop()
    result = result_of(state)
    print()
    if result is None:
        print(f"The demo's flow run ended {state.type.value}: {state.message}")
        return 1
    print(format_result(result, with_link=False))
    print(where_to_look(result.ui_url))
    return 0 if result.passed else 1


if __name__ == "__main__":
    sys.exit(main())
