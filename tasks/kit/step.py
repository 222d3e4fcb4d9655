"""What every step kind shares: its spec base model, the context it runs in, what it returns, and the registry.

A step kind is three things in its service module under ``tasks/``: a pydantic model (a subclass of
:class:`StepBase` with a ``kind`` literal), plain functions that take boto3 clients, and a runner
``run(step, ctx) -> StepOutcome`` registered with :func:`step_kind`. The flow's engine wraps every runner in a
Prefect task named after the step, so adding a kind never touches the engine.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar, Literal, Protocol

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from tasks.kit.aws import ClientFactory
from tasks.kit.checks import CheckRecord
from tasks.kit.files import HashedItem, StepFile
from tasks.kit.iam import Arns, Footprint, FootprintFn
from tasks.kit.polling import Clock
from tasks.kit.secrets import Secrets


def is_template(text: str) -> bool:
    """True when a string still holds ``{{ ... }}`` or ``{% ... %}`` (it is checked again once rendered)."""
    return "{{" in text or "{%" in text


class ResourceName:
    """Marks a field (``Annotated[str, RESOURCE_NAME]``) whose value names an AWS resource: a bucket, an S3 key
    or prefix, a parameter name, an S3 URI. Such names travel unmasked (links, lock names, events, the pack's
    step details), so validation refuses a secret in them (flows.spec.model)."""


RESOURCE_NAME = ResourceName()


def template_aware(pattern: str, message: str) -> AfterValidator:
    """A string constraint that holds for rendered values and waits for rendering on templates.

    Steps are validated as written (with templates) and again after rendering, so a field such as a bucket
    name may be ``"{{ landing_bucket }}"`` in the spec and is still checked, on its real value, before the run.
    """
    compiled = re.compile(pattern)

    def check(value: str | None) -> str | None:
        if value is not None and not is_template(value) and not compiled.fullmatch(value):
            raise ValueError(f"{message} (got {value!r})")
        return value

    return AfterValidator(check)


def format_bytes(count: float | None) -> str:
    """``2150`` -> ``2.1 KB``; whole bytes below 1 KB."""
    size = float(count or 0)
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1024:
            break
        size /= 1024
    else:
        unit = "TB"
    return f"{size:.0f} B" if unit == "B" else f"{size:.1f} {unit}"


def format_duration(seconds: float) -> str:
    """``4.2 s`` under a minute, ``3 min 07 s`` above."""
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(int(round(seconds)), 60)
    return f"{minutes} min {secs:02d} s"


#: how much a check that did not hold weighs: ``error`` fails the case, ``warn`` is a warning (the case passes)
Severity = Literal["error", "warn"]


def severity_field(what: str, default: Severity | None = "error") -> Any:
    """The ``severity`` field of a step or of a check model (``what``: what it applies to)."""
    inherit = " Unset: the severity of what holds it." if default is None else ""
    return Field(default, description=f"`warn`: when {what} does not hold, the step is `warned` and the case still "
                 f"passes (counted and shown as a warning everywhere a verdict is); `error`: it fails.{inherit}")


class SpecModel(BaseModel):
    """Base of every spec model: unknown keys are errors, so a typo never passes silently."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True, hide_input_in_errors=True, allow_inf_nan=False)


#: the most past runs a baseline may ask for (each is one report.json read, size-capped, before the steps)
BASELINE_MAX_RUNS = 50


class Baseline(SpecModel):
    """A value compared with the same value in the case's own last ``runs`` passing runs (their evidence packs'
    report.json): it must lie within ``within_pct_of_baseline`` percent of their mean. With fewer passing runs
    that recorded it, the check warns (it never fails) and says so."""

    within_pct_of_baseline: float = Field(..., gt=0, le=1000, description="How far from the baseline (the mean "
                                          "of the past runs' values) the value may be, in percent of it.")
    runs: int = Field(7, ge=1, le=BASELINE_MAX_RUNS, description="How many past passing runs make the baseline.")
    severity: Severity | None = severity_field("the value is outside the range (too few past runs always only "
                                               "warn)", None)


class StepBase(SpecModel):
    """Fields that every step has."""

    #: string fields that are not templates (names); every other string field is rendered with the case's
    #: variables by the engine before the runner sees the step
    untemplated: ClassVar[frozenset[str]] = frozenset({"name", "kind", "description"})
    #: fields naming a local file (relative to the spec) whose *content* is a template: the validator checks
    #: its variables before the run, and the runner renders the content with ``ctx.render``
    template_files: ClassVar[frozenset[str]] = frozenset()
    #: fields (or dotted paths to nested fields: ``expect.reconcile.file``) naming local files or glob patterns (a
    #: string or a list of them), relative to the spec: the
    #: validator checks that they lie under the allowed folders and, when untemplated, that they exist
    #: (``template_files`` are local files too)
    local_files: ClassVar[frozenset[str]] = frozenset()

    name: str | None = Field(
        None,
        description="Unique name of the step in the case; shown as the task run's name in the Prefect UI.",
        pattern=r"^[A-Za-z0-9][A-Za-z0-9 _.:-]*$",
        max_length=80,
    )
    description: str | None = Field(None, description="What this step proves, for the evidence.")
    continue_on_failure: bool = Field(
        False, description="When this step fails, go on with the next steps (the case still fails)."
    )
    severity: Severity = severity_field(
        "any check of this step (a step that could not run, an AWS error or a timeout waiting for AWS, is still "
        "an `error`)")
    duration_baseline: Baseline | None = Field(
        None, description="The step's duration compared with its duration in the case's last passing runs (e.g. "
        "`{within_pct_of_baseline: 50, runs: 7}`): a step much slower, or faster, than usual.")

    def case_checks(self, case: Any) -> list[str]:
        """Checks that need the whole case (e.g. its AWS guard rails); each problem names the field.

        Called on the step as written (templates in place) and again on the rendered step before the run.
        """
        return []

    def rendered_checks(self, spec_dir: Path, render: Callable[[str], str]) -> list[str]:
        """Checks of the rendered step that need no AWS call (e.g. that SQL is read-only); each names the field."""
        return []

    def resources(self, spec_dir: Path) -> list[str]:
        """What this step (rendered) may change and the case will undo: ``ssm:/name``, ``s3:bucket/prefix``. The
        run locks each one (a Prefect global concurrency limit) from before the first step until its undo is
        done, so overlapping runs of any cases serialize on what they share."""
        return []

    def secrets(self) -> list[str]:
        """Secret values this step handles (e.g. SecureString values): redacted from every output of the run."""
        return []


@dataclass
class UndoAction:
    """Something to do when the case ends: remove test data, restore a setting.

    ``record`` makes the action durable: a JSON document ``{"kind": ..., ...}`` from which the undo kind
    registered under that name (:func:`undo_kind`) can redo the action in another process, e.g. after the run
    was killed (see ``tasks.kit.journal``). It may hold a secret (a SecureString's earlier value): it is only ever
    stored encrypted. ``resource`` names what the action puts back (``ssm:/name``, ``s3:bucket/key``).
    """

    description: str
    run: Callable[[], dict[str, Any]]
    #: the step that registered it (its label)
    step: str = ""
    record: dict[str, Any] | None = None
    resource: str = ""
    #: where the durable journal keeps this action (set by the journal when it writes it)
    journal_id: str | None = None


class Journal(Protocol):
    """Where undo actions are kept durably before the change they undo (``tasks.kit.journal.SsmJournal``)."""

    def write(self, action: UndoAction) -> None: ...

    def remove(self, action: UndoAction) -> None: ...


@dataclass
class UndoLog:
    """Actions to run when the case ends, last registered first. Thread-safe for parallel steps.

    An action stays pending until :meth:`done` is called for it, so an undo that is interrupted half-way
    (a second Ctrl+C) leaves the rest for the next attempt. With a journal, every action is written to it
    before :meth:`add` returns (so before the change it undoes) and removed from it once done.
    """

    actions: list[UndoAction] = field(default_factory=list)
    journal: Journal | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, action: UndoAction) -> None:
        if self.journal is not None and action.record is not None:
            self.journal.write(action)
        with self._lock:
            self.actions.append(action)

    def rewrite(self, action: UndoAction) -> None:
        """Journal an action whose record changed: the new entry is written first, then the old one removed (a
        crash in between leaves both, and redoing both is safe for the kinds that change their record)."""
        if self.journal is None or action.record is None:
            return
        old = action.journal_id
        self.journal.write(action)
        if old is not None and old != action.journal_id:
            new, action.journal_id = action.journal_id, old
            self.journal.remove(action)
            action.journal_id = new

    def pending(self) -> list[UndoAction]:
        """The actions still to run, last registered first."""
        with self._lock:
            return list(reversed(self.actions))

    def done(self, action: UndoAction) -> None:
        """Mark an action as run: it leaves the log (and the journal)."""
        with self._lock:
            self.actions = [a for a in self.actions if a is not action]
        if self.journal is not None and action.journal_id is not None:
            self.journal.remove(action)


#: how to redo a durable undo record of each kind in another process: (clients, record) -> outcome
UndoKind = Callable[["ClientFactory", dict[str, Any]], dict[str, Any]]
UNDO_KINDS: dict[str, UndoKind] = {}


def undo_kind(name: str) -> Callable[[UndoKind], UndoKind]:
    """Register how to redo an undo record of kind ``name`` (e.g. after the run that wrote it was killed)."""

    def register(fn: UndoKind) -> UndoKind:
        UNDO_KINDS[name] = fn
        return fn

    return register


class Meter:
    """A running total that a case's steps add to (e.g. the bytes its Athena queries scanned) and the case's limit
    on it (None: none); thread-safe, as parallel steps add to it. One per case run, on its context."""

    def __init__(self, limit: int | None = None) -> None:
        self.limit = limit
        self._lock = threading.Lock()
        self._total = 0

    @property
    def total(self) -> int:
        with self._lock:
            return self._total

    def remaining(self) -> int | None:
        """What is left of the limit (never below 0), or None without a limit."""
        return None if self.limit is None else max(0, self.limit - self.total)

    def add(self, amount: int) -> tuple[int, int]:
        """Add ``amount``; returns the total before and after."""
        with self._lock:
            before = self._total
            self._total += max(0, amount)
            return before, self._total

    def __deepcopy__(self, memo: dict[int, Any]) -> "Meter":
        return self  # one per run: copies of the context share it

    def __reduce__(self) -> Any:  # pickled (e.g. to hash task inputs): the limit only
        return (Meter, (self.limit,))


class Publisher(Protocol):
    """Takes work that need not hold up the step (its evidence in the UI) and does it before the case ends."""

    def submit(self, work: Callable[[], None]) -> None: ...


@dataclass
class StepContext:
    """What a step runner gets besides its (already templated) step model: one per case run."""

    clients: ClientFactory
    case_name: str
    run_id: str
    label: str
    spec_dir: Path = field(default_factory=Path.cwd)
    undo: UndoLog = field(default_factory=UndoLog)
    #: renders a template (e.g. the content of a payload or SQL file) with the case's variables
    render: Callable[[str], str] = field(default=lambda text: text)
    #: the run's secret registry (SecureString values, sensitive fields, ...): runners mask these values where
    #: they put them in their outcome, and add every secret they discover (a SecureString read or compared),
    #: so that later log lines, the engine's net and the evidence pack mask it too
    secrets: Secrets = field(default_factory=Secrets)
    logger: logging.Logger | logging.LoggerAdapter = field(default_factory=lambda: logging.getLogger("pipeline_test"))
    #: set when the run is stopping (cancelled, interrupted, crashed): every wait of this run ends at once
    stop: threading.Event = field(default_factory=threading.Event)
    #: time and sleep for waits; None: the real clock, sleeping on ``stop``
    clock_override: Clock | None = None
    #: when the case run began (wall clock, seconds since the epoch): what "since the case began" means
    started_at: float = field(default_factory=time.time)
    #: where a step's evidence is published off its critical path (flows.evidence.ui.StepPublisher, flushed when the
    #: case ends); None: published in the step itself
    publisher: Publisher | None = None
    #: the case run's scratch folder, for files a step writes for the evidence pack (None: no such files)
    scratch_dir: Path | None = None
    #: bytes the case's Athena queries scanned, against the case's ``aws.athena_max_scanned_bytes``
    scanned: Meter = field(default_factory=Meter)
    #: the case's last passing runs, read from its evidence packs once before the steps (``tasks.kit.baseline``), for
    #: the checks that compare with a baseline; None when no step asks for one
    history: Any = None

    @property
    def clock(self) -> Clock:
        return self.clock_override or Clock.stoppable(self.stop)

    def scratch_folder(self, name: str) -> Path | None:
        """A new folder for this step's files (``<scratch>/step-<label>/<name>``), or None without a scratch dir."""
        if self.scratch_dir is None:
            return None
        label = re.sub(r"[^A-Za-z0-9_.-]+", "-", self.label).strip("-.") or "step"
        folder = self.scratch_dir / f"step-{label}" / name  # never a name Windows reserves (a step named CON)
        folder.mkdir(parents=True, exist_ok=True)
        return folder

    def __post_init__(self) -> None:
        if not isinstance(self.secrets, Secrets):
            self.secrets = Secrets(self.secrets)


@dataclass
class Link:
    """A link for the evidence (AWS console, or the emulator's URL)."""

    url: str
    text: str


@dataclass
class StepOutcome:
    """What a step did and proved.

    ``summary`` is one line for the summary table and CLI; ``details`` is JSON-serialisable data for the
    result object and evidence; ``markdown`` is the body of the step's evidence artifact (no secrets);
    ``tables`` are extra table artifacts (name -> rows); ``request_ids`` are AWS request ids for the record;
    ``hashed_items`` are the files uploaded and query results read, with their SHA-256, for the evidence pack's
    manifest (a typed field, not a convention in ``details``); ``files`` are files the step wrote for the pack
    (into ``ctx.scratch_folder(...)``); ``checks`` are what the step checked, each with its verdict (typed:
    report.html's checks table and report.json's ``checks`` are made from them, never from ``details``).
    """

    summary: str
    details: dict[str, Any] = field(default_factory=dict)
    markdown: str = ""
    links: list[Link] = field(default_factory=list)
    tables: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    request_ids: list[str] = field(default_factory=list)
    hashed_items: list[HashedItem] = field(default_factory=list)
    #: files the step wrote into its scratch folder, copied into the evidence pack (hashed in its manifest)
    files: list[StepFile] = field(default_factory=list)
    #: what the step checked, passed and not
    checks: list[CheckRecord] = field(default_factory=list)


Runner = Callable[[Any, StepContext], StepOutcome]


@dataclass(frozen=True)
class StepKind:
    kind: str
    model: type[StepBase]
    run: Runner
    #: what a rendered step of this kind touches and which IAM actions it needs (``tasks.kit.iam``); None only while
    #: a kind has not declared it (a test fails for such a kind)
    footprint: FootprintFn | None = None


REGISTRY: dict[str, StepKind] = {}


def step_kind(model: type[StepBase], footprint: FootprintFn | None = None) -> Callable[[Runner], Runner]:
    """Register ``run`` as the runner of ``model``'s kind (the model's ``kind`` literal), with its ``footprint``:
    ``(rendered step, tasks.kit.iam.Arns) -> tasks.kit.iam.Footprint``, what it changes, reads and undoes, and every IAM
    action its runner calls on which ARN (the plan, the IAM policy and the preflight are made from it)."""
    kind = model.model_fields["kind"].default
    if not isinstance(kind, str):
        raise TypeError(f"{model.__name__}.kind needs a literal default")

    def register(run: Runner) -> Runner:
        known = REGISTRY.get(kind)
        if known is not None and known.model.__qualname__ != model.__qualname__:
            raise TypeError(f"step kind {kind!r} is already registered by {known.model.__module__}."
                            f"{known.model.__name__}: choose another kind name")
        REGISTRY[kind] = StepKind(kind, model, run, footprint)
        return run

    return register


def footprint(step: StepBase, arns: Arns | None = None) -> Footprint:
    """What a rendered step touches and needs (its kind's declaration), with ARNs for ``arns`` (default: ``*``
    for account and region). Raises LookupError for a kind that declares none."""
    kind = REGISTRY[step.kind]  # type: ignore[attr-defined]
    if kind.footprint is None:
        raise LookupError(f"step kind {kind.kind!r} declares no footprint (its IAM actions): "
                          "@step_kind(Model, footprint=...)")
    return kind.footprint(step, arns or Arns())
