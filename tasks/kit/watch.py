"""What the read-only ``expect_*`` kinds of DynamoDB, SQS and CloudWatch share: count conditions (exactly /
at least / at most) and watching a condition: wait until it holds, then, with ``hold``, that it keeps holding.

``watch`` is built on :func:`tasks.kit.polling.poll` (the growing interval, the run's clock): first a wait of up to
``wait.timeout`` for the condition, then, for a ``hold`` of H seconds, checks at the same growing interval
until H seconds have passed; the first check on which the condition no longer holds ends the watch.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Annotated, Any, Callable, Generic, Literal, TypeVar, Union

from pydantic import Field, model_validator

from tasks.kit.checks import CheckRecord
from tasks.kit.errors import CHECK_FAILED, TIMED_OUT, CheckFailed
from tasks.kit.polling import MAX_WAIT_SECONDS, Clock, PollSettings, poll
from tasks.kit.step import SpecModel

T = TypeVar("T")


class Count(SpecModel):
    """How many: exactly (``equals``), at least (``min``), at most (``max``); ``min`` and ``max`` may go together."""

    equals: int | None = Field(None, ge=0, description="Exactly this many.")
    min: int | None = Field(None, ge=0, description="At least this many.")
    max: int | None = Field(None, ge=0, description="At most this many.")

    @model_validator(mode="after")
    def _one(self) -> "Count":
        if self.equals is None and self.min is None and self.max is None:
            raise ValueError("give equals, min and/or max")
        if self.equals is not None and (self.min is not None or self.max is not None):
            raise ValueError("give equals (exact) or min/max, not both")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"min ({self.min}) is greater than max ({self.max})")
        return self

    def holds(self, actual: int) -> bool:
        if self.equals is not None:
            return actual == self.equals
        return (self.min is None or actual >= self.min) and (self.max is None or actual <= self.max)

    def exceeded(self, actual: int) -> bool:
        """True when ``actual`` is above what is allowed (for a count that only grows, waiting cannot help)."""
        limit = self.equals if self.equals is not None else self.max
        return limit is not None and actual > limit

    def describe(self) -> str:
        """``exactly 0``, ``at least 1``, ``at most 3``, ``between 1 and 5``."""
        if self.equals is not None:
            return f"exactly {self.equals}"
        if self.min is not None and self.max is not None:
            return f"between {self.min} and {self.max}"
        return f"at least {self.min}" if self.min is not None else f"at most {self.max}"


#: a count as a spec writes it: a number (exactly that many) or ``{min: 1}``, ``{max: 0}``, ``{min: 1, max: 5}``
CountSpec = Union[Annotated[int, Field(ge=0)], Count]


def as_count(value: int | Count) -> Count:
    """The Count a spec's count means (a bare number is an exact count)."""
    return value if isinstance(value, Count) else Count(equals=value)


def hold_field(what: str) -> float:
    """The ``hold`` field of an expect kind (seconds the condition must keep holding once it holds)."""
    return Field(0.0, ge=0, le=MAX_WAIT_SECONDS, description=f"Once {what} holds, it must keep holding for this "
                 "many seconds (checked at the wait's growing interval; e.g. a dead-letter queue stays empty). "
                 "0: checked until it holds, once.")


@dataclass
class Watched(Generic[T]):
    """How a watch ended: ``met`` (held, and kept holding for the hold time), ``timed_out`` (never held in
    time), ``hopeless`` (cannot hold any more, e.g. a count that only grows is past its maximum), ``broken`` (held,
    then stopped holding within the hold time). ``value`` is the observation that decided it."""

    outcome: Literal["met", "timed_out", "hopeless", "broken"]
    value: T
    checks: int
    #: seconds until the condition held (or until the wait gave up)
    waited: float
    #: seconds it was then watched while holding (the hold time when met; until it broke when broken)
    held: float = 0.0

    @property
    def met(self) -> bool:
        return self.outcome == "met"

    def timing(self) -> str:
        """``after 1.2 s and 3 check(s)``, with the hold time when there was one."""
        text = f"after {self.waited:.1f} s"
        if self.held:
            text += f", then held for {self.held:.1f} s"
        return f"{text} ({self.checks} check(s))"

    def record(self, name: str, expected: str, seen: str) -> CheckRecord:
        """The typed check of this watch: ``expected`` (what was waited for), what was last ``seen`` (already
        masked) and how the watch ended."""
        how = {"met": "", "timed_out": "timed out ", "hopeless": "cannot hold any more, ",
               "broken": "held, then no longer, "}[self.outcome]
        return CheckRecord.of(name, self.met, expected, f"{seen} ({how}{self.timing()})")


def watch(check: Callable[[], T], holds: Callable[[T], bool], wait: PollSettings, *, hold: float = 0.0,
          hopeless: Callable[[T], bool] | None = None, describe: Callable[[T], str] = str, what: str = "condition",
          logger: logging.Logger | logging.LoggerAdapter | None = None, clock: Clock | None = None) -> Watched[T]:
    """Wait (``wait``) until ``holds(check())``; then, for ``hold`` seconds, check that it still holds.

    Exceptions from ``check`` (AWS errors) propagate at once.
    """
    first = poll(check, lambda v: holds(v) or (hopeless is not None and hopeless(v)), wait, describe=describe,
                 what=what, logger=logger, clock=clock)
    if not first.done:
        return Watched("timed_out", first.value, first.checks, first.elapsed)
    if not holds(first.value):
        return Watched("hopeless", first.value, first.checks, first.elapsed)
    if not hold:
        return Watched("met", first.value, first.checks, first.elapsed)
    clock = clock or Clock()
    started = clock.now()
    pause = min(wait.initial, hold)
    clock.sleep(pause)  # the check that found it holding was the first of the hold
    kept = poll(check, lambda v: not holds(v), wait.model_copy(update={"timeout": max(hold - pause, 1e-3)}),
                describe=describe, what=f"{what} to keep holding", logger=logger, clock=clock)
    held = clock.now() - started
    return Watched("broken" if kept.done else "met", kept.value, first.checks + kept.checks, first.elapsed, held)


def unmet(watched: Watched[Any], what: str, seen: str, *, details: dict[str, Any], markdown: str,
          check: str) -> CheckFailed:
    """The failure of a watch that did not end ``met``: what was expected, how it ended, what was last seen
    (``seen``, already masked), and its typed record named ``check``. Not there in time is a check that did not
    hold too (code ``Timeout``)."""
    if watched.outcome == "timed_out":
        message = f"timed out after {watched.waited:.0f} s ({watched.checks} checks) waiting for {what}; found {seen}"
    elif watched.outcome == "broken":
        message = (f"{what}: held after {watched.waited:.1f} s, then no longer after {watched.held:.1f} s of the "
                   f"hold time; found {seen}")
    else:
        message = f"{what}: cannot hold any more; found {seen}"
    return CheckFailed(message, code=TIMED_OUT if watched.outcome == "timed_out" else CHECK_FAILED,
                       details=details, markdown=markdown, checks=[watched.record(check, what, seen)])
