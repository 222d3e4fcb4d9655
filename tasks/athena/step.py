"""Step ``athena_query``: its model, and the runner that checks the SQL, runs it, reads the rows and checks them."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Callable, ClassVar, Literal

from pydantic import AfterValidator, Field, field_validator, model_validator

from tasks.athena.checks import AthenaExpect, CheckAccumulator, baseline_checks
from tasks.athena.client import AthenaWait, run_query
from tasks.athena.cost import ByteCount, ScanLimit, scanned_bytes, show_bytes
from tasks.athena.evidence import ResultFacts, query_outcome
from tasks.athena.reconcile import Reconciler, ReconcileReport
from tasks.athena.sql_guard import SqlCheck, check_literal, check_sql
from tasks.athena.values import Column, QueryResult, ResultDigest, RowTyper
from tasks.kit.errors import StepError, failed_checks
from tasks.kit.iam import Arns, Footprint
from tasks.kit.step import RESOURCE_NAME, StepBase, StepContext, StepOutcome, is_template, step_kind, template_aware
from tasks.s3.keys import S3_URI_KEY

__all__ = ["AthenaQueryStep", "ResultSink", "check_step_sql", "load_sql", "reconcile", "run_athena_query"]


def literal_unless_templated(value: str) -> str:
    """A parameter is one SQL literal (checked again once rendered, when it holds a template)."""
    return value if is_template(value) else check_literal(value)


class AthenaQueryStep(StepBase):
    """Run one Athena query (read-only unless allowed), wait for it, and check its rows."""

    template_files: ClassVar[frozenset[str]] = frozenset({"sql_file"})
    local_files: ClassVar[frozenset[str]] = frozenset({"expect.reconcile.file"})

    kind: Literal["athena_query"] = "athena_query"
    sql: str | None = Field(None, description="The SQL, templated with the case's variables. Give sql or sql_file.")
    sql_file: str | None = Field(
        None,
        description="A file holding the SQL, relative to the spec; its content is templated. Give sql or sql_file.",
    )
    parameters: list[Annotated[str, AfterValidator(literal_unless_templated)]] = Field(
        default_factory=list,
        description="Athena execution parameters, one per `?` in the SQL, in order. Each is a SQL literal: "
                    "`'2024-01-31'` (with quotes) for a string, `42` for a number, `DATE '2024-01-31'`, TRUE, "
                    "FALSE, NULL; nothing else (an expression or a statement is refused). Use these for values "
                    "rather than templating them into the SQL.",
    )
    database: str | None = Field(None, description="The database (Glue schema) unqualified table names refer to.")
    catalog: str = Field("AwsDataCatalog", description="The data catalog.")
    workgroup: str = Field("primary", description="The Athena workgroup to run in.")
    output_location: Annotated[str | None, template_aware(r"s3://[^/]+(/.*)?", "an S3 URI: s3://bucket/prefix/"),
                               S3_URI_KEY, RESOURCE_NAME] = Field(
        None,
        description="Where Athena writes the result (s3://bucket/prefix/); optional when the workgroup sets one.",
    )
    allow_write: bool = Field(
        False,
        description="Allow statements other than SELECT, WITH, VALUES, SHOW, DESCRIBE and EXPLAIN "
                    "(INSERT, CTAS, DDL, MSCK, ...). Off by default: a test should not change data by accident.",
    )
    wait: AthenaWait = Field(
        default_factory=AthenaWait,
        description="How long to wait for the query (it is stopped when this runs out) and how often to check.",
    )
    preview_rows: int = Field(20, ge=0, le=1000, description="How many rows to show in the evidence.")
    max_scanned_bytes: ByteCount | None = Field(
        None,
        description="The cost guard: the most bytes this query may scan (Athena bills by bytes scanned), as a number "
                    "or a size (`500 MB`, `10 GB`, `1 TiB`). A query whose progress shows more is stopped at once; "
                    "either way the step fails with the bytes scanned and the limit in its evidence. The case's "
                    "`aws.athena_max_scanned_bytes` limits all its queries together.",
    )
    expect: AthenaExpect = Field(default_factory=AthenaExpect, description="Checks on the result.")

    @model_validator(mode="after")
    def _one_source(self) -> "AthenaQueryStep":
        if (self.sql is None) == (self.sql_file is None):
            raise ValueError("give exactly one of sql and sql_file")
        if self.sql is not None and not self.sql.strip():
            raise ValueError("sql is empty")
        return self

    @field_validator("sql_file")
    @classmethod
    def _not_blank(cls, value: str | None) -> str | None:
        if value is not None and not value.strip():
            raise ValueError("sql_file is empty")
        return value

    def rendered_checks(self, spec_dir: Path, render: Callable[[str], str]) -> list[str]:
        """Refuse writes and multiple statements at validation time, before anything is sent to Athena."""
        try:
            check_step_sql(self, spec_dir, render)
        except StepError as exc:
            return [f"field {'sql_file' if self.sql_file else 'sql'!r}: {exc.message}"]
        return []


def load_sql(step: AthenaQueryStep, spec_dir: Path, render: Callable[[str], str]) -> str:
    """The SQL as it will run: inline (already templated by the engine), or the file's content rendered."""
    if step.sql is not None:
        return step.sql
    assert step.sql_file is not None
    path = Path(spec_dir) / step.sql_file
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise StepError(f"Cannot read sql_file {step.sql_file} ({path}): {exc.strerror or exc}") from None
    return render(text)


def check_step_sql(step: AthenaQueryStep, spec_dir: Path, render: Callable[[str], str]) -> tuple[str, SqlCheck]:
    """The step's SQL as it will run, and :func:`check_sql`'s verdict on it; for the runner and the validator."""
    sql = load_sql(step, spec_dir, render)
    return sql, check_sql(sql, allow_write=step.allow_write, parameters=step.parameters)


class ResultSink:
    """Everything the step checks of a result, fed row by row as it is read (Athena's texts): the digest of every
    row; the checks (:class:`CheckAccumulator`: count, first row, preview, ``rows``) and the reconciliation (its
    expected set). Rows are typed only where a check needs them: every row for ``rows`` and ``reconcile``, else
    only the first ``preview_rows`` (at least the first); no row is kept beyond what a check needs."""

    def __init__(self, step: AthenaQueryStep, ctx: StepContext, columns: list[Column]) -> None:
        self.typer = RowTyper(columns)
        self.checks = CheckAccumulator(step.expect, columns, step.preview_rows)
        self.digest = ResultDigest(columns)
        spec = step.expect.reconcile
        self.reconciler = (Reconciler(spec, columns, ctx.spec_dir, ctx.scratch_folder("reconcile"))
                           if spec is not None else None)
        self._type_all = self.reconciler is not None or self.checks.needs_every_row
        self._typed_first = max(1, step.preview_rows)

    def feed(self, rows: list[list[str | None]]) -> None:
        self.digest.feed(rows)
        if not self._type_all:
            wanted = max(0, self._typed_first - self.checks.count)
            for values in rows[:wanted]:
                self.checks.feed(self.typer(values))
            self.checks.count += max(0, len(rows) - wanted)  # counted only: no check needs these rows' values
            return
        for values in rows:
            row = self.typer(values)
            self.checks.feed(row)
            if self.reconciler is not None:
                self.reconciler.feed(row)

    def close(self) -> None:
        if self.reconciler is not None:
            self.reconciler.close()


def athena_query_footprint(step: AthenaQueryStep, arns: Arns) -> Footprint:
    """Start the query in its workgroup, wait, read the result file (or pages); Athena reads the Glue catalog and
    writes the result to the output location with the caller's permissions."""
    workgroup = arns.athena_workgroup(step.workgroup)
    fp = Footprint().read("Athena workgroup", step.workgroup, ("query" if not step.allow_write else "statement")
                          + (f" in database {step.database}" if step.database else ""))
    fp.need(workgroup, "athena:StartQueryExecution", "athena:GetQueryExecution", "athena:GetQueryResults",
            "athena:StopQueryExecution", "athena:GetWorkGroup")  # GetWorkGroup: the preflight reads its own limit
    cap = f"at most {show_bytes(step.max_scanned_bytes)} per query (max_scanned_bytes); " \
        if step.max_scanned_bytes else ""
    fp.notes.append(f"athena_query: workgroup {step.workgroup}: {cap}its own limit on bytes scanned per query was not "
                    "looked up (the plan makes no AWS call); `--preflight` reads it (athena:GetWorkGroup)")
    if step.allow_write:
        fp.change("Athena statement", step.workgroup, "may write tables or data (allow_write; not undone)")
    database = step.database or "*"
    for resource in (arns.glue_catalog(), arns.glue_database(database), arns.glue_tables(database)):
        fp.need(resource, "glue:GetDatabase", "glue:GetTable", "glue:GetPartitions")
    if step.output_location:
        bucket, _, prefix = step.output_location.removeprefix("s3://").partition("/")
        fp.change("S3 prefix", step.output_location, "Athena writes the query result (not undone)")
        fp.need(arns.s3_bucket(bucket), "s3:GetBucketLocation", "s3:ListBucket", "s3:ListBucketMultipartUploads")
        fp.need(arns.s3_objects(bucket, prefix), "s3:GetObject", "s3:PutObject", "s3:AbortMultipartUpload",
                "s3:ListMultipartUploadParts")
    else:
        fp.notes.append(f"athena_query: the result goes to workgroup {step.workgroup}'s output location, which the "
                        "case does not name: grant s3:GetObject and s3:PutObject there")
    fp.notes.append("athena_query: Athena reads the tables' data with the caller's permissions: grant s3:GetObject "
                    "and s3:ListBucket on their data locations (the case does not name them)")
    return fp


@step_kind(AthenaQueryStep, footprint=athena_query_footprint)
def run_athena_query(step: AthenaQueryStep, ctx: StepContext) -> StepOutcome:
    """Check the SQL (nothing is sent if it writes without allow_write), run it, wait, read and check the rows as
    they stream in."""
    sql, found = check_step_sql(step, ctx.spec_dir, ctx.render)
    ctx.logger.info("Running %s statement on Athena (workgroup %s, catalog %s, database %s)",
                    found.kind, step.workgroup, step.catalog, step.database or "-")
    limit = ScanLimit.of(step.max_scanned_bytes, ctx.scanned)  # nothing is started when the case's total is used up
    athena = ctx.clients.client("athena")
    run = run_query(
        athena,
        ctx.clients.client("s3"),
        sql,
        database=step.database,
        catalog=step.catalog,
        workgroup=step.workgroup,
        output_location=step.output_location,
        parameters=step.parameters,
        wait=step.wait,
        logger=ctx.logger,
        clock=ctx.clock,
        make_sink=lambda columns: ResultSink(step, ctx, columns),
        limit=limit,
    )
    sink: ResultSink = run.sink
    against_past, baselines = baseline_checks(step.expect, sink.checks, ctx.label, ctx.history)
    checks = sink.checks.results() + against_past + limit.charge(scanned_bytes(run.execution))
    reconciled = None
    if sink.reconciler is not None:
        reconciled = sink.reconciler.finish()
        checks.append(reconciled.check())
        checks[-1].severity = step.expect.severity
        ctx.logger.info("Reconciled %d result rows with %d expected rows: %s", reconciled.actual,
                        reconciled.expected, reconciled.check().note)
    streamed = ResultFacts(sink.checks.count, sink.checks.preview, sink.digest.hexdigest())
    outcome = query_outcome(sql, step, run, checks, athena.meta.region_name, str(athena.meta.endpoint_url),
                            reconciled, streamed)
    outcome.details.update(limit.facts())
    if baselines:  # each value, its baseline and the runs it came from; later runs read the value from here
        outcome.details["baselines"] = baselines
    failure = failed_checks([(c.severity, c.text()) for c in checks if not c.passed], len(checks),
                            details=outcome.details, markdown=outcome.markdown, hashed_items=outcome.hashed_items,
                            files=outcome.files, checks=outcome.checks)
    if failure is not None:
        raise failure
    ctx.logger.info("Athena query %s: %s", run.query_id, outcome.summary)
    return outcome


def reconcile(step: AthenaQueryStep, ctx: StepContext, result: QueryResult) -> ReconcileReport | None:
    """``expect.reconcile`` on rows in memory: the result's rows against the expected data; the diff files go in
    the step's scratch folder (for the evidence pack) when the run has one."""
    spec = step.expect.reconcile
    if spec is None:
        return None
    reconciler = Reconciler(spec, result.columns, ctx.spec_dir, ctx.scratch_folder("reconcile"))
    try:
        for row in result.rows:
            reconciler.feed(row)
    except BaseException:
        reconciler.close()
        raise
    return reconciler.finish()
