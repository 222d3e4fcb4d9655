"""Checks of JSON documents shared by step kinds (a Lambda response, a Step Functions execution's output).

* :class:`JsonExpect`: what a document must contain: a JSON subset and/or JMESPath expressions with the value each
  must give; step kinds subclass it (``expect:`` of ``invoke_lambda``, of ``step_functions``);
* :func:`expect_mismatches`: the differences, one line each (the matching itself is :mod:`tasks.kit.json_compare`'s);
* :class:`JsonMasker`: masks a step's sensitive fields (dotted paths, see :mod:`tasks.kit.secrets`) where documents
  are reported, and the run's secrets in texts; what is compared is never masked.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, ClassVar

import jmespath
from jmespath.exceptions import JMESPathError
from pydantic import Field, model_validator

from tasks.kit import nesting
from tasks.kit.checks import CheckRecord
from tasks.kit.errors import StepError
from tasks.kit.json_compare import jmespath_mismatches, json_equal, json_subset_mismatches
from tasks.kit.secrets import (
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
from tasks.kit.step import SpecModel

#: how many characters of a document the evidence shows
MAX_SHOWN_CHARS = 4000

#: "no JSON document" (an empty or non-JSON body), distinct from JSON ``null``
MISSING = object()


class JsonExpect(SpecModel):
    """What a JSON document must contain."""

    #: the field it is given in, for the message when it is empty
    field_name: ClassVar[str] = "expect"

    json_subset: Any = Field(
        None,
        description="A JSON value the document (a Lambda response payload, an execution's output; for "
        "match_input, the execution's input) must contain: "
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
            raise ValueError(f"{self.field_name} needs json_subset and/or jmespath")
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
        return nesting.loads(body, "the response")
    except nesting.NestingError as exc:
        raise StepError(f"{exc}: too deep to check") from None
    except (json.JSONDecodeError, UnicodeDecodeError):
        return MISSING


def truncate(text: str, limit: int = MAX_SHOWN_CHARS) -> str:
    """``text`` cut to ``limit`` characters, saying how much was left out."""
    if len(text) <= limit:
        return text
    return f"{text[:limit]}\n… [truncated: showing {limit} of {len(text)} characters]"


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


def expect_checks(expect: JsonExpect, document: Any, masker: JsonMasker) -> list[CheckRecord]:
    """Each part of ``expect`` as a typed check: the JSON subset (what it expected, and what did not match, if
    anything), each JMESPath expression with what it gave; values as the evidence reports them (sensitive fields
    and the run's secrets masked). ``document`` is JSON (not ``MISSING``: the caller reports a missing one)."""
    records = []
    if expect.has_subset:
        problems = [masker.text(p) for p in json_subset_mismatches(expect.json_subset, document, masker.show_at)]
        records.append(CheckRecord.of("json_subset", not problems,
                                      masker.text(truncate(masker.show(masker.doc(expect.json_subset)), 1000)),
                                      "; ".join(problems) or "contained"))
    shown = masker.doc(document)
    for expr, expected in expect.jmespath.items():
        got, reported = jmespath.search(expr, document), jmespath.search(expr, shown)
        # an expression that reads a masked (sensitive) value: what it was expected to give is masked too
        expected_text = masker.show(expected if json_equal(got, reported) else mask_any(expected))
        records.append(CheckRecord.of(expr, json_equal(expected, got), masker.text(expected_text),
                                      masker.text(truncate(masker.show(reported), 1000))))
    return records
