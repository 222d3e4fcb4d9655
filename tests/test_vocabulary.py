"""One vocabulary: every status has one line in tasks/kit/status.py and every reader's format uses it; one
console-link builder decides real AWS or emulator; one rule names the default pack folder. The greps below fail on a
new table of statuses, a new status mark or console address written by hand elsewhere."""

from __future__ import annotations

import ast
import typing
from datetime import datetime, timezone
from pathlib import Path

from flows.evidence import report as report_model
from flows.evidence.pack import files as pack_files
from flows.evidence.pack.html import CSS, badge
from tasks.kit import status
from tasks.kit.console_links import console_url, links_for, literal, s3_link

ROOT = Path(__file__).resolve().parent.parent
PRODUCT = sorted(p for folder in ("flows", "tasks") for p in (ROOT / folder).rglob("*.py"))
STATUS_WORDS = set(status.STATUS)
MARKS = {look.mark for look in status.STATUS.values()} | {look.slack for look in status.STATUS.values()}


def _strings(tree: ast.AST) -> list[tuple[int, str]]:
    """The module's string constants (f-strings' literal parts too), docstrings left out."""
    docstrings = {id(node.body[0].value) for node in ast.walk(tree)
                  if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
                  and node.body and isinstance(node.body[0], ast.Expr)
                  and isinstance(node.body[0].value, ast.Constant)}
    return [(node.lineno, node.value) for node in ast.walk(tree)
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings]


def _where(path: Path, line: int) -> str:
    return f"{path.relative_to(ROOT).as_posix()}:{line}"


def test_every_status_the_models_allow_has_its_line() -> None:
    allowed = {*typing.get_args(report_model.StepStatus), *typing.get_args(report_model.CaseStatus),
               *typing.get_args(report_model.CaseVerdict)}
    assert allowed <= STATUS_WORDS, f"add a line to tasks/kit/status.py STATUS for {sorted(allowed - STATUS_WORDS)}"
    assert status.STEP_STATUSES == typing.get_args(report_model.StepStatus)
    assert set(report_model.Counts.model_fields) == {"total", *status.STEP_STATUSES}


def test_a_status_shows_the_same_everywhere() -> None:
    assert status.marked("failed") == "❌ failed" and status.headline("passed") == "✅ PASSED"
    assert status.card_word("error") == "ERROR" and status.card_word("passed") == "passed"
    assert status.short("skipped") == "SKIP" and status.check_verdict(False) == "❌ FAIL"
    assert badge("not run") == '<span class="badge not-run ">NOT RUN</span>'
    for name, look in status.STATUS.items():  # every status has its colours in the pages' CSS
        assert f"--{status.css_class(name)}: {look.colour}" in CSS and f".{status.css_class(name)} {{" in CSS


def test_no_other_table_of_statuses() -> None:
    """A dict literal keyed by two or more statuses, or a status mark or Slack emoji written out, outside
    tasks/kit/status.py, is a second vocabulary."""
    stray = []
    for path in PRODUCT:
        if path == ROOT / "tasks" / "kit" / "status.py":
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.Dict) and node.values and all(
                    isinstance(v, ast.JoinedStr) or isinstance(v, ast.Constant) and isinstance(v.value, str)
                    for v in node.values):
                keys = {k.value for k in node.keys if isinstance(k, ast.Constant) and isinstance(k.value, str)}
                if len(keys & STATUS_WORDS) >= 2:
                    stray.append(f"{_where(path, node.lineno)}: a table of statuses")
        stray += [f"{_where(path, line)}: {text!r}" for line, text in _strings(tree)
                  if any(mark in text for mark in MARKS)]
    assert stray == [], "use tasks/kit/status.py: " + "; ".join(stray)


def test_no_other_console_link_builder() -> None:
    """Only tasks/kit/console_links.py writes the console's address (and so decides AWS or emulator for a link)."""
    found = [_where(path, line) for path in PRODUCT if path != ROOT / "tasks" / "kit" / "console_links.py"
             for line, text in _strings(ast.parse(path.read_text(encoding="utf-8"))) if "console.aws.amazon.com" in text]
    assert found == []


def test_console_links_on_aws_and_on_an_emulator() -> None:
    aws, moto = "https://glue.eu-west-1.amazonaws.com", "http://127.0.0.1:5000"
    assert console_url("glue/home?region={region}#/job/" + literal("a{b}"), "eu-west-1") == \
        "https://eu-west-1.console.aws.amazon.com/glue/home?region=eu-west-1#/job/a{b}"
    assert [link.text for link in links_for(aws, None, "x?region={region}", "job")] == ["job"]
    assert links_for(moto, "eu-west-1", "x", "job") == []
    assert s3_link(aws, "eu-west-1", "b", "p/k.csv").url == \
        "https://s3.console.aws.amazon.com/s3/object/b?region=eu-west-1&prefix=p%2Fk.csv"
    assert s3_link(aws, None, "b", "packs/run/", folder=True).url == \
        "https://s3.console.aws.amazon.com/s3/buckets/b?region=us-east-1&prefix=packs%2Frun%2F&showversions=false"
    assert s3_link(moto, "eu-west-1", "b", "packs/run/", folder=True).url == f"{moto}/b/packs/run/"


def test_one_rule_for_the_default_pack_folder() -> None:
    started = datetime(2026, 3, 14, 9, 26, 53, tzinfo=timezone.utc)
    run = "0f5e2a9c-1b2d-4c3e-8f90-123456789abc"
    assert pack_files.run_pack_dir("Orders ingestion", started, run).as_posix() == \
        "evidence/orders-ingestion/20260314T092653Z-0f5e2a9c"
    assert pack_files.run_pack_dir("Nightly", started, "local", suite=True).as_posix() == \
        "evidence/suites/nightly/20260314T092653Z-local"
    assert pack_files.pack_parent("Nightly", suite=True) == pack_files.EVIDENCE_ROOT / "suites" / "nightly"
    # no module but flows/evidence/pack/files.py makes a path of the evidence folder
    named = [_where(path, node.lineno) for path in PRODUCT if path != ROOT / "flows" / "evidence" / "pack" / "files.py"
             for node in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
             if isinstance(node, ast.Call) and any(isinstance(a, ast.Constant) and a.value in ("evidence", "suites")
                                                   for a in node.args)]
    assert named == [], f"the default pack folder is flows/evidence/pack/files.py's rule: {named}"
