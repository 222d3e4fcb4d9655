"""The growing-interval poller, on a fake clock (no real sleeping)."""

from __future__ import annotations

import logging

import pytest

from tasks.kit.polling import PollSettings, intervals, poll
from tests.helpers import FakeClock


def test_first_check_is_immediate_and_done_stops() -> None:
    fake = FakeClock()
    out = poll(lambda: True, bool, PollSettings(), clock=fake.clock)
    assert out.done and out.checks == 1 and fake.sleeps == []


def test_intervals_grow_and_are_capped() -> None:
    gen = intervals(PollSettings(initial=1, factor=2, max_interval=5))
    assert [next(gen) for _ in range(5)] == [1, 2, 4, 5, 5]


def test_event_at_d_is_noticed_within_a_quarter_of_d_plus_half_a_second() -> None:
    for d in (0.5, 2, 5, 20, 60, 200):
        fake = FakeClock()
        out = poll(lambda: fake.t >= d, bool, PollSettings(timeout=1000), clock=fake.clock)
        assert out.done
        assert out.elapsed - d <= 0.25 * d + 0.5, (d, out.elapsed)
        assert out.checks <= 40, (d, out.checks)


def test_timeout_is_never_overshot_and_reports_last_value() -> None:
    fake = FakeClock()
    out = poll(lambda: fake.t, lambda v: False, PollSettings(timeout=10, max_interval=3), clock=fake.clock)
    assert not out.done
    assert out.elapsed == pytest.approx(10)
    assert out.value == pytest.approx(10)


def test_errors_propagate_at_once() -> None:
    fake = FakeClock()

    def check() -> bool:
        raise PermissionError("AccessDenied")

    with pytest.raises(PermissionError):
        poll(check, bool, PollSettings(), clock=fake.clock)
    assert fake.sleeps == []


def test_progress_is_logged_but_throttled(caplog: pytest.LogCaptureFixture) -> None:
    fake = FakeClock()
    caplog.set_level(logging.INFO)
    poll(lambda: False, bool, PollSettings(timeout=60, log_every=15), what="thing", clock=fake.clock,
         logger=logging.getLogger("t"))
    lines = [r.getMessage() for r in caplog.records if "Waiting for thing" in r.getMessage()]
    assert 3 <= len(lines) <= 5  # at t=0, then about every 15 s of 60
