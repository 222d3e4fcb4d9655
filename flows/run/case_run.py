"""What a case run does around its steps: its locks and its claim in the undo journal, the leftovers of dead runs,
the way out when the clean-up could not undo everything, the case's result, its evidence pack's folder and writing.
(The case flow itself is flows/pipeline_test.py.)"""


from __future__ import annotations

import contextlib
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

from prefect.artifacts import create_link_artifact, create_markdown_artifact
from prefect.states import State

from flows.evidence import audit, history
from flows.evidence import ui as evidence
from flows.evidence.pack import files as pack_files
from flows.evidence.pack import folder as pack_folder
from flows.evidence.pack import verify as pack_verify
from flows.evidence.pack import write as pack_write
from flows.evidence.pack.folder import PackClaim
from flows.evidence.report import Audit, PackRef
from flows.evidence.results import CaseResult, StepResult
from flows.run import locks
from flows.run import states as run_states
from flows.run.recover import (
    CouldNotRun,
    Recovered,
    recover_command,
    redo_entries,
    refuse_live_claims,
    release_dead_locks,
)
from flows.spec.model import CaseSpec, iter_steps
from tasks.kit import baseline
from tasks.kit.aws import ClientFactory
from tasks.kit.console_links import s3_link
from tasks.kit.errors import StepError
from tasks.kit.journal import Heartbeat, read_entries
from tasks.kit.secrets import Secrets, redact, redact_json
from tasks.kit.step import StepContext

if TYPE_CHECKING:
    from types_boto3_ssm import SSMClient


def could_not_run(message: str, logger: Any, case: str) -> State:
    """The flow run's end when the case never started its steps (nothing was changed): Cancelled, named NotRun
    (see flows.run.states), with an artifact that says why and what to do; exit 3 in the CLI."""
    logger.error("%s", message)
    try:
        create_markdown_artifact(markdown=run_states.not_run_markdown(case, message),
                                 key=f"{evidence.case_key(case)}-not-run"[:100], description=f"NOT RUN · {case}")
    except Exception as exc:
        logger.warning("Could not publish why the case did not run: %s", exc)
    return run_states.not_run(message, CouldNotRun(message))


def run_own(resource: str, run_id: str) -> bool:
    """A resource named after this run (an S3 prefix with its flow run id in it, ``{{ flow_run_id }}``): no other
    run can name it, so it takes no lock (five requests to the server less per case, four of them writes); it is
    still claimed in the undo journal."""
    return len(run_id) >= 32 and run_id in resource


@contextlib.contextmanager
def locked(clients: ClientFactory, resources: list[str], case: CaseSpec, run_id: str, ctx: StepContext,
            logger: Any) -> Iterator[locks.HeldLocks]:
    """Hold the locks of the case's resources (after freeing those that dead runs still hold), except the run's own
    (:func:`run_own`); CouldNotRun when they cannot be had."""
    try:
        if resources:
            release_dead_locks(clients.client("ssm"), resources, case.aws.journal_prefix, logger)
        shared = [r for r in resources if not run_own(r, run_id)]
        held = locks.hold(shared, run_id, timeout=case.lock_timeout, logger=logger, stop=ctx.stop)
        lock = held.__enter__()
    except locks.LockError as exc:
        raise CouldNotRun(f"case '{case.case}' did not start: {exc}") from None
    except StepError as exc:  # the journal could not be read (e.g. AccessDenied)
        raise CouldNotRun(f"case '{case.case}' did not start: {exc.message}") from None
    with contextlib.ExitStack() as stack:
        stack.push(held.__exit__)
        yield lock


@contextlib.contextmanager
def claimed(ssm: SSMClient, resources: list[str], case: CaseSpec, run_id: str, ctx: StepContext,
             logger: Any) -> Iterator[Heartbeat]:
    """The run's claim on its resources in the undo journal, its lease renewed while the run is alive (so any
    ``recover`` can tell it is alive, whatever its Prefect server); CouldNotRun when it cannot be written, or when
    a live run that this server's locks cannot see (another server) claims any of the same resources. A run whose
    lease cannot be renewed in time is stopped (``ctx.stop``), and its journal refuses any further change."""
    heartbeat = Heartbeat(ssm, run_id=run_id, case=case.case, resources=resources, logger=logger,
                          prefix=case.aws.journal_prefix, on_lost=ctx.stop.set)
    try:
        heartbeat.__enter__()
    except StepError as exc:
        raise CouldNotRun(f"case '{case.case}' did not start: {exc.message}") from None
    with contextlib.ExitStack() as stack:
        stack.push(heartbeat.__exit__)
        try:
            refuse_live_claims(ssm, resources, case.aws.journal_prefix, run_id, case.case)
        except StepError as exc:
            raise CouldNotRun(f"case '{case.case}' did not start: {exc.message}") from None
        yield heartbeat


def way_out(cleanup: StepResult | None, ctx: StepContext, case: CaseSpec, logger: Any) -> StepResult | None:
    """When the clean-up could not put everything back, say what is left and the exact ``recover`` command (the
    journal still holds those undos)."""
    left = [a for a in ctx.undo.pending() if a.journal_id]
    if cleanup is None or not left:
        return cleanup
    try:
        region = ctx.clients.region  # what the run used (the spec's, the block's or the chain's)
    except Exception:
        region = case.aws.region
    command = recover_command(region, case.aws.profile, case.aws.credentials_block, case.aws.journal_prefix)
    text = (f"left undone, kept in the undo journal: {', '.join(sorted({a.resource for a in left}))}; put them "
            f"back, once AWS answers again, with `{command}`")
    logger.error("The clean-up could not undo everything: %s", text)
    cleanup.error = f"{cleanup.error}; {text}" if cleanup.error else text
    return cleanup


def settle_leftovers(clients: ClientFactory, ssm: SSMClient, resources: list[str], case: CaseSpec, run_id: str,
                      recover: bool, logger: Any) -> None:
    """Unfinished undos of dead runs on this case's resources: recover them (``recover``) or refuse to start.

    Called with the resources' locks held, so any entry of another run belongs to a dead run (a live run holds
    the lock until its undo is done). Never takes the leftovers as the case's baseline."""
    try:
        leftovers = [e for r in resources for e in read_entries(ssm, case.aws.journal_prefix, r)
                     if e.run_id != run_id]
    except StepError as exc:  # the journal could not be read (e.g. AccessDenied)
        raise CouldNotRun(f"case '{case.case}' did not start: {exc.message}") from None
    if not leftovers:
        return
    listing = "; ".join(f"{e.resource} (run {e.run_id}, case '{e.case}', since {e.written_at})" for e in leftovers)
    if not recover:
        raise CouldNotRun(
            f"case '{case.case}' did not start: a run that died left changes that were never undone: {listing}. "
            "Put them back first with `python -m flows.pipeline_test recover` (or run with --recover); nothing "
            "was changed")
    logger.warning("Recovering what dead runs left changed before starting: %s", listing)
    report = Recovered()
    redo_entries(clients, leftovers, logger, report)
    if report.failed:
        raise CouldNotRun(f"case '{case.case}' did not start: recovering the leftovers of dead runs failed: "
                          + "; ".join(f"{d['resource']}: {d['error']}" for d in report.failed))


def case_result(case: CaseSpec, run_id: str, started: datetime, values: dict[str, Any], steps: list[Any],
                 secrets: Secrets, held: locks.HeldLocks | None = None, clients: Any = None) -> CaseResult:
    ended = datetime.now(timezone.utc)
    context = (Audit.model_validate(redact_json(audit.collect(clients).to_json(), secrets)) if clients is not None
               else None)
    return CaseResult(
        case=case.case, description=case.description,
        status="passed" if all(s.ok for s in steps) else "failed",
        flow_run_id=run_id, ui_url=history.this_run_url(), started_at=started, ended_at=ended,
        duration_s=round((ended - started).total_seconds(), 3),
        variables=redact_json({"run_date": values["run_date"], **{k: values[k] for k in case.variables}}, secrets,
                              exact=True),
        steps=steps,
        locks=held.public() if held is not None and held.resources else None,
        audit=context,
    )


def case_history(rendered: CaseSpec, case: CaseSpec, started: datetime, run_id: str, claim: PackClaim | None,
                 clients: ClientFactory, logger: Any) -> baseline.History | None:
    """The case's last passing runs from its evidence packs (tasks.kit.baseline): where this run's pack goes, the
    default ``evidence/<case>/``, and the S3 prefix ``evidence:`` uploads them to; None when no step compares
    with a baseline."""
    runs = max((b.runs for p in iter_steps(rendered) for b in baseline.baselines_in(p.step)), default=0)
    if not runs:
        return None
    own = claim.folder if claim is not None else None
    default = pack_files.pack_parent(case.case)
    folders = list(dict.fromkeys([*([own.parent] if own is not None else []), default]))
    s3 = None
    if case.evidence is not None:
        prefix = "/".join(p for p in (case.evidence.prefix.strip("/"), default.name) if p) + "/"
        s3 = baseline.S3Packs(clients.client("s3"), case.evidence.bucket, prefix)
    history = baseline.read_history(folders, case.case, runs, own, s3)
    logger.info("Baselines: %d passing run(s) found in %d evidence pack(s) read under %s (up to %d wanted)",
                len(history.runs), history.read, ", ".join(history.searched), runs)
    for problem in history.problems:
        logger.warning("Baselines: %s", problem)
    return history


def claim_pack(evidence_dir: str | None, case: CaseSpec, started: datetime, run_id: str, logger: Any
                ) -> PackClaim:
    """Claim the pack's folder (``evidence_dir``, else ``evidence/<case>/<time>-<run id>/``) before the run changes
    anything; CouldNotRun when it is not new, not writable (read-only, full) or another run is writing to it."""
    folder = Path(evidence_dir) if evidence_dir else pack_files.run_pack_dir(case.case, started, run_id)
    try:
        return pack_folder.claim(folder, pack_write.private_default(), logger)
    except pack_folder.PackFolderError as exc:
        raise CouldNotRun(f"case '{case.case}' did not start: {exc}; nothing was changed") from None


def planned_pack(result: CaseResult, case: CaseSpec, folder: Path) -> PackRef:
    """Where the pack will be written (and uploaded), for a notice sent before it is written."""
    planned = PackRef(folder=str(folder.resolve()))
    if case.evidence is not None:
        planned.s3_uri = f"s3://{case.evidence.bucket}/{pack_files.pack_prefix(case.evidence.prefix, result)}"
    return planned


def write_case_pack(result: CaseResult, case: CaseSpec, spec_path: Path | None, claim: PackClaim,
                secrets: Secrets, ctx: StepContext, logger: Any, upload: bool = True) -> None:
    """Write the evidence pack into its claimed folder (and upload it when the case asks); its folder goes in
    ``result.evidence_dir``. A failure is logged and goes in ``result.evidence_error`` (the CLI exits 4): nothing
    of a pack that could not be written is left."""
    folder = claim.folder
    try:
        pack_write.write_pack(result, case, folder, spec_path=spec_path, secrets=secrets, claim=claim)
        digest = pack_files.manifest_sha256(folder)
        result.evidence_dir = str(folder.resolve())
        result.pack = written = PackRef(folder=result.evidence_dir, manifest_sha256=digest)
        logger.info("Evidence pack: %s (manifest sha256 %s)", result.evidence_dir, digest)
        if upload and case.evidence is not None:
            settings = case.evidence
            prefix = pack_files.pack_prefix(settings.prefix, result)
            pack_verify.upload_pack(ctx.clients.client("s3"), folder, settings.bucket, prefix, sse=settings.sse,
                                      kms_key_id=settings.kms_key_id)
            url = s3_link(ctx.clients.endpoint_url("s3"), ctx.clients.region, settings.bucket, prefix, folder=True).url
            written.s3_uri, written.url = f"s3://{settings.bucket}/{prefix}", url
            create_link_artifact(link=url, link_text=f"s3://{settings.bucket}/{prefix}",
                                 key=f"{evidence.case_key(result.case)}-evidence"[:100],
                                 description=f"Evidence pack (manifest sha256 {digest})")
            logger.info("Evidence pack uploaded to s3://%s/%s", settings.bucket, prefix)
    except Exception as exc:
        what = "uploaded" if result.evidence_dir else "written"
        if not result.evidence_dir:
            result.pack = None  # not where the notice said it would be
        result.evidence_error = redact(f"the evidence pack {folder} could not be {what}: {why(exc)}", secrets)
        logger.error("%s", result.evidence_error)


def why(exc: BaseException) -> str:
    """An OSError as its reason and file (``No space left on device: report.json``), anything else as its text."""
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror + (f": {Path(exc.filename).name}" if exc.filename else "")
    return str(exc)
