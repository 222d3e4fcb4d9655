"""Resource locks: overlapping runs of any cases serialize on the SSM parameters and S3 prefixes they share.

Each resource a case will change (``StepBase.resources``: ``ssm:/orders/source``, ``s3:bucket/prefix``) is a
Prefect **global concurrency limit** of one slot, named after the resource and created on first use. A run takes
all of its locks in one request (all or none, so two runs can never each hold half of what the other needs)
before its first step, and holds them until its undo is done and read back. The server keeps the locks, so this
holds across threads, processes, workers and deployments that share one Prefect server (not across servers).

Slots are leases: the run renews its lease in the background (every ``lease × 0.75`` s, the first time that long
after taking it, on the hold's own client: no request at the start, no second client); when the holder dies
(SIGKILL, a lost worker) the lease expires after ``PIPELINE_TEST_LOCK_LEASE_SECONDS`` (60 s by default) and the
server frees the slot. The journal (``tasks.kit.journal``) records the lease, so ``recover`` can free it at once
when it knows the holder is dead.

A run deletes its limits when it is done with them, while it still holds their one slot (so no other run can
hold one of them then); a run that was waiting finds its limit gone, creates it again and takes it. So a server
keeps no limit of a run that ended. Limits are created in this process one at a time, after a read, so that the
cases of a suite never create the same limit at once (PostgreSQL would log the refused duplicate as an error).
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
from prefect.concurrency._sync import release_concurrency_slots_with_lease
from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound

from flows.evidence.report import Locks
from tasks.kit.errors import INTERRUPTED, LOCK_TIMEOUT, LOCK_UNAVAILABLE
from tasks.kit.polling import wait_event

LEASE_ENV = "PIPELINE_TEST_LOCK_LEASE_SECONDS"
DEFAULT_LEASE_SECONDS = 60.0
#: a waiting run asks again at least this often (the server suggests when, from how long slots are held)
MAX_RETRY_INTERVAL = 2.0
#: a 5xx answer to the lock request that Prefect's client does not retry (500: e.g. the server's connection pool
#: timed out) is asked again, 1, 2, 4 ... s later (at most MAX_HICCUP_PAUSE_S), for this long, before the run gives up
HICCUP_S = 120.0
MAX_HICCUP_PAUSE_S = 15.0
#: a held lease is renewed after this part of its duration
RENEW_FRACTION = 0.75
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

    def public(self) -> Locks:
        """What the run's record says of its locks."""
        return Locks(resources=list(self.resources), limits=list(self.names), waited_seconds=round(self.waited_s, 3))


#: limits are created one at a time in this process (it guards calls to the server, it holds no data)
_CREATING = threading.Lock()
#: a run that keeps finding its limits gone (deleted as fast as it creates them) gives up after this many tries
MAX_RECREATE = 5


def ensure_limits(names: list[str], client: Any = None) -> None:
    """Create the one-slot limits that do not exist yet, on ``client`` (a sync Prefect client) or a new one.
    Quietly idempotent: read first, one creation at a time in this process, and another process creating one
    at the same moment (409 Conflict) is fine."""
    with contextlib.nullcontext(client) if client is not None else get_client(sync_client=True) as client:
        for name in names:
            with _CREATING:
                try:
                    client.read_global_concurrency_limit_by_name(name)
                    continue
                except ObjectNotFound:
                    pass
                try:
                    client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name=name, limit=1))
                except ObjectAlreadyExists:
                    pass


def delete_limits(names: list[str], client: Any) -> None:
    """Delete the limits a run is done with. Call it while holding their slot (no other run holds one then: a
    waiting run finds them gone, creates them again and takes them). Never raises: a limit left behind costs
    nothing but a row."""
    for name in names:
        try:
            client.delete_global_concurrency_limit_by_name(name)
        except Exception:
            pass


def _release(client: Any, lease_id: str | None) -> None:
    if lease_id:
        with contextlib.suppress(Exception):
            client.release_concurrency_slots_with_lease(uuid.UUID(lease_id))


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
    recreated = 0
    hiccup_pause = 1.0
    with contextlib.nullcontext(client) if client is not None else get_client(sync_client=True) as client:
        while True:
            try:
                response = client.increment_concurrency_slots_with_lease(names, 1, "concurrency", lease, holder)
                body = response.json()
                got = {str(limit.get("name")) for limit in body.get("limits") or []}
                missing = [name for name in names if name not in got]
                if not missing:
                    return str(body["lease_id"]), time.monotonic() - t0
                # the run that held them last deleted them (see delete_limits): give back the slots just taken
                # of the others, create the missing ones again, and ask again at once
                _release(client, body.get("lease_id"))
                recreated += 1
                if recreated > MAX_RECREATE:
                    raise LockError(f"the locks {', '.join(missing)} do not exist on the Prefect server",
                                    code=LOCK_UNAVAILABLE)
                try:
                    ensure_limits(missing, client)
                except Exception as exc:
                    raise LockError(f"could not create the resource locks on the Prefect server: {exc}",
                                    code=LOCK_UNAVAILABLE) from None
                continue
            except httpx.HTTPStatusError as exc:
                code = exc.response.status_code
                if code != 423 and (code < 500 or time.monotonic() - t0 + hiccup_pause > HICCUP_S):
                    raise LockError(f"the Prefect server refused the locks: {code} "
                                    f"{exc.response.text[:200]}", code=LOCK_UNAVAILABLE) from None
                if code != 423:  # a 5xx that Prefect's client does not retry (a pool timeout): wait it out
                    logger.warning("The Prefect server answered %d while taking the locks; asking again in %.0f s",
                                   code, hiccup_pause)
                    if wait_event(stop, hiccup_pause):
                        raise LockError("the run was stopped while taking its locks; nothing was changed",
                                        code=INTERRUPTED) from None
                    hiccup_pause = min(hiccup_pause * 2, MAX_HICCUP_PAUSE_S)
                    continue
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
                busy = held_by_others(names, client)
                logger.warning("Waiting for %d lock(s) that another run holds (%.0f s of at most %.0f s): %s",
                               len(busy), waited, timeout, ", ".join(busy))
            if wait_event(stop, min(max(retry_after, 0.05), MAX_RETRY_INTERVAL, timeout - waited)):
                raise LockError("the run was stopped while waiting for its locks; nothing was changed",
                                code=INTERRUPTED)


def held_by_others(names: list[str], client: Any) -> list[str]:
    """Of the locks a run asks for, those another run holds now (all slots taken): never the run's own unique
    ones (its S3 prefix), which only made the list long. All of them when the server cannot say."""
    busy = []
    try:
        for name in names:
            limit = client.read_global_concurrency_limit_by_name(name)
            if limit.active_slots >= limit.limit:
                busy.append(name)
    except Exception:
        return names
    return busy or names


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
            with renewed(client, lease_id, lease, logger):
                yield held
        finally:
            delete_limits(held.names, client)  # still holding their slot: see delete_limits
            try:
                client.release_concurrency_slots_with_lease(uuid.UUID(lease_id)).raise_for_status()
            except Exception as exc:  # the lease expires by itself
                logger.warning("Could not release the resource locks (they expire within %.0f s): %s", lease,
                               exc)


@contextmanager
def renewed(client: Any, lease_id: str, lease: float, logger: Any, every: float | None = None) -> Iterator[None]:
    """Renew the lease every ``every`` s (``lease`` × RENEW_FRACTION) in a thread, on ``client`` (thread-safe),
    while the block runs; the first renewal ``every`` s after the lease was taken. A failed renewal is logged and
    tried again at the next turn (the lease runs out only after ``lease`` s)."""
    done = threading.Event()
    every = lease * RENEW_FRACTION if every is None else every

    def loop() -> None:
        while not wait_event(done, every):
            try:
                client.renew_concurrency_lease(uuid.UUID(lease_id), lease)
            except Exception as exc:
                logger.warning("Could not renew the resource locks' lease (tried again in %.0f s; it runs out "
                               "%.0f s after the last renewal): %s", every, lease, exc)

    thread = threading.Thread(target=loop, name="lock-lease", daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join(5)


def release_lease(lease_id: str) -> bool:
    """Free the slots of a (dead run's) lease at once; False when it was already gone."""
    try:
        release_concurrency_slots_with_lease(uuid.UUID(lease_id))
        return True
    except Exception:
        return False
