"""The test-case spec models: what a user writes (YAML or JSON) to describe one ingestion test; the step kinds
it may use (SERVICE_MODULES, and a team's own: PIPELINE_TEST_STEP_MODULES); its steps in order, groups included.
Reading and validating it: flows/spec/load.py."""

from __future__ import annotations

import importlib
import os
import re
import sys
import unicodedata
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any, Iterator, Literal, Union
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import Field, field_validator, model_validator

from flows.evidence.notify import NotifySettings
from flows.spec.slugs import slug
from flows.spec.templating import (
    BUILTINS,
)
from tasks.athena.cost import ByteCount
from tasks.kit.aws import AwsTarget
from tasks.kit.step import REGISTRY, SpecModel, StepBase, StepKind
from tasks.s3.keys import BucketName, S3Key

#: the service modules whose step kinds a case can use; importing one registers its kinds
SERVICE_MODULES = ("tasks.s3.steps", "tasks.ssm", "tasks.awslambda", "tasks.athena", "tasks.dynamodb", "tasks.sqs",
                   "tasks.cloudwatch", "tasks.glue", "tasks.stepfunctions")
#: the environment variable naming more step modules, outside the product (comma-separated module names, importable
#: from sys.path): a team's own kinds, without a fork. Read once, here, before the step union below is built
STEP_MODULES_ENV = "PIPELINE_TEST_STEP_MODULES"


def extra_step_modules() -> tuple[str, ...]:
    """The modules ``PIPELINE_TEST_STEP_MODULES`` names (none when it is unset or empty)."""
    return tuple(name.strip() for name in os.environ.get(STEP_MODULES_ENV, "").split(",") if name.strip())


#: the extra step modules of this process (the generated reference and schemas are made without any)
EXTRA_STEP_MODULES = extra_step_modules()


def _import_step_modules() -> None:
    for module in SERVICE_MODULES:
        importlib.import_module(module)
    for module in EXTRA_STEP_MODULES:
        try:
            importlib.import_module(module)
        except Exception as exc:  # a bad name or a broken module: one clear line, exit 2, before any AWS call
            print(f"pipeline-test: {STEP_MODULES_ENV} names {module!r}, which could not be loaded: "
                  f"{type(exc).__name__}: {exc}", file=sys.stderr)
            raise SystemExit(2) from None


_import_step_modules()


def _service_index(module: str) -> int:
    """The place of the service module (or package, e.g. tasks.athena for tasks.athena.step) defining a model: the
    product's first, then the extra modules as ``PIPELINE_TEST_STEP_MODULES`` lists them."""
    listed = SERVICE_MODULES + EXTRA_STEP_MODULES
    for i, name in enumerate(listed):
        if module == name or module.startswith(name + "."):
            return i
    return len(listed)


def step_kinds() -> list[StepKind]:
    """Every registered step kind, in a stable order: by service module as listed above, then as defined."""
    return sorted(REGISTRY.values(), key=lambda k: (_service_index(k.model.__module__), k.model.__module__))

#: keys refused under ``aws:`` (anywhere else, flows.spec.credential_guard refuses the AWS credential keys)
AWS_SETTINGS_CREDENTIAL_KEYS = {"aws_access_key_id", "aws_secret_access_key", "aws_session_token", "access_key",
                                "secret_key", "secret_access_key", "session_token", "password"}
#: an AWS region's shape (us-east-1, us-gov-west-1, eu-isoe-west-1, ...), never a path or a URL
REGION = r"^[a-z]{2}(-[a-z]+){1,3}-[0-9]{1,2}$"
#: Unicode categories a case name may not hold: control (newline, NUL), format (U+202E and the other bidi
#: controls, zero-width characters), line and paragraph separators, surrogates, private use, unassigned
_HIDDEN_CATEGORIES = frozenset({"Cc", "Cf", "Zl", "Zp", "Cs", "Co", "Cn"})


def hidden_character(text: str) -> str | None:
    """The first control or invisible formatting character of ``text``, as ``U+202E``, or None."""
    for ch in text:
        if unicodedata.category(ch) in _HIDDEN_CATEGORIES:
            return f"U+{ord(ch):04X}"
    return None


class AwsSettings(SpecModel):
    """Where and as whom the case calls AWS. Credentials never go here: name a block or a profile."""

    region: str | None = Field(None, pattern=REGION, description="AWS region (e.g. eu-west-1); default: the "
                               "credentials block's, else AWS_REGION / the profile's.")
    account_id: str | None = Field(None, pattern=r"^[0-9]{12}$", description="The AWS account the case is meant "
                                   "for (12 digits): the IAM policy that --iam-policy makes names it in its ARNs "
                                   "(default: --account, else any account).")
    profile: str | None = Field(None, description="Named profile from ~/.aws/config (SSO works); default: "
                                "AWS_PROFILE or the default chain.")
    credentials_block: str | None = Field(None, description="Name of a saved prefect-aws AwsCredentials block.")
    max_attempts: int = Field(8, ge=1, le=20, description="Attempts per AWS call (botocore standard retry mode: "
                              "throttling and transient errors are retried with backoff).")
    allowed_parameter_prefixes: list[str] | None = Field(
        None, description="Guard rail: SSM parameters the case may write or delete must lie under one of these "
        "prefixes (e.g. /test/); a write outside them is a validation error before anything runs. Unset: no limit.")

    @model_validator(mode="before")
    @classmethod
    def _no_credentials(cls, data: Any) -> Any:
        if isinstance(data, dict):
            found = sorted(k for k in data if str(k).lower() in AWS_SETTINGS_CREDENTIAL_KEYS)
            if found:
                raise ValueError(f"credentials never go in a spec ({', '.join(found)}); save them in a prefect-aws "
                                 "AwsCredentials block and name it in credentials_block, or use a profile")
        return data

    athena_max_scanned_bytes: ByteCount | None = Field(
        None, description="The case's Athena cost guard: the most bytes all its Athena queries may scan together, a "
        "number or a size (`10 GB`). A query that takes the total over is stopped and fails its step; once the total "
        "is used up, later queries are not started. Each query's own cap is its step's `max_scanned_bytes`.")
    preflight: bool = Field(True, description="Before the first change, check that the caller may do what the case "
                            "needs (iam:SimulatePrincipalPolicy, else read-only probes); a missing permission stops "
                            "the run with exit 3, nothing changed. `--no-preflight` switches it off for one run.")
    journal_prefix: str | None = Field(None, pattern=r"^/[A-Za-z0-9_.\-/]+$", description="SSM path of the "
                                       "durable undo journal: what the run must undo is kept there, encrypted, "
                                       "before each change, and removed once undone (see 'recover'). Default: "
                                       "PIPELINE_TEST_JOURNAL_PREFIX, else /pipeline-test/journal.")

    def target(self) -> AwsTarget:
        return AwsTarget(region=self.region, profile=self.profile, credentials_block=self.credentials_block,
                         max_attempts=self.max_attempts)


class EvidenceSettings(SpecModel):
    """Where the run's evidence pack is also kept, besides the local folder: an S3 bucket, encrypted at rest."""

    bucket: BucketName = Field(..., description="Bucket to upload the evidence pack to.")
    prefix: S3Key = Field("pipeline-test-evidence/", description="Key prefix; the pack goes under "
                        "<prefix><case>/<time>-<run id>/.")
    sse: Literal["AES256", "aws:kms", "aws:kms:dsse"] = Field("AES256", description="Server-side encryption.")
    kms_key_id: str | None = Field(None, description="KMS key id or ARN, with sse: aws:kms or aws:kms:dsse.")

    @model_validator(mode="after")
    def _kms(self) -> "EvidenceSettings":
        if self.kms_key_id and not self.sse.startswith("aws:kms"):
            raise ValueError("'kms_key_id' needs sse: aws:kms or aws:kms:dsse")
        return self


def step_union() -> Any:
    models = tuple(k.model for k in step_kinds())
    return Annotated[Union[models], Field(discriminator="kind")]


if TYPE_CHECKING:
    # the union of the registered kinds is made at run time; statically, a step is a StepBase
    Step = StepBase
else:
    Step = step_union()


class ParallelGroup(SpecModel):
    """Steps that run side by side (e.g. an upload and a setting change, or several checks)."""

    kind: Literal["parallel"] = "parallel"
    name: str | None = Field(None, description="Name of the group (unique in the case).",
                             pattern=r"^[A-Za-z0-9][A-Za-z0-9 _.:-]*$", max_length=80)
    description: str | None = Field(None, description="What the group does.")
    steps: list[Step] = Field(..., min_length=1, description="The steps to run side by side (no nesting).")


if TYPE_CHECKING:
    CaseStep = Union[StepBase, ParallelGroup]
else:
    CaseStep = Annotated[Union[tuple(k.model for k in step_kinds()) + (ParallelGroup,)], Field(discriminator="kind")]


class CaseSpec(SpecModel):
    """One test case: a named, ordered list of steps and the variables they use."""

    case: str = Field(..., min_length=1, max_length=100, description="The case's name (shown in the UI, used "
                      "in artifact keys).")
    description: str = Field("", description="What the case proves.")
    timezone: str = Field("UTC", description="Time zone of run_date and the other run_* variables (IANA name, "
                          "e.g. Europe/Lisbon).")
    variables: dict[str, str | int | float | bool] = Field(
        default_factory=dict, description="User variables, usable as {{ name }} in the steps; a value may use "
        "built-ins and earlier variables. Override with --var name=value.")
    aws: AwsSettings = Field(default_factory=AwsSettings, description="AWS region and credentials reference.")
    evidence: EvidenceSettings | None = Field(None, description="Also upload the evidence pack to S3 "
                                              "(it is always written to a local folder).")
    notify: NotifySettings | None = Field(None, description="Slack notices of the result through prefect-slack: "
                                          "a SlackWebhook block (or SlackCredentials and a channel), and when "
                                          "(on failure by default).")
    tags: list[str] = Field(default_factory=list, max_length=20, description="Labels for choosing cases in a "
                            "suite (`--tag orders`, a suite's `tags:`); a case runs when it has any of the tags "
                            "asked for.")
    lock_timeout: float = Field(1800.0, gt=0, le=86400, description="How long (seconds) the run may wait for "
                                "another run to release an SSM parameter or S3 prefix this case changes; then it "
                                "gives up (exit 3) before changing anything.")
    steps: list[CaseStep] = Field(..., min_length=1, description="What to do, in order.")

    @field_validator("case")
    @classmethod
    def _sluggable(cls, v: str) -> str:
        if not slug(v):
            raise ValueError("the case name needs at least one letter or digit")
        found = hidden_character(v)
        if found:
            raise ValueError(f"the case name holds {found}, a control or invisible formatting character (a newline, "
                             "NUL or a bidi control could forge or hide a line of the output); use visible "
                             "characters only")
        return v

    @field_validator("timezone")
    @classmethod
    def _known_tz(cls, v: str) -> str:
        try:
            ZoneInfo(v)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {v!r} (use an IANA name such as UTC or Europe/Lisbon)") from None
        return v

    @field_validator("variables")
    @classmethod
    def _names(cls, v: dict[str, Any]) -> dict[str, Any]:
        for name in v:
            if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
                raise ValueError(f"variable name {name!r} must be letters, digits and _, not starting with a digit")
            if name in BUILTINS:
                raise ValueError(f"variable {name!r} is built in; choose another name")
        return v


# --------------------------------------------------------------------------------------------- step places
@dataclass(frozen=True)
class PlacedStep:
    """A step with its place in the case: number ("2" or "3.1"), label (its name, or kind-number)."""

    number: str
    step: StepBase
    group: str | None = None

    @property
    def label(self) -> str:
        return self.step.name or f"{self.step.kind}-{self.number}"  # type: ignore[attr-defined]

    @property
    def kind(self) -> str:
        return self.step.kind  # type: ignore[attr-defined]


def iter_steps(spec: CaseSpec) -> Iterator[PlacedStep]:
    """Every step of the case in order, children of parallel groups included."""
    for i, item in enumerate(spec.steps, 1):
        if isinstance(item, ParallelGroup):
            for j, child in enumerate(item.steps, 1):
                yield PlacedStep(f"{i}.{j}", child, group_label(item, i))
        else:
            yield PlacedStep(str(i), item)


def group_label(group: ParallelGroup, index: int) -> str:
    return group.name or f"parallel-{index}"


def describe(placed: PlacedStep) -> str:
    """How errors and logs name a step: ``step 3.1 'name' (kind)``."""
    text = f"step {placed.number}"
    if placed.step.name:
        text += f" {placed.step.name!r}"
    return f"{text} ({placed.kind})"


def json_schema() -> dict[str, Any]:
    """The JSON Schema of a spec (for editors: yaml-language-server, VS Code)."""
    schema = CaseSpec.model_json_schema()
    schema["title"] = "Pipeline test case"
    return schema
