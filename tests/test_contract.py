"""The contract every registered step kind keeps, checked for all of them (a new kind is covered by adding one
row to ``MINIMAL``): its ``kind`` literal matches its registry key, every field is described, the reference and
the JSON Schema document it, and a kind that changes AWS state registers its (durable) undo *before* the change.
"""

from __future__ import annotations

import json
import typing
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

import flows.spec.model  # noqa: F401  (imports every service module: fills the registry)
from flows.spec.model import json_schema
from flows.spec.reference import REFERENCE, reference
from tasks.kit.aws import ClientFactory
from tasks.kit.step import REGISTRY, UNDO_KINDS, StepBase, StepContext, UndoAction, UndoLog
from tests.helpers import MINIMAL, minimal

KINDS = sorted(REGISTRY)
#: AWS calls that change state: the undo must be registered before the first of them
WRITES = {"PutParameter", "DeleteParameter", "DeleteParameters", "PutObject", "CreateMultipartUpload", "CopyObject"}


def changes_state(kind: str) -> bool:
    return kind in MINIMAL and bool(minimal(kind).resources(Path(".")))


STATEFUL = [kind for kind in KINDS if changes_state(kind)]


def described_fields(model: type[BaseModel], seen: set[type[BaseModel]] | None = None) -> list[tuple[str, str]]:
    """(model.field, description) of the model's fields and of every model nested in them (lists, unions, ...)."""
    seen = set() if seen is None else seen
    if model in seen:
        return []
    seen.add(model)
    found: list[tuple[str, str]] = []

    def visit(annotation: Any) -> None:
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            found.extend(described_fields(annotation, seen))
        for arg in typing.get_args(annotation):
            visit(arg)

    for name, info in model.model_fields.items():
        found.append((f"{model.__name__}.{name}", info.description or ""))
        visit(info.annotation)
    return found


# ----------------------------------------------------------------------------------------------- the model


def test_every_registered_kind_has_a_minimal_instance_here() -> None:
    assert KINDS and set(MINIMAL) == set(REGISTRY), "add a row to MINIMAL for each new step kind"
    assert STATEFUL, "no kind changes AWS state: the undo-order test below checks nothing"


def test_a_kind_name_registered_twice_is_refused() -> None:
    """A module of PIPELINE_TEST_STEP_MODULES (or of the product) cannot take over a kind's name."""
    from tasks.kit.step import step_kind

    class Twin(StepBase):
        kind: typing.Literal["upload"] = "upload"

    with pytest.raises(TypeError, match="step kind 'upload' is already registered by tasks.s3.steps.UploadStep"):
        step_kind(Twin)(lambda step, ctx: None)  # type: ignore[arg-type,return-value]
    assert REGISTRY["upload"].model.__name__ == "UploadStep"


@pytest.mark.parametrize("kind", KINDS)
def test_kind_is_a_literal_defaulting_to_its_registry_key(kind: str) -> None:
    model = REGISTRY[kind].model
    info = model.model_fields["kind"]
    assert typing.get_origin(info.annotation) is typing.Literal
    assert typing.get_args(info.annotation) == (kind,)
    assert info.default == kind and REGISTRY[kind].kind == kind
    assert minimal(kind).kind == kind


@pytest.mark.parametrize("kind", KINDS)
def test_every_field_has_a_description(kind: str) -> None:
    # ``kind`` is the discriminator: the reference documents it once for all kinds ("Selects the kind of step.")
    missing = [name for name, text in described_fields(REGISTRY[kind].model)
               if not text.strip() and not name.endswith(".kind")]
    assert not missing, f"fields without a description: {', '.join(missing)}"


# ---------------------------------------------------------------------------------------- reference, schema


@pytest.mark.parametrize("kind", KINDS)
def test_reference_has_a_heading_for_the_kind(kind: str) -> None:
    heading = f"## Step `{kind}`"
    assert heading in reference().splitlines()
    assert heading in REFERENCE.read_text(encoding="utf-8").splitlines(), "run python -m flows.spec.reference"


@pytest.mark.parametrize("kind", KINDS)
def test_json_schema_includes_the_kind(kind: str) -> None:
    definitions = json_schema().get("$defs", {})
    model = definitions.get(REGISTRY[kind].model.__name__)
    assert model is not None, f"{REGISTRY[kind].model.__name__} is not in the case schema"
    prop = model["properties"]["kind"]
    assert prop.get("const") == kind or prop.get("enum") == [kind]


# ------------------------------------------------------------------------------------------- undo first


class RecordingJournal:
    """A journal that writes nowhere: it records, in ``events``, when each undo action was registered."""

    def __init__(self, events: list[tuple[str, Any]]) -> None:
        self.events = events

    def write(self, action: UndoAction) -> None:
        self.events.append(("undo", action))

    def remove(self, action: UndoAction) -> None:
        self.events.append(("undo done", action))


@pytest.mark.parametrize("kind", STATEFUL)
def test_undo_is_registered_before_the_first_write(kind: str, clients: ClientFactory, tmp_path: Path) -> None:
    MINIMAL[kind].seed(clients, tmp_path)
    events: list[tuple[str, Any]] = []
    for service in ("s3", "ssm"):
        clients.client(service).meta.events.register(
            "before-call.*.*", lambda model, **_: events.append(("call", model.name)))
    ctx = StepContext(clients=clients, case_name="contract", run_id="run-1", label="step", spec_dir=tmp_path,
                      undo=UndoLog(journal=RecordingJournal(events)))

    REGISTRY[kind].run(minimal(kind), ctx)

    order = ["undo" if what == "undo" else detail for what, detail in events if what in ("undo", "call")]
    writes = [i for i, name in enumerate(order) if name in WRITES]
    undos = [i for i, name in enumerate(order) if name == "undo"]
    assert writes, f"{kind} made no write call: {order}"
    assert undos, f"{kind} registered no journaled undo (an UndoAction with a record): {order}"
    assert undos[0] < writes[0], f"{kind} changed AWS state before registering its undo: {order}"
    for _, action in (e for e in events if e[0] == "undo"):
        assert action.record is not None
        assert json.loads(json.dumps(action.record)) == action.record
        assert action.record["kind"] in UNDO_KINDS
    assert ctx.undo.pending(), "the undo action is not in the case's undo log"
