"""Names made from free text: no Prefect, no boto3, so the evidence's writers and checkers can use it cheaply."""

from __future__ import annotations

import re


def slug(text: str) -> str:
    """Lowercase letters, digits and dashes only (what Prefect allows in artifact keys)."""
    return re.sub(r"-+", "-", re.sub(r"[^a-z0-9]+", "-", text.lower())).strip("-")
