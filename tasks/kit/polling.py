"""Waiting for something that AWS or a pipeline does in its own time, without fixed sleeps.

The first check runs at once; then the interval grows geometrically from ``initial`` by ``factor`` up to
``max_interval``. With the default factor of 1.25, an event at time D is noticed within about 0.2 x D
(plus one initial interval), while a long wait costs few calls. Progress is logged every
``log_every`` seconds. Clock and sleep are injectable so the logic is tested with a fake clock.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Generic, TypeVar

from pydantic import BaseModel, ConfigDict, Field

from tasks.kit.errors import INTERRUPTED, StepError

T = TypeVar("T")


#: the longest wait a step may ask for: 7 days
MAX_WAIT_SECONDS = 7 * 24 * 3600.0
#: the longest interval between checks or between progress lines: 1 day
MAX_INTERVAL_SECONDS = 24 * 3600.0
#: the shortest first interval, and the shortest interval the growth may stop at: a floor, so a wait cannot
#: become a burst of AWS calls (1e-9 s made 328 calls in a second)
MIN_INITIAL_SECONDS = 0.05
MIN_INTERVAL_SECONDS = 0.1


class PollSettings(BaseModel):
    """How to wait: timeout and the growing interval between checks (all in seconds; finite, at most 7 days)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    timeout: float = Field(300.0, gt=0, le=MAX_WAIT_SECONDS, description="Give up after this many seconds.")
    initial: float = Field(0.2, ge=MIN_INITIAL_SECONDS, le=MAX_INTERVAL_SECONDS,
                           description="First interval between checks.")
    factor: float = Field(1.25, ge=1.0, le=4.0, description="Each interval is the previous one times this.")
    max_interval: float = Field(15.0, ge=MIN_INTERVAL_SECONDS, le=MAX_INTERVAL_SECONDS,
                                description="Intervals never grow past this.")
    log_every: float = Field(15.0, gt=0, le=MAX_INTERVAL_SECONDS,
                             description="Log progress at most this often while waiting.")


class WaitInterrupted(StepError):
    """A wait was cut short because the run is stopping (cancelled, interrupted or crashed)."""

    def __init__(self, message: str) -> None:
        super().__init__(message, code=INTERRUPTED)


#: the longest any wait of a run blocks at once. A signal's handler (Ctrl+C, Ctrl+Break, SIGTERM, a Prefect
#: cancel) runs only when the main thread is back in Python code, and on Windows with Python <= 3.13 a blocking
#: wait (an Event, a lock, a future, a thread join) is not cut short by a signal, timeout or not; so every wait
#: of the run path loops on slices this long, and a run stops within about a second on any OS.
WAKE_S = 0.25


def wait_event(event: threading.Event, seconds: float | None = None) -> bool:
    """``event.wait(seconds)`` (None: until it is set) in slices of at most :data:`WAKE_S`, so that a signal's
    handler runs meanwhile on every OS; True when the event is set."""
    deadline = None if seconds is None else time.monotonic() + seconds
    while True:
        left = WAKE_S if deadline is None else min(WAKE_S, deadline - time.monotonic())
        if left <= 0:
            return event.is_set()
        if event.wait(left):
            return True


def wait_done(future: Any, seconds: float | None = None) -> bool:
    """Wait until a future (concurrent.futures or Prefect's) is done, as :func:`wait_event` does (None: no time
    limit); True when it is done."""
    done = threading.Event()
    future.add_done_callback(lambda _: done.set())
    return wait_event(done, seconds)


def stoppable_sleep(stop: threading.Event) -> Callable[[float], None]:
    """A sleep that ends early, raising WaitInterrupted, once ``stop`` is set (one event per case run)."""

    def sleep(seconds: float) -> None:
        if wait_event(stop, seconds):
            raise WaitInterrupted("the run is stopping, so the wait was cut short")

    return sleep


@dataclass
class Clock:
    """Time and sleep, replaceable in tests. A case run's clock (``StepContext.clock``) sleeps on the run's own
    stop event, so stopping one case never cuts another case's waits short."""

    now: Callable[[], float] = time.monotonic
    sleep: Callable[[float], None] = time.sleep

    @classmethod
    def stoppable(cls, stop: threading.Event) -> "Clock":
        return cls(sleep=stoppable_sleep(stop))


@dataclass
class PollOutcome(Generic[T]):
    """The last observation, whether it satisfied the condition, and what the wait cost."""

    done: bool
    value: T
    checks: int
    elapsed: float


def intervals(settings: PollSettings):
    """The sequence of sleeps between checks: initial, initial x factor, ... capped at max_interval."""
    current = settings.initial
    while True:
        yield min(current, settings.max_interval)
        current *= settings.factor


def poll(
    check: Callable[[], T],
    is_done: Callable[[T], bool],
    settings: PollSettings,
    *,
    describe: Callable[[T], str] = str,
    what: str = "condition",
    logger: logging.Logger | logging.LoggerAdapter | None = None,
    clock: Clock | None = None,
) -> PollOutcome[T]:
    """Call ``check`` until ``is_done(result)`` or the timeout; never sleeps past the deadline.

    Exceptions from ``check`` propagate at once: an error such as AccessDenied is not "not yet".
    """
    clock = clock or Clock()
    log = logger or logging.getLogger(__name__)
    start = clock.now()
    deadline = start + settings.timeout
    last_log: float | None = None
    checks = 0
    for pause in intervals(settings):
        value = check()
        checks += 1
        now = clock.now()
        if is_done(value):
            return PollOutcome(True, value, checks, now - start)
        if now >= deadline:
            return PollOutcome(False, value, checks, now - start)
        if last_log is None or now - last_log >= settings.log_every:
            last_log = now
            log.info(
                "Waiting for %s: %s (%.0f s of %.0f s elapsed, %d checks)",
                what, describe(value), now - start, settings.timeout, checks,
            )
        clock.sleep(max(0.0, min(pause, deadline - now)))
    raise AssertionError("unreachable")  # pragma: no cover
