"""Errors that a step raises, with messages a user can act on (no bare tracebacks).

Every failure names the step, the AWS resource and, for AWS calls, AWS's error code. The plain functions
under ``tasks/`` raise these; the flow turns them into a failed step with the message as its error.
"""

from __future__ import annotations

from typing import Any

from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    EndpointConnectionError,
    NoCredentialsError,
    NoRegionError,
    ProfileNotFound,
)


class StepError(Exception):
    """A step could not do or prove what it was asked to; the message is shown to the user as is."""

    def __init__(self, message: str, *, code: str | None = None, details: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        #: what the step found before it failed (shown in the evidence)
        self.details: dict[str, Any] = details or {}


class AwsCallError(StepError):
    """An AWS API call failed; ``code`` is AWS's error code (AccessDenied, NoSuchBucket, ...)."""


def error_code(exc: ClientError) -> str:
    """AWS's error code of a ClientError, falling back to the HTTP status for bodiless HEAD errors."""
    err = exc.response.get("Error", {})
    code = str(err.get("Code") or exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or "Unknown")
    return {"403": "AccessDenied", "404": "NotFound", "412": "PreconditionFailed"}.get(code, code)


def request_id(response: dict[str, Any]) -> str | None:
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
            code="NoCredentials",
        )
    if isinstance(exc, NoRegionError):
        return AwsCallError(
            f"{action} on {resource} failed: no AWS region (set aws.region in the spec, or AWS_REGION)",
            code="NoRegion",
        )
    if isinstance(exc, ProfileNotFound):
        return AwsCallError(f"{action} on {resource} failed: {exc}", code="ProfileNotFound")
    if isinstance(exc, EndpointConnectionError):
        return AwsCallError(f"{action} on {resource} failed: cannot reach {exc.kwargs.get('endpoint_url')}",
                            code="EndpointConnectionError")
    if isinstance(exc, BotoCoreError):
        return AwsCallError(f"{action} on {resource} failed: {type(exc).__name__}: {exc}", code=type(exc).__name__)
    raise TypeError(f"not a botocore error: {exc!r}")


AWS_ERRORS: tuple[type[Exception], ...] = (ClientError, BotoCoreError)
