"""The lasting record of a run as typed models: a case pack's report.json (:class:`CaseReport`, its steps
:class:`StepReport`) and a suite pack's (:class:`SuiteReport`), and the parts a case's result shares with them
(:class:`Audit`, :class:`Notice`, :class:`Locks`, :class:`PackRef`).

report.json is written from these models and read back into them (:func:`read_case_report`,
:func:`read_suite_report`), so the writer and its readers (a suite collecting a case a worker ran, ``--rerun-failed``)
cannot drift apart by a key; flows/evidence/pack/report.schema.json and suite-report.schema.json beside it are
generated from them (``python -m flows.spec.reference``; a test fails when they are stale).

Within a ``schema_version`` fields are only ever added, each with a default, so a pack written by an older version
still reads. No Prefect, no boto3; of this project only the vocabulary of statuses, the typed checks and a suite's
trends.
"""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path
from typing import Annotated, Any, Final, Literal

from pydantic import BaseModel, ConfigDict, Field, PlainSerializer

from flows.suite.trends import SuiteTrends
from tasks.kit.checks import CheckRecord
from tasks.kit.status import CaseStatus, CaseVerdict, StepStatus

REPORT_SCHEMA: Final = "pipeline-test/evidence-report"
SUITE_REPORT_SCHEMA: Final = "pipeline-test/suite-report"
#: the version of report.json's (and the manifest's) shape: raised only by a change that is not an addition
SCHEMA_VERSION: Final = 1
#: the pack's machine-readable record, in a case's pack and in a suite's
REPORT_JSON = "report.json"
#: the reports' JSON Schemas (generated from the models below by ``python -m flows.spec.reference``)
SCHEMA_FILE = Path(__file__).parent / "pack" / "report.schema.json"
SUITE_SCHEMA_FILE = Path(__file__).parent / "pack" / "suite-report.schema.json"



def iso_utc(moment: datetime | None) -> str | None:
    """A moment as ISO 8601 in UTC to the second, ``2026-03-14T09:26:53Z`` (naive ones are taken as UTC)."""
    if moment is None:
        return None
    utc = moment.replace(tzinfo=timezone.utc) if moment.tzinfo is None else moment.astimezone(timezone.utc)
    return utc.isoformat(timespec="seconds").replace("+00:00", "Z")


#: a moment of the record: written in UTC to the second (``2026-03-14T09:26:53Z``)
UtcTime = Annotated[datetime, PlainSerializer(iso_utc, return_type=str, when_used="json")]
Sha256 = Annotated[str, Field(pattern="^[0-9a-f]{64}$")]


class Record(BaseModel):
    """A part of the record: its fields by name (an older pack's missing field takes its default)."""

    model_config = ConfigDict(populate_by_name=True, serialize_by_alias=True)

    def to_json(self) -> dict[str, Any]:
        """The JSON value as report.json holds it."""
        return self.model_dump(mode="json", by_alias=True, fallback=str)


# ------------------------------------------------------------------------------ parts a case's result has too
class AwsIdentity(Record):
    """The AWS identity that ran the case (STS GetCallerIdentity)."""

    account_id: str | None = Field(None, description="The AWS account (STS GetCallerIdentity).")
    caller_arn: str | None = Field(None, description="The identity that ran the case (STS GetCallerIdentity).")
    region: str | None = None
    error_code: str | None = Field(None, description="AWS's error code when STS refused (or the exception's name "
                                   "when it could not be reached); then the two above are null.")


class Audit(Record):
    """Who ran the case, where and with what. Any field may be null when it could not be learned; collecting it
    never fails a case."""

    aws: AwsIdentity = Field(default_factory=AwsIdentity)
    deployment: str | None = Field(None, description="The Prefect deployment the run came from, if any.")
    work_pool: str | None = Field(None, description="The deployment run's work pool, if any.")
    host: str | None = None
    os_user: str | None = None
    os: str | None = None
    project_version: str | None = Field(None, description="pipeline-test's installed version.")
    git_commit: str | None = Field(None, description="git describe of the checkout (-dirty when changed), when run "
                                   "from one.")
    python_version: str | None = None
    prefect_version: str | None = None
    boto3_version: str | None = None


class Notice(Record):
    """The Slack notice of a run: sent or not, through what, and why not."""

    sent: bool
    target: str | None = Field(None, description="The block (and channel) it went through.")
    reason: str | None = Field(None, description="Why it was not sent (not asked for, or what Slack or the block "
                               "said; never the webhook URL or token).")


class Locks(Record):
    """The resources a run locked (SSM parameters, S3 prefixes), their concurrency limits, and how long it waited."""

    resources: list[str] = Field(default_factory=list)
    limits: list[str] = Field(default_factory=list, description="The Prefect global concurrency limits held.")
    waited_seconds: float = Field(0.0, ge=0, description="How long the run waited for them (part of its duration).")


class PackRef(Record):
    """Where a run's evidence pack is: its folder (and manifest's SHA-256 once written), and where it was uploaded.
    Not part of report.json (a pack cannot name its own manifest's hash); the result, the case report and the
    notice carry it."""

    folder: str
    manifest_sha256: str | None = None
    s3_uri: str | None = None
    url: str | None = None


# --------------------------------------------------------------------------------------------- report.json
class Generator(Record):
    name: Literal["pipeline-test"] = "pipeline-test"
    version: str = Field(description="The pipeline-test version that wrote the pack.")


class CaseName(Record):
    name: str
    slug: str = Field(description="The name as lowercase letters, digits and dashes (folder and artifact keys).")
    description: str = ""


class SpecRecord(Record):
    """The test case as run."""

    source: str | None = Field(description="The spec file's path as given to the run; null for a spec given as a "
                               "model.")
    file: str | None = Field(description="The copy of the spec file in the pack (spec.yaml or spec.json), if any.")
    sha256: Sha256 | None = Field(description="SHA-256 of the spec file as run (its UTF-8 text, line ends as in the "
                                  "file): the hash of the copy in the pack. When a secret was masked in the copy "
                                  "(redacted), the hash of the masked copy.")
    case_sha256: Sha256 | None = Field(description="SHA-256 of validated (below) as canonical JSON: UTF-8, sorted "
                                       "keys, separators ',' and ':', non-ASCII as is. A reviewer can recompute it "
                                       "from this file.")
    redacted: bool = Field(description="True when a known secret was masked in the pack's copy of the spec (then "
                           "sha256 is of the masked copy, not of the original file).")
    validated: dict[str, Any] | None = Field(description="The validated case (after --var overrides; templates not "
                                             "rendered; only the fields the spec set; known secrets masked), as JSON.")


class RunRecord(Record):
    flow_run_id: str | None
    ui_url: str | None = Field(description="The flow run's page in the Prefect UI, when one is configured.")
    started_at: UtcTime
    ended_at: UtcTime
    duration_s: float = Field(ge=0)
    locks: Locks | None = Field(None, description="The resources the run locked; null when it changed nothing.")
    aws: dict[str, Any] = Field(default_factory=dict, description="The case's AWS settings (region, profile or "
                                "credentials block names; never credentials).")


class Counts(Record):
    """How many steps ended how. A reader ignores a status it does not know (a later status is an addition)."""

    model_config = ConfigDict(extra="allow")

    total: int = Field(ge=0)
    passed: int = Field(0, ge=0)
    warned: int = Field(0, ge=0, description="Steps that passed with warnings (severity: warn).")
    failed: int = Field(0, ge=0)
    error: int = Field(0, ge=0)
    skipped: int = Field(0, ge=0)


class FirstFailure(Record):
    number: str
    label: str
    status: Literal["failed", "error"]
    error: str | None
    error_code: str | None = None


class EvidenceLink(Record):
    """A link of a step's evidence."""

    text: str
    url: str


class StepReport(Record):
    """One step as the record keeps it: what it was, how it ended, what it did and proved."""

    number: str = Field(description="1, 2, ... ; 3.1 for a step of parallel group 3; 'end' for the clean-up.")
    label: str = Field(description="The step's name (or kind-number); the task run's name in the UI.")
    kind: str
    group: str | None = None
    description: str | None = None
    status: StepStatus
    started_at: datetime | None = None
    duration_s: float = Field(0.0, ge=0)
    summary: str = ""
    error: str | None = None
    error_code: str | None = None
    warnings: list[str] = Field(default_factory=list, description="The checks that did not hold but only warn "
                                "(severity: warn), one line each (status warned).")
    details: dict[str, Any] = Field(default_factory=dict, description="What the step did and saw; kind-specific "
                                    "(see the step kinds).")
    request_ids: list[str] = Field(default_factory=list, description="AWS request ids of the step's calls.")
    #: the step's readable evidence (markdown: what it did, watched and proved, its checks), as its UI artifact
    #: shows it: the pack's report.md renders it from here, with the same code, so the pack holds what the UI does
    evidence: str = Field("", description="The step's readable evidence (markdown), as its UI artifact shows it: "
                          "what it did, watched and proved, its checks (absent in packs before 0.1).")
    #: the step's links (AWS console, or the emulator's URL), as in its UI artifact
    links: list[EvidenceLink] = Field(default_factory=list, description="The step's links (AWS console, or the "
                                      "emulator's URL), as in its UI artifact.")
    #: what the step checked, each with expected, actual and verdict (typed, from its outcome or its failure):
    #: report.json's ``checks``, and report.html's checks table
    checks: list[CheckRecord] = Field(default_factory=list, description="What the step checked: each check's name, "
                                      "where, expected, actual and verdict (absent in older packs).")


class HashedItemRecord(Record):
    """An uploaded input file or a query result whose SHA-256 the run recorded."""

    kind: Literal["input", "query_result"]
    step: str = Field(description="The number of the step that recorded it.")
    label: str
    location: str = Field(description="s3://bucket/key of the object, or the query's output location.")
    sha256: Sha256
    size: int | None = Field(None, ge=0)
    local_path: str | None = Field(None, description="The local file that was uploaded.")
    query_id: str | None = None
    rows: int | None = Field(None, ge=0)


class CaseReport(Record):
    """What one run of a test case did and showed: a pack's report.json (manifest.json beside it holds its
    SHA-256). A reader checks schema and schema_version first: fields are only ever added within a version."""

    schema_: Literal["pipeline-test/evidence-report"] = Field(REPORT_SCHEMA, alias="schema",
                                                              description="What this document is.")
    schema_version: Literal[1] = Field(SCHEMA_VERSION, description="Version of this schema; a change that is not "
                                       "an addition raises it.")
    generated_at: UtcTime = Field(description="When the pack was written (UTC).")
    generator: Generator
    case: CaseName
    spec: SpecRecord
    run: RunRecord
    audit: Audit | None = Field(None, description="Who ran the case, where and with what (absent in older packs).")
    notice: Notice | None = Field(None, description="The Slack notice of this run (absent in older packs); null "
                                  "when the case asks for none.")
    status: CaseStatus = Field(description="passed only when every step passed (a warned step passed).")
    verdict: str = Field("", description="The case's verdict as people read it: PASSED, PASSED with 2 warnings, "
                         "FAILED (absent in older packs).")
    warnings: int = Field(0, ge=0, description="How many checks warned (severity: warn).")
    counts: Counts
    first_failure: FirstFailure | None
    variables: dict[str, Any] = Field(default_factory=dict, description="The run's variable values (run_date and "
                                      "the case's variables).")
    steps: list[StepReport] = Field(description="Every step in run order (clean-up last, numbered 'end').")
    inputs: list[HashedItemRecord] = Field(default_factory=list, description="Uploaded input files and their "
                                           "SHA-256.")
    query_results: list[HashedItemRecord] = Field(default_factory=list, description="Query results whose SHA-256 a "
                                                  "step recorded.")


# -------------------------------------------------------------------------------------- a suite's report.json
class RerunOf(Record):
    """The suite pack a re-run (``--rerun-failed``) re-runs the failed cases of: where it is, its manifest's SHA-256
    (verified before the re-run), its suite's flow run and the cases re-run."""

    pack: str
    manifest_sha256: str
    flow_run_id: str | None = None
    cases: list[str] = Field(default_factory=list)


class SuiteCounts(Record):
    model_config = ConfigDict(extra="allow")

    passed: int = Field(0, ge=0)
    failed: int = Field(0, ge=0)
    not_run: int = Field(0, ge=0, alias="not run")


class SuiteCaseReport(Record):
    """One case of a suite as its report keeps it."""

    case: str
    path: str
    status: CaseVerdict
    started_at: UtcTime
    ended_at: UtcTime
    duration_s: float = Field(ge=0)
    flow_run_id: str | None = None
    ui_url: str | None = None
    failed_step: str | None = Field(None, description="The number of the step that failed first, if any.")
    reason: str | None = Field(None, description="The failed step and why, or why the case did not run.")
    pack: str | None = Field(None, description="The case's own pack, relative to the suite pack (none when it has "
                             "none).")
    warnings: int = Field(0, ge=0, description="How many checks of the case warned (severity: warn).")


class SuiteReport(Record):
    """What one run of a suite did: a suite pack's report.json (each case's own report.json is in its pack)."""

    schema_: Literal["pipeline-test/suite-report"] = Field(SUITE_REPORT_SCHEMA, alias="schema",
                                                           description="What this document is.")
    schema_version: Literal[1] = SCHEMA_VERSION
    generated_at: UtcTime
    suite: str
    status: CaseVerdict = Field(description="passed when every case passed; failed when one failed; else not run.")
    flow_run_id: str | None = None
    ui_url: str | None = None
    started_at: UtcTime
    ended_at: UtcTime
    duration_s: float = Field(ge=0)
    counts: SuiteCounts
    warnings: int = Field(0, ge=0, description="How many checks of every case warned (they never fail a case).")
    skipped_by_tags: list[str] = Field(default_factory=list, description="Cases the tags left out.")
    source: str | None = Field(None, description="The suite file or folder as given (what --rerun-failed runs "
                               "again).")
    rerun_of: RerunOf | None = None
    trends: SuiteTrends | None = Field(None, description="Every case's trend over the suite's last runs (absent in "
                                       "older packs).")
    cases: list[SuiteCaseReport]


# ----------------------------------------------------------------------------------------- reading and schema
def read_case_report(path: Path) -> CaseReport:
    """A case pack's report.json (``path``: the file or its pack's folder); OSError or ValueError (pydantic's
    ValidationError is one) when it cannot be read as one."""
    path = Path(path)
    return CaseReport.model_validate_json(_text(path / REPORT_JSON if path.is_dir() else path))


def read_suite_report(path: Path) -> SuiteReport:
    """A suite pack's report.json (``path``: the file or its pack's folder); OSError or ValueError when not one."""
    path = Path(path)
    return SuiteReport.model_validate_json(_text(path / REPORT_JSON if path.is_dir() else path))


def _text(path: Path) -> str:
    return path.read_text(encoding="utf-8")


def json_schema(model: type[Record], title: str) -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of a report, as written beside the code (flows/*.schema.json)."""
    schema = model.model_json_schema(by_alias=True)
    kind = "suite-report" if model is SuiteReport else "evidence-report"
    return {"$schema": "https://json-schema.org/draft/2020-12/schema",
            "$id": f"pipeline-test/{kind}/{SCHEMA_VERSION}", **schema, "title": title}


def case_report_schema() -> dict[str, Any]:
    return json_schema(CaseReport, "pipeline-test evidence report (report.json)")


def suite_report_schema() -> dict[str, Any]:
    return json_schema(SuiteReport, "pipeline-test suite report (a suite pack's report.json)")
