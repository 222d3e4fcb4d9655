"""Step ``expect_dynamodb_items``: wait for the items a pipeline writes to DynamoDB (an audit record, a
bookmark) and check them; read-only (GetItem, Query), never a scan.

By key: the item must exist (``absent: true``: must not) and meet ``expect`` (attributes equal, a JSON subset).
By query: a key condition (and an optional filter) on the table or an index; the number of items is checked
(``count``: exactly, at least, at most) and every item must meet ``expect``. Items are shown as plain JSON:
DynamoDB's typed values deserialized, numbers exact (Decimals, never rounded through a float), sets as sorted
lists, binary as base64. Comparisons use :mod:`tasks.kit.json_compare` (numbers by value, exactly).
"""

from __future__ import annotations

import base64
import json
import re
from dataclasses import dataclass, field
from decimal import Decimal
from typing import TYPE_CHECKING, Annotated, Any, Literal

from boto3.dynamodb.types import Binary, TypeDeserializer, TypeSerializer
from pydantic import Field, model_validator

from tasks.kit import markdown as md
from tasks.kit.console_links import console_link
from tasks.kit.errors import AWS_ERRORS, StepError, aws_error
from tasks.kit.iam import Arns, Footprint
from tasks.kit.json_compare import exact_number, json_equal, json_subset_mismatches
from tasks.kit.polling import PollSettings
from tasks.kit.secrets import redact, redact_json
from tasks.kit.step import SpecModel, StepBase, StepContext, StepOutcome, step_kind, template_aware
from tasks.kit.watch import Count, CountSpec, Watched, as_count, hold_field, unmet, watch

if TYPE_CHECKING:
    from types_boto3_dynamodb import DynamoDBClient

#: how many items the evidence shows, and how many problems a check reports
SHOWN_ITEMS = 20
SHOWN_PROBLEMS = 20
#: how many characters of the items' JSON the evidence shows
MAX_SHOWN_CHARS = 6000

TableName = Annotated[str, template_aware(r"[A-Za-z0-9_.-]{3,255}", "a DynamoDB table or index name is 3 to 255 "
                                          "letters, digits, '_', '.' and '-'")]
KeyValue = str | int | float
_PLACEHOLDER = re.compile(r"(?<![A-Za-z0-9_])([:#][A-Za-z0-9_]+)")


class ItemExpect(SpecModel):
    """What an item must hold. Numbers compare by value (``585.24`` equals DynamoDB's ``585.24``)."""

    attributes: dict[str, Any] = Field(default_factory=dict, description="Attribute name -> the value it must "
                                       "equal (JSON equality: objects by keys, lists in order).")
    json_subset: Any = Field(None, description="A JSON value the item must contain: every key given must match "
                             "(extra attributes are fine), lists item by item, scalars equal.")

    @model_validator(mode="after")
    def _some(self) -> "ItemExpect":
        if not self.attributes and "json_subset" not in self.model_fields_set:
            raise ValueError("expect needs attributes and/or json_subset")
        return self

    def problems(self, item: dict[str, Any]) -> list[str]:
        """Where the item (deserialized: :func:`from_dynamodb`) does not meet the expectations."""
        found = []
        for name, wanted in self.attributes.items():
            if name not in item:
                found.append(f"attribute {name}: missing (expected {show(wanted)})")
            elif not json_equal(wanted, item[name]):
                found.append(f"attribute {name}: expected {show(wanted)}, got {show(item[name])}")
        if "json_subset" in self.model_fields_set:
            found += json_subset_mismatches(self.json_subset, item, lambda _p, v: show(v))
        return found


class ItemQuery(SpecModel):
    """A DynamoDB Query: a key condition, an optional filter, their placeholders' values and names."""

    key_condition: str = Field(..., min_length=1, max_length=4096, description="KeyConditionExpression, e.g. "
                               "``pk = :pk AND begins_with(sk, :day)``.")
    filter: str | None = Field(None, min_length=1, max_length=4096, description="FilterExpression applied to the "
                               "items the key condition finds (counted after filtering).")
    values: dict[str, Any] = Field(default_factory=dict, description="``:placeholder`` -> its value (a string, "
                                   "number, boolean, list or object); every one must be used and every one used "
                                   "given.")
    names: dict[str, str] = Field(default_factory=dict, description="``#placeholder`` -> attribute name (for "
                                  "names that are reserved words, such as status).")
    index: TableName | None = Field(None, description="Query this global or local secondary index instead of the "
                                    "table.")

    @model_validator(mode="after")
    def _placeholders(self) -> "ItemQuery":
        used = set(_PLACEHOLDER.findall(self.key_condition + " " + (self.filter or "")))
        for given, prefix, field_name in ((self.values, ":", "values"), (self.names, "#", "names")):
            bad = sorted(k for k in given if not re.fullmatch(re.escape(prefix) + r"[A-Za-z0-9_]+", k))
            if bad:
                raise ValueError(f"{field_name}: placeholders must look like {prefix}name (got {', '.join(bad)})")
            missing = sorted(u for u in used if u.startswith(prefix) and u not in given)
            if missing:
                raise ValueError(f"{', '.join(missing)} used in the expressions but not given in '{field_name}'")
            unused = sorted(set(given) - used)
            if unused:
                raise ValueError(f"{field_name}: {', '.join(unused)} not used in key_condition or filter "
                                 "(DynamoDB refuses unused placeholders)")
        for name, value in self.values.items():
            try:
                to_dynamodb(value)
            except (TypeError, ValueError) as exc:
                raise ValueError(f"values: {name}: {exc}") from None
        return self


class ExpectItemsStep(StepBase):
    """Wait for DynamoDB items (by key, or by query) and check them; read-only."""

    kind: Literal["expect_dynamodb_items"] = "expect_dynamodb_items"
    table: TableName = Field(..., description="Table name.")
    key: dict[str, KeyValue] | None = Field(None, min_length=1, max_length=2, description="The item's full "
                                            "primary key: partition key (and sort key) name -> value (GetItem).")
    query: ItemQuery | None = Field(None, description="Find items with a Query instead of a key.")
    absent: bool = Field(False, description="With key: the item must not exist (waits until it does not).")
    count: CountSpec | None = Field(None, description="With query: how many items: a number (exactly), or "
                                    "{min: 1}, {max: 0}, {min: 1, max: 5}. Default: at least 1.")
    expect: ItemExpect | None = Field(None, description="What the item (with key), or every item found (with "
                                      "query), must hold.")
    consistent_read: bool = Field(True, description="Strongly consistent reads (not possible on a global "
                                  "secondary index: set false there).")
    max_items: int = Field(1000, ge=1, le=100_000, description="With query: read at most this many items per "
                           "check; more matching items fail the step (narrow the key condition).")
    hold: float = hold_field("the expectation")
    wait: PollSettings = Field(default_factory=PollSettings, description="How long and how often to look.")

    @model_validator(mode="after")
    def _one_form(self) -> "ExpectItemsStep":
        if (self.key is None) == (self.query is None):
            raise ValueError("give exactly one of 'key' (one item) or 'query' (items by a key condition)")
        if self.key is not None and self.count is not None:
            raise ValueError("'count' goes with 'query'; with 'key' use absent: true for no item")
        if self.query is not None and self.absent:
            raise ValueError("'absent' goes with 'key'; with 'query' use count: 0")
        if self.absent and self.expect is not None:
            raise ValueError("an absent item has nothing to 'expect'")
        if self.key is not None:
            for name, value in self.key.items():
                if isinstance(value, bool):
                    raise ValueError(f"key {name}: a key attribute is a string or a number, not a boolean")
        return self

    def expected_count(self) -> Count:
        """With query: how many items are expected (default: at least 1)."""
        return as_count(self.count) if self.count is not None else Count(min=1)

    def wanted(self) -> str:
        """What the step waits for, in words."""
        if self.key is not None:
            return f"{'no' if self.absent else 'the'} item {show(self.key)} in DynamoDB table {self.table}" + (
                ", as expected" if self.expect else "")
        where = f"index {self.query.index} of " if self.query and self.query.index else ""
        return (f"{self.expected_count().describe()} item(s) matching the query in {where}DynamoDB table "
                f"{self.table}" + (", each as expected" if self.expect else ""))


# --- plain functions -------------------------------------------------------------------------------------------


def to_dynamodb(value: Any) -> dict[str, Any]:
    """A spec's JSON value as a DynamoDB typed value (floats by their shortest text, so 585.24 stays 585.24)."""

    def exact(node: Any) -> Any:
        if isinstance(node, float):
            return exact_number(node)
        if isinstance(node, dict):
            return {k: exact(v) for k, v in node.items()}
        if isinstance(node, list):
            return [exact(v) for v in node]
        return node

    return dict(TypeSerializer().serialize(exact(value)))


def from_dynamodb(item: dict[str, Any]) -> dict[str, Any]:
    """A DynamoDB item (typed values) as Python values: numbers as Decimals, sets as sorted lists, binary as
    base64 text."""

    def python(node: Any) -> Any:
        if isinstance(node, dict):
            return {k: python(v) for k, v in node.items()}
        if isinstance(node, (list, tuple)):
            return [python(v) for v in node]
        if isinstance(node, (set, frozenset)):
            return sorted(python(v) for v in node)
        if isinstance(node, Binary):
            return base64.b64encode(node.value).decode("ascii")  # type: ignore[attr-defined]  # not in the stubs
        if isinstance(node, bytes):
            return base64.b64encode(node).decode("ascii")
        return node

    return python(TypeDeserializer().deserialize({"M": item}))


def plain(value: Any) -> Any:
    """A deserialized value as JSON data: a Decimal as an int, or a float when that is exactly the same
    number, else as its exact text (DynamoDB keeps 38 digits; a float keeps about 17)."""
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [plain(v) for v in value]
    if isinstance(value, Decimal):
        if value == value.to_integral_value():
            return int(value)
        as_float = float(value)
        return as_float if exact_number(as_float) == value else str(value)
    return value


def show(value: Any) -> str:
    """A value in a message: compact JSON, numbers exact."""
    text = json.dumps(plain(value), default=str, ensure_ascii=False)
    return text if len(text) <= 300 else text[:297] + "..."


def get_item(client: DynamoDBClient, table: str, key: dict[str, KeyValue], consistent: bool = True
             ) -> dict[str, Any] | None:
    """GetItem: the item deserialized, or None when there is none. A missing table raises (AWS's code)."""
    try:
        response = client.get_item(TableName=table, Key={k: to_dynamodb(v) for k, v in key.items()},
                                    ConsistentRead=consistent)
    except AWS_ERRORS as exc:
        raise aws_error("DynamoDB GetItem", f"table {table}", exc) from None
    item = response.get("Item")
    return from_dynamodb(item) if item is not None else None


def query_items(client: DynamoDBClient, table: str, query: ItemQuery, *, consistent: bool, max_items: int,
                keep: int = SHOWN_ITEMS) -> tuple[int, list[dict[str, Any]], list[dict[str, Any]]]:
    """Run the query through every page: (items matching, the first ``keep`` of them, all of them up to
    ``max_items``). More than ``max_items`` raises StepError (bounded memory and time)."""
    kwargs: dict[str, Any] = {"TableName": table, "KeyConditionExpression": query.key_condition,
                              "ConsistentRead": consistent}
    if query.filter:
        kwargs["FilterExpression"] = query.filter
    if query.values:
        kwargs["ExpressionAttributeValues"] = {k: to_dynamodb(v) for k, v in query.values.items()}
    if query.names:
        kwargs["ExpressionAttributeNames"] = query.names
    if query.index:
        kwargs["IndexName"] = query.index
    where = f"table {table}" + (f" index {query.index}" if query.index else "")
    items: list[dict[str, Any]] = []
    try:
        for page in client.get_paginator("query").paginate(**kwargs):
            items += [from_dynamodb(i) for i in page.get("Items", [])]
            if len(items) > max_items:
                raise StepError(f"DynamoDB Query on {where}: more than max_items ({max_items}) items match; "
                                "narrow the key condition or the filter, or raise max_items")
    except AWS_ERRORS as exc:
        raise aws_error("DynamoDB Query", where, exc) from None
    return len(items), items[:keep], items


@dataclass
class ItemsSeen:
    """One look: how many items were found, the first few of them, and what is wrong with them."""

    count: int
    items: list[dict[str, Any]]
    problems: list[str] = field(default_factory=list)

    def describe(self) -> str:
        text = f"{self.count} item(s)"
        return text + (f"; {self.problems[0]}" + (" ..." if len(self.problems) > 1 else "") if self.problems else "")


def observe(client: DynamoDBClient, step: ExpectItemsStep) -> ItemsSeen:
    """Read the item (or the query's items) once and check them."""
    if step.key is not None:
        item = get_item(client, step.table, step.key, step.consistent_read)
        if item is None:
            return ItemsSeen(0, [])
        return ItemsSeen(1, [item], step.expect.problems(item) if step.expect else [])
    assert step.query is not None
    count, shown, items = query_items(client, step.table, step.query, consistent=step.consistent_read,
                                      max_items=step.max_items)
    problems: list[str] = []
    if step.expect is not None:
        for number, item in enumerate(items, 1):
            problems += [f"item {number}: {p}" for p in step.expect.problems(item)]
            if len(problems) >= SHOWN_PROBLEMS:
                break
    return ItemsSeen(count, shown, problems[:SHOWN_PROBLEMS])


def satisfied(step: ExpectItemsStep, seen: ItemsSeen) -> bool:
    if step.key is not None:
        return seen.count == 0 if step.absent else seen.count == 1 and not seen.problems
    return step.expected_count().holds(seen.count) and not seen.problems


# --- the runner ------------------------------------------------------------------------------------------------


def _markdown(step: ExpectItemsStep, watched: Watched[ItemsSeen], ctx: StepContext) -> str:
    seen = watched.value
    facts: list[list[Any]] = [["table", md.code(step.table)]]
    if step.key is not None:
        facts.append(["key", md.code(show(step.key))])
    elif step.query is not None:
        facts += [["key condition", md.code(step.query.key_condition)]]
        if step.query.filter:
            facts.append(["filter", md.code(step.query.filter)])
        if step.query.values:
            facts.append(["values", md.code(redact(show(step.query.values), ctx.secrets))])
        if step.query.names:
            facts.append(["names", md.code(show(step.query.names))])
        if step.query.index:
            facts.append(["index", md.code(step.query.index)])
    facts += [["consistent read", "yes" if step.consistent_read else "no"], ["expected", step.wanted()],
              ["found", f"{seen.count} item(s) {watched.timing()}"]]
    parts: list[str] = [md.facts((name, value) for name, value in facts)]
    if seen.items:
        shown = json.dumps(redact_json(plain(seen.items), ctx.secrets), indent=2, ensure_ascii=False, default=str)
        if len(shown) > MAX_SHOWN_CHARS:
            shown = shown[:MAX_SHOWN_CHARS] + f"\n… [truncated: showing {MAX_SHOWN_CHARS} of {len(shown)} characters]"
        more = f" (the first {len(seen.items)} of {seen.count})" if seen.count > len(seen.items) else ""
        parts.append(f"**Items{more}** (DynamoDB's typed values as plain JSON)\n\n" + md.code_block(shown, "json"))
    if seen.problems:
        parts.append("**Expectations not met**\n\n" + md.bullets(redact(p, ctx.secrets) for p in seen.problems))
    return "\n\n".join(parts)


def expect_items_footprint(step: ExpectItemsStep, arns: Arns) -> Footprint:
    """GetItem by key, or Query (of the table or one of its indexes)."""
    table = arns.dynamodb_table(step.table)
    if step.query is None:
        return Footprint().read("DynamoDB table", step.table, "get item by key").need(table, "dynamodb:GetItem")
    index = step.query.index
    fp = Footprint().read("DynamoDB table", step.table, "query" + (f" index {index}" if index else ""))
    return fp.need(f"{table}/index/{index}" if index else table, "dynamodb:Query")


@step_kind(ExpectItemsStep, footprint=expect_items_footprint)
def run_expect_items(step: ExpectItemsStep, ctx: StepContext) -> StepOutcome:
    """Wait for the items and check them; the evidence shows them as plain JSON."""
    client = ctx.clients.client("dynamodb")
    watched = watch(lambda: observe(client, step), lambda seen: satisfied(step, seen), step.wait, hold=step.hold,
                    describe=ItemsSeen.describe, what=step.wanted(), logger=ctx.logger, clock=ctx.clock)
    seen = watched.value
    markdown = _markdown(step, watched, ctx)
    details = {"table": step.table, "count": seen.count, "checks": watched.checks,
               "waited_seconds": round(watched.waited, 3), "held_seconds": round(watched.held, 3),
               "items": redact_json(plain(seen.items), ctx.secrets)}
    if not watched.met:
        details["problems"] = [redact(p, ctx.secrets) for p in seen.problems]
        raise unmet(watched, step.wanted(), redact(seen.describe(), ctx.secrets), details=details, markdown=markdown,
                    check="items")
    link = console_link(ctx, "dynamodb", f"dynamodbv2/home?region={{region}}#item-explorer?table={step.table}",
                        f"DynamoDB table {step.table}")
    return StepOutcome(summary=f"found {seen.count} item(s) in DynamoDB table {step.table} {watched.timing()}",
                       details=details, markdown=markdown, links=link,
                       checks=[watched.record("items", step.wanted(), redact(seen.describe(), ctx.secrets))])
