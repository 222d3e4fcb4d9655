"""Credentials never go in a spec: refuse AWS credential keys and values that look like AWS keys, anywhere.

Anywhere means every mapping and list of the spec as written (variables, step payloads, expectations, ...)
and ``--var`` values. Refused are:

* keys named like AWS credentials (case-insensitive): :data:`AWS_CREDENTIAL_KEYS`, whatever their value;
* string values (and keys) holding an AWS access key id (``AKIA``/``ASIA`` and 16 letters or digits) or
  something shaped like an AWS secret access key (40 characters of letters, digits, ``/`` and ``+`` mixing
  upper case, lower case and digits).

An ordinary ``password`` or ``token`` field (say, in a Lambda payload) is *not* refused: a test may need a test
user's password; listing it in the step's ``sensitive_fields`` masks it in every output. Under ``aws:`` the wider
:data:`flows.spec.model.AWS_SETTINGS_CREDENTIAL_KEYS` are refused too.
Messages name where the problem is, never the value.
"""

from __future__ import annotations

import re
from typing import Any, Iterator

AWS_CREDENTIAL_KEYS = frozenset({
    "aws_access_key_id", "aws_secret_access_key", "aws_session_token", "aws_security_token",
    "access_key_id", "secret_access_key", "session_token",
})
_ACCESS_KEY_ID = re.compile(r"(?<![A-Z0-9])(?:AKIA|ASIA)[A-Z0-9]{16}(?![A-Z0-9])")
_SECRET_KEY = re.compile(r"(?<![A-Za-z0-9/+])[A-Za-z0-9/+]{40}(?![A-Za-z0-9/+=])")

ADVICE = ("credentials never go in a spec: save them in a prefect-aws AwsCredentials block and name it in "
          "aws.credentials_block, or use a profile")


def looks_like_aws_key(text: str) -> str | None:
    """What kind of AWS credential ``text`` seems to hold, or None."""
    if _ACCESS_KEY_ID.search(text):
        return "an AWS access key id"
    for match in _SECRET_KEY.finditer(text):
        word = match.group()
        if any(c.isupper() for c in word) and any(c.islower() for c in word) and any(c.isdigit() for c in word):
            return "an AWS secret access key"
    return None


def credential_problems(raw: Any, base: tuple[Any, ...] = ()) -> Iterator[tuple[tuple[Any, ...], str]]:
    """(location, message) for every credential in ``raw``; locations are key/index paths from the top."""
    stack: list[tuple[tuple[Any, ...], Any]] = [(base, raw)]
    while stack:
        loc, value = stack.pop()
        if isinstance(value, dict):
            for key, item in value.items():
                where = (*loc, key)
                if str(key).lower() in AWS_CREDENTIAL_KEYS:
                    yield where, f"{key!r} is an AWS credential key; {ADVICE}"
                    continue
                found = looks_like_aws_key(str(key))
                if found:
                    yield loc, f"a key holds what looks like {found}; {ADVICE}"
                    continue
                stack.append((where, item))
        elif isinstance(value, list):
            stack.extend(((*loc, i), item) for i, item in enumerate(value))
        elif isinstance(value, str):
            found = looks_like_aws_key(value)
            if found:
                yield loc, f"the value looks like {found} (not shown); {ADVICE}"
