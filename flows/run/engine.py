"""Runs a validated case: each step as a Prefect task run named after the step, in order, parallel groups side
by side; stops at the first failure unless the step says ``continue_on_failure``; always runs the clean-up.

The engine knows no step kind: it looks each one up in the registry (``tasks.kit.step.REGISTRY``).
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import signal
import threading
import time
from contextlib import contextmanager
from datetime import datetime, timezone
from typing import Any, Iterator

from prefect import Task, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.futures import PrefectFuture
from prefect.states import Cancelled, Failed, State
from prefect.utilities.annotations import quote

from flows.evidence import ui as evidence
from flows.evidence.report import EvidenceLink
from flows.evidence.results import StepFailed, StepResult, plural
from flows.spec.load import render_step
from flows.spec.model import CaseSpec, ParallelGroup, PlacedStep, describe, group_label, iter_steps
from tasks.kit import baseline
from tasks.kit import markdown as md
from tasks.kit.checks import CheckRecord
from tasks.kit.errors import CHECK_FAILED, CLEANUP_FAILED, INTERRUPTED, CheckFailed, StepError
from tasks.kit.polling import WAKE_S
from tasks.kit.secrets import NAMES, RedactFilter, Secrets, redact, redact_json
from tasks.kit.status import check_mark
from tasks.kit.step import REGISTRY, StepContext, StepOutcome, UndoAction

log = logging.getLogger("pipeline_test")


def execute_step(placed: PlacedStep, ctx: StepContext) -> StepResult | State:
    """Run one step's runner, publish its evidence, and return its result (a Failed state when it failed)."""
    try:
        logger: Any = get_run_logger()
    except Exception:  # outside a Prefect run (plain Python use)
        logger = log
    ctx = dataclasses.replace(ctx, label=placed.label, logger=logger)
    started = datetime.now(timezone.utc)
    t0 = time.monotonic()
    outcome: StepOutcome | None = None
    status, error, code, details, items, files, checks = "passed", None, None, {}, [], [], []
    warnings: list[str] = []
    try:
        outcome = REGISTRY[placed.kind].run(placed.step, ctx)
        items, files, checks = outcome.hashed_items, outcome.files, outcome.checks
    except StepError as exc:
        # CheckFailed: what the step checked did not hold; any other: the step could not do or check it (AWS
        # refused, a wait for AWS timed out, a bad input, the run was stopped)
        status = "failed" if isinstance(exc, CheckFailed) else "error"
        error, code, details, items, files = exc.message, exc.code, exc.details, exc.hashed_items, exc.files
        checks = exc.checks
        if exc.markdown is not None:  # the step's own evidence (what it did and saw), shown as its report
            outcome = StepOutcome(summary="", details={}, markdown=exc.markdown)
        if isinstance(exc, CheckFailed) and "warn" in (exc.severity, placed.step.severity):
            # only warnings: the step is warned, the case goes on and may pass
            status, warnings, error, code = "warned", exc.warnings, None, None
            checks = [c.model_copy(update={"verdict": "warned"}) if c.verdict == "failed" else c for c in checks]
            outcome = outcome or StepOutcome(summary="")
            outcome.summary = outcome.summary or (f"passed with {plural(len(warnings), 'warning')}: "
                                                 + "; ".join(warnings))
            outcome.details = outcome.details or details
    except Exception as exc:  # a bug or an unforeseen failure: say so plainly, keep the traceback at debug level
        status, error, code = "error", f"unexpected {type(exc).__name__}: {exc}", type(exc).__name__
        logger.debug("Traceback of %s", describe(placed), exc_info=True)
    result = StepResult(
        number=placed.number, label=placed.label, kind=placed.kind, group=placed.group,
        description=placed.step.description, status=status, started_at=started,  # type: ignore[arg-type]
        duration_s=round(time.monotonic() - t0, 3),
        summary=outcome.summary if outcome else "", error=error, error_code=code, warnings=warnings,
        details=outcome.details if outcome and status == "passed" else details,
        request_ids=outcome.request_ids if outcome else [], items=items, files=files, checks=checks,
        **carried_evidence(outcome),
    )
    if placed.step.duration_baseline is not None and result.ok:
        _duration_against_baseline(placed, ctx, result)
    result, outcome = scrub(result, outcome, ctx.secrets)
    hand_over(ctx, functools.partial(_publish, result, outcome, describe(placed), logger, ctx.publisher))
    if result.status == "warned":
        logger.warning("%s passed with %s: %s", describe(placed), plural(len(result.warnings), "warning"),
                       "; ".join(result.warnings))
        return result
    if result.ok:
        logger.info("%s passed: %s", describe(placed), result.summary)
        return result
    logger.error("%s %s: %s", describe(placed), status, error)
    return Failed(message=f"{describe(placed)}: {error}", data=StepFailed(result))


def _duration_against_baseline(placed: PlacedStep, ctx: StepContext, result: StepResult) -> None:
    """The step's ``duration_baseline``: its duration against its duration in the case's last passing runs; the
    value, baseline and runs go in its details (``baselines.duration_s``); outside the range it fails (or warns)."""
    spec = placed.step.duration_baseline
    assert spec is not None
    checked = baseline.check(spec, placed.label, "duration_s", result.duration_s, ctx.history, placed.step.severity)
    result.details = {**result.details, "baselines": {**result.details.get("baselines", {}),
                                                       "duration_s": checked.record()}}
    result.checks = [*result.checks, CheckRecord.of("duration_s (baseline)", checked.passed, checked.expected(),
                                                    f"{checked.value:g} s", severity=checked.severity)]
    if checked.passed:
        return
    if checked.severity == "warn":
        result.status, result.warnings = "warned", [*result.warnings, checked.text()]
        if not result.summary.startswith("passed with"):
            result.summary = f"passed with {plural(len(result.warnings), 'warning')}: {result.summary}"
    else:
        result.status, result.error, result.error_code = "failed", checked.text(), CHECK_FAILED


def carried_evidence(outcome: StepOutcome | None) -> dict[str, Any]:
    """The step's readable evidence and links, carried on its result (the pack renders them as the UI does)."""
    if outcome is None:
        return {}
    return {"evidence": outcome.markdown, "links": [EvidenceLink(text=link.text, url=link.url)
                                                    for link in outcome.links]}


def hand_over(ctx: StepContext, publish: Any) -> None:
    """Publish a step's evidence in the case's publisher thread, in this task run's context (the step goes on)."""
    if ctx.publisher is not None:
        ctx.publisher.submit(publish)
    else:
        publish()


def _publish(result: StepResult, outcome: StepOutcome | None, what: str, logger: Any, publisher: Any = None) -> None:
    try:
        evidence.publish_step(result, outcome, publisher)
    except Exception as exc:  # evidence must never turn a passed step into a crash
        logger.warning("Could not publish the evidence of %s: %s", what, exc)


def scrub(result: StepResult, outcome: StepOutcome | None,
          secrets: Secrets | tuple[str, ...]) -> tuple[StepResult, StepOutcome | None]:
    """The net under the runners' masking: the run's known secrets (long enough to search for) masked in the
    string values of a step's result and evidence, never in its names, kinds or keys."""
    known = tuple(secrets)
    if not known:
        return result, outcome
    result = StepResult.model_validate(redact_json(result.model_dump(mode="json"), known, keep=NAMES))
    if outcome is not None:
        outcome = dataclasses.replace(
            outcome, summary=redact(outcome.summary, known), markdown=redact(outcome.markdown, known),
            details=redact_json(outcome.details, known, keep=NAMES),
            tables={k: redact_json(v, known, keep=NAMES) for k, v in outcome.tables.items()},
            links=[dataclasses.replace(link, text=redact(link.text, known)) for link in outcome.links])
    return result, outcome


@functools.cache
def step_task(kind: str) -> Any:
    """The Prefect task for a step kind (one per kind, so the UI groups runs by kind); made once, never changed."""
    return task(name=kind, cache_policy=NO_CACHE, retries=0)(execute_step)


def _submit(placed: PlacedStep, ctx: StepContext) -> PrefectFuture[Any]:
    return step_task(placed.kind).with_options(task_run_name=placed.label).submit(quote(placed), quote(ctx))


def await_step(what: str, future: PrefectFuture[Any], stop: threading.Event, logger: Any) -> None:
    """Wait until a step's task run ends, in short slices (never one untimed wait: on Windows a signal could
    not cut it short, see ``tasks.kit.polling.WAKE_S``), so Ctrl+C, Ctrl+Break, SIGTERM and a Prefect cancel reach
    their handler within a fraction of a second. Once ``stop`` is set, the step is stopping too (its waits end
    on that event): this says so once and waits for its end, so its undo actions are all known to the undo."""
    done = threading.Event()
    future.add_done_callback(lambda _: done.set())
    said = False
    while not done.wait(WAKE_S):
        if stop.is_set() and not said:
            logger.warning("The run is stopping: waiting for %s to end", what)
            said = True
    future.wait(0)  # it is done: this only records its final state


def _collect(placed: PlacedStep, future: PrefectFuture[Any], ctx: StepContext) -> StepResult:
    await_step(describe(placed), future, ctx.stop, ctx.logger)
    state = future.state
    value = state.result(raise_on_failure=False)
    if isinstance(value, StepResult):
        return value
    if isinstance(value, StepFailed):
        return value.result
    # the task itself crashed (cancelled, killed): record it as an error of the step
    return StepResult(number=placed.number, label=placed.label, kind=placed.kind, group=placed.group,
                      status="error", error=f"task run ended {state.type.value}: {state.message or value!r}",
                      error_code=state.type.value)


def render_case(spec: CaseSpec, values: dict[str, Any]) -> CaseSpec:
    """The case with every step's templates rendered with the run's variable values."""
    return spec.model_copy(update={"steps": [_render_item(item, values) for item in spec.steps]})


def run_steps(rendered: CaseSpec, ctx: StepContext, results: list[StepResult] | None = None,
              running: list[PlacedStep] | None = None) -> list[StepResult]:
    """Run the case's rendered steps in order; returns every step's result (skipped ones included).

    Results are appended to ``results`` as they come, and the steps under way are kept in ``running``, so a run
    that is stopped half-way still has both for its evidence.
    """
    results = [] if results is None else results
    running = [] if running is None else running
    stop: str | None = None  # once set, why the remaining steps are not run
    places = list(iter_steps(rendered))
    for index, item in enumerate(rendered.steps, 1):
        group = [p for p in places if p.number == str(index) or p.number.startswith(f"{index}.")]
        if stop:
            skips = [(p, skip_task(p.kind).with_options(task_run_name=p.label).submit(quote(p), stop, quote(ctx)))
                     for p in group]
            results += [_collect(p, future, ctx) for p, future in skips]
            continue
        if isinstance(item, ParallelGroup):
            ctx.logger.info("Running %d steps side by side (group %s)", len(group), group_label(item, index))
        running[:] = group
        futures = [(p, _submit(p, ctx)) for p in group]
        batch = []
        for placed, future in futures:
            batch.append(_collect(placed, future, ctx))
            results.append(batch[-1])
            running.remove(placed)
        failed = [(p, r) for p, r in zip(group, batch) if not r.ok and not p.step.continue_on_failure]
        if failed:
            stop = "not run: " + ", ".join(f"step {r.number} {r.label!r} " + ("failed" if r.status == "failed"
                                                                              else "had an error") for _, r in failed)
    return results


def _render_item(item: Any, values: dict[str, Any]) -> Any:
    if isinstance(item, ParallelGroup):
        return item.model_copy(update={"steps": [render_step(s, values) for s in item.steps]})
    return render_step(item, values)


def interrupted(placed: PlacedStep) -> StepResult:
    """The result of a step that was under way when the run was stopped."""
    return StepResult(number=placed.number, label=placed.label, kind=placed.kind, group=placed.group,
                      description=placed.step.description, status="error", error_code=INTERRUPTED,
                      error="the run was stopped while this step was running")


#: the name of a skipped step's task run state
SKIPPED = "Skipped"


def _skip_step(placed: PlacedStep, why: str, ctx: StepContext) -> State:
    """A step not run (an earlier one failed): its task run ends Cancelled, named Skipped, with the reason, and its
    card says why. Cancelled, not Completed: the UI shows it grey, as not run, never green as if it had passed."""
    result = StepResult(number=placed.number, label=placed.label, kind=placed.kind, group=placed.group,
                        description=placed.step.description, status="skipped", summary=why)
    hand_over(ctx, functools.partial(_publish, result, None, describe(placed), ctx.logger, ctx.publisher))
    return Cancelled(name=SKIPPED, message=f"{describe(placed)}: {why}", data=result)


@functools.cache
def skip_task(kind: str) -> Any:
    """The Prefect task of a skipped step of a kind (named as the kind's, so the UI groups them together)."""
    return task(name=kind, cache_policy=NO_CACHE, retries=0)(_skip_step)


def run_cleanup(ctx: StepContext) -> StepResult | None:
    """Run every pending undo action (last first) as one step named ``cleanup``; None when there is none."""
    if not ctx.undo.actions:
        return None
    return _collect(_CLEANUP, _cleanup_task.with_options(task_run_name="cleanup").submit(quote(ctx)), ctx)


def undo_now(ctx: StepContext, logger: Any) -> StepResult | None:
    """Run pending undo actions at once, in this thread, without a task run: for a run that is being cancelled
    or has crashed, when Prefect may no longer accept new task runs. Further SIGINT/SIGTERM wait until the undo
    is done (a second Ctrl+C must not leave settings changed). Never raises."""
    actions = ctx.undo.pending()
    if not actions:
        return None
    with signals_deferred(logger):
        logger.warning("The run is ending abnormally: undoing %d change(s) now", len(actions))
        result, _ = _undo(actions, ctx, logger)
    return result


#: the signals that stop a run, in every phase (lock wait, recover, steps, undo, writing the pack): SIGINT (Ctrl+C),
#: SIGTERM (a worker's cancel, `kill`; on Windows a hard kill that no handler sees), SIGBREAK (Windows: Ctrl+Break,
#: and how Prefect cancels a flow run there). Read at each call, so a test can stand one signal in for SIGBREAK.
STOP_SIGNALS = tuple(getattr(signal, n) for n in ("SIGINT", "SIGTERM", "SIGBREAK") if hasattr(signal, n))


def handle_stop_signals(handler: Any, only_unhandled: bool = False) -> dict[int, Any]:
    """Install ``handler`` for every stop signal (``only_unhandled``: for those that no Python handler takes);
    returns the handlers it replaced (main thread only; elsewhere nothing)."""
    previous = {}
    for signum in STOP_SIGNALS:
        try:
            if only_unhandled and callable(signal.getsignal(signum)):
                continue
            previous[signum] = signal.signal(signum, handler)
        except (ValueError, OSError):
            pass
    return previous


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signal.Signals(signum).name}")


def interrupt_on_stop_signals(only_unhandled: bool = False) -> dict[int, Any]:
    """Make the stop signals end the run like Ctrl+C (KeyboardInterrupt: undo, evidence, exit 130) in every
    phase, not only the steps. ``only_unhandled``: only those that no Python handler takes, so a handler of
    Prefect's stays (in a worker's flow run on Windows: SIGBREAK, by which Prefect cancels it there, whose
    default ends the process at once). Returns what :func:`put_back_handlers` puts back (main thread only)."""
    return handle_stop_signals(_interrupt, only_unhandled)


@contextmanager
def stop_signals_interrupt(only_unhandled: bool = False) -> Iterator[None]:
    """:func:`interrupt_on_stop_signals` while the block runs; the handlers before are put back at its end."""
    previous = interrupt_on_stop_signals(only_unhandled)
    try:
        yield
    finally:
        put_back_handlers(previous)


def put_back_handlers(previous: dict[int, Any]) -> None:
    """Put back the handlers that :func:`handle_stop_signals` replaced."""
    for signum, handler in previous.items():
        if handler is not None:  # None: a handler not set from Python, which cannot be put back
            signal.signal(signum, handler)


@contextmanager
def first_signal_stops(stop: threading.Event, logger: Any) -> Iterator[None]:
    """While a case runs: the first stop signal (SIGINT, SIGTERM, SIGBREAK) stops it (sets ``stop``, then does
    what the handler in place does: Prefect's raises TerminationSignal, Python's KeyboardInterrupt); any later
    one only logs, so it can never interrupt the undo that follows. Main thread only; elsewhere a no-op."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def later(signum: int, frame: Any) -> None:
        logger.warning("Signal %s received: the run is already stopping and undoing its changes",
                       signal.Signals(signum).name)

    def first(signum: int, frame: Any) -> None:
        handle_stop_signals(later)
        stop.set()  # from here on the run is ending: `later` stays in place through the undo
        handler = previous.get(signum)
        if callable(handler):
            handler(signum, frame)
        raise KeyboardInterrupt(signal.Signals(signum).name)

    previous = handle_stop_signals(first)
    yield
    if not stop.is_set():
        put_back_handlers(previous)


@contextmanager
def signals_deferred(logger: Any) -> Iterator[None]:
    """While the block runs, the stop signals (SIGINT, SIGTERM, SIGBREAK) only log that the run is finishing its
    undo (main thread only; elsewhere a no-op, as Python delivers signals to the main thread)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def wait_for_undo(signum: int, frame: Any) -> None:
        logger.warning("Signal %s received: finishing the undo first, then exiting", signal.Signals(signum).name)

    previous = handle_stop_signals(wait_for_undo)
    try:
        yield
    finally:
        put_back_handlers(previous)


class _CleanupStep:
    name = "cleanup"
    kind = "cleanup"
    description = "Undo what the case changed: remove uploaded test data, restore settings."
    continue_on_failure = True


_CLEANUP = PlacedStep("end", _CleanupStep())  # type: ignore[arg-type]


def _undo(actions: list[UndoAction], ctx: StepContext, logger: Any) -> tuple[StepResult, StepOutcome]:
    """Run undo actions, each even when an earlier one failed; the result is the ``cleanup`` step's."""
    started = datetime.now(timezone.utc)
    t0 = time.monotonic()
    done: list[dict[str, Any]] = []
    errors: list[str] = []
    for action in actions:
        try:
            outcome = action.run()
            ctx.undo.done(action)  # only now: an undo cut short leaves the rest pending (and journaled)
            done.append({"what": action.description, "step": action.step, "outcome": outcome})
            logger.info("Clean-up: %s: %s", action.description, redact(_text(outcome), ctx.secrets))
        except StepError as exc:
            errors.append(f"{action.description}: {exc.message}")
            done.append({"what": action.description, "step": action.step, "error": exc.message})
        except Exception as exc:
            errors.append(f"{action.description}: unexpected {type(exc).__name__}: {exc}")
            done.append({"what": action.description, "step": action.step, "error": str(exc)})
    sections = [d["outcome"].pop("markdown") for d in done if isinstance(d.get("outcome", {}).get("markdown"), str)]
    result = StepResult(
        number="end", label="cleanup", kind="cleanup", description=_CleanupStep.description,
        # an undo that did not go through is not a check that did not hold: the case's changes may remain
        status="error" if errors else "passed", started_at=started, duration_s=round(time.monotonic() - t0, 3),
        summary=f"{len(done) - len(errors)} of {len(done)} clean-up action(s) done",
        error="; ".join(errors) or None, error_code=CLEANUP_FAILED if errors else None,
        details={"actions": done},
    )
    markdown: str = md.table(["from step", "action", "outcome"],
                        [[d["step"], d["what"],
                          f"{check_mark(False)} {d['error']}" if "error" in d else _text(d["outcome"])] for d in done])
    if sections:
        markdown += "\n\n" + "\n\n".join(sections)
    cleanup = StepOutcome(summary=result.summary, details=result.details, markdown=markdown)
    result.evidence = markdown
    result, scrubbed = scrub(result, cleanup, ctx.secrets)
    return result, scrubbed or cleanup


def _do_cleanup(ctx: StepContext) -> StepResult | State:
    try:
        logger: Any = get_run_logger()
    except Exception:
        logger = log
    result, outcome = _undo(ctx.undo.pending(), ctx, logger)
    hand_over(ctx, functools.partial(_publish, result, outcome, "the clean-up", logger, ctx.publisher))
    if result.error:
        logger.error("Clean-up incomplete: %s", result.error)
        return Failed(message=f"clean-up incomplete: {result.error}", data=StepFailed(result))
    return result


def _text(outcome: dict[str, Any]) -> str:
    if "summary" in outcome:
        return str(outcome["summary"])
    if "action" in outcome:
        return str(outcome["action"])
    return "; ".join(f"{k}: {v}" for k, v in outcome.items()) or "done"


#: submitted with its context quoted (not a StepContext to the type checker, hence the open parameters)
_cleanup_task: Task[..., StepResult | State] = task(name="cleanup", cache_policy=NO_CACHE, retries=0)(_do_cleanup)


# --------------------------------------------------------------------------------- redaction and live runs
SECRET_LOGGERS = ("prefect.flow_runs", "prefect.task_runs", "pipeline_test")


def install_redaction(secrets: Secrets | tuple[str, ...]) -> RedactFilter:
    """Mask the run's secrets in every log record of the run's loggers (a net under the runners' masking); the
    filter shares the run's registry, so secrets that runners discover are masked from then on."""
    redactor = RedactFilter(secrets)
    for name in SECRET_LOGGERS:
        logging.getLogger(name).addFilter(redactor)
    return redactor


def remove_redaction(redactor: RedactFilter) -> None:
    for name in SECRET_LOGGERS:
        logging.getLogger(name).removeFilter(redactor)


#: the contexts of runs in progress in this process, by flow run id, for the crash and cancellation hooks
LIVE: dict[str, StepContext] = {}


def undo_hook(flow: Any, flow_run: Any, state: Any) -> None:
    """Flow hook (on_crashed, on_cancellation): undo whatever a run in this process left pending."""
    ctx = LIVE.pop(str(flow_run.id), None)
    if ctx is not None:
        undo_now(ctx, log)
