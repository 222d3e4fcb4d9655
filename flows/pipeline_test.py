"""The pipeline-test flow, and its command line.

    python -m flows.pipeline_test SPEC.yaml [--var name=value ...]   run a case
    python -m flows.pipeline_test SPEC.yaml --evidence-dir DIR       put the evidence pack in DIR
    python -m flows.pipeline_test SPEC.yaml --validate               only validate
    python -m flows.pipeline_test SPEC.yaml --recover                first undo what dead runs left changed
    python -m flows.pipeline_test recover [--dry-run]                undo what dead runs left changed
    python -m flows.pipeline_test --schema                           print the spec's JSON Schema
    python -m flows.pipeline_test FOLDER-OR-SUITE.yaml [--tag T] [--max-parallel N] [--var k=v] [--evidence-dir D]
                                                                      run a suite (flows.suite)
    python -m flows.pipeline_test [SUITE.yaml] --rerun-failed SUITE-PACK  run what failed in that suite run again

Exit codes: 0 passed; 1 a check failed (or a step failed); 2 invalid spec (nothing touched AWS); 3 could not
run (Prefect API unreachable, locks not obtained, a live run of another Prefect server holds a resource, a dead
run's changes not yet recovered: nothing was changed); 130 interrupted (Ctrl+C, Ctrl+Break, SIGTERM: what the run
had changed was undone). A suite: 1 when a case failed, else 3 when one could not run. The Prefect API refusing a
call (e.g. 503 on creating the flow run) is 3, never 1.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import sys
import tempfile
import threading
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator

import httpx
from prefect import flow, get_run_logger
from prefect.artifacts import create_link_artifact, create_markdown_artifact
from prefect.runtime import flow_run
from prefect.states import Failed, State
from pydantic import SecretStr, ValidationError

from flows import audit, evidence, evidence_pack, history, locks, pack_folder, prefect_logs, run_states
from flows.api_client import client_retries
from flows.console import json_text, safe_output
from flows.engine import (
    LIVE,
    first_signal_stops,
    install_redaction,
    interrupt_on_stop_signals,
    interrupted,
    put_back_handlers,
    remove_redaction,
    render_case,
    run_cleanup,
    run_steps,
    stop_signals_interrupt,
    undo_hook,
    undo_now,
)
from flows.evidence_markdown import step_counts
from flows.local_server import ServerUnavailable, temporary_server
from flows.notify import NotifySettings
from flows.notify import notify as send_notice
from flows.pack_folder import PackClaim
from flows.preflight import step_zero
from flows.recover import CouldNotRun, Recovered, recover_command, redo_entries, refuse_live_claims, release_dead_locks
from flows.recover import main as recover_main
from flows.report_model import Audit, PackRef
from flows.results import CaseFailed, CaseResult, EvidenceFailed, StepResult
from flows.spec import CaseSpec, SpecError, describe, iter_steps, load_spec, parse_spec, read_spec_file, slug
from flows.template_secrets import SecretReader, TemplateSecretError, case_reads
from flows.templating import TemplateError, builtin_values, render, resolve_variables
from tasks.aws import ClientFactory
from tasks.base import Meter, StepContext, UndoLog
from tasks.console_links import s3_link
from tasks.errors import StepError
from tasks.journal import Heartbeat, SsmJournal, read_entries
from tasks.secrets import MIN_SECRET_CHARS, Secrets, redact, redact_json
from tasks.status import MEANING, short

if TYPE_CHECKING:
    from types_boto3_ssm import SSMClient

prefect_logs.install()  # a failed case is a failure in the logs, not a crash report


class SuiteShared:
    """What the cases of one suite share in this process: its stop (every case registers its run's stop event, so
    one Ctrl+C or SIGTERM stops every running case, and every case still waiting for its locks; each then undoes
    its changes), and AWS clients, one thread-safe ClientFactory per target (boto3 clients are thread-safe;
    sessions, made once per factory under its lock, are not shared across threads otherwise)."""

    def __init__(self) -> None:
        self._events: list[threading.Event] = []
        self._clients: dict[str, ClientFactory] = {}
        self._lock = threading.Lock()
        self.stopped = False

    def register(self, event: threading.Event) -> None:
        with self._lock:
            self._events.append(event)
            if self.stopped:
                event.set()

    def stop(self) -> None:
        with self._lock:
            self.stopped = True
            for event in self._events:
                event.set()

    def clients(self, target: Any) -> ClientFactory:
        with self._lock:
            return self._clients.setdefault(repr(target), ClientFactory(target))


#: what the suite a case runs in shares (set by flows.suite in each case's context; None for a case run alone)
SUITE: ContextVar[SuiteShared | None] = ContextVar("pipeline_test_suite", default=None)


def _run_name() -> str:
    """Flow run name: the case's slug and the start time, so runs of a case line up in the UI."""
    params = flow_run.parameters or {}
    spec = params.get("spec")
    name = "case"
    try:
        if params.get("case_name"):
            name = str(params["case_name"])
        elif isinstance(spec, CaseSpec):
            name = spec.case
        elif isinstance(spec, dict):
            name = str(spec.get("case", name))
        elif spec:
            raw = read_spec_file(Path(spec))
            name = str(raw.get("case", name)) if isinstance(raw, dict) else name
    except Exception:
        pass
    return f"{slug(name) or 'case'}-{datetime.now(timezone.utc):%Y%m%d-%H%M%S}"


def plain_variables(variables: dict[str, str | SecretStr] | None) -> dict[str, str] | None:
    """Variable overrides as plain strings (the CLI passes them as SecretStr, which Prefect stores hidden)."""
    if variables is None:
        return None
    return {k: v.get_secret_value() if isinstance(v, SecretStr) else v for k, v in variables.items()}


def short_secret_warnings(steps: Any) -> list[str]:
    """A warning per step handling a secret too short to be searched for in free texts (see tasks.secrets)."""
    return [f"{describe(p)}: a secret value is shorter than {MIN_SECRET_CHARS} characters: it is masked where it "
            "is known to be secret (the value itself), but not searched for in messages and log tails (it would "
            "mask ordinary words); use a longer value" for p in steps
            if any(len(s) < MIN_SECRET_CHARS for s in p.step.secrets() if s and "{{" not in s)]


def resolve_spec(spec: str | Path | CaseSpec | dict[str, Any], variables: dict[str, Any] | None,
                 base_dir: str | Path | None, files_root: str | Path | None = None) -> tuple[CaseSpec, Path]:
    """Accept a spec as a file path, a dict or a model; validate it in full; return it and its folder."""
    variables = plain_variables(variables)
    if isinstance(spec, (str, Path)):
        return load_spec(spec, variables, files_root)
    folder = Path(base_dir) if base_dir else Path.cwd()
    raw = spec.model_dump(mode="python", exclude_unset=True) if isinstance(spec, CaseSpec) else spec
    return parse_spec(raw, "<spec>", folder, variables, files_root), folder


def _ui_url() -> str | None:
    """This flow run's page in the Prefect UI, when a UI URL is configured (not with a temporary server)."""
    return history.flow_run_url(flow_run.id) if flow_run.id else None


@flow(name="pipeline-test", flow_run_name=_run_name, validate_parameters=False, log_prints=False,
      on_crashed=[undo_hook], on_cancellation=[undo_hook])
def pipeline_test(
    spec: str | CaseSpec,
    variables: dict[str, str | SecretStr] | None = None,
    base_dir: str | None = None,
    evidence_dir: str | None = None,
    write_evidence: bool = True,
    notify: dict[str, Any] | None = None,
    recover: bool = False,
    files_root: str | None = None,
    case_name: str | None = None,
    preflight: bool = True,
) -> CaseResult:
    """Run one ingestion test case (a spec file path, or a spec model) and leave its evidence.

    ``variables`` override the case's declared variables (values may be ``SecretStr``: Prefect stores those
    hidden, and the CLI passes every ``--var`` so); ``base_dir`` is where a spec given as a model finds
    its local files. The evidence pack goes to ``evidence_dir`` (default: ``evidence/<case>/<time>-<run id>/``
    under the working directory) unless ``write_evidence`` is false. ``notify`` overrides the case's Slack
    notice settings (e.g. per deployment). Local files the steps name must lie under the spec's folder or
    ``files_root``. ``recover`` first puts back what dead runs left changed on the resources this case changes
    (else the run refuses to start). ``case_name`` runs the case under another name (a suite's matrix row:
    ``<case> [<row id>]``, so its artifacts, history and pack are its own). ``preflight`` (and the case's
    ``aws.preflight``): first check that the caller may do what the case needs (flows.preflight; a denial: could
    not run). The flow run fails when the case fails; its result is a ``CaseResult`` either way.
    """
    logger = get_run_logger()
    case, spec_dir = resolve_spec(spec, variables, base_dir, files_root)
    if case_name:
        case = case.model_copy(update={"case": case_name})
    try:
        notice = NotifySettings.model_validate(notify) if notify is not None else case.notify
    except ValidationError as exc:
        raise SpecError("notify", [f"notify: field {'.'.join(map(str, e['loc'])) or '(top level)'!r}: {e['msg']}"
                                   for e in exc.errors(include_url=False)]) from None
    spec_path = Path(spec) if isinstance(spec, (str, Path)) else None
    started = datetime.now(timezone.utc)
    run_id = str(flow_run.id or "local")
    # the run's secret registry: the log filter, the runners, the net and the pack all share it
    secrets = Secrets()
    suite = SUITE.get()
    clients = suite.clients(case.aws.target()) if suite is not None else ClientFactory(case.aws.target())
    reader = SecretReader(lambda: clients, secrets)  # secret() and ssm() in templates: read once, before any step
    try:
        reader.read_all(case_reads(case, spec_dir))
        values = resolve_variables(case.variables, {**builtin_values(case.case, run_id, started, case.timezone),
                                                    **reader.functions()})
        rendered = render_case(case, values)
    except (TemplateSecretError, TemplateError) as exc:
        return _could_not_run(f"case '{case.case}' did not start: {reader.scrub(str(exc))}",  # type: ignore[return-value]
                              logger, case.case)
    secrets.add(*(s for p in iter_steps(rendered) for s in p.step.secrets()))
    redactor = install_redaction(secrets)
    for warning in [*short_secret_warnings(iter_steps(rendered)), *reader.warnings()]:
        logger.warning(warning)
    steps: list[StepResult] = []
    running: list[Any] = []
    scratch: Path | None = None
    pack_claim: PackClaim | None = None
    signals = interrupt_on_stop_signals(only_unhandled=True)  # SIGBREAK in a worker's run: every phase, as the CLI
    try:
        guard = [f"{describe(p)}: {m}" for p in iter_steps(rendered) for m in p.step.case_checks(case)]
        if guard:  # the guard rails again, with the run's real values
            raise SpecError("<spec>", guard)
        logger.info("Case %r: %d step(s), run date %s", case.case, len(case.steps), values["run_date"])
        publisher = evidence.StepPublisher()  # the steps' artifacts, off their critical path (closed below)
        scratch = Path(tempfile.mkdtemp(prefix="pipeline-test-"))  # files steps write for the pack; removed below
        ctx = StepContext(clients=clients, case_name=case.case, run_id=run_id, label="", spec_dir=spec_dir,
                          undo=UndoLog(), render=lambda text: render(text, values), logger=logger, secrets=secrets,
                          publisher=publisher, scratch_dir=scratch, scanned=Meter(case.aws.athena_max_scanned_bytes))
        if suite is not None:
            suite.register(ctx.stop)
        resources = sorted({r for p in iter_steps(rendered) for r in p.step.resources(spec_dir)})
        try:
            if preflight and case.aws.preflight:  # step 0: may the caller do what the case needs? (no change)
                step_zero(case, rendered, spec_dir, clients, logger)
            # the pack's folder is claimed before anything changes: not writable, full or taken is exit 3
            pack_claim = _claim_pack(evidence_dir, case, started, run_id, logger) if write_evidence else None
            with contextlib.ExitStack() as stack:
                # the locks first (none of this run's changes may start before), then the journal's leftovers
                lock = stack.enter_context(_locked(clients, resources, case, run_id, ctx, logger))
                if resources:
                    ssm = clients.client("ssm")
                    claim = stack.enter_context(_claimed(ssm, resources, case, run_id, ctx, logger))
                    _settle_leftovers(clients, ssm, resources, case, run_id, recover, logger)
                    ctx.undo.journal = SsmJournal(ssm, run_id=run_id, case=case.case,
                                                  prefix=case.aws.journal_prefix, lease_id=lambda: lock.lease_id,
                                                  lease_lost=lambda: claim.lost)
                    logger.info("Holding %d lock(s) until the undo is done: %s", len(resources),
                                ", ".join(resources))
                LIVE[run_id] = ctx
                try:
                    with first_signal_stops(ctx.stop, logger):
                        run_steps(rendered, ctx, steps, running)
                        cleanup = _way_out(run_cleanup(ctx), ctx, case, logger)
                        publisher.close()  # every step's artifacts exist before the case's own
                except BaseException as exc:
                    # cancelled (SIGTERM), interrupted or crashed: stop the waits of running steps, undo at once,
                    # leave the evidence of what was done, then let Prefect record the end
                    ctx.stop.set()
                    undone = _way_out(undo_now(ctx, logger), ctx, case, logger)
                    publisher.close(timeout=STOPPING_FLUSH_S)
                    stopped = StepResult(number="stop", label="run stopped", kind="stop", status="error",
                                         error=f"the run was stopped ({type(exc).__name__}) before the case ended",
                                         error_code=type(exc).__name__)
                    partial = _case_result(case, run_id, started, values,
                                           [*steps, *(interrupted(p) for p in running), stopped,
                                            *([undone] if undone else [])], secrets, lock, clients)
                    if pack_claim is not None:
                        _write_pack(partial, case, spec_path, pack_claim, secrets, ctx, logger, upload=False)
                    if notice is not None:
                        send_notice(partial, notice, ui_url=partial.ui_url)
                    raise
        except CouldNotRun as exc:
            return _could_not_run(str(exc), logger, case.case)  # type: ignore[return-value]
        LIVE.pop(run_id, None)
        if cleanup is not None:
            steps.append(cleanup)
        result = _case_result(case, run_id, started, values, steps, secrets, lock, clients)
        if notice is not None:  # first, so that the pack records whether it was sent; it names where the pack goes
            if pack_claim is not None:
                result.pack = _planned_pack(result, case, pack_claim.folder)
            # logs a Slack failure, never changes the result
            result.notice = send_notice(result, notice, ui_url=result.ui_url)
        if pack_claim is not None:
            _write_pack(result, case, spec_path, pack_claim, secrets, ctx, logger)
        evidence.publish_case(result, logger)
    finally:
        put_back_handlers(signals)
        remove_redaction(redactor)
        if pack_claim is not None:
            pack_claim.abandon()  # a pack never written leaves no temporary folder (nothing once it is in place)
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)
    if result.passed and result.evidence_error is None:
        logger.info("Case %r passed (%d steps)", case.case, len(steps))
        return result
    failure = CaseFailed(result) if not result.passed else EvidenceFailed(result)
    return Failed(message=str(failure), data=failure)  # type: ignore[return-value]


def _could_not_run(message: str, logger: Any, case: str) -> State:
    """The flow run's end when the case never started its steps (nothing was changed): Cancelled, named NotRun
    (see flows.run_states), with an artifact that says why and what to do; exit 3 in the CLI."""
    logger.error("%s", message)
    try:
        create_markdown_artifact(markdown=run_states.not_run_markdown(case, message),
                                 key=f"{evidence.case_key(case)}-not-run"[:100], description=f"NOT RUN · {case}")
    except Exception as exc:
        logger.warning("Could not publish why the case did not run: %s", exc)
    return run_states.not_run(message, CouldNotRun(message))


@contextlib.contextmanager
def _locked(clients: ClientFactory, resources: list[str], case: CaseSpec, run_id: str, ctx: StepContext,
            logger: Any) -> Iterator[locks.HeldLocks]:
    """Hold the locks of the case's resources (after freeing those that dead runs still hold); CouldNotRun when
    they cannot be had."""
    try:
        if resources:
            release_dead_locks(clients.client("ssm"), resources, case.aws.journal_prefix, logger)
        held = locks.hold(resources, run_id, timeout=case.lock_timeout, logger=logger, stop=ctx.stop)
        lock = held.__enter__()
    except locks.LockError as exc:
        raise CouldNotRun(f"case '{case.case}' did not start: {exc}") from None
    except StepError as exc:  # the journal could not be read (e.g. AccessDenied)
        raise CouldNotRun(f"case '{case.case}' did not start: {exc.message}") from None
    with contextlib.ExitStack() as stack:
        stack.push(held.__exit__)
        yield lock


@contextlib.contextmanager
def _claimed(ssm: SSMClient, resources: list[str], case: CaseSpec, run_id: str, ctx: StepContext,
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


def _way_out(cleanup: StepResult | None, ctx: StepContext, case: CaseSpec, logger: Any) -> StepResult | None:
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


def _settle_leftovers(clients: ClientFactory, ssm: SSMClient, resources: list[str], case: CaseSpec, run_id: str,
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


def _case_result(case: CaseSpec, run_id: str, started: datetime, values: dict[str, Any], steps: list[Any],
                 secrets: Secrets, held: locks.HeldLocks | None = None, clients: Any = None) -> CaseResult:
    ended = datetime.now(timezone.utc)
    context = (Audit.model_validate(redact_json(audit.collect(clients).to_json(), secrets)) if clients is not None
               else None)
    return CaseResult(
        case=case.case, description=case.description,
        status="passed" if all(s.ok for s in steps) else "failed",
        flow_run_id=run_id, ui_url=_ui_url(), started_at=started, ended_at=ended,
        duration_s=round((ended - started).total_seconds(), 3),
        variables=redact_json({"run_date": values["run_date"], **{k: values[k] for k in case.variables}}, secrets,
                              exact=True),
        steps=steps,
        locks=held.public() if held is not None and held.resources else None,
        audit=context,
    )


def _claim_pack(evidence_dir: str | None, case: CaseSpec, started: datetime, run_id: str, logger: Any
                ) -> PackClaim:
    """Claim the pack's folder (``evidence_dir``, else ``evidence/<case>/<time>-<run id>/``) before the run changes
    anything; CouldNotRun when it is not new, not writable (read-only, full) or another run is writing to it."""
    folder = Path(evidence_dir) if evidence_dir else evidence_pack.run_pack_dir(case.case, started, run_id)
    try:
        return pack_folder.claim(folder, evidence_pack.private_default(), logger)
    except pack_folder.PackFolderError as exc:
        raise CouldNotRun(f"case '{case.case}' did not start: {exc}; nothing was changed") from None


def _planned_pack(result: CaseResult, case: CaseSpec, folder: Path) -> PackRef:
    """Where the pack will be written (and uploaded), for a notice sent before it is written."""
    planned = PackRef(folder=str(folder.resolve()))
    if case.evidence is not None:
        planned.s3_uri = f"s3://{case.evidence.bucket}/{evidence_pack.pack_prefix(case.evidence.prefix, result)}"
    return planned


def _write_pack(result: CaseResult, case: CaseSpec, spec_path: Path | None, claim: PackClaim,
                secrets: Secrets, ctx: StepContext, logger: Any, upload: bool = True) -> None:
    """Write the evidence pack into its claimed folder (and upload it when the case asks); its folder goes in
    ``result.evidence_dir``. A failure is logged and goes in ``result.evidence_error`` (the CLI exits 4): nothing
    of a pack that could not be written is left."""
    folder = claim.folder
    try:
        evidence_pack.write_pack(result, case, folder, spec_path=spec_path, secrets=secrets, claim=claim)
        digest = evidence_pack.manifest_sha256(folder)
        result.evidence_dir = str(folder.resolve())
        result.pack = written = PackRef(folder=result.evidence_dir, manifest_sha256=digest)
        logger.info("Evidence pack: %s (manifest sha256 %s)", result.evidence_dir, digest)
        if upload and case.evidence is not None:
            settings = case.evidence
            prefix = evidence_pack.pack_prefix(settings.prefix, result)
            evidence_pack.upload_pack(ctx.clients.client("s3"), folder, settings.bucket, prefix, sse=settings.sse,
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
        result.evidence_error = redact(f"the evidence pack {folder} could not be {what}: {_why(exc)}", secrets)
        logger.error("%s", result.evidence_error)


def _why(exc: BaseException) -> str:
    """An OSError as its reason and file (``No space left on device: report.json``), anything else as its text."""
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror + (f": {Path(exc.filename).name}" if exc.filename else "")
    return str(exc)


# -------------------------------------------------------------------------------------------------- the CLI


def on_temporary_server() -> bool:
    """True when no Prefect server is configured, so a CLI run uses a temporary one of its own (gone at the end:
    links to it would lead nowhere). Ask before the run."""
    from prefect.settings import PREFECT_API_URL

    return not PREFECT_API_URL.value()


def temporary_server_hint() -> str:
    """Where a run on the temporary server can be seen afterwards (its records stay in PREFECT_HOME)."""
    from prefect.settings import get_current_settings

    settings = get_current_settings()
    ui = f"http://{settings.server.api.host}:{settings.server.api.port}"  # where `prefect server start` listens
    return (f"Evidence in the UI: this run used a temporary Prefect server; its records are kept in {settings.home}. "
            f"Run `prefect server start` and open {ui} to see the run and its artifacts "
            "(see docs/server-and-deployments.md).")


def format_result(result: CaseResult, with_link: bool = True) -> str:
    """A short summary, plain ASCII of its own; the steps' messages may hold ❌ or ≥, which a console that cannot
    show them gets as ``\u274c`` (see flows.console)."""
    lines = [f"Case '{result.case}' {result.status.upper()} in {result.duration_s:.1f} s"
             + ("" if result.passed else f" ({step_counts(result)})")]
    width = max((len(s.label) for s in result.steps), default=10)
    for s in result.steps:
        detail = s.error if s.error else s.summary
        lines.append(f"  {short(s.status):<5} {s.number:<5} {s.label:<{width}}  {s.duration_s:6.1f} s  {detail}")
    if any(s.status in MEANING for s in result.steps):
        lines.append("  " + "; ".join(f"{short(k)}: {v}" for k, v in MEANING.items()))
    if with_link and result.ui_url:
        lines.append(f"Evidence: {result.ui_url} (artifacts: {evidence.case_key(result.case)})")
    if result.evidence_dir:
        lines.append(f"Evidence pack: {result.evidence_dir}")
    if result.evidence_error:
        lines.append(f"NO EVIDENCE: {result.evidence_error}")
    return "\n".join(lines)


def case_exit_code(result: CaseResult) -> int:
    """1 when the case failed; else 4 when its evidence pack could not be written (or uploaded); else 0."""
    return EXIT_FAILED if not result.passed else EXIT_NO_EVIDENCE if result.evidence_error else EXIT_PASSED


def parse_vars(pairs: list[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name:
            raise SpecError("--var", [f"--var {pair!r}: expected name=value"])
        out[name.strip()] = value
    return out


def carried_result(state: Any, result_type: type, failure_type: type) -> Any:
    """The result a finished flow run's state carries: the value when passed, the failure's ``.result`` when
    failed; None when it carries neither (it never ran, crashed, ...)."""
    value = state.result(raise_on_failure=False)
    if isinstance(value, result_type):
        return value
    if isinstance(value, failure_type):
        return getattr(value, "result", None)
    return None


def result_of(state: Any) -> CaseResult | None:
    """The CaseResult carried by a finished flow run's state (passed or failed), if any."""
    return carried_result(state, CaseResult, CaseFailed)


#: how long a run that is being stopped waits for its steps' artifacts still being published
STOPPING_FLUSH_S = 10.0

#: exit codes of the CLI
EXIT_PASSED, EXIT_FAILED, EXIT_INVALID, EXIT_COULD_NOT_RUN, EXIT_INTERRUPTED = 0, 1, 2, 3, 130
#: the run ended (and undid its changes) but its evidence pack could not be written or uploaded: it proves nothing
EXIT_NO_EVIDENCE = 4


@contextmanager
def prefect_api() -> Iterator[str]:
    """The Prefect API to run against: ``PREFECT_API_URL`` when set (it must answer), else a temporary server of
    this process's own (see ``flows.local_server``). Raises CouldNotRun when there is none."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    url = PREFECT_API_URL.value()
    if url:
        try:
            response = httpx.get(f"{url.rstrip('/')}/health", timeout=10)
            response.raise_for_status()
        except httpx.HTTPError as exc:
            raise CouldNotRun(f"the Prefect API at {url} did not answer ({type(exc).__name__}: {exc}); start it "
                              "with `prefect server start`, or unset PREFECT_API_URL to use a temporary one") from None
        yield url
        return
    try:
        server = temporary_server()
        url = server.__enter__()
    except ServerUnavailable as exc:
        raise CouldNotRun(str(exc)) from None
    try:
        with temporary_settings({PREFECT_API_URL: url}):
            try:
                yield url
            finally:
                drain_prefect_workers()  # send the last logs and events while the server is still there
    finally:
        server.__exit__(None, None, None)


def drain_prefect_workers(timeout: float = 5) -> None:
    """Send this process's queued logs and events to the Prefect API now (at most ``timeout`` s each), while the
    server that should get them still runs: a server gone first leaves Prefect's workers retrying against it."""
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker

    for worker in (APILogWorker, EventsWorker):
        try:
            worker.drain_all(timeout=timeout)
        except Exception:
            pass


@contextlib.contextmanager
def _stop_signals_as_interrupts() -> Iterator[None]:
    """Every stop signal (``engine.STOP_SIGNALS``: SIGINT, SIGTERM, and SIGBREAK where it exists) ends the run like
    Ctrl+C in every phase (lock wait, ``--recover``, steps, undo, writing the pack): undo, evidence, exit 130. A
    process started in the background by a shell inherits SIGINT ignored: Ctrl+C must still work; and Ctrl+Break
    must not kill the process outright (Python's default for SIGBREAK on Windows). The handlers in place before
    are put back at the end (the CLI's ``main`` may be called in a longer process)."""
    with stop_signals_interrupt():  # a no-op in another thread than the main one
        yield


def check_evidence_dir(folder: Path | None, spec: str, default_parent: Path = evidence_pack.EVIDENCE_ROOT,
                       writable: bool = True) -> None:
    """Found before the run, not after it: --evidence-dir (``folder``) must be a new or empty folder (SpecError:
    exit 2); with ``writable``, the pack's folder (``folder``, else under ``default_parent``) must be writable
    (not read-only, not full) and no other run may be writing to it (CouldNotRun: exit 3)."""
    if folder is not None and folder.exists() and (not folder.is_dir() or any(folder.iterdir())):
        what = "is not a folder" if not folder.is_dir() else "is not empty"
        raise SpecError(spec, [f"--evidence-dir {folder} {what}; give a new or empty folder"])
    if not writable:
        return
    try:
        if folder is not None:
            pack_folder.check_new(folder)
        pack_folder.probe_writable(folder if folder is not None else default_parent)
    except pack_folder.PackFolderError as exc:
        raise CouldNotRun(f"{exc}; nothing was changed (use --no-evidence to run without a pack)") from None


def main(argv: list[str] | None = None) -> int:
    safe_output()  # no UnicodeEncodeError on a cp1252 console or pipe (flows.console)
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["recover"]:
        return recover_main(argv[1:], guarded)
    parser = argparse.ArgumentParser(prog="python -m flows.pipeline_test", description=__doc__.split("\n\n")[0])
    parser.add_argument("spec", nargs="?", help="the test case: a YAML or JSON spec file; or a suite: a folder "
                        "of cases, or a suite file (see docs/running.md, Suites)")
    parser.add_argument("--var", action="append", default=[], metavar="NAME=VALUE",
                        help="override a variable declared in the case (repeatable)")
    parser.add_argument("--validate", action="store_true", help="validate the spec and exit")
    parser.add_argument("--schema", action="store_true", help="print the spec's JSON Schema and exit")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    parser.add_argument("--evidence-dir", metavar="DIR", help="write the evidence pack to this (new or empty) "
                        "folder; default: evidence/<case>/<time>-<run id>/")
    parser.add_argument("--no-evidence", action="store_true", help="do not write an evidence pack")
    parser.add_argument("--recover", action="store_true", help="first put back what dead runs left changed on "
                        "this case's resources (else the run refuses to start when there is any)")
    parser.add_argument("--files-root", metavar="DIR", help="local files named by steps may also lie under DIR "
                        "(default: only under the spec's folder); a suite: for every case, instead of the suite "
                        "file's files_root")
    parser.add_argument("--tag", action="append", default=[], metavar="TAG",
                        help="a suite: run only the cases with this tag (repeatable: any of them)")
    parser.add_argument("--max-parallel", type=int, metavar="N", help="a suite: at most N cases at once")
    parser.add_argument("--plan", action="store_true", help="print what the case (or suite) will change, read, "
                        "undo and lock, without running it: no AWS call, no credentials (see docs/aws.md)")
    parser.add_argument("--iam-policy", action="store_true", help="print the least-privilege IAM policy the case "
                        "(or suite) needs, as JSON, without running it (see docs/aws.md)")
    parser.add_argument("--account", metavar="ID", help="--iam-policy: the AWS account of the ARNs (default: the "
                        "case's aws.account_id, else '*' with a warning)")
    parser.add_argument("--region", metavar="REGION", help="--iam-policy: the region of the ARNs (default: the "
                        "case's aws.region, else '*' with a warning)")
    parser.add_argument("--kms-key-arn", metavar="ARN", help="--iam-policy: the KMS key of the SecureStrings "
                        "(default: any key, used only through SSM)")
    parser.add_argument("--only", action="append", default=[], metavar="NAME",
                        help="a suite: run only the case of this name (a matrix row: 'case [row id]'; a glob "
                        "such as 'Orders*' matches names; repeatable)")
    parser.add_argument("--rerun-failed", metavar="PACK", help="a suite: run only the cases (and matrix rows) that "
                        "failed or could not run in this suite evidence pack, as a new run linked to it (the suite "
                        "file: the one the pack names, unless given)")
    parser.add_argument("--preflight", action="store_true", help="only check that the caller may do what the case "
                        "needs (iam:SimulatePrincipalPolicy, else read-only probes), print it and exit: 0 allowed, "
                        "3 not; no change, no Prefect server (see docs/aws.md)")
    parser.add_argument("--no-preflight", action="store_true", help="run without that check before the first change")
    args = parser.parse_args(argv)
    if args.schema:
        from flows.spec import json_schema

        try:
            print(json.dumps(json_schema(), indent=2), flush=True)
        except BrokenPipeError:  # `--schema | head`: the reader has what it wanted; say nothing more
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_PASSED
    if not args.spec and not args.rerun_failed:
        parser.error("a spec file is required")
    if args.plan or args.iam_policy:
        return _plan_cli(args)
    from flows.suite_spec import is_suite_file

    if args.rerun_failed or is_suite_file(Path(args.spec)):
        from flows.suite import run_suite_cli

        if args.preflight or args.no_preflight:  # a suite's cases follow their own aws.preflight
            print(f"--preflight and --no-preflight are for a case, not the suite {args.spec} (each case's "
                  "aws.preflight decides; check a case alone with --preflight)", file=sys.stderr)
            return EXIT_INVALID

        try:
            overrides = parse_vars(args.var)
        except SpecError as exc:
            print(str(exc), file=sys.stderr)
            return EXIT_INVALID
        return run_suite_cli(args, overrides)
    if args.tag or args.only or args.max_parallel is not None:
        print(f"--tag, --only and --max-parallel are for a suite (a folder or a suite file), not the case {args.spec}",
              file=sys.stderr)
        return EXIT_INVALID
    try:
        overrides = parse_vars(args.var)
        case, spec_dir = load_spec(args.spec, overrides, args.files_root)
        if not args.no_evidence:
            check_evidence_dir(Path(args.evidence_dir) if args.evidence_dir else None, args.spec,
                               evidence_pack.pack_parent(case.case), writable=not args.validate)
    except SpecError as exc:
        return invalid(exc)
    except CouldNotRun as exc:
        print(f"Could not run: {exc}", file=sys.stderr)
        return EXIT_COULD_NOT_RUN
    if args.validate:
        for warning in short_secret_warnings(iter_steps(case)):
            print(f"Warning: {warning}", file=sys.stderr)
        print(f"Spec {args.spec} is valid: case '{case.case}', {len(case.steps)} step(s).")
        return EXIT_PASSED
    if args.preflight:
        from flows.preflight import cli as preflight_cli

        return preflight_cli(case, spec_dir)

    temporary = on_temporary_server()  # links to a temporary server are dead once the run ends

    def run() -> int:
        # --var values may be secrets (a SecureString's value): Prefect stores SecretStr parameters hidden
        hidden = {k: SecretStr(v) for k, v in overrides.items()}
        state = pipeline_test(spec=str(args.spec), variables=hidden or None, evidence_dir=args.evidence_dir,
                              write_evidence=not args.no_evidence, recover=args.recover,
                              files_root=args.files_root, preflight=not args.no_preflight, return_state=True)
        result = result_of(state)
        if result is None:
            value = state.result(raise_on_failure=False)
            if isinstance(value, CouldNotRun):
                print(f"Could not run: {value}", file=sys.stderr)
                return EXIT_COULD_NOT_RUN
            if state.type.value in ("CANCELLED", "CRASHED"):
                print(f"The flow run ended {state.type.value}: {state.message}", file=sys.stderr)
                return EXIT_INTERRUPTED
            print(f"The flow run ended {state.type.value}: {state.message}", file=sys.stderr)
            return EXIT_FAILED
        print(json_text(result) if args.json else format_result(result, with_link=not temporary))
        if temporary and not args.json:
            print(temporary_server_hint())
        if result.evidence_error and args.json:
            print(f"NO EVIDENCE: {result.evidence_error}", file=sys.stderr)
        return case_exit_code(result)

    return guarded(run)


def _plan_cli(args: argparse.Namespace) -> int:
    """--plan and --iam-policy (flows.plan_cli): no AWS call, no Prefect server."""
    from flows.plan_cli import plan_cli

    try:
        overrides = parse_vars(args.var)
    except SpecError as exc:
        return invalid(exc)
    return plan_cli(args, overrides)


def invalid(exc: SpecError, what: str = "no AWS call was made") -> int:
    """Exit 2: the problems (file, step, field) and that nothing ran."""
    print(str(exc), file=sys.stderr)
    print(f"Nothing was run: {what}.", file=sys.stderr)
    return EXIT_INVALID


def _api_error(exc: httpx.HTTPError) -> str:
    if isinstance(exc, httpx.HTTPStatusError):
        return f"{exc.response.status_code} {exc.response.reason_phrase} on {exc.request.method} {exc.request.url.path}"
    return f"{type(exc).__name__}: {exc}"


def guarded(run: Callable[[], int]) -> int:
    """Run a command against the Prefect API with the exits users are promised: 3 when it cannot run, 130 when
    interrupted (Ctrl+C, SIGTERM), one clear line and no traceback either way."""
    try:
        with _stop_signals_as_interrupts(), client_retries(), prefect_api():
            return run()
    except CouldNotRun as exc:
        print(f"Could not run: {exc}", file=sys.stderr)
        return EXIT_COULD_NOT_RUN
    except (httpx.HTTPStatusError, httpx.TransportError) as exc:
        # the Prefect API refused or dropped a call its client had already retried (e.g. 503 on creating the
        # flow run): nothing ran, or the run could not be recorded; a run that never happened is not a failed case
        print(f"Could not run: the Prefect API did not accept the run ({_api_error(exc)}); try again, or see "
              "docs/running.md (Exit codes)", file=sys.stderr)
        return EXIT_COULD_NOT_RUN
    except KeyboardInterrupt:
        print("Interrupted: the run was stopped; what it had changed was undone (see the log above) and its "
              "evidence pack is partial.", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
