"""What a run returns: the case's status and, per step, what it did and proved."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, Field

from flows.evidence.report import (
    Audit,
    CaseReport,
    CaseStatus,
    Locks,
    Notice,
    PackRef,
    StepReport,
)
from tasks.kit.files import HashedItem, StepFile


def plural(count: int, word: str) -> str:
    """``1 warning``, ``2 warnings``."""
    return f"{count} {word}{'' if count == 1 else 's'}"


def verdict(passed: bool, warnings: int, passed_word: str = "PASSED", failed_word: str = "FAILED") -> str:
    """``PASSED``, ``PASSED with 2 warnings``, ``FAILED`` (with its warnings too: ``FAILED with 1 warning``)."""
    word = passed_word if passed else failed_word
    return f"{word} with {plural(warnings, 'warning')}" if warnings else word

class StepResult(StepReport):
    """One step's outcome. ``failed``: the step ran and what it checked did not hold (a
    :class:`~tasks.kit.errors.CheckFailed`); ``error``: the step could not do or check what it was asked (AWS refused,
    a wait for AWS timed out, a bad input, the run was stopped, a bug); ``skipped``: not run because an earlier
    step failed; ``warned``: it ran and what did not hold are only warnings (``severity: warn``), listed in
    ``warnings`` -- a warned step counts as passed for the case. What the record keeps of it is its
    :class:`~flows.evidence.report.StepReport`; ``items`` are what the step hashed (uploaded inputs, query results)
    for the evidence pack, which lists them as its ``inputs`` and ``query_results``, not in the step's entry."""

    items: list[HashedItem] = Field(default_factory=list)
    #: files the step wrote for the evidence pack (copied into it under ``steps/<number>/``)
    files: list[StepFile] = Field(default_factory=list)

    @property
    def ok(self) -> bool:
        """Passed, or passed with warnings (``warned``): the case goes on and may pass."""
        return self.status in ("passed", "warned")

    def report(self) -> StepReport:
        """What report.json keeps of the step (all but its hashed items and files, which the pack lists apart)."""
        return StepReport.model_validate(self.model_dump(exclude={"items", "files"}))


class CaseResult(BaseModel):
    """The whole case: passed only when every step passed (and clean-up, if any, succeeded)."""

    case: str
    description: str = ""
    status: CaseStatus
    flow_run_id: str | None = None
    ui_url: str | None = None
    started_at: datetime
    ended_at: datetime
    duration_s: float
    variables: dict[str, Any] = Field(default_factory=dict)
    steps: list[StepResult]
    #: the resources the run locked (SSM parameters, S3 prefixes) and how long it waited for them
    locks: Locks | None = None
    #: the local folder of the run's evidence pack, once written
    evidence_dir: str | None = None
    #: the evidence pack, once written: folder, manifest_sha256, and s3_uri and url once uploaded
    pack: PackRef | None = None
    #: why the evidence pack could not be written (or uploaded, when the case asks): the run proves nothing then
    evidence_error: str | None = None
    #: who ran the case, where and with what (see flows/evidence/audit.py); report.json's ``audit``
    audit: Audit | None = None
    #: the Slack notice: sent or not, through what, and why not (None when the case asks for none)
    notice: Notice | None = None

    @property
    def passed(self) -> bool:
        return self.status == "passed"

    @property
    def warnings(self) -> int:
        """How many checks of the case warned (``severity: warn``): they never fail it."""
        return sum(len(s.warnings) for s in self.steps)

    @property
    def verdict(self) -> str:
        """``PASSED``, ``PASSED with 2 warnings`` or ``FAILED`` (``FAILED with 1 warning``)."""
        return verdict(self.passed, self.warnings)

    @property
    def first_failure(self) -> StepResult | None:
        return next((s for s in self.steps if s.status in ("failed", "error")), None)

    @classmethod
    def from_report(cls, report: CaseReport) -> CaseResult:
        """A case's result read back from its pack's report.json (how a suite collects a case run by a worker):
        all but what only the run itself knew (the steps' hashed items and files, where its pack is)."""
        run = report.run
        return cls(case=report.case.name, description=report.case.description, status=report.status,
                   flow_run_id=run.flow_run_id, ui_url=run.ui_url, started_at=run.started_at, ended_at=run.ended_at,
                   duration_s=run.duration_s, variables=report.variables, locks=run.locks, audit=report.audit,
                   notice=report.notice, steps=[StepResult.model_validate(s.model_dump()) for s in report.steps])


class StepFailed(Exception):
    """Carried by a failed step's Prefect state, so the flow gets the step's result back."""

    def __init__(self, result: StepResult) -> None:
        super().__init__(result.error or "step failed")
        self.result = result


class CaseFailed(Exception):
    """Raised (or carried by the flow run's Failed state) when the case fails; ``result`` has every step."""

    def __init__(self, result: CaseResult) -> None:
        failure = result.first_failure
        where = f" at step {failure.number} '{failure.label}': {failure.error}" if failure else ""
        super().__init__(f"case '{result.case}' failed{where}")
        self.result = result


class EvidenceFailed(CaseFailed):
    """Carried by the flow run's Failed state when the case passed but its evidence pack could not be written."""

    def __init__(self, result: CaseResult) -> None:
        Exception.__init__(self, f"case '{result.case}' passed, but its evidence pack could not be written: "
                                 f"{result.evidence_error}")
        self.result = result


def carried_result(state: Any, result_type: type, failure_type: type) -> Any:
    """The result a finished flow run's state carries: the value when passed, the failure's ``.result`` when
    failed; None when it carries neither (it never ran, crashed, ...)."""
    value = state.result(raise_on_failure=False)
    if isinstance(value, result_type):
        return value
    if isinstance(value, failure_type):
        return getattr(value, "result", None)
    return None


def result_of(state: Any) -> CaseResult | None:
    """The CaseResult carried by a finished flow run's state (passed or failed), if any."""
    return carried_result(state, CaseResult, CaseFailed)
