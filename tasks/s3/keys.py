"""S3 keys, buckets and local files: safe keys (no drive letters, `\\` read as `/`), globs, s3:// URIs, the local files
an upload names, content types and tag values."""

from __future__ import annotations

import mimetypes
import posixpath
import re
from pathlib import Path, PurePath
from typing import TYPE_CHECKING, Annotated

from pydantic import AfterValidator

from tasks.kit.errors import StepError
from tasks.kit.step import RESOURCE_NAME, is_template, template_aware

if TYPE_CHECKING:

    pass


MIB = 1024 * 1024


#: S3's limit on a key, in UTF-8 bytes
MAX_KEY_BYTES = 1024


#: an S3 bucket name (S3's rules: 3 to 63 lowercase letters, digits, dots and dashes, starting and ending with a
#: letter or digit, no '..', '.-' or '-.', not shaped like an IP address), checked once templates are rendered
BucketName = Annotated[str, template_aware(
    r"(?!\d+\.\d+\.\d+\.\d+$)(?!xn--)(?!.*(\.\.|\.-|-\.))[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]",
    "an S3 bucket name is 3 to 63 lowercase letters, digits, '.' and '-', starting and ending with a letter or "
    "digit, without '..' and not shaped like an IP address"), RESOURCE_NAME]


_DRIVE = re.compile(r"^[A-Za-z]:([\\/]|$)")


_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def _safe_key(value: str) -> str:
    """An S3 key (or prefix): ``\\`` read as ``/`` (the one normalisation of every key field), no drive letter,
    no ``..`` segment, no leading ``/``, no control character, at most MAX_KEY_BYTES bytes of UTF-8 (checked as
    written and again once rendered; a template is normalised once rendered)."""
    if not is_template(value):
        value = value.replace("\\", "/")
    if _DRIVE.match(value):
        raise ValueError(f"an S3 key must not start with a drive letter ({value[:3]!r}: a local Windows path?); "
                         "write the key relative to the bucket, e.g. in/a.csv")
    if value.startswith(("/", "\\")):
        raise ValueError("an S3 key must not start with '/' (S3 keys are relative: write in/a.csv, not /in/a.csv)")
    if ".." in value.replace("\\", "/").split("/"):
        raise ValueError("an S3 key must not hold a '..' segment (S3 does not resolve it; the object would land "
                         "under a key with '..' in it)")
    if _CONTROL.search(value):
        raise ValueError("an S3 key must not hold a control character (newline, tab, NUL, ...)")
    if not is_template(value) and len(value.encode("utf-8", "surrogatepass")) > MAX_KEY_BYTES:
        raise ValueError(f"an S3 key is at most {MAX_KEY_BYTES:,} bytes of UTF-8 (this one is "
                         f"{len(value.encode('utf-8', 'surrogatepass')):,})")
    return value


def check_glob(pattern: str) -> str:
    """A glob whose character classes are well formed: ``[z-a]`` (a reversed range) matches nothing, so a wait
    on it would only ever time out; refused (checked as written and once rendered)."""
    if is_template(pattern):
        return pattern
    for match in re.finditer(r"\[!?(\]?[^\]]*)\]", pattern):
        body = match.group(1)
        for low, high in re.findall(r"(.)-(.)", body):
            if low > high:
                raise ValueError(f"the glob {pattern!r} has a reversed range {low}-{high} in {match.group()!r}, "
                                 "which matches nothing (write it low to high, e.g. [a-z])")
    return pattern


def _safe_uri_key(value: str | None) -> str | None:
    """An ``s3://bucket/key`` URI whose key part is a safe key (see :func:`_safe_key`)."""
    if value and value.startswith("s3://"):
        _safe_key(value[len("s3://"):].partition("/")[2])
    return value


#: an S3 key or prefix: no '..' segment, no leading '/', checked as written and again once rendered
S3Key = Annotated[str, AfterValidator(_safe_key), RESOURCE_NAME]


#: the same check on the key part of an s3:// URI (use in an Annotated string field, with RESOURCE_NAME)
S3_URI_KEY = AfterValidator(_safe_uri_key)


#: the most objects a count may name (a LIST of a million keys already takes minutes)
MAX_COUNT = 1_000_000


#: S3's largest object (5 TiB)
MAX_OBJECT_BYTES = 5 * 1024 ** 4


TAG_RUN = "pipeline-test-run"


TAG_CASE = "pipeline-test-case"


# ---------------------------------------------------------------------------------------------- keys & files
def s3_uri(bucket: str, key: str = "") -> str:
    return f"s3://{bucket}/{key}"


def posix_key(prefix: str, local: PurePath) -> str:
    """The object key for a local file under a key prefix: always POSIX, whatever the local OS's separator."""
    prefix = prefix.replace("\\", "/")
    return posixpath.join(prefix, local.name) if prefix else local.name


def resolve_files(patterns: list[str], base: Path) -> list[Path]:
    """Local files named by paths or glob patterns, relative to ``base`` (the spec's folder); sorted, unique.

    Backslashes in patterns are read as separators, so a spec written on Windows works everywhere.
    """
    found: dict[Path, None] = {}
    for raw in patterns:
        pattern = raw.replace("\\", "/")
        path = Path(pattern)
        if any(ch in pattern for ch in "*?["):
            root = Path(path.anchor) if path.is_absolute() else base
            rel = pattern[len(path.anchor):] if path.is_absolute() else pattern
            matches = sorted(p for p in root.glob(rel) if p.is_file())
            if not matches:
                raise StepError(f"no local file matches {raw!r} (relative to {base})")
            found.update(dict.fromkeys(matches))
        else:
            full = path if path.is_absolute() else base / path
            if not full.is_file():
                raise StepError(f"local file {raw!r} not found (looked for {full})")
            found[full] = None
    return list(found)


#: the content types of the formats pipelines ingest, whatever the machine's mimetypes tables say (Windows reads
#: them from its registry); others as Python's mimetypes guesses them
CONTENT_TYPES = {".csv": "text/csv", ".jsonl": "application/x-ndjson", ".ndjson": "application/x-ndjson",
                 ".json": "application/json", ".parquet": "application/vnd.apache.parquet",
                 ".avro": "application/avro", ".orc": "application/octet-stream", ".gz": "application/gzip"}


def content_type(path: PurePath) -> str:
    """The Content-Type an uploaded file gets, from its extension."""
    known = CONTENT_TYPES.get(path.suffix.lower())
    if known:
        return known
    guessed, _ = mimetypes.guess_type(path.name)
    return guessed or "application/octet-stream"


def tag_value(text: str) -> str:
    """S3 tag values allow letters, digits, spaces and ``+ - = . _ : / @``; anything else becomes ``-``."""
    cleaned = "".join(ch if ch.isalnum() or ch in " +-=._:/@" else "-" for ch in text)
    return cleaned[:256]
