"""What every part of an evidence pack shares: its file names and schemas, naming, and hashing.

No Prefect, no boto3: verify.py (verify, upload, the CLI) and the writers of the pack's formats (write.py,
html.py, junit.py) build on it.

Hashes of things outside the pack (uploaded inputs, query results) come from the steps' typed
``StepResult.items`` (:class:`tasks.kit.files.HashedItem`, set by the runners on their outcome or on a failure), never
from keys in ``details``.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from flows.evidence.report import (
    REPORT_JSON,
    iso_utc,
)
from flows.evidence.results import CaseResult, StepResult
from flows.spec.slugs import slug
from tasks.kit.files import HashedItem

MANIFEST_SCHEMA = "pipeline-test/evidence-manifest"

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
SSE_VALUES = ("AES256", "aws:kms", "aws:kms:dsse")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
PRIVATE_ENV = "PIPELINE_TEST_PACK_PRIVATE"


def _utc(moment: datetime) -> datetime:
    """A datetime in UTC (naive ones are taken as UTC)."""
    return moment.replace(tzinfo=timezone.utc) if moment.tzinfo is None else moment.astimezone(timezone.utc)


_iso = iso_utc


def _case_slug(case: str) -> str:
    return slug(case) or "case"


def pack_name(result: CaseResult) -> str:
    """``<YYYYmmddTHHMMSSZ>-<first 8 characters of the run id>``: sorts by time, unique per run."""
    return run_pack_name(result.started_at, result.flow_run_id)


def run_pack_name(started_at: datetime, flow_run_id: str | None) -> str:
    """:func:`pack_name` of a run known by its start and id (before it has a result)."""
    run = re.sub(r"[^A-Za-z0-9]+", "", flow_run_id or "")[:8] or "local"
    return f"{_utc(started_at):%Y%m%dT%H%M%SZ}-{run}"


#: where packs go unless a run is told where (``--evidence-dir``), relative to the working folder
EVIDENCE_ROOT = Path("evidence")
#: the folder under :data:`EVIDENCE_ROOT` of the suites' packs
SUITES_DIR = "suites"


def pack_parent(name: str, *, suite: bool = False, base: Path = EVIDENCE_ROOT) -> Path:
    """The one rule for where packs go by default: a case's in ``evidence/<case-slug>/``, a suite's in
    ``evidence/suites/<suite-slug>/``, each run's in a folder of its own in there (:func:`run_pack_name`)."""
    return Path(base) / SUITES_DIR / (slug(name) or "suite") if suite else Path(base) / _case_slug(name)


def default_pack_dir(base: Path, result: CaseResult) -> Path:
    """The pack's default folder: ``<base>/<case-slug>/<YYYYmmddTHHMMSSZ>-<run id prefix>/``."""
    return run_pack_dir(result.case, result.started_at, result.flow_run_id, base=base)


def run_pack_dir(name: str, started_at: datetime, flow_run_id: str | None, *, suite: bool = False,
                 base: Path = EVIDENCE_ROOT) -> Path:
    """The default folder of the pack of a case's (or, with ``suite``, a suite's) run known by its start and id
    (before it has a result): ``evidence/<case-slug>/<YYYYmmddTHHMMSSZ>-<run id prefix>/``."""
    return pack_parent(name, suite=suite, base=base) / run_pack_name(started_at, flow_run_id)


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
class PackItem(HashedItem):
    """Something outside the pack whose SHA-256 the run recorded (a step's :class:`~tasks.kit.files.HashedItem`), with
    the step that recorded it: an entry of the manifest's and report.json's ``inputs`` / ``query_results``."""

    step: str = ""
    label: str = ""

    def to_json(self) -> dict[str, Any]:
        fields = asdict(self)
        return {"kind": fields.pop("kind"), "step": fields.pop("step"), "label": fields.pop("label"), **fields}

    @classmethod
    def of(cls, step: StepResult, item: HashedItem) -> PackItem:
        return cls(**{**asdict(item), "sha256": item.sha256.lower()}, step=step.number, label=step.label)


def hashed_items(result: CaseResult) -> list[PackItem]:
    """Every input file and query result whose SHA-256 a step recorded (``StepResult.items``), in step order."""
    return [PackItem.of(step, item) for step in result.steps for item in step.items
            if _SHA256.match(item.sha256.lower())]


def pack_files(folder: Path) -> list[str]:
    """Every file under the folder as a relative POSIX path, sorted (the manifest included)."""
    folder = Path(folder)
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())

