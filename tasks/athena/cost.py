"""The Athena cost guard: the bytes one query may scan (the step's ``max_scanned_bytes``) and the bytes all the
case's queries may scan together (the case's ``aws.athena_max_scanned_bytes``, kept on the run's context as
``StepContext.scanned``).

Athena bills by the bytes a query scans. A query whose progress (``GetQueryExecution``'s statistics, read while
it is waited for) already shows more than it may scan is stopped at once (``StopQueryExecution``); one that ends
having scanned more fails its step. Either way it is a *failed check*, not a crash, with the bytes scanned and
the limit in the evidence. A query the workgroup's own limit (``BytesScannedCutoffPerQuery``) cancelled fails
the same way.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any

from pydantic import AfterValidator, ByteSize

from tasks.athena.checks import CheckResult
from tasks.kit import markdown
from tasks.kit.errors import AWS_ERRORS, CHECK_FAILED, CheckFailed, aws_error
from tasks.kit.step import Meter

if TYPE_CHECKING:
    from types_boto3_athena import AthenaClient

__all__ = ["ByteCount", "ScanLimit", "scanned_bytes", "show_bytes", "stopped_over_limit", "workgroup_cancelled",
           "workgroup_cutoff"]


def _positive(value: ByteSize) -> ByteSize:
    if value <= 0:
        raise ValueError("must be more than 0 bytes")
    return value


#: a number of bytes: an integer, or a size with a unit (``500 MB``, ``10 GB``, ``1 TiB``)
ByteCount = Annotated[ByteSize, AfterValidator(_positive)]

#: what Athena says when a workgroup's BytesScannedCutoffPerQuery cancelled a query
_CUTOFF_REASON = "bytes scanned limit was exceeded"


def show_bytes(count: int) -> str:
    """``1.2 GB (1,200,000,000 bytes)``: readable in decimal units, as sizes are written here (``10 GB`` is 10^9
    bytes) and as Athena bills, and exact."""
    for unit, size in (("TB", 10**12), ("GB", 10**9), ("MB", 10**6), ("kB", 10**3)):
        if count >= size:
            return f"{count / size:.3g} {unit} ({count:,} bytes)"
    return f"{count:,} bytes"


class Bytes(int):
    """A number of bytes that reads as :func:`show_bytes` in messages and tables, and is a number in JSON."""

    def __str__(self) -> str:
        return show_bytes(self)


def scanned_bytes(execution: dict[str, Any]) -> int:
    """The bytes a query execution has scanned so far (0 before Athena reports any)."""
    return int(execution.get("Statistics", {}).get("DataScannedInBytes") or 0)


def workgroup_cancelled(execution: dict[str, Any]) -> bool:
    """Whether the workgroup's own limit on bytes scanned per query stopped this query."""
    reason = str(execution.get("Status", {}).get("StateChangeReason") or "")
    return _CUTOFF_REASON in reason.lower()


def workgroup_cutoff(athena: AthenaClient, workgroup: str) -> int | None:
    """The workgroup's own limit on bytes scanned per query (``BytesScannedCutoffPerQuery``), None when it has
    none (``athena:GetWorkGroup``)."""
    try:
        response = athena.get_work_group(WorkGroup=workgroup)
    except AWS_ERRORS as exc:
        raise aws_error("Athena GetWorkGroup", f"workgroup {workgroup}", exc) from None
    cutoff = response.get("WorkGroup", {}).get("Configuration", {}).get("BytesScannedCutoffPerQuery")
    return int(cutoff) if cutoff else None


@dataclass
class ScanLimit:
    """What one query may scan: its own cap, and what is left of the case's total when it starts."""

    per_query: int | None
    case: Meter

    @classmethod
    def of(cls, per_query: int | None, case: Meter) -> "ScanLimit":
        """The limit of a query about to start; a CheckFailed when the case's queries already used up the total
        (nothing is sent to Athena)."""
        limit = cls(per_query, case)
        if case.limit is not None and case.total >= case.limit:
            raise CheckFailed(f"the case's Athena queries already scanned {show_bytes(case.total)}, its limit "
                              f"(aws.athena_max_scanned_bytes) is {show_bytes(case.limit)}: this query was not "
                              "started", code=CHECK_FAILED,
                              details={"case_scanned_bytes": case.total, "case_max_scanned_bytes": case.limit},
                              checks=[CheckResult("aws.athena_max_scanned_bytes", False, Bytes(case.limit),
                                                  Bytes(case.total), "before this query", relation="<").record()])
        return limit

    @property
    def active(self) -> bool:
        return self.per_query is not None or self.case.limit is not None

    def bound(self) -> int | None:
        """The most this query may scan now: its cap, or what is left of the case's total, the smaller."""
        bounds = [b for b in (self.per_query, self.case.remaining()) if b is not None]
        return min(bounds) if bounds else None

    def over(self, execution: dict[str, Any]) -> bool:
        """Whether a query's progress already shows more than it may scan (then it is stopped)."""
        bound = self.bound()
        return bound is not None and scanned_bytes(execution) > bound

    def charge(self, scanned: int) -> list[CheckResult]:
        """Add a finished (or stopped) query's bytes to the case's total; the checks of both limits."""
        _, after = self.case.add(scanned)
        checks = []
        if self.per_query is not None:
            checks.append(CheckResult("max_scanned_bytes", scanned <= self.per_query, Bytes(self.per_query),
                                      Bytes(scanned), relation="<="))
        if self.case.limit is not None:
            # the case's total so far, this query included (what its earlier queries scanned is in their evidence)
            checks.append(CheckResult("aws.athena_max_scanned_bytes", after <= self.case.limit,
                                      Bytes(self.case.limit), Bytes(after), relation="<="))
        return checks

    def facts(self) -> dict[str, Any]:
        """The limits for the step's details."""
        return {"max_scanned_bytes": self.per_query, "case_max_scanned_bytes": self.case.limit,
                "case_scanned_bytes": self.case.total}


def stopped_over_limit(query_id: str, execution: dict[str, Any], limit: ScanLimit, problem: str | None,
                       *, by_workgroup: bool = False) -> CheckFailed:
    """The failure of a query stopped for scanning too much (by this step, or by the workgroup's own limit), with
    the bytes and the limit in the evidence."""
    scanned = scanned_bytes(execution)
    bound = limit.bound()
    checks = limit.charge(scanned)
    if by_workgroup:
        reason = str(execution.get("Status", {}).get("StateChangeReason") or "")
        message = (f"Athena query {query_id} was cancelled by its workgroup's limit on bytes scanned per query "
                   f"after scanning {show_bytes(scanned)}: {reason}")
    else:
        stopped = "stopped it with StopQueryExecution" if problem is None else f"could not stop it: {problem}"
        message = (f"Athena query {query_id} scanned {show_bytes(scanned)}, more than it may (at most "
                   f"{show_bytes(bound or 0)}); {stopped}")
    failed = [c for c in checks if not c.passed]
    if failed:
        message += "; " + "; ".join(c.text() for c in failed)
    details = {"query_id": query_id, "data_scanned_bytes": scanned, **limit.facts(),
               "stopped_by": "workgroup" if by_workgroup else "pipeline-test", "checks": [c.to_dict() for c in checks]}
    body: str = markdown.facts([("Query id", markdown.code(query_id)), ("Data scanned", show_bytes(scanned))])
    if checks:
        body = ("**Checks**\n\n" + markdown.table(["verdict", "check", "expected", "actual"], [c.row() for c in checks])
                + "\n\n" + body)
    return CheckFailed(message, code=CHECK_FAILED, details=details, markdown=body,
                       checks=[c.record() for c in checks])
