"""Keeping secret values out of evidence, logs and error messages.

**Where masking happens.** A value known to be secret is replaced where it enters a result, an evidence field,
a log record or a message: runners mask SecureString values and sensitive JSON fields themselves (structurally,
by position, whatever their length), and add every secret they discover to the run's :class:`Secrets`
registry (``StepContext.secrets``). Nothing is ever masked by searching the finished text of a file (XML,
JSON, HTML, markdown documents of the pack): the last net (:func:`redact_json`) runs on the *values* of
JSON-able data before it is serialised, string values only, never keys, and never for a secret shorter than
:data:`MIN_SECRET_CHARS` characters (a short secret would mask ordinary words and its surroundings would give
it away). Such short secrets are still masked where they are known to be secret (a SecureString's value
column, a sensitive path), and the flow warns about them.

**The masked form.** Without a key a secret is shown as ``****``. With ``PIPELINE_TEST_MASK_KEY`` set (any
string the user keeps secret), it is shown as ``****(hmac:1a2b3c)``: 6 hex digits of an HMAC-SHA256 keyed with
it, so a reviewer sees "before" and "after" differ, or that an expected value matched, and nobody without the
key can check a guess offline (an unkeyed hash of a 6-digit PIN is reversed in a second).

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
import threading
from typing import Any, Iterable, Iterator, Union

MASK_KEY_ENV = "PIPELINE_TEST_MASK_KEY"
FINGERPRINT_HEX_DIGITS = 6
#: the net (free-text and value redaction) never searches for a secret shorter than this
MIN_SECRET_CHARS = 8
STARS = "****"
#: keys whose values are names, labels, kinds or schema strings: the net never changes them (a secret that
#: happens to equal a step's name must not rename the step, nor break a report's schema id)
NAMES = frozenset({"case", "name", "names", "label", "kind", "number", "group", "status", "error_code", "schema",
                   "schema_version", "bucket", "key", "keys", "prefix", "tags", "flow_run_id", "ui_url", "slug"})

#: a path segment: an object key, a list index, or ``WILDCARD`` (every key or item)
Segment = Union[str, int]
WILDCARD = "*"

_SEGMENT = re.compile(r"(?:^|\.)([^.\[\]]+)|\[(\*|\d+)\]")


def fingerprint(value: str) -> str | None:
    """``hmac:`` and 6 hex digits of the value's HMAC-SHA256 keyed with ``PIPELINE_TEST_MASK_KEY``; None
    without a key (an unkeyed digest would let anyone confirm a guess of a weak secret offline)."""
    key = os.environ.get(MASK_KEY_ENV)
    if not key:
        return None
    digest = hmac.new(key.encode("utf-8"), value.encode("utf-8"), hashlib.sha256).hexdigest()
    return f"hmac:{digest[:FINGERPRINT_HEX_DIGITS]}"


def mask(value: str) -> str:
    """The masked form of a secret string: ``****``, or ``****(hmac:1a2b3c)`` when a mask key is set."""
    mark = fingerprint(value)
    return f"{STARS}({mark})" if mark else STARS


def mask_any(value: Any) -> str:
    """Mask any JSON value: strings as themselves, everything else by its canonical JSON text."""
    if isinstance(value, str):
        return mask(value)
    return mask(json.dumps(value, sort_keys=True, separators=(",", ":"), default=str))


def searchable(secret: str) -> bool:
    """Whether the net may search texts for this secret (long enough not to match ordinary words)."""
    return len(secret) >= MIN_SECRET_CHARS


class Secrets:
    """The secrets of one run, as the runners discover them; thread-safe (parallel steps add to it).

    One registry per run (on ``StepContext.secrets``), shared by the log filter, the engine's net and the
    evidence pack writer. Iterating gives the values known so far, in the order they were added.
    """

    def __init__(self, values: Iterable[Any] = ()) -> None:
        self._lock = threading.Lock()
        self._values: dict[str, None] = {}
        self.add(*values)

    def add(self, *values: Any) -> None:
        """Start treating these values as secret (strings as they are, numbers by their text; empty ignored)."""
        texts = [v if isinstance(v, str) else str(v) for v in values
                 if v is not None and not isinstance(v, bool) and v != ""]
        with self._lock:
            self._values.update(dict.fromkeys(texts))

    @property
    def values(self) -> tuple[str, ...]:
        with self._lock:
            return tuple(self._values)

    def short(self) -> list[str]:
        """Known secrets too short for the net (masked only where they are known to be secret)."""
        return [s for s in self.values if not searchable(s)]

    def __iter__(self) -> Iterator[str]:
        return iter(self.values)

    def __len__(self) -> int:
        return len(self.values)

    def __contains__(self, value: object) -> bool:
        with self._lock:
            return value in self._values

    def __repr__(self) -> str:  # never the values
        return f"Secrets({len(self)} value(s))"

    def __deepcopy__(self, memo: dict[int, Any]) -> "Secrets":
        return self  # one registry per run: copies of the context share it

    def __reduce__(self) -> Any:  # pickled (e.g. to hash task inputs): without the values
        return (Secrets, ())


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
    """The secret strings found at ``paths``: each scalar leaf, and compact JSON of objects."""
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
    """Mask every occurrence of a known secret in a free text (a message, a log tail, one string value).

    Only secrets of at least :data:`MIN_SECRET_CHARS` characters are searched for (longest first, one pass):
    use it on values, never on the finished text of a document (its syntax is not a value).
    """
    lookup: dict[str, str] = {}
    for secret in secrets:
        if not secret or not searchable(secret):
            continue
        for variant in _variants(secret):
            lookup.setdefault(variant, mask(secret))
    if not lookup or not text:
        return text
    pattern = re.compile("|".join(re.escape(v) for v in sorted(lookup, key=len, reverse=True)))
    return pattern.sub(lambda m: lookup[m.group(0)], text)


def redact_json(data: Any, secrets: Iterable[str], *, keep: Iterable[str] = (), exact: bool = False) -> Any:
    """A copy of JSON-able data with known secrets masked in its string *values* (the net, before serialising).

    Keys are never changed, nor the values of keys named in ``keep`` (names, kinds, schema strings), at any
    depth. A string value that contains a secret of at least :data:`MIN_SECRET_CHARS` characters has it
    masked; with ``exact``, a value that *is* a secret is masked whatever its length (for values the spec or
    a runner put there as that secret, e.g. the spec's own copy).
    """
    known = [s for s in secrets if s]
    if not known:
        return data
    whole = set(known) if exact else {s for s in known if searchable(s)}
    kept = frozenset(keep)

    def walk(node: Any) -> Any:
        if isinstance(node, dict):
            return {k: (v if k in kept else walk(v)) for k, v in node.items()}
        if isinstance(node, (list, tuple)):
            return [walk(v) for v in node]
        if isinstance(node, str):
            return mask(node) if node in whole else redact(node, known)
        if isinstance(node, (int, float)) and not isinstance(node, bool) and str(node) in whole:
            return mask(str(node))
        return node

    return walk(data)


def mask_document_text(text: str, secrets: Iterable[str], json_format: bool = False) -> str | None:
    """A YAML (or JSON) document's text with its secret *values* masked: parsed, masked value by value
    (:func:`redact_json` with ``exact``, names kept), dumped again. The text itself when no value holds a
    secret (and no long secret is anywhere in it, comments included); None when it cannot be parsed."""
    import yaml  # lazy: only the pack's spec copy needs it

    known = [s for s in secrets if s]
    try:
        data = json.loads(text) if json_format else yaml.safe_load(text)
    except (ValueError, yaml.YAMLError):
        return None
    masked = redact_json(data, known, keep=NAMES, exact=True)
    if masked == data and not any(searchable(s) and s in text for s in known):
        return text
    if json_format:
        return json.dumps(masked, indent=2, ensure_ascii=False) + "\n"
    return ("# secret values masked by pipeline-test (comments and layout of the original not kept)\n"
            + yaml.safe_dump(masked, sort_keys=False, allow_unicode=True, width=120))


class RedactFilter(logging.Filter):
    """A logging filter that masks the run's secrets in records: in each argument, in a message without
    arguments, and in the text of an exception (secrets shorter than the minimum are left to the runners)."""

    def __init__(self, secrets: Secrets | Iterable[str] = ()) -> None:
        super().__init__()
        self.secrets: Secrets = secrets if isinstance(secrets, Secrets) else Secrets(secrets)

    def add(self, *secrets: str) -> None:
        """Start masking more secrets."""
        self.secrets.add(*secrets)

    def _arg(self, value: Any, known: list[str]) -> Any:
        if isinstance(value, str):
            return redact(value, known)
        if isinstance(value, bool) or value is None:
            return value
        text = str(value)
        cleaned = redact(text, known)
        return value if cleaned == text else cleaned

    def filter(self, record: logging.LogRecord) -> bool:
        known = [s for s in self.secrets if searchable(s)]
        if not known:
            return True
        msg, args = record.msg, record.args
        try:
            if isinstance(args, dict):
                record.args = {k: self._arg(v, known) for k, v in args.items()}
            elif args:
                record.args = tuple(self._arg(v, known) for v in args)
            if isinstance(msg, str):
                record.msg = redact(msg, known)
            record.getMessage()
        except (TypeError, ValueError):  # an argument changed type: mask the formatted message instead
            record.msg, record.args = msg, args
            record.msg, record.args = redact(record.getMessage(), known), None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text, known)
        return True


def is_sensitive(path: list[Segment], patterns: Iterable[list[Segment]]) -> bool:
    """True when a concrete path (keys and indexes) lies at or under any parsed sensitive-field pattern."""
    for pattern in patterns:
        if len(pattern) <= len(path) and all(p == WILDCARD or p == c for p, c in zip(pattern, path)):
            return True
    return False
