"""How long does reading a large Athena result take: paging GetQueryResults, or the CSV result file in S3?

    python benchmarks/athena_results.py [--rows 100000] [--latency-ms 50]

Against moto's server on 127.0.0.1. One result of ``--rows`` typed rows (bigint, decimal, double, varchar,
date, timestamp, boolean, with NULLs and empty strings) is injected through moto's API and one query is
started with an output location in an existing bucket, so moto writes the CSV result file. Then the
project's :func:`tasks.athena.fetch_results` reads it both ways:

- *paging*: the execution without its result file, so every row comes through the ``GetQueryResults``
  paginator, 1,000 rows a call as Athena pages;
- *result file*: the execution as it is: the first page (for the column types), then one streamed
  ``GetObject`` of the CSV file.

Moto returns every row of a result in one ``GetQueryResults`` answer, so a thin stand-in pages it: moto's whole
answer is fetched once beforehand (untimed; that first call is also when moto writes the result file), and
a botocore ``before-send`` hook then answers each ``GetQueryResults`` request with the JSON of its slice of
moto's rows (``MaxResults`` from ``NextToken``), which botocore parses as it would Athena's page. S3 calls go
to moto's server. Every call, the stand-in's included, first sleeps ``--latency-ms`` in a ``before-send``
hook, the same for both ways (the round trip to a nearby region). Both ways must give the same typed rows
as the ones generated. Prints the time of each way and the ratio; target: the result file at least 5 times
faster at 100,000 rows. (Memory and time on results of up to 1,000,000 rows, and reconciliation:
``benchmarks/athena_result_memory.py``.)
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import time
import uuid
from datetime import date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any, Iterator, Mapping, cast

import boto3
from botocore.awsrequest import AWSPreparedRequest, AWSResponse
from botocore.client import BaseClient

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from flows.emulator import moto_api, moto_server, use_emulator  # noqa: E402
from tasks.athena import PAGE_SIZE, fetch_results, start_query  # noqa: E402

REGION = "us-east-1"
BUCKET = "bench-athena-results"
OUTPUT = f"s3://{BUCKET}/results/"
COLUMNS = [
    ("id", "bigint"), ("amount", "decimal(12,2)"), ("ratio", "double"), ("customer", "varchar"),
    ("day", "date"), ("created_at", "timestamp"), ("active", "boolean"), ("note", "varchar"),
]


def make_rows(count: int) -> tuple[list[list[str | None]], list[dict[str, Any]]]:
    """``count`` rows as Athena's texts (None for NULL) and the same rows as the typed values expected back."""
    texts: list[list[str | None]] = []
    typed: list[dict[str, Any]] = []
    day0, at0 = date(2020, 1, 1), datetime(2024, 1, 31, 8, 0, 0)
    for i in range(count):
        big = 9_007_199_254_740_993 + i  # past 2**53: a float would lose it
        amount = None if i % 11 == 0 else Decimal(f"{(i * 37) % 100000}.{i % 100:02d}")
        ratio = None if i % 29 == 0 else i / 8
        customer = None if i % 13 == 0 else f"Zoë {i}, Ltd"
        day = None if i % 7 == 0 else day0 + timedelta(days=i % 1500)
        at = None if i % 19 == 0 else at0 + timedelta(seconds=i * 37, milliseconds=i % 1000)
        active = None if i % 23 == 0 else i % 2 == 0
        note = "" if i % 5 == 0 else (None if i % 17 == 0 else f"n{i % 97}")
        typed.append({"id": big, "amount": amount, "ratio": ratio, "customer": customer, "day": day,
                      "created_at": at, "active": active, "note": note})
        texts.append([
            str(big),
            None if amount is None else str(amount),
            None if ratio is None else repr(ratio),
            customer,
            None if day is None else day.isoformat(),
            None if at is None else at.strftime("%Y-%m-%d %H:%M:%S.%f")[:-3],
            None if active is None else str(active).lower(),
            note,
        ])
    return texts, typed


def inject(endpoint: str, texts: list[list[str | None]]) -> None:
    """Queue the result for the next query through moto's API, with Athena's header row first."""
    data = [[name for name, _ in COLUMNS]] + texts
    result = {
        "rows": [{"Data": [{} if v is None else {"VarCharValue": v} for v in row]} for row in data],
        "column_info": [{"Name": n, "Label": n, "Type": t, "Nullable": "UNKNOWN", "CaseSensitive": t == "varchar"}
                        for n, t in COLUMNS],
    }
    moto_api(endpoint, "static/athena/query-results", {"region": REGION, "results": [result]})


class _Body(io.BytesIO):
    """A canned HTTP body, readable the way botocore reads a urllib3 response."""

    def stream(self, **_: Any) -> Iterator[bytes]:
        yield self.getvalue()


class AthenaPager:
    """The stand-in: answers GetQueryResults with pages sliced from moto's whole result, as Athena pages."""

    def __init__(self, full: Mapping[str, Any]) -> None:
        self.rows: list[dict[str, Any]] = full["ResultSet"]["Rows"]
        self.metadata: dict[str, Any] = full["ResultSet"]["ResultSetMetadata"]

    def __call__(self, request: AWSPreparedRequest, **_: Any) -> AWSResponse:
        params = json.loads(cast(bytes, request.body))
        size = min(int(params.get("MaxResults", PAGE_SIZE)), PAGE_SIZE)
        start = int(params.get("NextToken") or 0)
        page: dict[str, Any] = {
            "ResultSet": {"Rows": self.rows[start:start + size], "ResultSetMetadata": self.metadata},
            "UpdateCount": 0,
        }
        if start + size < len(self.rows):
            page["NextToken"] = str(start + size)
        headers = {"x-amzn-requestid": str(uuid.uuid4()), "content-type": "application/x-amz-json-1.1"}
        # botocore wraps the headers itself (the stubs want its HTTPHeaders)
        return AWSResponse(request.url, 200, headers, _Body(json.dumps(page).encode("utf-8")))  # type: ignore[arg-type]


def add_latency(client: BaseClient, seconds: float) -> None:
    """Every request the client sends first waits ``seconds`` (registered before any stand-in hook)."""
    client.meta.events.register("before-send", lambda **_: time.sleep(seconds))


def count_calls(client: BaseClient) -> list[str]:
    """The operations the client calls, in order."""
    calls: list[str] = []
    client.meta.events.register("before-call", lambda model, **_: calls.append(model.name))
    return calls


def typed_equal(actual: list[dict[str, Any]], expected: list[dict[str, Any]]) -> bool:
    """Equal values and equal types (1 == 1.0 == True in Python would hide a typing bug)."""
    return actual == expected and all(
        type(a[k]) is type(e[k]) for a, e in zip(actual, expected) for k in e
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=100_000, help="rows in the result (default 100000)")
    parser.add_argument("--latency-ms", type=float, default=50.0,
                        help="added round trip of every API call, in ms (default 50, a nearby region)")
    args = parser.parse_args()
    latency = args.latency_ms / 1000
    texts, expected = make_rows(args.rows)
    with moto_server() as endpoint, use_emulator(endpoint):
        plain = boto3.client("athena")
        boto3.client("s3").create_bucket(Bucket=BUCKET)
        inject(endpoint, texts)
        query_id = start_query(plain, "SELECT * FROM sales.orders", output_location=OUTPUT)
        execution = plain.get_query_execution(QueryExecutionId=query_id)["QueryExecution"]
        assert execution["Status"]["State"] == "SUCCEEDED", execution["Status"]
        # untimed: moto's whole answer for the stand-in; moto also writes the result file now
        pager = AthenaPager(plain.get_query_results(QueryExecutionId=query_id))
        size = boto3.client("s3").head_object(Bucket=BUCKET, Key=f"results/{query_id}.csv")["ContentLength"]

        athena, s3 = boto3.client("athena"), boto3.client("s3")
        add_latency(athena, latency)
        add_latency(s3, latency)
        # a before-send handler that returns a response answers the request (the stubs type handlers as -> None)
        athena.meta.events.register("before-send.athena.GetQueryResults", pager)  # type: ignore[arg-type]
        # untimed: each client's first call loads its endpoint rules and opens its connection
        athena.get_query_execution(QueryExecutionId=query_id)
        s3.head_object(Bucket=BUCKET, Key=f"results/{query_id}.csv")
        athena_calls, s3_calls = count_calls(athena), count_calls(s3)

        print(f"{args.rows:,} rows x {len(COLUMNS)} columns ({', '.join(t for _, t in COLUMNS)}), "
              f"result file {size / 1e6:.1f} MB, {args.latency_ms:g} ms added to every call")
        timings: dict[str, float] = {}
        digests: set[str] = set()
        ways: dict[str, Any] = {"paging GetQueryResults": {**execution, "ResultConfiguration": {}},
                                "result file in S3": execution}
        for way, given in ways.items():
            athena_calls.clear()
            s3_calls.clear()
            began = time.perf_counter()
            result = fetch_results(athena, s3, given)
            timings[way] = time.perf_counter() - began
            ok = typed_equal(result.rows, expected)
            digests.add(result.sha256 or "")
            calls = len(athena_calls) + len(s3_calls)
            print(f"{way:>24}: {timings[way]:6.2f} s ({calls * latency:5.2f} s of it added latency), "
                  f"{calls:3d} calls ({len(athena_calls)} GetQueryResults, {len(s3_calls)} GetObject), "
                  f"{len(result.rows):,} rows, typed rows {'as expected' if ok else 'WRONG'}", flush=True)
            if not ok:
                return 1
        same = len(digests) == 1
        ratio = timings["paging GetQueryResults"] / timings["result file in S3"]
        verdict = ("OK" if ratio >= 5 else "MISSED") if args.rows >= 100_000 else "not judged below 100,000 rows"
        print(f"same typed rows both ways: {'yes' if same else 'NO'} (one sha256 of the result)")
        print(f"result file {ratio:.1f} x faster than paging (target >= 5 x at 100,000 rows: {verdict})")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
