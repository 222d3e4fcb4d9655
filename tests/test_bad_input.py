"""Bad input cannot hurt: a table of bad specs, each refused by ``--validate`` the way a user would run it.

For every input: exit code 2, a message naming the file and the field (and the step when there is one), no
traceback, within 5 s, under 300 MB, and no AWS call. Most run in-process (``main([...])``, memory measured
with tracemalloc, AWS calls refused by a patched botocore); four also run in a real Python process the way
``python -m flows.pipeline_test`` does (``sys.exit(main())``; address space capped at 300 MB over the imports,
memory measured with ru_maxrss, AWS pointed at a closed port): one whose template work is too slow to measure
under tracemalloc, a binary file (which used to end with a traceback and exit code 1), a template bomb and a
deeply nested payload file (issue 23: both were computed, or recursed, before they were refused).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import tracemalloc
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import pytest
import yaml

from flows import cli
from flows.spec import load as spec_module

ROOT = Path(__file__).resolve().parent.parent
SPEC = "case.yaml"
#: the CPU time (of the validating process, not the wall clock: the suite runs on two processes on a shared machine)
#: that refusing one bad input may take
MAX_SECONDS = 5.0
MAX_BYTES = 300 * 1024 * 1024
# an AWS access key id and secret access key of AWS's documentation (not real credentials)
ACCESS_KEY_ID = "AKIA" + "IOSFODNN7EXAMPLE"
SECRET_KEY = "wJalrXUtnFEMI/K7MDENG/" + "bPxRfiCYEXAMPLEKEY"


def base() -> dict[str, Any]:
    """A valid case using every step kind; each bad input changes one thing."""
    return {
        "case": "Bad input",
        "variables": {"bucket": "landing-bucket", "dir": "data"},
        "aws": {"region": "us-east-1", "allowed_parameter_prefixes": ["/test/"]},
        "steps": [
            {"kind": "upload", "name": "land", "files": ["data/orders.csv"], "bucket": "{{ bucket }}",
             "key_prefix": "in/"},
            {"kind": "expect_objects", "name": "landed", "bucket": "{{ bucket }}", "prefix": "in/",
             "wait": {"timeout": 5}},
            {"kind": "invoke_lambda", "name": "start", "function": "ingest", "payload": {"bucket": "{{ bucket }}"}},
            {"kind": "athena_query", "name": "rows", "sql": "SELECT 1", "output_location": "s3://results-bucket/"},
            {"kind": "set_parameters", "name": "point", "parameters": [{"name": "/test/source", "value": "x"}]},
        ],
    }


@dataclass
class Bad:
    """One bad input: how to make it (a change of base(), or the spec's text or bytes) and what the error says."""

    id: str
    expect: list[str]
    change: Callable[[dict[str, Any]], Any] | None = None
    text: str | bytes | None = None
    name: str = SPEC
    args: list[str] = field(default_factory=list)
    setup: Callable[[Path], None] | None = None
    patch: dict[str, Any] = field(default_factory=dict)
    subprocess: bool = False
    #: False for a bad command-line argument found before the file is read
    names_file: bool = True
    #: at least one of these is in the message too (a refusal that may hit one of several limits)
    expect_any: list[str] = field(default_factory=list)


def step(i: int, **fields: Any) -> Callable[[dict[str, Any]], None]:
    """A change that sets fields of step ``i`` (0-based; a value of ``...`` removes the field)."""
    def change(raw: dict[str, Any]) -> None:
        for key, value in fields.items():
            if value is ...:
                raw["steps"][i].pop(key, None)
            else:
                raw["steps"][i][key] = value
    return change


def update(section: str | None, fields: dict[str, Any]) -> Callable[[dict[str, Any]], None]:
    """A change that sets top-level fields (section None) or fields of a top-level mapping (aws, variables)."""
    def change(raw: dict[str, Any]) -> None:
        (raw if section is None else raw[section]).update(fields)
    return change


def top(**fields: Any) -> Callable[[dict[str, Any]], None]:
    return update(None, fields)


def variables(**values: Any) -> Callable[[dict[str, Any]], None]:
    return update("variables", values)


def aws(**fields: Any) -> Callable[[dict[str, Any]], None]:
    return update("aws", fields)


def payload(value: Any) -> Callable[[dict[str, Any]], None]:
    return step(2, payload=value)


def wait(i: int, **values: Any) -> Callable[[dict[str, Any]], None]:
    def change(raw: dict[str, Any]) -> None:
        raw["steps"][i].setdefault("wait", {}).update(values)
    return change


def header(extra: str) -> str:
    """A spec's text: base() as YAML with ``extra`` (a step's YAML, indented as a list item) appended."""
    return yaml.safe_dump(base(), sort_keys=False) + extra


LAMBDA_STEP = "  - kind: invoke_lambda\n    name: bomb\n    function: f\n    payload:\n"
ALIAS_BOMB = LAMBDA_STEP + "".join(
    f"      l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 9) if i else ', '.join(['lol'] * 9)}]\n" for i in range(9))
MERGE_BOMB = LAMBDA_STEP + "      m0: &m0 {a: 1, b: 2}\n" + "".join(
    f"      m{i}: &m{i} {{<<: [*m{i - 1}, *m{i - 1}], k{i}: 1}}\n" for i in range(1, 22))
TEMPLATE = "payload.x"  # where the template bombs go


def _write(folder: Path, name: str, content: str | bytes) -> Path:
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8")
    return path


#: what a refusal by one of the time or work limits says
LIMITS = ["loop iterations, calls and operations", "ran out of time", "validation took longer than"]
STEP_LAMBDA = "step 3 'start' (invoke_lambda)"
STEP_UPLOAD = "step 1 'land' (upload)"
STEP_EXPECT = "step 2 'landed' (expect_objects)"
STEP_ATHENA = "step 4 'rows' (athena_query)"
STEP_SSM = "step 5 'point' (set_parameters)"

def template_bomb(id: str, expect: list[str], template: str) -> Bad:
    """A template in the Lambda step's payload that the sandbox must refuse before computing it."""
    return Bad(id, [STEP_LAMBDA, TEMPLATE, *expect], change=payload({"x": template}))


def payload_file(content: str) -> dict[str, Any]:
    """A bad input's fields for a payload_file step holding ``content``."""
    return {"change": step(2, payload=..., payload_file="event.json"),
            "setup": lambda d: _write(d, "event.json", content)}


def secure(value: str, name: str = "/test/secret") -> Callable[[dict[str, Any]], None]:
    """The set_parameters step writes ``value`` as a SecureString (so it is a secret of the run)."""
    return step(4, parameters=[{"name": name, "value": value, "type": "SecureString"}])


def both(*changes: Callable[[dict[str, Any]], Any]) -> Callable[[dict[str, Any]], None]:
    def change(raw: dict[str, Any]) -> None:
        for one in changes:
            one(raw)
    return change


def csv_encoding(name: str) -> Callable[[dict[str, Any]], None]:
    return step(1, content={"format": "csv", "csv": {"encoding": name}})


CASE_FIELD = "case: field 'case'"
SECRET = "holds a secret value"
TOKEN = "tok-5e5e5e5e5e"  # a variable's value that a SecureString also holds

#: issue 23's kinds: unicode tricks, bombs, depth, injections, huge values, region, keys, encodings, SQL
#: parameters, globs, intervals, secrets in resource names
MORE_CASES: list[Bad] = [
    # ---- unicode tricks in the case name (the console prints it: a newline could forge a PASSED line)
    Bad("case-name-newline", [CASE_FIELD, "U+000A", "control or invisible"],
        change=top(case="x\nCase 'x' PASSED in 0.1 s")),
    Bad("case-name-nul", [CASE_FIELD, "U+0000"], change=top(case="x\x00y")),
    Bad("case-name-bidi", [CASE_FIELD, "U+202E"], change=top(case="invoice\u202eslx.exe")),
    Bad("case-name-zero-width", [CASE_FIELD, "U+200B"], change=top(case="orders\u200b")),
    Bad("case-name-line-separator", [CASE_FIELD, "U+2028"], change=top(case="a\u2028b")),
    Bad("case-name-escape", [CASE_FIELD, "U+001B"], change=top(case="\x1b[2Jcleared")),
    # ---- S3 keys: S3's 1,024 bytes, no control characters, no drive letter, as written and once rendered
    Bad("key-nul", [STEP_UPLOAD, "key_prefix", "control character"], change=step(0, key_prefix="in/\x00/")),
    Bad("key-newline", [STEP_EXPECT, "prefix", "control character"], change=step(1, prefix="in/\nx/")),
    Bad("key-2000-chars", [STEP_EXPECT, "prefix", "1,024 bytes"], change=step(1, prefix="a" * 2000)),
    Bad("key-utf8-bytes", [STEP_EXPECT, "prefix", "1,024 bytes", "1,200"], change=step(1, prefix="é" * 600)),
    Bad("key-120k-chars", [STEP_EXPECT, "keys.0", "1,024 bytes"], change=step(1, prefix=..., keys=["k" * 120_000])),
    Bad("key-rendered-too-long", [STEP_EXPECT, "prefix", "after templating", "1,024 bytes"],
        change=both(variables(p="a" * 1100), step(1, prefix="{{ p }}/"))),
    Bad("key-drive-letter", [STEP_EXPECT, "keys.0", "drive letter"],
        change=step(1, prefix=..., keys=["C:\\in\\a.csv"])),
    Bad("key-prefix-drive-letter", [STEP_UPLOAD, "key_prefix", "drive letter"], change=step(0, key_prefix="D:/in/")),
    Bad("key-rendered-drive-letter", [STEP_EXPECT, "prefix", "after templating", "drive letter"],
        change=both(variables(p="c:"), step(1, prefix="{{ p }}\\in\\"))),
    Bad("evidence-prefix-newline", ["case: field 'evidence.prefix'", "control character"],
        change=top(evidence={"bucket": "evidence-bucket", "prefix": "a\nb/"})),
    # ---- region and bucket names: shapes, never paths or URLs
    Bad("region-path", ["case: field 'aws.region'", "pattern"], change=aws(region="us-east-1/../../evil")),
    Bad("region-url", ["case: field 'aws.region'", "pattern"], change=aws(region="https://evil.example")),
    Bad("region-uppercase", ["case: field 'aws.region'", "pattern"], change=aws(region="US-EAST-1")),
    Bad("region-newline", ["case: field 'aws.region'", "pattern"], change=aws(region="us-east-1\nx")),
    Bad("evidence-bucket-dotdot", ["case: field 'evidence.bucket'", "S3 bucket name"],
        change=top(evidence={"bucket": "../../etc"})),
    Bad("bucket-ip-address", [STEP_UPLOAD, "bucket", "IP address"], change=step(0, bucket="192.168.1.1")),
    Bad("bucket-double-dot", [STEP_UPLOAD, "bucket", "'..'"], change=step(0, bucket="my..bucket")),
    Bad("bucket-rendered-dotdot", [STEP_UPLOAD, "bucket", "after templating"], change=variables(bucket="a..b")),
    # ---- bombs the sandbox refuses before it computes them
    template_bomb("translate-bomb", ["str.translate is not allowed"],
                  "{{ ('a'*100000).translate({97:'b'*1000000})|length }}"),
    template_bomb("tojson-indent-bomb", ["tojson", "indent"], "{{ [[[[1, 2, 3]]]] * 1000|tojson(indent=100000000) }}"),
    template_bomb("tojson-indented-size", ["the indented JSON would be more than"],
                  "{{ ([[1] * 1000] * 100)|tojson(indent=16) }}"),
    template_bomb("encode-method", ["str.encode is not allowed"], "{{ bucket.encode('utf-16') * 1000 }}"),
    template_bomb("attr-filter-translate", ["str.translate is not allowed"],
                  "{{ (bucket|attr('translate'))({108: 'x' * 999999}) }}"),
    template_bomb("wordwrap-filter", ["No filter named 'wordwrap'"], "{{ ('a ' * 400000)|wordwrap(1) }}"),
    template_bomb("random-filter", ["No filter named 'random'"], "{{ [1, 2]|random }}"),
    template_bomb("strftime-bomb", ["strftime text"], "{{ run_at.strftime('%c' * 400000) }}"),
    template_bomb("dunder-class", ["not allowed"], "{{ bucket.__class__ }}"),
    template_bomb("dict-method-bomb", ["dict.fromkeys is not allowed"],
                  "{{ {}.fromkeys(range(100000), 'x' * 100000) }}"),
    # ---- depth: payload files, JSON and YAML specs
    Bad("payload-file-deep-list", [STEP_LAMBDA, "payload_file", "nests deeper than 64"],
        **payload_file("[" * 1001 + "]" * 1001)),
    Bad("payload-file-deep-object", [STEP_LAMBDA, "payload_file", "nests deeper than 64"],
        **payload_file('{"a": ' * 200 + "1" + "}" * 200)),
    Bad("payload-file-deep-unclosed", [STEP_LAMBDA, "payload_file", "nests deeper than 64"],
        **payload_file("[" * 100_000)),
    Bad("deep-yaml-mappings", ["nests deeper than 64"],
        text=header(LAMBDA_STEP + "      a: " + "{a: " * 100 + "1" + "}" * 100 + "\n")),
    Bad("deep-json-objects", ["nests deeper than 64"], name="case.json",
        text=json.dumps(base())[:-1] + ', "x": ' + '{"a": ' * 3000 + "1" + "}" * 3000 + "}"),
    # ---- globs that can only time out
    Bad("glob-reversed-range", [STEP_EXPECT, "pattern", "reversed range z-a"], change=step(1, pattern="[z-a]*")),
    Bad("glob-reversed-digits", [STEP_EXPECT, "pattern", "reversed range 9-0"],
        change=step(1, pattern="part-[9-0].csv")),
    # ---- huge values
    Bad("count-1e40", [STEP_EXPECT, "count", "less than or equal to 1000000"], change=step(1, count=10**40)),
    Bad("min-size-1e40", [STEP_EXPECT, "min_size", "less than or equal to"], change=step(1, min_size=10**40)),
    Bad("min-count-huge", [STEP_EXPECT, "min_count", "less than or equal to 1000000"],
        change=step(1, min_count=10**12)),
    # ---- encodings: text encodings only
    Bad("csv-encoding-zlib", [STEP_EXPECT, "encoding", "not a text encoding"], change=csv_encoding("zlib_codec")),
    Bad("csv-encoding-base64", [STEP_EXPECT, "encoding", "not a text encoding"], change=csv_encoding("base64")),
    Bad("csv-encoding-rot13", [STEP_EXPECT, "encoding", "not a text encoding"], change=csv_encoding("rot_13")),
    # ---- Athena parameters: literals only, the statement read-only with them in place
    Bad("sql-param-subquery", [STEP_ATHENA, "parameters.0", "one SQL literal"],
        change=step(3, sql="SELECT * FROM clientes WHERE id = ?", parameters=["(DELETE FROM clientes)"])),
    Bad("sql-param-injection", [STEP_ATHENA, "parameters.0", "one SQL literal"],
        change=step(3, sql="SELECT * FROM clientes WHERE id = ?", parameters=["'x'); DROP TABLE clientes; --"])),
    Bad("sql-param-function", [STEP_ATHENA, "parameters.0", "one SQL literal"],
        change=step(3, sql="SELECT * FROM clientes WHERE d = ?", parameters=["now()"])),
    Bad("sql-param-rendered", [STEP_ATHENA, "parameters.0", "after templating", "one SQL literal"],
        change=both(variables(p="1; DROP TABLE clientes"),
                    step(3, sql="SELECT * FROM clientes WHERE id = ?", parameters=["{{ p }}"]))),
    # ---- wait intervals: a floor, so a wait is never a burst of calls
    Bad("wait-initial-tiny", [STEP_EXPECT, "wait.initial", "greater than or equal to 0.05"],
        change=wait(1, initial=1e-9, max_interval=1e-9)),
    Bad("wait-max-interval-tiny", [STEP_EXPECT, "wait.max_interval", "greater than or equal to 0.1"],
        change=wait(1, max_interval=1e-9)),
    Bad("athena-wait-initial-tiny", [STEP_ATHENA, "wait.initial", "greater than or equal to 0.05"],
        change=wait(3, initial=1e-9)),
    # ---- secrets in resource names (never masked: links, lock names, events, the pack)
    Bad("secret-in-key-prefix", [STEP_UPLOAD, "key_prefix", SECRET, "{{ token }}"],
        change=both(variables(token=TOKEN), secure("{{ token }}"), step(0, key_prefix="up/{{ token }}/"))),
    Bad("short-secret-in-key", [STEP_EXPECT, "prefix", SECRET],
        change=both(variables(token="pin1"), secure("{{ token }}"), step(1, prefix="in/{{ token }}/"))),
    Bad("secret-in-bucket", [STEP_UPLOAD, "bucket", SECRET],
        change=both(variables(bucket="secret-bucket-99"), secure("{{ bucket }}"))),
    Bad("secret-in-parameter-name", [STEP_SSM, "parameters[1].name", SECRET],
        change=both(variables(token=TOKEN), step(4, parameters=[
            {"name": "/test/k", "value": "{{ token }}", "type": "SecureString"},
            {"name": "/test/{{ token }}", "value": "x"}]))),
    Bad("secret-literal-in-prefix", [STEP_EXPECT, "prefix", SECRET],
        change=both(secure("literal-secret-99"), step(1, prefix="in/literal-secret-99/"))),
    Bad("secret-in-output-location", [STEP_ATHENA, "output_location", SECRET],
        change=both(variables(token=TOKEN), secure("{{ token }}"),
                    step(3, output_location="s3://results-bucket/{{ token }}/"))),
    Bad("secret-from-var-in-key", [STEP_UPLOAD, "key_prefix", SECRET], args=["--var", f"token={TOKEN}x"],
        change=both(variables(token="placeholder"), secure("{{ token }}"), step(0, key_prefix="up/{{ token }}/"))),
    # ---- one pass reports every problem: an unknown field does not hide the others
    Bad("unknown-field-and-more", [STEP_UPLOAD, "buckett", "unknown field", STEP_EXPECT, "unknown variable nope"],
        change=both(step(0, buckett="x"), step(1, prefix="{{ nope }}/"))),
]

CASES: list[Bad] = [
    # ---- bounded: the file and its YAML
    Bad("alias-bomb", ["more than 50,000 values", "alias"], text=header(ALIAS_BOMB)),
    Bad("too-many-aliases", ["more than 100 aliases"],
        text=header(LAMBDA_STEP + "      a: &a x\n      b: [" + ", ".join(["*a"] * 150) + "]\n")),
    Bad("merge-bomb", ["more than 50,000 values"], text=header(MERGE_BOMB)),
    Bad("recursive-alias", ["refers to itself"], text=header(LAMBDA_STEP + "      a: &a [1, *a]\n")),
    Bad("deep-nesting-yaml", ["nests deeper than 64"],
        text=header(LAMBDA_STEP + "      a: " + "[" * 200 + "]" * 200 + "\n")),
    Bad("deep-nesting-json", ["nests deeper than 64"], name="case.json",
        text=json.dumps({**base(), "description": "x"})[:-1] + ', "x": ' + "[" * 5000 + "]" * 5000 + "}"),
    Bad("huge-file", ["1,000,000 bytes"], text="case: x\n# " + "x" * 1_000_100 + "\n"),
    Bad("huge-list", ["more than 50,000 values"],
        text=header(LAMBDA_STEP + "      a: [" + ",".join(["1"] * 60_000) + "]\n")),
    Bad("huge-list-json", ["more than 50,000 values"], name="case.json",
        change=step(2, payload=[0] * 60_000)),
    Bad("many-problems-listed-briefly", ["and 350 more problem(s)", "field 'files."],
        change=step(0, files=[1] * 400)),
    # ---- bounded: templates
    Bad("repeat-bomb", [STEP_LAMBDA, TEMPLATE, "more than 1,000,000 characters"],
        change=payload({"x": "{{ 'a' * 3000000000 }}"})),
    Bad("power-bomb", [STEP_LAMBDA, TEMPLATE, "100,000 bits"], change=payload({"x": "{{ 9 ** 99999999 }}"})),
    Bad("list-repeat-bomb", [STEP_LAMBDA, TEMPLATE, "repeated"], change=payload({"x": "{{ [1, 2] * 10**9 }}"})),
    Bad("center-bomb", [STEP_LAMBDA, TEMPLATE, "center"], change=payload({"x": "{{ 'x'|center(3000000000) }}"})),
    Bad("ljust-bomb", [STEP_LAMBDA, TEMPLATE, "ljust"], change=payload({"x": "{{ 'x'.ljust(10**9) }}"})),
    Bad("printf-width-bomb", [STEP_LAMBDA, TEMPLATE, "% format"], change=payload({"x": "{{ '%0999999999d' % 1 }}"})),
    Bad("format-width-bomb", [STEP_LAMBDA, TEMPLATE, "format spec"],
        change=payload({"x": "{{ '{:>999999999}'.format(1) }}"})),
    Bad("concat-doubling", [STEP_LAMBDA, TEMPLATE, "joined with ~"],
        change=payload({"x": "{% set s = 'a' * 1000000 %}{% set s = s ~ s %}{{ s }}"})),
    Bad("join-bomb", [STEP_LAMBDA, TEMPLATE, "more than"], change=payload({"x": "{{ (['a' * 1000] * 5000)|join }}"})),
    Bad("replace-bomb", [STEP_LAMBDA, TEMPLATE, "replace"],
        change=payload({"x": "{{ ('a' * 1000)|replace('a', 'b' * 10000) }}"})),
    Bad("slice-bomb", [STEP_LAMBDA, TEMPLATE, "slice"], change=payload({"x": "{{ [1]|slice(10**9)|list }}"})),
    Bad("empty-nested-loops", [STEP_LAMBDA, TEMPLATE, "loop iterations"],
        change=payload({"x": "{% for a in range(100000) %}{% for b in range(100000) %}{% endfor %}{% endfor %}"})),
    Bad("long-output", [STEP_LAMBDA, TEMPLATE, "rendered text would be more than"],
        change=payload({"x": "{% for i in range(100000) %}{{ 'x' * 100 }}{% endfor %}"})),
    Bad("recursive-macro", [STEP_LAMBDA, TEMPLATE, "recurses too deeply"],
        change=payload({"x": "{% macro f() %}{{ f() }}{% endmacro %}{{ f() }}"})),
    # refused with exit 2 naming a limit; which one (and so which step the message names) depends on the machine's
    # speed and load: the sandbox's count of operations, its rendering deadline, or validation's own deadline
    Bad("exponential-macro", [], subprocess=True, expect_any=LIMITS,
        change=payload({"x": "{% macro f(n) %}{% if n %}{{ f(n-1) }}{{ f(n-1) }}{% endif %}{% endmacro %}"
                             "{{ f(40) }}"})),
    Bad("too-many-tags", [STEP_LAMBDA, TEMPLATE, "tags"], change=payload({"x": "{{ bucket }}" * 300})),
    Bad("variable-bomb", ["case: field 'variables'", "more than 1,000,000 characters"],
        change=variables(big="{{ 'a' * 10**8 }}")),
    Bad("validation-time-limit", ["validation took longer than"], patch={"VALIDATION_SECONDS": -1.0}),
    # ---- the file itself
    Bad("duplicate-key-top", ["duplicate key 'case' on line 2 (first on line 1)"],
        text="case: one\ncase: two\nsteps: []\n"),
    Bad("duplicate-key-step", ["duplicate key 'bucket' on line"], text=header(
        "  - kind: expect_objects\n    bucket: bucket-one\n    bucket: bucket-two\n    prefix: x/\n")),
    Bad("duplicate-key-json", ["duplicate key 'case'"], name="case.json", text='{"case": "a", "case": "b"}'),
    Bad("binary-file", ["binary"], text=b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(range(256))),
    Bad("not-utf8", ["not UTF-8"], text="case: caf\xe9\nsteps: []\n".encode("latin-1")),
    Bad("empty-directory", ["holds no case file"], setup=lambda d: (d / "folder.yaml").mkdir(), name="folder.yaml"),
    Bad("missing-file", ["spec file not found"], name="nowhere.yaml"),
    Bad("empty-file", ["must be a mapping"], text=""),
    Bad("list-at-top", ["must be a mapping"], text="- case: x\n"),
    Bad("yaml-syntax", ["not valid YAML", "line"], text="case: [unclosed\nsteps: x\n"),
    Bad("json-syntax", ["not valid JSON"], name="case.json", text='{"case": "x",}'),
    # ---- numbers: finite and bounded
    Bad("timeout-inf", [STEP_EXPECT, "wait.timeout", "finite"], change=wait(1, timeout=float("inf"))),
    Bad("timeout-nan", [STEP_EXPECT, "wait.timeout", "finite"], change=wait(1, timeout=float("nan"))),
    Bad("timeout-1e300", [STEP_EXPECT, "wait.timeout", "less than or equal to 604800"], change=wait(1, timeout=1e300)),
    Bad("interval-inf", [STEP_EXPECT, "wait.max_interval"], change=wait(1, max_interval=float("inf"))),
    Bad("initial-negative", [STEP_EXPECT, "wait.initial", "greater than or equal to 0.05"], change=wait(1, initial=-1)),
    Bad("athena-timeout-1e300", [STEP_ATHENA, "wait.timeout"], change=wait(3, timeout=1e300)),
    Bad("variable-inf", ["case: field 'variables.x", "finite number"], change=variables(x=float("inf"))),
    Bad("multipart-absurd", [STEP_UPLOAD, "multipart_threshold_mb"], change=step(0, multipart_threshold_mb=10**300)),
    # ---- local files: present, readable, confined
    Bad("upload-missing", [STEP_UPLOAD, "files[0]", "not found"], change=step(0, files=["data/nope.csv"])),
    Bad("glob-no-match", [STEP_UPLOAD, "files[0]", "no local file matches"], change=step(0, files=["data/*.parquet"])),
    Bad("payload-file-not-json", [STEP_LAMBDA, "payload_file", "not valid JSON"],
        change=step(2, payload=..., payload_file="event.json"), setup=lambda d: _write(d, "event.json", "{not json")),
    Bad("payload-file-missing", [STEP_LAMBDA, "payload_file", "not found"],
        change=step(2, payload=..., payload_file="nope.json")),
    Bad("payload-file-directory", [STEP_LAMBDA, "payload_file", "is a directory"],
        change=step(2, payload=..., payload_file="data")),
    Bad("sql-file-missing", [STEP_ATHENA, "sql_file", "not found"], change=step(3, sql=..., sql_file="q.sql")),
    Bad("sql-file-not-utf8", [STEP_ATHENA, "sql_file", "not UTF-8"], change=step(3, sql=..., sql_file="q.sql"),
        setup=lambda d: _write(d, "q.sql", "SELECT 'caf\xe9'".encode("latin-1"))),
    Bad("upload-dotdot", [STEP_UPLOAD, "files[0]", "outside", "--files-root"],
        change=step(0, files=["../outside.csv"]), setup=lambda d: _write(d.parent, "outside.csv", "secret")),
    Bad("upload-absolute", [STEP_UPLOAD, "files[0]", "outside", "--files-root"],
        change=step(0, files=["/etc/hostname"])),
    Bad("upload-symlink-out", [STEP_UPLOAD, "files[0]", "outside"], change=step(0, files=["data/link.csv"]),
        setup=lambda d: (d / "data" / "link.csv").symlink_to("/etc/hostname")),
    Bad("glob-dotdot", [STEP_UPLOAD, "files[0]", "outside"], change=step(0, files=["../*.csv"])),
    Bad("templated-path-escapes", [STEP_UPLOAD, "files[0]", "outside"],
        change=lambda raw: (variables(dir="..")(raw), step(0, files=["{{ dir }}/x.csv"])(raw))),
    Bad("sql-file-outside", [STEP_ATHENA, "sql_file", "outside"], change=step(3, sql=..., sql_file="/etc/hostname")),
    Bad("files-root-missing", ["--files-root", "not a folder"], args=["--files-root", "no/such/folder"]),
    # ---- credentials anywhere
    Bad("credential-variable", ["case: field 'variables.aws_secret_access_key'", "credential"],
        change=variables(aws_secret_access_key="abc")),
    Bad("credential-key-in-payload", [STEP_LAMBDA, "payload.auth.Session_Token", "credential"],
        change=payload({"auth": {"Session_Token": "abc"}})),
    Bad("access-key-id-value", ["case: field 'variables.key'", "access key id"], change=variables(key=ACCESS_KEY_ID)),
    Bad("access-key-id-in-payload", [STEP_LAMBDA, "payload.items.1", "access key id"],
        change=payload({"items": ["a", f"id={ACCESS_KEY_ID}"]})),
    Bad("secret-key-in-parameter", [STEP_SSM, "parameters.0.value", "secret access key"],
        change=step(4, parameters=[{"name": "/test/k", "value": SECRET_KEY, "type": "SecureString"}])),
    Bad("credential-in-var", ["variables.bucket", "access key id"], args=["--var", f"bucket={ACCESS_KEY_ID}"]),
    Bad("password-under-aws", ["case: field 'aws'", "credentials never go in a spec"], change=aws(password="abc")),
    # ---- S3 keys
    Bad("key-prefix-dotdot", [STEP_UPLOAD, "key_prefix", "'..'"], change=step(0, key_prefix="in/../out/")),
    Bad("key-leading-slash", [STEP_UPLOAD, "key", "start with '/'"], change=step(0, key_prefix=..., key="/in/a.csv")),
    Bad("expect-keys-dotdot", [STEP_EXPECT, "keys.0", "'..'"], change=step(1, prefix=..., keys=["a/../b"])),
    Bad("prefix-rendered-slash", [STEP_EXPECT, "prefix", "after templating", "start with '/'"],
        change=lambda raw: (variables(p="/abs")(raw), step(1, prefix="{{ p }}/x")(raw))),
    Bad("athena-output-dotdot", [STEP_ATHENA, "output_location", "'..'"],
        change=step(3, output_location="s3://results-bucket/a/../b/")),
    Bad("evidence-prefix-dotdot", ["case: field 'evidence.prefix'", "'..'"],
        change=top(evidence={"bucket": "evidence-bucket", "prefix": "../up/"})),
    # ---- the evidence folder, before anything runs
    Bad("evidence-dir-not-empty", ["--evidence-dir", "is not empty"], args=["--evidence-dir", "full"],
        setup=lambda d: _write(d, "full/old.txt", "x")),
    Bad("evidence-dir-is-a-file", ["--evidence-dir", "is not a folder"], args=["--evidence-dir", "data/orders.csv"]),
    # ---- everyday mistakes
    Bad("wrong-type", [STEP_EXPECT, "min_size", "valid integer"], change=step(1, min_size="big")),
    Bad("unknown-kind", ["step 6 (uplod)", "unknown kind 'uplod'"],
        change=lambda raw: raw["steps"].append({"kind": "uplod"})),
    Bad("missing-kind", ["step 6", "missing 'kind'"], change=lambda raw: raw["steps"].append({"name": "x"})),
    Bad("unknown-field", [STEP_UPLOAD, "buckett", "unknown field"], change=step(0, buckett="x")),
    Bad("unknown-variable", [STEP_UPLOAD, "key_prefix", "unknown variable run_dat"],
        change=step(0, key_prefix="in/{{ run_dat }}/")),
    Bad("template-syntax", [STEP_UPLOAD, "key_prefix", "template syntax error"], change=step(0, key_prefix="{{ x")),
    Bad("later-variable", ["case: field 'variables.a'", "unknown variable b"],
        change=lambda raw: raw.update(variables={"a": "{{ b }}", "b": "x", "bucket": "landing-bucket", "dir": "d"})),
    Bad("bad-name-pattern", ["step 1 'bad/name!' (upload)", "field 'name'", "pattern"],
        change=step(0, name="bad/name!")),
    Bad("bad-jmespath", [STEP_LAMBDA, "expect", "JMESPath"], change=step(2, expect={"jmespath": {"a[": 1}})),
    Bad("writing-sql", [STEP_ATHENA, "field 'sql'", "DELETE"], change=step(3, sql="DELETE FROM t")),
    Bad("two-statements", [STEP_ATHENA, "field 'sql'", "2 statements"], change=step(3, sql="SELECT 1; SELECT 2")),
    Bad("unparsable-sql", [STEP_ATHENA, "field 'sql'", "could not be parsed"], change=step(3, sql="SELEC 1 FROM")),
    Bad("wrong-enum", [STEP_LAMBDA, "invocation_type"], change=step(2, invocation_type="Sync")),
    Bad("negative-count", [STEP_EXPECT, "count", "greater than or equal to 0"], change=step(1, count=-1)),
    Bad("unknown-timezone", ["case: field 'timezone'", "unknown time zone"], change=top(timezone="Mars/Olympus")),
    Bad("empty-steps", ["case: field 'steps'", "at least 1 item"], change=top(steps=[])),
    Bad("steps-not-a-list", ["case: field 'steps'", "valid list"], change=top(steps={"kind": "upload"})),
    Bad("missing-case-name", ["case: field 'case'", "Field required"], change=lambda raw: raw.pop("case")),
    Bad("bad-bucket", [STEP_UPLOAD, "bucket", "S3 bucket name"], change=step(0, bucket="Not A Bucket")),
    Bad("bad-bucket-rendered", [STEP_UPLOAD, "bucket", "after templating"], change=variables(bucket="x")),
    Bad("duplicate-step-name", ["step 2 'land' (expect_objects)", "already used by step 1"],
        change=step(1, name="land")),
    Bad("parameter-outside-prefix", [STEP_SSM, "parameters", "outside the allowed parameter prefixes"],
        change=step(4, parameters=[{"name": "/prod/x", "value": "y"}])),
    Bad("nested-parallel", ["step 6.1", "unknown kind 'parallel'"],
        change=lambda raw: raw["steps"].append({"kind": "parallel", "steps": [{"kind": "parallel", "steps": []}]})),
    Bad("unknown-var-override", ["--var nope", "no such variable"], args=["--var", "nope=1"]),
    Bad("bad-var-syntax", ["--var 'novalue'", "expected name=value"], args=["--var", "novalue"], names_file=False),
    *MORE_CASES,
]
#: also run for real (no traceback, exit code 2, under the memory cap): a binary file, a bomb and a depth
SUBPROCESS_TOO = {"binary-file", "translate-bomb", "payload-file-deep-list"}


def make(bad: Bad, folder: Path) -> Path:
    """Write the bad input (and the files a valid case needs) into ``folder``; returns the spec's path."""
    _write(folder, "data/orders.csv", "id,amount\n1,10\n")
    if bad.setup:
        bad.setup(folder)
    path = folder / bad.name
    if bad.text is not None:
        _write(folder, bad.name, bad.text)
    elif bad.id != "missing-file" and not path.exists():
        raw = base()
        if bad.change:
            bad.change(raw)
        _write(folder, bad.name, json.dumps(raw) if bad.name.endswith(".json") else yaml.safe_dump(raw))
    return path


def test_the_base_case_is_valid(tmp_path: Path, no_aws: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    path = make(Bad("valid", []), tmp_path)
    assert cli.main([str(path), "--validate"]) == 0, capsys.readouterr().err
    assert no_aws == []


def test_the_table_is_big_enough() -> None:
    assert len(CASES) >= 60 and len({b.id for b in CASES}) == len(CASES)
    assert len(MORE_CASES) >= 40  # issue 23's corpus


@pytest.mark.parametrize("bad", [b for b in CASES if not b.subprocess], ids=lambda b: b.id)
def test_bad_input_is_refused_in_process(bad: Bad, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                         no_aws: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    path = make(bad, tmp_path)
    for name, value in bad.patch.items():
        monkeypatch.setattr(spec_module, name, value)
    tracemalloc.start()
    started = time.process_time()
    try:
        code = cli.main([str(path), "--validate", *bad.args])
    finally:
        elapsed = time.process_time() - started
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    out, err = capsys.readouterr()
    assert code == 2, out + err
    _check_message(bad, path, out + err)
    assert elapsed < MAX_SECONDS, f"{bad.id} took {elapsed:.1f} s of CPU"
    assert peak < MAX_BYTES, f"{bad.id} peaked at {peak / 1e6:.0f} MB"
    assert no_aws == []


def _check_message(bad: Bad, path: Path, output: str) -> None:
    assert "Traceback" not in output, output
    assert path.name in output or not bad.names_file, output
    for text in bad.expect:
        assert text in output, f"{bad.id}: {text!r} not in:\n{output}"
    assert not bad.expect_any or any(text in output for text in bad.expect_any), \
        f"{bad.id}: none of {bad.expect_any} in:\n{output}"
    # a case says "Nothing was run: no AWS call was made.", a suite (a folder) "... no case started, no AWS ..."
    assert "Nothing was run: " in output and "no AWS call was made." in output, output


#: the child caps its address space at what it holds after its imports plus MAX_BYTES (so a bomb computed before
#: it is refused ends in a MemoryError, not in a swapping machine), and reports how much its resident memory grew
#: while validating (ru_maxrss is in KiB on Linux)
CHILD = f"""
import os, resource, sys, time
from flows.cli import main
if os.path.exists("/proc/self/statm"):
    size = int(open("/proc/self/statm").read().split()[0]) * resource.getpagesize()
    resource.setrlimit(resource.RLIMIT_AS, (size + {MAX_BYTES}, resource.getrlimit(resource.RLIMIT_AS)[1]))
before, started = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, time.process_time()
code = main(sys.argv[1:])
grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
print(f"grown-kib={{grown}} seconds={{time.process_time() - started:.2f}}", file=sys.stderr)
sys.exit(code)
"""


@pytest.mark.e2e  # starts a process (tests/fixtures/tiers.py)
def test_bad_input_is_refused_by_the_real_command(tmp_path: Path) -> None:
    """Real processes, side by side: exit code 2 and no traceback; validation's CPU time and memory (ru_maxrss growth)
    measured in the child after its imports; AWS points at a closed port, so a call could not succeed."""
    chosen = [b for b in CASES if b.subprocess or b.id in SUBPROCESS_TOO]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "PREFECT_"))}
    env.update(PYTHONPATH=str(ROOT), PYTHONIOENCODING="utf-8", AWS_ENDPOINT_URL="http://127.0.0.1:9",
               AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing", AWS_DEFAULT_REGION="us-east-1")
    runs = []
    for bad in chosen:  # started together: the file waits for about one Python start-up
        folder = tmp_path / bad.id
        folder.mkdir()
        path = make(bad, folder)
        argv = [sys.executable, "-c", CHILD, str(path), "--validate", *bad.args]
        runs.append((bad, path, subprocess.Popen(argv, cwd=folder, env=env, text=True, stdout=subprocess.PIPE,
                                                 stderr=subprocess.PIPE)))
    for bad, path, proc in runs:
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 2, out + err
        _check_message(bad, path, out + err)
        grown, seconds = re.search(r"grown-kib=(\d+) seconds=([\d.]+)", err).groups()  # type: ignore[union-attr]
        assert int(grown) * 1024 < MAX_BYTES, f"{bad.id} grew by {int(grown) / 1024:.0f} MB"
        assert float(seconds) < MAX_SECONDS, f"{bad.id} took {seconds} s of CPU"


@pytest.mark.parametrize("template, expected", [
    ("{{ bucket }}/{{ run_at.strftime('%Y/%m') }}", "b/2026/01"),
    ("{% for i in range(3) %}{{ i }}{% if not loop.last %},{% endif %}{% endfor %}", "0,1,2"),
    ("{{ bucket ~ '-' ~ 7 }}|{{ bucket|upper }}|{{ '%05d' % 42 }}|{{ '{:>4}'.format(bucket) }}", "b-7|B|00042|   b"),
    ("{{ ','.join(['a', 'b']) }}|{{ [1, 2]|join('-') }}|{{ 'x' * 3 }}|{{ 2 ** 10 }}|{{ 'ab'|replace('a', 'c') }}",
     "a,b|1-2|xxx|1024|cb"),
    ("{% macro m(a) %}<{{ a }}>{% endmacro %}{{ m(1) }}{{ (bucket + 'y')|center(5) }}", "<1>  by "),
    ("{% set ns = namespace(n=1) %}{% for _ in range(3) %}{% set ns.n = ns.n * 2 %}{% endfor %}{{ ns.n }}", "8"),
])
def test_ordinary_templates_still_render(template: str, expected: str) -> None:
    """The bounds refuse bombs, not everyday templates."""
    from datetime import datetime, timezone

    from flows.spec.templating import builtin_values, render

    values = {**builtin_values("c", "r", datetime(2026, 1, 2, tzinfo=timezone.utc), "UTC"), "bucket": "b"}
    assert render(template, values) == expected


# ------------------------------------------------------------------------- --plan and --iam-policy (issue 27)
PLAN_CASES = [
    Bad("plan-unknown-account", ["--account '12345'", "not an AWS account id"], args=["--account", "12345"],
        names_file=False),
    Bad("plan-account-in-the-case", ["aws.account_id", "should match pattern"],
        change=lambda raw: raw["aws"].update(account_id="prod")),
    Bad("plan-region", ["--region 'moon-1'", "not an AWS region"], args=["--region", "moon-1"], names_file=False),
    Bad("plan-kms-alias", ["--kms-key-arn 'alias/aws/ssm'", "an alias does not scope a policy"],
        args=["--kms-key-arn", "alias/aws/ssm"], names_file=False),
    Bad("plan-wildcard-in-a-prefix", ["aws.allowed_parameter_prefixes", "'/other/*' holds a wildcard"],
        change=lambda raw: raw["aws"].update(allowed_parameter_prefixes=["/test/", "/other/*"])),
    Bad("plan-no-aws-steps", ["field 'steps'", "at least 1 item"], change=top(steps=[])),
]


@pytest.mark.parametrize("flag", ["--plan", "--iam-policy"])
@pytest.mark.parametrize("bad", PLAN_CASES, ids=lambda b: b.id)
def test_plan_and_policy_refuse_bad_input(bad: Bad, flag: str, tmp_path: Path, no_aws: list[str],
                                          capsys: pytest.CaptureFixture[str]) -> None:
    """--plan and --iam-policy validate like a run (exit 2, file and field named, no AWS call), and refuse what
    a policy cannot be scoped by: an account or region that is not one, a KMS alias, a wildcard in a prefix."""
    path = make(bad, tmp_path)
    code = cli.main([str(path), flag, *bad.args])
    out, err = capsys.readouterr()
    assert code == 2, out + err
    _check_message(bad, path, out + err)
    assert no_aws == []


def test_the_policy_refuses_a_wildcard_in_a_resource_name(tmp_path: Path, no_aws: list[str],
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    """A key prefix with * would make the policy grant more than the case names: --iam-policy refuses it (the plan
    shows it)."""
    bad = Bad("policy-wildcard-key", ["'s3://landing-bucket/in/*/' holds an IAM wildcard"],
              change=step(0, key_prefix="in/*/"))
    path = make(bad, tmp_path)
    assert cli.main([str(path), "--iam-policy"]) == 2
    _check_message(bad, path, "".join(capsys.readouterr()))
    assert cli.main([str(path), "--plan"]) == 0
    assert no_aws == []
