"""The test run's progress lines (tests/conftest.py's RunProgress), fed reports as pytest-xdist's controller is."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from tests.fixtures.session import RunProgress


class Reporter:
    def __init__(self) -> None:
        self.lines: list[str] = []
        self._session = SimpleNamespace(testscollected=3)

    def write(self, text: str) -> None:
        pass

    def write_line(self, line: str) -> None:
        self.lines.append(line)


def report(nodeid: str, when: str, outcome: str = "passed") -> Any:
    return SimpleNamespace(nodeid=nodeid, when=when, failed=outcome == "failed")


def test_progress_lines_count_done_and_failed_and_name_what_runs() -> None:
    reporter, now = Reporter(), [0.0]
    progress = RunProgress(reporter, every=30, clock=lambda: now[0])
    for nodeid in ("t::a", "t::b"):
        progress.pytest_runtest_logstart(nodeid)
    progress.pytest_runtest_logreport(report("t::a", "call", "failed"))
    assert reporter.lines == ["progress: failed t::a (call, at 0 s)"]  # at once
    progress.pytest_runtest_logreport(report("t::a", "teardown"))
    now[0] = 31.0
    progress.pytest_runtest_logstart("t::c")
    progress.pytest_runtest_logreport(report("t::c", "setup"))
    assert reporter.lines[-1] == "progress: 1/3 tests done, 1 failed, 31 s; running: t::b (31 s), t::c (0 s)"
    progress.pytest_runtest_logreport(report("t::c", "teardown"))
    assert len(reporter.lines) == 2  # the next one 30 s later
