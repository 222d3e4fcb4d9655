"""Recovery: put back what dead runs changed and never undid, from the durable undo journal (``tasks.kit.journal``).

    python -m flows.pipeline_test recover [--region R] [--profile P | --credentials-block B] [--dry-run]

A journal entry exists from just before a change until its undo is done. Whether its run is still alive is
told first from AWS alone, by the run's claim in the journal and its lease (``tasks.kit.journal.Heartbeat``): a
claim whose lease is live, of a run that this Prefect server does not know, is left alone and reported
("run X on host H pid P is alive, lease until T"), whatever server that run uses. On the same host a gone
process is dead at once. For a run this server knows, its lock decides as before: a live run holds the
resource's lock (``flows.run.locks``) until its undo is done, so an entry whose lock can be taken belongs to a dead
run. Before trying the lock, ``recover`` frees the lease of a run it *knows* is dead: on this host and its
process is gone, or its Prefect flow run has ended (Crashed, Cancelled, Failed, Completed). Otherwise a dead
run's lease expires by itself within ``PIPELINE_TEST_LOCK_LEASE_SECONDS`` (60 s), and its claim's within
``PIPELINE_TEST_JOURNAL_LEASE_SECONDS`` (120 s), and a later ``recover`` finishes the job.

Each entry is redone by the undo kind that wrote it (``tasks.kit.step.UNDO_KINDS``: restore an SSM parameter and
read it back, delete an uploaded test object), last change first, and removed from the journal once done.
A new run that would change a resource with an unfinished undo refuses to start (exit 3) and names this
command, or, with ``--recover``, recovers it first: it never takes the leftovers as its baseline. A new run that
finds a live claim on its resources that its Prefect server's locks cannot see (another server) refuses to
start too (exit 3), naming that run.
"""

from __future__ import annotations

import os
import socket
import sys
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any, Callable

from tasks.kit.aws import ClientFactory
from tasks.kit.errors import UNKNOWN_UNDO_KIND, StepError
from tasks.kit.journal import (
    JournalEntry,
    RunClaim,
    journal_lease_seconds,
    read_claims,
    read_entries,
    remove_entry,
    utcnow,
)
from tasks.kit.step import UNDO_KINDS

if TYPE_CHECKING:
    from types_boto3_ssm import SSMClient

#: Prefect state types after which a run will never undo anything itself
ENDED = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}


class CouldNotRun(Exception):
    """A run that never started its steps (locks, leftovers of a dead run, credentials): exit 3."""


@dataclass
class Recovered:
    """What recovery did with each journal entry."""

    done: list[dict[str, Any]] = field(default_factory=list)
    failed: list[dict[str, Any]] = field(default_factory=list)
    skipped: list[dict[str, Any]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.failed and not self.skipped

    def lines(self) -> list[str]:
        rows = [("RESTORED", d, d["outcome"]) for d in self.done] + [("FAILED", d, d["error"]) for d in self.failed]
        rows += [("SKIPPED", d, d["why"]) for d in self.skipped]
        return [f"  {word:<9} {d['resource']}: {text} (run {d['run_id']}, case '{d['case']}')"
                for word, d, text in rows]


def _pid_alive(pid: int) -> bool | None:
    """Whether a process of this host is alive; None when this OS cannot tell without harm."""
    if os.name == "nt":  # os.kill would terminate the process on Windows: rely on the run's state and leases
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _local_pid(owner: dict[str, Any]) -> int | None:
    """The owner's process id when it ran on this host in another process, else None."""
    pid = owner.get("pid")
    if owner.get("host") == socket.gethostname() and isinstance(pid, int) and pid != os.getpid():
        return pid
    return None


def _prefect_state(run_id: str) -> str | None:
    """The state type of the run's flow run on this Prefect server; None when this server does not know it (a
    run of another server) or did not answer."""
    try:
        flow_run_id = uuid.UUID(run_id)
    except ValueError:
        return None
    try:
        from prefect.client.orchestration import get_client

        with get_client(sync_client=True) as client:
            state = client.read_flow_run(flow_run_id).state
    except Exception:
        return None
    return state.type.value if state is not None else "UNKNOWN"


def known_dead_owner(owner: dict[str, Any], run_id: str) -> bool:
    """True when the run is certainly not running any more: its process on this host is gone, or this Prefect
    server says it has ended."""
    pid = _local_pid(owner)
    if pid is not None and _pid_alive(pid) is False:
        return True
    return _prefect_state(run_id) in ENDED


def known_dead(entry: JournalEntry) -> bool:
    """True when the entry's run is certainly not running any more."""
    return known_dead_owner(entry.owner, entry.run_id)


def alive_elsewhere(claim: RunClaim, now: datetime) -> bool:
    """True when the claim's run may be alive and this Prefect server's locks cannot tell: its lease is live, and
    it runs in a live process of this host, or on a Prefect server that is not this one. A run this server
    knows is judged by its lock (it holds it until its undo is done), one whose lease ran out is dead."""
    if not claim.live(now):
        return False
    pid = _local_pid(claim.owner)
    if pid is not None:
        alive = _pid_alive(pid)
        if alive is not None:
            return alive
    return _prefect_state(claim.run_id) is None


def refuse_live_claims(ssm: SSMClient, resources: list[str], prefix: str | None, run_id: str, case: str,
                       now: Callable[[], datetime] = utcnow) -> None:
    """Called by a run that holds its locks and has written its own claim: CouldNotRun naming another live run
    that holds any of ``resources`` and that this server's locks cannot see (it uses another Prefect server).
    Both runs write their claim before they look, so of two that start at once at least one sees the other."""
    for claim in read_claims(ssm, prefix):
        shared = claim.shares(resources) if claim.run_id != run_id else []
        if shared and alive_elsewhere(claim, now()):
            raise CouldNotRun(
                f"case '{case}' did not start: {claim.who()} is changing {', '.join(shared)} now (its lease in "
                f"the undo journal runs until {claim.until()}); it does not use this Prefect server, so the two "
                "runs cannot take turns: run again when it has ended; nothing was changed")


def release_dead_locks(ssm: SSMClient, resources: list[str], prefix: str | None, logger: Any) -> None:
    """Free at once the locks that runs known to be dead still hold on these resources (instead of waiting for
    their leases to expire); their unfinished undos stay in the journal for the run or ``recover`` to handle."""
    from flows.run import locks
    from flows.run.states import mark_crashed

    freed: set[str] = set()
    for resource in resources:
        for entry in read_entries(ssm, prefix, resource):
            if entry.lease_id and entry.lease_id not in freed and known_dead(entry):
                freed.add(entry.lease_id)
                if locks.release_lease(entry.lease_id):
                    logger.warning("Freed the locks that dead run %s still held", entry.run_id)
                    mark_crashed(entry.run_id, f"a later run on host {socket.gethostname()}", "its locks were freed; "
                                 "what it changed stays in the undo journal until that run's undo or `recover` "
                                 "puts it back", logger)


def redo(clients: ClientFactory, entry: JournalEntry) -> dict[str, Any]:
    """Redo one entry's undo and remove it from the journal; StepError when it cannot be done."""
    kind = entry.record.get("kind")
    handler = UNDO_KINDS.get(str(kind))
    if handler is None:
        raise StepError(f"unknown undo kind {kind!r} in journal entry {entry.name}", code=UNKNOWN_UNDO_KIND)
    outcome = handler(clients, entry.record)
    remove_entry(clients.client("ssm"), entry.name)
    return outcome


def _text(outcome: dict[str, Any]) -> str:
    return str(outcome.get("summary") or outcome.get("action") or "done")


def redo_entries(clients: ClientFactory, entries: list[JournalEntry], logger: Any, report: Recovered) -> None:
    """Redo entries (last written first), each even when an earlier one failed."""
    for entry in sorted(entries, key=lambda e: (e.written_at, e.name), reverse=True):
        try:
            outcome = redo(clients, entry)
            report.done.append({**entry.public(), "outcome": _text(outcome)})
            logger.info("Recovered %s (run %s): %s", entry.resource, entry.run_id, _text(outcome))
        except StepError as exc:
            report.failed.append({**entry.public(), "error": exc.message})
            logger.error("Could not recover %s (run %s): %s", entry.resource, entry.run_id, exc.message)


def recover(clients: ClientFactory, *, prefix: str | None, logger: Any, dry_run: bool = False,
            lock_wait: float = 2.0, now: Callable[[], datetime] = utcnow) -> tuple[list[JournalEntry], Recovered]:
    """Recover every unfinished undo of dead runs in the journal; returns the entries found and what was done."""
    from flows.run import locks
    from flows.run.states import mark_crashed

    ssm = clients.client("ssm")
    entries = read_entries(ssm, prefix)
    claims = {c.run_id: c for c in read_claims(ssm, prefix)}
    report = Recovered()
    live = {run_id for run_id, claim in claims.items() if alive_elsewhere(claim, now())}
    for entry in entries:
        if entry.run_id in live:
            claim = claims[entry.run_id]
            report.skipped.append({**entry.public(), "why": f"{claim.who()} is alive, lease until {claim.until()}"})
    by_resource: dict[str, list[JournalEntry]] = {}
    for entry in entries:
        if entry.run_id not in live:
            by_resource.setdefault(entry.resource, []).append(entry)
    for resource, group in sorted(by_resource.items()):
        if dry_run:
            report.skipped += [{**e.public(), "why": "dry run"} for e in group]
            continue
        for entry in group:
            if entry.lease_id and known_dead(entry):
                locks.release_lease(entry.lease_id)  # already gone when an earlier entry freed it: fine
        try:
            with locks.hold([resource], f"recover-{uuid.uuid4()}", timeout=lock_wait, logger=logger):
                redo_entries(clients, group, logger, report)
        except locks.LockError:
            why = ("a live run holds its lock (if that run is dead, its lock expires within "
                   f"{locks.lease_seconds():.0f} s: run recover again then)")
            report.skipped += [{**e.public(), "why": why} for e in group]
    if not dry_run:
        _forget_dead_claims(ssm, claims, entries, report, now(), logger)
        put_back: dict[str, list[str]] = {}
        for done in report.done:
            put_back.setdefault(str(done["run_id"]), []).append(str(done["resource"]))
        for run_id, resources in put_back.items():  # its flow run, left Running by the killed process, tells the truth
            mark_crashed(run_id, f"recover on host {socket.gethostname()} (pid {os.getpid()})",
                         f"{len(resources)} change(s) it left were put back: {', '.join(sorted(resources))}", logger)
    return entries, report


def _forget_dead_claims(ssm: SSMClient, claims: dict[str, RunClaim], entries: list[JournalEntry],
                        report: Recovered, now: datetime, logger: Any) -> None:
    """Remove the claims of dead runs: those whose every entry was just redone, and those without entries whose
    lease ran out long ago (a live run renews its claim, and would have stopped long before)."""
    left = {d["run_id"] for d in report.failed + report.skipped}
    had = {e.run_id for e in entries}
    for run_id, claim in claims.items():
        stale = run_id not in had and now > claim.lease_until + timedelta(seconds=journal_lease_seconds())
        if (run_id in had and run_id not in left) or stale:
            try:
                remove_entry(ssm, claim.name)
            except StepError as exc:
                logger.warning("Could not remove the claim of dead run %s: %s", run_id, exc.message)


# ------------------------------------------------------------------------------------------- flow and CLI
def _report_markdown(entries: list[JournalEntry], report: Recovered) -> str:
    from tasks.kit import markdown

    rows = [["restored", d["resource"], d["outcome"], d["run_id"], d["case"]] for d in report.done]
    rows += [["FAILED", d["resource"], d["error"], d["run_id"], d["case"]] for d in report.failed]
    rows += [["skipped", d["resource"], d["why"], d["run_id"], d["case"]] for d in report.skipped]
    head = (f"Found **{len(entries)}** unfinished undo(s) in the journal: {len(report.done)} restored, "
            f"{len(report.failed)} failed, {len(report.skipped)} skipped.")
    table = markdown.table(["result", "resource", "what happened", "run", "case"], rows)
    return head + ("\n\n" + table if rows else "")


def recover_flow_fn(region: str | None = None, profile: str | None = None, credentials_block: str | None = None,
                    journal_prefix: str | None = None, dry_run: bool = False) -> Any:
    """Recover every unfinished undo of dead runs (the ``pipeline-test-recover`` flow); evidence as an artifact.
    A journal that cannot be read (no credentials, AccessDenied) ends the flow run Failed with a CouldNotRun."""
    from prefect import get_run_logger
    from prefect.artifacts import create_markdown_artifact
    from prefect.states import Failed

    from tasks.kit.aws import AwsTarget

    logger = get_run_logger()
    clients = ClientFactory(AwsTarget(region=region, profile=profile, credentials_block=credentials_block))
    try:
        entries, report = recover(clients, prefix=journal_prefix, logger=logger, dry_run=dry_run)
    except StepError as exc:
        logger.error("%s", exc.message)
        return Failed(message=exc.message, data=CouldNotRun(exc.message))
    create_markdown_artifact(key="pipeline-test-recover", markdown=_report_markdown(entries, report),
                             description="Recovery of unfinished undos of dead runs")
    return {"found": len(entries), "done": report.done, "failed": report.failed, "skipped": report.skipped}


def credentials_problem(profile: str | None, credentials_block: str | None) -> str | None:
    """Why no AWS call can be made (no credentials, an unknown profile), found at once, before any Prefect server
    starts; None when there are credentials (a credentials block is checked when it is loaded)."""
    import boto3
    from botocore.exceptions import BotoCoreError

    if credentials_block:
        return None
    try:
        found = boto3.Session(profile_name=profile).get_credentials()
    except BotoCoreError as exc:
        return f"the undo journal cannot be read: {exc}"
    if found is None:
        return ("no AWS credentials found to read the undo journal (set a profile with AWS_PROFILE or --profile, "
                "name a prefect-aws AwsCredentials block with --credentials-block, or run in an environment that "
                "provides credentials); nothing was changed")
    return None


def main(argv: list[str], guarded: Callable[[Callable[[], int]], int] | None = None) -> int:
    """``python -m flows.pipeline_test recover ...``: exit 0 all recovered (or nothing to do), 1 some not, 3 the
    journal could not be read (no credentials, no access). ``guarded`` runs the command against a Prefect API
    (the CLI's own, with its exits); None: the one configured."""
    import argparse

    from prefect import flow

    parser = argparse.ArgumentParser(prog="python -m flows.pipeline_test recover",
                                     description="Put back what dead runs changed and never undid (from the "
                                     "undo journal in SSM).")
    parser.add_argument("--region", help="AWS region of the journal (default: AWS_REGION / the profile's)")
    parser.add_argument("--profile", help="AWS profile")
    parser.add_argument("--credentials-block", help="name of a prefect-aws AwsCredentials block")
    parser.add_argument("--journal-prefix", help="the journal's SSM path (default: PIPELINE_TEST_JOURNAL_PREFIX, "
                        "else /pipeline-test/journal)")
    parser.add_argument("--dry-run", action="store_true", help="only list the unfinished undos")
    args = parser.parse_args(argv)
    problem = credentials_problem(args.profile, args.credentials_block)
    if problem:
        print(f"Could not run: {problem}", file=sys.stderr)
        return 3

    def run() -> int:
        recover_flow = flow(name="pipeline-test-recover", log_prints=False,  # runs named by their time
                            flow_run_name=lambda: f"recover-{datetime.now(timezone.utc):%Y%m%d-%H%M%S}",
                            )(recover_flow_fn)
        state: Any = recover_flow(region=args.region, profile=args.profile, credentials_block=args.credentials_block,
                             journal_prefix=args.journal_prefix, dry_run=args.dry_run, return_state=True)
        out = state.result(raise_on_failure=False)
        if isinstance(out, CouldNotRun):
            print(f"Could not run: {out}", file=sys.stderr)
            return 3
        if not isinstance(out, dict):
            print(f"The recover flow run ended {state.type.value}: {state.message}", file=sys.stderr)
            return 1
        report = Recovered(out["done"], out["failed"], out["skipped"])
        print(f"Undo journal: {out['found']} unfinished undo(s); {len(report.done)} restored, "
              f"{len(report.failed)} failed, {len(report.skipped)} skipped")
        for line in report.lines():
            print(line)
        return 0 if report.ok or (args.dry_run and not report.failed) else 1

    return guarded(run) if guarded is not None else run()


def recover_command(region: str | None, profile: str | None, credentials_block: str | None,
                    journal_prefix: str | None) -> str:
    """The exact ``recover`` command that puts back what a run of this target left in its journal."""
    import shlex

    parts = ["python", "-m", "flows.pipeline_test", "recover"]
    for flag, value in (("--region", region), ("--profile", profile), ("--credentials-block", credentials_block),
                        ("--journal-prefix", journal_prefix)):
        if value:
            parts += [flag, value]
    return shlex.join(parts)
