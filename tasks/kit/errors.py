"""Errors that a step raises, with messages a user can act on (no bare tracebacks).

Every failure names the step, the AWS resource and, for AWS calls, AWS's error code. The plain functions
under ``tasks/`` raise these; the flow turns them into a step with the message as its error.

Two kinds of failure, told apart by class: :class:`CheckFailed` -- the step could look and what it checked did
not hold (the step is ``failed``); any other :class:`StepError` -- the step could not do or check what it was
asked (AWS refused, a wait for AWS timed out, a bad input, ...: the step is ``error``). Codes are the constants
below, one per meaning, or AWS's own error code passed through as AWS gives it (``AccessDenied``, ...).
"""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING, Any, Literal, Mapping

from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    EndpointConnectionError,
    NoCredentialsError,
    NoRegionError,
    ProfileNotFound,
)

from tasks.kit.files import HashedItem, StepFile

if TYPE_CHECKING:
    from tasks.kit.checks import CheckRecord

# ------------------------------------------------------------------------------------------------ error codes
#: what a step checked did not hold (an expectation, a count, a Lambda response, a query's checks)
CHECK_FAILED = "CheckFailed"
#: a wait ran out of time (for objects to appear, for a query to finish)
TIMED_OUT = "Timeout"
#: the run was stopped (Ctrl+C, SIGTERM, cancelled) while the step or wait was under way
INTERRUPTED = "Interrupted"
#: one or more undo actions of the clean-up failed
CLEANUP_FAILED = "CleanupFailed"
#: something the step needs does not exist (a parameter to delete, ...)
NOT_FOUND = "NotFound"
#: an object the step would write is already there and overwriting is not allowed
OBJECT_EXISTS = "ObjectExists"
#: an object is too large for the checks asked of it (column conditions above conditions_max_mb)
OBJECT_TOO_LARGE = "ObjectTooLarge"
#: what S3 stored is not what was sent
CHECKSUM_MISMATCH = "ChecksumMismatch"
#: an undo could not put everything back / cannot be done at all
RESTORE_INCOMPLETE = "RestoreIncomplete"
RESTORE_IMPOSSIBLE = "RestoreImpossible"
#: an undo record is too large for the journal
JOURNAL_ENTRY_TOO_LARGE = "JournalEntryTooLarge"
#: a journal entry names an undo kind this version does not know
UNKNOWN_UNDO_KIND = "UnknownUndoKind"
#: the run's resource locks could not be taken (the Prefect server refused) / not within the wait
LOCK_UNAVAILABLE = "LockUnavailable"
LOCK_TIMEOUT = "LockTimeout"
#: local set-up problems of the AWS client (no botocore error code exists for these)
NO_CREDENTIALS = "NoCredentials"
NO_REGION = "NoRegion"
PROFILE_NOT_FOUND = "ProfileNotFound"
ENDPOINT_UNREACHABLE = "EndpointConnectionError"
#: AWS's codes that the tool itself raises with (same meaning as AWS's, so the same name)
AWS_NO_SUCH_BUCKET = "NoSuchBucket"
AWS_PARAMETER_NOT_FOUND = "ParameterNotFound"
AWS_PRECONDITION_FAILED = "PreconditionFailed"


class StepError(Exception):
    """A step could not do or check what it was asked to (its status is ``error``); the message is shown to
    the user as is. ``markdown`` is the step's own evidence (what it did and saw before it stopped), shown as
    the failed step's report; ``hashed_items`` what it hashed before it stopped (they go into the pack);
    ``checks`` what it checked, typed (:class:`tasks.kit.checks.CheckRecord`), passed and not."""

    def __init__(self, message: str, *, code: str | None = None, details: dict[str, Any] | None = None,
                 markdown: str | None = None, hashed_items: list[HashedItem] | None = None,
                 files: list[StepFile] | None = None, checks: list[CheckRecord] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        #: what the step found before it failed (shown in the evidence)
        self.details: dict[str, Any] = details or {}
        self.markdown = markdown
        self.hashed_items: list[HashedItem] = list(hashed_items or [])
        #: files it wrote for the evidence pack before it stopped
        self.files: list[StepFile] = list(files or [])
        #: what it checked before it stopped, each with its verdict (report.html's checks table)
        self.checks: list[CheckRecord] = list(checks or [])

    def with_message(self, message: str) -> StepError:
        """The same error (class, code, details, evidence) with another message, e.g. one with secrets masked."""
        twin = copy.copy(self)
        twin.message, twin.args = message, (message,)
        return twin


class CheckFailed(StepError):
    """The step could look, and what it checked did not hold: the step's status is ``failed``, or ``warned`` when
    every check that did not hold says ``severity: warn`` (``severity="warn"``; ``warnings`` then lists them, one
    line each) or the step itself does."""

    def __init__(self, message: str, *, code: str | None = CHECK_FAILED, details: dict[str, Any] | None = None,
                 markdown: str | None = None, hashed_items: list[HashedItem] | None = None,
                 files: list[StepFile] | None = None, checks: list[CheckRecord] | None = None,
                 severity: Literal["error", "warn"] = "error", warnings: list[str] | None = None) -> None:
        super().__init__(message, code=code, details=details, markdown=markdown, hashed_items=hashed_items,
                         files=files, checks=checks)
        self.severity = severity
        #: the checks that did not hold, one line each (default: the message)
        self.warnings: list[str] = list(warnings or [message])


def failed_checks(texts: list[tuple[str, str]], total: int, what: str = "checks", shown: int = 10,
                  **evidence: Any) -> CheckFailed | None:
    """The failure of a step's checks, from ``(severity, text)`` of each check that did not hold among ``total``:
    None when none failed; a ``warn`` failure when every one of them is a warning, else an ``error`` one (its
    message names both kinds; at most ``shown`` of each). ``evidence``: details, markdown, hashed_items, files."""
    if not texts:
        return None
    errors = [t for s, t in texts if s != "warn"]
    warned = [t for s, t in texts if s == "warn"]

    def listed(items: list[str]) -> str:
        return "; ".join(items[:shown]) + (f"; and {len(items) - shown} more" if len(items) > shown else "")

    if errors:
        message = f"{len(errors)} of {total} {what} failed: {listed(errors)}"
        if warned:
            message += f" (and {len(warned)} warning(s): {listed(warned)})"
        return CheckFailed(message, **evidence)
    return CheckFailed(f"{len(warned)} of {total} {what} warned: {listed(warned)}", severity="warn",
                       warnings=warned, **evidence)


class AwsCallError(StepError):
    """An AWS API call failed; ``code`` is AWS's error code (AccessDenied, NoSuchBucket, ...)."""


def error_code(exc: ClientError) -> str:
    """AWS's error code of a ClientError, falling back to the HTTP status for bodiless HEAD errors."""
    err = exc.response.get("Error", {})
    code = str(err.get("Code") or exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or "Unknown")
    return {"403": "AccessDenied", "404": NOT_FOUND, "412": AWS_PRECONDITION_FAILED}.get(code, code)


def request_id(response: Mapping[str, Any]) -> str | None:
    """The AWS request id of a response (or of an error response), for the evidence."""
    meta = response.get("ResponseMetadata", {})
    return meta.get("RequestId") or meta.get("HTTPHeaders", {}).get("x-amz-request-id")


def aws_error(action: str, resource: str, exc: Exception) -> AwsCallError:
    """Turn a botocore failure into a message naming the action, the resource and AWS's error code.

    ``action`` is what was attempted (``"S3 PutObject"``), ``resource`` what it was attempted on
    (``"s3://bucket/key"``). The step's name is added by the flow, which knows it.
    """
    if isinstance(exc, ClientError):
        code = error_code(exc)
        msg = exc.response.get("Error", {}).get("Message") or ""
        rid = request_id(exc.response)
        text = f"{action} on {resource} failed: {code}" + (f": {msg}" if msg and msg != code else "")
        if rid:
            text += f" (request id {rid})"
        return AwsCallError(text, code=code)
    if isinstance(exc, NoCredentialsError):
        return AwsCallError(
            f"{action} on {resource} failed: no AWS credentials found (set a profile with AWS_PROFILE, "
            "name a prefect-aws AwsCredentials block in the spec's aws.credentials_block, or run in an "
            "environment that provides credentials)",
            code=NO_CREDENTIALS,
        )
    if isinstance(exc, NoRegionError):
        return AwsCallError(
            f"{action} on {resource} failed: no AWS region (set aws.region in the spec, or AWS_REGION)",
            code=NO_REGION,
        )
    if isinstance(exc, ProfileNotFound):
        return AwsCallError(f"{action} on {resource} failed: {exc}", code=PROFILE_NOT_FOUND)
    if isinstance(exc, EndpointConnectionError):
        return AwsCallError(f"{action} on {resource} failed: cannot reach {exc.kwargs.get('endpoint_url')}",
                            code=ENDPOINT_UNREACHABLE)
    if isinstance(exc, BotoCoreError):
        return AwsCallError(f"{action} on {resource} failed: {type(exc).__name__}: {exc}", code=type(exc).__name__)
    raise TypeError(f"not a botocore error: {exc!r}")


AWS_ERRORS: tuple[type[Exception], ...] = (ClientError, BotoCoreError)
