"""Evidence in the Prefect UI: a markdown artifact per step, and per case a summary table and a report.

The case's artifacts use stable keys derived from the case name (``case-<slug>`` and ``case-<slug>-report``),
so the Artifacts page shows that case's history run after run.

Step cards are in step order in the run's Artifacts tab. That tab lists a flow run's artifacts by id, newest id
first (Prefect 3.8.8's UI asks ``/artifacts/filter`` with no sort: the server's default, ``ID_DESC``), and an
artifact's id is a random UUID (uuid4) given by the server, so neither the order of creation nor a key orders
them. So when the case starts, :meth:`StepPublisher.prepare` creates one card per step (the flow run's, as
"pending"), sorts their ids and gives the highest to step 1, the next to step 2, and so on; each step then fills
its own card (a PATCH keeps the id), a skipped step's card says why, and cards never filled are deleted at the
end. A step's link and table cards (few, each named ``step N name · what``) stay with its task run.

Nothing here sees a secret: step outcomes are masked at the source. Every value is escaped by
:mod:`tasks.kit.markdown`: only these templates make headings, verdicts, tables and links.
"""

from __future__ import annotations

import contextvars
import logging
import queue
import threading
import time
from typing import Any, Callable
from uuid import UUID

from prefect.artifacts import create_link_artifact, create_markdown_artifact, create_table_artifact

from flows.evidence.history import case_history, first_failed
from flows.evidence.markdown import (
    KEY_MAX,
    case_key,
    case_markdown,
    step_card,
    step_description,
    step_markdown,
    summary_rows,
)
from flows.evidence.results import CaseResult, StepResult
from flows.evidence.results import verdict as verdict_of
from tasks.kit import markdown as md
from tasks.kit.polling import WAKE_S
from tasks.kit.status import STATUS
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
        #: each step's card, by step number (filled by :meth:`prepare`, in the publisher's thread)
        self.cards: dict[str, UUID] = {}
        self._filled: set[str] = set()
        self._prepared = False

    def prepare(self, steps: list[tuple[str, str]]) -> None:
        """Create a "pending" card per step (``(number, label)`` in step order, the clean-up last) in the flow run
        that calls this, so the Artifacts tab lists them in step order (see the module's doc); in the publisher's
        thread, before any step's work."""
        self._prepared = True  # known at once: close() deletes what is unfilled even if this has not run yet
        self.submit(lambda: self._prepare(steps))

    def _prepare(self, steps: list[tuple[str, str]]) -> None:
        from prefect.client.orchestration import get_client
        from prefect.client.schemas.actions import ArtifactCreate, ArtifactUpdate
        from prefect.runtime import flow_run

        if not steps or not flow_run.id:
            return
        with get_client(sync_client=True) as client:
            made = [client.create_artifact(ArtifactCreate(type="markdown", data="⏳ pending", description="pending",
                                                          flow_run_id=UUID(flow_run.id))).id for _ in steps]
            for (number, label), card in zip(steps, sorted(made, key=lambda i: i.hex, reverse=True)):
                self.cards[number] = card
                client.update_artifact(card, ArtifactUpdate(
                    data=f"## Step {md.text(number)} · {md.text(label)} · ⏳ pending",
                    description=f"pending · step {md.text(number)} {md.text(label)}"))

    def fill(self, number: str, markdown: str, description: str) -> bool:
        """Put a step's evidence into its card (in the publisher's thread); False when it has none."""
        card = self.cards.get(number)
        if card is None:
            return False
        from prefect.client.orchestration import get_client
        from prefect.client.schemas.actions import ArtifactUpdate

        with get_client(sync_client=True) as client:
            client.update_artifact(card, ArtifactUpdate(data=markdown, description=description))
        self._filled.add(number)
        return True

    def _drop_unfilled(self) -> None:
        """Delete the cards no step filled (no clean-up to do; a run stopped half-way): no card stays pending."""
        unfilled = [self.cards.pop(number) for number in list(self.cards) if number not in self._filled]
        if not unfilled:
            return
        from prefect.client.orchestration import get_client

        with get_client(sync_client=True) as client:
            for card in unfilled:
                client.delete_artifact(card)

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
        if self._prepared:
            self._prepared = False
            self.submit(self._drop_unfilled)
        with self._lock:
            thread, self._thread = self._thread, None
            if thread is not None:
                self._queue.put(None)
        deadline = time.monotonic() + timeout
        while thread is not None and thread.is_alive() and time.monotonic() < deadline:
            thread.join(min(WAKE_S, timeout))  # in slices: a signal's handler runs meanwhile (tasks.kit.polling)


def publish_step(result: StepResult, outcome: StepOutcome | None, publisher: StepPublisher | None = None) -> None:
    """Fill the step's card (its publisher's, see the module's doc; else a new one) and create its link and table
    cards (called inside its task run, so those attach to it)."""
    markdown, description = step_markdown(result, outcome), step_description(result)
    if publisher is None or not publisher.fill(result.number, markdown, description):
        create_markdown_artifact(markdown=markdown, description=description)
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
    verdict = verdict_of(result.passed, result.warnings, "passed")
    mark = STATUS["failed" if not result.passed else "warned" if result.warnings else "passed"].mark
    name_run_by_verdict(f"{mark} {verdict}", logger)
    rows = summary_rows(result)
    create_table_artifact(table=[{k: md.one_line(v) for k, v in row.items()} for row in rows],
                          key=key, description=f"{verdict} · {md.text(result.case)} "
                          f"({format_duration(result.duration_s)})")
    failed = first_failed(rows)  # as history_rows reads the table
    this_run = {"flow_run_id": result.flow_run_id, "status": "failed" if failed else "passed",
                "started": result.started_at.strftime("%Y-%m-%d %H:%M:%S UTC"),
                "duration": format_duration(result.duration_s), "failed_step": failed["step"] if failed else None,
                "url": result.ui_url}
    history = case_history(key, this_run, logger=logger)
    for run in history:  # this run is still running on the server: its duration is the case's
        if run.get("flow_run_id") == result.flow_run_id and not run.get("duration"):
            run["duration"] = format_duration(result.duration_s)
    create_markdown_artifact(markdown=case_markdown(result, history), key=f"{key}-report"[:KEY_MAX],
                             description=f"{verdict} · {md.text(result.case)}")


def name_run_by_verdict(verdict: str, logger: Any = None) -> None:
    """Put the verdict first in this flow run's name (``❌ FAILED · orders-ingestion-20261208-031500``), before
    the case's keyed artifacts are made: the history page of an artifact key (artifacts/key/<key>) lists each
    version by its id and its flow run's name, and shows a description only when opened, so the name is where
    every version's verdict can be seen at once. Never fails a case."""
    from prefect.client.orchestration import get_client
    from prefect.runtime import flow_run

    try:
        if flow_run.id and flow_run.name and not flow_run.name.startswith(verdict):
            with get_client(sync_client=True) as client:
                client.update_flow_run(UUID(flow_run.id), name=f"{verdict} · {flow_run.name}")
    except Exception as exc:
        if logger is not None:
            logger.warning("Could not put the verdict in the flow run's name: %s", exc)
