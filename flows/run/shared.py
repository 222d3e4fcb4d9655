"""What the cases of one suite share in this process (its stop, its AWS clients), and how a case finds it."""

from __future__ import annotations

import threading
from contextvars import ContextVar
from typing import Any

from tasks.kit.aws import ClientFactory


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


#: what the suite a case runs in shares (set by flows.suite.flow in each case's context; None for a case run alone)
SUITE: ContextVar[SuiteShared | None] = ContextVar("pipeline_test_suite", default=None)
