"""Resource locks: overlapping runs of any cases serialize on the SSM parameters and S3 prefixes they share.

Each resource a case will change (``StepBase.resources``: ``ssm:/orders/source``, ``s3:bucket/prefix``) is a
Prefect **global concurrency limit** of one slot, named after the resource and created on first use. A run takes
all of its locks in one request (all or none, so two runs can never each hold half of what the other needs)
before its first step, and holds them until its undo is done and read back. The server keeps the locks, so this
holds across threads, processes, workers and deployments that share one Prefect server (not across servers).

Slots are leases: the run renews its lease in the background (every ``lease × 0.75`` s); when the holder dies
(SIGKILL, a lost worker) the lease expires after ``PIPELINE_TEST_LOCK_LEASE_SECONDS`` (60 s by default) and the
server frees the slot. The journal (``tasks.journal``) records the lease, so ``recover`` can free it at once
when it knows the holder is dead.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import threading
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Iterator

import httpx
from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
from prefect.client.schemas.objects import ConcurrencyLeaseHolder
from prefect.concurrency._leases import maintain_concurrency_lease
from prefect.concurrency._sync import release_concurrency_slots_with_lease
from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound

from tasks.errors import INTERRUPTED, LOCK_TIMEOUT, LOCK_UNAVAILABLE
from tasks.polling import wait_event

LEASE_ENV = "PIPELINE_TEST_LOCK_LEASE_SECONDS"
DEFAULT_LEASE_SECONDS = 60.0
#: a waiting run asks again at least this often (the server suggests when, from how long slots are held)
MAX_RETRY_INTERVAL = 2.0
#: log that the run is still waiting at most this often
LOG_EVERY = 15.0
PREFIX = "pipeline-test-lock"
_UNSAFE = re.compile(r"[^A-Za-z0-9._:-]+")


class LockError(Exception):
    """The run could not take its locks (timed out waiting, or the Prefect API refused)."""

    def __init__(self, message: str, code: str) -> None:
        super().__init__(message)
        self.code = code


def lease_seconds() -> float:
    try:
        return max(5.0, float(os.environ.get(LEASE_ENV, DEFAULT_LEASE_SECONDS)))
    except ValueError:
        return DEFAULT_LEASE_SECONDS


def lock_name(resource: str) -> str:
    """The concurrency limit's name for a resource: readable, within Prefect's rules (no ``/ % & < >``), unique."""
    digest = hashlib.sha256(resource.encode("utf-8")).hexdigest()[:12]
    readable = _UNSAFE.sub("_", resource).strip("_")[:80]
    return f"{PREFIX}-{readable}-{digest}"


@dataclass
class HeldLocks:
    """The locks a run holds: for its evidence, and for the journal (the lease lets ``recover`` free them)."""

    resources: list[str] = field(default_factory=list)
    names: list[str] = field(default_factory=list)
    lease_id: str | None = None
    waited_s: float = 0.0

    def public(self) -> dict[str, Any]:
        return {"resources": self.resources, "limits": self.names, "waited_seconds": round(self.waited_s, 3)}


def ensure_limits(names: list[str], client: Any = None) -> None:
    """Create the one-slot limits that do not exist yet (another run creating one at the same time is fine), on
    ``client`` (a sync Prefect client) or a new one."""
    with contextlib.nullcontext(client) if client is not None else get_client(sync_client=True) as client:
        for name in names:
            try:
                client.read_global_concurrency_limit_by_name(name)
                continue
            except ObjectNotFound:
                pass
            try:
                client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name=name, limit=1))
            except ObjectAlreadyExists:
                pass


def _holder(run_id: str) -> ConcurrencyLeaseHolder | None:
    try:
        return ConcurrencyLeaseHolder(type="flow_run", id=uuid.UUID(run_id))
    except ValueError:
        return None


def acquire(names: list[str], run_id: str, timeout: float, lease: float, logger: Any,
            stop: threading.Event | None = None, client: Any = None) -> tuple[str, float]:
    """Take one slot of every limit in one request (all or none), retrying while another run holds one; logs
    when it starts waiting and every ``LOG_EVERY`` s after. Returns (lease id, seconds waited).

    Prefect's own ``concurrency()`` waits in a background service that a Ctrl+C cannot stop (the process then
    hangs at exit until the wait times out), so the loop is here, in the caller's thread, on the sync client."""
    t0 = time.monotonic()
    holder = _holder(run_id)
    stop = stop or threading.Event()
    logged: float | None = None
    with contextlib.nullcontext(client) if client is not None else get_client(sync_client=True) as client:
        while True:
            try:
                response = client.increment_concurrency_slots_with_lease(names, 1, "concurrency", lease, holder)
                body = response.json()
                if len(body.get("limits") or []) < len(names):
                    raise LockError(f"the locks {', '.join(names)} do not exist on the Prefect server",
                                    code=LOCK_UNAVAILABLE)
                return str(body["lease_id"]), time.monotonic() - t0
            except httpx.HTTPStatusError as exc:
                if exc.response.status_code != 423:
                    raise LockError(f"the Prefect server refused the locks: {exc.response.status_code} "
                                    f"{exc.response.text[:200]}", code=LOCK_UNAVAILABLE) from None
                retry_after = float(exc.response.headers.get("Retry-After", 1.0))
            except httpx.HTTPError as exc:
                raise LockError(f"the Prefect server did not answer while taking the locks: {exc}",
                                code=LOCK_UNAVAILABLE) from None
            waited = time.monotonic() - t0
            if waited >= timeout:
                raise LockError(f"timed out after {timeout:.0f} s waiting for another run to release "
                                f"{', '.join(names)}; nothing was changed", code=LOCK_TIMEOUT)
            if logged is None or waited - logged >= LOG_EVERY:
                logged = waited
                logger.warning("Waiting for %d lock(s) that another run holds (%.0f s of at most %.0f s): %s",
                               len(names), waited, timeout, ", ".join(names))
            if wait_event(stop, min(max(retry_after, 0.05), MAX_RETRY_INTERVAL, timeout - waited)):
                raise LockError("the run was stopped while waiting for its locks; nothing was changed",
                                code=INTERRUPTED)


@contextmanager
def hold(resources: list[str], run_id: str, *, timeout: float, logger: Any,
         stop: threading.Event | None = None) -> Iterator[HeldLocks]:
    """Hold a lock on every resource for the duration of the block (nothing to hold: a no-op)."""
    resources = sorted(set(resources))
    held = HeldLocks(resources=resources, names=sorted({lock_name(r) for r in resources}))
    if not held.names:
        yield held
        return
    lease = lease_seconds()
    # one client for the whole hold: each new Prefect client builds an SSL context (tens of ms of CPU), which
    # adds up over the cases of a suite
    with get_client(sync_client=True) as client:
        try:
            ensure_limits(held.names, client)
        except Exception as exc:
            raise LockError(f"could not create the resource locks on the Prefect server: {exc}",
                            code=LOCK_UNAVAILABLE) from None
        lease_id, held.waited_s = acquire(held.names, run_id, timeout, lease, logger, stop, client)
        held.lease_id = lease_id
        if held.waited_s >= 0.5:
            logger.info("Took %d lock(s) after waiting %.1f s", len(held.names), held.waited_s)
        try:
            with maintain_concurrency_lease(uuid.UUID(lease_id), lease, raise_on_lease_renewal_failure=False,
                                            suppress_warnings=False):
                yield held
        finally:
            try:
                client.release_concurrency_slots_with_lease(uuid.UUID(lease_id)).raise_for_status()
            except Exception as exc:  # the lease expires by itself
                logger.warning("Could not release the resource locks (they expire within %.0f s): %s", lease,
                               exc)


def release_lease(lease_id: str) -> bool:
    """Free the slots of a (dead run's) lease at once; False when it was already gone."""
    try:
        release_concurrency_slots_with_lease(uuid.UUID(lease_id))
        return True
    except Exception:
        return False
