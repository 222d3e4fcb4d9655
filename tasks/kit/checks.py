"""One check a step made, typed: the record every step kind gives for each thing it checked.

A step's outcome (``tasks.kit.step.StepOutcome.checks``), or the :class:`~tasks.kit.errors.StepError` that stopped it
(``checks=``), carries these; the engine puts them on the step's result (``flows.evidence.results.StepResult.checks``),
report.json holds them (its schema's ``check``) and report.html renders its checks table from them. The kinds
keep their own check types (Athena's ``CheckResult``, object content's ``Check``, ...) and give a record of each.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

#: ``warned``: it did not hold, and it only warns (``severity: warn``): the step is warned, the case may pass
Verdict = Literal["passed", "warned", "failed"]


class CheckRecord(BaseModel):
    """One check: what was checked (and where, e.g. the object key), what was expected, what was found (both as
    the evidence shows them, secrets masked) and the verdict."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(description="What was checked: 'row_count', 'final state', 'count', a JMESPath, ...")
    expected: str = Field(description="What was expected, as shown (with its relation: '>= 3', 'exactly 0').")
    actual: str = Field(description="What was found, as shown (with a note, if any).")
    verdict: Verdict
    where: str = Field("", description="Where it was checked, when a step checks several things (an object key, "
                                       "a parameter); empty otherwise.")

    @classmethod
    def of(cls, name: str, passed: bool, expected: object, actual: object, where: str = "",
           severity: str | None = "error") -> CheckRecord:
        """A record from a check's parts (values shown with ``str``); a check with ``severity`` ``warn`` that did
        not hold is ``warned``."""
        verdict: Verdict = "passed" if passed else "warned" if severity == "warn" else "failed"
        return cls(name=name, expected=_text(expected), actual=_text(actual), verdict=verdict, where=where)

    @property
    def passed(self) -> bool:
        return self.verdict == "passed"


def _text(value: object) -> str:
    return "" if value is None else value if isinstance(value, str) else str(value)
