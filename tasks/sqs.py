"""Step ``expect_queue_depth``: check how many messages a queue holds (e.g. the dead-letter queue stays empty,
or has exactly N messages), from the queue's attributes (GetQueueAttributes): no message is ever received,
so nothing is consumed, hidden or made visible again.

The counts are SQS's approximate ones: ``ApproximateNumberOfMessages`` (visible), ``...NotVisible`` (received,
in flight) and ``...Delayed``; SQS documents them as eventually consistent (about a minute behind at worst),
so a check that a queue *stays* empty is best written with a ``hold`` time.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Literal
from urllib.parse import quote

from pydantic import Field, model_validator

from tasks.kit import markdown as md
from tasks.kit.console_links import console_link
from tasks.kit.errors import AWS_ERRORS, aws_error
from tasks.kit.iam import Arns, Footprint
from tasks.kit.polling import PollSettings
from tasks.kit.status import check_mark
from tasks.kit.step import StepBase, StepContext, StepOutcome, step_kind, template_aware
from tasks.kit.watch import Count, CountSpec, Watched, as_count, hold_field, unmet, watch

if TYPE_CHECKING:
    from types_boto3_sqs import SQSClient

#: the spec's name of each count -> SQS's attribute
DEPTHS = {"messages": "ApproximateNumberOfMessages", "in_flight": "ApproximateNumberOfMessagesNotVisible",
          "delayed": "ApproximateNumberOfMessagesDelayed"}
#: the spec's name of each count -> how messages and the evidence say it
LABELS = {"messages": "visible", "in_flight": "in flight", "delayed": "delayed"}
#: how many characters of an attribute's value the evidence shows (a queue policy can be long)
MAX_ATTRIBUTE_CHARS = 300


#: a queue name or URL, checked once templates are rendered
QueueRef = Annotated[str, template_aware(r"https?://\S+|[A-Za-z0-9_-]{1,80}(\.fifo)?",
                                         "a queue is a name (1 to 80 letters, digits, '-' and '_'; '.fifo' for "
                                         "FIFO queues) or a queue URL")]


class ExpectQueueDepthStep(StepBase):
    """Check an SQS queue's message counts from its attributes (never receiving a message)."""

    kind: Literal["expect_queue_depth"] = "expect_queue_depth"
    queue: QueueRef = Field(..., description="Queue name (in the case's account and region) or queue URL.")
    messages: CountSpec | None = Field(None, description="Visible messages (ApproximateNumberOfMessages): a "
                                       "number (exactly), or {min: 1}, {max: 10}.")
    in_flight: CountSpec | None = Field(None, description="Messages received and not yet deleted "
                                        "(ApproximateNumberOfMessagesNotVisible).")
    delayed: CountSpec | None = Field(None, description="Delayed messages (ApproximateNumberOfMessagesDelayed).")
    hold: float = hold_field("the depth")
    wait: PollSettings = Field(default_factory=PollSettings, description="How long and how often to look.")

    @model_validator(mode="after")
    def _some(self) -> "ExpectQueueDepthStep":
        if self.messages is None and self.in_flight is None and self.delayed is None:
            raise ValueError("give at least one of messages, in_flight, delayed")
        return self

    def counts(self) -> dict[str, Count]:
        """The spec's name of each count asked for -> the Count it must meet."""
        return {name: as_count(getattr(self, name)) for name in DEPTHS if getattr(self, name) is not None}

    def conditions(self) -> dict[str, Count]:
        """SQS attribute -> the Count it must meet."""
        return {DEPTHS[name]: count for name, count in self.counts().items()}

    def wanted(self) -> str:
        parts = [f"{count.describe()} {LABELS[name]}" for name, count in self.counts().items()]
        return f"{', '.join(parts)} message(s) in SQS queue {self.queue}"


# --- plain functions -------------------------------------------------------------------------------------------


def queue_url(client: SQSClient, queue: str) -> str:
    """The queue's URL: as given, or from its name (GetQueueUrl; a missing queue raises with AWS's code)."""
    if queue.startswith(("http://", "https://")):
        return queue
    try:
        return client.get_queue_url(QueueName=queue)["QueueUrl"]
    except AWS_ERRORS as exc:
        raise aws_error("SQS GetQueueUrl", f"queue {queue}", exc) from None


def queue_attributes(client: SQSClient, url: str) -> dict[str, str]:
    """Every attribute of the queue (GetQueueAttributes ``All``): counts, ARN, redrive policy, ..."""
    try:
        found = client.get_queue_attributes(QueueUrl=url, AttributeNames=["All"]).get("Attributes", {})
        return {str(k): v for k, v in found.items()}
    except AWS_ERRORS as exc:
        raise aws_error("SQS GetQueueAttributes", url, exc) from None


@dataclass
class Depth:
    """One look at the queue's attributes, and the counts the step checks."""

    attributes: dict[str, str]
    conditions: dict[str, Count]

    def count(self, attribute: str) -> int:
        return int(self.attributes.get(attribute, "0") or 0)

    def holds(self) -> bool:
        return all(c.holds(self.count(a)) for a, c in self.conditions.items())

    def describe(self) -> str:
        """``0 visible, 0 in flight, 0 delayed``."""
        return ", ".join(f"{self.count(a)} {LABELS[n]}" for n, a in DEPTHS.items())


# --- the runner ------------------------------------------------------------------------------------------------


def _markdown(step: ExpectQueueDepthStep, url: str, watched: Watched[Depth]) -> str:
    depth = watched.value
    rows = [[md.code(a), depth.count(a), c.describe(), check_mark(c.holds(depth.count(a)))]
            for a, c in depth.conditions.items()]
    attributes = [[md.code(k), md.code(v if len(v) <= MAX_ATTRIBUTE_CHARS else v[:MAX_ATTRIBUTE_CHARS] + "…")]
                  for k, v in sorted(depth.attributes.items())]
    return "\n\n".join([
        f"Queue {md.code(url)}: expected {md.text(step.wanted())}; last looked {md.text(watched.timing())}, "
        "from the queue's attributes (no message was received).",
        md.table(["attribute", "count", "expected", ""], rows),
        "**Queue attributes**\n\n" + md.table(["attribute", "value"], attributes),
    ])


def expect_queue_depth_footprint(step: ExpectQueueDepthStep, arns: Arns) -> Footprint:
    """The queue's URL (by name) and its attributes; never a message."""
    fp = Footprint().read("SQS queue", step.queue, "attributes (message counts)")
    return fp.need(arns.sqs_queue(step.queue), "sqs:GetQueueUrl", "sqs:GetQueueAttributes")


@step_kind(ExpectQueueDepthStep, footprint=expect_queue_depth_footprint)
def run_expect_queue_depth(step: ExpectQueueDepthStep, ctx: StepContext) -> StepOutcome:
    """Wait until the queue's counts meet the step's (and keep meeting them for ``hold``)."""
    client = ctx.clients.client("sqs")
    url = queue_url(client, step.queue)
    conditions = step.conditions()
    watched = watch(lambda: Depth(queue_attributes(client, url), conditions), Depth.holds, step.wait,
                    hold=step.hold, describe=Depth.describe, what=step.wanted(), logger=ctx.logger, clock=ctx.clock)
    depth = watched.value
    markdown = _markdown(step, url, watched)
    details = {"queue_url": url, "counts": {a: depth.count(a) for a in DEPTHS.values()},
               "attributes": depth.attributes, "checks": watched.checks,
               "waited_seconds": round(watched.waited, 3), "held_seconds": round(watched.held, 3)}
    if not watched.met:
        raise unmet(watched, step.wanted(), depth.describe(), details=details, markdown=markdown, check="depth")
    return StepOutcome(summary=f"SQS queue {step.queue}: {depth.describe()} {watched.timing()}", details=details,
                       markdown=markdown, checks=[watched.record("depth", step.wanted(), depth.describe())],
                       links=console_link(ctx, "sqs", f"sqs/v3/home?region={{region}}#/queues/{quote(url, safe='')}",
                                          f"SQS queue {url.rsplit('/', 1)[-1]}"))
