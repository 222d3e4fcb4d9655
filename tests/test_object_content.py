"""Content checks of expect_objects (tasks/s3/content.py) and its negative form (absent), against moto:
each format (csv, csv.gz, jsonl, json, parquet), each check, bad input at validation, and bounded memory."""

from __future__ import annotations

import gzip
import io
import json
import tracemalloc
from pathlib import Path
from typing import Any

import boto3
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from botocore.response import StreamingBody

from flows.spec.load import SpecError, parse_spec
from tasks.kit.errors import CheckFailed, StepError
from tasks.kit.polling import PollSettings
from tasks.kit.step import StepContext
from tasks.s3 import content as object_content
from tasks.s3 import stream as object_stream
from tasks.s3.content_spec import ObjectContent
from tasks.s3.steps import ExpectObjectsStep, expect_absent, run_expect_objects
from tasks.s3.stream import ReadStats, json_values, open_stream
from tests.helpers import FakeClock

BUCKET = "content-bucket"
ORDERS = ("order_id,customer_id,amount,currency\n"
          "1001,C-017,125.40,EUR\n1002,C-042,89.99,EUR\n1003,C-017,12.00,USD\n")


@pytest.fixture
def s3(module_clients: Any) -> Any:
    client = module_clients.client("s3")
    client.create_bucket(Bucket=BUCKET)
    yield client
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET):
        for obj in page.get("Contents", []):
            client.delete_object(Bucket=BUCKET, Key=obj["Key"])


def ctx_for(clients: Any, folder: Path, clock: Any = None) -> StepContext:
    return StepContext(clients=clients, case_name="content", run_id="run-1", label="step", spec_dir=folder,
                       clock_override=clock)


def gets(client: Any) -> list[dict[str, Any]]:
    """The parameters of every GetObject the client makes."""
    calls: list[dict[str, Any]] = []
    client.meta.events.register("provide-client-params.s3.GetObject", lambda params, **_: calls.append(params))
    return calls


def run(clients: Any, tmp_path: Path, key: str, content: dict[str, Any], **step: Any) -> Any:
    model = ExpectObjectsStep(bucket=BUCKET, keys=[key], content=ObjectContent.model_validate(content), **step)
    return run_expect_objects(model, ctx_for(clients, tmp_path))


def failed_checks(info: pytest.ExceptionInfo[CheckFailed]) -> dict[str, str]:
    """The failed content checks, check -> actual, as the step's typed checks give them (the same in details)."""
    typed = {c.name: c.actual for c in info.value.checks if not c.passed}
    assert all(c.where for c in info.value.checks if not c.passed)  # each names its object
    assert typed == {c["check"]: c["actual"] for r in info.value.details["content"] for c in r["checks"]
                     if not c["passed"]}
    return typed


# -------------------------------------------------------------------------------------------------------- csv
def test_csv_rows_columns_and_conditions_hold_with_evidence(module_clients, s3, tmp_path) -> None:
    s3.put_object(Bucket=BUCKET, Key="out/orders.csv", Body=ORDERS.encode())
    out = run(module_clients, tmp_path, "out/orders.csv", {
        "format": "csv", "row_count": 3, "columns": ["order_id", "customer_id", "amount", "currency"],
        "conditions": {"order_id": {"not_null": True, "unique": True, "regex": r"\d{4}"},
                       "currency": {"one_of": ["EUR", "USD"]}, "amount": {"min": 0, "max": 200}}})
    (report,) = out.details["content"]
    assert report["passed"] and report["bytes_read"] == len(ORDERS) and report["requests"] == 1
    assert [c["check"] for c in report["checks"]] == [
        "row count", "columns", "order_id: not_null", "order_id: unique", "order_id: regex", "currency: one_of",
        "amount: min", "amount: max"]
    assert "| verdict | check | expected | actual |" in out.markdown
    assert "| ✅ PASS | row count | 3 | 3 |" in out.markdown and "held in memory: one row at a time" in out.markdown
    assert "content check(s) held" in out.summary


def test_csv_failures_name_each_check_with_examples(module_clients, s3, tmp_path) -> None:
    body = "id;cur;amount\n1;EUR;10\n1;GBP;-5\n;EUR;abc\n3;EUR;7;extra\n"
    s3.put_object(Bucket=BUCKET, Key="out/bad.csv", Body=body.encode())
    with pytest.raises(CheckFailed) as info:
        run(module_clients, tmp_path, "out/bad.csv", {
            "format": "csv", "csv": {"delimiter": ";"}, "min_rows": 5,
            "conditions": {"id": {"not_null": True, "unique": True}, "cur": {"one_of": ["EUR", "USD"]},
                           "amount": {"min": 0}, "nope": {"not_null": True}}})
    failed = failed_checks(info)
    assert failed["row count (min)"] == "4"
    assert failed["id: not_null"] == "1 value(s) broke it: row 3: null"
    assert failed["id: unique"] == "1 value(s) broke it: row 2: '1'"
    assert failed["cur: one_of"] == "1 value(s) broke it: row 2: 'GBP'"
    assert failed["amount: min"] == "2 value(s) broke it: row 2: '-5'; row 3: 'abc'"
    assert failed["nope: not_null"] == "no such column"
    assert failed["fields per row"] == "1 row(s) differ, first row 4: 4 field(s)"
    assert "content checks failed" in info.value.message and info.value.markdown
    assert "❌ FAIL" in info.value.markdown


def test_csv_header_as_a_set_and_options(module_clients, s3, tmp_path) -> None:
    body = "b\t'a x'\n'1\t2'\t\u00e9\n".encode("latin-1")
    s3.put_object(Bucket=BUCKET, Key="out/t.tsv", Body=body)
    out = run(module_clients, tmp_path, "out/t.tsv", {
        "format": "csv", "csv": {"delimiter": "\t", "quote_char": "'", "encoding": "latin-1"},
        "columns": ["a x", "b"], "columns_ordered": False, "conditions": {"a x": {"one_of": ["\u00e9"]}}})
    assert out.details["content"][0]["passed"]
    with pytest.raises(CheckFailed) as info:
        run(module_clients, tmp_path, "out/t.tsv", {"format": "csv", "row_count": 1})  # utf-8 by default
    assert failed_checks(info) == {"readable as csv": "not valid utf-8 text (invalid continuation byte: b'\\xe9')"}


def test_csv_gz_by_extension_and_by_magic_bytes(module_clients, s3, tmp_path) -> None:
    packed = gzip.compress(ORDERS.encode())
    s3.put_object(Bucket=BUCKET, Key="out/orders.csv.gz", Body=packed)
    s3.put_object(Bucket=BUCKET, Key="out/orders-no-suffix", Body=packed)
    for key in ("out/orders.csv.gz", "out/orders-no-suffix"):
        out = run(module_clients, tmp_path, key, {"format": "csv", "row_count": 3})
        (report,) = out.details["content"]
        assert report["passed"] and report["gunzipped"] and report["bytes_read"] == len(packed)
    with pytest.raises(CheckFailed) as info:
        run(module_clients, tmp_path, "out/orders-no-suffix", {"format": "csv", "row_count": 3,
                                                               "compression": "none"})
    assert "readable as csv" in failed_checks(info)
    for broken in (packed[: len(packed) // 2], packed[:12] + b"\xff" * 20 + packed[32:]):
        s3.put_object(Bucket=BUCKET, Key="out/broken.csv.gz", Body=broken)
        with pytest.raises(CheckFailed) as info:
            run(module_clients, tmp_path, "out/broken.csv.gz", {"format": "csv", "row_count": 3})
        assert failed_checks(info)["readable as csv"].startswith("not a complete gzip stream")


# ---------------------------------------------------------------------------------------------------- json
def test_jsonl_records_keys_and_a_bad_line(module_clients, s3, tmp_path) -> None:
    lines = [{"id": i, "status": "ok" if i < 3 else None} for i in range(1, 5)]
    s3.put_object(Bucket=BUCKET, Key="out/a.jsonl", Body="\n".join(json.dumps(x) for x in lines).encode())
    with pytest.raises(CheckFailed) as info:
        run(module_clients, tmp_path, "out/a.jsonl", {
            "format": "jsonl", "row_count": 4, "columns": ["id", "status"],
            "conditions": {"id": {"unique": True, "max": 4}, "status": {"not_null": True}}})
    assert failed_checks(info) == {"status: not_null": "2 value(s) broke it: row 3: null; row 4: null"}
    s3.put_object(Bucket=BUCKET, Key="out/b.jsonl", Body=b'{"id": 1}\n{"id": \n')
    with pytest.raises(CheckFailed) as info:
        run(module_clients, tmp_path, "out/b.jsonl", {"format": "jsonl", "row_count": 2})
    assert failed_checks(info)["readable as jsonl"].startswith("line 2: not valid JSON")


def test_json_array_and_object_and_records_with_other_keys(module_clients, s3, tmp_path) -> None:
    s3.put_object(Bucket=BUCKET, Key="out/a.json", Body=json.dumps([{"id": 1, "v": "x"}, {"id": 2, "w": "y"}]).encode())
    with pytest.raises(CheckFailed) as info:
        run(module_clients, tmp_path, "out/a.json", {"format": "json", "row_count": 2, "columns": ["id", "v"]})
    assert failed_checks(info) == {"columns": "id, v; but 1 record(s) differ, first record 2: keys id, w"}
    s3.put_object(Bucket=BUCKET, Key="out/b.json", Body=json.dumps([{"id": 1, "v": "x"}, {"v": "y", "id": 2}]).encode())
    out = run(module_clients, tmp_path, "out/b.json", {"format": "json", "columns": ["v", "id"],
                                                       "columns_ordered": False})
    assert out.details["content"][0]["passed"]
    s3.put_object(Bucket=BUCKET, Key="out/one.json", Body=b'{"id": 7, "name": "only"}')
    out = run(module_clients, tmp_path, "out/one.json", {"format": "json", "row_count": 1,
                                                         "conditions": {"id": {"min": 7, "max": 7.0}}})
    assert out.details["content"][0]["passed"]


@pytest.mark.parametrize("chunk", [1, 3, 7, 4096])
def test_json_array_is_parsed_element_by_element_across_any_chunking(monkeypatch, chunk: int) -> None:
    monkeypatch.setattr(object_stream, "CHUNK", chunk)
    doc = ' [ {"a": [1, 2, {"b": "x,]"}]}, 12345 , "s\\"", null, 1.5e3 ] \n'
    assert list(json_values(io.StringIO(doc))) == [{"a": [1, 2, {"b": "x,]"}]}, 12345, 's"', None, 1500.0]
    assert list(json_values(io.StringIO("[]"))) == []
    with pytest.raises(object_stream.Unreadable, match="array element 1 nests deeper than 64 levels"):
        list(json_values(io.StringIO("[" * 100_000)))
    with pytest.raises(object_stream.Unreadable, match="nests deeper than 64 levels"):
        list(json_values(io.StringIO("[" + "[" * 70 + "]" * 70 + "]")))
    for bad, why in (('[1, 2', "without ']'"), ('[1 2]', "expected ',' or ']'"), ('[1] x', "after the top-level"),
                     ("", "no JSON value"), ('[{"a": }]', "element 1: not valid JSON")):
        with pytest.raises(object_stream.Unreadable, match=why):
            list(json_values(io.StringIO(bad)))


# -------------------------------------------------------------------------------------------------- parquet
def parquet_bytes(rows: int, row_group_size: int) -> bytes:
    table = pa.table({"order_id": pa.array(range(rows), pa.int64()),
                      "currency": pa.array(["EUR" if i % 3 else "USD" for i in range(rows)]),
                      "note": pa.array([None if i == rows - 1 else f"n{i}" for i in range(rows)])})
    sink = io.BytesIO()
    pq.write_table(table, sink, row_group_size=row_group_size)
    return sink.getvalue()


def test_parquet_row_count_columns_and_types_from_the_footer_only(module_clients, s3, tmp_path) -> None:
    data = parquet_bytes(50_000, 10_000)
    s3.put_object(Bucket=BUCKET, Key="out/p.parquet", Body=data)
    calls = gets(s3)
    out = run(module_clients, tmp_path, "out/p.parquet", {
        "format": "parquet", "row_count": 50_000, "columns": ["order_id", "currency", "note"],
        "column_types": {"order_id": "int64", "currency": "string"}})
    (report,) = out.details["content"]
    assert report["passed"] and report["bytes_read"] < len(data) / 4
    assert calls and all("Range" in c for c in calls) and len(calls) == report["requests"] <= 4
    with pytest.raises(CheckFailed) as info:
        run(module_clients, tmp_path, "out/p.parquet", {"format": "parquet", "column_types": {"order_id": "string",
                                                                                              "gone": "int64"}})
    assert failed_checks(info) == {"order_id: type": "int64", "gone: type": "no such column"}


def test_parquet_conditions_read_only_their_columns_batch_by_batch(module_clients, s3, tmp_path) -> None:
    s3.put_object(Bucket=BUCKET, Key="out/c.parquet", Body=parquet_bytes(25_000, 10_000))
    with pytest.raises(CheckFailed) as info:
        run(module_clients, tmp_path, "out/c.parquet", {
            "format": "parquet", "conditions": {"order_id": {"unique": True, "min": 0, "max": 24_999},
                                                "currency": {"one_of": ["EUR"]}, "note": {"not_null": True}}})
    assert failed_checks(info) == {"currency: one_of": "8,334 value(s) broke it: row 1: 'USD'; row 4: 'USD'; "
                                                       "row 7: 'USD'", "note: not_null": "1 value(s) broke it: "
                                                                                          "row 25000: null"}
    s3.put_object(Bucket=BUCKET, Key="out/not.parquet", Body=b"order_id\n1\n")
    with pytest.raises(CheckFailed) as info:
        run(module_clients, tmp_path, "out/not.parquet", {"format": "parquet", "row_count": 1})
    assert "readable as parquet" in failed_checks(info)


# ------------------------------------------------------------------------------------------- same as upload
def test_same_as_upload_compares_sizes_first_then_sha256(module_clients, s3, tmp_path) -> None:
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "orders.csv").write_text(ORDERS)
    content = {"same_as_upload": {"step": "land", "file": "data/orders.csv"}}
    s3.put_object(Bucket=BUCKET, Key="out/copy.csv", Body=ORDERS.encode())
    out = run(module_clients, tmp_path, "out/copy.csv", content)
    (check,) = out.details["content"][0]["checks"]
    assert check["passed"] and check["check"] == "same as data/orders.csv"
    s3.put_object(Bucket=BUCKET, Key="out/other.csv", Body=ORDERS.replace("EUR", "GBP").encode())
    with pytest.raises(CheckFailed) as info:
        run(module_clients, tmp_path, "out/other.csv", content)
    assert failed_checks(info)["same as data/orders.csv"].startswith("SHA-256 ")
    s3.put_object(Bucket=BUCKET, Key="out/short.csv", Body=b"x")
    calls = gets(s3)
    with pytest.raises(CheckFailed) as info:
        run(module_clients, tmp_path, "out/short.csv", content)
    assert failed_checks(info) == {"same as data/orders.csv": "1 B (another size: not read)"} and calls == []


def test_conditions_on_an_object_above_the_limit_stop_the_step(module_clients, s3, tmp_path) -> None:
    s3.put_object(Bucket=BUCKET, Key="out/big.csv", Body=b"a\n" + b"1\n" * (600 * 1024))
    with pytest.raises(StepError) as info:
        run(module_clients, tmp_path, "out/big.csv", {"format": "csv", "conditions": {"a": {"not_null": True}},
                                                      "conditions_max_mb": 1})
    assert info.value.code == "ObjectTooLarge" and not isinstance(info.value, CheckFailed)


# ---------------------------------------------------------------------------------------------------- absent
def test_absent_passes_only_after_the_whole_hold(module_clients, s3, tmp_path) -> None:
    s3.put_object(Bucket=BUCKET, Key="curated/run-1/readme.txt", Body=b"not a csv")
    fake = FakeClock()
    step = ExpectObjectsStep(bucket=BUCKET, prefix="curated/run-1/", pattern="*.csv", absent=True, hold=2,
                             wait=PollSettings(initial=0.2))
    out = run_expect_objects(step, ctx_for(module_clients, tmp_path, fake.clock))
    assert fake.t == pytest.approx(2.0) and out.details["polls"] == len(fake.sleeps) + 1 >= 5
    assert out.details["watched_seconds"] == pytest.approx(2.0) and out.details["not_counted"] == [
        "curated/run-1/readme.txt"]
    assert "nothing appeared" in out.markdown and "✅ PASS" in out.markdown and "readme.txt" in out.markdown
    [check] = out.checks
    assert check.verdict == "passed" and "for 2 s" in check.expected and "curated/run-1/" in check.expected


def test_absent_fails_as_soon_as_something_appears(s3) -> None:
    pipeline = boto3.client("s3", region_name="us-east-1")

    def land(t: float) -> None:
        if t >= 1 and not landed:
            pipeline.put_object(Bucket=BUCKET, Key="curated/run-2/orders.csv", Body=b"a\n1\n")
            landed.append(t)

    landed: list[float] = []
    fake = FakeClock(on_sleep=land)
    step = ExpectObjectsStep(bucket=BUCKET, prefix="curated/run-2/", absent=True, hold=5)
    with pytest.raises(CheckFailed) as info:
        expect_absent(s3, step, clock=fake.clock)
    assert 1 <= fake.t < 2 and info.value.details["found"][0]["key"] == "curated/run-2/orders.csv"
    assert info.value.message.startswith("curated/run-2/orders.csv (4 B) appeared after ")
    assert "expected no objects matching '*' under s3://content-bucket/curated/run-2/ for 5 s" in info.value.message
    assert "❌ FAIL" in (info.value.markdown or "")
    [check] = info.value.checks
    assert (check.name, check.verdict) == ("absent", "failed") and check.actual.startswith("curated/run-2/orders.csv (4 B) after ")


def test_absent_keys_in_a_missing_bucket_is_an_error_not_a_pass(s3) -> None:
    step = ExpectObjectsStep(bucket="no-such-content-bucket", keys=["a.csv"], absent=True, hold=1)
    with pytest.raises(StepError) as info:
        expect_absent(s3, step, clock=FakeClock().clock)
    assert info.value.code == "NoSuchBucket"


# ------------------------------------------------------------------------------------------------ validation
def case(*steps: dict[str, Any]) -> dict[str, Any]:
    upload = {"kind": "upload", "name": "land", "files": ["data/*.csv"], "bucket": "b-in", "key_prefix": "in/"}
    return {"case": "content", "steps": [upload, *steps]}


def expect(**fields: Any) -> dict[str, Any]:
    return {"kind": "expect_objects", "name": "check", "bucket": "b-out", "prefix": "out/", **fields}


@pytest.mark.parametrize("fields, message", [
    ({"content": {"format": "jsonl", "csv": {"delimiter": ";"}, "row_count": 1}},
     "field 'content': 'csv' options go with format: csv"),
    ({"content": {"format": "csv", "column_types": {"a": "int64"}}},
     "field 'content': 'column_types' goes with format: parquet"),
    ({"content": {"format": "csv", "csv": {"delimitr": ";"}, "row_count": 1}},
     "field 'content.csv.delimitr': unknown field"),
    ({"content": {"format": "csv", "csv": {"encoding": "utf-99"}, "row_count": 1}},
     "field 'content.csv.encoding': unknown encoding 'utf-99'"),
    ({"content": {"row_count": 1}}, "field 'content': 'format' is needed to check 'row_count'"),
    ({"content": {"format": "csv", "conditions": {"a": {}}}},
     "field 'content.conditions.a': give at least one of not_null"),
    ({"content": {"format": "csv", "conditions": {"a": {"regex": "("}}}},
     "field 'content.conditions.a.regex': not a valid regular expression"),
    ({"content": {"format": "csv", "csv": {"header": False}, "conditions": {"a": {"unique": True}}}},
     "conditions on a: with csv.header: false, name the columns in csv.names"),
    ({"content": {"same_as_upload": {"step": "check", "file": "data/a.csv"}}},
     "field 'content.same_as_upload.step': no upload step named 'check'"),
    ({"content": {"same_as_upload": {"step": "land", "file": "other/a.csv"}}},
     "field 'content.same_as_upload.file': 'other/a.csv' is not one of the files of step 'land'"),
    ({"content": {"same_as_upload": {"step": "land", "file": "data/../../etc/a.csv"}}},
     "field 'content.same_as_upload.file': 'data/../../etc/a.csv' is not one of the files of step 'land'"),
    ({"absent": True}, "absent: true needs 'hold'"),
    ({"absent": True, "hold": 2, "count": 0}, "'count' cannot go with absent: true"),
    ({"hold": 2}, "'hold' goes with absent: true"),
    ({"absent": True, "hold": 2, "wait": {"timeout": 9}}, "'wait.timeout' cannot go with absent: true"),
])
def test_bad_content_and_absent_input_names_step_and_field(tmp_path, fields: dict[str, Any], message: str) -> None:
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "a.csv").write_text("a\n1\n")
    with pytest.raises(SpecError) as info:
        parse_spec(case(expect(**fields)), "case.yaml", tmp_path)
    (problem,) = info.value.problems
    assert problem.startswith("step 2 'check' (expect_objects): ") and message in problem, problem
    assert str(info.value).startswith("invalid spec case.yaml:")


def test_same_as_upload_may_name_a_file_a_glob_of_the_upload_matches(tmp_path) -> None:
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "a.csv").write_text("a\n1\n")
    parse_spec(case(expect(content={"same_as_upload": {"step": "land", "file": "data/a.csv"}})), "c.yaml", tmp_path)


# ------------------------------------------------------------------------------------------------ memory bound
class _Generated(io.RawIOBase):
    """A CSV of ``rows`` rows made as it is read (never whole in memory), as S3's body would stream it."""

    BLOCK = b"".join(f"{i},{i % 997}.25,EUR,C-{i % 89:03d},{'shipped to the usual address; no notes':<160}\n".encode()
                     for i in range(1000))

    def __init__(self, rows: int) -> None:
        self.blocks, self.size, self.offset = rows // 1000, 0, 0
        self.current = memoryview(b"order_id,amount,currency,customer,note\n")

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        view, done = memoryview(buffer).cast("B"), 0
        while done < len(view):
            if self.offset == len(self.current):
                if not self.blocks:
                    break
                self.current, self.offset, self.blocks = memoryview(self.BLOCK), 0, self.blocks - 1
            take = min(len(view) - done, len(self.current) - self.offset)
            view[done: done + take] = self.current[self.offset: self.offset + take]
            done, self.offset = done + take, self.offset + take
        self.size += done
        return done


def test_a_large_csv_is_checked_in_memory_far_below_its_size() -> None:
    """25,000 rows of ~180 B (4.5 MB; rows cost time under tracemalloc, not memory): the peak is the read buffers'
    (about 0.5 MB: a 256 KiB chunk read and buffered), whatever the size."""
    content = ObjectContent.model_validate({"format": "csv", "row_count": 25_000,
                                            "conditions": {"currency": {"one_of": ["EUR"]},
                                                           "amount": {"min": 0, "regex": r"\d+\.\d\d"}}})
    source = _Generated(25_000)
    tracemalloc.start()
    try:
        stats = ReadStats()
        stream, raw = open_stream(StreamingBody(source, None), "big.csv", "auto", stats)
        report_checks = object_content._shape_checks(content, _tally(stream, content))
        while raw.read(object_stream.CHUNK):
            pass
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert all(c.passed for c in report_checks), report_checks
    assert source.size > 4_000_000 and stats.bytes_read == source.size
    assert peak < min(source.size / 5, 1024 * 1024), f"peak {peak:,} B for a {source.size:,} B object"


def _tally(stream: Any, content: ObjectContent) -> Any:
    tally = object_content._Tally(content)
    object_content._csv_pass(stream, content, tally)
    return tally


# ------------------------------------------------------------------------------------- the negative example
@pytest.mark.usefixtures("prefect_harness")
def test_the_negative_example_passes_against_the_demo_pipeline() -> None:
    """examples/cases/orders_bad_header.yaml as the demo runs it: the fake pipeline quarantines the file with the
    wrong header (unchanged) and loads nothing; the case proves both, and puts the setting back."""
    from flows.demo import NEGATIVE_CASE, PRODUCTION_SOURCE, SOURCE_PARAMETER, FakePipeline
    from flows.emulator import moto_server, use_emulator
    from flows.evidence.results import result_of
    from flows.pipeline_test import pipeline_test

    with moto_server() as endpoint, use_emulator(endpoint):
        pipeline = FakePipeline(endpoint, delay=0.3, interval=0.1)
        pipeline.create_resources()
        pipeline.start()
        try:
            result = result_of(pipeline_test(spec=str(NEGATIVE_CASE), return_state=True))
        finally:
            pipeline.stop()
        assert pipeline.ssm.get_parameter(Name=SOURCE_PARAMETER)["Parameter"]["Value"] == PRODUCTION_SOURCE
        curated = pipeline.s3.list_objects_v2(Bucket="demo-curated").get("KeyCount", 0)
    assert result is not None and result.passed, result
    steps = {s.label: s for s in result.steps}
    assert steps["bad-file-quarantined"].details["content"][0]["passed"]
    assert steps["nothing-reached-curated"].details["watched_seconds"] >= 2 and curated == 0
