"""A failed case is a failure in the logs, not a crash report: the filters on Prefect's run loggers
(flows/run/prefect_logs.py). The worker's real logs are checked end to end in tests/test_deploy.py."""

from __future__ import annotations

import logging
import sys

import pytest

from flows.evidence.results import CaseFailed, CaseResult
from flows.run.prefect_logs import ENGINE_EXIT, ExpectedFailureFilter, QuietStepStates
from flows.run.recover import CouldNotRun
from flows.spec.load import SpecError


def record(message: str, exc: BaseException | None, empty: bool = False) -> logging.LogRecord:
    if empty:
        exc_info = (None, None, None)  # what logging stores for exc_info=True outside an except block
    elif exc is None:
        exc_info = None
    else:
        try:
            raise exc
        except BaseException:
            exc_info = sys.exc_info()
    return logging.LogRecord("prefect.flow_runs", logging.ERROR, __file__, 1, message, None, exc_info)


def formatted(rec: logging.LogRecord) -> str:
    return logging.Formatter().format(rec)


def failed_case() -> CaseFailed:
    return CaseFailed(CaseResult.model_construct(case="c", status="failed", steps=[]))


@pytest.mark.e2e  # starts a process (tests/fixtures/tiers.py)
def test_importing_the_flow_installs_nothing_and_running_it_installs_the_filters_once() -> None:
    import subprocess

    probe = ("import logging, flows.pipeline_test, flows.cli, flows.demo\n"
             "print(sum(len(logging.getLogger(n).filters) for n in ('prefect.flow_runs', 'prefect.task_runs')))")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert out.stdout.strip() == "0", out.stderr  # no import side effect (#25)
    import flows.run.prefect_logs

    flows.run.prefect_logs.install()
    flows.run.prefect_logs.install()  # again (every run calls it): still one
    for name in ("prefect.flow_runs", "prefect.task_runs"):
        assert sum(isinstance(f, ExpectedFailureFilter) for f in logging.getLogger(name).filters) == 1


def test_an_empty_traceback_is_removed_and_the_line_kept() -> None:
    rec = record("Task run failed with state: Failed(...)", None, empty=True)
    assert "NoneType: None" in formatted(logging.makeLogRecord(rec.__dict__))  # what Prefect's line printed
    assert ExpectedFailureFilter().filter(rec)
    assert formatted(rec) == "Task run failed with state: Failed(...)"


@pytest.mark.parametrize("exc", [failed_case(), CouldNotRun("the Prefect API refused"),
                                 SpecError("case.yaml", ["step 1 'x' (upload): field 'files': missing"])])
def test_the_engine_crash_report_of_an_expected_end_is_dropped(exc: Exception) -> None:
    assert not ExpectedFailureFilter().filter(record(ENGINE_EXIT, exc))
    # the flow engine's own line stays, without the traceback: its message names what went wrong
    rec = record("Encountered exception during execution: %r", exc)
    assert ExpectedFailureFilter().filter(rec) and "Traceback" not in formatted(rec)


def test_a_bug_keeps_its_traceback() -> None:
    for message in (ENGINE_EXIT, "Encountered exception during execution"):
        rec = record(message, KeyError("bucket"))
        assert ExpectedFailureFilter().filter(rec)
        assert "Traceback" in formatted(rec) and "KeyError: 'bucket'" in formatted(rec)


def test_demo_help_does_not_run_the_demo(capsys: pytest.CaptureFixture[str]) -> None:
    from flows.demo import main

    with pytest.raises(SystemExit) as ended:
        main(["--help"])
    assert ended.value.code == 0
    out = capsys.readouterr().out
    assert "--fail" in out and "Starting the local AWS emulator" not in out


@pytest.mark.parametrize("message", ["Finished in state Completed()", "Finished in state Failed('step 4 ...')",
                                     "Task run failed with state: Failed(message='x', result=StepFailed('x'))"])
def test_prefect_s_end_of_task_lines_move_to_debug(message: str) -> None:
    logger = logging.getLogger("prefect.task_runs")
    level = logger.level
    try:
        logger.setLevel(logging.INFO)
        rec = logging.LogRecord("prefect.task_runs", logging.INFO, __file__, 1, message, None, None)
        assert not QuietStepStates().filter(rec)  # at INFO: not shown, nor sent to the API
        assert rec.levelno == logging.DEBUG and rec.levelname == "DEBUG"
        logger.setLevel(logging.DEBUG)
        rec = logging.LogRecord("prefect.task_runs", logging.ERROR, __file__, 1, message, None, None)
        assert QuietStepStates().filter(rec) and rec.levelname == "DEBUG"  # at DEBUG: shown, as DEBUG
    finally:
        logger.setLevel(level)


def test_the_step_s_own_line_stays() -> None:
    rec = logging.LogRecord("prefect.task_runs", logging.ERROR, __file__, 1,
                            "step 4 'x' (athena_query) failed: 1 of 1 checks failed", None, None)
    assert QuietStepStates().filter(rec) and rec.levelno == logging.ERROR
    assert sum(isinstance(f, QuietStepStates) for f in logging.getLogger("prefect.task_runs").filters) == 1
