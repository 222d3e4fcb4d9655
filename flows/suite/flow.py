"""The pipeline-test-suite flow: many cases in one flow run, each a subflow run of ``pipeline-test`` (its own task
runs and artifacts), side by side in threads up to ``max_parallel``; or each a flow run of a deployment, so a work
pool spreads them over workers. Then the suite's summary artifact and evidence pack (:mod:`flows.suite.pack`).

    python -m flows.pipeline_test examples/cases/                  every case of a folder
    python -m flows.pipeline_test suite.yaml [--tag orders] [--max-parallel N] [--var k=v] [--evidence-dir D]
                                             [--files-root DIR] [--only NAME]
    python -m flows.pipeline_test [suite.yaml] --rerun-failed SUITE-PACK   only what failed in that run

Cases that change one SSM parameter or S3 prefix take turns on their resource locks (:mod:`flows.run.locks`); a
Ctrl+C or SIGTERM stops every running case, and each puts back what it changed.
"""

from __future__ import annotations

import contextvars
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import datetime, timezone
from pathlib import Path, PurePath
from typing import Any, Callable

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.runtime import flow_run
from prefect.settings import PREFECT_API_URL
from prefect.states import Failed
from pydantic import SecretStr

from flows.evidence.history import SUITE_HISTORY, read_histories, this_run_url
from flows.evidence.markdown import KEY_MAX, case_key
from flows.evidence.pack.files import manifest_sha256, run_pack_dir
from flows.evidence.pack.folder import PackClaim, PackFolderError
from flows.evidence.results import plural, result_of
from flows.pipeline_test import pipeline_test, plain_variables
from flows.run.engine import signals_deferred, stop_signals_interrupt
from flows.run.prefect_client import bound_parallel, server_capacity
from flows.run.recover import CouldNotRun
from flows.run.shared import SUITE, SuiteShared
from flows.spec.load import read_spec_file
from flows.spec.slugs import slug
from flows.suite.pack import (
    CASES_DIR,
    CaseVerdict,
    RerunOf,
    SuiteCaseResult,
    SuiteFailed,
    SuiteResult,
    claim_suite_folder,
    result_from_pack,
    write_suite_pack,
)
from flows.suite.progress import PROGRESS, Progress, lock_waits_seen
from flows.suite.spec import DeploymentSettings, SuiteCase, SuitePlan, load_suite
from flows.suite.trends import CaseRun, SuiteTrends, read_history, suite_trends, summary_line
from flows.suite.trends import cells as trend_cells
from tasks.kit import markdown as md
from tasks.kit.polling import wait_done, wait_event
from tasks.kit.status import STATUS, card_word, marked
from tasks.kit.step import format_duration


def suite_key(suite: str) -> str:
    """The stable artifact key of a suite's summary table."""
    return f"suite-{slug(suite) or 'suite'}"[:KEY_MAX].rstrip("-")


def _suite_run_name() -> str:
    """The suite's name (its file's ``suite:``, or its folder's name) and the start time."""
    source = Path(str((flow_run.parameters or {}).get("suite") or "suite"))
    name = source.stem
    try:
        if source.is_dir():
            name = source.resolve().name
        elif source.is_file():
            raw = read_spec_file(source)
            name = str(raw.get("suite") or name) if isinstance(raw, dict) else name
    except Exception:
        pass
    return f"suite-{slug(name) or 'suite'}-{datetime.now(timezone.utc):%Y%m%d-%H%M%S}"


def _now() -> datetime:
    return datetime.now(timezone.utc)


@flow(name="pipeline-test-suite", flow_run_name=_suite_run_name, validate_parameters=False, log_prints=False)
def pipeline_test_suite(
    suite: str,
    tags: list[str] | None = None,
    variables: dict[str, str | SecretStr] | None = None,
    max_parallel: int | None = None,
    evidence_dir: str | None = None,
    files_root: str | None = None,
    only: list[str] | None = None,
    rerun_of: dict[str, Any] | None = None,
) -> SuiteResult:
    """Run a suite (a folder of cases, or a suite file): every case validated first, then each a subflow run
    (or a run of the suite's deployment), at most ``max_parallel`` at once; leaves the summary artifact
    ``suite-<name>`` and the suite's evidence pack in ``evidence_dir`` (default:
    ``evidence/suites/<name>/<time>-<run id>/``). ``files_root`` (``--files-root``) replaces the suite file's
    ``files_root``: every case's local files may also lie under it. ``only`` keeps the cases (and matrix rows) of
    these names; ``rerun_of`` (``--rerun-failed``: the suite pack re-run and its manifest's SHA-256) links this run
    to the first. The flow run fails when a case failed or did not run."""
    logger = get_run_logger()
    plan = load_suite(suite, tags, plain_variables(variables), max_parallel, files_root, only)
    rerun = RerunOf.model_validate(rerun_of) if rerun_of else None
    if rerun is not None:
        logger.info("Re-running the %d case(s) that failed or did not run in %s (manifest sha256 %s)",
                    len(plan.cases), rerun.pack, rerun.manifest_sha256)
    if files_root and plan.spec.files_root:
        logger.info("--files-root %s replaces the suite file's files_root %r", files_root, plan.spec.files_root)
    started = _now()
    run_id = str(flow_run.id or "local")
    folder = Path(evidence_dir) if evidence_dir else run_pack_dir(plan.spec.suite, started, run_id, suite=True)
    try:  # before any case starts: a folder that is not new, not writable or full, or taken, is exit 3
        claim = claim_suite_folder(folder, logger=logger)
    except PackFolderError as exc:
        message = f"suite '{plan.spec.suite}' did not start: {exc}; nothing was changed"
        logger.error("%s", message)
        return Failed(message=message, data=CouldNotRun(message))  # type: ignore[return-value]
    progress = PROGRESS.get() or Progress()
    progress.begin(len(plan.cases))
    parallel = bound_parallel(plan.spec.max_parallel, server_capacity(PREFECT_API_URL.value()), logger)
    logger.info("Suite %r: %d case(s), at most %d at once (%s)%s", plan.spec.suite, len(plan.cases),
                parallel, "as runs of " + plan.spec.deployment.name
                if plan.spec.run_as == "deployment" else "subflow runs in this process",
                f"; left out: {len(plan.skipped)}" if plan.skipped else "")
    shared = SuiteShared()  # the cases share its stop and AWS clients
    # every case's last runs, read once here (not two requests per case): each case's report adds its own run
    # (a run of the deployment reads its own, in its worker)
    histories = (read_histories([case_key(c.name) for c in plan.cases], logger=logger)
                 if plan.spec.run_as != "deployment" else None)
    results: dict[int, SuiteCaseResult] = {}
    # a stop signal without a handler (SIGBREAK: Prefect's cancel on Windows) stops the suite too, as Ctrl+C does
    with stop_signals_interrupt(only_unhandled=True), lock_waits_seen(progress), \
            ThreadPoolExecutor(parallel, thread_name_prefix="case") as pool:
        futures: list[Future[SuiteCaseResult]] = []
        for case in plan.cases:
            context = contextvars.copy_context()  # the suite's flow run context: each case is its subflow
            context.run(SUITE.set, shared)
            context.run(SUITE_HISTORY.set, histories)
            futures.append(pool.submit(context.run, run_case, plan, case, folder, progress))
        try:
            for index, future in enumerate(futures):
                wait_done(future)  # in slices: Ctrl+C, Ctrl+Break, SIGTERM get through on Windows too
                results[index] = future.result()
        except BaseException:  # Ctrl+C, SIGTERM: stop every case; each undoes its changes; then the evidence
            shared.stop()
            for future in futures:
                future.cancel()
            with signals_deferred(logger):
                logger.warning("The suite is stopping: every running case stops and undoes its changes")
                for future in futures:
                    if not future.cancelled():
                        wait_done(future)
                done = {i: f.result() for i, f in enumerate(futures) if f.done() and not f.cancelled()
                        and f.exception() is None}
                _finish(plan, run_id, started, [done[i] for i in sorted(done)], folder, claim, logger, rerun)
            raise
    result = _finish(plan, run_id, started, [results[i] for i in sorted(results)], folder, claim, logger, rerun)
    if result.passed and result.evidence_error is None:
        return result
    return Failed(message=str(SuiteFailed(result)), data=SuiteFailed(result))  # type: ignore[return-value]


def case_pack(plan: SuitePlan, case: SuiteCase) -> str:
    """The case's pack folder in the suite's pack: ``cases/<case slug>``, and ``-2``, ``-3`` ... after the slug of
    cases whose names slug alike (each case's pack a folder of its own: two runs never share one)."""
    used: set[str] = set()
    for other in plan.cases:
        base = slug(other.spec.case) or "case"
        name, n = base, 1
        while name in used:
            n += 1
            name = f"{base}-{n}"
        used.add(name)
        if other is case:
            return f"{CASES_DIR}/{name}"
    raise ValueError(f"{case.path} is not a case of the suite")


#: a case whose flow run could not be created or run (the server did not answer, or answered 5xx, after the
#: Prefect client's own retries) is tried again, as long as it wrote nothing, for this long before it is "not run"
CASE_RETRY_S = 300.0
#: the pause before the first retry of such a case; doubled each time, at most CASE_RETRY_MAX_PAUSE_S
CASE_RETRY_PAUSE_S = 5.0
CASE_RETRY_MAX_PAUSE_S = 60.0


def run_case(plan: SuitePlan, case: SuiteCase, folder: Path, progress: Progress, retry_for: float = CASE_RETRY_S,
             pause: Callable[[float], bool] | None = None) -> SuiteCaseResult:
    """Run one case of the suite (in a thread of its own) and say how it went; never raises. A server hiccup that
    outlasts the Prefect client's retries (the case's flow run could not be created: a 5xx, a pool timeout, a
    dropped connection) is waited out: the case is tried again while it left no pack (it changed nothing), for
    ``retry_for`` seconds, then reported "not run" with the reason. ``pause(seconds)`` waits between tries and
    says whether the suite was stopped meanwhile (default: the suite's stop)."""
    pack = case_pack(plan, case)
    progress.case_started()
    started = _now()
    pause = pause or _suite_pause()
    tries, delay = 0, CASE_RETRY_PAUSE_S
    while True:
        tries += 1
        try:
            if plan.spec.run_as == "deployment":
                outcome = _run_deployment(plan.spec.deployment, case, folder / pack, started, plan.files_root)
            else:
                outcome = _run_subflow(case, folder / pack, started, plan.files_root)
            break
        except Exception as exc:  # e.g. the Prefect API refused to create the case's flow run (503)
            error = f"{type(exc).__name__}: {exc}"
            spent = (_now() - started).total_seconds()
            if (folder / pack).exists() or spent + delay > retry_for or pause(delay):
                outcome = SuiteCaseResult(case=case.spec.case, path=str(case.path), status="not run",
                                          started_at=started, ended_at=_now(),
                                          reason=f"the case's flow run could not be run ({tries} tries in "
                                          f"{spent:.0f} s): {error}"[:2000])
                break
            _logger().warning("Case %r: its flow run could not be run (%s); trying again in %.0f s",
                                     case.name, error[:300], delay)
            delay = min(delay * 2, CASE_RETRY_MAX_PAUSE_S)
    outcome.pack = pack if (folder / pack).is_dir() else None
    progress.case_ended(outcome.status)
    return outcome


def _logger() -> Any:
    try:
        return get_run_logger()
    except Exception:  # outside a flow run (a test)
        import logging

        return logging.getLogger("pipeline_test")


def _suite_pause() -> Callable[[float], bool]:
    """Waits that the suite's stop (Ctrl+C, SIGTERM) ends at once; True when it did."""
    import threading

    event = threading.Event()
    shared = SUITE.get()
    if shared is not None:
        shared.register(event)
    return lambda seconds: wait_event(event, seconds)


def _run_subflow(case: SuiteCase, pack_dir: Path, started: datetime, files_root: Path | None) -> SuiteCaseResult:
    hidden = {k: SecretStr(v) for k, v in case.variables.items()}
    state = pipeline_test(spec=str(case.path), variables=hidden or None, evidence_dir=str(pack_dir),
                          files_root=str(files_root) if files_root else None,
                          case_name=case.name if case.row is not None else None, return_state=True)
    return _verdict(case, started, state, result_of(state))


def project_path(path: Path) -> str:
    """A folder as a worker of the deployment names it: relative to the working folder, with ``/`` (workers may
    run on Linux), when it lies inside it (workers have the project at the same relative path); else absolute."""
    resolved = path.resolve()
    if resolved.is_relative_to(Path.cwd().resolve()):
        return resolved.relative_to(Path.cwd().resolve()).as_posix()
    return resolved.as_posix()


def _run_deployment(settings: DeploymentSettings, case: SuiteCase, pack_dir: Path,
                    started: datetime, files_root: Path | None) -> SuiteCaseResult:
    """The case as a flow run of the deployment (its worker writes the pack where the suite says: a folder
    both see); its result read back from the pack, else from the flow run's state."""
    from prefect.deployments import run_deployment

    parameters: dict[str, Any] = {"spec": worker_path(case.path), "evidence_dir": worker_path(pack_dir.resolve())}
    if case.variables:
        parameters["variables"] = case.variables
    if files_root:
        parameters["files_root"] = project_path(files_root)
    if case.row is not None:
        parameters["case_name"] = case.name
    run = run_deployment(settings.name, parameters=parameters, timeout=settings.timeout,
                         poll_interval=settings.poll_interval, as_subflow=True)
    state = run.state  # type: ignore[union-attr]
    result = result_from_pack(pack_dir)
    if state is None or not state.is_final():
        return SuiteCaseResult(case=case.spec.case, path=str(case.path), status="not run", started_at=started,
                               ended_at=_now(), flow_run_id=str(run.id),  # type: ignore[union-attr]
                               reason=f"its flow run did not end within {settings.timeout:.0f} s "
                               f"({state.type.value if state else 'no state'})")
    return _verdict(case, started, state, result, str(run.id))  # type: ignore[union-attr]


def worker_path(path: PurePath) -> str:
    """A path as a deployment's flow run gets it: with ``/`` (a worker may run on Linux while the suite runs on
    Windows; Windows reads ``/`` too)."""
    return path.as_posix()


def _verdict(case: SuiteCase, started: datetime, state: Any, result: Any, run_id: str | None = None
             ) -> SuiteCaseResult:
    if result is not None:
        return SuiteCaseResult(case=case.spec.case, path=str(case.path), status=result.status, result=result,
                               started_at=result.started_at, ended_at=result.ended_at,
                               flow_run_id=result.flow_run_id, ui_url=result.ui_url)
    ended = f"the flow run ended {state.type.value}: {state.message or ''}".strip()
    if run_id is None:  # in this process, a case without a result never ran its steps
        value = state.result(raise_on_failure=False)
        reason = str(value) if isinstance(value, CouldNotRun) else ended
        flow_run_id = state.state_details.flow_run_id
        return SuiteCaseResult(case=case.spec.case, path=str(case.path), status="not run", started_at=started,
                               ended_at=_now(), reason=reason, flow_run_id=str(flow_run_id) if flow_run_id else None)
    # a run of the deployment whose pack the suite cannot see: its verdict from its state
    status: CaseVerdict = "passed" if state.is_completed() else "failed" if state.is_failed() else "not run"
    return SuiteCaseResult(case=case.spec.case, path=str(case.path), status=status, started_at=started,
                           ended_at=_now(), flow_run_id=run_id, reason=None if status == "passed" else ended)


def read_trends(result: SuiteResult, folder: Path, window: int, logger: Any) -> SuiteTrends | None:
    """Every case's trend: this run against the suite's earlier packs beside ``folder`` (read once per suite run);
    a pack that cannot be read is skipped with a note; None (and a warning) when the trends cannot be had."""
    try:
        history = read_history(folder.parent, result.suite, window, exclude=folder)
        for note in history.notes:
            logger.warning("Trends: %s", note)
        return suite_trends([(c.case, CaseRun(c.status, c.duration_s)) for c in result.cases], history, window)
    except Exception as exc:  # trends are a convenience: never a reason to lose the evidence
        logger.warning("Could not read the suite's trends: %s", exc)
        return None
def _finish(plan: SuitePlan, run_id: str, started: datetime, cases: list[SuiteCaseResult], folder: Path,
            claim: PackClaim, logger: Any, rerun: RerunOf | None = None) -> SuiteResult:
    """The suite's result, its summary artifact and its evidence pack (a failure of either is logged; one of the
    pack, or of a case's pack, goes in ``evidence_error``: the CLI exits 4)."""
    result = SuiteResult(suite=plan.spec.suite, flow_run_id=run_id, ui_url=this_run_url(), started_at=started,
                         ended_at=_now(), cases=cases, skipped=[str(p) for p in plan.skipped],
                         source=str(plan.source), rerun_of=rerun)
    result.trends = read_trends(result, folder, plan.spec.trend_runs, logger)
    try:
        write_suite_pack(result, folder, claim=claim)
        result.evidence_dir = str(folder.resolve())
        logger.info("Suite evidence pack: %s", result.evidence_dir)
    except Exception as exc:
        result.evidence_error = f"the suite's evidence pack {folder} could not be written: {exc}"
        logger.error("%s", result.evidence_error)
    lost = [c.case for c in cases if c.result is not None and c.result.evidence_error]
    if lost and result.evidence_error is None:
        result.evidence_error = f"the evidence pack of {len(lost)} case(s) could not be written: {', '.join(lost)}"
    try:  # after the pack: the report says where it is
        publish_suite(result)
    except Exception as exc:
        logger.warning("Could not publish the suite's summary artifact: %s", exc)
    logger.info("Suite %r: %d passed, %d failed, %d not run in %s", result.suite, result.count("passed"),
                result.count("failed"), result.count("not run"), format_duration(result.duration_s))
    return result


#: widths of the summary table's cells: the UI never wraps a table cell, and its box is about 840 px at 1400 px
#: (the whole texts are in the suite's report and pack)
CASE_WIDTH, WHY_WIDTH = 30, 36


def verdict_cell(case: SuiteCaseResult) -> str:
    """``✅ passed``, ``⚠️ passed, 2 warnings``, ``❌ failed``, ``⛔ not run``."""
    if case.status == "passed" and case.warnings:
        return f"{STATUS['warned'].mark} passed, {plural(case.warnings, 'warning')}"
    return marked(case.status)


def summary_rows(result: SuiteResult) -> list[dict[str, str]]:
    """One row per case: verdict first (always in view), case, duration, the failed step and why, the flow run's
    short id (its link is in the suite's report)."""
    return [{"verdict": verdict_cell(c), "case": md.shorten(c.case, CASE_WIDTH),
             "duration": format_duration(c.duration_s), "failed step and reason": md.shorten(c.why, WHY_WIDTH),
             "flow run": (c.flow_run_id or "")[:8]} for c in result.cases]


def trends_markdown(result: SuiteResult) -> str:
    """The report's Trends section: per case its pass rate, p50 / p95, this run's duration and marks (``–`` for a
    case with fewer than 2 runs); empty when there are no trends."""
    if result.trends is None:
        return ""
    rows = []
    for c in result.cases:
        shown = trend_cells(result.trends.cases.get(c.case))
        rows.append([c.case, shown["pass rate"], shown["p50 / p95"], shown["last"], shown["marks"]])
    return (f"\n\n## Trends\n\n{md.text(summary_line(result.trends))}\n\n"
            + md.table(["case", "pass rate", "p50 / p95", "this run", "marks"], rows, whole_below=False))


def publish_suite(result: SuiteResult) -> None:
    """The suite's summary table under the stable key ``suite-<name>`` and a report with links to every case's
    flow run (``suite-<name>-report``)."""
    key = suite_key(result.suite)
    verdict = result.counts_text()
    word = card_word("passed" if result.passed else "failed")  # first in the card's description: a card cuts the rest
    create_table_artifact(table=[{k: md.one_line(v) for k, v in row.items()} for row in summary_rows(result)],
                          key=key, description=f"{word} · suite {md.text(result.suite)}: {verdict} "
                          f"({format_duration(result.duration_s)})")
    rows = [[md.Md(verdict_cell(c)), c.case, format_duration(c.duration_s), c.why,
             md.link("open", c.ui_url) if c.ui_url else md.code((c.flow_run_id or "none")[:8])] for c in result.cases]
    pack = (md.facts([("evidence pack", md.code(result.evidence_dir)),
                      ("manifest SHA-256", md.code(manifest_sha256(Path(result.evidence_dir))))])
            if result.evidence_dir else md.text("No evidence pack was written (see the suite's log)."))
    create_markdown_artifact(
        markdown=f"# Suite {md.text(result.suite)}: {md.text(verdict)}\n\n"
        + md.table(["verdict", "case", "duration", "failed step and reason", "run"], rows) + "\n\n" + pack
        + trends_markdown(result),
        key=f"{key}-report"[:KEY_MAX], description=f"{word} · suite {md.text(result.suite)}: {verdict}")
