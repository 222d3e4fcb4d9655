"""What a run returns: the case's status and, per step, what it did and proved."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, Field

from tasks.kit.checks import CheckRecord
from tasks.kit.files import HashedItem, StepFile

StepStatus = Literal["passed", "warned", "failed", "error", "skipped"]


def plural(count: int, word: str) -> str:
    """``1 warning``, ``2 warnings``."""
    return f"{count} {word}{'' if count == 1 else 's'}"


def verdict(passed: bool, warnings: int, passed_word: str = "PASSED", failed_word: str = "FAILED") -> str:
    """``PASSED``, ``PASSED with 2 warnings``, ``FAILED`` (with its warnings too: ``FAILED with 1 warning``)."""
    word = passed_word if passed else failed_word
    return f"{word} with {plural(warnings, 'warning')}" if warnings else word


class EvidenceLink(BaseModel):
    """A link of a step's evidence."""

    text: str
    url: str


class StepResult(BaseModel):
    """One step's outcome. ``failed``: the step ran and what it checked did not hold (a
    :class:`~tasks.kit.errors.CheckFailed`); ``error``: the step could not do or check what it was asked (AWS refused,
    a wait for AWS timed out, a bad input, the run was stopped, a bug); ``skipped``: not run because an earlier
    step failed; ``warned``: it ran and what did not hold are only warnings (``severity: warn``), listed in
    ``warnings`` -- a warned step counts as passed for the case. ``items`` are what the step hashed (uploaded
    inputs, query results) for the evidence pack; the pack lists them as its ``inputs`` and ``query_results``, not
    in the step's entry."""

    number: str
    label: str
    kind: str
    group: str | None = None
    description: str | None = None
    status: StepStatus
    started_at: datetime | None = None
    duration_s: float = 0.0
    summary: str = ""
    error: str | None = None
    error_code: str | None = None
    #: the checks that did not hold but only warn (``severity: warn``), one line each (status ``warned``)
    warnings: list[str] = Field(default_factory=list)
    details: dict[str, Any] = Field(default_factory=dict)
    request_ids: list[str] = Field(default_factory=list)
    items: list[HashedItem] = Field(default_factory=list)
    #: files the step wrote for the evidence pack (copied into it under ``steps/<number>/``)
    files: list[StepFile] = Field(default_factory=list)
    #: the step's readable evidence (markdown: what it did, watched and proved, its checks), as its UI artifact
    #: shows it: the pack's report.md renders it from here, with the same code, so the pack holds what the UI does
    evidence: str = ""
    #: the step's links (AWS console, or the emulator's URL), as in its UI artifact
    links: list[EvidenceLink] = Field(default_factory=list)
    #: what the step checked, each with expected, actual and verdict (typed, from its outcome or its failure):
    #: report.json's ``checks``, and report.html's checks table
    checks: list[CheckRecord] = Field(default_factory=list)

    @property
    def ok(self) -> bool:
        """Passed, or passed with warnings (``warned``): the case goes on and may pass."""
        return self.status in ("passed", "warned")


class CaseResult(BaseModel):
    """The whole case: passed only when every step passed (and clean-up, if any, succeeded)."""

    case: str
    description: str = ""
    status: Literal["passed", "failed"]
    flow_run_id: str | None = None
    ui_url: str | None = None
    started_at: datetime
    ended_at: datetime
    duration_s: float
    variables: dict[str, Any] = Field(default_factory=dict)
    steps: list[StepResult]
    #: the resources the run locked (SSM parameters, S3 prefixes) and how long it waited for them
    locks: dict[str, Any] | None = None
    #: the local folder of the run's evidence pack, once written
    evidence_dir: str | None = None
    #: the evidence pack, once written: folder, manifest_sha256, and s3_uri and url once uploaded
    pack: dict[str, Any] | None = None
    #: why the evidence pack could not be written (or uploaded, when the case asks): the run proves nothing then
    evidence_error: str | None = None
    #: who ran the case, where and with what (see flows/evidence/audit.py); report.json's ``audit``
    audit: dict[str, Any] | None = None
    #: the Slack notice: sent or not, through what, and why not (None when the case asks for none)
    notice: dict[str, Any] | None = None

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
