"""The case's step-evidence publisher: work runs in the submitting step's context (so artifacts attach to its
task run), in order, and ``close`` returns only when all of it is done; a failure is the work's own affair."""

from __future__ import annotations

import contextvars
import threading

from flows.evidence.ui import StepPublisher

RUN = contextvars.ContextVar("run", default="none")


def test_work_runs_in_the_submitters_context_in_order_and_close_waits() -> None:
    publisher, done, release = StepPublisher(), [], threading.Event()

    def step(name: str) -> None:
        RUN.set(name)
        publisher.submit(lambda: (release.wait(5), done.append((name, RUN.get()))))

    threads = [threading.Thread(target=step, args=(f"step-{i}",)) for i in range(3)]
    for thread in threads:
        thread.start()
        thread.join()
    assert done == []  # the steps went on without waiting for their evidence
    release.set()
    publisher.close()
    assert done == [(f"step-{i}", f"step-{i}") for i in range(3)]


def test_a_failing_piece_does_not_stop_the_rest_and_a_closed_publisher_starts_again() -> None:
    publisher, done = StepPublisher(), []

    def boom() -> None:
        raise RuntimeError("the API refused")

    publisher.submit(boom)
    publisher.submit(lambda: done.append(1))
    publisher.close()
    publisher.submit(lambda: done.append(2))
    publisher.close()
    assert done == [1, 2]
