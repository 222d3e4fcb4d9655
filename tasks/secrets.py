"""Keeping secret values out of evidence, logs and error messages, while still showing that they changed.

A secret is shown as ``****(sha256:1a2b3c)``: four stars and the first 6 hex digits (24 bits) of the value's
SHA-256. Two different values almost always get different fingerprints, so a reviewer sees "before" and "after"
differ, or that an expected value matched, without seeing either.

Trade-off of the fingerprint length: 24 bits tell nothing useful about a long random secret (an API key or a
generated password has far more than 24 bits of entropy, so each fingerprint matches billions of candidates).
They do let someone *confirm a guess* of a weak secret (a dictionary word, a PIN), as any deterministic
fingerprint would. Set ``PIPELINE_TEST_MASK_KEY`` to any string to make fingerprints an HMAC with that key
(shown as ``hmac:``): guesses then cannot be checked offline, and fingerprints still compare within and across
runs that share the key.

Sensitive fields of a JSON document are named by dotted paths (see :func:`parse_path`)::

    password              top-level key
    db.password           nested key
    users[*].token        a key in every item of a list
    items[0].secret       one list item
    *.secret              a key in every value of an object

A leading ``$`` or ``$.`` is allowed. Keys that contain ``.``, ``[`` or ``]`` cannot be named (use a wildcard).
Paths that do not exist in a document are ignored: a sensitive field that is absent is not an error.
"""

from __future__ import annotations

import copy
import hashlib
import hmac
import json
import logging
import os
import re
from typing import Any, Iterable, Union

MASK_KEY_ENV = "PIPELINE_TEST_MASK_KEY"
FINGERPRINT_HEX_DIGITS = 6

#: a path segment: an object key, a list index, or ``WILDCARD`` (every key or item)
Segment = Union[str, int]
WILDCARD = "*"

_SEGMENT = re.compile(r"(?:^|\.)([^.\[\]]+)|\[(\*|\d+)\]")


def fingerprint(value: str) -> str:
    """Short fingerprint of a value: ``sha256:`` and 6 hex digits, or ``hmac:`` when a mask key is set."""
    data = value.encode("utf-8")
    key = os.environ.get(MASK_KEY_ENV)
    if key:
        digest = hmac.new(key.encode("utf-8"), data, hashlib.sha256).hexdigest()
        return f"hmac:{digest[:FINGERPRINT_HEX_DIGITS]}"
    return f"sha256:{hashlib.sha256(data).hexdigest()[:FINGERPRINT_HEX_DIGITS]}"


def mask(value: str) -> str:
    """The masked form of a secret string, e.g. ``****(sha256:1a2b3c)``."""
    return f"****({fingerprint(value)})"


def mask_any(value: Any) -> str:
    """Mask any JSON value: strings as themselves, everything else by its canonical JSON text."""
    if isinstance(value, str):
        return mask(value)
    return mask(json.dumps(value, sort_keys=True, separators=(",", ":"), default=str))


def parse_path(path: str) -> list[Segment]:
    """Split a dotted path (``users[*].token``) into segments; raises ValueError for a malformed path."""
    text = path.strip()
    if text.startswith("$"):
        text = text[1:].lstrip(".")
    if not text:
        raise ValueError(f"empty path {path!r}")
    segments: list[Segment] = []
    pos = 0
    while pos < len(text):
        match = _SEGMENT.match(text, pos)
        if not match:
            raise ValueError(f"malformed path {path!r} at character {pos + 1}")
        key, index = match.groups()
        if key is not None:
            segments.append(key)
        else:
            segments.append(WILDCARD if index == WILDCARD else int(index))
        pos = match.end()
    return segments


def _children(node: Any, segment: Segment) -> list[tuple[Any, Any]]:
    """(container, key) pairs that ``segment`` selects in ``node``; empty when nothing matches."""
    if segment == WILDCARD:
        if isinstance(node, dict):
            return [(node, k) for k in node]
        if isinstance(node, list):
            return [(node, i) for i in range(len(node))]
        return []
    if isinstance(segment, int):
        return [(node, segment)] if isinstance(node, list) and -len(node) <= segment < len(node) else []
    return [(node, segment)] if isinstance(node, dict) and segment in node else []


def _select(data: Any, segments: list[Segment]) -> list[tuple[Any, Any]]:
    """Every (container, key) that a parsed path reaches in ``data``."""
    found: list[tuple[Any, Any]] = []
    frontier = [data]
    for depth, segment in enumerate(segments):
        pairs = [pair for node in frontier for pair in _children(node, segment)]
        if depth == len(segments) - 1:
            found = pairs
        frontier = [container[key] for container, key in pairs]
    return found


def mask_paths(data: Any, paths: Iterable[str]) -> Any:
    """A copy of a JSON document with the values at ``paths`` masked (``data`` itself is not changed)."""
    result = copy.deepcopy(data)
    targets: dict[tuple[int, Any], tuple[Any, Any]] = {}
    for path in paths:
        for container, key in _select(result, parse_path(path)):
            targets.setdefault((id(container), key), (container, key))
    # fingerprints come from the original values, so overlapping paths never mask a mask
    masked = [(container, key, mask_any(container[key])) for container, key in targets.values()]
    for container, key, value in masked:
        container[key] = value
    return result


def redact_json(data: Any, secrets: Iterable[str]) -> Any:
    """A copy of a JSON document with known secrets masked inside every string (keys included)."""
    known = [s for s in secrets if s]
    if not known:
        return data
    if isinstance(data, dict):
        return {redact(str(k), known) if isinstance(k, str) else k: redact_json(v, known) for k, v in data.items()}
    if isinstance(data, list):
        return [redact_json(v, known) for v in data]
    return redact(data, known) if isinstance(data, str) else data


def _leaves(value: Any) -> list[str]:
    """String forms of a value's scalar leaves (strings and numbers; booleans and null are not secrets)."""
    if isinstance(value, dict):
        return [leaf for v in value.values() for leaf in _leaves(v)]
    if isinstance(value, list):
        return [leaf for v in value for leaf in _leaves(v)]
    if isinstance(value, bool) or value is None:
        return []
    return [str(value)]


def secrets_at(data: Any, paths: Iterable[str]) -> list[str]:
    """The secret strings found at ``paths`` (for :func:`redact`): each scalar leaf, and compact JSON of objects."""
    found: list[str] = []
    for path in paths:
        for container, key in _select(data, parse_path(path)):
            value = container[key]
            found.extend(_leaves(value))
            if isinstance(value, (dict, list)):
                found.append(json.dumps(value, separators=(",", ":")))
                found.append(json.dumps(value))
    return [s for s in dict.fromkeys(found) if s]


def _variants(secret: str) -> list[str]:
    """How a secret may appear in a text: as is, and escaped inside a JSON string."""
    ascii_escaped = json.dumps(secret)[1:-1]
    escaped = json.dumps(secret, ensure_ascii=False)[1:-1]
    return list(dict.fromkeys([secret, escaped, ascii_escaped]))


def redact(text: str, secrets: Iterable[str]) -> str:
    """Replace every occurrence of a known secret in ``text`` with its mask (in one pass, longest first)."""
    lookup: dict[str, str] = {}
    for secret in secrets:
        if not secret:
            continue
        for variant in _variants(secret):
            lookup.setdefault(variant, mask(secret))
    if not lookup or not text:
        return text
    pattern = re.compile("|".join(re.escape(v) for v in sorted(lookup, key=len, reverse=True)))
    return pattern.sub(lambda m: lookup[m.group(0)], text)


class RedactFilter(logging.Filter):
    """A logging filter that masks known secrets in records' messages; add secrets as they become known."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        super().__init__()
        self.secrets: set[str] = {s for s in secrets if s}

    def add(self, *secrets: str) -> None:
        """Start masking more secrets."""
        self.secrets.update(s for s in secrets if s)

    def filter(self, record: logging.LogRecord) -> bool:
        if self.secrets:
            message = record.getMessage()
            cleaned = redact(message, self.secrets)
            if cleaned != message:
                record.msg, record.args = cleaned, None
        return True


def is_sensitive(path: list[Segment], patterns: Iterable[list[Segment]]) -> bool:
    """True when a concrete path (keys and indexes) lies at or under any parsed sensitive-field pattern."""
    for pattern in patterns:
        if len(pattern) <= len(path) and all(p == WILDCARD or p == c for p, c in zip(pattern, path)):
            return True
    return False
