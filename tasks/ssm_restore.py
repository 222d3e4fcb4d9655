"""SSM parameter snapshots and restores: the library under the SSM steps (:mod:`tasks.ssm`).

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
that the case *deleted* has no history left, so only the in-process restore can bring it back. The durable
(journaled, encrypted) record of each registered restore is redone by :func:`redo_restore`, the ``ssm_parameter``
undo kind.

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

**Secrets.** A SecureString's value appears only masked (:func:`tasks.kit.secrets.mask`) in snapshots' public form,
restore records and error messages (:func:`_scrubbed`).

**Guard rails.** :func:`check_parameter_names` lists the names that fall outside the spec's allowed parameter
prefixes (the steps' ``check_parameter_writes`` applies it to the names a step writes or deletes).
"""

from __future__ import annotations

import dataclasses
import re
import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Iterable, Mapping, Sequence

from botocore.exceptions import ClientError

from tasks.kit import markdown as md
from tasks.kit.errors import AWS_ERRORS, RESTORE_IMPOSSIBLE, RESTORE_INCOMPLETE, StepError, aws_error, error_code
from tasks.kit.json_expect import truncate
from tasks.kit.secrets import mask, redact
from tasks.kit.step import StepContext, UndoAction, UndoLog, undo_kind

if TYPE_CHECKING:
    from types_boto3_ssm import SSMClient
    from types_boto3_ssm.type_defs import ParameterStringFilterTypeDef, PutParameterResultTypeDef

    from tasks.kit.aws import ClientFactory

SECURE = "SecureString"
#: how many characters of a plain (non-secret) value the evidence shows
MAX_SHOWN_VALUE = 200


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


def _describe(ssm: SSMClient, name: str) -> Mapping[str, Any]:
    """The DescribeParameters metadata of one parameter (description, key id, tier...); {} when not listed."""
    filters: list[ParameterStringFilterTypeDef] = [{"Key": "Name", "Option": "Equals", "Values": [name]}]
    for page in ssm.get_paginator("describe_parameters").paginate(ParameterFilters=filters):
        for meta in page.get("Parameters", []):
            if meta.get("Name") == name:
                return meta
    return {}


def _tags(ssm: SSMClient, name: str) -> list[dict[str, str]] | None:
    """The parameter's tags, or None when we may not read them."""
    try:
        tags = ssm.list_tags_for_resource(ResourceType="Parameter", ResourceId=name).get("TagList", [])
        return [{"Key": tag["Key"], "Value": tag["Value"]} for tag in tags]
    except ClientError as exc:
        if error_code(exc) in ("AccessDenied", "AccessDeniedException"):
            return None
        raise


def snapshot(ssm: SSMClient, name: str, *, with_tags: bool = False) -> ParameterSnapshot:
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
    ssm: SSMClient,
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
) -> PutParameterResultTypeDef:
    """PutParameter; returns the response (Version, Tier). Tags are only sent when creating (AWS's rule)."""
    kwargs: dict[str, Any] = {"Name": name, "Value": value, "Type": type, "Overwrite": overwrite}
    optional = {"KeyId": key_id if type == SECURE else None, "Description": description, "Tier": tier,
                "DataType": data_type, "AllowedPattern": allowed_pattern, "Tags": None if overwrite else tags}
    kwargs.update({k: v for k, v in optional.items() if v})
    try:
        return ssm.put_parameter(**kwargs)
    except AWS_ERRORS as exc:
        raise _scrubbed(aws_error("SSM PutParameter", name, exc), [value] if type == SECURE else []) from None


def delete(ssm: SSMClient, name: str, *, missing_ok: bool = False) -> bool:
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


def _put_back(ssm: SSMClient, original: ParameterSnapshot, *, overwrite: bool) -> None:
    assert original.value is not None and original.type is not None
    put(ssm, original.name, original.value, original.type, key_id=original.key_id,
        description=original.description, overwrite=overwrite,
        tier=original.tier if original.tier == "Advanced" or not overwrite else None,
        data_type=original.data_type, allowed_pattern=original.allowed_pattern, tags=original.tags)


def restore_parameter(ssm: SSMClient, original: ParameterSnapshot) -> dict[str, Any]:
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
            code=RESTORE_INCOMPLETE,
        )
    return _restore_record(original, current, after, action)


def _restore_action(ssm: SSMClient, original: ParameterSnapshot, current: ParameterSnapshot) -> str:
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
    # what was done only: every place that shows it names the parameter already ("Restore SSM parameter X: put
    # back" in the clean-up's line and table, "Recovered ssm:X (run ...): put back" in recover's)
    summary = _RESTORE_WORDS[action]
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
    return exc.with_message(redact(exc.message, known))


# --- restore registry --------------------------------------------------------------------------------------------


@dataclass
class RestoreParameter:
    """The callable of an undo action that restores one parameter; finding it in the undo log marks it registered."""

    ssm: SSMClient = field(repr=False)
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


def snapshot_before_change(ssm: SSMClient, ctx: StepContext, name: str, restore: bool) -> tuple[ParameterSnapshot, str]:
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
def redo_restore(clients: ClientFactory, record: dict[str, Any]) -> dict[str, Any]:
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


def from_record(ssm: SSMClient, record: dict[str, Any]) -> ParameterSnapshot:
    """The snapshot a record describes, with a SecureString's value read from the parameter's history."""
    snap = ParameterSnapshot(**record)
    if snap.exists and snap.secure and snap.value is None:
        snap.value = _value_from_history(ssm, snap.name, snap.version)
    return snap


def _value_from_history(ssm: SSMClient, name: str, version: int | None) -> str:
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
        code=RESTORE_IMPOSSIBLE,
    )


def pending_restore_records(undo: UndoLog) -> list[dict[str, Any]]:
    """Restore records of every parameter restore still pending in a case's undo log (last registered first)."""
    return [to_record(a.run.original) for a in reversed(list(undo.actions)) if isinstance(a.run, RestoreParameter)]


def restore_from_record(ssm: SSMClient, record: dict[str, Any]) -> dict[str, Any]:
    """Restore a parameter from a persisted record (see :func:`to_record`)."""
    return restore_parameter(ssm, from_record(ssm, record))


# --- guard rails ---------------------------------------------------------------------------------------------------

_ARN = re.compile(r"^arn:[^:]+:ssm:[^:]*:[^:]*:parameter(/.*)$")
_TEMPLATE_START = re.compile(r"\{\{|\{%|\{#")


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


def check_parameter_names(names: Iterable[str], allowed_prefixes: Sequence[str] | None) -> list[str]:
    """Errors for every parameter name outside ``allowed_prefixes`` ([] when all are inside).

    ``None`` means no restriction; an empty list allows no writes at all. Call it with names as rendered when
    variables are known; a name that still holds a template passes only when its fixed start (before the first
    ``{{``) is already inside an allowed prefix. ARNs are checked by their ``parameter/...`` part.
    """
    if allowed_prefixes is None:
        return []
    allowed = ", ".join(allowed_prefixes) or "none"
    errors = []
    for raw in names:
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

