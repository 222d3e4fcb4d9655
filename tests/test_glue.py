"""Steps ``glue_job`` and ``glue_crawler`` (tasks/glue.py) against moto's Glue, in process.

moto's job runs go STARTING -> RUNNING -> SUCCEEDED, driven by its state manager (here: ``manual`` progression,
N GetJobRun calls per state). Its crawls advance only on ListCrawls, not on GetCrawler, and it has no FAILED run
with an ``ErrorMessage`` and no ``BatchStopJobRun``: the tests set a run's or a crawl's state in moto's backend
while the step waits (the fake clock's ``on_sleep``), and answer BatchStopJobRun with a botocore hook that stops
the run in the backend as Glue would.
"""

from __future__ import annotations

import json
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Iterator

import pytest
from moto.core import DEFAULT_ACCOUNT_ID
from moto.glue.models import glue_backends
from moto.moto_api import state_manager

from flows.spec.load import SpecError, parse_spec
from tasks.glue import GlueCrawlerStep, GlueJobStep, masked_arguments, sensitive_argument
from tasks.kit.aws import AwsTarget, ClientFactory
from tasks.kit.console_links import console_link, literal
from tasks.kit.errors import CHECK_FAILED, TIMED_OUT, CheckFailed, StepError
from tasks.kit.polling import WaitInterrupted
from tasks.kit.secrets import STARS
from tasks.kit.step import REGISTRY, StepContext
from tests.helpers import REGION, FakeClock, failing_calls

JOB = "transform-orders"
CRAWLER = "curated-crawler"
DATABASE = "curated"
PASSWORD = "canary-GluePassword-7f3e"


@pytest.fixture
def glue_clients(module_moto: Any, module_clients: ClientFactory) -> Iterator[ClientFactory]:
    """conftest's module-wide moto, emptied, with a job, a crawler and a database; moto's state transitions and
    the BatchStopJobRun hook are reset after each test."""
    module_moto.reset()
    clients = module_clients
    glue = clients.client("glue")
    glue.create_job(Name=JOB, Role="glue-role", Command={"Name": "glueetl", "ScriptLocation": "s3://code/job.py"},
                    ExecutionProperty={"MaxConcurrentRuns": 5}, DefaultArguments={"--env": "test"},
                    WorkerType="G.1X", NumberOfWorkers=2)
    glue.create_database(DatabaseInput={"Name": DATABASE})
    glue.create_crawler(Name=CRAWLER, Role="glue-role", DatabaseName=DATABASE,
                        Targets={"S3Targets": [{"Path": "s3://curated/orders/"}]})
    try:
        yield clients
    finally:
        state_manager.unset_transition("glue::job_run")
        state_manager.unset_transition("glue::crawl")
        glue.meta.events.unregister("before-call.glue.BatchStopJobRun", unique_id="answer-batch-stop")


def manual(model: str, times: int) -> None:
    """Each state lasts ``times`` describe calls (moto's state manager, in process)."""
    state_manager.set_transition(model, {"progression": "manual", "times": times})


def backend() -> Any:
    return glue_backends[DEFAULT_ACCOUNT_ID][REGION]


def job_runs() -> list[Any]:
    return backend().jobs[JOB].job_runs


def fail_run(run: Any, message: str) -> None:
    """Make a moto job run FAILED with Glue's ErrorMessage (moto has neither)."""
    run.status = "FAILED"
    plain = type(run).as_dict
    run.as_dict = lambda: {**plain(run), "ErrorMessage": message}


def answer_batch_stop(glue: Any) -> list[dict[str, Any]]:
    """Answer BatchStopJobRun (moto lacks it) as Glue does: the runs become STOPPED. Returns the calls."""
    calls: list[dict[str, Any]] = []

    def stop(params: dict[str, Any], **_: Any) -> tuple[Any, dict[str, Any]]:
        params = json.loads(params["body"])
        calls.append(params)
        for run in job_runs():
            if run.job_run_id in params["JobRunIds"]:
                run.status = "STOPPED"
        successful = [{"JobName": params["JobName"], "JobRunId": r} for r in params["JobRunIds"]]
        return (type("Http", (), {"status_code": 200, "headers": {}})(),
                {"SuccessfulSubmissions": successful, "Errors": [], "ResponseMetadata": {"HTTPStatusCode": 200}})

    glue.meta.events.register("before-call.glue.BatchStopJobRun", stop, unique_id="answer-batch-stop")
    return calls


def make_ctx(clients: ClientFactory, tmp_path: Path, clock: FakeClock, **kw: Any) -> StepContext:
    return StepContext(clients=clients, case_name="glue", run_id="run-1", label="glue", spec_dir=tmp_path,
                       clock_override=clock.clock, **kw)


def job_step(**data: Any) -> GlueJobStep:
    return GlueJobStep.model_validate({"kind": "glue_job", "job": JOB, **data})


def run(step: Any, ctx: StepContext) -> Any:
    return REGISTRY[step.kind].run(step, ctx)


# ------------------------------------------------------------------------------------------------------ Glue job


def test_started_run_succeeds_with_evidence(glue_clients: ClientFactory, tmp_path: Path) -> None:
    manual("glue::job_run", 2)  # STARTING for 2 looks, RUNNING for 2, then SUCCEEDED
    clock = FakeClock()
    ctx = make_ctx(glue_clients, tmp_path, clock)
    step = job_step(arguments={"--source_key": "in/orders.csv", "--db-password": PASSWORD})
    ctx.secrets.add(*step.secrets())

    outcome = run(step, ctx)

    (started,) = job_runs()
    assert started.arguments["--source_key"] == "in/orders.csv"  # the arguments reached Glue
    d = outcome.details
    assert d["run_id"] == started.job_run_id and d["state"] == "SUCCEEDED" and d["started_by"] == "this step"
    assert [s["state"] for s in d["states_observed"]] == ["STARTING", "RUNNING", "SUCCEEDED"]
    assert d["execution_time_s"] == 123 and d["dpu_seconds"] == 246 and d["dpu_seconds_estimated"]
    assert d["arguments"]["--source_key"] == "in/orders.csv" and d["arguments"]["--db-password"] == STARS
    assert PASSWORD not in outcome.markdown and PASSWORD not in str(d)
    assert started.job_run_id in outcome.markdown and "STARTING" in outcome.markdown
    assert clock.sleeps == [2.0, 2.5, 3.125]  # the growing interval, no real time
    assert outcome.summary.startswith(f"Glue job {JOB} run {started.job_run_id} SUCCEEDED")


def test_failed_run_fails_the_step_with_glues_error_message(glue_clients: ClientFactory, tmp_path: Path) -> None:
    manual("glue::job_run", 10**6)
    clock = FakeClock(on_sleep=lambda _: fail_run(job_runs()[0], "AnalysisException: Path does not exist"))
    with pytest.raises(CheckFailed) as err:
        run(job_step(), make_ctx(glue_clients, tmp_path, clock))
    assert "ended FAILED (expected SUCCEEDED): AnalysisException: Path does not exist" in err.value.message
    assert err.value.code == CHECK_FAILED
    assert err.value.markdown and "AnalysisException" in err.value.markdown
    assert err.value.details["error_message"] == "AnalysisException: Path does not exist"
    [check] = err.value.checks
    assert (check.name, check.verdict, check.expected) == ("final state", "failed", "SUCCEEDED")
    assert check.actual == err.value.message  # what ended how, and Glue's reason


def test_an_expected_failure_passes(glue_clients: ClientFactory, tmp_path: Path) -> None:
    manual("glue::job_run", 10**6)
    clock = FakeClock(on_sleep=lambda _: fail_run(job_runs()[0], "bad file"))
    outcome = run(job_step(expect_state="FAILED"), make_ctx(glue_clients, tmp_path, clock))
    assert outcome.details["state"] == "FAILED" and outcome.details["error_message"] == "bad file"


def test_timeout_stops_the_run(glue_clients: ClientFactory, tmp_path: Path) -> None:
    manual("glue::job_run", 10**6)  # never leaves STARTING
    calls = answer_batch_stop(glue_clients.client("glue"))
    clock = FakeClock()
    with pytest.raises(StepError) as err:
        run(job_step(wait={"timeout": 60}), make_ctx(glue_clients, tmp_path, clock))
    (started,) = job_runs()
    assert err.value.code == TIMED_OUT
    assert f"Glue job {JOB} run {started.job_run_id} did not finish within 60 s (still STARTING" in err.value.message
    assert "stopped it with BatchStopJobRun" in err.value.message
    assert calls == [{"JobName": JOB, "JobRunIds": [started.job_run_id]}] and started.status == "STOPPED"
    assert clock.t == pytest.approx(60) and err.value.markdown


def test_a_stopped_case_run_stops_the_job_run_it_started(glue_clients: ClientFactory, tmp_path: Path) -> None:
    manual("glue::job_run", 10**6)
    calls = answer_batch_stop(glue_clients.client("glue"))

    def stop_the_run(_: float) -> None:
        raise WaitInterrupted("the run is stopping, so the wait was cut short")

    with pytest.raises(WaitInterrupted):
        run(job_step(), make_ctx(glue_clients, tmp_path, FakeClock(on_sleep=stop_the_run)))
    assert len(calls) == 1 and job_runs()[0].status == "STOPPED"


def test_waits_for_the_pipelines_run_by_argument(glue_clients: ClientFactory, tmp_path: Path) -> None:
    glue = glue_clients.client("glue")
    calls = answer_batch_stop(glue)
    glue.start_job_run(JobName=JOB, Arguments={"--file": "in/a.csv"})  # before the case began: not ours
    ctx = make_ctx(glue_clients, tmp_path, FakeClock(), started_at=time.time() + 1)
    for run_ in job_runs():
        run_.started_on -= timedelta(seconds=5)

    def pipeline(t: float) -> None:
        if len(job_runs()) == 1:  # the pipeline starts two runs while the step waits
            glue.start_job_run(JobName=JOB, Arguments={"--file": "in/b.csv"})
            glue.start_job_run(JobName=JOB, Arguments={"--file": "in/c.csv"})
            for r in job_runs()[1:]:
                r.started_on = datetime.fromtimestamp(ctx.started_at + t, timezone.utc)

    ctx.clock_override = FakeClock(on_sleep=pipeline).clock
    outcome = run(job_step(start=False, match_arguments={"--file": "in/b.csv"}), ctx)
    assert outcome.details["run_id"] == job_runs()[1].job_run_id
    assert outcome.details["started_by"] == "the pipeline" and outcome.details["state"] == "SUCCEEDED"
    assert outcome.details["states_observed"][0]["state"] == "NO RUN YET"
    assert not calls


def test_no_pipeline_run_times_out_without_stopping_anything(glue_clients: ClientFactory, tmp_path: Path) -> None:
    with pytest.raises(StepError) as err:
        run(job_step(start=False, wait={"timeout": 10}), make_ctx(glue_clients, tmp_path, FakeClock()))
    assert err.value.code == TIMED_OUT
    assert f"a run of Glue job {JOB} did not finish within 10 s (still NO RUN YET" in err.value.message
    assert "there was no run to stop" in err.value.message


def test_start_error_names_action_job_and_aws_code(glue_clients: ClientFactory, tmp_path: Path) -> None:
    with pytest.raises(StepError) as err:
        run(job_step(job="no-such-job"), make_ctx(glue_clients, tmp_path, FakeClock()))
    assert err.value.message.startswith("Glue StartJobRun on job no-such-job failed: EntityNotFoundException")
    assert err.value.code == "EntityNotFoundException"


def test_console_links(glue_clients: ClientFactory, tmp_path: Path) -> None:
    # moto in process answers at AWS's own endpoints: the links are made as on AWS (none on moto's server)
    outcome = run(job_step(), make_ctx(glue_clients, tmp_path, FakeClock()))
    (run_id,) = [r.job_run_id for r in job_runs()]
    assert [link.url for link in outcome.links] == [
        f"https://{REGION}.console.aws.amazon.com/gluestudio/home?region={REGION}#/job/{JOB}/run/{run_id}"]
    on_aws = make_ctx(ClientFactory(AwsTarget(region="eu-west-1")), tmp_path, FakeClock())
    (link,) = console_link(on_aws, "glue", "gluestudio/home?region={region}#/job/" + literal("a{b}/run/jr_1"), "x")
    assert link.url == "https://eu-west-1.console.aws.amazon.com/gluestudio/home?region=eu-west-1#/job/a{b}/run/jr_1"


def test_sensitive_argument_names() -> None:
    assert all(sensitive_argument(n) for n in ("--db-password", "--API_KEY", "--auth_token", "--client_secret"))
    assert not any(sensitive_argument(n) for n in ("--source_key", "--env", "--date"))
    assert masked_arguments({"--customer": "acme", "--env": "x"}, ["--customer"]) == {"--customer": STARS,
                                                                                       "--env": "x"}


@pytest.mark.parametrize("operation, data, resource", [
    ("StartJobRun", {}, f"job {JOB}"),
    ("GetJobRun", {}, f"job {JOB} run jr_"),
    ("GetJobRuns", {"start": False}, f"job {JOB}"),
])
def test_aws_failures_name_the_call_the_resource_and_the_code(
        glue_clients: ClientFactory, tmp_path: Path, operation: str, data: dict[str, Any], resource: str) -> None:
    glue = glue_clients.client("glue")
    stops = answer_batch_stop(glue)
    with failing_calls(glue, {operation: "AccessDeniedException"}), pytest.raises(StepError) as err:
        run(job_step(**data), make_ctx(glue_clients, tmp_path, FakeClock()))
    assert not isinstance(err.value, CheckFailed) and err.value.code == "AccessDeniedException"
    assert err.value.message.startswith(f"Glue {operation} on {resource}"), err.value.message
    # a run the step started and could no longer watch is stopped, not left running
    assert len(stops) == (1 if operation == "GetJobRun" else 0)


def test_a_run_that_cannot_be_stopped_says_why(glue_clients: ClientFactory, tmp_path: Path) -> None:
    manual("glue::job_run", 10**6)
    with failing_calls(glue_clients.client("glue"), {"BatchStopJobRun": "AccessDeniedException"}), \
            pytest.raises(StepError) as err:
        run(job_step(wait={"timeout": 5}), make_ctx(glue_clients, tmp_path, FakeClock()))
    assert err.value.code == TIMED_OUT
    assert "could not stop it: Glue BatchStopJobRun on job" in err.value.message
    assert "failed: AccessDeniedException: injected" in err.value.message


# -------------------------------------------------------------------------------------------------- Glue crawler


def crawler_step(**data: Any) -> GlueCrawlerStep:
    return GlueCrawlerStep.model_validate({"kind": "glue_crawler", "crawler": CRAWLER, **data})


def add_table(glue: Any, name: str, columns: list[tuple[str, str]], keys: list[tuple[str, str]]) -> None:
    glue.create_table(DatabaseName=DATABASE, TableInput={
        "Name": name,
        "StorageDescriptor": {"Columns": [{"Name": n, "Type": t} for n, t in columns]},
        "PartitionKeys": [{"Name": n, "Type": t} for n, t in keys],
    })


def finish_crawl(status: str = "COMPLETED", message: str | None = None) -> None:
    """End the crawler's running crawl (moto's GetCrawler never advances it), with Glue's ErrorMessage."""
    crawler = backend().crawlers[CRAWLER]
    if crawler.crawls and crawler.crawls[-1].status == "RUNNING":
        crawler.crawls[-1].status = status
        if message:
            plain = type(crawler).as_dict
            crawler.as_dict = lambda: (lambda d: {**d, "LastCrawl": {**d["LastCrawl"], "ErrorMessage": message}})(
                plain(crawler))


@pytest.fixture
def crawls_run() -> None:
    manual("glue::crawl", 10**6)


@pytest.mark.usefixtures("crawls_run")
def test_crawl_succeeds_and_tables_are_checked(glue_clients: ClientFactory, tmp_path: Path) -> None:
    add_table(glue_clients.client("glue"), "orders", [("id", "bigint"), ("amount", "decimal(10, 2)")], [("dt", "string")])
    step = crawler_step(database=DATABASE, tables=[{"name": "orders", "columns": ["id", "AMOUNT:decimal(10,2)"],
                                                    "partition_keys": ["dt:string"]}])
    outcome = run(step, make_ctx(glue_clients, tmp_path, FakeClock(on_sleep=lambda _: finish_crawl())))
    d = outcome.details
    assert d["status"] == "SUCCEEDED" and d["tables"][0]["ok"]
    assert [s["state"] for s in d["states_observed"]] == ["RUNNING", "READY"]
    assert d["crawl_id"] == backend().crawlers[CRAWLER].crawls[-1].crawl_id and d["dpu_hours"] == 100
    assert "orders" in outcome.markdown and outcome.summary.endswith("1 table(s) as expected")


@pytest.mark.usefixtures("crawls_run")
def test_missing_table_and_wrong_columns_fail_the_step(glue_clients: ClientFactory, tmp_path: Path) -> None:
    add_table(glue_clients.client("glue"), "orders", [("id", "string")], [])
    step = crawler_step(database=DATABASE, tables=[{"name": "orders", "columns": ["id:bigint", "amount"],
                                                    "partition_keys": ["dt"]}, {"name": "customers"}])
    with pytest.raises(CheckFailed) as err:
        run(step, make_ctx(glue_clients, tmp_path, FakeClock(on_sleep=lambda _: finish_crawl())))
    assert err.value.details["problems"] == [
        f"table {DATABASE}.orders column id is string, not bigint",
        f"table {DATABASE}.orders has no column amount",
        f"table {DATABASE}.orders partition keys are [none], not ['dt']",
        f"table {DATABASE}.customers does not exist",
    ]
    assert [(c.name, c.where, c.verdict) for c in err.value.checks] == [
        ("crawl status", "", "passed"), ("table", f"{DATABASE}.orders", "failed"),
        ("table", f"{DATABASE}.customers", "failed")]
    assert err.value.checks[1].expected == "exists, columns id:bigint, amount, partition keys ['dt']"
    assert err.value.checks[1].actual == "; ".join(err.value.details["problems"][:3])
    assert err.value.checks[2].actual == f"table {DATABASE}.customers does not exist"


@pytest.mark.usefixtures("crawls_run")
def test_failed_crawl_fails_with_glues_error_message(glue_clients: ClientFactory, tmp_path: Path) -> None:
    with pytest.raises(CheckFailed) as err:
        run(crawler_step(), make_ctx(glue_clients, tmp_path,
                                     FakeClock(on_sleep=lambda _: finish_crawl("FAILED", "Access denied"))))
    assert err.value.message == f"Glue crawler {CRAWLER}'s crawl ended FAILED (expected SUCCEEDED): Access denied"


@pytest.mark.parametrize("operation, code", [("GetCrawler", "EntityNotFoundException"),
                                             ("StartCrawler", "CrawlerRunningException"),
                                             ("GetTable", "AccessDeniedException")])
def test_crawler_aws_failures_name_the_call_the_resource_and_the_code(
        glue_clients: ClientFactory, tmp_path: Path, operation: str, code: str) -> None:
    step = crawler_step(database=DATABASE, tables=[{"name": "orders"}])
    with failing_calls(glue_clients.client("glue"), {operation: code}), pytest.raises(StepError) as err:
        run(step, make_ctx(glue_clients, tmp_path, FakeClock()))
    resource = f"table {DATABASE}.orders" if operation == "GetTable" else f"crawler {CRAWLER}"
    assert not isinstance(err.value, CheckFailed) and err.value.code == code
    assert err.value.message.startswith(f"Glue {operation} on {resource} failed: {code}")


def test_the_crawl_history_is_optional(glue_clients: ClientFactory, tmp_path: Path) -> None:
    manual("glue::crawl", 10**6)
    with failing_calls(glue_clients.client("glue"), {"ListCrawls": "AccessDeniedException"}):
        outcome = run(crawler_step(), make_ctx(glue_clients, tmp_path,
                                               FakeClock(on_sleep=lambda _: finish_crawl())))
    assert outcome.details["status"] == "SUCCEEDED" and outcome.details["crawl_id"] is None


@pytest.mark.usefixtures("crawls_run")
def test_crawler_timeout_stops_the_crawl(glue_clients: ClientFactory, tmp_path: Path) -> None:
    with pytest.raises(StepError) as err:
        run(crawler_step(wait={"timeout": 30}), make_ctx(glue_clients, tmp_path, FakeClock()))
    assert err.value.code == TIMED_OUT and "stopped it with StopCrawler" in err.value.message
    assert backend().crawlers[CRAWLER].crawls[-1].status == "STOPPING"  # moto's stop in progress


@pytest.mark.usefixtures("crawls_run")
def test_waits_for_the_crawl_the_pipeline_starts(glue_clients: ClientFactory, tmp_path: Path) -> None:
    glue = glue_clients.client("glue")
    glue.start_crawler(Name=CRAWLER)  # an earlier crawl, finished an hour before the case began
    finish_crawl()
    backend().crawlers[CRAWLER].crawls[-1].start_time -= timedelta(hours=1)
    started: list[Any] = []

    def pipeline(_: float) -> None:
        if not started:  # the pipeline starts a crawl; it ends two looks later
            started.append(glue.start_crawler(Name=CRAWLER))
        elif len(started) < 3:
            started.append("looked")
        else:
            finish_crawl()

    outcome = run(crawler_step(start=False), make_ctx(glue_clients, tmp_path, FakeClock(on_sleep=pipeline)))
    states = [s["state"] for s in outcome.details["states_observed"]]
    assert states[0] == "READY (no crawl of this case yet)" and states[-1] == "READY" and "RUNNING" in states
    assert started and outcome.details["started_by"] == "the pipeline"


# ------------------------------------------------------------------------------------------------- bad input


def spec_problems(step: dict[str, Any]) -> list[str]:
    with pytest.raises(SpecError) as err:
        parse_spec({"case": "glue", "steps": [step]})
    return err.value.problems


@pytest.mark.parametrize("step, message", [
    ({"kind": "glue_job", "name": "t", "job": JOB, "arguments": {"source": "x"}},
     "step 1 't' (glue_job): field 'arguments': argument name 'source' must start with -- (e.g. --source_key)"),
    ({"kind": "glue_job", "name": "t", "job": JOB, "match_arguments": {"--f": "x"}},
     "step 1 't' (glue_job): match_arguments finds a run the pipeline started: it needs start: false"),
    ({"kind": "glue_job", "name": "t", "job": JOB, "start": False, "arguments": {"--f": "x"}},
     "step 1 't' (glue_job): arguments are for a run the step starts"),
    ({"kind": "glue_job", "name": "t", "job": JOB, "expect_state": "DONE"},
     "step 1 't' (glue_job): field 'expect_state'"),
    ({"kind": "glue_crawler", "name": "c", "crawler": CRAWLER, "tables": [{"name": "orders"}]},
     "step 1 'c' (glue_crawler): tables needs database"),
    ({"kind": "glue_crawler", "name": "c", "crawler": CRAWLER, "database": "d", "tables": [{"name": "o",
                                                                                            "columns": [":int"]}]},
     "step 1 'c' (glue_crawler): field 'tables.0.columns': column ':int' needs a name (name or name:type)"),
])
def test_bad_input_is_refused_at_validation(step: dict[str, Any], message: str) -> None:
    (problem,) = spec_problems(step)
    assert problem.startswith(message.split(": ", 1)[0]) and message.split(": ", 1)[1] in problem, problem


# ------------------------------------------------------------------------------------------------- in a flow


@pytest.mark.usefixtures("prefect_harness")
def test_a_case_with_a_glue_job_and_crawler_leaves_evidence_in_the_ui_and_the_pack(
        glue_clients: ClientFactory, tmp_path: Path) -> None:
    from flows.pipeline_test import pipeline_test
    from tests.helpers import assert_complete_pack, read_artifacts

    add_table(glue_clients.client("glue"), "orders", [("id", "bigint")], [("dt", "string")])
    case: dict[str, Any] = {"case": "Glue flow", "variables": {"password": PASSWORD}, "aws": {"region": REGION}, "steps": [
        {"kind": "glue_job", "name": "transform", "job": JOB, "wait": {"timeout": 20},
         "arguments": {"--source_key": "in/{{ flow_run_id }}.csv", "--db-password": "{{ password }}"}},
        {"kind": "glue_crawler", "name": "catalog", "crawler": CRAWLER, "database": DATABASE, "wait": {"timeout": 20},
         "tables": [{"name": "orders", "columns": ["id:bigint"], "partition_keys": ["dt"]}]},
    ]}
    # moto's default (immediate) states: the run succeeds at once, the crawl once the step lists the crawls
    result = pipeline_test(spec=case, base_dir=str(tmp_path))
    assert result.passed, [s.error for s in result.steps]
    (run_,) = job_runs()
    assert run_.arguments["--db-password"] == PASSWORD  # sent as given, shown masked
    assert_complete_pack(result, steps=2)
    pack = "".join(p.read_text(encoding="utf-8") for p in Path(str(result.evidence_dir)).iterdir())
    assert run_.job_run_id in pack and PASSWORD not in pack
    bodies = [str(a.data) for a in read_artifacts(result.flow_run_id) if a.type == "markdown"]
    assert any(run_.job_run_id in b and "States observed" in b for b in bodies)
    assert any("orders" in b and "Partition keys" in b for b in bodies)
    assert not any(PASSWORD in b for b in bodies)
