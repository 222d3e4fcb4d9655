"""Step ``expect_bucket_versioning``: check an S3 bucket's versioning state (GetBucketVersioning), changing nothing.

A step kind that lives outside the product, made by following docs/development.md ("Adding a step kind") to the
letter: it is loaded only where ``PIPELINE_TEST_STEP_MODULES=tests.kinds.bucket_versioning`` is set (with the
project's root on ``PYTHONPATH``), so the generated reference and schemas never show it.
``tests/test_step_kind_extension.py`` uses it as a user would: ``--validate``, ``--plan``, ``--iam-policy`` and
runs against the emulator.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from pydantic import Field

from tasks.kit import markdown as md
from tasks.kit.checks import CheckRecord
from tasks.kit.errors import AWS_ERRORS, CheckFailed, aws_error
from tasks.kit.iam import Arns, Footprint
from tasks.kit.step import StepBase, StepContext, StepOutcome, step_kind
from tasks.s3.keys import BucketName

if TYPE_CHECKING:
    from types_boto3_s3 import S3Client

#: how the evidence says that a bucket's versioning was never switched on (GetBucketVersioning returns no Status)
NEVER_ENABLED = "never enabled"


class ExpectBucketVersioningStep(StepBase):
    """Check an S3 bucket's versioning state (GetBucketVersioning), changing nothing."""

    kind: Literal["expect_bucket_versioning"] = "expect_bucket_versioning"
    bucket: BucketName = Field(..., description="The bucket whose versioning is checked.")
    status: Literal["Enabled", "Suspended"] = Field("Enabled", description="The versioning state the bucket must "
                                                    "be in: `Enabled`, or `Suspended` (switched on once, then off).")


# --- plain functions -------------------------------------------------------------------------------------------


def versioning_status(client: S3Client, bucket: str) -> str | None:
    """The bucket's versioning state, ``Enabled`` or ``Suspended``; None when it was never switched on."""
    try:
        return client.get_bucket_versioning(Bucket=bucket).get("Status")
    except AWS_ERRORS as exc:
        raise aws_error("S3 GetBucketVersioning", f"bucket {bucket}", exc) from None


# --- the runner ------------------------------------------------------------------------------------------------


def _markdown(step: ExpectBucketVersioningStep, found: str) -> str:
    held = found == step.status
    return "\n\n".join([
        f"Bucket {md.code(step.bucket)}: versioning {md.text(found)}, expected {md.text(step.status)} "
        "(GetBucketVersioning; nothing was changed).",
        md.table(["", "expected", "found"], [["✅" if held else "❌", md.code(step.status), md.code(found)]]),
    ])


def expect_bucket_versioning_footprint(step: ExpectBucketVersioningStep, arns: Arns) -> Footprint:
    """The bucket's versioning state, read; nothing changed."""
    fp = Footprint().read("S3 bucket", step.bucket, "versioning state")
    return fp.need(arns.s3_bucket(step.bucket), "s3:GetBucketVersioning")


@step_kind(ExpectBucketVersioningStep, footprint=expect_bucket_versioning_footprint)
def run_expect_bucket_versioning(step: ExpectBucketVersioningStep, ctx: StepContext) -> StepOutcome:
    """Read the bucket's versioning state once; a state other than the step's fails the step."""
    found = versioning_status(ctx.clients.client("s3"), step.bucket) or NEVER_ENABLED
    markdown = _markdown(step, found)
    details = {"bucket": step.bucket, "expected": step.status, "found": found}
    checks = [CheckRecord.of("versioning", found == step.status, step.status, found, where=step.bucket)]
    if found != step.status:
        raise CheckFailed(f"S3 bucket {step.bucket}: versioning is {found}, expected {step.status}",
                          details=details, markdown=markdown, checks=checks)
    return StepOutcome(summary=f"S3 bucket {step.bucket}: versioning {found}", details=details, markdown=markdown,
                       checks=checks)
