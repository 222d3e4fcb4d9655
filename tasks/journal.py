"""The durable undo journal: what a run must undo, kept in AWS before each change, so that a run that is killed
(SIGKILL, a lost worker, a laptop that never wakes) can still be undone by another process.

**Where.** Every pending undo action with a ``record`` (see :class:`tasks.base.UndoAction`) is written, before
the change it undoes, as one SSM parameter under ``/pipeline-test/journal/`` (``aws.journal_prefix`` in a case,
or ``PIPELINE_TEST_JOURNAL_PREFIX``) in the case's account and region, and deleted once the undo is done and
read back. A worker's container disappears with its disk; the account does not.

**Secrets.** An entry can hold a SecureString's earlier value (it is what the restore needs), so every entry is
itself a SecureString, encrypted with the same KMS key as the parameter it restores (the account's default
``aws/ssm`` key for the others). No value is ever stored in clear outside SSM/KMS.

**Layout.** ``<prefix>/<resource id>/<run id>-<n>``: the resource id is a digest of what the run locked (an SSM
parameter, an S3 prefix), so "does any run have an unfinished undo of this parameter?" is one
``GetParametersByPath``. The entry says which run wrote it, on which host and process, and the Prefect lease of
the run's lock (so ``recover`` can tell a dead run from a live one, see ``flows.recover``).

**Limits.** An entry must fit in 8 KB (SSM's Advanced tier; entries use Intelligent-Tiering, so small ones stay
Standard and free): a parameter value near 8 KB cannot be journaled and the step fails before changing it. The
journal needs ``ssm:PutParameter``, ``ssm:GetParametersByPath`` and ``ssm:DeleteParameter`` on the prefix and
``kms:Encrypt``/``kms:Decrypt`` on the keys (see docs/aws.md, IAM permissions).
"""

from __future__ import annotations

import getpass
import hashlib
import itertools
import json
import os
import re
import socket
import threading
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, Callable

from botocore.exceptions import ClientError

from tasks.base import UndoAction
from tasks.errors import AWS_ERRORS, JOURNAL_ENTRY_TOO_LARGE, StepError, aws_error, error_code

if TYPE_CHECKING:
    from types_boto3_ssm import SSMClient

DEFAULT_PREFIX = "/pipeline-test/journal"
PREFIX_ENV = "PIPELINE_TEST_JOURNAL_PREFIX"
FORMAT = 1
#: SSM's largest parameter value (Advanced tier)
MAX_ENTRY_BYTES = 8192
_SAFE = re.compile(r"[^A-Za-z0-9_.-]")


def journal_prefix(configured: str | None = None) -> str:
    """The journal's parameter path: the case's setting, else ``PIPELINE_TEST_JOURNAL_PREFIX``, else the default."""
    prefix = configured or os.environ.get(PREFIX_ENV) or DEFAULT_PREFIX
    return "/" + prefix.strip("/")


def resource_id(resource: str) -> str:
    """A short, stable, path-safe id of a resource (``ssm:/orders/source``, ``s3:bucket/prefix``)."""
    return hashlib.sha256(resource.encode("utf-8")).hexdigest()[:24]


def this_process() -> dict[str, Any]:
    """Who writes an entry: host, OS user and process id (to tell a dead writer from a live one)."""
    try:
        user = getpass.getuser()
    except Exception:  # no user name (some containers)
        user = None
    return {"host": socket.gethostname(), "pid": os.getpid(), "user": user}


@dataclass
class JournalEntry:
    """One unfinished undo, as read back from the journal."""

    name: str
    run_id: str
    case: str
    resource: str
    description: str
    record: dict[str, Any] = field(repr=False)
    owner: dict[str, Any]
    lease_id: str | None
    written_at: str

    @classmethod
    def parse(cls, name: str, text: str) -> "JournalEntry":
        data = json.loads(text)
        return cls(name=name, run_id=str(data.get("run_id")), case=str(data.get("case")),
                   resource=str(data.get("resource")), description=str(data.get("description")),
                   record=data.get("record") or {}, owner=data.get("owner") or {},
                   lease_id=data.get("lease_id"), written_at=str(data.get("written_at")))

    def public(self) -> dict[str, Any]:
        """What evidence may show of an entry (never the record, which may hold a secret)."""
        return {"entry": self.name, "run_id": self.run_id, "case": self.case, "resource": self.resource,
                "what": self.description, "owner": self.owner, "written_at": self.written_at}


class SsmJournal:
    """The journal of one case run (see the module's doc). Thread-safe: parallel steps write to it."""

    def __init__(self, ssm: SSMClient, *, run_id: str, case: str, prefix: str | None = None,
                 lease_id: Callable[[], str | None] = lambda: None) -> None:
        self.ssm = ssm
        self.run_id = run_id
        self.case = case
        self.prefix = journal_prefix(prefix)
        self.lease_id = lease_id
        self.owner = this_process()
        self._seq = itertools.count(1)
        self._lock = threading.Lock()

    def entry_name(self, resource: str) -> str:
        with self._lock:
            n = next(self._seq)
        return f"{self.prefix}/{resource_id(resource)}/{_SAFE.sub('_', self.run_id)}-{n}"

    def write(self, action: UndoAction) -> None:
        """Keep ``action`` durably; raises StepError (so the change is never made) when it cannot."""
        assert action.record is not None
        name = self.entry_name(action.resource)
        document = json.dumps({
            "format": FORMAT, "run_id": self.run_id, "case": self.case, "resource": action.resource,
            "description": action.description, "step": action.step, "record": action.record,
            "owner": self.owner, "lease_id": self.lease_id(),
            "written_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }, separators=(",", ":"), default=str)
        if len(document.encode("utf-8")) > MAX_ENTRY_BYTES:
            raise StepError(f"cannot keep the undo of {action.resource} in the journal: it needs "
                            f"{len(document.encode('utf-8'))} bytes, more than SSM's {MAX_ENTRY_BYTES}; nothing "
                            "was changed", code=JOURNAL_ENTRY_TOO_LARGE)
        kwargs: dict[str, Any] = {"Name": name, "Value": document, "Type": "SecureString", "Overwrite": False,
                                  "Tier": "Intelligent-Tiering",
                                  "Description": f"pipeline-test undo journal: run {self.run_id}"[:1024]}
        key_id = action.record.get("kms_key_id")
        if key_id:
            kwargs["KeyId"] = key_id
        try:
            self.ssm.put_parameter(**kwargs)
        except AWS_ERRORS as exc:
            error = aws_error("SSM PutParameter (undo journal)", name, exc)
            raise StepError(f"{error.message}; nothing was changed (the undo must be kept before the change)",
                            code=error.code) from None
        action.journal_id = name

    def remove(self, action: UndoAction) -> None:
        """Forget an action once it is undone (a missing entry is fine)."""
        if action.journal_id:
            remove_entry(self.ssm, action.journal_id)
            action.journal_id = None


def remove_entry(ssm: SSMClient, name: str) -> None:
    try:
        ssm.delete_parameter(Name=name)
    except ClientError as exc:
        if error_code(exc) != "ParameterNotFound":
            raise aws_error("SSM DeleteParameter (undo journal)", name, exc) from None
    except AWS_ERRORS as exc:
        raise aws_error("SSM DeleteParameter (undo journal)", name, exc) from None


def read_entries(ssm: SSMClient, prefix: str | None = None, resource: str | None = None) -> list[JournalEntry]:
    """Every unfinished undo in the journal (of one resource when given), oldest first."""
    path = journal_prefix(prefix) + (f"/{resource_id(resource)}" if resource else "")
    entries: list[JournalEntry] = []
    try:
        pages = ssm.get_paginator("get_parameters_by_path").paginate(Path=path, Recursive=True,
                                                                     WithDecryption=True)
        for page in pages:
            for param in page.get("Parameters", []):
                try:
                    entries.append(JournalEntry.parse(param["Name"], param.get("Value", "")))
                except (ValueError, TypeError):
                    continue  # not an entry of ours
    except AWS_ERRORS as exc:
        raise aws_error("SSM GetParametersByPath (undo journal)", path, exc) from None
    return sorted(entries, key=lambda e: (e.written_at, e.name))
