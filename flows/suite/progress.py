"""A suite's progress while it runs: cases passed, failed, not run, running, waiting for a lock, waiting to start;
shown by the CLI with rich on a terminal, as plain lines otherwise."""

from __future__ import annotations

import logging
import sys
import threading
import time
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any, Iterator, TextIO


@dataclass
class Progress:
    """Counts of a suite's cases, updated by the suite's threads (thread-safe); ``waiting_lock`` comes from the
    cases' log (a case logs when it starts waiting for a lock and when it holds its locks)."""

    total: int = 0
    started_at: float = field(default_factory=time.monotonic)
    done: dict[str, int] = field(default_factory=lambda: {"passed": 0, "failed": 0, "not run": 0})
    running: int = 0
    waiting_lock: set[str] = field(default_factory=set)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def begin(self, total: int) -> None:
        with self._lock:
            self.total, self.started_at = total, time.monotonic()

    def case_started(self) -> None:
        with self._lock:
            self.running += 1

    def case_ended(self, verdict: str) -> None:
        with self._lock:
            self.running -= 1
            self.done[verdict] = self.done.get(verdict, 0) + 1

    def lock_wait(self, flow_run_id: str, waiting: bool) -> None:
        with self._lock:
            (self.waiting_lock.add if waiting else self.waiting_lock.discard)(flow_run_id)

    def line(self) -> str:
        with self._lock:
            waiting_lock = min(len(self.waiting_lock), self.running)
            queued = self.total - self.running - sum(self.done.values())
            return (f"{self.done['passed']} passed, {self.done['failed']} failed, {self.done['not run']} not run, "
                    f"{self.running - waiting_lock} running, {waiting_lock} waiting for a lock, {queued} to start "
                    f"(of {self.total}); {time.monotonic() - self.started_at:.0f} s")


#: the progress the suite flow reports to (set by the CLI around its call; each suite run its own)
PROGRESS: ContextVar[Progress | None] = ContextVar("pipeline_test_suite_progress", default=None)


class LockWaits(logging.Handler):
    """Sees, in the cases' flow run logs, when a case starts waiting for a lock and when it holds its locks."""

    def __init__(self, progress: Progress) -> None:
        super().__init__()
        self.progress = progress

    def emit(self, record: logging.LogRecord) -> None:
        run = getattr(record, "flow_run_id", None)
        if not run or getattr(record, "flow_name", None) != "pipeline-test":
            return
        message = str(record.msg)
        if message.startswith("Waiting for") and "lock(s) that another run holds" in message:
            self.progress.lock_wait(str(run), True)
        elif message.startswith(("Holding", "Took")) or "did not start" in message:
            self.progress.lock_wait(str(run), False)


@contextmanager
def lock_waits_seen(progress: Progress) -> Iterator[None]:
    handler = LockWaits(progress)
    logger = logging.getLogger("prefect.flow_runs")
    logger.addHandler(handler)
    try:
        yield
    finally:
        logger.removeHandler(handler)


@contextmanager
def _every(seconds: float, action: Any) -> Iterator[None]:
    """Call ``action()`` every ``seconds`` in a background thread while the block runs."""
    stop = threading.Event()

    def loop() -> None:
        while not stop.wait(seconds):
            action()

    thread = threading.Thread(target=loop, daemon=True, name="suite-progress")
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(5)


@contextmanager
def shown(progress: Progress, stream: TextIO | None = None, every: float = 1.0) -> Iterator[None]:
    """Show the progress while the block runs: a live line with rich on a terminal, else a plain line whenever
    the counts change (looked at every ``every`` s, and at the end)."""
    stream = stream or sys.stderr
    if stream.isatty():
        from rich.console import Console
        from rich.live import Live

        with Live(progress.line(), console=Console(file=stream), refresh_per_second=2) as live:
            with _every(every, lambda: live.update(progress.line())):
                yield
            live.update(progress.line())
        return
    last = [""]

    def plain() -> None:
        now = progress.line()
        counts = now.split(";")[0]
        if progress.total and counts != last[0]:
            last[0] = counts
            print(f"Suite: {now}", file=stream, flush=True)

    with _every(every, plain):
        yield
    plain()  # the end, unless the last line already said it


def attach(progress: Progress) -> Any:
    """Make ``progress`` the one the suite flow reports to in this context; returns the token to reset."""
    return PROGRESS.set(progress)
