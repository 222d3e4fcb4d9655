"""The durable undo journal: what a run must undo, kept in AWS before each change, so that a run that is killed
(SIGKILL, a lost worker, a laptop that never wakes) can still be undone by another process.

**Where.** Every pending undo action with a ``record`` (see :class:`tasks.kit.step.UndoAction`) is written, before
the change it undoes, as one SSM parameter under ``/pipeline-test/journal/`` (``aws.journal_prefix`` in a case,
or ``PIPELINE_TEST_JOURNAL_PREFIX``) in the case's account and region, and deleted once the undo is done and
read back. A worker's container disappears with its disk; the account does not.

**Secrets.** An entry can hold a SecureString's earlier value (it is what the restore needs), so every entry is
itself a SecureString, encrypted with the same KMS key as the parameter it restores (the account's default
``aws/ssm`` key for the others). No value is ever stored in clear outside SSM/KMS.

**Layout.** ``<prefix>/<resource id>/<run id>-<n>``: the resource id is a digest of what the run locked (an SSM
parameter, an S3 prefix), so "does any run have an unfinished undo of this parameter?" is one
``GetParametersByPath``. The entry says which run wrote it, on which host and process, and the Prefect lease of
the run's lock (so ``recover`` can tell a dead run from a live one, see ``flows.run.recover``).

**Claims and their lease.** Before its first change, a run that changes anything writes its *claim*,
``<prefix>/runs/<run id>``: the run, its case, its owner (host, pid, user), the resources it holds and a lease
expiry (``lease_until``, UTC) that a thread of the run (:class:`Heartbeat`) renews while the run is alive
(every ``lease / 6`` s; ``PIPELINE_TEST_JOURNAL_LEASE_SECONDS``, 120 s by default). The claim is removed when the
run ends, after its undo. So whether a run is alive can be told from AWS alone, whatever Prefect server it
uses: a ``recover`` on another server leaves a live claim's changes alone, and a run that cannot see another's
Prefect locks (another server) still finds its claim on the same resources and refuses to start. A run whose
renewals keep failing stops itself before its lease runs out (it then undoes its changes itself).

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
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any, Callable

from botocore.exceptions import ClientError

from tasks.kit.errors import AWS_ERRORS, JOURNAL_ENTRY_TOO_LARGE, StepError, aws_error, error_code
from tasks.kit.step import UndoAction

if TYPE_CHECKING:
    from types_boto3_ssm import SSMClient

DEFAULT_PREFIX = "/pipeline-test/journal"
PREFIX_ENV = "PIPELINE_TEST_JOURNAL_PREFIX"
FORMAT = 1
#: SSM's largest parameter value (Advanced tier)
MAX_ENTRY_BYTES = 8192
_SAFE = re.compile(r"[^A-Za-z0-9_.-]")
#: the folder of the runs' claims under the journal's prefix (never a resource id: those are 24 hex digits)
CLAIMS = "runs"
LEASE_ENV = "PIPELINE_TEST_JOURNAL_LEASE_SECONDS"
DEFAULT_LEASE_SECONDS = 120.0
#: shorter leases would make a live run on a busy machine look dead
MIN_LEASE_SECONDS = 30.0
#: the error code of a change refused because the run lost its lease
LEASE_LOST = "JournalLeaseLost"


def journal_prefix(configured: str | None = None) -> str:
    """The journal's parameter path: the case's setting, else ``PIPELINE_TEST_JOURNAL_PREFIX``, else the default."""
    prefix = configured or os.environ.get(PREFIX_ENV) or DEFAULT_PREFIX
    return "/" + prefix.strip("/")


def journal_lease_seconds() -> float:
    """How long a run's claim stays live without a renewal (``PIPELINE_TEST_JOURNAL_LEASE_SECONDS``)."""
    try:
        return max(MIN_LEASE_SECONDS, float(os.environ.get(LEASE_ENV, DEFAULT_LEASE_SECONDS)))
    except ValueError:
        return DEFAULT_LEASE_SECONDS


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


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
                 lease_id: Callable[[], str | None] = lambda: None,
                 lease_lost: Callable[[], bool] = lambda: False) -> None:
        self.ssm = ssm
        #: True once the run's claim could not be renewed in time (see Heartbeat): no new change may start
        self.lease_lost = lease_lost
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
        if self.lease_lost():
            raise StepError(f"not changing {action.resource}: this run's lease in the undo journal could not be "
                            "renewed and the run is stopping (see its log); nothing was changed", code=LEASE_LOST)
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


def _parameters(ssm: SSMClient, path: str, what: str) -> list[tuple[str, str]]:
    """(name, decrypted value) of every parameter under ``path``; an AWS failure names ``what`` was read."""
    try:
        pages = ssm.get_paginator("get_parameters_by_path").paginate(Path=path, Recursive=True,
                                                                     WithDecryption=True)
        return [(p["Name"], p.get("Value", "")) for page in pages for p in page.get("Parameters", [])]
    except AWS_ERRORS as exc:
        raise aws_error(f"SSM GetParametersByPath ({what})", path, exc) from None


def read_entries(ssm: SSMClient, prefix: str | None = None, resource: str | None = None) -> list[JournalEntry]:
    """Every unfinished undo in the journal (of one resource when given), oldest first."""
    path = journal_prefix(prefix) + (f"/{resource_id(resource)}" if resource else "")
    claims = f"{journal_prefix(prefix)}/{CLAIMS}/"
    entries: list[JournalEntry] = []
    for name, value in _parameters(ssm, path, "undo journal"):
        if name.startswith(claims):
            continue  # a run's claim, not an undo
        try:
            entries.append(JournalEntry.parse(name, value))
        except (ValueError, TypeError):
            continue  # not an entry of ours
    return sorted(entries, key=lambda e: (e.written_at, e.name))


# ------------------------------------------------------------------------------------------ claims and leases
def claim_name(prefix: str | None, run_id: str) -> str:
    return f"{journal_prefix(prefix)}/{CLAIMS}/{_SAFE.sub('_', run_id)}"


def _when(text: str) -> datetime:
    when = datetime.fromisoformat(text)
    return when if when.tzinfo else when.replace(tzinfo=timezone.utc)


@dataclass
class RunClaim:
    """A run's claim on the resources it changes, with the lease that says it is alive (see the module's doc)."""

    name: str
    run_id: str
    case: str
    #: what it holds, readable (left out when too long for an entry) and as resource ids (always)
    resources: list[str]
    resource_ids: list[str]
    owner: dict[str, Any]
    lease_until: datetime
    started_at: str

    @classmethod
    def parse(cls, name: str, text: str) -> "RunClaim":
        data = json.loads(text)
        return cls(name=name, run_id=str(data["run_id"]), case=str(data.get("case")),
                   resources=[str(r) for r in data.get("resources") or []],
                   resource_ids=[str(r) for r in data.get("resource_ids") or []], owner=data.get("owner") or {},
                   lease_until=_when(str(data["lease_until"])), started_at=str(data.get("started_at")))

    def shares(self, resources: list[str]) -> list[str]:
        """Which of ``resources`` this claim holds too."""
        held = set(self.resource_ids)
        return [r for r in resources if resource_id(r) in held]

    def live(self, now: datetime) -> bool:
        """True while the lease has not run out (the run renewed it less than a lease ago)."""
        return now < self.lease_until

    def who(self) -> str:
        """The run, for a message: case, run id, host, pid and user."""
        owner = self.owner
        return (f"run {self.run_id} of case '{self.case}' on host {owner.get('host')} pid {owner.get('pid')}"
                + (f" (user {owner['user']})" if owner.get("user") else ""))

    def until(self) -> str:
        return self.lease_until.isoformat(timespec="seconds")


def read_claims(ssm: SSMClient, prefix: str | None = None) -> list[RunClaim]:
    """Every run's claim in the journal."""
    claims: list[RunClaim] = []
    for name, value in _parameters(ssm, f"{journal_prefix(prefix)}/{CLAIMS}", "undo journal claims"):
        try:
            claims.append(RunClaim.parse(name, value))
        except (ValueError, TypeError, KeyError):
            continue  # not a claim of ours
    return claims


class Heartbeat:
    """A run's claim in the journal, renewed by a thread of its own while the run is alive (a context manager:
    written on entry, before any change; renewal stopped and the claim removed on exit, after the undo).

    A renewal that fails (throttling, the endpoint gone) is retried sooner and logged; when the lease would run
    out before the next try, ``on_lost`` is called once (the run stops and undoes its changes itself, before a
    ``recover`` elsewhere may take it for dead). ``now`` is the wall clock (a fake one in tests)."""

    def __init__(self, ssm: SSMClient, *, run_id: str, case: str, resources: list[str], logger: Any,
                 prefix: str | None = None, lease_s: float | None = None,
                 now: Callable[[], datetime] = utcnow, on_lost: Callable[[], None] | None = None) -> None:
        self.ssm = ssm
        self.run_id = run_id
        self.case = case
        self.resources = sorted(set(resources))
        self.logger = logger
        self.name = claim_name(prefix, run_id)
        self.lease_s = lease_s if lease_s is not None else journal_lease_seconds()
        #: a renewal every this many seconds (after a failure: twice as often)
        self.interval = self.lease_s / 6
        self.now = now
        self.on_lost = on_lost
        self.owner = this_process()
        self.started_at = now()
        self.lease_until = self.started_at
        self.lost = False
        self.failures = 0
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def _put(self, now: datetime) -> datetime:
        until = now + timedelta(seconds=self.lease_s)
        claim = {"format": FORMAT, "run_id": self.run_id, "case": self.case,
                 "resource_ids": [resource_id(r) for r in self.resources], "owner": self.owner,
                 "lease_seconds": self.lease_s, "started_at": self.started_at.isoformat(timespec="seconds"),
                 "lease_until": until.isoformat(timespec="seconds"), "renewed_at": now.isoformat(timespec="seconds")}
        document = json.dumps({**claim, "resources": self.resources}, separators=(",", ":"))
        if len(document.encode("utf-8")) > MAX_ENTRY_BYTES:
            document = json.dumps(claim, separators=(",", ":"))  # the ids alone (the names are for people)
        try:
            self.ssm.put_parameter(Name=self.name, Value=document, Type="SecureString", Overwrite=True,
                                   Tier="Intelligent-Tiering",
                                   Description=f"pipeline-test run claim: run {self.run_id}"[:1024])
        except AWS_ERRORS as exc:
            raise aws_error("SSM PutParameter (undo journal claim)", self.name, exc) from None
        return until

    def claim(self) -> None:
        """Write the claim (StepError when it cannot be written: the run must not start)."""
        self.lease_until = self._put(self.now())

    def beat(self) -> bool:
        """Renew the lease once; False when the renewal failed (see the class's doc)."""
        now = self.now()
        try:
            with self._lock:
                if self._stop.is_set():  # the claim is being removed: never write it again
                    return True
                self.lease_until = self._put(now)
            if self.failures:
                self.logger.info("Renewed this run's lease in the undo journal again (until %s)",
                                 self.lease_until.isoformat(timespec="seconds"))
            self.failures = 0
            return True
        except StepError as exc:
            self.failures += 1
            left = (self.lease_until - now).total_seconds()
            if left <= self.interval and not self.lost:
                self.lost = True
                self.logger.error("This run's lease in the undo journal runs out at %s and cannot be renewed (%s): "
                                  "stopping the run, so that it undoes its changes itself",
                                  self.lease_until.isoformat(timespec="seconds"), exc.message)
                if self.on_lost is not None:
                    self.on_lost()
            elif not self.lost:
                self.logger.warning("Could not renew this run's lease in the undo journal (%s); trying again; "
                                    "the lease runs until %s", exc.message,
                                    self.lease_until.isoformat(timespec="seconds"))
            return False

    def next_wait(self) -> float:
        return self.interval / 2 if self.failures else self.interval

    def _loop(self) -> None:
        while not self._stop.wait(self.next_wait()):
            try:
                self.beat()
            except Exception as exc:  # never let the thread die silently: the lease would run out
                self.logger.warning("Unexpected error renewing the undo journal lease: %s", exc)

    def __enter__(self) -> "Heartbeat":
        self.claim()
        self._thread = threading.Thread(target=self._loop, name=f"journal-lease-{self.run_id}", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
        try:
            with self._lock:  # after a renewal under way
                remove_entry(self.ssm, self.name)
        except StepError as error:
            self.logger.warning("Could not remove this run's claim from the undo journal (it expires at %s): %s",
                                self.lease_until.isoformat(timespec="seconds"), error.message)
