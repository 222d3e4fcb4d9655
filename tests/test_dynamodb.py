"""Step ``expect_dynamodb_items`` (tasks/dynamodb.py) against moto's DynamoDB."""

from __future__ import annotations

from datetime import datetime, timezone
from decimal import Decimal
from typing import Any

import pytest
from pydantic import ValidationError

from tasks.dynamodb import ExpectItemsStep, from_dynamodb, plain, to_dynamodb
from tasks.kit.aws import ClientFactory
from tasks.kit.errors import CHECK_FAILED, TIMED_OUT, AwsCallError, CheckFailed
from tasks.kit.secrets import Secrets
from tests.helpers import FakeClock, run_step

TABLE = "audit"


@pytest.fixture
def table(fresh_clients: ClientFactory) -> Any:
    ddb = fresh_clients.client("dynamodb")
    ddb.create_table(TableName=TABLE, BillingMode="PAY_PER_REQUEST",
                     KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}, {"AttributeName": "sk", "KeyType": "RANGE"}],
                     AttributeDefinitions=[{"AttributeName": "pk", "AttributeType": "S"},
                                           {"AttributeName": "sk", "AttributeType": "S"}])
    return ddb


def put(ddb: Any, **item: Any) -> None:
    ddb.put_item(TableName=TABLE, Item={k: to_dynamodb(v) for k, v in item.items()})


def step(**data: Any) -> ExpectItemsStep:
    return ExpectItemsStep.model_validate({"kind": "expect_dynamodb_items", "table": TABLE,
                                           "wait": {"timeout": 5}, **data})


def test_item_by_key_found_and_checked_values_as_plain_json(table: Any, fresh_clients: ClientFactory,
                                                            fake_clock: FakeClock) -> None:
    put(table, pk="orders", sk="a.csv", status="LOADED", rows=5, total=Decimal("585.24"),
        big=Decimal("12345678901234567890.123456789"), tags={"x", "y"}, meta={"by": "lambda"})
    out = run_step(step(key={"pk": "orders", "sk": "a.csv"},
                   expect={"attributes": {"status": "LOADED", "rows": 5, "total": 585.24},
                           "json_subset": {"meta": {"by": "lambda"}, "tags": ["x", "y"]}}), fresh_clients, fake_clock)
    assert out.details["count"] == 1 and fake_clock.sleeps == []
    item = out.details["items"][0]
    assert item["total"] == 585.24 and item["rows"] == 5 and item["tags"] == ["x", "y"]
    assert item["big"] == "12345678901234567890.123456789"  # exact, never rounded through a float
    assert '"total": 585.24' in out.markdown and "```json" in out.markdown


def test_item_that_the_pipeline_writes_later_is_waited_for(table: Any, fresh_clients: ClientFactory,
                                                           fake_clock: FakeClock) -> None:
    fake_clock.on_sleep = lambda t: put(table, pk="orders", sk="a.csv", status="LOADED") if t >= 1.0 else None
    out = run_step(step(key={"pk": "orders", "sk": "a.csv"}, expect={"attributes": {"status": "LOADED"}}),
              fresh_clients, fake_clock)
    assert out.details["count"] == 1 and 1.0 <= fake_clock.t < 1.5


def test_attribute_mismatch_fails_with_the_reason_at_timeout(table: Any, fresh_clients: ClientFactory,
                                                            fake_clock: FakeClock) -> None:
    put(table, pk="orders", sk="a.csv", status="RUNNING", rows=4)
    with pytest.raises(CheckFailed) as info:
        run_step(step(key={"pk": "orders", "sk": "a.csv"}, expect={"attributes": {"status": "LOADED", "rows": 5}}),
            fresh_clients, fake_clock)
    assert info.value.code == TIMED_OUT and fake_clock.t == pytest.approx(5.0)
    assert 'attribute status: expected "LOADED", got "RUNNING"' in info.value.details["problems"]
    assert "attribute rows: expected 5, got 4" in info.value.details["problems"]
    assert "Expectations not met" in (info.value.markdown or "")


def test_missing_item_times_out(table: Any, fresh_clients: ClientFactory, fake_clock: FakeClock) -> None:
    with pytest.raises(CheckFailed, match=r"timed out after 5 s .* waiting for the item .*found 0 item"):
        run_step(step(key={"pk": "orders", "sk": "nope"}), fresh_clients, fake_clock)


def test_absent_item_holds_for_the_hold_time_and_breaks_when_written(table: Any, fresh_clients: ClientFactory,
                                                                     fake_clock: FakeClock) -> None:
    out = run_step(step(key={"pk": "orders", "sk": "bad.csv"}, absent=True, hold=3), fresh_clients, fake_clock)
    assert out.details["count"] == 0 and fake_clock.t == pytest.approx(3.0)
    fake_clock.on_sleep = lambda t: put(table, pk="orders", sk="bad.csv") if t >= 4.0 else None
    with pytest.raises(CheckFailed) as info:
        run_step(step(key={"pk": "orders", "sk": "bad.csv"}, absent=True, hold=10), fresh_clients, fake_clock)
    assert info.value.code == CHECK_FAILED and "no longer after" in info.value.message


def test_query_counts_filters_and_checks_every_item(table: Any, fresh_clients: ClientFactory,
                                                    fake_clock: FakeClock) -> None:
    for name, status in (("a.csv", "LOADED"), ("b.csv", "LOADED"), ("c.csv", "REJECTED")):
        put(table, pk="orders", sk=f"2026-01-01/{name}", status=status)
    query = {"key_condition": "pk = :pk AND begins_with(sk, :day)", "filter": "#s = :loaded",
             "values": {":pk": "orders", ":day": "2026-01-01/", ":loaded": "LOADED"}, "names": {"#s": "status"}}
    out = run_step(step(query=query, count=2, expect={"json_subset": {"status": "LOADED"}}), fresh_clients, fake_clock)
    assert out.details["count"] == 2
    with pytest.raises(CheckFailed) as info:
        run_step(step(query={**query, "filter": None, "names": {}, "values": {":pk": "orders", ":day": "2026-01-01/"}},
                 count={"max": 3}, expect={"attributes": {"status": "LOADED"}}, wait={"timeout": 1}),
            fresh_clients, fake_clock)
    assert info.value.details["problems"] == ['item 3: attribute status: expected "LOADED", got "REJECTED"']


def test_missing_table_fails_at_once_with_aws_code(fresh_clients: ClientFactory, fake_clock: FakeClock) -> None:
    with pytest.raises(AwsCallError) as info:
        run_step(step(key={"pk": "x", "sk": "y"}), fresh_clients, fake_clock)
    assert info.value.code == "ResourceNotFoundException" and "DynamoDB GetItem on table audit" in info.value.message
    assert fake_clock.sleeps == []


@pytest.mark.parametrize("data, message", [
    ({}, "give exactly one of 'key'"),
    ({"key": {"pk": "a"}, "count": 1}, "'count' goes with 'query'"),
    ({"key": {"pk": "a"}, "absent": True, "expect": {"attributes": {"a": 1}}}, "nothing to 'expect'"),
    ({"key": {"pk": "a"}, "expect": {}}, "attributes and/or json_subset"),
    ({"query": {"key_condition": "pk = :pk"}}, ":pk used in the expressions but not given in 'values'"),
    ({"query": {"key_condition": "pk = :pk", "values": {":pk": "a", ":x": 1}}}, ":x not used"),
    ({"query": {"key_condition": "#p = :pk", "values": {":pk": "a"}}}, "#p used in the expressions"),
    ({"query": {"key_condition": "pk = :pk", "values": {":pk": "a"}}, "count": {"min": 3, "max": 1}},
     "min .3. is greater than max"),
    ({"table": "x", "key": {"pk": "a"}}, "a DynamoDB table or index name"),
])
def test_bad_input_is_refused_at_validation(data: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        step(**data)


def test_typed_values_round_trip_exactly() -> None:
    typed = {"n": {"N": "0.1"}, "l": {"L": [{"N": "3"}, {"BOOL": True}]}, "b": {"B": b"\x00\x01"},
             "ns": {"NS": ["2", "1"]}, "nul": {"NULL": True}}
    assert plain(from_dynamodb(typed)) == {"n": 0.1, "l": [3, True], "b": "AAE=", "ns": [1, 2], "nul": None}
    assert to_dynamodb(585.24) == {"N": "585.24"}


def test_secrets_and_hostile_values_never_reach_the_evidence_raw(table: Any, fresh_clients: ClientFactory,
                                                                 fake_clock: FakeClock) -> None:
    secret = "canary-DynamoSecret-1a2b3c"
    put(table, pk="orders", sk="a.csv", token=secret, note="```\n# heading | cell")
    with pytest.raises(CheckFailed) as info:
        run_step(step(key={"pk": "orders", "sk": "a.csv"}, expect={"attributes": {"token": "other-value-123"}},
                      wait={"timeout": 1}), fresh_clients, fake_clock, secrets=Secrets([secret]))
    shown = f"{info.value.message} {info.value.details} {info.value.markdown}"
    assert secret not in shown and "****" in shown
    assert "````json" in (info.value.markdown or "")  # the fence outgrows the value's backticks: no escape


def test_the_demo_pipeline_writes_what_the_example_case_checks(monkeypatch: pytest.MonkeyPatch,
                                                              fake_clock: FakeClock) -> None:
    """The example case's audit-item and dead-letter steps, rendered, pass against the demo's fake pipeline."""
    from flows.demo import CURATED_BUCKET, DEMO_CASE, LANDING_BUCKET, SOURCE_PARAMETER, FakePipeline
    from flows.emulator import emulator_env, moto_server
    from flows.spec.load import load_spec, render_step
    from flows.spec.model import iter_steps
    from flows.spec.templating import builtin_values, resolve_variables
    from tasks.kit.aws import AwsTarget

    spec, folder = load_spec(DEMO_CASE)
    values = resolve_variables(spec.variables, builtin_values(spec.case, "run-1", datetime.now(timezone.utc), "UTC"))
    with moto_server() as endpoint:
        for key, value in emulator_env(endpoint).items():
            monkeypatch.setenv(key, value)
        pipeline = FakePipeline(endpoint, delay=0)
        pipeline.create_audit_resources()  # and of the rest only what processing a file needs (no Lambda: slow)
        for bucket in (LANDING_BUCKET, CURATED_BUCKET):
            pipeline.s3.create_bucket(Bucket=bucket)
        pipeline.ssm.put_parameter(Name=SOURCE_PARAMETER, Value=LANDING_BUCKET, Type="String")
        pipeline.s3.upload_file(str(folder / "data" / "orders_sample.csv"), LANDING_BUCKET,
                                f"incoming/{values['run_prefix']}orders_sample.csv")
        pipeline.tick(0.0)
        kinds = {"expect_dynamodb_items", "expect_queue_depth"}
        steps = [render_step(p.step, values) for p in iter_steps(spec) if p.kind in kinds]
        outcomes = [run_step(s, ClientFactory(AwsTarget(region="us-east-1")), fake_clock) for s in steps]
    assert [s.kind for s in steps] == ["expect_dynamodb_items", "expect_queue_depth"]
    assert outcomes[0].details["items"][0]["total_amount"] == 585.24 and fake_clock.sleeps == []
