"""Evidence in the Prefect UI: a markdown artifact per step, and per case a summary table and a report.

The case's artifacts use stable keys derived from the case name (``case-<slug>`` and ``case-<slug>-report``),
so the Artifacts page shows that case's history run after run. Step artifacts carry no key: they show in the
run's Artifacts tab beside the step's task run. Nothing here sees a secret: step outcomes are masked at the
source. Every value is escaped by :mod:`tasks.kit.markdown`: only these templates make headings, verdicts, tables
and links.
"""

from __future__ import annotations

import contextvars
import logging
import queue
import threading
import time
from typing import Any, Callable

from prefect.artifacts import create_link_artifact, create_markdown_artifact, create_table_artifact

from flows.evidence.history import read_history
from flows.evidence.markdown import (  # noqa: F401  (re-exported: callers import them from here)
    KEY_MAX,
    case_key,
    case_markdown,
    step_card,
    step_description,
    step_markdown,
    summary_rows,
)
from flows.evidence.results import CaseResult, StepResult
from tasks.kit import markdown as md
from tasks.kit.polling import WAKE_S
from tasks.kit.status import card_word
from tasks.kit.step import StepOutcome, format_duration

MAX_LINK_ARTIFACTS = 3
#: how long the end of a case waits for its steps' evidence still being published
FLUSH_TIMEOUT_S = 120.0


class StepPublisher:
    """A case run's step evidence, published off the steps' critical path: each step hands its artifacts' creation
    to one thread of the case (in the step's own run context, so they still attach to its task run) and goes on;
    :meth:`close` waits until every one is created, before the case's flow run ends. One per case run."""

    def __init__(self) -> None:
        self._queue: queue.Queue[tuple[contextvars.Context, Callable[[], None]] | None] = queue.Queue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def submit(self, work: Callable[[], None]) -> None:
        context = contextvars.copy_context()
        with self._lock:
            if self._thread is None:  # each thread its own queue: a closed one's end mark is never another's
                self._queue = queue.Queue()
                self._thread = threading.Thread(target=self._work, args=(self._queue,), name="step-evidence",
                                                daemon=True)
                self._thread.start()
            self._queue.put((context, work))

    @staticmethod
    def _work(work_queue: queue.Queue[tuple[contextvars.Context, Callable[[], None]] | None]) -> None:
        while (item := work_queue.get()) is not None:
            context, work = item
            try:
                context.run(work)  # the engine's work reports its own failures (a warning in the step's log)
            except Exception as exc:  # never lose the rest of the case's evidence to one piece
                logging.getLogger("pipeline_test").warning("Could not publish a step's evidence: %s", exc)

    def close(self, timeout: float = FLUSH_TIMEOUT_S) -> None:
        """Wait until every piece of work submitted so far is done (a later submit starts a new thread)."""
        with self._lock:
            thread, self._thread = self._thread, None
            if thread is not None:
                self._queue.put(None)
        deadline = time.monotonic() + timeout
        while thread is not None and thread.is_alive() and time.monotonic() < deadline:
            thread.join(min(WAKE_S, timeout))  # in slices: a signal's handler runs meanwhile (tasks.kit.polling)


def publish_step(result: StepResult, outcome: StepOutcome | None) -> None:
    """Create the step's artifacts (called inside its task run, so they attach to it)."""
    create_markdown_artifact(
        markdown=step_markdown(result, outcome),
        description=step_description(result),
    )
    if outcome is None:
        return
    for url, link in [(url, link) for link in outcome.links if (url := md.safe_url(link.url))][:MAX_LINK_ARTIFACTS]:
        create_link_artifact(link=url, link_text=md.text(link.text),
                             description=step_card(result, link.text))
    for name, rows in outcome.tables.items():
        if rows:
            create_table_artifact(table=[{k: md.one_line(v) for k, v in row.items()} for row in rows],
                                  description=step_card(result, name))


def publish_case(result: CaseResult, logger: Any = None) -> None:
    """Create the case's keyed summary table and report (called in the flow run, after the pack is written so
    the report names it); the report ends with the case's last runs, read back from the server."""
    key = case_key(result.case)
    verdict = card_word(result.status)
    create_table_artifact(table=[{k: md.one_line(v) for k, v in row.items()} for row in summary_rows(result)],
                          key=key, description=f"{verdict} · {md.text(result.case)} "
                          f"({format_duration(result.duration_s)})")
    history = read_history(key, logger=logger)
    for run in history:  # this run is still running on the server: its duration is the case's
        if run.get("flow_run_id") == result.flow_run_id and not run.get("duration"):
            run["duration"] = format_duration(result.duration_s)
    create_markdown_artifact(markdown=case_markdown(result, history), key=f"{key}-report"[:KEY_MAX],
                             description=f"{verdict} · {md.text(result.case)}")
