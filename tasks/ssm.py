"""SSM Parameter Store steps: ``set_parameters``, ``delete_parameters`` and ``expect_parameters``.

**Always undone.** Before a step first writes or deletes a parameter, it takes a snapshot (value, type, KMS key
id, description, tier, data type, allowed pattern, tags; or "absent") and registers an :class:`UndoAction` that
puts the parameter back exactly as it was, or deletes it again when it did not exist. The action is registered
once per parameter per case (the undo log itself is the registry: see :func:`registered_restore`), so when two
steps change the same parameter the restore goes back to the value from *before the first* change. It is
registered before the write, so a crash during the write is undone too. ``restore: false`` on a step means that
step registers nothing; it cannot cancel a restore that an earlier step registered, and a later step that
restores will snapshot the value the opted-out step left.

The undo log lives in memory. For a restore that must run in another process (a cancellation hook),
:func:`pending_restore_records` gives JSON records that hold no secret (a SecureString's value is left out and
read back from the parameter's history by version when restoring, see :func:`restore_from_record`); a SecureString
that the case *deleted* has no history left, so only the in-process restore can bring it back.

Restoring checks its own work: after putting the parameter back it reads it again and fails (naming the fields,
never the values) when value, type, KMS key, description or tier differ from the snapshot.

Limitations, stated honestly:

* ``PutParameter`` with ``Overwrite`` cannot clear a description (an empty ``Description`` is ignored by AWS),
  and cannot turn an Advanced parameter back into a Standard one. In those two cases the restore deletes the
  parameter and creates it again (with its tags). That resets its version history, drops its labels and leaves
  a moment in which the parameter does not exist.
* Parameter policies (Advanced tier) and labels are not snapshotted; a parameter that a case deletes comes back
  without them, and with a new version history.
* Reading a SecureString's value for the snapshot needs ``kms:Decrypt`` on its key; tags need
  ``ssm:ListTagsForResource`` (without it, tags are reported unknown and not restored).

**Secrets.** SecureString values (before, after, expected) appear only masked (:func:`tasks.secrets.mask`) in
summaries, details, markdown, logs and error messages; error messages from AWS are redacted, and exception
chains that could carry a value are cut.

**Guard rails.** :func:`check_parameter_writes` lists the writes of a step that fall outside the spec's allowed
parameter prefixes; the validator calls it for every step before anything runs.
"""

from __future__ import annotations

import dataclasses
import json
import re
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Literal, Sequence

from botocore.exceptions import ClientError
from pydantic import ConfigDict, Field, field_validator, model_validator

from tasks.awslambda import json_subset_mismatches, truncate
from tasks.base import SpecModel, StepBase, StepContext, StepOutcome, UndoAction, UndoLog, step_kind, undo_kind
from tasks.errors import AWS_ERRORS, StepError, aws_error, error_code, request_id
from tasks import markdown as md
from tasks.secrets import Secrets, mask, mask_any, redact

ParameterType = Literal["String", "StringList", "SecureString"]
SECURE = "SecureString"
#: how many characters of a plain (non-secret) value the evidence shows
MAX_SHOWN_VALUE = 200
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

    name: str = Field(..., min_length=1, max_length=2048, description="Parameter name, e.g. /pipeline/test/source.")
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
    names: list[str] = Field(..., min_length=1, description="Names of the parameters to delete.")
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

    name: str = Field(..., min_length=1, description="Parameter name.")
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


# --- snapshots and plain functions -----------------------------------------------------------------------------


@dataclass
class ParameterSnapshot:
    """A parameter as it was at one moment, or ``exists=False``. ``value`` is never shown by repr."""

    name: str
    exists: bool
    value: str | None = field(default=None, repr=False)
    type: str | None = None
    key_id: str | None = None
    description: str | None = None
    tier: str | None = None
    data_type: str | None = None
    allowed_pattern: str | None = None
    version: int | None = None
    #: None when unknown (not read, or not allowed to read)
    tags: list[dict[str, str]] | None = None

    @property
    def secure(self) -> bool:
        return self.type == SECURE

    def shown_value(self) -> str:
        """The value as evidence may show it: masked for a SecureString, else cut to a readable length."""
        if not self.exists or self.value is None:
            return "(absent)"
        return mask(self.value) if self.secure else truncate(self.value, MAX_SHOWN_VALUE)

    def public(self) -> dict[str, Any]:
        """JSON-serialisable form for details and evidence, with a SecureString value masked."""
        if not self.exists:
            return {"name": self.name, "exists": False}
        return {
            "name": self.name,
            "exists": True,
            "value": self.shown_value(),
            "type": self.type,
            "key_id": self.key_id if self.secure else None,
            "description": self.description,
            "tier": self.tier,
            "version": self.version,
        }


def _describe(ssm: Any, name: str) -> dict[str, Any]:
    """The DescribeParameters metadata of one parameter (description, key id, tier...); {} when not listed."""
    filters = [{"Key": "Name", "Option": "Equals", "Values": [name]}]
    for page in ssm.get_paginator("describe_parameters").paginate(ParameterFilters=filters):
        for meta in page.get("Parameters", []):
            if meta.get("Name") == name:
                return meta
    return {}


def _tags(ssm: Any, name: str) -> list[dict[str, str]] | None:
    """The parameter's tags, or None when we may not read them."""
    try:
        return ssm.list_tags_for_resource(ResourceType="Parameter", ResourceId=name).get("TagList", [])
    except ClientError as exc:
        if error_code(exc) in ("AccessDenied", "AccessDeniedException"):
            return None
        raise


def snapshot(ssm: Any, name: str, *, with_tags: bool = False) -> ParameterSnapshot:
    """Read a parameter (decrypted) and its metadata; ``exists=False`` when there is no such parameter."""
    try:
        param = ssm.get_parameter(Name=name, WithDecryption=True)["Parameter"]
    except ClientError as exc:
        if error_code(exc) == "ParameterNotFound":
            return ParameterSnapshot(name=name, exists=False)
        raise aws_error("SSM GetParameter", name, exc) from None
    except AWS_ERRORS as exc:
        raise aws_error("SSM GetParameter", name, exc) from None
    real_name = param.get("Name", name)
    try:
        meta = _describe(ssm, real_name)
    except AWS_ERRORS as exc:
        raise aws_error("SSM DescribeParameters", name, exc) from None
    try:
        tags = _tags(ssm, real_name) if with_tags else None
    except AWS_ERRORS as exc:
        raise aws_error("SSM ListTagsForResource", name, exc) from None
    return ParameterSnapshot(
        name=name,
        exists=True,
        value=param.get("Value", ""),
        type=param.get("Type"),
        # a key id only means something for a SecureString (moto keeps a stale one after a type change)
        key_id=meta.get("KeyId") if param.get("Type") == SECURE else None,
        description=meta.get("Description") or None,
        tier=meta.get("Tier"),
        data_type=meta.get("DataType") or param.get("DataType"),
        allowed_pattern=meta.get("AllowedPattern") or None,
        version=param.get("Version"),
        tags=tags,
    )


def put(
    ssm: Any,
    name: str,
    value: str,
    type: str,
    *,
    key_id: str | None = None,
    description: str | None = None,
    overwrite: bool = True,
    tier: str | None = None,
    data_type: str | None = None,
    allowed_pattern: str | None = None,
    tags: list[dict[str, str]] | None = None,
) -> dict[str, Any]:
    """PutParameter; returns the response (Version, Tier). Tags are only sent when creating (AWS's rule)."""
    kwargs: dict[str, Any] = {"Name": name, "Value": value, "Type": type, "Overwrite": overwrite}
    optional = {"KeyId": key_id if type == SECURE else None, "Description": description, "Tier": tier,
                "DataType": data_type, "AllowedPattern": allowed_pattern, "Tags": None if overwrite else tags}
    kwargs.update({k: v for k, v in optional.items() if v})
    try:
        return ssm.put_parameter(**kwargs)
    except AWS_ERRORS as exc:
        raise _scrubbed(aws_error("SSM PutParameter", name, exc), [value] if type == SECURE else []) from None


def delete(ssm: Any, name: str, *, missing_ok: bool = False) -> bool:
    """DeleteParameter; True when deleted, False when it did not exist and ``missing_ok``."""
    try:
        ssm.delete_parameter(Name=name)
        return True
    except AWS_ERRORS as exc:
        if missing_ok and isinstance(exc, ClientError) and error_code(exc) == "ParameterNotFound":
            return False
        raise aws_error("SSM DeleteParameter", name, exc) from None


def differences(current: ParameterSnapshot, original: ParameterSnapshot) -> list[str]:
    """Names of the fields in which ``current`` differs from ``original`` (never the values)."""
    if current.exists != original.exists:
        return ["existence"]
    if not original.exists:
        return []
    diffs = [f for f in ("value", "type") if getattr(current, f) != getattr(original, f)]
    if original.secure and current.key_id != original.key_id:
        diffs.append("key_id")
    if (current.description or None) != (original.description or None):
        diffs.append("description")
    if original.tier and current.tier != original.tier:
        diffs.append("tier")
    return diffs


def _needs_recreate(current: ParameterSnapshot, original: ParameterSnapshot) -> bool:
    """True when an overwrite cannot bring ``current`` back (it cannot clear a description or downgrade a tier)."""
    clear_description = not original.description and bool(current.description)
    downgrade = original.tier == "Standard" and current.tier == "Advanced"
    return clear_description or downgrade


def _put_back(ssm: Any, original: ParameterSnapshot, *, overwrite: bool) -> None:
    assert original.value is not None and original.type is not None
    put(ssm, original.name, original.value, original.type, key_id=original.key_id,
        description=original.description, overwrite=overwrite,
        tier=original.tier if original.tier == "Advanced" or not overwrite else None,
        data_type=original.data_type, allowed_pattern=original.allowed_pattern, tags=original.tags)


def restore_parameter(ssm: Any, original: ParameterSnapshot) -> dict[str, Any]:
    """Put a parameter back as ``original`` shows it (or delete it if it did not exist), then verify.

    Returns what was done (JSON-serialisable, values masked) with ``summary`` and ``markdown`` keys, so that
    the engine can show the restore as a step. Raises StepError when the parameter cannot be put back.
    """
    secrets = [s for s in (original.value,) if original.secure and s]
    try:
        current = snapshot(ssm, original.name, with_tags=original.tags is None)
        if current.secure and current.value:
            secrets.append(current.value)
        action = _restore_action(ssm, original, current)
        after = snapshot(ssm, original.name) if action != "unchanged" else current
    except StepError as exc:
        raise _scrubbed(exc, secrets) from None
    left = differences(after, original)
    if left:
        raise StepError(
            f"restoring SSM parameter {original.name} left its {', '.join(left)} different from before the case",
            code="RestoreIncomplete",
        )
    return _restore_record(original, current, after, action)


def _restore_action(ssm: Any, original: ParameterSnapshot, current: ParameterSnapshot) -> str:
    """Do the least that brings the parameter back; returns unchanged, deleted, created, recreated or overwritten."""
    if not differences(current, original):
        return "unchanged"
    if not original.exists:
        delete(ssm, original.name, missing_ok=True)
        return "deleted"
    if not current.exists:
        _put_back(ssm, original, overwrite=False)
        return "created"
    if _needs_recreate(current, original):
        if original.tags is None:
            original.tags = current.tags
        delete(ssm, original.name, missing_ok=True)
        _put_back(ssm, original, overwrite=False)
        return "recreated"
    _put_back(ssm, original, overwrite=True)
    return "overwritten"


_RESTORE_WORDS = {
    "unchanged": "already as before",
    "deleted": "deleted again (did not exist before the case)",
    "created": "created again",
    "recreated": "deleted and created again (to clear its description or tier; version history reset)",
    "overwritten": "put back",
}


def _restore_record(original: ParameterSnapshot, current: ParameterSnapshot, after: ParameterSnapshot,
                    action: str) -> dict[str, Any]:
    summary = f"SSM parameter {original.name}: {_RESTORE_WORDS[action]}"
    markdown = md.table(["parameter", "before restore", "after restore", "action"],
                        [[md.code(original.name), _cell(current), _cell(after), _RESTORE_WORDS[action]]])
    return {
        "parameter": original.name,
        "action": action,
        "before_restore": current.public(),
        "after_restore": after.public(),
        "summary": summary,
        "markdown": markdown,
    }


def _scrubbed(exc: StepError, secrets: Iterable[str]) -> StepError:
    """A copy of a StepError with known secrets masked in its message (raise it ``from None``)."""
    known = [s for s in secrets if s]
    return type(exc)(redact(exc.message, known), code=exc.code, details=exc.details)


# --- restore registry --------------------------------------------------------------------------------------------


@dataclass
class RestoreParameter:
    """The callable of an undo action that restores one parameter; finding it in the undo log marks it registered."""

    ssm: Any = field(repr=False)
    original: ParameterSnapshot

    def __call__(self) -> dict[str, Any]:
        return restore_parameter(self.ssm, self.original)


_REGISTRY_LOCK = threading.Lock()


def registered_restore(undo: UndoLog, name: str) -> RestoreParameter | None:
    """The pending restore of parameter ``name`` in this case's undo log, if a step registered one."""
    for action in list(undo.actions):
        if isinstance(action.run, RestoreParameter) and action.run.original.name == name:
            return action.run
    return None


def snapshot_before_change(ssm: Any, ctx: StepContext, name: str, restore: bool) -> tuple[ParameterSnapshot, str]:
    """Snapshot ``name`` before a write, registering its restore the first time in the case.

    Returns the snapshot (the state this step found) and what happened to the restore: "registered",
    "kept original" (an earlier step registered it: the restore still goes back to the original) or "off".
    """
    with _REGISTRY_LOCK:
        if not restore:
            existing = registered_restore(ctx.undo, name)
            return snapshot(ssm, name), "kept original" if existing else "off"
        if registered_restore(ctx.undo, name) is not None:
            return snapshot(ssm, name), "kept original"
        before = snapshot(ssm, name, with_tags=True)
        # durable (journaled, encrypted) before the write; the record holds the value: it is what a restore needs
        record = {"kind": UNDO_KIND, "snapshot": dataclasses.asdict(before),
                  "kms_key_id": before.key_id if before.secure else None}
        ctx.undo.add(UndoAction(f"Restore SSM parameter {name}", RestoreParameter(ssm, before), step=ctx.label,
                                record=record, resource=parameter_resource(name)))
        return before, "registered"


UNDO_KIND = "ssm_parameter"


def parameter_resource(name: str) -> str:
    """What a run locks (and journals under) when it changes parameter ``name`` (given by name or ARN)."""
    arn = _ARN.match(name)
    return f"ssm:{arn.group(1) if arn else name}"


@undo_kind(UNDO_KIND)
def redo_restore(clients: Any, record: dict[str, Any]) -> dict[str, Any]:
    """Restore a parameter from its journal record (in another process, e.g. ``recover``), and verify."""
    return restore_parameter(clients.client("ssm"), ParameterSnapshot(**record["snapshot"]))


# --- restore records: restoring from another process ------------------------------------------------------------


def to_record(snap: ParameterSnapshot) -> dict[str, Any]:
    """A JSON-serialisable restore record that holds no secret: a SecureString's value is left out.

    It can be persisted (e.g. where a cancellation hook in another process finds it); :func:`from_record`
    fetches the left-out value back from the parameter's own history by version.
    """
    record = dataclasses.asdict(snap)
    if snap.secure:
        record["value"] = None
    return record


def from_record(ssm: Any, record: dict[str, Any]) -> ParameterSnapshot:
    """The snapshot a record describes, with a SecureString's value read from the parameter's history."""
    snap = ParameterSnapshot(**record)
    if snap.exists and snap.secure and snap.value is None:
        snap.value = _value_from_history(ssm, snap.name, snap.version)
    return snap


def _value_from_history(ssm: Any, name: str, version: int | None) -> str:
    """The value of one version of a parameter (decrypted); StepError when SSM no longer has it."""
    try:
        pages = ssm.get_paginator("get_parameter_history").paginate(Name=name, WithDecryption=True)
        for page in pages:
            for entry in page.get("Parameters", []):
                if entry.get("Version") == version:
                    return str(entry.get("Value", ""))
    except ClientError as exc:
        if error_code(exc) != "ParameterNotFound":
            raise aws_error("SSM GetParameterHistory", name, exc) from None
    raise StepError(
        f"cannot restore SSM parameter {name}: version {version} is no longer in its history (the parameter was "
        "deleted, or more than 100 versions were written since); its value was deliberately not persisted",
        code="RestoreImpossible",
    )


def pending_restore_records(undo: UndoLog) -> list[dict[str, Any]]:
    """Restore records of every parameter restore still pending in a case's undo log (last registered first)."""
    return [to_record(a.run.original) for a in reversed(list(undo.actions)) if isinstance(a.run, RestoreParameter)]


def restore_from_record(ssm: Any, record: dict[str, Any]) -> dict[str, Any]:
    """Restore a parameter from a persisted record (see :func:`to_record`)."""
    return restore_parameter(ssm, from_record(ssm, record))


# --- guard rails ---------------------------------------------------------------------------------------------------

_ARN = re.compile(r"^arn:[^:]+:ssm:[^:]*:[^:]*:parameter(/.*)$")
_TEMPLATE_START = re.compile(r"\{\{|\{%|\{#")


def written_parameter_names(step: Any) -> list[str]:
    """The parameter names that a step writes or deletes ([] for steps that write none)."""
    if isinstance(step, SetParametersStep):
        return [p.name for p in step.parameters]
    if isinstance(step, DeleteParametersStep):
        return list(step.names)
    return []


def _within(name: str, prefix: str) -> bool:
    """Hierarchical prefixes (leading /) match whole path segments; flat prefixes match as text."""
    if not prefix.startswith("/"):
        return name.startswith(prefix)
    base = prefix.rstrip("/")
    return name == base or name.startswith(base + "/")


def _literal_within(literal: str, prefix: str) -> bool:
    """For a templated name: its fixed start must already lie inside the prefix, whatever the template gives."""
    if not prefix.startswith("/"):
        return literal.startswith(prefix)
    return literal.startswith(prefix.rstrip("/") + "/")


def check_parameter_writes(step: Any, allowed_prefixes: Sequence[str] | None) -> list[str]:
    """Errors for every parameter the step would write outside ``allowed_prefixes`` ([] when all are inside).

    ``None`` means no restriction; an empty list allows no writes at all. Call it with the step as rendered when
    variables are known; a name that still holds a template passes only when its fixed start (before the first
    ``{{``) is already inside an allowed prefix. ARNs are checked by their ``parameter/...`` part.
    """
    if allowed_prefixes is None:
        return []
    allowed = ", ".join(allowed_prefixes) or "none"
    errors = []
    for raw in written_parameter_names(step):
        arn = _ARN.match(raw)
        name = arn.group(1) if arn else raw
        templated = _TEMPLATE_START.search(name)
        if templated:
            ok = any(_literal_within(name[: templated.start()], p) for p in allowed_prefixes)
        else:
            ok = any(_within(name, p) for p in allowed_prefixes)
        if not ok:
            errors.append(f"SSM parameter {raw} is outside the allowed parameter prefixes ({allowed})")
    return errors


# --- evidence helpers ---------------------------------------------------------------------------------------------


def _cell(snap: ParameterSnapshot, secrets: Iterable[str] = ()) -> md.Md:
    """A markdown table cell for a snapshot's value (masked for SecureString, known secrets masked in a plain
    value), with type and version."""
    if not snap.exists:
        return md.Md("(absent)")
    shown = md.cell(md.code(redact(snap.shown_value(), secrets)))
    return md.Md(f"{shown} ({md.text(snap.type)}, v{md.text(snap.version)})")


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


# --- runners -----------------------------------------------------------------------------------------------------


def _set_one(ssm: Any, spec: ParameterSpec, step: SetParametersStep, ctx: StepContext) -> dict[str, Any]:
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
    table = [[md.code(row["name"]), _cell(row["_snaps"][0], secrets), _cell(row["_snaps"][1], secrets),
              md.Md(f"{_desc(row['_snaps'][0])} → {_desc(row['_snaps'][1])}"), row["restore"]] for row in rows]
    return md.table(["parameter", "before", "after", "description (before → after)", "restore"], table)


def _public_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: v for k, v in row.items() if not k.startswith("_")} for row in rows]


@step_kind(SetParametersStep)
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


def _delete_one(ssm: Any, name: str, step: DeleteParametersStep, ctx: StepContext) -> dict[str, Any]:
    before, restore = snapshot_before_change(ssm, ctx, name, step.restore)
    _learn(ctx.secrets, before)
    deleted = delete(ssm, name, missing_ok=step.missing_ok) if before.exists else False
    ctx.logger.info("SSM parameter %s %s", name, "deleted" if deleted else "did not exist")
    after = ParameterSnapshot(name=name, exists=False)
    return {"name": name, "deleted": deleted, "before": before.public(), "after": after.public(),
            "restore": restore, "_snaps": (before, after)}


@step_kind(DeleteParametersStep)
def run_delete_parameters(step: DeleteParametersStep, ctx: StepContext) -> StepOutcome:
    """Delete each parameter after snapshotting it; without missing_ok, a missing one fails the step first."""
    ssm = ctx.clients.client("ssm")
    if not step.missing_ok:
        missing = [n for n in step.names if not snapshot(ssm, n).exists]
        if missing:
            raise StepError(f"SSM parameter(s) to delete do not exist: {', '.join(missing)} (nothing was deleted; "
                            "set missing_ok: true to allow this)", code="ParameterNotFound")
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
        document = json.loads(value)
    except json.JSONDecodeError:
        return [f"SSM parameter {name} is not JSON: {show(value)}"]
    return [f"SSM parameter {name} {p}" for p in json_subset_mismatches(expected, document, lambda _p, v: show(v))]


def _expect_markdown(rows: list[tuple[ParameterExpectation, ParameterSnapshot, list[str]]],
                     secrets: Iterable[str]) -> str:
    table = []
    for exp, snap, problems in rows:
        secure = snap.secure or exp.type == SECURE
        expected = mask_any(exp.expected) if secure else truncate(json.dumps(exp.expected), MAX_SHOWN_VALUE)
        result = "ok" if not problems else "FAILED: " + "; ".join(problems)
        table.append([md.code(exp.name), exp.check, md.code(redact(expected, secrets)), _cell(snap, secrets),
                      redact(result, secrets)])
    return md.table(["parameter", "check", "expected", "actual", "result"], table)


@step_kind(ExpectParametersStep)
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
    if problems:
        raise StepError("; ".join(problems), code="ExpectationFailed", details={**details, "markdown": markdown})
    ctx.logger.info("All %d SSM parameter expectation(s) met", len(rows))
    return StepOutcome(summary=f"{len(rows)} SSM parameter expectation(s) met", details=details, markdown=markdown)
