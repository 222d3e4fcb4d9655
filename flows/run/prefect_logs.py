"""Prefect's own log lines around a failure we expect: without these filters a failed case reads as a crash.

A case that did not pass ends its flow run Failed with a clear state message. Prefect's engine, which cannot tell
a failed case from a bug, then logs (in a worker's or ``serve``'s flow-run process, and so in the UI):

- ``Engine execution exited with unexpected exception`` with a traceback ending in ``CaseFailed``: dropped when
  the exception is an expected end of a run (a failed case, a run that could not start, an invalid spec);
- ``Encountered exception during execution: SpecError(...)`` with a traceback: the line stays, the traceback of
  an expected end goes (the message names the file, step and field already);
- ``Task run failed with state: Failed(...)`` logged with ``exc_info=True`` although no exception is being
  handled, which prints a stray ``NoneType: None`` line: that empty traceback is removed.

Any other exception (a bug) keeps its traceback. And for every step's task run, Prefect's own end-of-run lines
move to DEBUG (:class:`QuietStepStates`): ``Finished in state Completed()`` was a quarter of all log lines, and a
failed step said its failure three times at ERROR (our line, then ``Task run failed with state: Failed(...,
result=StepFailed(...))`` and ``Finished in state Failed(...)``, the state's repr). Our own line per step stays:
``step N 'name' (kind) passed: …`` or ``… failed: …``. The filters are installed once per process on Prefect's run
loggers (``install()``, called when :mod:`flows.pipeline_test` is imported) and hold no state.
"""

from __future__ import annotations

import logging

from flows.evidence.results import CaseFailed
from flows.run.recover import CouldNotRun
from flows.spec.load import SpecError

#: exceptions that end a run the way it is meant to end: the state message says it all
EXPECTED_ENDS = (CaseFailed, CouldNotRun, SpecError)
#: the engine's last line when a flow run did not complete
ENGINE_EXIT = "Engine execution exited with unexpected exception"
RUN_LOGGERS = ("prefect.flow_runs", "prefect.task_runs")


class ExpectedFailureFilter(logging.Filter):
    """Drops the engine's crash report of an expected end, and empty or expected tracebacks."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc_info = record.exc_info
        if not exc_info:
            return True
        if exc_info[0] is None:  # exc_info=True with no exception in flight: "NoneType: None"
            record.exc_info = None
            return True
        if isinstance(exc_info[1], EXPECTED_ENDS):
            if record.getMessage() == ENGINE_EXIT:
                return False
            record.exc_info, record.exc_text = None, None
        return True


#: Prefect's lines at the end of a task run, which repeat what the step's own line said
STATE_LINES = ("Finished in state ", "Task run failed with state: ")


class QuietStepStates(logging.Filter):
    """Prefect's end-of-run lines of a task run, at DEBUG: shown only where DEBUG is (PREFECT_LOGGING_LEVEL)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno > logging.DEBUG and record.getMessage().startswith(STATE_LINES):
            record.levelno, record.levelname = logging.DEBUG, "DEBUG"
            record.exc_info, record.exc_text = None, None
            return logging.getLogger(record.name).isEnabledFor(logging.DEBUG)
        return True


def install() -> None:
    """Put the filters on Prefect's flow-run and task-run loggers (once)."""
    for name in RUN_LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, ExpectedFailureFilter) for f in logger.filters):
            logger.addFilter(ExpectedFailureFilter())
    task_runs = logging.getLogger("prefect.task_runs")
    if not any(isinstance(f, QuietStepStates) for f in task_runs.filters):
        task_runs.addFilter(QuietStepStates())
