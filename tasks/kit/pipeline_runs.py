"""Waiting for a run of something a pipeline runs in its own time: a Glue job run, a crawl, a Step Functions
execution. Shared by the step kinds that start one or wait for the one the pipeline started.

* :class:`RunWait`: how long to wait (the run is stopped when it runs out, unless told otherwise) and how often
  to look, with the growing interval of :func:`tasks.kit.polling.poll`;
* :func:`watch`: look at the run until it is in a final state, recording each state as observed (the state
  history of the evidence); on timeout it stops the run (when asked) and raises a ``Timeout`` error saying so;
  when the wait is cut short (the run is stopping, an AWS error) it stops the run if the step started it;
* :func:`newest_since`: the newest of the runs a pipeline started since the case began.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Callable, Iterable, TypeVar

from pydantic import Field

from tasks.kit import markdown as md
from tasks.kit.errors import TIMED_OUT, StepError
from tasks.kit.polling import (
    MAX_INTERVAL_SECONDS,
    MAX_WAIT_SECONDS,
    MIN_INITIAL_SECONDS,
    MIN_INTERVAL_SECONDS,
    Clock,
    PollSettings,
    poll,
)
from tasks.kit.step import format_duration

T = TypeVar("T")
Logger = logging.Logger | logging.LoggerAdapter


class RunWait(PollSettings):
    """Waiting for a run (a job run, a crawl, an execution): its timeout and the growing interval between looks,
    with defaults for work that takes minutes."""

    timeout: float = Field(3600.0, gt=0, le=MAX_WAIT_SECONDS,
                           description="Give up after this many seconds (and stop the run, with stop_on_timeout).")
    initial: float = Field(2.0, ge=MIN_INITIAL_SECONDS, le=MAX_INTERVAL_SECONDS,
                           description="First interval between checks.")
    max_interval: float = Field(30.0, ge=MIN_INTERVAL_SECONDS,
                                le=MAX_INTERVAL_SECONDS, description="Intervals never grow past this.")
    log_every: float = Field(60.0, gt=0, le=MAX_INTERVAL_SECONDS,
                             description="Log progress at most this often while waiting.")


@dataclass
class StateHistory:
    """The states of a run as this step observed them: each change with the seconds since the wait began."""

    clock: Clock
    start: float = 0.0
    changes: list[tuple[float, str]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.start = self.clock.now()

    def see(self, state: str) -> None:
        if not self.changes or self.changes[-1][1] != state:
            self.changes.append((round(self.clock.now() - self.start, 3), state))

    @property
    def last(self) -> str:
        return self.changes[-1][1] if self.changes else "UNKNOWN"

    def to_list(self) -> list[dict[str, Any]]:
        return [{"at_s": at, "state": state} for at, state in self.changes]

    def markdown(self) -> md.Md:
        return self.markdown_of(self.to_list())

    @staticmethod
    def markdown_of(changes: list[dict[str, Any]]) -> md.Md:
        """``RUNNING (0.0 s) → SUCCEEDED (42.0 s)``, escaped; ``–`` when nothing was observed."""
        shown = " → ".join(f"{md.text(c['state'])} ({format_duration(c['at_s'])})" for c in changes)
        return md.Md(shown or "–")


@dataclass
class WatchedRun:
    """A run that reached a final state: its last description, the states observed, how long we waited."""

    value: dict[str, Any]
    history: StateHistory
    elapsed: float
    checks: int


def watch_run(
    describe: Callable[[], dict[str, Any]],
    state_of: Callable[[dict[str, Any]], str],
    done: Callable[[dict[str, Any]], bool],
    settings: PollSettings,
    *,
    what: str,
    stop: Callable[[], str],
    stop_on_timeout: bool,
    started_here: bool,
    logger: Logger | None = None,
    clock: Clock | None = None,
    history: StateHistory | None = None,
) -> WatchedRun:
    """Describe the run until ``done`` (its state is final); return the last description and the states observed.

    ``stop()`` asks AWS to stop the run and says what became of it (``"stopped it with ..."``, ``"could not
    stop it: ..."``). On timeout the run is stopped when ``stop_on_timeout``, and a ``Timeout`` StepError says
    what became of it. When the wait is cut short (the case run is stopping, an AWS error while describing) a
    run this step started is stopped, so nothing it started runs on.
    """
    clock = clock or Clock()
    history = history or StateHistory(clock)

    def check() -> dict[str, Any]:
        value = describe()
        history.see(state_of(value))
        return value

    try:
        outcome = poll(check, done, settings, describe=state_of, what=what,
                       logger=logger, clock=clock)
    except BaseException:
        if started_here:
            stopped = stop()
            if logger is not None:
                logger.warning("The wait for %s was cut short: %s", what, stopped)
        raise
    if not outcome.done:
        stopped = stop() if stop_on_timeout else "left it running (stop_on_timeout is false)"
        raise StepError(
            f"{what} did not finish within {settings.timeout:g} s (still {state_of(outcome.value)} after "
            f"{outcome.checks} checks); {stopped}",
            code=TIMED_OUT,
            details={"state": state_of(outcome.value), "states_observed": history.to_list(), "stop": stopped},
        )
    return WatchedRun(outcome.value, history, outcome.elapsed, outcome.checks)


def as_utc(value: Any) -> datetime | None:
    """A timestamp from boto3 (an aware datetime) in UTC; naive ones are taken as UTC; None for anything else."""
    if not isinstance(value, datetime):
        return None
    return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value.astimezone(timezone.utc)


def newest_since(items: Iterable[T], started: Callable[[T], Any], since: float,
                 accept: Callable[[T], bool] = lambda _: True) -> T | None:
    """The newest item started at or after ``since`` (seconds since the epoch, as ``StepContext.started_at``)
    that ``accept`` takes, or None."""
    found = [(when, i, item) for i, item in enumerate(items)
             if (when := as_utc(started(item))) is not None and when.timestamp() >= since and accept(item)]
    return max(found, key=lambda f: (f[0], f[1]))[2] if found else None


def duration_s(start: Any, end: Any) -> float | None:
    """Seconds between two boto3 timestamps, or None when one is missing."""
    a, b = as_utc(start), as_utc(end)
    return round((b - a).total_seconds(), 3) if a and b else None


def when(value: Any) -> str:
    """A boto3 timestamp as ISO 8601 UTC (seconds), or ``–``."""
    moment = as_utc(value)
    return moment.isoformat(timespec="seconds") if moment else "–"


def took(seconds: float | None) -> str:
    """`` in 4 min 02 s`` for a summary line, or "" when the duration is not known."""
    return f" in {format_duration(seconds)}" if seconds is not None else ""
