"""How soon is an object that appears after D seconds noticed, and at what cost in API calls?

    python benchmarks/expect_objects_latency.py [--delays 0.5 2 5 20]

Against moto's server on 127.0.0.1, three ways of waiting run side by side for each D, each for its own key:
- ``expect_objects``: this project's step (HEAD, first check at once, growing interval);
- the proof of concept's way: ``get_object`` (a full download) up to 5 tries, 10 s apart;
- boto3's ``object_exists`` waiter (HEAD every 5 s).
Latency is the time from the object's arrival to the waiter's return. Target for ``expect_objects``:
at most 0.25 x D + 0.5 s. Prints one line per D.
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import boto3
from botocore.config import Config
from botocore.exceptions import ClientError

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from flows.emulator import moto_server, use_emulator  # noqa: E402
from tasks.kit.polling import PollSettings
from tasks.s3.steps import ExpectObjectsStep, expect_objects

if TYPE_CHECKING:
    from types_boto3_s3 import S3Client

BUCKET = "bench-bucket"


def counted_client() -> tuple[Any, list[str]]:
    client = boto3.client("s3", config=Config(retries={"mode": "standard"}))
    calls: list[str] = []
    client.meta.events.register("before-call.s3.*", lambda model, **_: calls.append(model.name))
    return client, calls


def ours(client: S3Client, key: str) -> bool:
    expect_objects(client, ExpectObjectsStep(bucket=BUCKET, keys=[key], wait=PollSettings(timeout=120)))
    return True


def reference(client: S3Client, key: str) -> bool:
    """The proof of concept: get_object (downloads the file), 5 tries, 10 s apart."""
    for attempt in range(5):
        try:
            client.get_object(Bucket=BUCKET, Key=key)["Body"].read()
            return True
        except ClientError:
            if attempt < 4:
                time.sleep(10)
    return False


def waiter(client: S3Client, key: str) -> bool:
    client.get_waiter("object_exists").wait(Bucket=BUCKET, Key=key, WaiterConfig={"Delay": 5, "MaxAttempts": 30})
    return True


STRATEGIES: dict[str, Callable[[Any, str], bool]] = {
    "expect_objects": ours,
    "reference 10 s get_object": reference,
    "waiter 5 s": waiter,
}


def measure(delay: float, writer: Any) -> dict[str, tuple[float | None, int]]:
    """Start every strategy, put the objects after ``delay`` seconds, return (latency, calls) per strategy."""
    arrived: dict[str, float] = {}
    out: dict[str, tuple[float | None, int]] = {}
    start = time.monotonic()
    keys = {name: f"d{delay}/{i}-{time.time_ns()}.csv" for i, name in enumerate(STRATEGIES)}

    def put_all() -> None:
        time.sleep(max(0.0, start + delay - time.monotonic()))
        for name, key in keys.items():
            writer.put_object(Bucket=BUCKET, Key=key, Body=b"id,amount\n1,10\n")
            arrived[name] = time.monotonic()

    def run(name: str) -> None:
        client, calls = counted_client()
        ok = STRATEGIES[name](client, keys[name])
        done = time.monotonic()
        out[name] = ((done - arrived[name]) if ok and name in arrived else None, len(calls))

    threads = [threading.Thread(target=put_all)] + [threading.Thread(target=run, args=(n,)) for n in STRATEGIES]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--delays", type=float, nargs="+", default=[0.5, 2, 5, 20])
    args = parser.parse_args()
    with moto_server() as endpoint, use_emulator(endpoint):
        writer = boto3.client("s3")
        writer.create_bucket(Bucket=BUCKET)
        print(f"{'D':>6} | " + " | ".join(f"{name:>28}" for name in STRATEGIES) + " | target (ours)")
        worst = 0.0
        for delay in args.delays:
            res = measure(delay, writer)
            cells = []
            for name in STRATEGIES:
                latency, calls = res[name]
                text = "not found" if latency is None else f"{latency:6.2f} s"
                cells.append(f"{text}, {calls:3d} calls".rjust(28))
            target = 0.25 * delay + 0.5
            ours_latency = res["expect_objects"][0]
            verdict = "OK" if ours_latency is not None and ours_latency <= target else "MISSED"
            worst = max(worst, (ours_latency or 1e9) / target)
            print(f"{delay:>5.1f}s | " + " | ".join(cells) + f" | <= {target:.2f} s {verdict}", flush=True)
        print(f"worst latency / target for expect_objects: {worst:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
