"""Names made from free text: no Prefect, no boto3, so the evidence's writers and checkers can use it cheaply."""

from __future__ import annotations

import hashlib
import re

#: the longest slug: a suite's pack (``suites/<suite>/<time>-<run>/cases/<case>/steps/<n>/<file>`` below the
#: evidence folder, about 95 characters besides the two slugs) stays under 200 characters, so far from
#: Windows' 260 (MAX_PATH) under a folder such as C:\Users\<name>\pipeline-test\evidence
SLUG_MAX = 48
#: names Windows cannot give a file or folder, whatever the extension or case (``con``, ``nul.txt``, ``COM1``)
WINDOWS_RESERVED = frozenset({"con", "prn", "aux", "nul", *(f"com{i}" for i in range(1, 10)),
                              *(f"lpt{i}" for i in range(1, 10))})


def slug(text: str) -> str:
    """Lowercase letters, digits and dashes only (what Prefect allows in artifact keys), at most
    :data:`SLUG_MAX` characters (a longer one keeps its start and a hash of the whole, so it stays unique), never
    a name Windows reserves (``con`` becomes ``con-x``)."""
    text = re.sub(r"-+", "-", re.sub(r"[^a-z0-9]+", "-", text.lower())).strip("-")
    if len(text) > SLUG_MAX:
        text = f"{text[:SLUG_MAX - 9].rstrip('-')}-{hashlib.sha256(text.encode()).hexdigest()[:8]}"
    return f"{text}-x" if windows_reserved(text) else text


def windows_reserved(name: str) -> bool:
    """True when Windows cannot create a file or folder of this name: a device name (CON, PRN, AUX, NUL,
    COM1-9, LPT1-9) with or without an extension, in any case, trailing dots and spaces ignored as Windows
    does."""
    stem = name.rstrip(". ").split(".", 1)[0].rstrip(" ").lower()
    return stem in WINDOWS_RESERVED


def windows_safe(name: str, default: str = "x") -> str:
    """A file or folder name Windows can create: no trailing dots or spaces (Windows drops them), no reserved
    device name (``_`` appended to its stem: ``con.txt`` becomes ``con_.txt``)."""
    name = name.rstrip(". ") or default
    if windows_reserved(name):
        stem, dot, rest = name.partition(".")
        name = f"{stem}_{dot}{rest}"
    return name
