"""Steps ``glue_job`` and ``glue_crawler``: run (or wait for) a Glue job run or a crawl, and prove how it ended.

``glue_job`` starts a run of a job with templated arguments, or waits for the run the pipeline started (the
newest run of the job started since the case began, optionally one whose arguments have given values); it waits
with the growing interval, stops the run on timeout (``BatchStopJobRun``) and checks the final state (a FAILED,
ERROR, TIMEOUT or STOPPED run fails the step with Glue's ``ErrorMessage``). Arguments whose names look sensitive
(password, secret, token, ...) or are listed in ``secret_arguments`` are masked in the evidence, and their values
are secrets of the run.

``glue_crawler`` starts a crawler, or waits for the crawl the pipeline started (one running now, or one started
since the case began), checks its last crawl's status, and that tables exist in a database with given columns
and partition keys.

Starting a job run or a crawl is the pipeline's own work, not a change the case undoes; a run or crawl the step
started is stopped when the case run is stopped while it waits.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from botocore.exceptions import ClientError
from pydantic import Field, field_validator, model_validator

from tasks.kit import markdown as md
from tasks.kit.checks import CheckRecord
from tasks.kit.console_links import console_link, literal
from tasks.kit.errors import AWS_ERRORS, CheckFailed, StepError, aws_error, error_code, request_id
from tasks.kit.iam import Arns, Footprint
from tasks.kit.json_expect import truncate
from tasks.kit.pipeline_runs import (
    RunWait,
    StateHistory,
    as_utc,
    duration_s,
    newest_since,
    took,
    watch_run,
    when,
)
from tasks.kit.secrets import mask, redact
from tasks.kit.step import SpecModel, StepBase, StepContext, StepOutcome, format_duration, step_kind

if TYPE_CHECKING:
    from types_boto3_glue import GlueClient

#: states after which a job run never changes again
JOB_FINAL_STATES = frozenset({"SUCCEEDED", "FAILED", "ERROR", "TIMEOUT", "STOPPED", "EXPIRED"})
#: argument names whose values are masked without being listed (``--db-password``, ``--api_token``, ...)
SENSITIVE_ARGUMENT = re.compile(r"pass(word|wd)?|secret|token|credential|api[-_]?key|private[-_]?key|"
                                r"access[-_]?key|auth|pwd|conn(ection)?[-_]?str", re.IGNORECASE)
#: how much of Glue's error message the step's message and evidence show
MAX_MESSAGE_CHARS = 2000
#: DPUs of one worker of each type
WORKER_DPUS = {"G.025X": 0.25, "G.1X": 1.0, "G.2X": 2.0, "G.4X": 4.0, "G.8X": 8.0, "Z.2X": 2.0}
#: the state shown while no run of the pipeline's has been seen yet
NO_RUN_YET = "NO RUN YET"
#: how many of a job's runs are looked at for the pipeline's (GetJobRuns' largest page, newest first)
RUNS_PAGE = 200
_GLUE_NAME = r"[^\x00-\x1f]{1,255}"

JobState = Literal["SUCCEEDED", "FAILED", "ERROR", "TIMEOUT", "STOPPED"]


def sensitive_argument(name: str, declared: list[str] | tuple[str, ...] = ()) -> bool:
    """Whether an argument's value is masked: its name is declared secret, or looks sensitive."""
    bare = name.lstrip("-")
    return bare in {d.lstrip("-") for d in declared} or bool(SENSITIVE_ARGUMENT.search(bare))


def masked_arguments(arguments: dict[str, Any], declared: list[str] | tuple[str, ...] = ()) -> dict[str, str]:
    """The arguments as the evidence shows them: sensitive values masked."""
    return {k: mask(str(v)) if sensitive_argument(k, declared) else str(v) for k, v in arguments.items()}


def secret_argument_values(arguments: dict[str, Any], declared: list[str] | tuple[str, ...] = ()) -> list[str]:
    return [str(v) for k, v in arguments.items() if sensitive_argument(k, declared) and v]


def _facts_table(rows: list[tuple[str, Any]]) -> md.Md:
    return md.table(["Fact", "Value"], rows)


# ================================================================================================== Glue job


class GlueJobStep(StepBase):
    """Start a Glue job run (or wait for the one the pipeline started), wait for it and check how it ended."""

    untemplated: ClassVar[frozenset[str]] = StepBase.untemplated | {"secret_arguments"}

    kind: Literal["glue_job"] = "glue_job"
    job: str = Field(..., pattern=_GLUE_NAME, description="The Glue job's name.")
    start: bool = Field(
        True, description="Start a run (true), or wait for the run the pipeline started (false): the newest run "
        "of the job started since the case began (with match_arguments: the newest whose arguments have those "
        "values).")
    arguments: dict[str, str] = Field(
        default_factory=dict,
        description="Arguments of the run started (templated), by name with its leading `--` (`--source_key`); "
        "they override the job's default arguments. With start only.")
    secret_arguments: list[str] = Field(
        default_factory=list,
        description="Names of arguments whose values are secret: masked in the evidence, logs and messages. "
        "Names that look sensitive (password, secret, token, credential, api_key, ...) are masked anyway.")
    match_arguments: dict[str, str] = Field(
        default_factory=dict,
        description="Without start: wait for the newest run (since the case began) whose arguments have these "
        "values (templated), e.g. the file the case uploaded.")
    wait: RunWait = Field(default_factory=RunWait, description="How long to wait for the run to end and how often "
                          "to look (without start, the run must also appear within this time).")
    stop_on_timeout: bool = Field(True, description="Stop the run (BatchStopJobRun) when the wait times out.")
    expect_state: JobState = Field("SUCCEEDED", description="The final state the run must reach.")

    @field_validator("arguments", "match_arguments")
    @classmethod
    def _argument_names(cls, value: dict[str, str]) -> dict[str, str]:
        for name in value:
            if not re.fullmatch(r"--[A-Za-z0-9_.\-]+", name):
                raise ValueError(f"argument name {name!r} must start with -- (e.g. --source_key)")
        return value

    @model_validator(mode="after")
    def _mode(self) -> "GlueJobStep":
        if self.start and self.match_arguments:
            raise ValueError("match_arguments finds a run the pipeline started: it needs start: false")
        if not self.start and self.arguments:
            raise ValueError("arguments are for a run the step starts (start: true); to find the pipeline's run "
                             "by its arguments use match_arguments")
        return self

    def secrets(self) -> list[str]:
        return secret_argument_values({**self.arguments, **self.match_arguments}, self.secret_arguments)


def start_job_run(glue: GlueClient, job: str, arguments: dict[str, str]) -> str:
    """StartJobRun; the run id."""
    try:
        response = glue.start_job_run(JobName=job, Arguments=arguments)
    except AWS_ERRORS as exc:
        raise aws_error("Glue StartJobRun", f"job {job}", exc) from None
    return str(response["JobRunId"])


def get_job_run(glue: GlueClient, job: str, run_id: str) -> dict[str, Any]:
    """GetJobRun's ``JobRun``."""
    try:
        return dict(glue.get_job_run(JobName=job, RunId=run_id)["JobRun"])
    except AWS_ERRORS as exc:
        raise aws_error("Glue GetJobRun", f"job {job} run {run_id}", exc) from None


def pipeline_job_run(glue: GlueClient, job: str, since: float, match: dict[str, str]) -> dict[str, Any] | None:
    """The newest run of ``job`` started at or after ``since`` whose arguments hold ``match``, or None."""
    try:
        runs = glue.get_job_runs(JobName=job, MaxResults=RUNS_PAGE)["JobRuns"]
    except AWS_ERRORS as exc:
        raise aws_error("Glue GetJobRuns", f"job {job}", exc) from None
    def matches(run: dict[str, Any]) -> bool:
        arguments: dict[str, Any] = dict(run.get("Arguments") or {})
        return all(arguments.get(k) == v for k, v in match.items())

    return newest_since([dict(r) for r in runs], lambda r: r.get("StartedOn"), since, matches)


def stop_job_run(glue: GlueClient, job: str, run_id: str) -> str:
    """BatchStopJobRun for one run; what became of it, as a phrase for the evidence."""
    try:
        response = glue.batch_stop_job_run(JobName=job, JobRunIds=[run_id])
    except AWS_ERRORS as exc:
        return f"could not stop it: {aws_error('Glue BatchStopJobRun', f'job {job} run {run_id}', exc).message}"
    errors = response.get("Errors") or []
    if errors:
        detail: dict[str, Any] = dict(errors[0].get("ErrorDetail") or {})
        return f"could not stop it: BatchStopJobRun: {detail.get('ErrorCode', '?')}: {detail.get('ErrorMessage', '')}"
    return "stopped it with BatchStopJobRun"


def job_state(run: dict[str, Any]) -> str:
    return str(run.get("JobRunState") or NO_RUN_YET)


def dpu_seconds(run: dict[str, Any]) -> tuple[float | None, bool]:
    """The run's DPU seconds (Glue reports them for auto-scaling and Flex runs) or, else, the estimate execution
    time x capacity (workers x DPUs per worker, or MaxCapacity); and whether it is that estimate."""
    if run.get("DPUSeconds") is not None:
        return float(run["DPUSeconds"]), False
    per_worker = WORKER_DPUS.get(str(run.get("WorkerType")))
    capacity = run["NumberOfWorkers"] * per_worker if per_worker and run.get("NumberOfWorkers") else \
        run.get("MaxCapacity")
    if run.get("ExecutionTime") is not None and capacity:
        return float(run["ExecutionTime"]) * float(capacity), True
    return None, False


def glue_job_footprint(step: GlueJobStep, arns: Arns) -> Footprint:
    """Start a run and follow it (or find the pipeline's among the job's runs); stop it on timeout."""
    job = arns.glue_job(step.job)
    fp = Footprint()
    if step.start:
        fp.change("Glue job run", step.job, "start a run (not undone)").need(job, "glue:StartJobRun", "glue:GetJobRun")
    else:
        fp.read("Glue job runs", step.job, "wait for the pipeline's run").need(job, "glue:GetJobRuns",
                                                                                 "glue:GetJobRun")
    if step.stop_on_timeout:
        fp.need(job, "glue:BatchStopJobRun")
    return fp


@step_kind(GlueJobStep, footprint=glue_job_footprint)
def run_glue_job(step: GlueJobStep, ctx: StepContext) -> StepOutcome:
    """Start (or find) the run, wait for a final state (stopping it on timeout), check it, record the evidence."""
    glue: GlueClient = ctx.clients.client("glue")
    declared = tuple(step.secret_arguments)
    found: dict[str, Any] = {}
    run_id: str | None = None
    if step.start:
        run_id = start_job_run(glue, step.job, step.arguments)
        ctx.logger.info("Started Glue job %s run %s", step.job, run_id)
    else:
        ctx.logger.info("Waiting for the run of Glue job %s that the pipeline starts", step.job)

    def describe() -> dict[str, Any]:
        nonlocal run_id
        if run_id is None:
            run = pipeline_job_run(glue, step.job, ctx.started_at, step.match_arguments)
            if run is None:
                return {}
            run_id = str(run["Id"])
            ctx.logger.info("Found Glue job %s run %s, started %s", step.job, run_id, when(run.get("StartedOn")))
        found.update(get_job_run(glue, step.job, run_id))
        return dict(found)

    def stop() -> str:
        return stop_job_run(glue, step.job, run_id) if run_id else "there was no run to stop"

    what = f"Glue job {step.job} run {run_id}" if run_id else f"a run of Glue job {step.job}"
    history = StateHistory(ctx.clock)
    try:
        watched = watch_run(describe, job_state, lambda r: job_state(r) in JOB_FINAL_STATES, step.wait, what=what,
                        stop=stop, stop_on_timeout=step.stop_on_timeout, started_here=step.start,
                        logger=ctx.logger, clock=ctx.clock, history=history)
    except StepError as exc:
        ctx.secrets.add(*secret_argument_values(found.get("Arguments") or {}, declared))
        if run_id and not step.start:
            exc = exc.with_message(exc.message.replace(f"a run of Glue job {step.job}",
                                                       f"Glue job {step.job} run {run_id}"))
        found_details = _job_details(step, found, history, ctx)
        exc.markdown = _job_markdown(step, found_details, history, None)
        exc.details = {**exc.details, **found_details}
        raise
    run = watched.value
    ctx.secrets.add(*secret_argument_values(run.get("Arguments") or {}, declared))
    details = _job_details(step, run, history, ctx)
    state = job_state(run)
    problem = None
    if state != step.expect_state:
        reason = truncate(str(run.get("ErrorMessage") or "Glue gave no error message"), MAX_MESSAGE_CHARS)
        problem = redact(f"Glue job {step.job} run {run_id} ended {state} (expected {step.expect_state}): {reason}",
                         ctx.secrets)
    markdown = _job_markdown(step, details, history, problem)
    checks = [CheckRecord.of("final state", problem is None, step.expect_state, problem or state)]
    if problem:
        raise CheckFailed(problem, details={**details, "problem": problem}, markdown=markdown, checks=checks)
    return StepOutcome(
        summary=f"Glue job {step.job} run {run_id} {state}{took(details['duration_s'])}",
        details=details, checks=checks,
        markdown=markdown,
        links=console_link(ctx, "glue", "gluestudio/home?region={region}#/job/"
                           + literal(f"{step.job}/run/{run_id}"), f"Glue job run {run_id}"),
    )


def _job_details(step: GlueJobStep, run: dict[str, Any], history: StateHistory, ctx: StepContext) -> dict[str, Any]:
    dpu, estimated = dpu_seconds(run)
    return {
        "job": step.job,
        "run_id": run.get("Id"),
        "started_by": "this step" if step.start else "the pipeline",
        "state": job_state(run),
        "expected_state": step.expect_state,
        "error_message": redact(truncate(str(run["ErrorMessage"]), MAX_MESSAGE_CHARS), ctx.secrets)
        if run.get("ErrorMessage") else None,
        "started_on": when(run.get("StartedOn")),
        "completed_on": when(run.get("CompletedOn")),
        "duration_s": duration_s(run.get("StartedOn"), run.get("CompletedOn")) or run.get("ExecutionTime"),
        "execution_time_s": run.get("ExecutionTime"),
        "dpu_seconds": dpu,
        "dpu_seconds_estimated": estimated,
        "attempt": run.get("Attempt"),
        "arguments": masked_arguments(run.get("Arguments") or step.arguments, step.secret_arguments),
        "states_observed": history.to_list(),
    }


def _job_markdown(step: GlueJobStep, d: dict[str, Any], history: StateHistory, problem: str | None) -> str:
    dpu = "–" if d["dpu_seconds"] is None else f"{d['dpu_seconds']:g}" + (
        " (execution time × capacity)" if d["dpu_seconds_estimated"] else "")
    rows: list[tuple[str, Any]] = [
        ("Job", md.code(step.job)),
        ("Run id", md.code(d["run_id"] or "–")),
        ("Started by", d["started_by"]),
        ("State", f"{d['state']} (expected {step.expect_state})"),
        ("States observed", history.markdown()),
        ("Started / completed", f"{d['started_on']} / {d['completed_on']}"),
        ("Duration", "–" if d["duration_s"] is None else format_duration(float(d["duration_s"]))),
        ("DPU seconds", dpu),
    ]
    if d["error_message"]:
        rows.append(("Error message", d["error_message"]))
    parts: list[str] = [_facts_table(rows)]
    if d["arguments"]:
        parts.append("**Arguments**\n\n" + md.table(["Name", "Value"], [[md.code(k), md.code(v)]
                                                                         for k, v in d["arguments"].items()]))
    if problem:
        parts.append("**Expectation not met**\n\n" + md.bullets([problem]))
    return "\n\n".join(parts)


# ============================================================================================== Glue crawler


class TableExpect(SpecModel):
    """A table the crawl must have left in the database."""

    name: str = Field(..., min_length=1, max_length=255, description="The table's name.")
    columns: list[str] = Field(
        default_factory=list,
        description="Columns the table must have (others may exist): `name`, or `name:type` to check the type too "
        "(names and types compared case-insensitively, as the catalog lowercases them).")
    partition_keys: list[str] | None = Field(
        None, description="The table's partition keys, exactly and in order: `name` or `name:type`.")

    @field_validator("columns", "partition_keys")
    @classmethod
    def _column_specs(cls, value: list[str] | None) -> list[str] | None:
        for spec in value or []:
            if not spec.split(":", 1)[0].strip():
                raise ValueError(f"column {spec!r} needs a name (name or name:type)")
        return value

    def check(self, database: str, found: dict[str, Any], problems: list[str]) -> CheckRecord:
        """This table's check, typed: what is expected of it, and what is wrong with it (or what the catalog holds)."""
        wanted = ", ".join(["exists", *(["columns " + ", ".join(self.columns)] if self.columns else []),
                            *([f"partition keys {self.partition_keys}"] if self.partition_keys is not None else [])])
        got = "; ".join(problems) or f"columns {', '.join(found['columns'])}, partition keys {found['partition_keys']}"
        return CheckRecord.of("table", not problems, wanted, got, where=f"{database}.{self.name}")


def _split_column(spec: str) -> tuple[str, str | None]:
    name, _, typ = spec.partition(":")
    return name.strip().lower(), (re.sub(r"\s+", "", typ).lower() or None)


class GlueCrawlerStep(StepBase):
    """Start a Glue crawler (or wait for the crawl the pipeline started), check how it ended and the tables."""

    kind: Literal["glue_crawler"] = "glue_crawler"
    crawler: str = Field(..., pattern=_GLUE_NAME, description="The crawler's name.")
    start: bool = Field(
        True, description="Start a crawl (true), or wait for the pipeline's (false): the one running when the step "
        "looks, else one that starts since the case began.")
    wait: RunWait = Field(default_factory=RunWait, description="How long to wait for the crawl to end and how "
                          "often to look.")
    stop_on_timeout: bool = Field(True, description="Stop the crawler (StopCrawler) when the wait times out.")
    expect_status: Literal["SUCCEEDED", "FAILED", "CANCELLED"] = Field(
        "SUCCEEDED", description="The status the crawl must end with.")
    database: str | None = Field(None, min_length=1, description="The Glue database the tables are in.")
    tables: list[TableExpect] = Field(default_factory=list, description="Tables that must exist after the crawl.")

    @model_validator(mode="after")
    def _database(self) -> "GlueCrawlerStep":
        if self.tables and not self.database:
            raise ValueError("tables needs database (the Glue database they are in)")
        return self


def get_crawler(glue: GlueClient, name: str) -> dict[str, Any]:
    try:
        return dict(glue.get_crawler(Name=name)["Crawler"])
    except AWS_ERRORS as exc:
        raise aws_error("Glue GetCrawler", f"crawler {name}", exc) from None


def crawl_status(crawler: dict[str, Any]) -> str | None:
    """The last crawl's status; moto says COMPLETED where Glue's LastCrawlInfo says SUCCEEDED."""
    status = (crawler.get("LastCrawl") or {}).get("Status")
    return {"COMPLETED": "SUCCEEDED"}.get(status, status) if status else None


class CrawlHistory:
    """The crawler's newest crawl from ListCrawls (its id, DPU hours, end, per-crawl state), for the evidence.

    Optional: without the ``glue:ListCrawls`` permission (or where it is not offered) the step logs so once
    and does without; GetCrawler's LastCrawl decides the outcome either way.
    """

    def __init__(self, glue: GlueClient, name: str, logger: Any) -> None:
        self.glue, self.name, self.logger = glue, name, logger
        self.latest: dict[str, Any] | None = None
        self.available = True

    def look(self) -> None:
        if not self.available:
            return
        try:
            crawls = self.glue.list_crawls(CrawlerName=self.name, MaxResults=100).get("Crawls", [])
        except AWS_ERRORS as exc:
            self.available = False
            self.logger.info("Not reading the crawl history (%s)", aws_error("Glue ListCrawls", f"crawler {self.name}",
                                                                              exc).message)
            return
        dated = [(when_, i, dict(c)) for i, c in enumerate(crawls) if (when_ := as_utc(c.get("StartTime")))]
        self.latest = max(dated, key=lambda d: (d[0], d[1]))[2] if dated else self.latest


def stop_crawler(glue: GlueClient, name: str) -> str:
    try:
        glue.stop_crawler(Name=name)
    except AWS_ERRORS as exc:
        return f"could not stop it: {aws_error('Glue StopCrawler', f'crawler {name}', exc).message}"
    return "stopped it with StopCrawler"


def table_problems(glue: GlueClient, database: str, expected: TableExpect) -> tuple[list[str], dict[str, Any]]:
    """What is wrong with one table (missing, columns, partition keys), and what was found."""
    where = f"table {database}.{expected.name}"
    try:
        table = glue.get_table(DatabaseName=database, Name=expected.name)["Table"]
    except AWS_ERRORS as exc:
        if isinstance(exc, ClientError) and error_code(exc) == "EntityNotFoundException":
            return [f"{where} does not exist"], {"table": expected.name, "exists": False}
        raise aws_error("Glue GetTable", where, exc) from None
    columns = {c["Name"].lower(): re.sub(r"\s+", "", c.get("Type", "")).lower()
               for c in table.get("StorageDescriptor", {}).get("Columns", [])}
    keys = [(k["Name"].lower(), re.sub(r"\s+", "", k.get("Type", "")).lower()) for k in table.get("PartitionKeys", [])]
    problems: list[str] = []
    for spec in expected.columns:
        name, typ = _split_column(spec)
        if name not in columns:
            problems.append(f"{where} has no column {name}")
        elif typ and columns[name] != typ:
            problems.append(f"{where} column {name} is {columns[name]}, not {typ}")
    if expected.partition_keys is not None:
        wanted = [_split_column(s) for s in expected.partition_keys]
        same = len(wanted) == len(keys) and all(n == kn and (t is None or t == kt)
                                                for (n, t), (kn, kt) in zip(wanted, keys))
        if not same:
            shown = ", ".join(f"{n}:{t}" for n, t in keys) or "none"
            problems.append(f"{where} partition keys are [{shown}], not {expected.partition_keys}")
    found = {"table": expected.name, "exists": True, "columns": [f"{n}:{t}" for n, t in columns.items()],
             "partition_keys": [f"{n}:{t}" for n, t in keys]}
    return problems, found


def glue_crawler_footprint(step: GlueCrawlerStep, arns: Arns) -> Footprint:
    """Start a crawl (or wait for the pipeline's), stop it on timeout, then read the tables it must have made."""
    crawler = arns.glue_crawler(step.crawler)
    fp = Footprint().need(crawler, "glue:GetCrawler", "glue:ListCrawls")  # the crawl's state, its history
    if step.start:
        fp.change("Glue crawl", step.crawler, "start a crawl (not undone)").need(crawler, "glue:StartCrawler")
    else:
        fp.read("Glue crawler", step.crawler, "wait for the pipeline's crawl")
    if step.stop_on_timeout:
        fp.need(crawler, "glue:StopCrawler")
    if step.tables and step.database:
        for table in step.tables:
            fp.read("Glue table", f"{step.database}.{table.name}", "exists, columns")
        for resource in (arns.glue_catalog(), arns.glue_database(step.database), arns.glue_tables(step.database)):
            fp.need(resource, "glue:GetTable")
    return fp


@step_kind(GlueCrawlerStep, footprint=glue_crawler_footprint)
def run_glue_crawler(step: GlueCrawlerStep, ctx: StepContext) -> StepOutcome:
    """Start (or await) the crawl, wait for the crawler to be READY again, check the crawl and the tables."""
    glue: GlueClient = ctx.clients.client("glue")
    before = get_crawler(glue, step.crawler)
    earlier_start = (before.get("LastCrawl") or {}).get("StartTime")
    seen_running = False
    if step.start:
        try:
            rid = request_id(glue.start_crawler(Name=step.crawler))
        except AWS_ERRORS as exc:
            raise aws_error("Glue StartCrawler", f"crawler {step.crawler}", exc) from None
        ctx.logger.info("Started Glue crawler %s (request id %s)", step.crawler, rid)
    else:
        ctx.logger.info("Waiting for the crawl of Glue crawler %s that the pipeline starts", step.crawler)

    crawls = CrawlHistory(glue, step.crawler, ctx.logger)

    def describe() -> dict[str, Any]:
        nonlocal seen_running
        crawls.look()  # first: moto (the local emulator) ends a crawl only when crawls are listed
        crawler = get_crawler(glue, step.crawler)
        seen_running = seen_running or crawler.get("State") in ("RUNNING", "STOPPING")
        return crawler

    def ours(crawler: dict[str, Any]) -> bool:
        """The crawl the step waits for: started after the step's StartCrawler, or the pipeline's."""
        started = (crawler.get("LastCrawl") or {}).get("StartTime")
        if step.start:
            return started is not None and started != earlier_start
        begun = as_utc(started)
        return seen_running or (begun is not None and begun.timestamp() >= ctx.started_at)

    def done(crawler: dict[str, Any]) -> bool:
        return crawler.get("State") == "READY" and ours(crawler) and crawl_status(crawler) is not None

    def state(crawler: dict[str, Any]) -> str:
        if crawler.get("State") == "READY" and not ours(crawler):
            return "READY (no crawl of this case yet)"
        return str(crawler.get("State") or "UNKNOWN")

    history = StateHistory(ctx.clock)
    what = f"Glue crawler {step.crawler}"
    try:
        watched = watch_run(describe, state, done, step.wait, what=what, stop=lambda: stop_crawler(glue, step.crawler),
                        stop_on_timeout=step.stop_on_timeout, started_here=step.start, logger=ctx.logger,
                        clock=ctx.clock, history=history)
    except StepError as exc:
        exc.markdown = _crawler_markdown(step, {}, history, [], [])
        raise
    crawler = watched.value
    last = crawler.get("LastCrawl") or {}
    status = crawl_status(crawler)
    problems: list[str] = []
    if status != step.expect_status:
        problems.append(f"Glue crawler {step.crawler}'s crawl ended {status} (expected {step.expect_status}): "
                        f"{truncate(str(last.get('ErrorMessage') or 'Glue gave no error message'), MAX_MESSAGE_CHARS)}")
    tables: list[dict[str, Any]] = []
    checks = [CheckRecord.of("crawl status", status == step.expect_status, step.expect_status, status)]
    if status == "SUCCEEDED" and step.database:
        for expected in step.tables:
            found_problems, found = table_problems(glue, step.database, expected)
            problems += found_problems
            tables.append({**found, "ok": not found_problems})
            checks.append(expected.check(step.database, found, found_problems))
    problems = [redact(p, ctx.secrets) for p in problems]
    crawl = crawls.latest if crawls.latest and crawls.latest.get("StartTime") == last.get("StartTime") else {}
    details = {
        "crawler": step.crawler,
        "crawl_id": crawl.get("CrawlId"),
        "dpu_hours": crawl.get("DPUHour"),
        "crawl_ended": when(crawl.get("EndTime")) if crawl.get("EndTime") else None,
        "started_by": "this step" if step.start else "the pipeline",
        "status": status,
        "expected_status": step.expect_status,
        "error_message": redact(truncate(str(last["ErrorMessage"]), MAX_MESSAGE_CHARS), ctx.secrets)
        if last.get("ErrorMessage") else None,
        "crawl_started": when(last.get("StartTime")),
        "duration_s": duration_s(crawl.get("StartTime"), crawl.get("EndTime")),
        "log_group": last.get("LogGroup"),
        "log_stream": last.get("LogStream"),
        "states_observed": history.to_list(),
        "database": step.database,
        "tables": tables,
    }
    markdown = _crawler_markdown(step, details, history, tables, problems)
    if problems:
        raise CheckFailed("; ".join(problems), details={**details, "problems": problems}, markdown=markdown,
                          checks=checks)
    checked = f", {len(tables)} table(s) as expected" if tables else ""
    return StepOutcome(
        summary=f"Glue crawler {step.crawler}: crawl {status}{checked}",
        details=details, checks=checks,
        markdown=markdown,
        links=console_link(ctx, "glue", "glue/home?region={region}#/v2/data-catalog/crawlers/view/"
                           + literal(step.crawler), f"Glue crawler {step.crawler}"),
    )


def _crawler_markdown(step: GlueCrawlerStep, details: dict[str, Any], history: StateHistory,
                      tables: list[dict[str, Any]], problems: list[str]) -> str:
    rows: list[tuple[str, Any]] = [
        ("Crawler", md.code(step.crawler)),
        ("Started by", "this step" if step.start else "the pipeline"),
        ("Crawl status", f"{details.get('status') or '–'} (expected {step.expect_status})"),
        ("States observed", history.markdown()),
        ("Crawl id", md.code(details.get("crawl_id") or "–")),
        ("Crawl started / ended", f"{details.get('crawl_started') or '–'} / {details.get('crawl_ended') or '–'}"),
        ("Duration", "–" if details.get("duration_s") is None else format_duration(details["duration_s"])),
        ("DPU hours", "–" if details.get("dpu_hours") is None else f"{details['dpu_hours']:g}"),
    ]
    if details.get("error_message"):
        rows.append(("Error message", details["error_message"]))
    if details.get("log_group"):
        rows.append(("Log", md.code(f"{details['log_group']} / {details.get('log_stream') or ''}")))
    parts: list[str] = [_facts_table(rows)]
    if tables:
        parts.append(f"**Tables in {md.text(step.database)}**\n\n" + md.table(
            ["Table", "Exists", "Columns", "Partition keys", "As expected"],
            [[md.code(t["table"]), "yes" if t["exists"] else "no", ", ".join(t.get("columns", [])),
              ", ".join(t.get("partition_keys", [])), "yes" if t["ok"] else "no"] for t in tables]))
    if problems:
        parts.append("**Expectations not met**\n\n" + md.bullets(problems))
    return "\n\n".join(parts)

