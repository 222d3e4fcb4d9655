"""Matching JSON values against what a case expects: JSON subsets, JSON equality and JMESPath expressions.

Shared by the step kinds that check documents (a Lambda response, an SSM parameter's JSON, a DynamoDB item).
Numbers compare by value, exactly: a :class:`~decimal.Decimal` (DynamoDB's numbers) equals the number a spec
writes (``585.24`` in YAML is the float nearest to it, compared by its shortest text), and ``true`` is never ``1``.
"""

from __future__ import annotations

import json
from decimal import Decimal, InvalidOperation
from typing import Any, Callable

import jmespath

from tasks.kit.secrets import Segment


def _path_text(path: list[Segment]) -> str:
    out = "$"
    for seg in path:
        out += f"[{seg}]" if isinstance(seg, int) else f".{seg}"
    return out


def json_subset_mismatches(
    expected: Any,
    actual: Any,
    show: Callable[[list[Segment], Any], str] | None = None,
    path: list[Segment] | None = None,
) -> list[str]:
    """Where ``actual`` does not contain ``expected`` (empty when it does), one line per difference.

    Objects: every expected key must be present and match (extra keys are fine). Lists: same length, items
    matched in order. Scalars: equal, and ``true`` is not ``1``. ``show(path, value)`` formats values in the
    messages, so that callers can mask secrets.
    """
    path = path or []
    show = show or (lambda _p, v: json.dumps(v, default=str))
    where = _path_text(path)
    if isinstance(expected, dict):
        if not isinstance(actual, dict):
            return [f"{where}: expected an object, got {show(path, actual)}"]
        problems: list[str] = []
        for key, value in expected.items():
            if key not in actual:
                problems.append(f"{_path_text(path + [key])}: missing (expected {show(path + [key], value)})")
            else:
                problems += json_subset_mismatches(value, actual[key], show, path + [key])
        return problems
    if isinstance(expected, list):
        if not isinstance(actual, list):
            return [f"{where}: expected a list, got {show(path, actual)}"]
        if len(expected) != len(actual):
            return [f"{where}: expected {len(expected)} items, got {len(actual)}"]
        pairs = enumerate(zip(expected, actual))
        return [p for i, (e, a) in pairs for p in json_subset_mismatches(e, a, show, path + [i])]
    if not _scalar_equal(expected, actual):
        return [f"{where}: expected {show(path, expected)}, got {show(path, actual)}"]
    return []


def _scalar_equal(expected: Any, actual: Any) -> bool:
    """JSON equality of scalars: numbers by value (Decimals exactly), but booleans never equal numbers."""
    if isinstance(expected, bool) or isinstance(actual, bool):
        return type(expected) is type(actual) and expected == actual
    if isinstance(expected, Decimal) or isinstance(actual, Decimal):
        exact_expected, exact_actual = exact_number(expected), exact_number(actual)
        if exact_expected is not None and exact_actual is not None:
            return exact_expected == exact_actual
    return bool(expected == actual)


def exact_number(value: Any) -> Decimal | None:
    """A number as an exact Decimal (a float by its shortest text, so 585.24 is 585.24); None for a non-number."""
    if isinstance(value, bool):
        return None
    if isinstance(value, Decimal):
        return value
    if isinstance(value, int):
        return Decimal(value)
    if isinstance(value, float):
        try:
            return Decimal(repr(value))
        except InvalidOperation:  # pragma: no cover - repr of a float is always a valid Decimal
            return None
    return None


def json_equal(expected: Any, actual: Any) -> bool:
    """JSON equality of any values (objects by keys, lists in order, ``true`` is not ``1``)."""
    if isinstance(expected, dict):
        return isinstance(actual, dict) and expected.keys() == actual.keys() and all(
            json_equal(v, actual[k]) for k, v in expected.items()
        )
    if isinstance(expected, list):
        return isinstance(actual, list) and len(expected) == len(actual) and all(
            json_equal(e, a) for e, a in zip(expected, actual)
        )
    return not isinstance(actual, (dict, list)) and _scalar_equal(expected, actual)


def jmespath_mismatches(
    expressions: dict[str, Any], document: Any, show: Callable[[Any], str] | None = None, shown: Any = None
) -> list[str]:
    """Which JMESPath expressions do not give their expected value on ``document`` (compared with ==).

    ``shown`` is the document as the evidence may show it (sensitive paths masked): what an expression gives
    is reported from it, so a value drawn from a sensitive field shows masked and any other value as it is.
    """
    show = show or (lambda v: json.dumps(v, default=str))
    problems = []
    for expr, expected in expressions.items():
        got = jmespath.search(expr, document)
        if not json_equal(expected, got):
            reported = got if shown is None else jmespath.search(expr, shown)
            problems.append(f"{expr}: expected {show(expected)}, got {show(reported)}")
    return problems
