"""Step ``expect_queue_depth`` (tasks/sqs.py) against moto's SQS: counts from the queue's attributes only."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from tasks.kit.aws import ClientFactory
from tasks.kit.errors import CHECK_FAILED, TIMED_OUT, AwsCallError, CheckFailed
from tasks.sqs import ExpectQueueDepthStep
from tests.helpers import FakeClock, run_step


@pytest.fixture
def sqs(fresh_clients: ClientFactory) -> Any:
    return fresh_clients.client("sqs")


@pytest.fixture
def dlq(sqs: Any) -> str:
    return sqs.create_queue(QueueName="orders-dlq")["QueueUrl"]


def step(**data: Any) -> ExpectQueueDepthStep:
    return ExpectQueueDepthStep.model_validate({"kind": "expect_queue_depth", "queue": "orders-dlq",
                                                "wait": {"timeout": 5}, **data})


def test_empty_dead_letter_queue_stays_empty_for_the_hold_time(dlq: str, fresh_clients: ClientFactory,
                                                               fake_clock: FakeClock) -> None:
    out = run_step(step(messages=0, in_flight=0, hold=10), fresh_clients, fake_clock)
    assert out.details["counts"]["ApproximateNumberOfMessages"] == 0 and fake_clock.t == pytest.approx(10.0)
    assert out.details["queue_url"] == dlq and "QueueArn" in out.details["attributes"]
    assert "no message was received" in out.markdown and "`QueueArn`" in out.markdown


def test_a_message_arriving_during_the_hold_fails_and_nothing_is_consumed(dlq: str, sqs: Any, fresh_clients: ClientFactory,
                                                                          fake_clock: FakeClock) -> None:
    fake_clock.on_sleep = lambda t: sqs.send_message(QueueUrl=dlq, MessageBody="bad") if 2 <= t < 2.5 else None
    with pytest.raises(CheckFailed) as info:
        run_step(step(messages=0, hold=30), fresh_clients, fake_clock)
    assert info.value.code == CHECK_FAILED and "then no longer after" in info.value.message
    assert info.value.details["counts"]["ApproximateNumberOfMessages"] >= 1
    # the step never received: the message is still visible
    attrs = sqs.get_queue_attributes(QueueUrl=dlq, AttributeNames=["ApproximateNumberOfMessages"])["Attributes"]
    assert int(attrs["ApproximateNumberOfMessages"]) >= 1


def test_waits_for_exactly_n_messages_by_url(dlq: str, sqs: Any, fresh_clients: ClientFactory,
                                             fake_clock: FakeClock) -> None:
    def send(t: float) -> None:
        if t >= 1 and not getattr(send, "done", False):
            send.done = True  # type: ignore[attr-defined]
            for i in range(2):
                sqs.send_message(QueueUrl=dlq, MessageBody=f"m{i}")

    fake_clock.on_sleep = send
    out = run_step(step(queue=dlq, messages=2, delayed={"max": 0}), fresh_clients, fake_clock)
    assert out.details["counts"]["ApproximateNumberOfMessages"] == 2 and 1 <= fake_clock.t < 1.5


def test_timeout_names_the_counts(dlq: str, fresh_clients: ClientFactory, fake_clock: FakeClock) -> None:
    with pytest.raises(CheckFailed, match=r"timed out after 5 s .*at least 1 visible message.* in SQS queue orders-dlq; found 0 visible"
                       ) as info:
        run_step(step(messages={"min": 1}), fresh_clients, fake_clock)
    assert info.value.code == TIMED_OUT


def test_missing_queue_fails_at_once_with_aws_code(fresh_clients: ClientFactory, fake_clock: FakeClock) -> None:
    with pytest.raises(AwsCallError, match="SQS GetQueueUrl on queue nope failed") as info:
        run_step(step(queue="nope", messages=0), fresh_clients, fake_clock)
    assert "NonExistentQueue" in str(info.value.code) and fake_clock.sleeps == []


@pytest.mark.parametrize("data, message", [
    ({}, "at least one of messages, in_flight, delayed"),
    ({"messages": -1}, "greater than or equal to 0"),
    ({"messages": {"min": 2, "max": 1}}, "min .2. is greater than max"),
    ({"messages": {"equals": 1, "max": 2}}, "not both"),
    ({"queue": "bad name!", "messages": 0}, "a queue is a name"),
    ({"messages": 0, "hold": -1}, "greater than or equal to 0"),
])
def test_bad_input_is_refused_at_validation(data: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        step(**data)
