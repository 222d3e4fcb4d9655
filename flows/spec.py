"""The test-case spec: what a user writes (YAML or JSON) to describe one ingestion test.

Validation happens in full before anything touches AWS: the file (bounded: :mod:`flows.spec_file`), credentials
anywhere (:mod:`flows.credentials`), structure (pydantic, unknown keys rejected), unique step names, variables
used in templates, local files (confined and present: :mod:`flows.local_files`), and a trial rendering of every
step (bounded: :mod:`flows.sandbox`), all within VALIDATION_SECONDS. Every problem names the step (its number
and name) and the field.
"""

from __future__ import annotations

import copy
import importlib
import re
import time
import typing
import unicodedata
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Iterator, Literal, Union
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import yaml
from pydantic import BaseModel, Field, ValidationError, field_validator, model_validator

from flows import local_files, spec_file
from flows.credentials import credential_problems
from flows.naming import slug
from flows.notify import NotifySettings
from flows.templating import (
    BUILTINS,
    TemplateError,
    builtin_values,
    check_template,
    functions_called,
    is_templated,
    render,
    resolve_variables,
    variables_in,
)
from tasks.athena.cost import ByteCount
from tasks.aws import AwsTarget
from tasks.base import REGISTRY, RESOURCE_NAME, SpecModel, StepBase, StepKind
from tasks.s3 import BucketName, S3Key
from tasks.secrets import MIN_SECRET_CHARS, mask, redact

#: the service modules whose step kinds a case can use; importing one registers its kinds
SERVICE_MODULES = ("tasks.s3", "tasks.ssm", "tasks.awslambda", "tasks.athena", "tasks.dynamodb", "tasks.sqs",
                   "tasks.cloudwatch", "tasks.glue", "tasks.stepfunctions")
for _module in SERVICE_MODULES:
    importlib.import_module(_module)


def _service_index(module: str) -> int:
    """The place of the service module (or package, e.g. tasks.athena for tasks.athena.step) defining a model."""
    for i, name in enumerate(SERVICE_MODULES):
        if module == name or module.startswith(name + "."):
            return i
    return len(SERVICE_MODULES)


def step_kinds() -> list[StepKind]:
    """Every registered step kind, in a stable order: by service module as listed above, then as defined."""
    return sorted(REGISTRY.values(), key=lambda k: (_service_index(k.model.__module__), k.model.__module__))

#: keys refused under ``aws:`` (anywhere else, flows.credentials refuses the AWS credential keys)
AWS_SETTINGS_CREDENTIAL_KEYS = {"aws_access_key_id", "aws_secret_access_key", "aws_session_token", "access_key",
                                "secret_key", "secret_access_key", "session_token", "password"}
#: how long validation may take (checked between steps and while templates render)
VALIDATION_SECONDS = 10.0
#: how many problems an error message lists
SHOWN_PROBLEMS = 50
#: template functions whose result is a secret (a name calling one may not be a resource name)
SECRET_FUNCTIONS = frozenset({"secret", "ssm"})
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


def _step_union() -> Any:
    models = tuple(k.model for k in step_kinds())
    return Annotated[Union[models], Field(discriminator="kind")]


if TYPE_CHECKING:
    # the union of the registered kinds is made at run time; statically, a step is a StepBase
    Step = StepBase
else:
    Step = _step_union()


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


# ---------------------------------------------------------------------------------------------- the errors
class SpecError(Exception):
    """The spec is invalid; ``problems`` are lines that each name the step and the field."""

    def __init__(self, source: str, problems: list[str]) -> None:
        self.source = source
        self.problems = problems
        shown = [f"  - {p}" for p in problems[:SHOWN_PROBLEMS]]
        if len(problems) > SHOWN_PROBLEMS:
            shown.append(f"  ... and {len(problems) - SHOWN_PROBLEMS} more problem(s)")
        super().__init__(f"invalid spec {source}:\n" + "\n".join(shown))


class _Deadline:
    """When validation must stop (``time.monotonic()``); checked between steps and while templates render."""

    def __init__(self, source: str, seconds: float) -> None:
        self.source = source
        self.at = time.monotonic() + seconds
        self.seconds = seconds

    def check(self, where: str) -> None:
        if time.monotonic() > self.at:
            raise SpecError(self.source, [f"{where}: validation took longer than {self.seconds:g} s and was "
                                          "stopped (a template or a spec that is too big?)"])


def _where(raw: Any, loc: tuple[Any, ...]) -> tuple[str, str]:
    """Split a pydantic error location into ("step 3.1 'name' (kind)", "field.path")."""
    parts = list(loc)
    if not parts or parts[0] != "steps" or len(parts) < 2 or not isinstance(parts[1], int):
        return "case", ".".join(str(p) for p in parts) or "(top level)"
    steps = raw.get("steps") if isinstance(raw, dict) else None
    number, item = str(parts[1] + 1), _index(steps, parts[1])
    rest = parts[2:]
    if rest and isinstance(item, dict) and rest[0] == item.get("kind"):
        rest = rest[1:]
    if len(rest) >= 2 and rest[0] == "steps" and isinstance(rest[1], int) and isinstance(item, dict) \
            and item.get("kind") == "parallel":
        number += f".{rest[1] + 1}"
        item = _index(item.get("steps"), rest[1])
        rest = rest[2:]
        if rest and isinstance(item, dict) and rest[0] == item.get("kind"):
            rest = rest[1:]
    desc = f"step {number}"
    if isinstance(item, dict):
        if item.get("name"):
            desc += f" {item['name']!r}"
        if item.get("kind"):
            desc += f" ({item['kind']})"
    return desc, ".".join(str(p) for p in rest)


def _index(seq: Any, i: int) -> Any:
    return seq[i] if isinstance(seq, list) and 0 <= i < len(seq) else None


def _pydantic_problems(raw: Any, exc: ValidationError) -> list[str]:
    out = []
    for err in exc.errors(include_url=False):
        where, fld = _where(raw, tuple(err["loc"]))
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "union_tag_invalid":
            kinds = ", ".join(sorted(REGISTRY) + ["parallel"])
            msg = f"unknown kind {err.get('input', {}).get('kind')!r} (known kinds: {kinds})" \
                if isinstance(err.get("input"), dict) else msg
        elif err["type"] == "union_tag_not_found":
            msg = "missing 'kind'"
        elif err["type"] == "extra_forbidden":
            msg = "unknown field (not allowed here; check the spelling)"
        out.append(f"{where}: {('field ' + repr(fld) + ': ') if fld else ''}{msg}")
    return out


# ------------------------------------------------------------------------------------------- the semantics
def _strings(value: Any, path: str, skip: frozenset[str]) -> Iterator[tuple[str, str]]:
    """(field path, string) for every string in a step's data, except the untemplated top-level fields."""
    if isinstance(value, BaseModel):
        value = value.model_dump(mode="python", exclude_none=True)
    if isinstance(value, str):
        yield path, value
    elif isinstance(value, dict):
        for k, v in value.items():
            if not path and k in skip:
                continue
            yield from _strings(v, f"{path}.{k}" if path else str(k), frozenset())
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            yield from _strings(v, f"{path}[{i}]", frozenset())


def _semantic_problems(spec: CaseSpec, spec_dir: Path, allowed: tuple[Path, ...], deadline: _Deadline) -> list[str]:
    problems: list[str] = []
    seen: dict[str, str] = {}
    for i, item in enumerate(spec.steps, 1):
        if isinstance(item, ParallelGroup) and item.name:
            seen[item.name] = str(i)
    for placed in iter_steps(spec):
        name = placed.step.name
        if name:
            if name in seen:
                problems.append(f"{describe(placed)}: field 'name': {name!r} is already used by step {seen[name]}; "
                                "step names must be unique in a case")
            else:
                seen[name] = placed.number
    known = set(BUILTINS) | set(spec.variables)
    for name, value in spec.variables.items():
        if isinstance(value, str):
            try:
                check_template(value, set(BUILTINS) | set(list(spec.variables)[: list(spec.variables).index(name)]))
            except TemplateError as exc:
                problems.append(f"case: field 'variables.{name}': {exc}")
    for placed in iter_steps(spec):
        deadline.check(describe(placed))
        step = placed.step
        for fld, text in _strings(step, "", step.untemplated):
            deadline.check(describe(placed))
            try:
                check_template(text, known)
            except TemplateError as exc:
                problems.append(f"{describe(placed)}: field {fld!r}: {exc}")
        for fld in sorted(step.template_files):
            rel = getattr(step, fld, None)
            if not rel or is_templated(str(rel)):  # a templated path is checked once rendered
                continue
            try:
                (path,) = local_files.check_path(str(rel), spec_dir, allowed, must_exist=True, glob=False)
                check_template(local_files.read_template_file(path, str(rel)), known)
            except local_files.LocalPathError as exc:
                problems.append(f"{describe(placed)}: field {fld!r}: {exc}")
            except TemplateError as exc:
                problems.append(f"{describe(placed)}: field {fld!r} ({rel}): {exc}")
        for msg in step.case_checks(spec):
            problems.append(f"{describe(placed)}: {msg}")
    return problems


def describe(placed: PlacedStep) -> str:
    """How errors and logs name a step: ``step 3.1 'name' (kind)``."""
    text = f"step {placed.number}"
    if placed.step.name:
        text += f" {placed.step.name!r}"
    return f"{text} ({placed.kind})"


# ------------------------------------------------------------------------------------------------- loading
def parse_spec(raw: Any, source: str = "<spec>", spec_dir: Path | None = None,
               overrides: dict[str, str] | None = None, files_root: str | Path | None = None) -> CaseSpec:
    """Validate raw spec data in full (credentials, structure, names, variables, local files, a trial
    rendering) within VALIDATION_SECONDS; raise SpecError.

    Local files must lie under ``spec_dir`` (default: the working directory) or ``files_root``.
    """
    deadline = _Deadline(source, VALIDATION_SECONDS)
    if not isinstance(raw, dict):
        raise SpecError(source, ["case: the spec must be a mapping with 'case' and 'steps'"])
    try:
        spec_file.expanded_size(raw, spec_file.json_children, "spec")
    except spec_file.SpecFileError as exc:
        raise SpecError(source, [f"case: {exc}"]) from None
    overrides = overrides or {}
    found = [*credential_problems(raw), *credential_problems(overrides, ("variables",))]
    if found:
        raise SpecError(source, [_located(raw, loc, msg) for loc, msg in found])
    try:
        spec = CaseSpec.model_validate(raw)
    except ValidationError as exc:
        problems = _pydantic_problems(raw, exc)
        if any(err["type"] != "extra_forbidden" for err in exc.errors(include_url=False)):
            raise SpecError(source, problems) from None
        # only unknown fields: check the rest without them, so that one pass reports every problem (unless the
        # spec without them is no longer whole: a misspelt field that another check needed)
        stripped = _without(raw, [tuple(e["loc"]) for e in exc.errors(include_url=False)])
        try:
            CaseSpec.model_validate(stripped)
            parse_spec(stripped, source, spec_dir, overrides, files_root)
        except SpecError as more:
            problems += more.problems
        except ValidationError:
            pass
        raise SpecError(source, problems) from None
    unknown = sorted(set(overrides) - set(spec.variables))
    if unknown:
        raise SpecError(source, [f"--var {n}: no such variable in the case (declared: "
                                 f"{', '.join(spec.variables) or 'none'})" for n in unknown])
    if overrides:
        spec = spec.model_copy(update={"variables": {**spec.variables, **overrides}})
    folder = spec_dir or Path.cwd()
    if files_root and not Path(files_root).expanduser().is_dir():
        raise SpecError(source, [f"--files-root {files_root}: not a folder"])
    allowed = local_files.roots(folder, files_root)
    problems = _semantic_problems(spec, folder, allowed, deadline)
    if not problems:
        problems = _trial_render(spec, folder, allowed, deadline)
    if problems:
        raise SpecError(source, problems)
    return spec


def _without(raw: Any, locations: list[tuple[Any, ...]]) -> Any:
    """A copy of ``raw`` without the fields at ``locations`` (pydantic's, which may hold a union's tag)."""
    data = copy.deepcopy(raw)
    for loc in locations:
        node = data
        for part in loc[:-1]:
            if isinstance(node, dict) and part in node:
                node = node[part]
            elif isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node):
                node = node[part]
            # else: a union's tag (the step's kind), not a level of the data
        if isinstance(node, dict):
            node.pop(loc[-1], None)
    return data


def _located(raw: Any, loc: tuple[Any, ...], msg: str) -> str:
    where, fld = _where(raw, loc)
    return f"{where}: {('field ' + repr(fld) + ': ') if fld else ''}{msg}"


def _trial_render(spec: CaseSpec, spec_dir: Path, allowed: tuple[Path, ...], deadline: _Deadline) -> list[str]:
    """Render every step with placeholder run values, to catch what only shows after templating."""
    try:
        values = resolve_variables(spec.variables, builtin_values(spec.case, "00000000-0000-0000-0000-000000000000",
                                                                   datetime.now(timezone.utc), spec.timezone),
                                   deadline.at)
    except TemplateError as exc:
        return [f"case: field 'variables': {exc}"]
    problems = []
    renderings: list[tuple[PlacedStep, StepBase]] = []
    for placed in iter_steps(spec):
        deadline.check(describe(placed))
        try:
            rendered = render_step(placed.step, values, deadline.at)
            renderings.append((placed, rendered))
            paths = _local_file_problems(placed.step, rendered, spec_dir, allowed)
            checks = rendered.case_checks(spec)
            if not paths:  # the step's own checks may read its files: only once they are known to be allowed
                checks += rendered.rendered_checks(spec_dir, lambda t: render(t, values, deadline.at))
            problems += [f"{describe(placed)}: {msg}" for msg in paths + checks]
        except TemplateError as exc:
            problems.append(f"{describe(placed)}: {exc}")
        except ValidationError as exc:
            for err in exc.errors(include_url=False):
                fld = ".".join(str(p) for p in err["loc"])
                problems.append(f"{describe(placed)}: field {fld!r} after templating: "
                                f"{err['msg'].removeprefix('Value error, ')}")
    problems += _secrets_in_names(renderings, values, spec_dir)
    known = _known_secrets(spec, values, deadline)
    return [_masked(problem, known) for problem in problems] if known else problems


def _known_secrets(spec: CaseSpec, values: dict[str, Any], deadline: _Deadline) -> set[str]:
    """The secret values the case handles (SecureString values, sensitive fields), rendered: also those of a
    step whose rendering failed, so that no problem quotes one."""
    found = set()
    for placed in iter_steps(spec):
        for secret in placed.step.secrets():
            try:
                found.add(render(secret, values, deadline.at))
            except TemplateError:
                continue
    return {s for s in found if s}


def _masked(text: str, secrets: set[str]) -> str:
    """A problem's text with the case's secrets masked: searched for when long enough, and quoted (a rendered
    value a message shows, such as "(got 'value')") whatever their length."""
    text = redact(text, secrets)
    for secret in secrets:
        text = text.replace(repr(secret), mask(secret))
    return text


# ----------------------------------------------------------------------------------- secrets in resource names
def _marked(annotation: Any) -> bool:
    """Does a type (``S3Key``, ``list[S3Key] | None``, ...) carry the RESOURCE_NAME mark?"""
    if typing.get_origin(annotation) is Annotated:
        base, *extras = typing.get_args(annotation)
        return any(e is RESOURCE_NAME for e in extras) or _marked(base)
    return any(_marked(arg) for arg in typing.get_args(annotation))


def resource_names(model: BaseModel, path: str = "") -> Iterator[tuple[str, str]]:
    """(field path, value) of every field of ``model`` (nested models too) marked RESOURCE_NAME."""
    for name, info in type(model).model_fields.items():
        value = getattr(model, name, None)
        where = f"{path}.{name}" if path else name
        if any(m is RESOURCE_NAME for m in info.metadata) or _marked(info.annotation):
            items = value if isinstance(value, list) else [value]
            yield from ((f"{where}[{i}]" if isinstance(value, list) else where, v)
                        for i, v in enumerate(items) if isinstance(v, str))
        elif isinstance(value, BaseModel):
            yield from resource_names(value, where)
        elif isinstance(value, list):
            for i, item in enumerate(value):
                if isinstance(item, BaseModel):
                    yield from resource_names(item, f"{where}[{i}]")


def _secrets_in_names(renderings: list[tuple[PlacedStep, StepBase]], values: dict[str, Any],
                      spec_dir: Path) -> list[str]:
    """Refuse a secret (a SecureString value, a sensitive field's value) in a resource name: names travel
    unmasked (console links, lock names, events, the pack's step details), so a secret may not be part of one.

    Found by the variable or the secret function (SECRET_FUNCTIONS) a name's template uses (whatever the secret's
    length), and by value for secrets long enough to be searched for (MIN_SECRET_CHARS)."""
    secrets = {s for _, rendered in renderings for s in rendered.secrets() if s}
    secret_vars = {name for name, value in values.items() if isinstance(value, str) and value in secrets}
    long = [s for s in secrets if len(s) >= MIN_SECRET_CHARS]
    problems = []
    for placed, rendered in renderings:
        written = dict(resource_names(placed.step))
        names = [*resource_names(rendered), *(("(lock name)", r) for r in rendered.resources(spec_dir))]
        for fld, value in names:
            text = written.get(fld, "")
            used = sorted(variables_in(text) & secret_vars | functions_called(text) & SECRET_FUNCTIONS)
            if used or any(s in value for s in long):
                via = f" (through {{{{ {used[0]}{'()' if used[0] in SECRET_FUNCTIONS else ''} }}}})" if used else ""
                problems.append(f"{describe(placed)}: field {fld!r}: holds a secret value{via}: resource names "
                                "(buckets, S3 keys, parameter names, URIs) are never masked (they travel into links, "
                                "lock names, events and the evidence pack), so a secret may not be part of one")
                break
    return problems


def _field(model: Any, dotted: str) -> Any:
    """A field's value by dotted path (``expect.reconcile.file``), None when a part is missing."""
    value = model
    for part in dotted.split("."):
        value = getattr(value, part, None)
        if value is None:
            return None
    return value


def _local_file_problems(written: StepBase, rendered: StepBase, spec_dir: Path,
                         allowed: tuple[Path, ...]) -> list[str]:
    """Local paths of a step: confined once rendered; present when written without a template."""
    problems = []
    for fld in sorted(written.local_files | written.template_files):
        before, after = _field(written, fld), _field(rendered, fld)
        if before is None or after is None:
            continue
        pairs = zip(before, after) if isinstance(before, list) else [(before, after)]
        for i, (raw, value) in enumerate(pairs):
            where = f"{fld}[{i}]" if isinstance(before, list) else fld
            try:
                local_files.check_path(str(value), spec_dir, allowed, must_exist=not is_templated(str(raw)),
                                       glob=fld in written.local_files)
            except local_files.LocalPathError as exc:
                problems.append(f"field {where!r}: {exc}")
    return problems


def render_step(step: StepBase, values: dict[str, Any], deadline: float | None = None) -> StepBase:
    """A copy of the step with every templated string rendered (names and kind are left as they are)."""

    def walk(value: Any, path: str) -> Any:
        if isinstance(value, str):
            try:
                return render(value, values, deadline)
            except TemplateError as exc:
                raise TemplateError(f"field {path!r}: {exc}") from None
        if isinstance(value, dict):
            return {k: (v if not path and k in step.untemplated else walk(v, f"{path}.{k}" if path else str(k)))
                    for k, v in value.items()}
        if isinstance(value, list):
            return [walk(v, f"{path}[{i}]") for i, v in enumerate(value)]
        return value

    data = step.model_dump(mode="python", exclude_unset=True)
    return type(step).model_validate(walk(data, ""))


def read_spec_file(path: Path) -> Any:
    """Read YAML or JSON (by extension; YAML is a superset, so anything else is read as YAML), bounded and
    strict (:mod:`flows.spec_file`: size, UTF-8, duplicate keys, aliases, nodes, depth)."""
    try:
        text = spec_file.read_text(path)
        return spec_file.load_json(text) if path.suffix.lower() == ".json" else spec_file.load_yaml(text)
    except spec_file.SpecFileError as exc:
        raise SpecError(str(path), [f"case: {exc}"]) from None
    except ValueError as exc:  # json.JSONDecodeError
        raise SpecError(str(path), [f"case: not valid JSON: {exc}"]) from None
    except yaml.YAMLError as exc:
        raise SpecError(str(path), [f"case: not valid YAML: {exc}"]) from None
    except OSError as exc:
        raise SpecError(str(path), [f"case: cannot read the spec file: {exc.strerror or exc}"]) from None


def load_spec(path: str | Path, overrides: dict[str, str] | None = None,
              files_root: str | Path | None = None) -> tuple[CaseSpec, Path]:
    """Load and validate a spec file; returns the spec and its folder (local paths are relative to it)."""
    path = Path(path)
    raw = read_spec_file(path)
    folder = path.resolve().parent
    return parse_spec(raw, str(path), folder, overrides, files_root), folder


def json_schema() -> dict[str, Any]:
    """The JSON Schema of a spec (for editors: yaml-language-server, VS Code)."""
    schema = CaseSpec.model_json_schema()
    schema["title"] = "Pipeline test case"
    return schema
