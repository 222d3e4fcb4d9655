"""Evidence that cannot lie or leak: whole runs under Prefect's test harness (moto in-process, Lambda scripted).

- the canary: SecureString values that reach a run by every route never appear in a log line, the CLI's output,
  an artifact, a pack file, the Slack notice or the Prefect database file;
- hostile values (HTML, markdown fences, fake links and headings, pipes, control characters, a 4-character
  SecureString) in every field cannot break a pack file's syntax nor forge the evidence's markdown.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import html.parser
import json
import logging
import re
import shutil
import stat
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any, Iterator

import pytest
import requests
import yaml
from markdown_it import MarkdownIt
from moto import mock_aws
from moto.awslambda_simple.models import LambdaSimpleBackend

import flows.evidence.notify
from flows.evidence.pack import verify as evidence_pack
from flows.evidence.pack.files import pack_files
from tasks.kit.secrets import MASK_KEY_ENV, mask

pytestmark = pytest.mark.usefixtures("prefect_harness")
REGION = "us-east-1"
MOTO_API = "http://motoapi.amazonaws.com/moto-api"

# one distinct canary per route, so a failure names the route that leaked
CANARIES = {
    "literal": "cnry-literal-4f1d2a",          # set_parameters value and expect_parameters (declared type)
    "undeclared": "cnry-undeclared-8b3c",      # expect_parameters without type, on a SecureString
    "before": "cnry-before-set-77e1",          # the value a SecureString had before the case set it
    "variable": "cnry-variable-c0ffee",        # a case variable's default, used as a SecureString value
    "var": "cnry-cli-var-5e5e5e",              # --var on the command line, used as a SecureString value
    "payload": "cnry-lambda-payload-9a9a",     # a Lambda payload's sensitive field (echoed by the function)
    "wrong": "cnry-wrong-expected-1212",       # an expected value compared with a SecureString (and failing)
    "sm_secret": "cnry-secretsmanager-d00d",   # {{ secret("canary/db", key="password") }}: a Lambda payload field
    "sm_whole": "cnry-whole-secret-abab",      # {{ secret("canary/token") }} in a case variable, then in SQL-free text
    "ssm_template": "cnry-ssm-template-3c3c",  # {{ ssm("/canary/source") }} copied into a *String* parameter
}


@pytest.fixture
def aws_lambda(monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, Any]]:
    """moto (Lambda without Docker) with function ``echo``; its replies are scripted through ``reply``."""
    reply: dict[str, Any] = {}

    def invoke(self: Any, function_name: str, qualifier: Any, body: Any, headers: Any, response_headers: Any) -> Any:
        self.get_function(function_name, qualifier)
        if reply.get("function_error"):
            response_headers["x-amz-function-error"] = reply["function_error"]
        response_headers["x-amz-log-result"] = base64.b64encode(reply.get("log", "").encode()).decode()
        return json.dumps(reply["payload"]).encode()

    monkeypatch.setattr(LambdaSimpleBackend, "invoke", invoke)
    with mock_aws(config={"lambda": {"use_docker": False}}):
        import boto3

        iam = boto3.client("iam", region_name=REGION)
        role = iam.create_role(RoleName="r", AssumeRolePolicyDocument="{}")["Role"]["Arn"]
        boto3.client("lambda", region_name=REGION).create_function(
            FunctionName="echo", Runtime="python3.12", Role=role, Handler="h.h", Code={"ZipFile": b"PK\x05\x06" +
                                                                                      b"\x00" * 18})
        yield reply


class _Collect(logging.Handler):
    """Every record as a formatter would print it (message, then the exception's text)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.setFormatter(logging.Formatter("%(levelname)s %(name)s %(message)s"))
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))

    @property
    def text(self) -> str:
        return "\n".join(self.lines)


@pytest.fixture
def run_logs(monkeypatch: pytest.MonkeyPatch) -> _Collect:
    """Every record that the run's loggers hand to their handlers (after their filters), debug included,
    whatever handlers Prefect configures meanwhile."""
    handler = _Collect()
    original = logging.Logger.callHandlers

    def call_handlers(self: logging.Logger, record: logging.LogRecord) -> None:
        if record.name.startswith(("prefect", "pipeline_test")):
            handler.handle(record)
        original(self, record)

    monkeypatch.setattr(logging.Logger, "callHandlers", call_handlers)
    for name in ("prefect", "pipeline_test"):
        monkeypatch.setattr(logging.getLogger(name), "level", logging.DEBUG)
    return handler


@pytest.fixture
def slack(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Slack notices as sent (the webhook itself is covered by test_notify)."""
    sent: list[str] = []

    def send(block_name: str, text: str, secrets: list[str]) -> str:
        sent.append(text)
        return f"webhook block '{block_name}'"

    monkeypatch.setattr(flows.evidence.notify, "_send_webhook", send)
    return sent


def harness_database_bytes() -> bytes:
    """Every byte of the test harness's SQLite database (with its WAL), after queued logs are sent (within 60 s:
    under pytest-xdist, Prefect's log worker was once seen never to finish draining, and the test hung)."""
    from prefect.logging.handlers import APILogWorker
    from prefect.settings import PREFECT_API_DATABASE_CONNECTION_URL

    _, pending = APILogWorker.drain_all(timeout=60)  # type: ignore[misc]
    assert not pending, "Prefect's log worker did not send its queued logs within 60 s"
    url = str(PREFECT_API_DATABASE_CONNECTION_URL.value())
    path = Path(url.split(":///", 1)[1])
    assert path.is_file(), url
    return b"".join(p.read_bytes() for p in path.parent.glob(path.name + "*"))


def artifacts_of(flow_run_id: str) -> list[Any]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    async def go() -> list[Any]:
        async with get_client() as client:
            return await client.read_artifacts(
                artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id])))

    return asyncio.run(go())


def pack_texts(folder: Path) -> dict[str, str]:
    return {name: (folder / name).read_text(encoding="utf-8") for name in pack_files(folder)}


# ------------------------------------------------------------------------------------------------- the canary
def canary_case(folder: Path) -> Path:
    c = CANARIES
    spec = {
        "case": "Canary routes",
        "aws": {"region": REGION, "allowed_parameter_prefixes": ["/canary/"]},
        "notify": {"slack_webhook_block": "team", "when": ["failure", "success"]},
        "variables": {"from_var": "overridden-on-the-command-line", "declared": c["variable"],
                      "whole": '{{ secret("canary/token") }}'},
        "steps": [
            {"kind": "set_parameters", "name": "set-secrets", "parameters": [
                {"name": "/canary/literal", "value": c["literal"], "type": "SecureString"},
                {"name": "/canary/var", "value": "{{ from_var }}", "type": "SecureString"},
                {"name": "/canary/variable", "value": "{{ declared }}", "type": "SecureString"},
                {"name": "/canary/existing", "value": "replaced-by-the-case", "type": "SecureString"},
                {"name": "/canary/copied", "value": '{{ ssm("/canary/source") }}'}]},
            {"kind": "expect_parameters", "name": "declared", "parameters": [
                {"name": "/canary/literal", "equals": c["literal"], "type": "SecureString"}]},
            {"kind": "expect_parameters", "name": "undeclared", "parameters": [
                {"name": "/canary/preset", "equals": c["undeclared"]}]},
            {"kind": "invoke_lambda", "name": "call", "function": "echo", "sensitive_fields": ["db.password"],
             "payload": {"db": {"password": c["payload"]}, "token": "{{ from_var }}",
                         "auth": '{{ secret("canary/db", key="password") }}', "whole": "token {{ whole }}"},
             "expect": {"json_subset": {"ok": True}}},
            {"kind": "expect_parameters", "name": "mismatch", "parameters": [
                {"name": "/canary/var", "equals": c["wrong"]}]},
        ],
    }
    path = folder / "canary.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def test_canary_never_leaks_by_any_route(aws_lambda, slack, tmp_path, run_logs, capsys, monkeypatch) -> None:
    import boto3

    from flows.cli import main

    monkeypatch.setenv(MASK_KEY_ENV, "a-key-the-user-keeps")
    ssm = boto3.client("ssm", region_name=REGION)
    ssm.put_parameter(Name="/canary/preset", Value=CANARIES["undeclared"], Type="SecureString")
    ssm.put_parameter(Name="/canary/existing", Value=CANARIES["before"], Type="SecureString")
    ssm.put_parameter(Name="/canary/source", Value=CANARIES["ssm_template"], Type="SecureString")
    secretsmanager = boto3.client("secretsmanager", region_name=REGION)
    secretsmanager.create_secret(Name="canary/db", SecretString=json.dumps({"user": "app",
                                                                           "password": CANARIES["sm_secret"]}))
    secretsmanager.create_secret(Name="canary/token", SecretString=CANARIES["sm_whole"])
    aws_lambda.update(payload={"ok": True, "echo": {"db": {"password": CANARIES["payload"]}},
                               "token": CANARIES["var"], "auth": CANARIES["sm_secret"],
                               "whole": f"token {CANARIES['sm_whole']}"},
                      log=f"connecting with {CANARIES['payload']} as {CANARIES['var']} ({CANARIES['sm_secret']}, "
                          f"{CANARIES['sm_whole']}, {CANARIES['ssm_template']})")
    # (botocore's own debug log of request bodies is the user's choice to switch on, outside the run's loggers)
    pack = tmp_path / "pack"
    code = main([str(canary_case(tmp_path)), "--var", f"from_var={CANARIES['var']}", "--json",
                 "--evidence-dir", str(pack)])
    out = capsys.readouterr()
    result = json.loads(out.out[out.out.index("{"):])
    assert code == 1, out.out + out.err
    assert [(s["label"], s["status"]) for s in result["steps"]] == [
        ("set-secrets", "passed"), ("declared", "passed"), ("undeclared", "passed"), ("call", "passed"),
        ("mismatch", "failed"), ("cleanup", "passed")]
    # the case really used the secrets, and put the one found before back
    assert ssm.get_parameter(Name="/canary/existing", WithDecryption=True)["Parameter"]["Value"] == CANARIES["before"]
    copied = result["steps"][0]["details"]["parameters"][4]  # the String parameter ssm() filled: masked in evidence
    assert copied["name"] == "/canary/copied" and copied["after"]["value"].startswith("****(hmac:")
    assert "/canary/var" in result["steps"][-2]["error"] and mask(CANARIES["wrong"]) in result["steps"][-2]["error"]

    files = pack_texts(pack)
    assert evidence_pack.verify(pack) == []
    assert stat.S_IMODE(pack.stat().st_mode) == 0o700
    assert all(stat.S_IMODE((pack / n).stat().st_mode) == 0o600 for n in files)
    assert yaml.safe_load(files["spec.yaml"])["steps"][2]["parameters"][0]["equals"].startswith("****")
    artifacts = "\n".join(f"{a.description}\n{json.dumps(a.data)}" for a in artifacts_of(result["flow_run_id"]))
    places = {"stdout": out.out, "stderr": out.err, "logs": run_logs.text, "artifacts": artifacts,
              "slack": "\n".join(slack), **files}
    assert slack and "Canary routes" in slack[0]
    assert "Invoking Lambda function echo" in run_logs.text and "Clean-up:" in run_logs.text
    database = harness_database_bytes()
    assert result["flow_run_id"].encode() in database and b"from_var" in database  # the right file, with the run
    for route, canary in CANARIES.items():
        unkeyed = hashlib.sha256(canary.encode()).hexdigest()[:6]
        for place, text in places.items():
            assert canary not in text, f"the {route} canary leaked into {place}"
            assert f"sha256:{unkeyed}" not in text, f"an unkeyed fingerprint of the {route} canary in {place}"
        assert canary.encode() not in database, f"the {route} canary is in the Prefect database"


# ---------------------------------------------------------------------------------------------- hostile values
HOSTILE = ('<script>alert(1)</script> "><img src=x onerror=alert(1)> ``` \n# All checks PASSED\n'
           '| forged | row |\n[Open report](javascript:alert(1)) \x07\x1b[31m\x00 ~~~ end')
SHORT_SECRET = "test"  # allowed with a warning: masked where it is known to be secret, never as a substring
#: the headings the project's templates make (nothing else may become a heading)
HEADINGS = re.compile(r"^(Hostile .*: (✅ PASSED|❌ FAILED)|Step \S+ · .* · .*|Failure( \(.*\))?|"
                      r"What was done and proved|Links|Spec|Files and results hashed by the run|What the step saw \(raw\)|"
                      r"Evidence pack|Who ran it, where|Last \d+ runs of this case|The last run of this case)$")


def hostile_case(folder: Path) -> Path:
    (folder / "data").mkdir()
    (folder / "data" / "in.csv").write_text("a,b\n1,2\n")
    desc = f"desc {HOSTILE}"
    spec = {
        "case": "Hostile <b>case</b> ```",
        "description": desc,
        "aws": {"region": REGION, "allowed_parameter_prefixes": ["/h/"]},
        "steps": [
            {"kind": "upload", "name": "land", "description": desc, "files": ["data/in.csv"], "bucket": "hostile",
             "key": "in/<script>x</script>/```/a|b/](javascript:alert(1))/\"><img onerror=1>.csv"},
            {"kind": "set_parameters", "name": "params", "description": desc, "parameters": [
                {"name": "/h/plain", "value": HOSTILE, "description": HOSTILE[:200].replace("\x00", "")},
                {"name": "/h/short", "value": SHORT_SECRET, "type": "SecureString"}]},
            {"kind": "expect_parameters", "name": "check", "description": desc, "parameters": [
                {"name": "/h/short", "equals": SHORT_SECRET}, {"name": "/h/plain", "equals": HOSTILE}]},
            {"kind": "invoke_lambda", "name": "call", "description": desc, "function": "echo",
             "continue_on_failure": True, "payload": {"x": HOSTILE}},
            {"kind": "athena_query", "name": "query", "description": desc, "sql": "SELECT * FROM t",
             "database": "db", "output_location": "s3://hostile/results/", "expect": {"row_count": 5}},
        ],
    }
    path = folder / "hostile.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


class _Tags(html.parser.HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, list[tuple[str, str | None]]]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, attrs))


def assert_markdown_is_the_templates(text: str, where: str) -> None:
    """Only the project's template makes headings, links and HTML; every table row has the header's cells."""
    tokens = MarkdownIt("commonmark").enable("table").parse(text)
    cells: list[int] = []
    for i, token in enumerate(tokens):
        if token.type == "heading_open":
            assert HEADINGS.match(tokens[i + 1].content.replace("\\", "")), f"{where}: forged heading {tokens[i + 1].content!r}"
        assert token.type not in ("html_block", "html_inline"), f"{where}: raw HTML {token.content!r}"
        if token.type == "inline":
            for child in token.children or []:
                assert child.type != "html_inline", f"{where}: raw HTML {child.content!r}"
                if child.type == "link_open":
                    assert str(child.attrs["href"]).startswith(("http://", "https://")), f"{where}: {child.attrs}"
                assert child.type != "image", f"{where}: an image"
        if token.type == "tr_open":
            cells.append(0)
        if token.type in ("th_open", "td_open"):
            cells[-1] += 1
        if token.type == "table_close":
            assert len(set(cells)) == 1, f"{where}: a row with more or fewer cells than its header: {cells}"
            cells = []
    assert "javascript:" not in "".join(t.attrs.get("href", "") for t in tokens if t.attrs)


def test_hostile_values_cannot_break_or_forge_the_evidence(aws_lambda, tmp_path, run_logs, monkeypatch) -> None:
    import boto3

    from flows.evidence.results import result_of
    from flows.pipeline_test import pipeline_test

    monkeypatch.delenv(MASK_KEY_ENV, raising=False)
    boto3.client("s3", region_name=REGION).create_bucket(Bucket="hostile")
    aws_lambda.update(function_error="Unhandled", log=f"log {HOSTILE}",
                      payload={"errorType": HOSTILE, "errorMessage": f"``` {HOSTILE}", "stackTrace": [HOSTILE]})
    columns = [(f"col {HOSTILE[:60]}", "varchar"), ("n", "integer")]
    rows = [[name for name, _ in columns], [HOSTILE, "1"], ["`|<x>", "2"]]
    body = {"rows": [{"Data": [{"VarCharValue": v} for v in row]} for row in rows],
            "column_info": [{"Name": n, "Label": n, "Type": t, "Nullable": "UNKNOWN", "CaseSensitive": True}
                            for n, t in columns]}
    assert requests.post(f"{MOTO_API}/static/athena/query-results",
                         json={"region": REGION, "results": [body]}).status_code == 201
    state = pipeline_test(spec=str(hostile_case(tmp_path)), evidence_dir=str(tmp_path / "pack"), return_state=True)
    result = result_of(state)
    assert result is not None
    assert [(s.label, s.status) for s in result.steps] == [
        ("land", "passed"), ("params", "passed"), ("check", "passed"), ("call", "failed"), ("query", "failed"),
        ("cleanup", "passed")], [s.error for s in result.steps]
    assert "step 2 'params' (set_parameters): a secret value is shorter than 8 characters" in run_logs.text

    pack = Path(result.evidence_dir or "")
    files = pack_texts(pack)
    assert evidence_pack.verify(pack) == []
    json.loads(files["report.json"]), json.loads(files["manifest.json"])
    ET.fromstring(files["junit.xml"].encode("utf-8"))
    assert "<testsuites" in files["junit.xml"] and '"pipeline-test/evidence-report"' in files["report.json"]
    parser = _Tags()
    parser.feed(files["report.html"])
    assert not {tag for tag, _ in parser.tags} & {"script", "img", "b", "x"}  # the hostile values' tags
    assert not any(name.startswith("on") for _, attrs in parser.tags for name, _ in attrs)
    assert all(str(v).startswith(("http", "#")) for tag, attrs in parser.tags if tag == "a" for n, v in attrs
               if n == "href")

    # markdown: the UI's artifacts and report.md
    markdowns = {f"artifact {a.description}": a.data for a in artifacts_of(result.flow_run_id or "")
                 if a.type == "markdown"}
    assert len(markdowns) >= 7
    for where, text in {**markdowns, "report.md": files["report.md"]}.items():
        assert_markdown_is_the_templates(text, where)
    report = markdowns[next(k for k in markdowns if "FAILED" in k and "Hostile" in k)]
    titles = [t for t in MarkdownIt("commonmark").enable("table").parse(report) if t.type == "heading_open"]
    assert [t.tag for t in titles].count("h1") == 1  # the forged "# All checks PASSED" stayed inside its block
    links = [a for a in artifacts_of(result.flow_run_id or "") if a.type == "link"]
    assert all("javascript" not in str(a.data).split("](", 1)[-1] for a in links)

    # the short secret: masked where it is the secret's value, nowhere else (names and words stay)
    params = result.steps[1].details["parameters"]
    assert params[1]["after"]["value"] == "****"
    assert "pipeline-test" in files["junit.xml"] and "Hostile" in files["report.md"]
    assert yaml.safe_load(files["spec.yaml"])["steps"][1]["parameters"][1]["value"] == "****"
    assert yaml.safe_load(files["spec.yaml"])["steps"][2]["parameters"][0]["equals"] == "****"


# ------------------------------------------------------------------------- a pack that cannot be written is no pass
PARAMETER = "/pack/setting"


@pytest.fixture
def ssm_case(tmp_path: Path) -> Iterator[tuple[Path, Any]]:
    """A case that changes one SSM parameter (``old`` before, ``new`` during the run) and checks it, under moto."""
    import boto3

    with mock_aws():
        ssm = boto3.client("ssm", region_name=REGION)
        ssm.put_parameter(Name=PARAMETER, Value="old", Type="String")
        spec = {"case": "Pack integrity", "aws": {"region": REGION, "allowed_parameter_prefixes": ["/pack/"]},
                "steps": [{"kind": "set_parameters", "name": "change",
                           "parameters": [{"name": PARAMETER, "value": "new", "type": "String"}]},
                          {"kind": "expect_parameters", "name": "check",
                           "parameters": [{"name": PARAMETER, "equals": "new"}]}]}
        folder = tmp_path / "cases"
        folder.mkdir()
        path = folder / "pack_integrity.yaml"
        path.write_text(yaml.safe_dump(spec, sort_keys=False))
        yield path, ssm


def _value(ssm: Any) -> str:
    return ssm.get_parameter(Name=PARAMETER)["Parameter"]["Value"]


def _changed(ssm: Any) -> bool:
    """Whether the run touched the parameter at all (its version moves on every change, and on the undo)."""
    return ssm.get_parameter(Name=PARAMETER)["Parameter"]["Version"] != 1


@contextlib.contextmanager
def _tmpfs(where: Path, *options: str) -> Iterator[Path]:
    """A small tmpfs mounted at ``where`` (skips when this machine does not allow mounting: not root)."""
    where.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", ",".join(options), "tmpfs", str(where)],
                          capture_output=True, text=True, check=False) if shutil.which("mount") else None
    if done is None or done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip() if done else 'no mount command'}")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], capture_output=True, check=False)


def _fill(folder: Path, leave: int = 0) -> None:
    """Fill a tmpfs up to ``leave`` bytes free."""
    free = shutil.disk_usage(folder).free - leave
    try:
        (folder / "filler").write_bytes(b"\0" * free)
    except OSError:
        pass
    assert shutil.disk_usage(folder).free <= leave


def test_a_full_or_read_only_evidence_folder_is_refused_before_anything_changes(ssm_case, tmp_path, capsys,
                                                                                monkeypatch) -> None:
    """Exit 3 and nothing changed, for --evidence-dir and the default folder, for a case, its flow run (as a
    deployment or a suite runs it) and a suite."""
    from flows.cli import main
    from flows.pipeline_test import pipeline_test
    from flows.run.recover import CouldNotRun
    from flows.suite.flow import pipeline_test_suite

    spec, ssm = ssm_case
    with _tmpfs(tmp_path / "full", "size=64k") as full, _tmpfs(tmp_path / "ro", "ro", "size=64k") as read_only:
        _fill(full)
        for where, reason in ((full, "No space left on device"), (read_only, "Read-only file system")):
            assert main([str(spec), "--evidence-dir", str(where / "pack")]) == 3
            err = capsys.readouterr().err
            assert "Could not run: evidence folder" in err and reason in err and "nothing was changed" in err, err
            assert main([str(spec.parent), "--evidence-dir", str(where / "suite")]) == 3  # a suite
            assert reason in capsys.readouterr().err
            state = pipeline_test(spec=str(spec), evidence_dir=str(where / "pack"), return_state=True)
            refused = state.result(raise_on_failure=False)
            assert isinstance(refused, CouldNotRun) and reason in str(refused), refused
            state = pipeline_test_suite(suite=str(spec.parent), evidence_dir=str(where / "suite"), return_state=True)
            refused = state.result(raise_on_failure=False)
            assert isinstance(refused, CouldNotRun) and "did not start" in str(refused), refused
            monkeypatch.chdir(where)  # the default folder, evidence/<case>/... under the working folder
            assert main([str(spec)]) == 3 and reason in capsys.readouterr().err
            monkeypatch.chdir(tmp_path)
            assert sorted(p.name for p in where.iterdir()) == (["filler"] if where == full else [])
        assert _value(ssm) == "old" and not _changed(ssm)


def test_a_pack_that_fills_the_disk_after_the_run_is_exit_4_and_leaves_nothing(ssm_case, tmp_path, capsys) -> None:
    """Room for the claim's probe, not for the pack: the run undoes its change, says PASSED and NO EVIDENCE, exits 4
    (the flow run fails), and no half pack nor temporary folder is left."""
    from flows.cli import format_result, main
    from flows.evidence.results import CaseResult

    spec, ssm = ssm_case
    with _tmpfs(tmp_path / "small", "size=64k") as small:
        _fill(small, leave=12 * 1024)
        assert main([str(spec), "--evidence-dir", str(small / "pack"), "--json"]) == 4
        out = capsys.readouterr()
        result = CaseResult.model_validate_json(out.out[out.out.index("{"):])
        why = f"the evidence pack {small / 'pack'} could not be written: No space left on device"
        assert result.passed and (result.evidence_error or "").startswith(why), result.evidence_error
        assert result.evidence_dir is None and result.pack is None and f"NO EVIDENCE: {why}" in out.err
        assert "Case 'Pack integrity' PASSED" in format_result(result) and f"NO EVIDENCE: {why}" in format_result(result)
        assert sorted(p.name for p in small.iterdir()) == ["filler"]
    report = next(a for a in artifacts_of(result.flow_run_id or "") if (a.key or "").endswith("-report"))
    assert f"**No evidence**: {why}" in str(report.data)
    assert _value(ssm) == "old" and _changed(ssm)  # it ran, and put the value back


def test_two_runs_given_one_evidence_folder_never_mix(ssm_case, tmp_path, capsys) -> None:
    """A run that finds the folder claimed by a run in progress is refused before its first change (exit 3); one
    that finds it written is refused too (exit 2, as any folder that is not new); the first run's pack is intact."""
    from flows.cli import main
    from flows.evidence.pack.folder import claim
    from flows.pipeline_test import pipeline_test
    from flows.run.recover import CouldNotRun

    spec, ssm = ssm_case
    folder = tmp_path / "shared"
    first = claim(folder, True)  # the first run, in progress
    assert main([str(spec), "--evidence-dir", str(folder)]) == 3
    assert "another run is writing an evidence pack to" in capsys.readouterr().err
    state = pipeline_test(spec=str(spec), evidence_dir=str(folder), return_state=True)  # past the CLI's check
    assert isinstance(state.result(raise_on_failure=False), CouldNotRun)
    assert not _changed(ssm)
    first.abandon()

    assert main([str(spec), "--evidence-dir", str(folder)]) == 0
    assert main([str(spec), "--evidence-dir", str(folder)]) == 2
    assert "is not empty" in capsys.readouterr().err
    assert evidence_pack.verify(folder) == [] and not list(tmp_path.glob(".*"))


def test_a_pack_that_cannot_be_uploaded_is_exit_4_and_stays_on_disk(ssm_case, tmp_path, capsys) -> None:
    from flows.cli import main

    spec, ssm = ssm_case
    raw = yaml.safe_load(spec.read_text())
    raw["evidence"] = {"bucket": "no-such-evidence-bucket", "prefix": "packs/"}
    spec.write_text(yaml.safe_dump(raw, sort_keys=False))
    assert main([str(spec), "--evidence-dir", str(tmp_path / "pack")]) == 4
    out = capsys.readouterr().out
    assert f"NO EVIDENCE: the evidence pack {tmp_path / 'pack'} could not be uploaded:" in out
    assert "NoSuchBucket" in out and "Case 'Pack integrity' PASSED" in out
    assert evidence_pack.verify(tmp_path / "pack") == [] and _value(ssm) == "old"
