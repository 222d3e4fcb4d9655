"""The pipeline-test flow: one test case, each step a task run, its evidence in the Prefect UI and its pack.

Its command line is flows/cli.py (`pipeline-test`, or `python -m flows.pipeline_test`, which still works).
"""


from __future__ import annotations

import contextlib
import shutil
import sys
import tempfile
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger
from prefect.runtime import flow_run
from prefect.states import Failed
from pydantic import SecretStr, ValidationError

from flows.evidence import ui as evidence
from flows.evidence.notify import NotifySettings
from flows.evidence.notify import notify as send_notice
from flows.evidence.pack.folder import PackClaim
from flows.evidence.results import CaseFailed, CaseResult, EvidenceFailed, StepResult
from flows.run import prefect_logs
from flows.run.case_run import (
    case_history,
    case_result,
    claim_pack,
    claimed,
    could_not_run,
    locked,
    planned_pack,
    settle_leftovers,
    way_out,
    write_case_pack,
)
from flows.run.engine import (
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
    undo_hook,
    undo_now,
)
from flows.run.preflight import step_zero
from flows.run.recover import CouldNotRun
from flows.run.shared import SUITE
from flows.spec.load import SpecError, case_reads, load_spec, parse_spec, read_spec_file
from flows.spec.model import CaseSpec, describe, iter_steps
from flows.spec.slugs import slug
from flows.spec.template_secrets import SecretReader, TemplateSecretError
from flows.spec.templating import TemplateError, builtin_values, render, resolve_variables
from tasks.kit.aws import ClientFactory
from tasks.kit.journal import SsmJournal
from tasks.kit.secrets import MIN_SECRET_CHARS, Secrets
from tasks.kit.step import Meter, StepContext, UndoLog

#: how long a run that is being stopped waits for its steps' artifacts still being published
STOPPING_FLUSH_S = 10.0



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
    """A warning per step handling a secret too short to be searched for in free texts (see tasks.kit.secrets)."""
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
    ``aws.preflight``): first check that the caller may do what the case needs (flows.run.preflight; a denial: could
    not run). The flow run fails when the case fails; its result is a ``CaseResult`` either way.
    """
    prefect_logs.install()  # a failed case is a failure in the logs, not a crash report
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
        return could_not_run(f"case '{case.case}' did not start: {reader.scrub(str(exc))}",  # type: ignore[return-value]
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
        logger.info("Case %r: %d step(s), run date %s", case.case, len(list(iter_steps(rendered))),
                    values["run_date"])  # every step, those of parallel groups too: as the end counts them
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
            pack_claim = claim_pack(evidence_dir, case, started, run_id, logger) if write_evidence else None
            # the case's last passing runs, once, before the steps (only when a check compares with a baseline)
            ctx.history = case_history(rendered, case, started, run_id, pack_claim, clients, logger)
            with contextlib.ExitStack() as stack:
                # the locks first (none of this run's changes may start before), then the journal's leftovers
                lock = stack.enter_context(locked(clients, resources, case, run_id, ctx, logger))
                if resources:
                    ssm = clients.client("ssm")
                    claim = stack.enter_context(claimed(ssm, resources, case, run_id, ctx, logger))
                    settle_leftovers(clients, ssm, resources, case, run_id, recover, logger)
                    ctx.undo.journal = SsmJournal(ssm, run_id=run_id, case=case.case,
                                                  prefix=case.aws.journal_prefix, lease_id=lambda: lock.lease_id,
                                                  lease_lost=lambda: claim.lost)
                    own = sorted(set(resources) - set(lock.resources))  # named after this run: no lock
                    logger.info("Holding %d lock(s) until the undo is done: %s%s", len(lock.resources),
                                ", ".join(lock.resources) or "none",
                                f" (no lock for this run's own: {', '.join(own)})" if own else "")
                LIVE[run_id] = ctx
                # a card per step, pending, in step order in the Artifacts tab (flows.evidence.ui)
                publisher.prepare([(p.number, p.label) for p in iter_steps(rendered)] + [("end", "cleanup")])
                try:
                    with first_signal_stops(ctx.stop, logger):
                        run_steps(rendered, ctx, steps, running)
                        cleanup = way_out(run_cleanup(ctx), ctx, case, logger)
                        publisher.close()  # every step's artifacts exist before the case's own
                except BaseException as exc:
                    # cancelled (SIGTERM), interrupted or crashed: stop the waits of running steps, undo at once,
                    # leave the evidence of what was done, then let Prefect record the end
                    ctx.stop.set()
                    undone = way_out(undo_now(ctx, logger), ctx, case, logger)
                    publisher.close(timeout=STOPPING_FLUSH_S)
                    stopped = StepResult(number="stop", label="run stopped", kind="stop", status="error",
                                         error=f"the run was stopped ({type(exc).__name__}) before the case ended",
                                         error_code=type(exc).__name__)
                    partial = case_result(case, run_id, started, values,
                                           [*steps, *(interrupted(p) for p in running), stopped,
                                            *([undone] if undone else [])], secrets, lock, clients)
                    if pack_claim is not None:
                        write_case_pack(partial, case, spec_path, pack_claim, secrets, ctx, logger, upload=False)
                    if notice is not None:
                        send_notice(partial, notice, ui_url=partial.ui_url)
                    raise
        except CouldNotRun as exc:
            return could_not_run(str(exc), logger, case.case)  # type: ignore[return-value]
        LIVE.pop(run_id, None)
        if cleanup is not None:
            steps.append(cleanup)
        result = case_result(case, run_id, started, values, steps, secrets, lock, clients)
        if notice is not None:  # first, so that the pack records whether it was sent; it names where the pack goes
            if pack_claim is not None:
                result.pack = planned_pack(result, case, pack_claim.folder)
            # logs a Slack failure, never changes the result
            result.notice = send_notice(result, notice, ui_url=result.ui_url)
        if pack_claim is not None:
            write_case_pack(result, case, spec_path, pack_claim, secrets, ctx, logger)
        evidence.publish_case(result, logger)
    finally:
        put_back_handlers(signals)
        remove_redaction(redactor)
        if pack_claim is not None:
            pack_claim.abandon()  # a pack never written leaves no temporary folder (nothing once it is in place)
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)
    if result.passed and result.evidence_error is None:
        logger.info("Case %r passed (%d steps%s)", case.case, len(steps) - (cleanup is not None),
                    ", then the clean-up" if cleanup is not None else "")
        return result
    failure = CaseFailed(result) if not result.passed else EvidenceFailed(result)
    return Failed(message=str(failure), data=failure)  # type: ignore[return-value]


if __name__ == "__main__":
    from flows.cli import main

    sys.exit(main())
