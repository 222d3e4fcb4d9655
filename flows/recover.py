"""Recovery: put back what dead runs changed and never undid, from the durable undo journal (``tasks.journal``).

    python -m flows.pipeline_test recover [--region R] [--profile P | --credentials-block B] [--dry-run]

A journal entry exists from just before a change until its undo is done. A live run holds the resource's lock
(``flows.locks``) all that time, so an entry whose lock can be taken belongs to a dead run. Before trying the
lock, ``recover`` frees the lease of a run it *knows* is dead: on this host and its process is gone, or its
Prefect flow run has ended (Crashed, Cancelled, Failed, Completed). Otherwise a dead run's lease expires by
itself within ``PIPELINE_TEST_LOCK_LEASE_SECONDS`` (60 s) and a later ``recover`` finishes the job; an entry
whose lock a live run holds is left alone and reported.

Each entry is redone by the undo kind that wrote it (``tasks.base.UNDO_KINDS``: restore an SSM parameter and
read it back, delete an uploaded test object), last change first, and removed from the journal once done.
A new run that would change a resource with an unfinished undo refuses to start (exit 3) and names this
command, or, with ``--recover``, recovers it first: it never takes the leftovers as its baseline.
"""

from __future__ import annotations

import os
import socket
import uuid
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from tasks.aws import ClientFactory
from tasks.base import UNDO_KINDS
from tasks.errors import UNKNOWN_UNDO_KIND, StepError
from tasks.journal import JournalEntry, read_entries, remove_entry

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


def _pid_alive(pid: int) -> bool:
    if os.name == "nt":  # os.kill would terminate the process on Windows: rely on the run's state and lease
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _run_ended(run_id: str) -> bool:
    """True when Prefect says the run has ended (it will undo nothing more itself)."""
    try:
        flow_run_id = uuid.UUID(run_id)
    except ValueError:
        return False
    try:
        from prefect.client.orchestration import get_client

        with get_client(sync_client=True) as client:
            state = client.read_flow_run(flow_run_id).state
    except Exception:
        return False
    return state is not None and state.type.value in ENDED


def known_dead(entry: JournalEntry) -> bool:
    """True when the entry's run is certainly not running any more."""
    owner = entry.owner
    if owner.get("host") == socket.gethostname() and isinstance(owner.get("pid"), int) \
            and owner["pid"] != os.getpid() and not _pid_alive(owner["pid"]):
        return True
    return _run_ended(entry.run_id)


def release_dead_locks(ssm: SSMClient, resources: list[str], prefix: str | None, logger: Any) -> None:
    """Free at once the locks that runs known to be dead still hold on these resources (instead of waiting for
    their leases to expire); their unfinished undos stay in the journal for the run or ``recover`` to handle."""
    from flows import locks

    freed: set[str] = set()
    for resource in resources:
        for entry in read_entries(ssm, prefix, resource):
            if entry.lease_id and entry.lease_id not in freed and known_dead(entry):
                freed.add(entry.lease_id)
                if locks.release_lease(entry.lease_id):
                    logger.warning("Freed the locks that dead run %s still held", entry.run_id)


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
            lock_wait: float = 2.0) -> tuple[list[JournalEntry], Recovered]:
    """Recover every unfinished undo of dead runs in the journal; returns the entries found and what was done."""
    from flows import locks

    entries = read_entries(clients.client("ssm"), prefix)
    report = Recovered()
    by_resource: dict[str, list[JournalEntry]] = {}
    for entry in entries:
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
    return entries, report


# ------------------------------------------------------------------------------------------- flow and CLI
def _report_markdown(entries: list[JournalEntry], report: Recovered) -> str:
    from tasks import markdown

    rows = [["restored", d["resource"], d["outcome"], d["run_id"], d["case"]] for d in report.done]
    rows += [["FAILED", d["resource"], d["error"], d["run_id"], d["case"]] for d in report.failed]
    rows += [["skipped", d["resource"], d["why"], d["run_id"], d["case"]] for d in report.skipped]
    head = (f"Found **{len(entries)}** unfinished undo(s) in the journal: {len(report.done)} restored, "
            f"{len(report.failed)} failed, {len(report.skipped)} skipped.")
    table = markdown.table(["result", "resource", "what happened", "run", "case"], rows)
    return head + ("\n\n" + table if rows else "")


def recover_flow_fn(region: str | None = None, profile: str | None = None, credentials_block: str | None = None,
                    journal_prefix: str | None = None, dry_run: bool = False) -> dict[str, Any]:
    """Recover every unfinished undo of dead runs (the ``pipeline-test-recover`` flow); evidence as an artifact."""
    from prefect import get_run_logger
    from prefect.artifacts import create_markdown_artifact

    from tasks.aws import AwsTarget

    logger = get_run_logger()
    clients = ClientFactory(AwsTarget(region=region, profile=profile, credentials_block=credentials_block))
    entries, report = recover(clients, prefix=journal_prefix, logger=logger, dry_run=dry_run)
    create_markdown_artifact(key="pipeline-test-recover", markdown=_report_markdown(entries, report),
                             description="Recovery of unfinished undos of dead runs")
    return {"found": len(entries), "done": report.done, "failed": report.failed, "skipped": report.skipped}


def main(argv: list[str]) -> int:
    """``python -m flows.pipeline_test recover ...``: exit 0 all recovered (or nothing to do), 1 some not."""
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
    recover_flow = flow(name="pipeline-test-recover", log_prints=False)(recover_flow_fn)
    out = recover_flow(region=args.region, profile=args.profile, credentials_block=args.credentials_block,
                       journal_prefix=args.journal_prefix, dry_run=args.dry_run)
    report = Recovered(out["done"], out["failed"], out["skipped"])
    print(f"Undo journal: {out['found']} unfinished undo(s); {len(report.done)} restored, {len(report.failed)} "
          f"failed, {len(report.skipped)} skipped")
    for line in report.lines():
        print(line)
    return 0 if report.ok or (args.dry_run and not report.failed) else 1
