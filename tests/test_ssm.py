"""SSM Parameter Store steps (tasks/ssm.py) against moto: set, delete, expect, snapshot/restore, guard, secrets."""

from __future__ import annotations

import dataclasses
import json
import logging
from typing import Any

import pytest
from botocore.exceptions import ClientError
from pydantic import ValidationError

from tasks import ssm as ssm_mod
from tasks import ssm_restore
from tasks.kit.aws import ClientFactory
from tasks.kit.errors import CHECK_FAILED, AwsCallError, CheckFailed, StepError
from tasks.kit.secrets import mask
from tasks.kit.step import REGISTRY, StepBase, StepContext, StepOutcome
from tasks.ssm import (
    DeleteParametersStep,
    ExpectParametersStep,
    ParameterExpectation,
    ParameterSpec,
    SetParametersStep,
    check_parameter_writes,
    compare,
    differences,
    registered_restore,
    restore_parameter,
    snapshot,
)

CANARY = "canary-SecureString-9d81e6b2"
CANARY2 = "canary-SecureString-second-55aa"


# --- fixtures ------------------------------------------------------------------------------------------------------


@pytest.fixture
def ctx(module_moto: Any, module_clients: ClientFactory) -> StepContext:
    """A fresh case (empty undo log) on an empty moto account."""
    module_moto.reset()
    return StepContext(clients=module_clients, case_name="case", run_id="run-1", label="step",
                       logger=logging.getLogger("test.ssm"))


@pytest.fixture
def client(ctx: StepContext) -> Any:
    return ctx.clients.client("ssm")


@pytest.fixture
def kms_key(ctx: StepContext) -> str:
    return ctx.clients.client("kms").create_key(Description="test key")["KeyMetadata"]["KeyId"]


def run(step: StepBase, ctx: StepContext) -> StepOutcome:
    """Run a step through the registry, as the engine does."""
    return REGISTRY[step.kind].run(step, ctx)  # type: ignore[attr-defined]


def undo_all(ctx: StepContext) -> list[dict[str, Any]]:
    """Run every pending undo action, last registered first, as the engine does when the case ends."""
    return [action.run() for action in ctx.undo.pending()]


def run_case(steps: list[StepBase], ctx: StepContext) -> tuple[list[StepOutcome], Exception | None, list[dict]]:
    """A tiny engine: run steps until one fails, then always undo."""
    outcomes: list[StepOutcome] = []
    error: Exception | None = None
    try:
        for step in steps:
            outcomes.append(run(step, ctx))
    except Exception as exc:  # noqa: BLE001 - the engine catches everything and still undoes
        error = exc
    finally:
        restored = undo_all(ctx)
    return outcomes, error, restored


def state(client: Any, name: str) -> dict[str, Any]:
    """Everything "as before" must cover: value, type, KMS key, description, tier, tags."""
    snap = snapshot(client, name, with_tags=True)
    fields = dataclasses.asdict(snap)
    fields.pop("version")
    return fields


def set_step(*params: dict[str, Any], **kw: Any) -> SetParametersStep:
    return SetParametersStep(parameters=[ParameterSpec(**p) for p in params], **kw)


# --- models -------------------------------------------------------------------------------------------------------


def test_models_validate() -> None:
    with pytest.raises(ValidationError):
        ParameterSpec(name="/a", value="v", key_id="alias/x")  # key id without SecureString
    with pytest.raises(ValidationError):
        set_step({"name": "/a", "value": "1"}, {"name": "/a", "value": "2"})
    with pytest.raises(ValidationError):
        SetParametersStep(parameters=[])
    with pytest.raises(ValidationError):
        DeleteParametersStep(names=["/a", "/a"])
    with pytest.raises(ValidationError):
        ParameterExpectation(name="/a")
    with pytest.raises(ValidationError):
        ParameterExpectation(name="/a", equals="x", contains="y")
    with pytest.raises(ValidationError):
        SetParametersStep(parameters=[{"name": "/a", "value": "v", "typo": 1}])
    assert ParameterSpec(name="/a", value=5).value == "5"
    assert ParameterSpec(name="/a", value=False).value == "false"
    assert ParameterSpec(name="/a", value=["x", 2], type="StringList").value == "x,2"
    assert ParameterExpectation(name="/a", json_subset=None).check == "json_subset"


def test_model_repr_and_validation_errors_never_show_a_securestring_value() -> None:
    step = set_step({"name": "/a", "value": CANARY, "type": "SecureString"})
    assert CANARY not in repr(step) and CANARY not in str(step)
    exp = ExpectParametersStep(parameters=[{"name": "/a", "equals": CANARY, "type": "SecureString"}])
    assert CANARY not in repr(exp)
    assert step.secrets() == [CANARY] and exp.secrets() == [CANARY]
    with pytest.raises(ValidationError) as info:
        SetParametersStep(parameters=[{"name": "/a", "value": CANARY, "type": "SecureString", "bad": CANARY}])
    assert CANARY not in str(info.value)


# --- snapshots ------------------------------------------------------------------------------------------------------


def test_snapshot_of_a_missing_parameter(client: Any) -> None:
    snap = snapshot(client, "/nope")
    assert not snap.exists and snap.public() == {"name": "/nope", "exists": False}


def test_snapshot_reads_value_type_key_description_tags(client: Any, kms_key: str) -> None:
    client.put_parameter(Name="/app/secret", Value=CANARY, Type="SecureString", KeyId=kms_key,
                         Description="the secret", Tags=[{"Key": "team", "Value": "data"}])
    snap = snapshot(client, "/app/secret", with_tags=True)
    assert (snap.value, snap.type, snap.key_id, snap.description, snap.tier) == (
        CANARY, "SecureString", kms_key, "the secret", "Standard")
    assert snap.tags == [{"Key": "team", "Value": "data"}]
    assert CANARY not in repr(snap) and CANARY not in json.dumps(snap.public())
    assert snap.public()["value"] == mask(CANARY)


def test_snapshot_fails_with_a_clear_error(client: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    def denied(**_: Any) -> None:
        raise ClientError({"Error": {"Code": "AccessDeniedException", "Message": "no kms:Decrypt"}}, "GetParameter")

    monkeypatch.setattr(client, "get_parameter", denied)
    with pytest.raises(AwsCallError, match="SSM GetParameter on /x failed: AccessDeniedException: no kms:Decrypt"):
        snapshot(client, "/x")


# --- set and restore ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("original", "change"),
    [
        ({"Type": "String", "Value": "s3://prod-bucket", "Description": "source"},
         {"value": "s3://test-bucket", "description": "changed by the test"}),
        ({"Type": "StringList", "Value": "a,b,c"}, {"value": ["x", "y"], "type": "StringList"}),
        ({"Type": "String", "Value": "plain"}, {"value": CANARY, "type": "SecureString"}),
    ],
    ids=["String", "StringList", "String-to-SecureString"],
)
def test_set_then_restore_puts_everything_back(ctx: StepContext, client: Any, original: dict, change: dict) -> None:
    client.put_parameter(Name="/p/x", Tags=[{"Key": "k", "Value": "v"}], **original)
    before = state(client, "/p/x")
    outcome = run(set_step({"name": "/p/x", **change}), ctx)
    assert state(client, "/p/x") != before
    row = outcome.details["parameters"][0]
    assert row["restore"] == "registered" and row["before"]["exists"] and row["after"]["exists"]
    results = undo_all(ctx)
    assert state(client, "/p/x") == before
    assert results[0]["action"] in ("overwritten", "recreated")
    assert results[0]["summary"] in ("put back", "deleted and created again (to clear its description or tier; "
                                     "version history reset)")  # the parameter is named by what shows it


def test_securestring_with_kms_key_and_description_is_restored(ctx: StepContext, client: Any, kms_key: str) -> None:
    client.put_parameter(Name="/p/db", Value=CANARY, Type="SecureString", KeyId=kms_key, Description="db password")
    before = state(client, "/p/db")
    run(set_step({"name": "/p/db", "value": "plain now", "type": "String", "description": "other"}), ctx)
    assert snapshot(client, "/p/db").type == "String"
    undo_all(ctx)
    after = state(client, "/p/db")
    assert after == before
    assert (after["type"], after["key_id"], after["description"]) == ("SecureString", kms_key, "db password")


def test_a_parameter_that_did_not_exist_is_deleted_again(ctx: StepContext, client: Any, kms_key: str) -> None:
    outcome = run(set_step({"name": "/p/new", "value": CANARY, "type": "SecureString", "key_id": kms_key}), ctx)
    assert outcome.details["parameters"][0]["before"] == {"name": "/p/new", "exists": False}
    assert "1 created" in outcome.summary
    assert snapshot(client, "/p/new").key_id == kms_key
    results = undo_all(ctx)
    assert results[0]["action"] == "deleted"
    assert not snapshot(client, "/p/new").exists


def test_two_steps_changing_one_parameter_restore_the_original(ctx: StepContext, client: Any) -> None:
    client.put_parameter(Name="/p/a", Value="original", Type="String", Description="orig")
    before = state(client, "/p/a")
    first = run(set_step({"name": "/p/a", "value": "first"}), ctx)
    second = run(set_step({"name": "/p/a", "value": "second", "description": "d2"}), ctx)
    assert first.details["parameters"][0]["restore"] == "registered"
    assert second.details["parameters"][0]["restore"] == "kept original"
    assert second.details["parameters"][0]["before"]["value"] == "first"
    assert len(ctx.undo.actions) == 1
    assert registered_restore(ctx.undo, "/p/a").original.value == "original"
    undo_all(ctx)
    assert state(client, "/p/a") == before


def test_two_steps_creating_one_parameter_delete_it_at_the_end(ctx: StepContext, client: Any) -> None:
    run(set_step({"name": "/p/n", "value": "1"}), ctx)
    run(set_step({"name": "/p/n", "value": "2"}), ctx)
    undo_all(ctx)
    assert not snapshot(client, "/p/n").exists


def test_restore_after_a_later_step_fails(ctx: StepContext, client: Any, kms_key: str) -> None:
    client.put_parameter(Name="/p/one", Value="1", Type="String", Description="first")
    client.put_parameter(Name="/p/two", Value=CANARY, Type="SecureString", KeyId=kms_key, Description="second")
    originals = {n: state(client, n) for n in ("/p/one", "/p/two")}
    steps = [
        set_step({"name": "/p/one", "value": "changed"}, {"name": "/p/two", "value": CANARY2, "type": "SecureString"},
                 {"name": "/p/three", "value": "new"}),
        DeleteParametersStep(names=["/p/one"]),
        ExpectParametersStep(parameters=[{"name": "/p/two", "equals": "not this"}]),  # fails
    ]
    outcomes, error, restored = run_case(steps, ctx)
    assert len(outcomes) == 2 and isinstance(error, StepError)
    assert {r["parameter"] for r in restored} == {"/p/one", "/p/two", "/p/three"}
    assert {n: state(client, n) for n in originals} == originals
    assert not snapshot(client, "/p/three").exists


def test_restore_after_an_exception_inside_a_step(ctx: StepContext, client: Any) -> None:
    client.put_parameter(Name="/p/a", Value="a0", Type="String")
    client.put_parameter(Name="/p/b", Value="b0", Type="String")
    before = {n: state(client, n) for n in ("/p/a", "/p/b")}
    # /p/a is changed, then writing /p/b fails because it exists and overwrite is false
    step = set_step({"name": "/p/a", "value": "a1"}, {"name": "/p/b", "value": "b1", "overwrite": False})
    _, error, restored = run_case([step], ctx)
    assert isinstance(error, AwsCallError) and error.code == "ParameterAlreadyExists"
    assert "SSM PutParameter on /p/b failed: ParameterAlreadyExists" in error.message
    assert error.details["parameters"][0]["name"] == "/p/a"
    assert {r["parameter"]: r["action"] for r in restored} == {"/p/a": "overwritten", "/p/b": "unchanged"}
    assert {n: state(client, n) for n in before} == before


def test_restore_after_a_crash_during_the_write(ctx: StepContext, client: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """The restore is registered before the write, so a write that dies half-way is still undone."""
    client.put_parameter(Name="/p/a", Value="a0", Type="String")
    before = state(client, "/p/a")
    real_put = ssm_mod.put

    def put_then_crash(*args: Any, **kwargs: Any) -> Any:
        real_put(*args, **kwargs)
        raise KeyboardInterrupt  # e.g. the worker dies right after AWS accepted the write

    monkeypatch.setattr(ssm_mod, "put", put_then_crash)
    with pytest.raises(KeyboardInterrupt):
        run(set_step({"name": "/p/a", "value": "a1"}), ctx)
    monkeypatch.setattr(ssm_mod, "put", real_put)
    undo_all(ctx)
    assert state(client, "/p/a") == before


def test_restore_false_registers_nothing(ctx: StepContext, client: Any) -> None:
    outcome = run(set_step({"name": "/p/keep", "value": "v"}, restore=False), ctx)
    assert outcome.details["parameters"][0]["restore"] == "off"
    assert ctx.undo.actions == []
    assert "0 will be restored" in outcome.summary
    assert snapshot(client, "/p/keep").value == "v"


def test_restore_false_cannot_cancel_an_earlier_restore(ctx: StepContext, client: Any) -> None:
    run(set_step({"name": "/p/x", "value": "1"}), ctx)
    outcome = run(set_step({"name": "/p/x", "value": "2"}, restore=False), ctx)
    assert outcome.details["parameters"][0]["restore"] == "kept original"
    undo_all(ctx)
    assert not snapshot(client, "/p/x").exists


def test_clearing_a_description_recreates_the_parameter_with_its_tags(ctx: StepContext, client: Any) -> None:
    client.put_parameter(Name="/p/d", Value="v", Type="String", Tags=[{"Key": "owner", "Value": "me"}])
    before = state(client, "/p/d")
    run(set_step({"name": "/p/d", "value": "v2", "description": "added by the test"}), ctx)
    results = undo_all(ctx)
    assert results[0]["action"] == "recreated"
    assert state(client, "/p/d") == before
    assert before["description"] is None and before["tags"] == [{"Key": "owner", "Value": "me"}]


def test_advanced_tier_is_downgraded_by_recreating(client: Any) -> None:
    client.put_parameter(Name="/p/t", Value="v", Type="String", Description="d")
    original = snapshot(client, "/p/t", with_tags=True)
    client.put_parameter(Name="/p/t", Value="v2", Type="String", Overwrite=True, Tier="Advanced")
    if snapshot(client, "/p/t").tier != "Advanced":
        pytest.skip("moto does not keep the Advanced tier")
    result = restore_parameter(client, original)
    assert result["action"] == "recreated"
    assert differences(snapshot(client, "/p/t"), original) == []


def test_restore_of_an_unchanged_parameter_does_nothing(client: Any) -> None:
    client.put_parameter(Name="/p/u", Value="v", Type="String")
    original = snapshot(client, "/p/u")
    result = restore_parameter(client, original)
    assert result["action"] == "unchanged"
    assert snapshot(client, "/p/u").version == original.version


def test_restore_that_does_not_stick_fails_naming_fields_not_values(client: Any,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    client.put_parameter(Name="/p/s", Value=CANARY, Type="SecureString", Description="d")
    original = snapshot(client, "/p/s")
    client.put_parameter(Name="/p/s", Value=CANARY2, Type="SecureString", Overwrite=True)
    # restore_parameter lives in tasks.ssm_restore and calls put there
    monkeypatch.setattr(ssm_restore, "put", lambda *a, **k: {})  # a put that silently does nothing
    with pytest.raises(StepError, match="left its value different") as info:
        restore_parameter(client, original)
    assert CANARY not in str(info.value) and CANARY2 not in str(info.value)


def test_restore_error_texts_are_redacted(client: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    client.put_parameter(Name="/p/s", Value=CANARY, Type="SecureString")
    original = snapshot(client, "/p/s")
    client.put_parameter(Name="/p/s", Value=CANARY2, Type="SecureString", Overwrite=True)

    def echoing_failure(**kwargs: Any) -> None:
        raise ClientError({"Error": {"Code": "ValidationException", "Message": f"bad value {kwargs['Value']}"}},
                          "PutParameter")

    monkeypatch.setattr(client, "put_parameter", echoing_failure)
    with pytest.raises(StepError) as info:
        restore_parameter(client, original)
    assert "ValidationException" in str(info.value)
    assert CANARY not in str(info.value) and mask(CANARY) in str(info.value)
    assert info.value.__cause__ is None and info.value.__suppress_context__


# --- delete ------------------------------------------------------------------------------------------------------


def test_delete_then_restore_recreates_exactly(ctx: StepContext, client: Any, kms_key: str) -> None:
    client.put_parameter(Name="/p/gone", Value=CANARY, Type="SecureString", KeyId=kms_key, Description="desc",
                         Tags=[{"Key": "a", "Value": "b"}])
    client.put_parameter(Name="/p/list", Value="a,b", Type="StringList")
    before = {n: state(client, n) for n in ("/p/gone", "/p/list")}
    outcome = run(DeleteParametersStep(names=["/p/gone", "/p/list"]), ctx)
    assert outcome.summary.startswith("deleted 2 of 2")
    assert not snapshot(client, "/p/gone").exists
    results = undo_all(ctx)
    assert {r["action"] for r in results} == {"created"}
    assert {n: state(client, n) for n in before} == before
    assert CANARY not in json.dumps(outcome.details) + outcome.markdown + json.dumps(results)


def test_delete_of_a_missing_parameter_fails_before_deleting_anything(ctx: StepContext, client: Any) -> None:
    client.put_parameter(Name="/p/here", Value="v", Type="String")
    with pytest.raises(StepError, match=r"do not exist: /p/missing \(nothing was deleted"):
        run(DeleteParametersStep(names=["/p/here", "/p/missing"]), ctx)
    assert snapshot(client, "/p/here").exists
    assert ctx.undo.actions == []


def test_delete_with_missing_ok(ctx: StepContext, client: Any) -> None:
    client.put_parameter(Name="/p/here", Value="v", Type="String")
    outcome = run(DeleteParametersStep(names=["/p/here", "/p/missing"], missing_ok=True), ctx)
    assert outcome.summary.startswith("deleted 1 of 2")
    assert [r["deleted"] for r in outcome.details["parameters"]] == [True, False]
    results = undo_all(ctx)
    assert {r["parameter"]: r["action"] for r in results} == {"/p/here": "created", "/p/missing": "unchanged"}
    assert not snapshot(client, "/p/missing").exists


# --- expect ------------------------------------------------------------------------------------------------------


@pytest.fixture
def params(client: Any) -> None:
    client.put_parameter(Name="/e/plain", Value="hello world", Type="String")
    client.put_parameter(Name="/e/list", Value="a,b,c", Type="StringList")
    client.put_parameter(Name="/e/json", Value=json.dumps({"bucket": "b", "opts": {"n": 1, "on": True}}),
                         Type="String")
    client.put_parameter(Name="/e/secret", Value=CANARY, Type="SecureString")
    client.put_parameter(Name="/e/secret_json", Value=json.dumps({"user": "u", "password": CANARY}),
                         Type="SecureString")


def test_expect_parameters_passes(ctx: StepContext, params: None) -> None:
    step = ExpectParametersStep(parameters=[
        {"name": "/e/plain", "equals": "hello world", "type": "String"},
        {"name": "/e/plain", "contains": "lo wo"},
        {"name": "/e/list", "contains": "c,a", "type": "StringList"},
        {"name": "/e/json", "json_subset": {"opts": {"on": True}}},
        {"name": "/e/secret", "equals": CANARY, "type": "SecureString"},
        {"name": "/e/secret", "contains": CANARY[:12]},
        {"name": "/e/secret_json", "json_subset": {"password": CANARY}},
    ])
    outcome = run(step, ctx)
    assert outcome.summary == "7 SSM parameter expectation(s) met"
    assert "hello world" in outcome.markdown
    blob = outcome.summary + json.dumps(outcome.details) + outcome.markdown
    blob += json.dumps([c.model_dump() for c in outcome.checks])
    assert CANARY not in blob and CANARY[:12] not in blob
    assert [(c.where, c.name, c.verdict) for c in outcome.checks[:2]] == [("/e/plain", "equals", "passed"),
                                                                          ("/e/plain", "contains", "passed")]
    assert mask(CANARY) in outcome.markdown


@pytest.mark.parametrize(
    ("expectation", "message"),
    [
        ({"name": "/e/missing", "equals": "x"}, "SSM parameter /e/missing does not exist"),
        ({"name": "/e/plain", "equals": "bye"}, 'SSM parameter /e/plain is "hello world", expected "bye"'),
        ({"name": "/e/plain", "equals": "hello world", "type": "SecureString"},
         "SSM parameter /e/plain is a String, expected SecureString"),
        ({"name": "/e/plain", "contains": "xyz"}, "which does not contain"),
        ({"name": "/e/list", "contains": "a,z"}, "which does not contain"),
        ({"name": "/e/list", "contains": "a,b"}, None),
        ({"name": "/e/plain", "json_subset": {"a": 1}}, "SSM parameter /e/plain is not JSON"),
        ({"name": "/e/json", "json_subset": {"opts": {"on": 1}}},
         "SSM parameter /e/json $.opts.on: expected 1, got true"),
        ({"name": "/e/json", "json_subset": {"nope": 1}}, "SSM parameter /e/json $.nope: missing"),
    ],
)
def test_compare(client: Any, params: None, expectation: dict, message: str | None) -> None:
    exp = ParameterExpectation(**expectation)
    problems = compare(snapshot(client, exp.name), exp)
    if message is None:
        assert problems == []
    else:
        assert any(message in p for p in problems), problems


def test_expect_failure_lists_every_problem_with_secrets_masked(ctx: StepContext, params: None,
                                                                caplog: pytest.LogCaptureFixture) -> None:
    step = ExpectParametersStep(parameters=[
        {"name": "/e/secret", "equals": CANARY2},
        {"name": "/e/secret", "contains": "zzz-" + CANARY},
        {"name": "/e/secret_json", "json_subset": {"password": CANARY2}},
        {"name": "/e/plain", "equals": "hello world"},
    ])
    caplog.set_level(logging.INFO)
    caplog.set_level(logging.DEBUG, logger="test.ssm")
    with pytest.raises(StepError) as info:
        run(step, ctx)
    err = info.value
    assert isinstance(err, CheckFailed) and err.code == CHECK_FAILED
    assert f"is {mask(CANARY)}, expected {mask(CANARY2)}" in err.message
    assert "$.password: expected" in err.message
    blob = str(err) + json.dumps(err.details) + (err.markdown or "") + caplog.text
    blob += json.dumps([c.model_dump() for c in err.checks])
    assert [c.verdict for c in err.checks] == ["failed", "failed", "failed", "passed"]
    for secret in (CANARY, CANARY2):
        assert secret not in blob
    assert [p["problems"] == [] for p in err.details["parameters"]] == [False, False, False, True]


# --- guard rails -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "prefixes", "ok"),
    [
        ("/test/app/source", ["/test/"], True),
        ("/test/app/source", ["/test"], True),
        ("/test", ["/test/"], True),
        ("/testing/app", ["/test"], False),
        ("/prod/app/source", ["/test/", "/qa/"], False),
        ("test-source", ["test-"], True),
        ("prod-source", ["test-"], False),
        ("arn:aws:ssm:us-east-1:123456789012:parameter/test/a", ["/test/"], True),
        ("arn:aws:ssm:us-east-1:123456789012:parameter/prod/a", ["/test/"], False),
        ("/test/{{ env }}/source", ["/test/"], True),
        ("/te{{ x }}/source", ["/test/"], False),
        ("{{ prefix }}/source", ["/test/"], False),
        ("/anything", [], False),
        ("/anything", None, True),
    ],
)
def test_check_parameter_writes(name: str, prefixes: list[str] | None, ok: bool) -> None:
    for step in (set_step({"name": name, "value": "v"}), DeleteParametersStep(names=[name])):
        errors = check_parameter_writes(step, prefixes)
        assert (errors == []) is ok, errors


def test_check_parameter_writes_names_step_and_parameter() -> None:
    step = SetParametersStep(name="point at test bucket", parameters=[
        {"name": "/test/ok", "value": "1"}, {"name": "/prod/db/url", "value": "2"}])
    assert check_parameter_writes(step, ["/test/", "/qa/"]) == [
        "SSM parameter /prod/db/url is outside the allowed parameter prefixes "
        "(/test/, /qa/)"]
    reads = ExpectParametersStep(parameters=[{"name": "/prod/x", "equals": "1"}])
    assert check_parameter_writes(reads, ["/test/"]) == []


# --- secrets end to end ---------------------------------------------------------------------------------------------


def test_canary_securestring_never_leaks(ctx: StepContext, client: Any, kms_key: str,
                                         caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    """The canary is the before value, an after value and an expected value; it appears nowhere."""
    client.put_parameter(Name="/c/secret", Value=CANARY, Type="SecureString", KeyId=kms_key, Description="c")
    texts: list[str] = []

    def record(outcome: StepOutcome) -> None:
        texts.extend([outcome.summary, json.dumps(outcome.details), outcome.markdown,
                      json.dumps([dataclasses.asdict(link) for link in outcome.links]), json.dumps(outcome.tables)])

    # our own loggers at DEBUG, everything else at INFO (botocore's DEBUG log prints response bodies, which
    # hold decrypted SecureString values: never run cases with botocore at DEBUG)
    caplog.set_level(logging.INFO)
    caplog.set_level(logging.DEBUG, logger="test.ssm")
    if True:
        record(run(set_step({"name": "/c/secret", "value": CANARY2, "type": "SecureString"},
                            {"name": "/c/other", "value": CANARY, "type": "SecureString"}), ctx))
        record(run(ExpectParametersStep(parameters=[{"name": "/c/secret", "equals": CANARY2}]), ctx))
        try:
            run(ExpectParametersStep(parameters=[{"name": "/c/secret", "equals": CANARY}]), ctx)
        except StepError as exc:
            texts.extend([str(exc), repr(exc), json.dumps(exc.details)])
        # an AWS error message that echoes the value (as validation errors may) is redacted too
        real_put = client.put_parameter

        def echoing(**kwargs: Any) -> Any:
            if kwargs["Name"] == "/c/echo":
                raise ClientError({"Error": {"Code": "ValidationException",
                                             "Message": f"Value '{kwargs['Value']}' failed"}}, "PutParameter")
            return real_put(**kwargs)

        monkeypatch.setattr(client, "put_parameter", echoing)
        try:
            run(set_step({"name": "/c/echo", "value": CANARY, "type": "SecureString"}), ctx)
        except StepError as exc:
            assert exc.__cause__ is None
            texts.extend([str(exc), repr(exc), json.dumps(exc.details)])
        monkeypatch.setattr(client, "put_parameter", real_put)
        for result in undo_all(ctx):
            texts.append(json.dumps(result))
    texts.append(caplog.text)
    blob = "\n".join(texts)
    assert "ValidationException" in blob and f"failed: {CHECK_FAILED}" not in blob
    for secret in (CANARY, CANARY2):
        assert secret not in blob
    assert mask(CANARY) in blob and mask(CANARY2) in blob
    assert snapshot(client, "/c/secret").value == CANARY
    assert not snapshot(client, "/c/other").exists


# --- restore records (for a restore in another process) ------------------------------------------------------------


def test_restore_records_hold_no_secret_and_restore_from_history(ctx: StepContext, client: Any, kms_key: str) -> None:
    client.put_parameter(Name="/r/secret", Value=CANARY, Type="SecureString", KeyId=kms_key, Description="d")
    client.put_parameter(Name="/r/plain", Value="p0", Type="String")
    before = {n: state(client, n) for n in ("/r/secret", "/r/plain")}
    run(set_step({"name": "/r/secret", "value": CANARY2, "type": "SecureString"},
                 {"name": "/r/plain", "value": "p1"}, {"name": "/r/new", "value": "n"}), ctx)
    records = ssm_mod.pending_restore_records(ctx.undo)
    text = json.dumps(records)  # JSON-serialisable, and without either secret
    assert CANARY not in text and CANARY2 not in text
    assert [r["name"] for r in records] == ["/r/new", "/r/plain", "/r/secret"]
    results = [ssm_mod.restore_from_record(client, json.loads(json.dumps(r))) for r in records]
    assert [r["action"] for r in results] == ["deleted", "overwritten", "overwritten"]
    assert {n: state(client, n) for n in before} == before
    assert not snapshot(client, "/r/new").exists


def test_a_deleted_securestring_cannot_come_back_from_a_record(ctx: StepContext, client: Any) -> None:
    client.put_parameter(Name="/r/s", Value=CANARY, Type="SecureString")
    run(DeleteParametersStep(names=["/r/s"]), ctx)
    record = ssm_mod.pending_restore_records(ctx.undo)[0]
    with pytest.raises(StepError, match="version 1 is no longer in its history") as info:
        ssm_mod.restore_from_record(client, record)
    assert info.value.code == "RestoreImpossible"
    undo_all(ctx)  # the in-process restore still can
    assert snapshot(client, "/r/s").value == CANARY


def test_parallel_steps_register_one_restore_per_parameter(ctx: StepContext, client: Any) -> None:
    import threading

    client.put_parameter(Name="/t/shared", Value="original", Type="String")
    errors: list[BaseException] = []

    def worker(i: int) -> None:
        try:
            run(set_step({"name": "/t/shared", "value": f"v{i}"}), ctx)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert len(ctx.undo.actions) == 1
    undo_all(ctx)
    assert snapshot(client, "/t/shared").value == "original"
