"""Tests of athena_query's streaming result path: checks, digest and reconciliation fed row by row, memory bounded."""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import tracemalloc
from pathlib import Path
from typing import Any, Iterator

from tasks.athena import AthenaQueryStep, Column, fetch_results
from tasks.athena.client import read_results
from tasks.athena.evidence import result_digest
from tasks.athena.step import ResultSink
from tasks.kit.aws import ClientFactory
from tasks.kit.step import StepContext

COLUMNS = [("id", "bigint"), ("amount", "decimal(12,2)"), ("name", "varchar")]
LOCATION = "s3://results/q-1.csv"


def text_row(i: int) -> str:
    return f'"{i}","{i % 1000}.{i % 100:02d}","customer {i}"\n'


class FakeBody:
    """An S3 body generating the CSV result file line by line (the file itself is never in memory)."""

    def __init__(self, rows: int) -> None:
        self.rows = rows

    def iter_lines(self, chunk_size: int, keepends: bool) -> Iterator[bytes]:
        yield b'"id","amount","name"\n'
        for i in range(1, self.rows + 1):
            yield text_row(i).encode()

    def close(self) -> None:
        pass


class FakeS3:
    def __init__(self, rows: int) -> None:
        self.rows = rows

    def get_object(self, Bucket: str, Key: str) -> dict[str, Any]:  # noqa: N803  (boto3's names)
        assert (Bucket, Key) == ("results", "q-1.csv")
        return {"Body": FakeBody(self.rows), "ResponseMetadata": {"RequestId": "r-1"}}


class FakeAthena:
    """The first GetQueryResults page (metadata, header, a NextToken): the rest is read from the result file."""

    def get_paginator(self, name: str) -> Any:
        first = {"ResultSet": {"ResultSetMetadata": {"ColumnInfo": [{"Name": n, "Label": n, "Type": t}
                                                                    for n, t in COLUMNS]},
                               "Rows": [{"Data": [{"VarCharValue": n} for n, _ in COLUMNS]}]},
                 "NextToken": "more"}

        class Paginator:
            def paginate(self, **_: Any) -> Iterator[dict[str, Any]]:
                yield first

        return Paginator()


EXECUTION = {"QueryExecutionId": "q-1", "StatementType": "DML", "ResultConfiguration": {"OutputLocation": LOCATION}}


def step(**expect: Any) -> AthenaQueryStep:
    return AthenaQueryStep.model_validate({"kind": "athena_query", "sql": "SELECT 1", "preview_rows": 5,
                                           "expect": expect})


def ctx(tmp_path: Path) -> StepContext:
    return StepContext(clients=ClientFactory(), case_name="c", run_id="r", label="q", spec_dir=tmp_path,
                       scratch_dir=tmp_path / "scratch")


def stream(rows: int, the_step: AthenaQueryStep, tmp_path: Path) -> ResultSink:
    sink, info = read_results(FakeAthena(), FakeS3(rows), EXECUTION, lambda cols: ResultSink(the_step, ctx(tmp_path),
                                                                                              cols),
                              logger=logging.getLogger("test"))
    assert info.rows == rows and info.source == LOCATION
    return sink


def test_streamed_checks_and_digest_equal_the_in_memory_ones(tmp_path: Path) -> None:
    the_step = step(row_count=3000, first_row={"id": {"equals": 1}, "amount": {"equals": "1.01"}})
    sink = stream(3000, the_step, tmp_path)
    result = fetch_results(FakeAthena(), FakeS3(3000), EXECUTION)
    columns = [{"name": c.name, "type": c.type} for c in result.columns]
    # the digest's definition: canonical JSON of the columns and of every row's texts as Athena gave them
    texts = [next(csv.reader([text_row(i)])) for i in range(1, 3001)]
    canonical = json.dumps({"columns": columns, "rows": texts}, separators=(",", ":"), ensure_ascii=False)
    assert sink.digest.hexdigest() == hashlib.sha256(canonical.encode()).hexdigest() == result.sha256
    assert result_digest(result.columns, texts) == result.sha256
    assert [c.passed for c in sink.checks.results()] == [True, True, True]
    assert sink.checks.count == 3000 and [r["id"] for r in sink.checks.preview] == [1, 2, 3, 4, 5]


def test_large_result_is_checked_digested_and_reconciled_in_bounded_memory(tmp_path: Path) -> None:
    """100,000 rows: what is held is the preview, counters, the expected set and a bounded diff, not the rows.

    Kept in memory the typed rows alone take far more than the bound (about 500 bytes a row, ~50 MB)."""
    rows = 100_000
    with open(tmp_path / "expected.csv", "w") as handle:  # 1,000 expected rows, 3 of them different
        handle.write("id,amount\n")
        for i in range(1, 1001):
            amount = f"{i % 1000}.{i % 100:02d}" if i not in (10, 20, 30) else "0.00"
            handle.write(f"{i},{amount}\n")
    the_step = step(min_rows=1, first_row={"id": {"equals": 1}},
                    reconcile={"file": "expected.csv", "key": ["id"], "show": 5})
    tracemalloc.start()
    try:
        sink = stream(rows, the_step, tmp_path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert sink.checks.count == rows and all(c.passed for c in sink.checks.results())
    assert sink.reconciler is not None
    report = sink.reconciler.finish()
    assert report.counts == {"missing": 0, "unexpected": rows - 1000, "differences": 3}
    assert len(report.first["unexpected"]) == 5  # shown; all of them are in the file
    assert sum(1 for _ in open(report.files["unexpected"])) == rows - 1000 + 1
    assert peak < 8 * 1024 * 1024, f"peak {peak / 2**20:.1f} MiB"


def test_a_result_file_failing_half_way_is_read_again_by_paging_into_a_new_sink(tmp_path: Path) -> None:
    class BrokenBody(FakeBody):
        def iter_lines(self, chunk_size: int, keepends: bool) -> Iterator[bytes]:
            yield b'"id","amount","name"\n'
            yield text_row(1).encode()
            yield b'"2","oops\n'  # not CSV: an unterminated quote at the end

    class BrokenS3(FakeS3):
        def get_object(self, Bucket: str, Key: str) -> dict[str, Any]:  # noqa: N803
            return {"Body": BrokenBody(2)}

    made: list[Any] = []

    class Sink:
        def __init__(self, columns: list[Column]) -> None:
            self.rows: list[list[str | None]] = []
            self.closed = False
            made.append(self)

        def feed(self, rows: list[list[str | None]]) -> None:
            self.rows.extend(rows)

        def close(self) -> None:
            self.closed = True

    sink, info = read_results(FakeAthena(), BrokenS3(0), EXECUTION, Sink)
    assert len(made) == 2 and made[0].closed and not made[1].closed and sink is made[1]
    assert info.source == "GetQueryResults" and info.rows == 0  # the fake's one page holds only the header
