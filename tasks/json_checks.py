"""Checks of JSON documents shared by step kinds (a Lambda response, a Step Functions execution's output).

* :class:`JsonExpect`: what a document must contain: a JSON subset and/or JMESPath expressions with the value each
  must give; step kinds subclass it (``expect:`` of ``invoke_lambda``, of ``step_functions``);
* :func:`json_subset_mismatches`, :func:`jmespath_mismatches`, :func:`expect_mismatches`: the differences, one
  line each;
* :class:`JsonMasker`: masks a step's sensitive fields (dotted paths, see :mod:`tasks.secrets`) where documents
  are reported, and the run's secrets in texts; what is compared is never masked.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Callable

import jmespath
from jmespath.exceptions import JMESPathError
from pydantic import Field, model_validator

from tasks.base import SpecModel
from tasks.secrets import (
    Secrets,
    Segment,
    is_sensitive,
    mask_any,
    mask_paths,
    parse_path,
    redact,
    redact_json,
    secrets_at,
)

#: how many characters of a document the evidence shows
MAX_SHOWN_CHARS = 4000

#: "no JSON document" (an empty or non-JSON body), distinct from JSON ``null``
MISSING = object()


class JsonExpect(SpecModel):
    """What a JSON document must contain."""

    json_subset: Any = Field(
        None,
        description="A JSON value the document (a Lambda response payload, an execution's output) must contain: "
        "objects match when every expected key matches (extra keys are fine), lists when they have the same "
        "length and match item by item, scalars when equal.",
    )
    jmespath: dict[str, Any] = Field(
        default_factory=dict,
        description="JMESPath expression -> the value it must give on the document (compared with ==).",
    )

    @model_validator(mode="after")
    def _check(self) -> "JsonExpect":
        if "json_subset" not in self.model_fields_set and not self.jmespath:
            raise ValueError("expect needs json_subset and/or jmespath")
        for expr in self.jmespath:
            try:
                jmespath.compile(expr)
            except JMESPathError as exc:
                raise ValueError(f"invalid JMESPath expression {expr!r}: {exc}") from None
        return self

    @property
    def has_subset(self) -> bool:
        """True when a JSON subset was given (``null`` is a valid subset to expect)."""
        return "json_subset" in self.model_fields_set


def parse_json(body: bytes) -> Any:
    """A body (a response payload, an output) as JSON, or ``MISSING`` when it is empty or not JSON."""
    if not body:
        return MISSING
    try:
        return json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError):
        return MISSING


def truncate(text: str, limit: int = MAX_SHOWN_CHARS) -> str:
    """``text`` cut to ``limit`` characters, saying how much was left out."""
    if len(text) <= limit:
        return text
    return f"{text[:limit]}\n… [truncated: showing {limit} of {len(text)} characters]"


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
    """JSON equality of scalars: numbers by value, but booleans never equal numbers."""
    if isinstance(expected, bool) or isinstance(actual, bool):
        return type(expected) is type(actual) and expected == actual
    return bool(expected == actual)


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


# --- the runner ------------------------------------------------------------------------------------------------


@dataclass
class JsonMasker:
    """Masks the step's sensitive fields where documents are reported, and the run's secrets in texts."""

    patterns: list[list[Segment]]
    paths: list[str]
    #: the run's registry: values found at sensitive paths are added to it
    secrets: Secrets = field(default_factory=Secrets)

    @classmethod
    def for_paths(cls, paths: list[str], secrets: Secrets) -> "JsonMasker":
        return cls([parse_path(p) for p in paths], list(paths), secrets)

    def learn(self, document: Any) -> None:
        """Remember the secret values that ``document`` holds at the sensitive paths (secrets of the run)."""
        if self.paths and document is not MISSING:
            self.secrets.add(*secrets_at(document, self.paths))

    def doc(self, document: Any) -> Any:
        """The document as reported: sensitive paths masked, the run's (long) secrets masked in other values."""
        return redact_json(mask_paths(document, self.paths) if self.paths else document, self.secrets)

    def text(self, text: str) -> str:
        return redact(text, self.secrets)

    def show_at(self, path: list[Segment], value: Any) -> str:
        return mask_any(value) if is_sensitive(path, self.patterns) else json.dumps(value, default=str)

    def show(self, value: Any) -> str:
        return json.dumps(value, default=str)


def shown_json(document: Any, masker: JsonMasker) -> str:
    return masker.text(truncate(json.dumps(masker.doc(document), indent=2, default=str)))


def expect_mismatches(expect: JsonExpect, document: Any, masker: JsonMasker) -> list[str]:
    """What of ``expect`` the document does not hold, one redacted line each (sensitive values masked)."""
    problems: list[str] = []
    if expect.has_subset:
        problems += json_subset_mismatches(expect.json_subset, document, masker.show_at)
    problems += jmespath_mismatches(expect.jmespath, document, masker.show, shown=masker.doc(document))
    return [masker.text(p) for p in problems]
