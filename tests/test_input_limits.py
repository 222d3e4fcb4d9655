"""Issue 23's input limits, unit by unit: depth of every JSON document, the template sandbox's allow-lists, S3 keys
read one way (issue 24), Athena literals, names, secrets in resource names, one-pass validation, ``--schema`` into
a closed pipe. The bad-input corpus (tests/test_bad_input.py) runs the same refusals through the command line."""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any

import pytest
import yaml
from pydantic import SecretStr, ValidationError

from flows.spec import reader as spec_file
from flows.spec.load import SpecError, load_spec, parse_spec, resource_names
from flows.spec.model import CaseSpec, EvidenceSettings
from flows.spec.template_sandbox import SAFE_FILTERS, indented_json_size
from flows.spec.templating import TemplateError, builtin_values, render
from tasks.athena.reconcile import _json_line
from tasks.athena.sql_guard import check_literal, check_sql, with_parameters
from tasks.athena.step import AthenaQueryStep
from tasks.awslambda import InvokeLambdaStep, load_payload
from tasks.kit import nesting
from tasks.kit.errors import StepError
from tasks.kit.json_expect import MISSING, parse_json
from tasks.kit.polling import PollSettings
from tasks.s3.content_spec import ObjectCsvOptions
from tasks.s3.keys import check_glob, posix_key
from tasks.s3.steps import ExpectObjectsStep, UploadStep
from tasks.ssm import SetParametersStep

ROOT = Path(__file__).resolve().parent.parent
DEEP = "[" * 1001 + "]" * 1001


# ------------------------------------------------------------------------------------------------------ depth
def test_one_depth_limit_for_every_document() -> None:
    assert spec_file.MAX_DEPTH == nesting.MAX_DEPTH == 64
    ok = "[" * 64 + "]" * 64
    assert nesting.loads(ok, "x") is not None
    for text in ("[" * 65 + "]" * 65, DEEP, "[" * 200_000, '{"a": ' * 100 + "1" + "}" * 100):
        with pytest.raises(nesting.NestingError, match="^the thing nests deeper than 64 levels$"):
            nesting.loads(text, "the thing")
    with pytest.raises(json.JSONDecodeError):
        nesting.loads("{not json", "x")
    deep: Any = 1
    for _ in range(100):
        deep = {"a": [deep]}
    with pytest.raises(nesting.NestingError):
        nesting.check_depth(deep, "a value")


def test_a_deep_lambda_response_is_a_step_error() -> None:
    assert parse_json(b'{"ok": [1]}') == {"ok": [1]} and parse_json(b"not json") is MISSING
    with pytest.raises(StepError, match="the response nests deeper than 64 levels: too deep to check"):
        parse_json(DEEP.encode())


def test_a_deep_reconcile_line_is_a_step_error() -> None:
    assert _json_line('{"id": 1}', 1, "expected.jsonl") == {"id": 1}
    with pytest.raises(StepError, match=r"expect.reconcile.file expected.jsonl line 3 nests deeper than 64"):
        _json_line('{"id": ' + DEEP + "}", 3, "expected.jsonl")


def test_a_deep_parameter_value_is_a_failed_check_naming_it() -> None:
    from tasks.ssm import _json_problems

    assert _json_problems("/p", '{"a": 1}', {"a": 1}, str) == []
    assert _json_problems("/p", DEEP, [], str) == ["SSM parameter /p nests deeper than 64 levels"]


def test_a_deep_payload_file_is_a_step_error(tmp_path: Path) -> None:
    (tmp_path / "event.json").write_text(DEEP, encoding="utf-8")
    step = InvokeLambdaStep(function="f", payload_file="event.json")
    with pytest.raises(StepError, match="payload_file event.json nests deeper than 64 levels"):
        load_payload(step, tmp_path, lambda text: text)
    assert step.rendered_checks(tmp_path, lambda text: text) == [
        "field 'payload_file': payload_file event.json nests deeper than 64 levels"]


def test_a_deep_json_spec_is_refused_by_name(tmp_path: Path) -> None:
    path = tmp_path / "case.json"
    path.write_text('{"case": "x", "steps": ' + "[" * 5000 + "]" * 5000 + "}", encoding="utf-8")
    with pytest.raises(SpecError, match="the spec nests deeper than 64 levels"):
        load_spec(path)


# ---------------------------------------------------------------------------------------------- the sandbox
VALUES = {**builtin_values("c", "r", __import__("datetime").datetime(2026, 1, 2, 3, 4, 5,
                                                                        tzinfo=__import__("datetime").timezone.utc),
                           "UTC"), "bucket": "landing", "items": ["a", "b"], "row": {"id": 7}}


@pytest.mark.parametrize("template, expected", [
    ("{{ run_at.strftime('%Y/%m/%d') }}|{{ run_at.isoformat() }}|{{ run_at.weekday() }}",
     "2026/01/02|2026-01-02T03:04:05+00:00|4"),
    ("{{ bucket.upper() }}|{{ bucket.split('n')|length }}|{{ bucket.startswith('land') }}|{{ '7'.zfill(3) }}",
     "LANDING|3|True|007"),
    ("{{ row.get('id') }}|{{ row.items()|list|length }}|{{ items.index('b') }}|{{ items|join(',') }}", "7|1|1|a,b"),
    ("{{ row|tojson }}|{{ items|tojson(indent=2) }}", '{"id": 7}|[\n  "a",\n  "b"\n]'),
    ("{% for i in items %}{{ loop.cycle('x', 'y') }}{{ loop.index }}{% endfor %}", "x1y2"),
    ("{{ items|map('upper')|join }}|{{ [3, 1, 2]|sort|first }}|{{ 1234567|filesizeformat }}", "AB|1|1.2 MB"),
    ("{{ 'a,b'.partition(',')[2] }}|{{ ' x '.strip() }}|{{ 'x'.ljust(3, '-') }}|{{ 'ab'.replace('a', 'c') }}",
     "b|x|x--|cb"),
])
def test_everyday_templates_still_render(template: str, expected: str) -> None:
    assert render(template, VALUES) == expected


@pytest.mark.parametrize("template, refusal", [
    ("{{ ('a'*100000).translate({97:'b'*1000000})|length }}", "str.translate is not allowed in templates"),
    ("{{ 'a'.encode('utf-8') }}", "str.encode is not allowed"),
    ("{{ 'x'|attr('translate') }}", "str.translate is not allowed"),
    ("{{ {}.fromkeys(range(10)) }}", "dict.fromkeys is not allowed"),
    ("{{ run_at.replace(year=1) }}", "datetime.replace is not allowed"),
    ("{{ 'x'.maketrans('x', 'y') }}", "str.maketrans is not allowed"),
    ("{{ [[1]]|tojson(indent=100000000) }}", "indent must be a number from 0 to 16"),
    ("{{ [[1]]|tojson(indent='\\t' * 100000) }}", "indent must be a number from 0 to 16 (got a str)"),
    ("{{ ([[1] * 1000] * 100)|tojson(indent=16) }}", "the indented JSON would be more than 1,000,000 characters"),
    ("{{ run_at.strftime('%c' * 400000) }}", "the strftime text would be more than"),
    ("{{ [1]|random }}", "No filter named 'random'"),
    ("{{ 'x'|pprint }}", "No filter named 'pprint'"),
    ("{{ 'x y'|wordwrap(1) }}", "No filter named 'wordwrap'"),
    ("{{ 'x'|urlize }}", "No filter named 'urlize'"),
])
def test_what_could_multiply_size_is_refused_before_it_runs(template: str, refusal: str) -> None:
    with pytest.raises(TemplateError, match=refusal.replace("(", r"\(").replace(")", r"\)")):
        render(template, VALUES)


def test_the_filters_are_an_allow_list() -> None:
    from flows.spec.templating import _env

    assert set(_env.filters) == SAFE_FILTERS
    assert not {"pprint", "random", "urlize", "wordwrap", "xmlattr", "safe", "forceescape"} & SAFE_FILTERS


def test_the_indented_size_is_estimated_without_dumping() -> None:
    value = [[1, {"a": [2, 3]}], "x" * 10]
    for indent in (0, 2, 16):
        assert indented_json_size(value, indent) >= len(json.dumps(value, indent=indent)) * 0.5
    assert indented_json_size([[1] * 1000] * 100, 16, limit=1_000_000) > 1_000_000


# --------------------------------------------------------------------------------- S3 keys, one way (issue 24)
def test_every_key_field_reads_a_backslash_as_a_slash() -> None:
    local = str(PureWindowsPath("in", "2026", "a.csv"))  # in\2026\a.csv, as a Windows user types it
    assert ExpectObjectsStep(bucket="bkt", keys=[local]).keys == ["in/2026/a.csv"]
    assert ExpectObjectsStep(bucket="bkt", prefix="in\\2026\\").prefix == "in/2026/"
    assert UploadStep(files=["a.csv"], bucket="bkt", key_prefix="in\\2026\\").key_prefix == "in/2026/"
    assert UploadStep(files=["a.csv"], bucket="bkt", key=local).key == "in/2026/a.csv"
    assert EvidenceSettings(bucket="evidence-bkt", prefix="audit\\packs\\").prefix == "audit/packs/"
    # one rule for uploads and checks: the key an upload makes is the key a check looks for
    assert posix_key("in/2026/", PureWindowsPath("C:\\data\\a.csv")) == posix_key("in/2026/", PurePosixPath("a.csv"))
    # a template is normalised once rendered
    assert ExpectObjectsStep(bucket="bkt", prefix="{{ p }}\\x\\").prefix == "{{ p }}\\x\\"


@pytest.mark.parametrize("key", [str(PureWindowsPath("C:/in/a.csv")), "c:/in/a.csv", "D:", "in/\x00/a", "in\n/a",
                                 "a" * 1025, "é" * 513, "/in/a.csv", "\\in\\a.csv", "in\\..\\a.csv"])
def test_a_key_that_s3_would_refuse_or_misplace_is_refused(key: str) -> None:
    with pytest.raises(ValidationError):
        ExpectObjectsStep(bucket="bkt", keys=[key])
    with pytest.raises(ValidationError):
        UploadStep(files=["a.csv"], bucket="bkt", key_prefix=key)


def test_keys_up_to_s3s_limit_pass() -> None:
    assert ExpectObjectsStep(bucket="bkt", keys=["a" * 1024]).keys == ["a" * 1024]
    assert ExpectObjectsStep(bucket="bkt", keys=["é" * 512]).keys == ["é" * 512]


@pytest.mark.parametrize("bucket, ok", [("my-bucket", True), ("a.b.c", True), ("../../etc", False),
                                        ("my..bucket", False), ("a.-b", False), ("192.168.1.1", False),
                                        ("Upper", False), ("ab", False), ("{{ b }}", True)])
def test_bucket_names_follow_s3s_rules(bucket: str, ok: bool) -> None:
    for make in (lambda: EvidenceSettings(bucket=bucket), lambda: ExpectObjectsStep(bucket=bucket, prefix="in/")):
        if ok:
            make()
        else:
            with pytest.raises(ValidationError, match="S3 bucket name"):
                make()


def test_globs_with_a_reversed_range_are_refused() -> None:
    for fine in ("*", "part-[0-9]*.csv", "[!a-c]*", "[]a-z]*", "{{ p }}"):
        assert check_glob(fine) == fine
    for bad in ("[z-a]", "x[9-0]", "[!z-a]*"):
        with pytest.raises(ValueError, match="reversed range"):
            check_glob(bad)


def test_counts_sizes_encodings_and_intervals_have_sane_bounds() -> None:
    with pytest.raises(ValidationError, match="less than or equal to 1000000"):
        ExpectObjectsStep(bucket="bkt", prefix="in/", count=10**40)
    with pytest.raises(ValidationError, match="min_size"):
        ExpectObjectsStep(bucket="bkt", prefix="in/", min_size=10**40)
    assert ExpectObjectsStep(bucket="bkt", prefix="in/", min_size=5 * 1024**4).min_size == 5 * 1024**4
    for codec in ("zlib_codec", "base64", "rot_13", "hex"):
        with pytest.raises(ValidationError, match="not a text encoding"):
            ObjectCsvOptions(encoding=codec)
    assert ObjectCsvOptions(encoding="cp1252").encoding == "cp1252"
    with pytest.raises(ValidationError, match="initial"):
        PollSettings(initial=1e-9)
    with pytest.raises(ValidationError, match="max_interval"):
        PollSettings(max_interval=1e-9)
    assert PollSettings(initial=0.05, max_interval=0.1).initial == 0.05


# ------------------------------------------------------------------------------------------ Athena literals
@pytest.mark.parametrize("literal", ["'2024-01-31'", "'O''Brien'", "42", "-1.5", "1e3", "DATE '2024-01-31'",
                                     "timestamp '2024-01-31 10:00:00'", "TRUE", "null", "INTERVAL '1' DAY",
                                     "X'00ff'", "''"])
def test_literals_are_parameters(literal: str) -> None:
    assert check_literal(literal) == literal
    assert check_sql("SELECT * FROM t WHERE c = ?", parameters=[literal]).read_only


@pytest.mark.parametrize("bad", ["(DELETE FROM clientes)", "'x'); DROP TABLE clientes; --", "now()", "1 OR 1=1",
                                 "'a' || 'b'", "(SELECT 1)", "", "1; DROP TABLE t", "'unclosed", "col"])
def test_anything_but_a_literal_is_refused(bad: str) -> None:
    with pytest.raises(ValueError, match="one SQL literal"):
        check_literal(bad)
    with pytest.raises(StepError, match="parameter 1: a parameter must be one SQL literal"):
        check_sql("SELECT * FROM t WHERE c = ?", parameters=[bad])
    with pytest.raises(ValidationError, match="one SQL literal"):
        AthenaQueryStep(sql="SELECT * FROM t WHERE c = ?", parameters=[bad])


def test_the_guard_judges_the_statement_with_its_parameters_in_place() -> None:
    sql = "SELECT '?' AS q, c FROM t WHERE a = ? AND b = ?"
    assert with_parameters(sql, ["'x'", "2"]) == "SELECT '?' AS q, c FROM t WHERE a =  'x'  AND b =  2 "
    assert AthenaQueryStep(sql="SELECT ?", parameters=["{{ p }}"]).parameters == ["{{ p }}"]  # checked once rendered


# -------------------------------------------------------------------------------------------- names, region
BASE: dict[str, Any] = {"case": "Limits", "aws": {"region": "eu-west-1", "allowed_parameter_prefixes": ["/test/"]},
                        "variables": {"token": "tok-5e5e5e5e5e", "bucket": "landing-bucket"},
                        "steps": [{"kind": "expect_objects", "name": "landed", "bucket": "{{ bucket }}",
                                   "prefix": "in/"}]}


def spec(**changes: Any) -> dict[str, Any]:
    raw = json.loads(json.dumps(BASE))
    raw.update(changes)
    return raw


@pytest.mark.parametrize("name, code", [("x\nCase 'x' PASSED in 0.1 s", "U+000A"), ("x\x00", "U+0000"),
                                        ("a\u202eb", "U+202E"), ("a\u200db", "U+200D"), ("a\tb", "U+0009"),
                                        ("a\u2029b", "U+2029"), ("a\x7fb", "U+007F")])
def test_case_names_with_control_or_invisible_characters_are_refused(name: str, code: str) -> None:
    with pytest.raises(SpecError, match=re.escape(f"the case name holds {code}, a control or invisible")):
        parse_spec(spec(case=name))


def test_ordinary_case_names_pass() -> None:
    for name in ("Orders ingestion: 2026 (São Paulo) – nightly", "orders 🚚", "Ünïcödé 42"):
        assert parse_spec(spec(case=name)).case == name


@pytest.mark.parametrize("region, ok", [("us-east-1", True), ("us-gov-west-1", True), ("eu-isoe-west-1", True),
                                        ("ap-southeast-5", True), ("us-east-1/../../evil", False),
                                        ("https://evil", False), ("US-EAST-1", False), ("us-east-1\n", False),
                                        ("", False)])
def test_the_region_has_a_regions_shape(region: str, ok: bool) -> None:
    raw = spec(aws={"region": region})
    if ok:
        assert parse_spec(raw).aws.region == region
    else:
        with pytest.raises(SpecError, match="aws.region"):
            parse_spec(raw)


# ---------------------------------------------------------------------------------- one pass, every problem
def test_an_unknown_field_does_not_hide_the_other_problems(tmp_path: Path) -> None:
    """The example of docs/writing-cases.md: an unknown field, an unknown variable and a guard rail at once."""
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "orders.csv").write_text("id\n1\n", encoding="utf-8")
    raw = {"case": "orders", "aws": {"allowed_parameter_prefixes": ["/demo/"]}, "steps": [
        {"kind": "parallel", "steps": [
            {"kind": "set_parameters", "name": "point-pipeline-at-test-bucket",
             "parameters": [{"name": "/prod/orders/source_bucket", "value": "x"}]},
            {"kind": "upload", "name": "land-orders-file", "files": ["data/orders.csv"], "bucket": "landing",
             "key_prefix": "incoming/{{ run_dat }}/"}]},
        {"kind": "expect_objects", "name": "curated-file-written", "bucket": "curated", "prefix": "out/",
         "min_sizee": 1}]}
    with pytest.raises(SpecError) as caught:
        parse_spec(raw, "orders.yaml", tmp_path)
    text = str(caught.value)
    assert "step 2 'curated-file-written' (expect_objects): field 'min_sizee': unknown field" in text
    assert "step 1.2 'land-orders-file' (upload): field 'key_prefix': unknown variable run_dat" in text
    assert "step 1.1 'point-pipeline-at-test-bucket' (set_parameters): field 'parameters': SSM parameter " \
           "/prod/orders/source_bucket is outside the allowed parameter prefixes (/demo/)" in text
    assert len(caught.value.problems) == 3


def test_a_misspelt_field_that_another_check_needs_is_one_problem() -> None:
    raw = spec(steps=[{"kind": "expect_objects", "bucket": "landing-bucket", "prefx": "in/"}])
    with pytest.raises(SpecError) as caught:
        parse_spec(raw)
    assert caught.value.problems == ["step 1 (expect_objects): field 'prefx': unknown field (not allowed here; "
                                     "check the spelling)"]


def test_other_structural_errors_still_come_alone() -> None:
    raw = spec(steps=[{"kind": "expect_objects", "bucket": "landing-bucket", "prefix": "in/", "count": "many",
                       "extra": 1}])
    with pytest.raises(SpecError) as caught:
        parse_spec(raw)
    assert len(caught.value.problems) == 2  # the wrong type and the unknown field, from pydantic's one pass


# --------------------------------------------------------------------------------- secrets in resource names
def secure_step(value: str = "{{ token }}") -> dict[str, Any]:
    return {"kind": "set_parameters", "name": "secret", "parameters": [
        {"name": "/test/secret", "value": value, "type": "SecureString"}]}


def test_resource_name_fields_are_found_by_their_mark() -> None:
    step = SetParametersStep(parameters=[{"name": "/test/a", "value": "v"}, {"name": "/test/b", "value": "w"}])
    assert list(resource_names(step)) == [("parameters[0].name", "/test/a"), ("parameters[1].name", "/test/b")]
    found = dict(resource_names(ExpectObjectsStep(bucket="bkt", keys=["a", "b"])))
    assert found == {"bucket": "bkt", "keys[0]": "a", "keys[1]": "b"}
    found = dict(resource_names(UploadStep(files=["x"], bucket="bkt", key_prefix="in/")))
    assert found == {"bucket": "bkt", "key_prefix": "in/"}
    assert dict(resource_names(AthenaQueryStep(sql="SELECT 1", output_location="s3://r/x/"))) == \
        {"output_location": "s3://r/x/"}


@pytest.mark.parametrize("where, step", [
    ("key_prefix", {"kind": "upload", "files": ["data/a.csv"], "bucket": "landing-bucket",
                    "key_prefix": "up/{{ token }}/"}),
    ("key", {"kind": "upload", "files": ["data/a.csv"], "bucket": "landing-bucket", "key": "up/{{ token }}.csv"}),
    ("keys[0]", {"kind": "expect_objects", "bucket": "landing-bucket", "keys": ["in/{{ token }}"]}),
    ("prefix", {"kind": "expect_objects", "bucket": "landing-bucket", "prefix": "in/{{ token | upper }}/"}),
    ("names[0]", {"kind": "delete_parameters", "names": ["/test/{{ token }}"]}),
    ("output_location", {"kind": "athena_query", "sql": "SELECT 1", "output_location": "s3://r/{{ token }}/"}),
])
def test_a_secret_in_any_resource_name_is_refused(tmp_path: Path, where: str, step: dict[str, Any]) -> None:
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "a.csv").write_text("id\n1\n", encoding="utf-8")
    raw = spec(steps=[secure_step(), step])
    with pytest.raises(SpecError) as caught:
        parse_spec(raw, "case.yaml", tmp_path)
    text = str(caught.value)
    assert "holds a secret value" in text and "tok-5e5e5e5e5e" not in text, text
    assert f"step 2 ({step['kind']}): field {where!r}: holds a secret value (through {{{{ token }}}})" in text, text


def test_a_secret_from_var_or_the_flows_secret_variables_is_refused_too(tmp_path: Path) -> None:
    raw = spec(steps=[secure_step(), {"kind": "expect_objects", "bucket": "landing-bucket",
                                      "prefix": "in/{{ token }}/"}])
    for overrides in ({"token": "from-the-command-line-1"}, {"token": "p1"}):
        with pytest.raises(SpecError, match=r"field 'prefix': holds a secret value \(through \{\{ token \}\}\)"):
            parse_spec(raw, "case.yaml", tmp_path, overrides)
    from flows.pipeline_test import plain_variables, resolve_spec

    with pytest.raises(SpecError, match="holds a secret value"):
        resolve_spec(CaseSpec.model_validate(raw), {"token": SecretStr("from-the-flow-1")}, tmp_path, None)
    assert plain_variables({"a": SecretStr("b")}) == {"a": "b"}


def test_a_literal_secret_in_a_name_is_refused_and_other_values_pass(tmp_path: Path) -> None:
    raw = spec(steps=[secure_step("literal-secret-1"), {"kind": "expect_objects", "bucket": "landing-bucket",
                                                        "prefix": "in/literal-secret-1/"}])
    with pytest.raises(SpecError, match="holds a secret value"):
        parse_spec(raw)
    # a variable that is not secret may name resources (the everyday --var landing_bucket=...)
    raw = spec(steps=[secure_step(), {"kind": "expect_objects", "bucket": "{{ bucket }}", "prefix": "in/"}])
    assert parse_spec(raw, overrides={"bucket": "acme-landing-test"}).variables["bucket"] == "acme-landing-test"


def test_a_secret_in_a_name_is_refused_for_a_case_of_a_suite(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from flows.cli import main

    raw = spec(steps=[secure_step(), {"kind": "expect_objects", "bucket": "landing-bucket",
                                      "prefix": "in/{{ token }}/"}])
    (tmp_path / "cases").mkdir()
    (tmp_path / "cases" / "one.yaml").write_text(yaml.safe_dump(raw), encoding="utf-8")
    assert main([str(tmp_path / "cases"), "--validate", "--var", "token=from-the-suite-cli-1"]) == 2
    out = capsys.readouterr()
    assert "one.yaml" in out.out + out.err and "holds a secret value" in out.out + out.err
    assert "from-the-suite-cli-1" not in out.out + out.err


@pytest.mark.parametrize("token", ["Not_A_Bucket_Secret", "P1"])
def test_a_problem_never_quotes_a_secret(token: str) -> None:
    """A secret in a name that also breaks the name's rules: the message that quotes the rendered value masks it."""
    raw = spec(steps=[secure_step(), {"kind": "expect_objects", "bucket": "{{ token }}", "prefix": "in/"}])
    with pytest.raises(SpecError) as caught:
        parse_spec(raw, overrides={"token": token})
    text = str(caught.value)
    assert "after templating: an S3 bucket name" in text and re.search(r"\(got '?\*\*\*\*", text), text
    assert token not in text, text


def test_a_name_calling_a_secret_function_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    """A template function that reads a secret (``secret()``, ``ssm()``) may not make a resource name either."""
    from flows.spec import templating

    monkeypatch.setitem(templating._env.globals, "secret", lambda name: "value-of-" + name)
    raw = spec(steps=[{"kind": "expect_objects", "bucket": "landing-bucket", "prefix": "in/{{ secret('k') }}/"}])
    with pytest.raises(SpecError, match=re.escape("field 'prefix': holds a secret value (through {{ secret() }})")):
        parse_spec(raw)
    raw["steps"][0]["prefix"] = "in/{{ 'k'|upper }}/"
    assert parse_spec(raw).steps[0].prefix == "in/{{ 'k'|upper }}/"  # type: ignore[union-attr]


# ------------------------------------------------------------------------------------------ --schema | head
@pytest.mark.e2e  # starts a process (tests/fixtures/tiers.py)
def test_schema_into_a_closed_pipe_exits_quietly() -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-m", "flows.pipeline_test", "--schema"], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None and proc.stderr is not None
    assert proc.stdout.read(10).startswith(b"{")
    proc.stdout.close()  # as `| head` does once it has its lines: the schema (over 64 KiB) is still being written
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=60) == 0, err
    assert "Traceback" not in err and "BrokenPipe" not in err, err


def test_schema_yaml_round_trip_is_unchanged() -> None:
    """The models gained marks (RESOURCE_NAME), not fields: the schema a spec is checked against still loads."""
    schema = json.loads((ROOT / "spec.schema.json").read_text(encoding="utf-8"))
    assert schema["properties"]["aws"] and yaml.safe_load(io.StringIO(json.dumps(schema["$defs"]["AwsSettings"])))
    assert schema["$defs"]["AwsSettings"]["properties"]["region"]["anyOf"][0]["pattern"].startswith("^[a-z]{2}")
