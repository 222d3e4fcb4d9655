"""The one vocabulary of outcomes: how a step's status, a case's verdict or a check's verdict is written, marked and
coloured, wherever a reader sees it (the Prefect UI's artifacts, report.md, report.html, junit.xml, the command
line, Slack, a suite's timeline).

A new status is one line of :data:`STATUS`, and its word in the ``Literal`` below that may take it (a test checks
that every status they allow has its line; counts and tables follow :data:`STEP_STATUSES`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, get_args

#: how a step ended (see flows/evidence/results.py StepResult)
StepStatus = Literal["passed", "warned", "failed", "error", "skipped"]
#: how a case ended: passed only when every step passed
CaseStatus = Literal["passed", "failed"]
#: a case's verdict in a suite (``not run``: it never started its steps)
CaseVerdict = Literal["passed", "failed", "not run"]


@dataclass(frozen=True)
class Look:
    """How one status shows: ``short`` in a plain-text column (the CLI, a check's line), ``mark`` beside the word in
    markdown, ``slack`` as Slack's emoji code, ``colour`` (text, border, timeline bar) on ``background`` in HTML,
    ``junit`` the element a JUnit testcase of this status holds (none for a pass). A ``loud`` status is one a reader
    must not miss: a card's description writes it in capitals."""

    short: str
    mark: str
    slack: str
    colour: str
    background: str
    junit: str = ""
    loud: bool = False
    #: what the status means, for the reader of a report that is not passed ("" when it says itself)
    meaning: str = ""


#: every status a step, a case, a suite's case or a check can have: one line each
STATUS: dict[str, Look] = {
    "passed": Look("PASS", "✅", ":white_check_mark:", "#116329", "#dafbe1"),
    "warned": Look("WARN", "⚠️", ":warning:", "#9a6700", "#fff8c5", loud=True,
                   meaning="passed, but a check with severity: warn did not hold (it never fails the case)"),
    "failed": Look("FAIL", "❌", ":x:", "#a40e26", "#ffebe9", "failure", loud=True, meaning="a check did not hold"),
    "error": Look("ERROR", "💥", ":boom:", "#6639ba", "#fbefff", "error", loud=True,
                  meaning="the step could not do or check what it was asked (AWS refused, a wait for AWS timed out, "
                  "a bad input, the run was stopped, a bug)"),
    "skipped": Look("SKIP", "⏭️", ":next_track_button:", "#57606a", "#eaeef2", "skipped"),
    "not run": Look("NOT RUN", "⛔", ":no_entry:", "#8250df", "#fbefff", "error", loud=True,
                    meaning="the case never started its steps"),
}

#: the statuses a step can have, in the order counts list them
STEP_STATUSES: tuple[str, ...] = get_args(StepStatus)
#: what a loud step status means, for the reader of a report that is not passed
MEANING = {status: STATUS[status].meaning for status in STEP_STATUSES if STATUS[status].meaning}


def look(status: str) -> Look:
    """The look of a status (KeyError for a status the vocabulary does not know)."""
    return STATUS[status]


def marked(status: str) -> str:
    """``✅ passed``: the mark and the word, as markdown tables and headings show a status."""
    return f"{STATUS[status].mark} {status}"


def headline(status: str) -> str:
    """``❌ FAILED``: the mark and the word in capitals, for a case's verdict in its heading."""
    return f"{STATUS[status].mark} {status.upper()}"


def card_word(status: str) -> str:
    """The status as a card's description starts: a loud one in capitals (a card cuts a long description short),
    others as they are."""
    return status.upper() if STATUS[status].loud else status


def short(status: str) -> str:
    """``PASS``, ``FAIL``, ``NOT RUN``: the status in a plain-text column."""
    return STATUS[status].short


def check_verdict(passed: bool, warn: bool = False) -> str:
    """``✅ PASS``, ``❌ FAIL``, or ``⚠️ WARN`` for a check of severity warn that did not hold: a check's verdict as a
    line or a table cell shows it."""
    status = "passed" if passed else "warned" if warn else "failed"
    return f"{STATUS[status].mark} {STATUS[status].short}"


def check_mark(passed: bool) -> str:
    """``✅`` or ``❌``: a check's verdict as a narrow table cell shows it."""
    return STATUS["passed" if passed else "failed"].mark


def css_class(status: str) -> str:
    """The HTML class of a status (``not-run`` for ``not run``)."""
    return status.replace(" ", "-")


def css_rules() -> str:
    """The CSS of every status: its colours as variables (``--failed``, ``--failed-bg``), its badge (``.failed``) and
    its step section's left border (``section.step.failed``)."""
    names = "; ".join(f"--{css_class(s)}: {how.colour}; --{css_class(s)}-bg: {how.background}"
                      for s, how in STATUS.items())
    rules = [f":root {{ {names}; }}"]
    for status, how in STATUS.items():
        name = css_class(status)
        rules.append(f".{name} {{ color: {how.colour}; background: {how.background}; }}")
        rules.append(f"section.step.{name} {{ border-left-color: {how.colour}; background: none; }}")
        if how.loud:
            rules.append(f"section.step.{name} h3, section.step.{name} .msg {{ color: {how.colour}; }}")
    return "\n".join(rules) + "\n"
