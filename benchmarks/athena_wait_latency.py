"""How soon is an Athena query that finishes after D seconds noticed, and at what cost in API calls?

    python benchmarks/athena_wait_latency.py [--delays 1 3 10]

Against moto's server on 127.0.0.1, three ways of waiting run side by side, each on its own query:
- ``wait_for_query``: this project's wait (GetQueryExecution at once, then a growing interval; AthenaWait's
  defaults: 0.2 s, x1.25, capped at 15 s);
- a constant 1 s loop (awswrangler's interval);
- a constant 5 s loop (dagster-aws's interval).

How a query "finishes at D": moto's state manager is set (POST ``/moto-api/state-manager/set-transition``,
model ``athena::execution``) to manual progression with a count no wait reaches, so moto never advances a
query by itself; each query is put in RUNNING right after it starts, and at start + D a timer sets it to
SUCCEEDED. Both are set on moto's own execution object: the threaded server runs in this process, so this
is the object its GetQueryExecution answers from (the project's tests set FAILED the same way). Every
GetQueryExecution is a real HTTP call to moto's server; nothing is faked on the client side. All queries
(every D, every way) run at once, so the whole run takes about max(D) + 5 s.

Latency is the time from the query's end to the waiter's return. Target for ``wait_for_query``: at most
0.25 x D + 0.5 s. Note: the constant loops check at whole multiples of their interval after the start, so a
D on that grid (1, 3 and 10 s for the 1 s loop; 10 s for the 5 s loop) is their best case, caught within a
few ms; their typical latency is half their interval, at worst the whole interval.
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import boto3
from moto.athena.models import athena_backends
from moto.core import DEFAULT_ACCOUNT_ID

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from flows.emulator import moto_api, moto_server, use_emulator  # noqa: E402
from tasks.athena import TERMINAL_STATES, AthenaWait, start_query, wait_for_query  # noqa: E402

if TYPE_CHECKING:
    from types_boto3_athena import AthenaClient

REGION = "us-east-1"
BUCKET = "bench-athena-results"


def ours(client: AthenaClient, query_id: str) -> None:
    wait_for_query(client, query_id, AthenaWait())


def constant(interval: float) -> Callable[[Any, str], None]:
    """A fixed-interval loop, as peers wait: GetQueryExecution, sleep, again."""

    def wait(client: AthenaClient, query_id: str) -> None:
        while client.get_query_execution(QueryExecutionId=query_id)["QueryExecution"]["Status"]["State"] \
                not in TERMINAL_STATES:
            time.sleep(interval)

    return wait


STRATEGIES: dict[str, Callable[[Any, str], None]] = {
    "wait_for_query": ours,
    "constant 1 s": constant(1.0),
    "constant 5 s": constant(5.0),
}


def execution(query_id: str) -> Any:
    """moto's own execution object (the server runs in this process)."""
    return athena_backends[DEFAULT_ACCOUNT_ID][REGION].executions[query_id]


def counted_client(query_id: str) -> tuple[Any, list[str]]:
    """A client whose first (slow: endpoint rules, connection) call is made before timing; counts the rest."""
    client = boto3.client("athena")
    client.get_query_execution(QueryExecutionId=query_id)
    calls: list[str] = []
    client.meta.events.register("before-call.athena.GetQueryExecution", lambda model, **_: calls.append(model.name))
    return client, calls


def measure(delays: list[float]) -> dict[tuple[float, str], tuple[float, int]]:
    """Start one query per (D, way), end each at start + D; return (latency, GetQueryExecution calls) of each."""
    starter = boto3.client("athena")
    jobs = {}
    for delay in delays:
        for name in STRATEGIES:
            query_id = start_query(starter, f"SELECT {delay} AS d", output_location=f"s3://{BUCKET}/results/")
            execution(query_id).status = "RUNNING"
            # clients are made here, not in the threads: creating boto3 clients is not thread-safe
            jobs[(delay, name)] = (query_id, *counted_client(query_id))
    ended: dict[tuple[float, str], float] = {}
    out: dict[tuple[float, str], tuple[float, int]] = {}

    def finish(delay: float) -> None:
        time.sleep(max(0.0, start + delay - time.monotonic()))
        for name in STRATEGIES:
            key = (delay, name)
            execution(jobs[key][0]).status = "SUCCEEDED"
            ended[key] = time.monotonic()

    def run(key: tuple[float, str]) -> None:
        query_id, client, calls = jobs[key]
        STRATEGIES[key[1]](client, query_id)
        out[key] = (time.monotonic() - ended[key], len(calls))

    threads = [threading.Thread(target=finish, args=(d,)) for d in delays]
    threads += [threading.Thread(target=run, args=(key,)) for key in jobs]
    start = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--delays", type=float, nargs="+", default=[1, 3, 10], help="D values in s (default 1 3 10)")
    args = parser.parse_args()
    delays = sorted(set(args.delays))
    with moto_server() as endpoint, use_emulator(endpoint):
        boto3.client("s3").create_bucket(Bucket=BUCKET)
        # manual progression that never advances: the queries' states are set here, not by describe counts
        moto_api(endpoint, "state-manager/set-transition",
                 {"model_name": "athena::execution", "transition": {"progression": "manual", "times": 10**9}})
        results = measure(delays)
    print(f"{'D':>6} | " + " | ".join(f"{name:>22}" for name in STRATEGIES) + " | target (wait_for_query)")
    worst = 0.0
    for delay in delays:
        cells = []
        for name in STRATEGIES:
            latency, calls = results[(delay, name)]
            cells.append(f"{latency:6.2f} s, {calls:3d} calls".rjust(22))
        target = 0.25 * delay + 0.5
        latency = results[(delay, "wait_for_query")][0]
        verdict = "OK" if latency <= target else "MISSED"
        worst = max(worst, latency / target)
        print(f"{delay:>5.1f}s | " + " | ".join(cells) + f" | <= {target:.2f} s {verdict}")
    print(f"worst latency / target for wait_for_query: {worst:.2f}")
    print("(the constant loops check at whole multiples of their interval, so a D on that grid is their best case;\n"
          " typically they notice half an interval late, at worst a whole one: try --delays 1.5 3.5 10.5)")
    return 0 if worst <= 1 else 1


if __name__ == "__main__":
    sys.exit(main())
