"""What every part of an evidence pack shares: its file names and schemas, naming, and hashing.

No Prefect, no boto3: :mod:`flows.evidence_pack` (verify, upload, the CLI) and the writers of the pack's
formats (:mod:`flows.pack_formats`, :mod:`flows.pack_html`, :mod:`flows.pack_junit`) build on it.

Hashes of things outside the pack come from the steps' details, by these conventions:

- ``details["uploads"][i]`` with ``sha256`` (and ``bucket``, ``key``, ``size``, ``local_path``): an input;
- ``details["result_sha256"]`` (with ``query_id``, ``output_location`` or ``result_location``, and
  ``row_count``): a query result.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

from flows.naming import slug
from flows.results import CaseResult, StepResult

REPORT_SCHEMA = "pipeline-test/evidence-report"
MANIFEST_SCHEMA = "pipeline-test/evidence-manifest"
SCHEMA_VERSION = 1
SCHEMA_FILE = Path(__file__).with_name("report.schema.json")

REPORT_JSON = "report.json"
REPORT_MD = "report.md"
REPORT_HTML = "report.html"
JUNIT_XML = "junit.xml"
MANIFEST = "manifest.json"
#: files every pack has (besides the manifest); a manifest that does not list one of them is not a pack's
REQUIRED_FILES = (REPORT_JSON, REPORT_MD, REPORT_HTML, JUNIT_XML)
CONTENT_TYPES = {
    ".json": "application/json",
    ".md": "text/markdown; charset=utf-8",
    ".html": "text/html; charset=utf-8",
    ".xml": "application/xml",
    ".yaml": "application/yaml",
    ".yml": "application/yaml",
}
STATUS_WORD = {"passed": "PASSED", "failed": "FAILED", "error": "ERROR", "skipped": "SKIPPED"}
SSE_VALUES = ("AES256", "aws:kms", "aws:kms:dsse")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
PRIVATE_ENV = "PIPELINE_TEST_PACK_PRIVATE"


def _utc(moment: datetime) -> datetime:
    """A datetime in UTC (naive ones are taken as UTC)."""
    return moment.replace(tzinfo=timezone.utc) if moment.tzinfo is None else moment.astimezone(timezone.utc)


def _iso(moment: datetime | None) -> str | None:
    return _utc(moment).isoformat(timespec="seconds").replace("+00:00", "Z") if moment else None


def _case_slug(case: str) -> str:
    return slug(case) or "case"


def pack_name(result: CaseResult) -> str:
    """``<YYYYmmddTHHMMSSZ>-<first 8 characters of the run id>``: sorts by time, unique per run."""
    run = re.sub(r"[^A-Za-z0-9]+", "", result.flow_run_id or "")[:8] or "local"
    return f"{_utc(result.started_at):%Y%m%dT%H%M%SZ}-{run}"


def default_pack_dir(base: Path, result: CaseResult) -> Path:
    """The pack's default folder: ``<base>/<case-slug>/<YYYYmmddTHHMMSSZ>-<run id prefix>/``."""
    return Path(base) / _case_slug(result.case) / pack_name(result)


def pack_prefix(base_prefix: str, result: CaseResult) -> str:
    """The S3 key prefix of a run's pack under ``base_prefix``: ``<base>/<case-slug>/<time>-<run>/`` (POSIX)."""
    base = base_prefix.strip("/")
    return "/".join(p for p in (base, _case_slug(result.case), pack_name(result)) if p) + "/"


# --------------------------------------------------------------------------------------------------- hashing
def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: Path) -> str:
    """SHA-256 of a file's bytes, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def manifest_sha256(folder: Path) -> str:
    """SHA-256 of a pack's manifest.json: keep it outside the pack to anchor the manifest itself."""
    return sha256_file(Path(folder) / MANIFEST)


@dataclass(frozen=True)
class HashedItem:
    """Something outside the pack whose SHA-256 the run recorded: an uploaded input file or a query result."""

    kind: Literal["input", "query_result"]
    step: str
    label: str
    location: str
    sha256: str
    size: int | None = None
    local_path: str | None = None
    query_id: str | None = None
    rows: int | None = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def _is_sha256(value: Any) -> bool:
    return isinstance(value, str) and bool(_SHA256.match(value.lower()))


def _int_or_none(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _uploads(step: StepResult) -> list[HashedItem]:
    uploads = step.details.get("uploads")
    items = []
    for entry in uploads if isinstance(uploads, list) else []:
        if isinstance(entry, dict) and _is_sha256(entry.get("sha256")):
            location = f"s3://{entry.get('bucket') or step.details.get('bucket', '')}/{entry.get('key', '')}"
            items.append(HashedItem("input", step.number, step.label, location, entry["sha256"].lower(),
                                    size=_int_or_none(entry.get("size")), local_path=entry.get("local_path")))
    return items


def _query_result(step: StepResult) -> list[HashedItem]:
    digest = step.details.get("result_sha256")
    if not _is_sha256(digest):
        return []
    d = step.details
    location = str(d.get("result_location") or d.get("output_location") or f"query {d.get('query_id', '?')}")
    return [HashedItem("query_result", step.number, step.label, location, digest.lower(),
                       size=_int_or_none(d.get("result_size")), query_id=d.get("query_id"),
                       rows=_int_or_none(d.get("row_count")))]


def hashed_items(result: CaseResult) -> list[HashedItem]:
    """Every input file and query result whose SHA-256 a step recorded in its details, in step order."""
    return [item for step in result.steps for item in _uploads(step) + _query_result(step)]


def pack_files(folder: Path) -> list[str]:
    """Every file under the folder as a relative POSIX path, sorted (the manifest included)."""
    folder = Path(folder)
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())

