"""Step ``step_functions`` (tasks/stepfunctions.py) against moto's Step Functions, in process, with moto running
the state machines for real (``execute_state_machine``): Pass, Fail and Wait states, their output, error, cause
and history.

moto runs each execution in a thread of its own: a test that needs an execution to have ended joins those threads
(``settle``, bounded) from the fake clock's ``on_sleep``, so the step's waits cost no real time.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Iterator

import pytest
from moto import mock_aws
from moto.core import DEFAULT_ACCOUNT_ID
from moto.stepfunctions.parser.utils import TMP_THREADS

from flows.spec.load import SpecError, parse_spec
from tasks.kit.aws import AwsTarget, ClientFactory
from tasks.kit.errors import CHECK_FAILED, TIMED_OUT, CheckFailed, StepError
from tasks.kit.polling import WaitInterrupted
from tasks.kit.secrets import STARS
from tasks.kit.step import REGISTRY, StepContext
from tasks.stepfunctions import StepFunctionsStep, execution_name
from tests.helpers import MOTO_CONFIG, REGION, FakeClock, failing_calls, use_fake_aws_env

ROLE = f"arn:aws:iam::{DEFAULT_ACCOUNT_ID}:role/sfn"
TOKEN = "canary-SfnToken-9a8b7c"
MACHINES = {
    "load": {"StartAt": "Load", "States": {"Load": {"Type": "Pass", "End": True, "Parameters": {
        "rows": 5, "file.$": "$.file", "token.$": "$.auth.token", "status": "loaded"}}}},
    "reject": {"StartAt": "Load", "States": {
        "Load": {"Type": "Pass", "Next": "Validate"},
        "Validate": {"Type": "Fail", "Error": "BadFile", "Cause": "row 3 has no id"}}},
    "slow": {"StartAt": "Sleep", "States": {"Sleep": {"Type": "Wait", "Seconds": 3600, "End": True}}},
}


@pytest.fixture(scope="module")
def sfn_moto() -> Iterator[Any]:
    """moto for this module, running state machines for real."""
    with pytest.MonkeyPatch.context() as mp:
        use_fake_aws_env(mp)
        with mock_aws(config={**MOTO_CONFIG, "stepfunctions": {"execute_state_machine": True}}) as mock:
            yield mock


@pytest.fixture(scope="module")
def sfn_module_clients(sfn_moto: Any) -> ClientFactory:
    return ClientFactory(AwsTarget(region=REGION))


@pytest.fixture
def arns(sfn_moto: Any, sfn_module_clients: ClientFactory) -> Iterator[dict[str, str]]:
    """An empty account with the state machines above; every execution thread ended afterwards."""
    sfn_moto.reset()
    sfn = sfn_module_clients.client("stepfunctions")
    yield {name: sfn.create_state_machine(name=name, definition=json.dumps(d), roleArn=ROLE)["stateMachineArn"]
           for name, d in MACHINES.items()}
    settle()


def settle(_: float = 0.0) -> None:
    """Let moto's execution threads finish (bounded)."""
    for thread in list(TMP_THREADS):
        thread.join(5)


def make_ctx(clients: ClientFactory, tmp_path: Path, clock: FakeClock, **kw: Any) -> StepContext:
    return StepContext(clients=clients, case_name="sfn", run_id="run-42ab", label="sfn", spec_dir=tmp_path,
                       clock_override=clock.clock, **kw)


def sfn_step(**data: Any) -> StepFunctionsStep:
    return StepFunctionsStep.model_validate({"kind": "step_functions", **data})


def run(step: StepFunctionsStep, ctx: StepContext) -> Any:
    return REGISTRY["step_functions"].run(step, ctx)


def test_started_execution_succeeds_and_its_output_is_checked(
        arns: dict[str, str], sfn_module_clients: ClientFactory, tmp_path: Path) -> None:
    step = sfn_step(state_machine=arns["load"], input={"file": "in/orders.csv", "auth": {"token": TOKEN}},
                    sensitive_fields=["auth.token", "token"], name_prefix="orders-",
                    expect={"json_subset": {"rows": 5, "status": "loaded"}, "jmespath": {"file": "in/orders.csv"}})
    ctx = make_ctx(sfn_module_clients, tmp_path, FakeClock(on_sleep=settle))
    ctx.secrets.add(*step.secrets())

    outcome = run(step, ctx)

    d = outcome.details
    assert d["status"] == "SUCCEEDED" and d["started_by"] == "this step" and d["failed_state"] is None
    assert d["name"].startswith("orders-run-42ab-") and len(d["name"]) == len("orders-run-42ab-") + 8
    assert json.loads(d["output"]) == {"rows": 5, "file": "in/orders.csv", "token": STARS, "status": "loaded"}
    assert json.loads(d["input"])["auth"]["token"] == STARS
    assert TOKEN not in outcome.markdown and TOKEN not in json.dumps(d)
    assert [(c.name, c.verdict) for c in outcome.checks] == [("final status", "passed"), ("json_subset", "passed"),
                                                             ("file", "passed")]
    assert TOKEN not in json.dumps([c.model_dump() for c in outcome.checks])
    assert d["states_observed"][-1]["state"] == "SUCCEEDED"
    assert outcome.summary.startswith(f"Step Functions execution {d['name']} SUCCEEDED, output as expected")


def test_failed_execution_shows_error_cause_and_failed_state(
        arns: dict[str, str], sfn_module_clients: ClientFactory, tmp_path: Path) -> None:
    with pytest.raises(CheckFailed) as err:
        run(sfn_step(state_machine=arns["reject"]), make_ctx(sfn_module_clients, tmp_path, FakeClock(on_sleep=settle)))
    assert err.value.code == CHECK_FAILED
    assert "ended FAILED in state Validate (expected SUCCEEDED): BadFile: row 3 has no id" in err.value.message
    assert err.value.details["failed_state"] == "Validate" and err.value.details["error"] == "BadFile"
    assert err.value.markdown and "row 3 has no id" in err.value.markdown


def test_an_expected_failure_passes(arns: dict[str, str], sfn_module_clients: ClientFactory, tmp_path: Path) -> None:
    outcome = run(sfn_step(state_machine=arns["reject"], expect_status="FAILED"),
                  make_ctx(sfn_module_clients, tmp_path, FakeClock(on_sleep=settle)))
    assert outcome.details["cause"] == "row 3 has no id"


def test_output_that_does_not_match_fails_with_each_difference(
        arns: dict[str, str], sfn_module_clients: ClientFactory, tmp_path: Path) -> None:
    step = sfn_step(state_machine=arns["load"], input={"file": "a.csv", "auth": {"token": "t"}},
                    expect={"json_subset": {"rows": 6}, "jmespath": {"status": "done"}})
    with pytest.raises(CheckFailed) as err:
        run(step, make_ctx(sfn_module_clients, tmp_path, FakeClock(on_sleep=settle)))
    assert err.value.details["problems"] == ["$.rows: expected 6, got 5", 'status: expected "done", got "loaded"']


def test_timeout_stops_the_execution(arns: dict[str, str], sfn_module_clients: ClientFactory, tmp_path: Path) -> None:
    clock = FakeClock()
    with pytest.raises(StepError) as err:
        run(sfn_step(state_machine=arns["slow"], wait={"timeout": 120}), make_ctx(sfn_module_clients, tmp_path, clock))
    assert err.value.code == TIMED_OUT and clock.t == pytest.approx(120)
    assert err.value.message.startswith("Step Functions execution pipeline-test-run-42ab-")
    assert "did not finish within 120 s (still RUNNING" in err.value.message
    assert "stopped it with StopExecution" in err.value.message
    settle()
    arn = err.value.details["execution_arn"]
    assert sfn_module_clients.client("stepfunctions").describe_execution(executionArn=arn)["status"] == "ABORTED"


def test_a_stopped_case_run_stops_the_execution_it_started(
        arns: dict[str, str], sfn_module_clients: ClientFactory, tmp_path: Path) -> None:
    def stop_the_run(_: float) -> None:
        raise WaitInterrupted("the run is stopping, so the wait was cut short")

    with pytest.raises(WaitInterrupted):
        run(sfn_step(state_machine=arns["slow"]), make_ctx(sfn_module_clients, tmp_path,
                                                           FakeClock(on_sleep=stop_the_run)))
    settle()
    sfn = sfn_module_clients.client("stepfunctions")
    (execution,) = sfn.list_executions(stateMachineArn=arns["slow"])["executions"]
    assert execution["status"] == "ABORTED"


def test_waits_for_the_execution_the_pipeline_starts(
        arns: dict[str, str], sfn_module_clients: ClientFactory, tmp_path: Path) -> None:
    sfn = sfn_module_clients.client("stepfunctions")
    doc = json.dumps({"file": "x", "auth": {"token": "t"}})
    sfn.start_execution(stateMachineArn=arns["load"], name="ingest-before", input=doc)  # before the case began
    ctx = make_ctx(sfn_module_clients, tmp_path, FakeClock(),
                   started_at=time.time() + 0.05)
    started: list[str] = []

    def pipeline(_: float) -> None:
        if not started:
            while time.time() < ctx.started_at:  # moto stamps executions with the real time
                settle()
            for name in ("ingest-ours", "other-later"):
                started.append(sfn.start_execution(stateMachineArn=arns["load"], name=name, input=doc)["executionArn"])
        settle()

    ctx.clock_override = FakeClock(on_sleep=pipeline).clock
    outcome = run(sfn_step(state_machine=arns["load"], start=False, name_prefix="ingest-"), ctx)
    assert outcome.details["execution_arn"] == started[0] and outcome.details["started_by"] == "the pipeline"
    assert outcome.details["states_observed"][0]["state"] == "NO EXECUTION YET"


def pipeline_starting(sfn: Any, arn: str, ctx: StepContext, inputs: dict[str, Any]) -> FakeClock:
    """A fake clock whose first sleep is the pipeline starting one execution per input (in order, once the case
    has begun), and whose every sleep lets moto's executions end."""
    started: list[str] = []

    def pipeline(_: float) -> None:
        if not started:
            while time.time() < ctx.started_at:  # moto stamps executions with the real time
                settle()
            for name, document in inputs.items():
                started.append(sfn.start_execution(stateMachineArn=arn, name=name,
                                                   input=json.dumps(document))["executionArn"])
                time.sleep(0.002)  # distinct start times: the newest is the last started
        settle()

    return FakeClock(on_sleep=pipeline)


def landed(folder: str, token: str = "t") -> dict[str, Any]:
    return {"file": f"landing/{folder}/clientes.csv", "auth": {"token": token}}


@pytest.mark.parametrize("match", [{"json_subset": {"file": "landing/a/clientes.csv"}},
                                   {"jmespath": {"file": "landing/a/clientes.csv", "auth.token != null": True}}])
def test_match_input_picks_the_execution_of_the_case_s_file(
        arns: dict[str, str], sfn_module_clients: ClientFactory, tmp_path: Path, match: dict[str, Any]) -> None:
    """Two files land; the pipeline starts an execution for each, b's last: the step checks a's, not the newest."""
    sfn = sfn_module_clients.client("stepfunctions")
    sfn.start_execution(stateMachineArn=arns["load"], name="ingest-before", input=json.dumps(landed("a")))
    ctx = make_ctx(sfn_module_clients, tmp_path, FakeClock(), started_at=time.time() + 0.05)
    ctx.clock_override = pipeline_starting(sfn, arns["load"], ctx, {"ingest-a": landed("a"),
                                                                    "ingest-b": landed("b")}).clock
    step = sfn_step(state_machine=arns["load"], start=False, name_prefix="ingest-", match_input=match,
                    expect={"jmespath": {"file": "landing/a/clientes.csv"}})

    outcome = run(step, ctx)

    d = outcome.details
    assert d["name"] == "ingest-a" and d["status"] == "SUCCEEDED" and d["candidates_considered"] == 2
    # the newest first; the execution from before the case began is no candidate
    assert [c["name"] for c in d["candidates"]] == ["ingest-b", "ingest-a"]
    b, a = d["candidates"]
    assert a["picked"] and a["matched"] and a["why_not"] is None
    assert not b["matched"] and not b["picked"]
    assert 'expected "landing/a/clientes.csv", got "landing/b/clientes.csv"' in b["why_not"]
    assert "**Executions considered** (2 started since the case began)" in outcome.markdown
    assert "landing/b/clientes.csv" in outcome.markdown and "match_input" in outcome.markdown


def test_no_execution_matching_the_input_times_out_listing_the_candidates(
        arns: dict[str, str], sfn_module_clients: ClientFactory, tmp_path: Path) -> None:
    sfn = sfn_module_clients.client("stepfunctions")
    ctx = make_ctx(sfn_module_clients, tmp_path, FakeClock(), started_at=time.time() + 0.05)
    clock = pipeline_starting(sfn, arns["load"], ctx, {"ingest-a": landed("a", TOKEN), "other-b": landed("b", TOKEN)})
    ctx.clock_override = clock.clock
    step = sfn_step(state_machine=arns["load"], start=False, name_prefix="ingest-", wait={"timeout": 60},
                    sensitive_fields=["auth.token"],
                    match_input={"json_subset": {"file": "landing/c/clientes.csv", "auth": {"token": "other"}}})

    with pytest.raises(StepError) as err:
        run(step, ctx)

    assert err.value.code == TIMED_OUT and clock.t == pytest.approx(60)
    message = err.value.message
    assert message.startswith(f"no execution of {arns['load']} whose name starts with ingest- and whose input "
                              "matches match_input was started since the case began, within 60 s: 2 considered: ")
    assert 'ingest-a ($.file: expected "landing/c/clientes.csv", got "landing/a/clientes.csv"; $.auth.token: ' \
        in message and "other-b (its name does not start with ingest-)" in message
    d = err.value.details
    assert [(c["name"], c["matched"]) for c in d["candidates"]] == [("other-b", False), ("ingest-a", False)]
    assert d["states_observed"][-1]["state"] == "NO MATCHING EXECUTION YET" and d["input"] is None
    assert "**Executions considered** (2 started since the case began)" in str(err.value.markdown)
    # another file's input holds a secret at a sensitive path: masked wherever the candidates are shown
    assert TOKEN not in message and TOKEN not in json.dumps(d) and TOKEN not in str(err.value.markdown)


def test_state_machine_by_name_and_start_error_with_aws_code(
        arns: dict[str, str], sfn_module_clients: ClientFactory, tmp_path: Path) -> None:
    outcome = run(sfn_step(state_machine="reject", expect_status="FAILED"),
                  make_ctx(sfn_module_clients, tmp_path, FakeClock(on_sleep=settle)))
    assert outcome.details["state_machine"] == arns["reject"]
    with pytest.raises(StepError) as err:
        run(sfn_step(state_machine="missing"), make_ctx(sfn_module_clients, tmp_path, FakeClock()))
    assert err.value.message.startswith("Step Functions StartExecution on state machine arn:aws:states:")
    assert err.value.code == "StateMachineDoesNotExist"


def test_execution_names_fit_step_functions_limits() -> None:
    name = execution_name("p" * 80, "0f1e2d3c-aaaa")
    assert len(name) == 80 and name.endswith(name[-8:]) and "0f1e2d3c-" in name
    assert execution_name(None, "r/1").startswith("pipeline-test-r1-")


@pytest.mark.parametrize("step, message", [
    ({"state_machine": "m", "start": False, "input": {}}, "input is for an execution the step starts"),
    ({"state_machine": "m", "expect_status": "FAILED", "expect": {"jmespath": {"a": 1}}},
     "expect checks the output, which only a SUCCEEDED execution has"),
    ({"state_machine": "m", "name_prefix": "bad name"}, "field 'name_prefix': letters, digits, - and _ only"),
    ({"state_machine": "m", "expect": {"jmespath": {"a[": 1}}}, "field 'expect': invalid JMESPath expression 'a['"),
    ({"state_machine": "m", "expect": {}}, "field 'expect': expect needs json_subset and/or jmespath"),
    ({"state_machine": "m", "input": {"x": "y" * 300_000}}, "Step Functions allows at most 262144"),
    ({"state_machine": "m", "start": False, "match_input": {}},
     "field 'match_input': match_input needs json_subset and/or jmespath"),
    ({"state_machine": "m", "start": False, "match_input": {"jmespath": {"file ==": "a"}}},
     "field 'match_input': invalid JMESPath expression 'file =='"),
    ({"state_machine": "m", "start": False, "match_input": {"json_subsett": {"file": "a"}}},
     "field 'match_input.json_subsett': unknown field"),
    ({"state_machine": "m", "match_input": {"json_subset": {"file": "a"}}},
     "match_input finds an execution the pipeline started: it needs start: false"),
])
def test_bad_input_is_refused_at_validation(step: dict[str, Any], message: str) -> None:
    with pytest.raises(SpecError) as err:
        parse_spec({"case": "sfn", "steps": [{"kind": "step_functions", "name": "run", **step}]})
    (problem,) = err.value.problems
    assert problem.startswith("step 1 'run' (step_functions): ") and message in problem, problem


@pytest.mark.parametrize("operation, data", [
    ("DescribeExecution", {}),
    ("ListExecutions", {"start": False}),
    ("GetExecutionHistory", {"state_machine": "reject"}),
])
def test_aws_failures_name_the_call_the_resource_and_the_code(
        arns: dict[str, str], sfn_module_clients: ClientFactory, tmp_path: Path, operation: str,
        data: dict[str, Any]) -> None:
    sfn = sfn_module_clients.client("stepfunctions")
    step = sfn_step(**{"state_machine": arns["slow"], **data})
    with failing_calls(sfn, {operation: "AccessDeniedException"}):
        with pytest.raises(StepError) as err:
            run(step, make_ctx(sfn_module_clients, tmp_path, FakeClock(on_sleep=settle)))
    assert not isinstance(err.value, CheckFailed) and err.value.code == "AccessDeniedException"
    assert err.value.message.startswith(f"Step Functions {operation} on "), err.value.message
    assert "failed: AccessDeniedException: injected" in err.value.message
    if operation == "DescribeExecution":  # the execution it started and could not watch is stopped
        settle()
        (execution,) = sfn.list_executions(stateMachineArn=arns["slow"])["executions"]
        assert execution["status"] == "ABORTED"


def test_an_execution_that_cannot_be_stopped_says_why(
        arns: dict[str, str], sfn_module_clients: ClientFactory, tmp_path: Path) -> None:
    sfn = sfn_module_clients.client("stepfunctions")
    with failing_calls(sfn, {"StopExecution": "AccessDeniedException"}):
        with pytest.raises(StepError) as err:
            run(sfn_step(state_machine=arns["slow"], wait={"timeout": 5}),
                make_ctx(sfn_module_clients, tmp_path, FakeClock()))
    assert err.value.code == TIMED_OUT and "could not stop it: Step Functions StopExecution on arn:" in err.value.message
    (execution,) = sfn.list_executions(stateMachineArn=arns["slow"])["executions"]
    sfn.stop_execution(executionArn=execution["executionArn"])  # end moto's thread


@pytest.mark.usefixtures("prefect_harness")
def test_a_failing_case_shows_the_failed_state_in_the_ui_and_the_pack(
        arns: dict[str, str], sfn_module_clients: ClientFactory, tmp_path: Path) -> None:
    from flows.evidence.results import result_of
    from flows.pipeline_test import pipeline_test
    from tests.helpers import assert_complete_pack, read_artifacts

    wait = {"timeout": 20, "initial": 0.05}
    case: dict[str, Any] = {"case": "Sfn flow", "variables": {"token": TOKEN}, "aws": {"region": REGION}, "steps": [
        {"kind": "step_functions", "name": "load", "state_machine": "load", "wait": wait,
         "input": {"file": "in/{{ flow_run_id }}.csv", "auth": {"token": "{{ token }}"}},
         "sensitive_fields": ["auth.token", "token"], "expect": {"jmespath": {"rows": 5}}},
        {"kind": "step_functions", "name": "validate", "state_machine": "reject", "wait": wait},
    ]}
    state = pipeline_test(spec=case, base_dir=str(tmp_path), return_state=True)
    result = result_of(state)
    assert state.is_failed() and result is not None
    assert [(s.label, s.status) for s in result.steps] == [("load", "passed"), ("validate", "failed")]
    assert "in state Validate (expected SUCCEEDED): BadFile: row 3 has no id" in str(result.steps[1].error)
    assert_complete_pack(result, steps=2)
    pack = "".join(p.read_text(encoding="utf-8") for p in Path(str(result.evidence_dir)).iterdir())
    assert "Validate" in pack and TOKEN not in pack
    bodies = [str(a.data) for a in read_artifacts(str(result.flow_run_id)) if a.type == "markdown"]
    assert any("Failed in state" in b and "Validate" in b for b in bodies)
    assert not any(TOKEN in b for b in bodies)
