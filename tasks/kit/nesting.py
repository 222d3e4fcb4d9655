"""How deep JSON and YAML may nest: one limit and one reader for every document this project reads.

Specs, payload files, reconcile files, Lambda and Step Functions responses, objects' JSON content and evidence
manifests are all read with :func:`loads` (or checked with :func:`check_depth` once parsed), so a document of a
few kilobytes made of nested ``[`` is refused with a clear message instead of a RecursionError somewhere later
(while matching, masking or validating it). Every check here is iterative: it cannot recurse itself.
"""

from __future__ import annotations

import json
from typing import Any

#: how deep mappings and lists may nest in any document read
MAX_DEPTH = 64


class NestingError(ValueError):
    """A document nests deeper than :data:`MAX_DEPTH`; the message names it (``what``)."""


def too_deep(what: str, limit: int = MAX_DEPTH) -> NestingError:
    return NestingError(f"{what} nests deeper than {limit} levels")


def check_depth(value: Any, what: str, limit: int = MAX_DEPTH) -> Any:
    """``value`` itself, or NestingError when its dicts and lists nest deeper than ``limit``."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children: Any = item.values()
        elif isinstance(item, (list, tuple)):
            children = item
        else:
            continue
        if depth > limit:
            raise too_deep(what, limit)
        stack.extend((child, depth + 1) for child in children if isinstance(child, (dict, list, tuple)))
    return value


def loads(text: str | bytes, what: str, limit: int = MAX_DEPTH, **kwargs: Any) -> Any:
    """``json.loads`` bounded in depth: NestingError (a ValueError) naming ``what`` when too deep; other errors
    are json's own (``json.JSONDecodeError``, also a ValueError)."""
    try:
        value = json.loads(text, **kwargs)
    except RecursionError:
        raise too_deep(what, limit) from None
    return check_depth(value, what, limit)
