"""Fault injection: every AWS call that every step kind (and the clean-up) makes, failing in four ways.

For each (call, fault) pair a representative case runs: it first changes SSM parameters (a String and a
SecureString) and uploads an object with clean-up, then runs the step under test, whose AWS call at that point
fails. The faults are raised by a botocore ``before-call`` hook on every client the case's ``ClientFactory``
makes (``aws.max_attempts: 1``, so the call fails as it would once botocore's retries are used up):

* throttling (the service's throttling code, with botocore's "reached max retries" metadata),
* an HTTP 500 internal error, AccessDenied, and a connection reset (``ConnectionClosedError``).

Each pair must leave every SSM parameter as it was (value, type, description), no uploaded object behind (and
no multipart upload pending), the case failed with a message that names the AWS operation, the resource and the
fault's code (never an "unexpected ..." error or a traceback), and an evidence pack that verifies (written for
each call with one of its faults in turn, and by every flow run). By design, AccessDenied on
``ssm:ListTagsForResource`` is no failure (tags are reported unknown and not restored: ``TOLERATED``).

The calls are listed in ``CALLS`` (one entry per call, in the order the step makes them, so the second
``HeadObject`` of an upload is its own pair); ``test_calls_are_the_ones_listed`` records what each
representative case really calls and fails when the list is out of date. Most pairs run through the engine's
own functions in-process (``execute_step`` per step, ``undo_now`` for the clean-up: what the flow's tasks
run); ``test_flow_*`` run pairs through the real flow under Prefect's test harness, one per step kind. The
count of pairs covered is printed in the terminal summary (``pytest_terminal_summary`` in conftest.py).

Two more kinds of failure are covered beyond the four: a response lost after AWS made the change (every call
that changes SSM or S3; the change must still be undone), and throttling met by botocore's own retry loop.
"""

from __future__ import annotations

import logging
import threading
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Callable, Iterator

import botocore.endpoint
import pytest
from botocore import UNSIGNED
from botocore.awsrequest import AWSResponse
from botocore.exceptions import ClientError, ConnectionClosedError
from moto import mock_aws
from moto.athena.models import QueryResults, athena_backends
from moto.core import DEFAULT_ACCOUNT_ID
from prefect.states import State

import flows.evidence.ui
import tasks.athena as athena_mod
from flows.emulator import FAKE_ENV, REAL_ENV
from flows.evidence.pack.verify import verify
from flows.evidence.pack.write import write_pack
from flows.evidence.results import CaseResult, StepResult
from flows.run.engine import execute_step, undo_now
from flows.spec.load import parse_spec
from flows.spec.model import iter_steps
from tasks.kit.aws import AwsTarget, ClientFactory
from tasks.kit.errors import CLEANUP_FAILED
from tasks.kit.polling import Clock
from tasks.kit.step import REGISTRY, StepContext, StepKind, UndoLog

REGION = "us-east-1"
BUCKET = "fault-bucket"
RESULTS_BUCKET = "fault-athena"
FUNCTION = "ingest"
SECRET = "orig-Secret-b41d"  # the SecureString's value before the case
NEW_SECRET = "new-Secret-9c2e"  # what the case writes
#: the parameters as they are before every case: name -> (value, type, description)
PARAMETERS = {
    "/ft/name": ("original", "String", "a plain setting"),
    "/ft/secret": (SECRET, "SecureString", "a secret setting"),
    "/ft/other": ("other", "String", "changed by the set_parameters step"),
    "/ft/doomed": ("doomed", "String", "deleted by the delete_parameters step"),
}
#: an object that is in the bucket before every case (and must stay)
KEPT_KEY = "kept/existing.csv"
log = logging.getLogger("test_faults")


# --- faults ----------------------------------------------------------------------------------------------------

ClientCodes = dict[str, tuple[str, int]]


@dataclass(frozen=True)
class Fault:
    """One way an AWS call fails: a ClientError with per-service codes, or a connection reset."""

    name: str
    codes: ClientCodes = field(default_factory=dict)  # service -> (code, HTTP status); "*" for the rest
    message: str = ""
    #: raised once AWS has answered (the call took effect, its response is lost), not before the call is sent
    after: bool = False

    def error(self, service: str, operation: str, endpoint: str) -> Exception:
        if not self.codes:
            return ConnectionClosedError(endpoint_url=endpoint)
        code, status = self._code(service, operation)
        meta = {"HTTPStatusCode": status, "RequestId": "fault-req-1", "RetryAttempts": 0}
        if self.name == "throttling":  # what botocore reports once its retries are used up
            meta.update(RetryAttempts=7, MaxAttemptsReached=True)
        body = {"Code": code, "Message": self.message} if operation != "HeadObject" else {"Code": code}
        return ClientError({"Error": body, "ResponseMetadata": meta}, operation)

    def _code(self, service: str, operation: str) -> tuple[str, int]:
        code, status = self.codes.get(service) or self.codes["*"]
        if operation == "HeadObject":  # a HEAD error has no body: botocore gives the HTTP status as its code
            return str(status), status
        return code, status

    def expected_code(self, service: str, operation: str) -> str:
        """The code the failure must name (S3 maps a bodiless 403 to AccessDenied)."""
        if not self.codes:
            return "ConnectionClosedError"
        code, _ = self._code(service, operation)
        return "AccessDenied" if code == "403" else code


FAULTS = [
    Fault("throttling", {"s3": ("SlowDown", 503), "lambda": ("TooManyRequestsException", 429),
                         "*": ("ThrottlingException", 400)}, "Rate exceeded"),
    Fault("internal", {"s3": ("InternalError", 500), "lambda": ("ServiceException", 500),
                       "athena": ("InternalServerException", 500), "*": ("InternalServerError", 500)},
          "We encountered an internal error. Please try again."),
    Fault("denied", {"s3": ("AccessDenied", 403), "*": ("AccessDeniedException", 403)},
          "User: arn:aws:iam::123456789012:user/tester is not authorized to perform this action"),
    Fault("reset"),
]
#: a connection reset after AWS acted on the call: the change is made, but the case never hears of it
LOST = Fault("lost", after=True)


@dataclass(frozen=True)
class Call:
    """The ``n``-th call of ``operation`` made while ``window`` runs (a step's label, or "cleanup")."""

    window: str
    service: str
    operation: str
    n: int = 1

    def __str__(self) -> str:
        return f"{self.window}:{self.service}.{self.operation}#{self.n}"


def _keep_params(params: dict[str, Any], context: dict[str, Any], **_: Any) -> None:
    """Keep a call's API parameters where its ``before-call`` hook finds them (that one sees the HTTP request)."""
    context["fault_injector_params"] = dict(params)


def _lose_response(context: dict[str, Any], **_: Any) -> None:
    """Raise the planned error of a call that AWS has answered (see :data:`LOST`)."""
    if "fault_injector_lost" in context:
        raise context.pop("fault_injector_lost")


def resource_of(service: str, params: dict[str, Any]) -> str:
    """The resource a call is made on, as the product's messages name it."""
    if service == "s3":
        return f"s3://{params['Bucket']}/{params.get('Key', params.get('Prefix', ''))}"
    if service == "ssm":
        filters = params.get("ParameterFilters") or [{"Values": [None]}]
        return str(params.get("Name") or params.get("ResourceId") or filters[0]["Values"][0])
    if service == "lambda":
        return str(params["FunctionName"])
    return str(params.get("QueryExecutionId") or f"workgroup {params.get('WorkGroup')}")


@dataclass
class Injector:
    """A botocore ``before-call`` hook on every client of the case: records calls per window, raises faults.

    A window opens when a step's runner starts (its label) and becomes "cleanup" when the step ends, so calls
    after the last step are the clean-up's. ``plan`` maps a call to the fault it raises (once).
    """

    plan: dict[Call, Fault] = field(default_factory=dict)
    window: str | None = None
    calls: dict[str, list[tuple[str, str]]] = field(default_factory=dict)
    fired: list[Call] = field(default_factory=list)
    #: the resource each fired call was made on (s3://bucket/key, a parameter name, ...)
    resources: list[str] = field(default_factory=list)
    _counts: Counter[tuple[str, str, str]] = field(default_factory=Counter)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def reset(self, plan: dict[Call, Fault] | None = None) -> None:
        with self._lock:
            self.plan, self.window, self.calls, self.fired, self.resources = dict(plan or {}), None, {}, [], []
            self._counts.clear()

    def open(self, window: str | None) -> None:
        with self._lock:
            self.window = window

    def attach(self, client: Any) -> Any:
        events = client.meta.events
        events.register("before-parameter-build", _keep_params, unique_id="fault-injector-params")
        events.register("before-call", self._before_call, unique_id="fault-injector")
        events.register("after-call", _lose_response, unique_id="fault-injector-after")
        return client

    def _before_call(self, model: Any, context: dict[str, Any], **_: Any) -> None:
        service, operation = model.service_model.service_name, model.name
        with self._lock:
            if self.window is None:
                return
            self.calls.setdefault(self.window, []).append((service, operation))
            self._counts[(self.window, service, operation)] += 1
            call = Call(self.window, service, operation, self._counts[(self.window, service, operation)])
            fault = self.plan.pop(call, None)
            if fault is not None:
                self.fired.append(call)
                self.resources.append(resource_of(service, context["fault_injector_params"]))
        error = fault.error(service, operation, f"https://{service}.{REGION}.amazonaws.com/") if fault else None
        if fault is not None and fault.after:
            context["fault_injector_lost"] = error
        elif error is not None:
            raise error

    def wrap_runner(self, kind: StepKind) -> StepKind:
        def run(step: Any, ctx: StepContext) -> Any:
            self.open(ctx.label)
            try:
                return kind.run(step, ctx)
            finally:
                self.open("cleanup")

        return StepKind(kind.kind, kind.model, run)


# --- the representative cases ------------------------------------------------------------------------------------

PRELUDE = [
    {"kind": "set_parameters", "name": "prep-ssm", "parameters": [
        {"name": "/ft/name", "value": "changed"},
        {"name": "/ft/secret", "value": NEW_SECRET, "type": "SecureString"},
    ]},
    {"kind": "upload", "name": "prep-upload", "files": ["data/orders.csv"], "bucket": BUCKET,
     "key": "in/orders.csv", "cleanup": True},
]
#: the step under test of each representative case (its name is its window's)
TARGETS: dict[str, list[dict[str, Any]]] = {
    "set_parameters": [{"kind": "set_parameters", "name": "set", "parameters": [
        {"name": "/ft/other", "value": "changed-other", "description": "changed"},
        {"name": "/ft/new", "value": "created", "type": "String"},
    ]}],
    "delete_parameters": [{"kind": "delete_parameters", "name": "delete", "names": ["/ft/doomed"]}],
    "expect_parameters": [{"kind": "expect_parameters", "name": "expect-ssm", "parameters": [
        {"name": "/ft/name", "equals": "changed"},
        {"name": "/ft/secret", "equals": NEW_SECRET, "type": "SecureString"},
    ]}],
    "upload": [{"kind": "upload", "name": "upload", "files": ["data/customers.csv"], "bucket": BUCKET,
                "key": "in/customers.csv", "content_type": "text/plain", "cleanup": True}],
    "upload_multipart": [{"kind": "upload", "name": "upload-parts", "files": ["data/big.bin"], "bucket": BUCKET,
                          "key_prefix": "big/", "multipart_threshold_mb": 5, "cleanup": True}],
    "expect_objects_keys": [{"kind": "expect_objects", "name": "expect-keys", "bucket": BUCKET,
                             "keys": ["in/orders.csv"], "wait": {"timeout": 5}}],
    "expect_objects_prefix": [{"kind": "expect_objects", "name": "expect-prefix", "bucket": BUCKET,
                               "prefix": "in/", "min_count": 1, "wait": {"timeout": 5}}],
    "invoke_lambda": [{"kind": "invoke_lambda", "name": "invoke", "function": FUNCTION,
                       "payload": {"run": "fault"}, "expect": {"json_subset": {"run": "fault"}}}],
    "athena_query": [{"kind": "athena_query", "name": "query", "sql": "SELECT id FROM orders", "database": "sales",
                      "output_location": f"s3://{RESULTS_BUCKET}/results/", "expect": {"row_count": 1}}],
    # the clean-up's own calls: restore two changed parameters, delete a created one, recreate a deleted one,
    # delete an uploaded object
    "cleanup": [{"kind": "delete_parameters", "name": "delete", "names": ["/ft/doomed"]},
                {"kind": "set_parameters", "name": "create", "parameters": [{"name": "/ft/new", "value": "x"}]}],
}


def case_spec(variant: str, targets: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    return {"case": f"Faults {variant}", "aws": {"region": REGION, "max_attempts": 1,
                                                  "allowed_parameter_prefixes": ["/ft/"]},
            "steps": [*PRELUDE, *(TARGETS[variant] if targets is None else targets)]}


# --- the world before and after ----------------------------------------------------------------------------------


def seed(factory: ClientFactory) -> None:
    """What exists before every case: the parameters, the bucket with one object, Athena's result bucket (moto's
    no-Docker Lambda echoes any function's payload)."""
    ssm, s3 = factory.client("ssm"), factory.client("s3")
    for name, (value, type_, description) in PARAMETERS.items():
        ssm.put_parameter(Name=name, Value=value, Type=type_, Description=description)
    s3.create_bucket(Bucket=BUCKET)
    s3.put_object(Bucket=BUCKET, Key=KEPT_KEY, Body=b"id\n1\n")
    s3.create_bucket(Bucket=RESULTS_BUCKET)


def queue_query_result() -> None:
    """The result of the next Athena query (one row), and only that one (moto takes it at StartQueryExecution)."""
    columns = [{"Name": "id", "Label": "id", "Type": "integer", "Nullable": "UNKNOWN", "CaseSensitive": False}]
    rows = [{"Data": [{"VarCharValue": "id"}]}, {"Data": [{"VarCharValue": "1"}]}]
    athena_backends[DEFAULT_ACCOUNT_ID][REGION].query_results_queue[:] = [QueryResults(rows, columns)]


def put_back(factory: ClientFactory, world: "World") -> None:
    """Make the account as :func:`seed` left it again, after a case that could not (or did not) undo everything."""
    ssm, s3 = factory.client("ssm"), factory.client("s3")
    for name in world.parameters.keys() - PARAMETERS.keys():
        ssm.delete_parameter(Name=name)
    for name, (value, type_, description) in PARAMETERS.items():
        if world.parameters.get(name) != (value, type_, description):
            ssm.put_parameter(Name=name, Value=value, Type=type_, Description=description, Overwrite=True)
    for key in world.keys - BEFORE.keys:
        s3.delete_object(Bucket=BUCKET, Key=key)
    if KEPT_KEY not in world.keys:
        s3.put_object(Bucket=BUCKET, Key=KEPT_KEY, Body=b"id\n1\n")
    for upload in s3.list_multipart_uploads(Bucket=BUCKET).get("Uploads", []):
        s3.abort_multipart_upload(Bucket=BUCKET, Key=upload["Key"], UploadId=upload["UploadId"])


@dataclass(frozen=True)
class World:
    """What the checks compare: every parameter (value, type, description) and the objects in the bucket."""

    parameters: dict[str, tuple[str, str, str | None]]
    keys: frozenset[str]
    pending_multipart: int

    @classmethod
    def read(cls, factory: ClientFactory) -> "World":
        ssm, s3 = factory.client("ssm"), factory.client("s3")
        found = ssm.get_parameters_by_path(Path="/ft", Recursive=True, WithDecryption=True)["Parameters"]
        described = {m["Name"]: m.get("Description") for m in ssm.describe_parameters(MaxResults=50)["Parameters"]}
        return cls(
            {p["Name"]: (p["Value"], p["Type"], described.get(p["Name"])) for p in found},
            frozenset(o["Key"] for o in s3.list_objects_v2(Bucket=BUCKET).get("Contents", [])),
            len(s3.list_multipart_uploads(Bucket=BUCKET).get("Uploads", [])),
        )

    def without(self, resource: str | None) -> "World":
        """This world, leaving out a parameter or an object (one whose undo was the faulted call)."""
        key = resource[len(f"s3://{BUCKET}/"):] if resource and resource.startswith("s3://") else None
        return World({n: v for n, v in self.parameters.items() if n != resource}, self.keys - {key},
                     self.pending_multipart)


BEFORE = World({n: (v, t, d) for n, (v, t, d) in PARAMETERS.items()}, frozenset({KEPT_KEY}), 0)


# --- running a case ------------------------------------------------------------------------------------------------


@dataclass
class Harness:
    """A case runner on moto with the fault injector on every client; one per test, clients shared per module."""

    factory: ClientFactory
    injector: Injector
    spec_dir: Path
    pack_dir: Path
    #: the world as last read after the last case (None before it is read)
    seen: World | None = None

    def run(self, raw: dict[str, Any], plan: dict[Call, Fault] | None = None, pack: bool = True) -> CaseResult:
        """Run a case as the flow's tasks do, in-process: each step through ``execute_step`` (stopping at the
        first failure), then the clean-up through ``undo_now`` (the clean-up task's undo loop, without a task
        run); write and verify its evidence pack as the flow does (``pack``)."""
        self.injector.reset(plan)
        self.seen = None
        case = parse_spec(raw, "<spec>", self.spec_dir)
        secrets = tuple(dict.fromkeys(s for p in iter_steps(case) for s in p.step.secrets() if s))
        ctx = StepContext(clients=self.factory, case_name=case.case, run_id="fault-run", label="",
                          spec_dir=self.spec_dir, undo=UndoLog(), secrets=secrets, logger=log)
        started = datetime.now(timezone.utc)
        steps: list[StepResult] = []
        for placed in iter_steps(case):
            outcome = execute_step(placed, ctx)
            steps.append(outcome.data.result if isinstance(outcome, State) else outcome)
            if not steps[-1].ok:
                break
        cleanup = undo_now(ctx, log)
        self.injector.open(None)
        steps += [cleanup] if cleanup else []
        ended = datetime.now(timezone.utc)
        result = CaseResult(case=case.case, status="passed" if all(s.ok for s in steps) else "failed",
                            flow_run_id="fault-run", started_at=started, ended_at=ended,
                            duration_s=(ended - started).total_seconds(), steps=steps)
        if pack:
            folder = write_pack(result, case, self.pack_dir / str(len(list(self.pack_dir.iterdir()))),
                                secrets=secrets)
            assert verify(folder) == []
            result.evidence_dir = str(folder)
        return result

    def world(self) -> World:
        self.seen = World.read(self.factory)
        return self.seen


@pytest.fixture(scope="module")
def spec_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The cases' local files: two small CSVs and a file that goes up in two parts (5 MiB threshold)."""
    folder = tmp_path_factory.mktemp("fault-specs")
    (folder / "data").mkdir()
    (folder / "data" / "orders.csv").write_text("id,amount\n1,10\n")
    (folder / "data" / "customers.csv").write_text("id,name\n1,Ana\n")
    (folder / "data" / "big.bin").write_bytes(b"x" * (5 * 1024 * 1024 + 10))
    return folder


@pytest.fixture(scope="module")
def injector() -> Injector:
    return Injector()


@pytest.fixture(scope="module")
def account(injector: Injector) -> Iterator[ClientFactory]:
    """One moto account for the module, seeded once (each test puts back what it left different), and one
    client factory for the in-process cases (making clients is the slow part), its clients hooked."""
    with pytest.MonkeyPatch.context() as mp:
        for key in REAL_ENV:
            mp.delenv(key, raising=False)
        for key, value in FAKE_ENV.items():
            mp.setenv(key, value)
        with mock_aws(config={"lambda": {"use_docker": False}}):
            factory = ClientFactory(AwsTarget(region=REGION, max_attempts=1))
            original = factory.client
            factory.client = lambda service: unsigned(injector.attach(original(service)))  # type: ignore[method-assign]
            seed(factory)
            yield factory


def unsigned(client: Any) -> Any:
    """Skip request signing (moto does not check it; it is a tenth of an in-process case's time)."""
    client.meta.events.register("choose-signer", lambda **_: UNSIGNED, unique_id="fault-unsigned")
    return client


def hook_runners(monkeypatch: pytest.MonkeyPatch, injector: Injector) -> None:
    """Every step runner opens its injection window (see :class:`Injector`); Athena waits on a fake clock."""
    for kind, entry in list(REGISTRY.items()):
        monkeypatch.setitem(REGISTRY, kind, injector.wrap_runner(entry))
    monkeypatch.setattr(athena_mod, "CLOCK", Clock(now=lambda: 0.0, sleep=lambda _: None), raising=False)
    queue_query_result()


@pytest.fixture
def harness(account: ClientFactory, injector: Injector, spec_dir: Path, tmp_path: Path,
            monkeypatch: pytest.MonkeyPatch) -> Iterator[Harness]:
    """Cases in-process on the module's account; step evidence is not sent to Prefect (there is no run here)."""
    hook_runners(monkeypatch, injector)
    monkeypatch.setattr(flows.evidence.ui, "publish_step", lambda result, outcome, publisher=None: None)
    (tmp_path / "packs").mkdir()
    harness = Harness(account, injector, spec_dir, tmp_path / "packs")
    yield harness
    put_back(account, harness.seen or World.read(account))


# --- the calls, and the pairs -----------------------------------------------------------------------------------

S3, SSM = "s3", "ssm"
_SNAP = ["ssm.GetParameter", "ssm.DescribeParameters"]  # a snapshot of an existing parameter
_SNAP_TAGS = [*_SNAP, "ssm.ListTagsForResource"]  # ... before a change (its restore keeps the tags)
_RESTORE_PUT = [*_SNAP, "ssm.PutParameter", *_SNAP]  # a changed parameter put back, then checked
#: variant -> (window, the calls made in it, in order); checked by test_calls_are_the_ones_listed
CALLS: dict[str, tuple[str, list[str]]] = {
    "set_parameters": ("set", [*_SNAP_TAGS, "ssm.PutParameter", *_SNAP,  # /ft/other: changed
                               "ssm.GetParameter", "ssm.PutParameter", *_SNAP]),  # /ft/new: created
    "delete_parameters": ("delete", [*_SNAP, *_SNAP_TAGS, "ssm.DeleteParameter"]),  # exists? then snapshot, delete
    "expect_parameters": ("expect-ssm", [*_SNAP, *_SNAP]),
    "upload": ("upload", ["s3.HeadObject", "s3.PutObject", "s3.HeadObject", "s3.CopyObject"]),
    "upload_multipart": ("upload-parts", ["s3.HeadObject", "s3.CreateMultipartUpload", "s3.UploadPart",
                                          "s3.UploadPart", "s3.CompleteMultipartUpload", "s3.HeadObject"]),
    "expect_objects_keys": ("expect-keys", ["s3.HeadObject"]),
    "expect_objects_prefix": ("expect-prefix", ["s3.ListObjectsV2"]),
    "invoke_lambda": ("invoke", ["lambda.Invoke"]),
    "athena_query": ("query", ["athena.StartQueryExecution", "athena.GetQueryExecution", "athena.GetQueryResults"]),
    "cleanup": ("cleanup", [
        *_SNAP_TAGS, "ssm.DeleteParameter", "ssm.GetParameter",  # /ft/new deleted again, checked gone
        "ssm.GetParameter", "ssm.PutParameter", *_SNAP,  # /ft/doomed created again
        "s3.HeadObject", "s3.DeleteObject",  # the uploaded object removed
        *_RESTORE_PUT, *_RESTORE_PUT,  # /ft/secret and /ft/name put back
    ]),
}
#: (operation, fault) pairs that the product tolerates by design: without ssm:ListTagsForResource a snapshot
#: reports the tags unknown (they are then not restored) and the step goes on
TOLERATED = {("ListTagsForResource", "denied")}


def calls_of(variant: str) -> list[Call]:
    window, names = CALLS[variant]
    seen: Counter[str] = Counter()
    out = []
    for name in names:
        seen[name] += 1
        service, operation = name.split(".")
        out.append(Call(window, service, operation, seen[name]))
    return out


#: every (call, fault) pair; the evidence pack is written for each call with one of its faults, in turn (writing
#: one costs as much as a dozen AWS calls), and the flow tests write theirs as the flow does
PAIRS = [pytest.param(variant, call, fault, i % len(FAULTS) == j,
                      id=f"{variant}-{call.operation}#{call.n}-{fault.name}")
         for variant in CALLS for i, call in enumerate(calls_of(variant)) for j, fault in enumerate(FAULTS)]


#: the calls of boto3's transfer manager: a connection error does not say which of them it hit
MULTIPART = {"CreateMultipartUpload", "UploadPart", "CompleteMultipartUpload"}


def assert_named_failure(text: str | None, call: Call, fault: Fault, resource: str) -> None:
    """A failure message names the AWS operation, the resource and the fault's code, and is no bug report."""
    assert text and resource in text and fault.expected_code(call.service, call.operation) in text, text
    unnamed = call.operation in MULTIPART and not fault.codes
    assert call.operation in text or (unnamed and "S3 multipart upload on" in text), text
    assert "unexpected" not in text and "Traceback" not in text, text


def assert_no_secret(result: CaseResult) -> None:
    """Neither SecureString value shows in the result or its evidence pack, whatever failed."""
    files = Path(result.evidence_dir).iterdir() if result.evidence_dir else []
    texts = [result.model_dump_json(), *(f.read_text(encoding="utf-8") for f in files)]
    assert not [t for t in texts if SECRET in t or NEW_SECRET in t]


@pytest.mark.parametrize(("variant", "call", "fault", "pack"), PAIRS)
def test_fault(harness: Harness, variant: str, call: Call, fault: Fault, pack: bool,
               record_property: Callable[..., None]) -> None:
    """The call fails: the case fails naming it (an AWS fault is an ``error`` of the step, never a check that
    did not hold), and whatever the case changed is undone.

    For a call of the clean-up itself, "left as it was" cannot hold for the one resource whose undo failed: the
    clean-up must still run every other undo action, and fail naming what it could not undo.
    """
    record_property("fault_pair", f"{call}/{fault.name}")
    result = harness.run(case_spec(variant), {call: fault}, pack=pack)
    assert harness.injector.fired == [call]
    [resource] = harness.injector.resources
    cleanup = result.steps[-1]
    assert cleanup.label == "cleanup" and "failed" not in {s.status for s in result.steps}
    if (call.operation, fault.name) in TOLERATED:
        assert result.passed and harness.world() == BEFORE
    elif call.window == "cleanup":
        assert all(s.ok for s in result.steps[:-1]) and cleanup.status == "error"
        actions = cleanup.details["actions"]
        assert len(actions) == 5 and [a["what"] for a in actions if "error" in a] == [
            next(a["what"] for a in actions if a["what"].endswith(f" {resource}"))]
        assert_named_failure(cleanup.error, call, fault, resource)
        assert harness.world().without(resource) == BEFORE.without(resource)
    else:
        assert [(s.label, s.status) for s in result.steps if not s.ok] == [(call.window, "error")]
        failed = next(s for s in result.steps if not s.ok)
        assert_named_failure(failed.error, call, fault, resource)
        assert failed.error_code == fault.expected_code(call.service, call.operation)
        assert cleanup.ok and harness.world() == BEFORE
    assert_no_secret(result)


@pytest.mark.parametrize("variant", CALLS)
def test_calls_are_the_ones_listed(harness: Harness, variant: str) -> None:
    """Without a fault the case passes and leaves nothing changed, making exactly the calls listed in ``CALLS``:
    a product change that adds an AWS call fails here until the call is listed (and so gets its faults)."""
    result = harness.run(case_spec(variant))
    window, listed = CALLS[variant]
    assert result.passed and harness.world() == BEFORE
    assert [f"{service}.{operation}" for service, operation in harness.injector.calls[window]] == listed


# --- the real flow ---------------------------------------------------------------------------------------------

#: one pair per step kind, run as one case whose steps go on after a failure (one flow run for all of them)
FLOW_PAIRS = {
    "set_parameters": Call("set", SSM, "PutParameter", 2),  # creating /ft/new
    "delete_parameters": Call("delete", SSM, "DeleteParameter"),
    "expect_parameters": Call("expect-ssm", SSM, "GetParameter", 2),  # the SecureString
    "upload": Call("upload", S3, "HeadObject", 2),  # reading the checksum back, after the upload
    "upload_multipart": Call("upload-parts", S3, "UploadPart"),
    "expect_objects_keys": Call("expect-keys", S3, "HeadObject"),
    "expect_objects_prefix": Call("expect-prefix", S3, "ListObjectsV2"),
    "invoke_lambda": Call("invoke", "lambda", "Invoke"),
    "athena_query": Call("query", "athena", "GetQueryExecution"),
}


@pytest.fixture
def flow_harness(account: ClientFactory, injector: Injector, monkeypatch: pytest.MonkeyPatch,
                 prefect_harness: str) -> Iterator[ClientFactory]:
    """The module's account; every client the flow's own ClientFactory makes is hooked."""
    hook_runners(monkeypatch, injector)
    original = ClientFactory.client
    monkeypatch.setattr(ClientFactory, "client", lambda self, service: injector.attach(original(self, service)))
    yield account
    put_back(account, World.read(account))


def run_flow(raw: dict[str, Any], spec_dir: Path, injector: Injector, plan: dict[Call, Fault]) -> CaseResult:
    from flows.evidence.results import result_of
    from flows.pipeline_test import pipeline_test

    injector.reset(plan)
    state = pipeline_test(spec=raw, base_dir=str(spec_dir), return_state=True)
    injector.open(None)
    result = result_of(state)
    assert state.is_failed() and result is not None and not result.passed
    assert result.evidence_dir and Path(result.evidence_dir).is_dir() and verify(Path(result.evidence_dir)) == []
    assert sorted(injector.fired, key=str) == sorted(plan, key=str)
    return result


def test_flow_every_kind_fails_named_and_undone(flow_harness: ClientFactory, injector: Injector, spec_dir: Path,
                                                record_property: Callable[..., None]) -> None:
    """One flow run, each step kind failing at one call (its step goes on after failing): every step fails with
    its named error, the clean-up undoes everything, and the evidence pack verifies."""
    targets = [{**TARGETS[variant][0], "continue_on_failure": True} for variant in FLOW_PAIRS]
    plan = {call: FAULTS[i % len(FAULTS)] for i, call in enumerate(FLOW_PAIRS.values())}
    for call, fault in plan.items():
        record_property("fault_pair", f"{call}/{fault.name}")
    result = run_flow(case_spec("flow", targets), spec_dir, injector, plan)
    resources = dict(zip(injector.fired, injector.resources))
    failed = {s.label: s for s in result.steps if not s.ok}
    assert set(failed) == {call.window for call in plan} and "failed" not in {s.status for s in result.steps}
    for call, fault in plan.items():
        assert_named_failure(failed[call.window].error, call, fault, resources[call])
    assert result.steps[-1].label == "cleanup" and result.steps[-1].ok
    assert World.read(flow_harness) == BEFORE
    assert_no_secret(result)


def test_flow_cleanup_fault_undoes_the_rest_and_names_what_it_could_not(
        flow_harness: ClientFactory, injector: Injector, spec_dir: Path, record_property: Callable[..., None]) -> None:
    """A clean-up call fails in a real flow run: every other change is still undone, and the case fails naming
    the parameter that could not be put back ("as it was" cannot hold for that one: it stays deleted)."""
    call, fault = Call("cleanup", SSM, "PutParameter"), FAULTS[1]  # recreating the deleted /ft/doomed
    record_property("fault_pair", f"{call}/{fault.name}")
    result = run_flow(case_spec("cleanup"), spec_dir, injector, {call: fault})
    cleanup = result.steps[-1]
    assert cleanup.label == "cleanup" and cleanup.status == "error" and cleanup.error_code == CLEANUP_FAILED
    assert_named_failure(cleanup.error, call, fault, "/ft/doomed")
    assert [a["what"] for a in cleanup.details["actions"] if "error" in a] == ["Restore SSM parameter /ft/doomed"]
    assert World.read(flow_harness) == BEFORE.without("/ft/doomed")
    assert "/ft/doomed" not in World.read(flow_harness).parameters


# --- beyond the four faults ------------------------------------------------------------------------------------

#: the calls that change SSM or S3, whose response can be lost after AWS made the change
CHANGES = [pytest.param(variant, call, id=f"{variant}-{call.operation}#{call.n}")
           for variant in CALLS if variant != "cleanup" for call in calls_of(variant)
           if call.operation.startswith(("Put", "Delete", "Copy", "Create", "Complete", "UploadPart"))]


@pytest.mark.parametrize(("variant", "call"), CHANGES)
def test_lost_response_is_undone(harness: Harness, variant: str, call: Call,
                                 record_property: Callable[..., None]) -> None:
    """The connection drops after AWS made the change: the case fails naming the call, and the change it never
    heard of is undone all the same (a parameter's restore is registered before it is written; an object is
    deleted when it holds the content the failed upload sent)."""
    record_property("fault_pair", f"{call}/{LOST.name}")
    result = harness.run(case_spec(variant), {call: LOST}, pack=False)
    assert harness.injector.fired == [call]
    failed = [s for s in result.steps if not s.ok]
    assert [(s.label, s.status) for s in failed] == [(call.window, "error")]
    assert_named_failure(failed[0].error, call, LOST, harness.injector.resources[0])
    assert result.steps[-1].label == "cleanup" and result.steps[-1].ok and harness.world() == BEFORE


class _Body:
    def __init__(self, data: bytes) -> None:
        self.data = data

    def stream(self, **_: Any) -> Iterator[bytes]:
        yield self.data


def test_throttling_through_botocore_retries(harness: Harness, monkeypatch: pytest.MonkeyPatch,
                                             record_property: Callable[..., None]) -> None:
    """Throttling as botocore's standard retry mode meets it: every attempt answered 400 ThrottlingException
    (``before-send``, so the retry handler sees each one; its back-off sleeps recorded, not slept) until the
    spec's ``max_attempts`` are used up; the step then fails naming the call and the code, all undone."""
    call = Call("expect-ssm", SSM, "GetParameter")
    record_property("fault_pair", f"{call}/throttling")
    raw = case_spec("expect_parameters")
    raw["aws"]["max_attempts"] = 3
    factory = ClientFactory(parse_spec(raw, "<spec>", harness.spec_dir).aws.target())
    attempts: list[str] = []

    def throttle(request: Any, **_: Any) -> AWSResponse | None:
        if harness.injector.window != call.window:
            return None
        attempts.append(request.url)
        body = b'{"__type": "ThrottlingException", "message": "Rate exceeded"}'
        return AWSResponse(request.url, 400, {"x-amzn-RequestId": f"throttled-{len(attempts)}"}, _Body(body))

    sleeps: list[float] = []
    monkeypatch.setattr(botocore.endpoint, "time", SimpleNamespace(sleep=sleeps.append))
    factory.client("ssm").meta.events.register("before-send.ssm.GetParameter", throttle)
    result = Harness(factory, harness.injector, harness.spec_dir, harness.pack_dir).run(raw)
    assert len(attempts) == 3 and len(sleeps) == 2
    failed = [s for s in result.steps if not s.ok]
    assert [(s.label, s.error_code) for s in failed] == [("expect-ssm", "ThrottlingException")]
    assert_named_failure(failed[0].error, call, FAULTS[0], "/ft/name")
    assert result.steps[-1].ok and harness.world() == BEFORE
