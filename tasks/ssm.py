"""SSM Parameter Store steps: ``set_parameters``, ``delete_parameters`` and ``expect_parameters``.

**Always undone.** A step that writes or deletes a parameter first snapshots it and registers its restore, once
per parameter per case, before the write (:func:`tasks.ssm_restore.snapshot_before_change`); ``restore: false``
on a step means that step registers nothing. The snapshot/restore library, its design notes and its limitations
live in :mod:`tasks.ssm_restore`; this module re-exports its public names, and importing it registers the three
step kinds and (through that import) the ``ssm_parameter`` undo kind.

**Secrets.** SecureString values (before, after, expected) appear only masked (:func:`tasks.kit.secrets.mask`) in
summaries, details, markdown, logs and error messages; error messages from AWS are redacted, and exception
chains that could carry a value are cut.

**Guard rails.** :func:`check_parameter_writes` lists the writes of a step that fall outside the spec's allowed
parameter prefixes; the validator calls it for every step before anything runs.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Iterable, Literal, Sequence

from pydantic import ConfigDict, Field, field_validator, model_validator

from tasks.kit import markdown as md
from tasks.kit import nesting
from tasks.kit.checks import CheckRecord
from tasks.kit.errors import AWS_PARAMETER_NOT_FOUND, CheckFailed, StepError, request_id
from tasks.kit.iam import Arns, Footprint
from tasks.kit.json_compare import json_subset_mismatches
from tasks.kit.json_expect import truncate
from tasks.kit.secrets import Secrets, mask, mask_any, redact
from tasks.kit.status import check_verdict
from tasks.kit.step import RESOURCE_NAME, SpecModel, StepBase, StepContext, StepOutcome, step_kind
from tasks.ssm_restore import (  # re-exported: the library's public names stay importable from tasks.ssm
    MAX_SHOWN_VALUE,
    SECURE,
    UNDO_KIND,
    ParameterSnapshot,
    RestoreParameter,
    _cell,
    _scrubbed,
    check_parameter_names,
    delete,
    differences,
    from_record,
    parameter_resource,
    pending_restore_records,
    put,
    redo_restore,
    registered_restore,
    restore_from_record,
    restore_parameter,
    snapshot,
    snapshot_before_change,
    to_record,
)

if TYPE_CHECKING:
    from types_boto3_ssm import SSMClient

ParameterType = Literal["String", "StringList", "SecureString"]
#: validation errors of these models never echo their input (a value may be a secret); note that pydantic takes
#: this from the *outermost* model validated, so the spec's root model needs it too
_HIDE_INPUT = ConfigDict(extra="forbid", populate_by_name=True, hide_input_in_errors=True)


def _to_text(value: Any) -> Any:
    """YAML scalars as parameter text: numbers as written, booleans as true/false, lists joined with commas."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, list):
        return ",".join(_to_text(v) for v in value)
    return value


class ParameterSpec(SpecModel):
    """One parameter to write."""

    model_config = _HIDE_INPUT

    name: Annotated[str, RESOURCE_NAME] = Field(..., min_length=1, max_length=2048,
                                              description="Parameter name, e.g. /pipeline/test/source.")
    value: str = Field(
        ...,
        description="The value (templated; a list is joined with commas for a StringList; quote values that YAML "
        "would read as numbers, since 1.10 arrives as 1.1).",
    )
    type: ParameterType = Field("String", description="String, StringList or SecureString.")
    key_id: str | None = Field(None, min_length=1, description="KMS key id, ARN or alias (SecureString only).")
    description: str | None = Field(None, max_length=1024, description="Parameter description.")
    overwrite: bool = Field(True, description="Replace an existing parameter (false: fail if it exists).")

    _coerce = field_validator("value", mode="before")(_to_text)

    @model_validator(mode="after")
    def _check(self) -> "ParameterSpec":
        if self.key_id and self.type != SECURE:
            raise ValueError(f"parameter {self.name}: key_id needs type SecureString")
        return self

    def __repr_args__(self) -> Any:
        for key, value in super().__repr_args__():
            yield key, (mask(value) if key == "value" and self.type == SECURE else value)


class SetParametersStep(StepBase):
    """Create or change SSM parameters (restored when the case ends unless ``restore: false``)."""

    model_config = _HIDE_INPUT

    kind: Literal["set_parameters"] = "set_parameters"
    parameters: list[ParameterSpec] = Field(..., min_length=1, description="The parameters to write, in order.")
    restore: bool = Field(True, description="Put every parameter back as it was when the case ends.")

    @model_validator(mode="after")
    def _unique(self) -> "SetParametersStep":
        _check_unique([p.name for p in self.parameters])
        return self

    def secrets(self) -> list[str]:
        """The SecureString values this step writes (for redaction by the engine)."""
        return [p.value for p in self.parameters if p.type == SECURE and p.value]

    def case_checks(self, case: Any) -> list[str]:
        """The guard rail: every write inside the case's ``aws.allowed_parameter_prefixes``."""
        return [f"field 'parameters': {e}" for e in check_parameter_writes(self, case.aws.allowed_parameter_prefixes)]

    def resources(self, spec_dir: Path) -> list[str]:
        """The parameters this step writes: locked for the whole case run."""
        return [parameter_resource(p.name) for p in self.parameters]


class DeleteParametersStep(StepBase):
    """Delete SSM parameters (recreated when the case ends unless ``restore: false``)."""

    kind: Literal["delete_parameters"] = "delete_parameters"
    names: list[Annotated[str, RESOURCE_NAME]] = Field(..., min_length=1,
                                                   description="Names of the parameters to delete.")
    restore: bool = Field(True, description="Recreate every deleted parameter as it was when the case ends.")
    missing_ok: bool = Field(False, description="A parameter that does not exist is fine (else the step fails).")

    @model_validator(mode="after")
    def _unique(self) -> "DeleteParametersStep":
        _check_unique(self.names)
        return self

    def case_checks(self, case: Any) -> list[str]:
        """The guard rail: every delete inside the case's ``aws.allowed_parameter_prefixes``."""
        return [f"field 'names': {e}" for e in check_parameter_writes(self, case.aws.allowed_parameter_prefixes)]

    def resources(self, spec_dir: Path) -> list[str]:
        """The parameters this step deletes: locked for the whole case run."""
        return [parameter_resource(n) for n in self.names]


class ParameterExpectation(SpecModel):
    """What one parameter must hold: exactly one of equals, contains, json_subset."""

    model_config = _HIDE_INPUT

    name: Annotated[str, RESOURCE_NAME] = Field(..., min_length=1, description="Parameter name.")
    equals: str | None = Field(None, description="The value must be exactly this.")
    contains: str | None = Field(
        None, description="The value must contain this (for a StringList: every comma-separated item is an item)."
    )
    json_subset: Any = Field(None, description="The value must be JSON containing this (objects: extra keys fine).")
    type: ParameterType | None = Field(None, description="The parameter must have this type.")

    _coerce = field_validator("equals", "contains", mode="before")(_to_text)

    @model_validator(mode="after")
    def _one(self) -> "ParameterExpectation":
        given = [k for k in ("equals", "contains", "json_subset") if k in self.model_fields_set]
        if len(given) != 1:
            raise ValueError(f"parameter {self.name}: give exactly one of equals, contains, json_subset")
        return self

    @property
    def check(self) -> str:
        """Which comparison this is: equals, contains or json_subset."""
        return next(k for k in ("equals", "contains", "json_subset") if k in self.model_fields_set)

    @property
    def expected(self) -> Any:
        return getattr(self, self.check)

    def __repr_args__(self) -> Any:
        for key, value in super().__repr_args__():
            secret = self.type == SECURE and key in ("equals", "contains", "json_subset") and value is not None
            yield key, (mask_any(value) if secret else value)


class ExpectParametersStep(StepBase):
    """Read SSM parameters (decrypted) and compare them with what is expected."""

    model_config = _HIDE_INPUT

    kind: Literal["expect_parameters"] = "expect_parameters"
    parameters: list[ParameterExpectation] = Field(..., min_length=1, description="The checks, in order.")

    def secrets(self) -> list[str]:
        """Expected values of checks declared SecureString (undeclared ones are masked once the type is read)."""
        return [s for e in self.parameters if e.type == SECURE for s in _expected_texts(e)]


def _check_unique(names: list[str]) -> None:
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ValueError(f"parameter(s) listed twice in one step: {', '.join(dupes)}")


def _expected_texts(expectation: ParameterExpectation) -> list[str]:
    """Strings of an expectation that are secret when the parameter is a SecureString."""
    value = expectation.expected
    if isinstance(value, str):
        return [value] if value else []
    return [json.dumps(value), json.dumps(value, separators=(",", ":"))]


# --- guard rails ---------------------------------------------------------------------------------------------------


def written_parameter_names(step: Any) -> list[str]:
    """The parameter names that a step writes or deletes ([] for steps that write none)."""
    if isinstance(step, SetParametersStep):
        return [p.name for p in step.parameters]
    if isinstance(step, DeleteParametersStep):
        return list(step.names)
    return []


def check_parameter_writes(step: Any, allowed_prefixes: Sequence[str] | None) -> list[str]:
    """Errors for every parameter the step would write outside ``allowed_prefixes`` ([] when all are inside).

    ``None`` means no restriction; an empty list allows no writes at all. Call it with the step as rendered when
    variables are known; a name that still holds a template passes only when its fixed start (before the first
    ``{{``) is already inside an allowed prefix. ARNs are checked by their ``parameter/...`` part.
    """
    return check_parameter_names(written_parameter_names(step), allowed_prefixes)


# --- evidence helpers ---------------------------------------------------------------------------------------------


def _desc(snap: ParameterSnapshot) -> str:
    return md.text(snap.description or "") if snap.exists else ""


def _learn(secrets: Secrets, snap: ParameterSnapshot) -> None:
    """A SecureString's value, once read, is a secret of the run from then on (logs, evidence, the pack)."""
    if snap.secure and snap.value:
        secrets.add(snap.value)


def _scrub(exc: StepError, secrets: Iterable[str], **details: Any) -> StepError:
    clean = _scrubbed(exc, secrets)
    clean.details = {**exc.details, **details}
    return clean


# --- footprints (the plan, the IAM policy, the preflight) -------------------------------------------------------

#: reading a parameter as the snapshot does: its value (decrypted) and its metadata
SNAPSHOT_ACTIONS = ("ssm:GetParameter",)
#: putting a parameter back: read it again, write or delete it, its tags when it is created again, and (from a
#: record, in another process) a SecureString's earlier value from its history
RESTORE_ACTIONS = ("ssm:GetParameter", "ssm:PutParameter", "ssm:DeleteParameter", "ssm:AddTagsToResource",
                   "ssm:GetParameterHistory")


def _parameter_reads(fp: Footprint, arns: Arns, name: str) -> None:
    fp.need(arns.ssm_parameter(name), *SNAPSHOT_ACTIONS)
    fp.need("*", "ssm:DescribeParameters")  # AWS cannot scope it to a parameter
    fp.need_kms(arns, "ssm", "kms:Decrypt")  # the value is read decrypted (a SecureString's key)


def _restored(fp: Footprint, arns: Arns, name: str) -> None:
    """A parameter changed and snapshotted before (with its tags) for the restore."""
    fp.need(arns.ssm_parameter(name), *RESTORE_ACTIONS, "ssm:ListTagsForResource")
    fp.undo("SSM parameter", name, "put back as it was (deleted if it did not exist)")


def set_parameters_footprint(step: SetParametersStep, arns: Arns) -> Footprint:
    fp = Footprint()
    for spec in step.parameters:
        key = f", KMS key {spec.key_id}" if spec.key_id else ""
        fp.change("SSM parameter", spec.name, f"set ({spec.type}{key})")
        _parameter_reads(fp, arns, spec.name)
        fp.need(arns.ssm_parameter(spec.name), "ssm:PutParameter")
        if spec.type == SECURE:
            fp.need_kms(arns, "ssm", "kms:Encrypt")
        if step.restore:
            _restored(fp, arns, spec.name)
    return fp


def delete_parameters_footprint(step: DeleteParametersStep, arns: Arns) -> Footprint:
    fp = Footprint()
    for name in step.names:
        fp.change("SSM parameter", name, "delete" + (" (if it exists)" if step.missing_ok else ""))
        _parameter_reads(fp, arns, name)
        fp.need(arns.ssm_parameter(name), "ssm:DeleteParameter")
        if step.restore:
            fp.need_kms(arns, "ssm", "kms:Encrypt")  # a deleted SecureString is created again
            _restored(fp, arns, name)
    return fp


def expect_parameters_footprint(step: ExpectParametersStep, arns: Arns) -> Footprint:
    fp = Footprint()
    for exp in step.parameters:
        fp.read("SSM parameter", exp.name, f"{exp.check}" + (f" ({exp.type})" if exp.type else ""))
        _parameter_reads(fp, arns, exp.name)
    return fp


# --- runners -----------------------------------------------------------------------------------------------------


def _set_one(ssm: SSMClient, spec: ParameterSpec, step: SetParametersStep, ctx: StepContext) -> dict[str, Any]:
    before, restore = snapshot_before_change(ssm, ctx, spec.name, step.restore)
    _learn(ctx.secrets, before)
    response = put(ssm, spec.name, spec.value, spec.type, key_id=spec.key_id, description=spec.description,
                   overwrite=spec.overwrite)
    after = snapshot(ssm, spec.name)
    _learn(ctx.secrets, after)
    ctx.logger.info("Set SSM parameter %s (%s, version %s)", spec.name, spec.type, response.get("Version"))
    return {"name": spec.name, "before": before.public(), "after": after.public(), "restore": restore,
            "request_id": request_id(response), "_snaps": (before, after)}


def _set_markdown(rows: list[dict[str, Any]], secrets: Iterable[str]) -> str:
    """One wrapped line per parameter (a wide table would be cut off in the UI): before → after, the description
    only when it changed, and its restore."""
    lines = []
    for row in rows:
        before, after = row["_snaps"]
        text = f"{md.code(row['name'])}: {_cell(before, secrets)} → {_cell(after, secrets)}"
        if _desc(before) != _desc(after):
            text += f"; description {_desc(before) or '(none)'} → {_desc(after) or '(none)'}"
        text += f"; restore: {md.text(row['restore'])}"
        lines.append(md.Md(text))
    return md.bullets(lines)


def _public_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: v for k, v in row.items() if not k.startswith("_")} for row in rows]


@step_kind(SetParametersStep, footprint=set_parameters_footprint)
def run_set_parameters(step: SetParametersStep, ctx: StepContext) -> StepOutcome:
    """Write each parameter, after snapshotting it and registering its restore; evidence shows before and after."""
    ssm = ctx.clients.client("ssm")
    ctx.secrets.add(*step.secrets())
    rows: list[dict[str, Any]] = []
    try:
        for spec in step.parameters:
            rows.append(_set_one(ssm, spec, step, ctx))
    except StepError as exc:
        raise _scrub(exc, ctx.secrets, parameters=_public_rows(rows)) from None
    created = sum(1 for r in rows if not r["_snaps"][0].exists)
    restored = sum(1 for r in rows if r["restore"] != "off")
    summary = (f"set {len(rows)} SSM parameter(s) ({created} created, {len(rows) - created} changed); "
               f"{restored} will be restored")
    return StepOutcome(
        summary=summary,
        details={"parameters": _public_rows(rows), "restore": step.restore},
        markdown=_set_markdown(rows, ctx.secrets),
        request_ids=[r["request_id"] for r in rows if r["request_id"]],
    )


def _delete_one(ssm: SSMClient, name: str, step: DeleteParametersStep, ctx: StepContext) -> dict[str, Any]:
    before, restore = snapshot_before_change(ssm, ctx, name, step.restore)
    _learn(ctx.secrets, before)
    deleted = delete(ssm, name, missing_ok=step.missing_ok) if before.exists else False
    ctx.logger.info("SSM parameter %s %s", name, "deleted" if deleted else "did not exist")
    after = ParameterSnapshot(name=name, exists=False)
    return {"name": name, "deleted": deleted, "before": before.public(), "after": after.public(),
            "restore": restore, "_snaps": (before, after)}


@step_kind(DeleteParametersStep, footprint=delete_parameters_footprint)
def run_delete_parameters(step: DeleteParametersStep, ctx: StepContext) -> StepOutcome:
    """Delete each parameter after snapshotting it; without missing_ok, a missing one fails the step first."""
    ssm = ctx.clients.client("ssm")
    if not step.missing_ok:
        missing = [n for n in step.names if not snapshot(ssm, n).exists]
        if missing:
            raise StepError(f"SSM parameter(s) to delete do not exist: {', '.join(missing)} (nothing was deleted; "
                            "set missing_ok: true to allow this)", code=AWS_PARAMETER_NOT_FOUND)
    rows: list[dict[str, Any]] = []
    try:
        for name in step.names:
            rows.append(_delete_one(ssm, name, step, ctx))
    except StepError as exc:
        raise _scrub(exc, ctx.secrets, parameters=_public_rows(rows)) from None
    deleted = sum(1 for r in rows if r["deleted"])
    return StepOutcome(
        summary=f"deleted {deleted} of {len(rows)} SSM parameter(s)"
        + (f"; {sum(1 for r in rows if r['restore'] != 'off')} will be restored" if step.restore else ""),
        details={"parameters": _public_rows(rows), "restore": step.restore},
        markdown=_set_markdown(rows, ctx.secrets),
    )


def compare(actual: ParameterSnapshot, expectation: ParameterExpectation) -> list[str]:
    """What is wrong with a parameter against one expectation ([] when it holds); secrets are shown masked."""
    name = expectation.name
    if not actual.exists:
        return [f"SSM parameter {name} does not exist"]
    problems = []
    if expectation.type and actual.type != expectation.type:
        problems.append(f"SSM parameter {name} is a {actual.type}, expected {expectation.type}")
    secure = actual.secure or expectation.type == SECURE
    show = (lambda v: mask_any(v)) if secure else (lambda v: truncate(json.dumps(v), MAX_SHOWN_VALUE))
    value = actual.value or ""
    check, expected = expectation.check, expectation.expected
    if check == "equals" and value != expected:
        problems.append(f"SSM parameter {name} is {show(value)}, expected {show(expected)}")
    elif check == "contains" and not _contains(value, expected, actual.type == "StringList"):
        problems.append(f"SSM parameter {name} is {show(value)}, which does not contain {show(expected)}")
    elif check == "json_subset":
        problems += _json_problems(name, value, expected, show)
    return problems


def _contains(value: str, expected: str, string_list: bool) -> bool:
    """Substring test; for a StringList, every comma-separated expected item must be an item of the list."""
    if not string_list:
        return expected in value
    items = {item.strip() for item in value.split(",")}
    return all(item.strip() in items for item in expected.split(","))


def _json_problems(name: str, value: str, expected: Any, show: Any) -> list[str]:
    try:
        document = nesting.loads(value, f"SSM parameter {name}")
    except nesting.NestingError as exc:
        return [str(exc)]
    except json.JSONDecodeError:
        return [f"SSM parameter {name} is not JSON: {show(value)}"]
    return [f"SSM parameter {name} {p}" for p in json_subset_mismatches(expected, document, lambda _p, v: show(v))]


def _shown_expected(exp: ParameterExpectation, snap: ParameterSnapshot) -> str:
    """The expected value as the evidence shows it (masked when the parameter is, or is declared, a SecureString)."""
    secure = snap.secure or exp.type == SECURE
    return mask_any(exp.expected) if secure else truncate(json.dumps(exp.expected), MAX_SHOWN_VALUE)


def _expect_records(rows: list[tuple[ParameterExpectation, ParameterSnapshot, list[str]]],
                    secrets: Iterable[str]) -> list[CheckRecord]:
    """Each expectation as a typed check (where: the parameter), values masked as in the evidence."""
    return [CheckRecord.of(exp.check, not problems, redact(_shown_expected(exp, snap), secrets),
                           f"{redact(snap.shown_value(), secrets)} ({snap.type}, v{snap.version})" if snap.exists
                           else "(absent)", where=exp.name) for exp, snap, problems in rows]


def _expect_markdown(rows: list[tuple[ParameterExpectation, ParameterSnapshot, list[str]]],
                     secrets: Iterable[str]) -> str:
    table, failures = [], []
    for exp, snap, problems in rows:
        expected = _shown_expected(exp, snap)
        table.append([check_verdict(not problems), md.code(exp.name), exp.check,
                      md.code(redact(expected, secrets)), _cell(snap, secrets)])
        failures += [redact(p, secrets) for p in problems]
    out = md.table(["verdict", "parameter", "check", "expected", "actual"], table)
    return out + ("\n\n**What did not hold**\n\n" + md.bullets(failures) if failures else "")


@step_kind(ExpectParametersStep, footprint=expect_parameters_footprint)
def run_expect_parameters(step: ExpectParametersStep, ctx: StepContext) -> StepOutcome:
    """Read every parameter with decryption and check all expectations; fails listing every one not met."""
    ssm = ctx.clients.client("ssm")
    secrets = ctx.secrets
    secrets.add(*step.secrets())
    rows: list[tuple[ParameterExpectation, ParameterSnapshot, list[str]]] = []
    try:
        for exp in step.parameters:
            snap = snapshot(ssm, exp.name)
            _learn(secrets, snap)
            if snap.secure:  # compared with a SecureString: a secret from now on, declared or not
                secrets.add(*_expected_texts(exp))
            rows.append((exp, snap, compare(snap, exp)))
    except StepError as exc:
        raise _scrub(exc, secrets) from None
    problems = [redact(p, secrets) for _, _, ps in rows for p in ps]
    details = {"parameters": [{"name": e.name, "check": e.check, "actual": s.public(),
                               "problems": [redact(x, secrets) for x in p]} for e, s, p in rows]}
    markdown = _expect_markdown(rows, secrets)
    checks = _expect_records(rows, secrets)
    if problems:
        raise CheckFailed("; ".join(problems), details=details, markdown=markdown, checks=checks)
    ctx.logger.info("All %d SSM parameter expectation(s) met", len(rows))
    return StepOutcome(summary=f"{len(rows)} SSM parameter expectation(s) met", details=details, markdown=markdown,
                       checks=checks)
