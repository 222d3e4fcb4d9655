"""The evidence pack: a folder that every run leaves, which a reviewer can read offline and verify later.

A pack holds:

    report.json    machine-readable record (schema: flows/report.schema.json, ``schema_version`` 1)
    report.md      the same for people (the content of the UI artifacts)
    report.html    one self-contained page (no network, no script), printable; failures first
    junit.xml      one testcase per step, for Jenkins, GitLab and GitHub
    spec.yaml      a copy of the spec file as run (spec.json for a JSON spec), when the run had one
    manifest.json  SHA-256 and size of every other file of the pack, and the SHA-256 the run recorded for
                   every uploaded input file and query result (written last: no manifest, no complete pack)

``python -m flows.evidence_pack verify DIR`` (and ``python -m flows.evidence verify DIR``) checks a pack:
exit 0 when intact, 1 naming every changed, missing or extra file. The manifest cannot hash itself: to
anchor it, keep its SHA-256 elsewhere (the flow logs it and puts it in the link artifact) and pass
``--manifest-sha256 HEX``.

Hashes of things outside the pack come from the steps' details, by these conventions:

- ``details["uploads"][i]`` with ``sha256`` (and ``bucket``, ``key``, ``size``, ``local_path``): an input;
- ``details["result_sha256"]`` (with ``query_id``, ``output_location`` or ``result_location``, and
  ``row_count``): a query result.

No secret may reach the pack: step results are masked at the source, and :func:`write_pack` masks the run's
known secrets (``secrets``, the run's registry) in the *values* of the result and report before any file is
built (never in a file's finished text, so no file's syntax can break): long secrets inside any string value,
and, in the spec's copy, its validated form and the variables, any value that *is* a secret. The spec's copy
is masked at the YAML value level (parsed, masked, dumped). Names, keys and schema strings are never masked.

The pack is private by default: folders 0700, files 0600 (set ``PIPELINE_TEST_PACK_PRIVATE=false``, or pass
``private=False``, for the process's usual permissions).
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import html
import json
import os
import re
import sys
import xml.etree.ElementTree as ET
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Literal, Sequence

from flows.results import CaseResult, StepResult
from tasks import markdown as md
from tasks.base import format_duration
from tasks.secrets import NAMES, mask_document_text, redact_json

if TYPE_CHECKING:
    from flows.spec import CaseSpec

REPORT_SCHEMA = "pipeline-test/evidence-report"
MANIFEST_SCHEMA = "pipeline-test/evidence-manifest"
SCHEMA_VERSION = 1
SCHEMA_FILE = Path(__file__).with_name("report.schema.json")

REPORT_JSON = "report.json"
REPORT_MD = "report.md"
REPORT_HTML = "report.html"
JUNIT_XML = "junit.xml"
MANIFEST = "manifest.json"
#: files every pack has (besides the manifest); a manifest that does not list one of them is not a pack's
REQUIRED_FILES = (REPORT_JSON, REPORT_MD, REPORT_HTML, JUNIT_XML)
CONTENT_TYPES = {
    ".json": "application/json",
    ".md": "text/markdown; charset=utf-8",
    ".html": "text/html; charset=utf-8",
    ".xml": "application/xml",
    ".yaml": "application/yaml",
    ".yml": "application/yaml",
}
STATUS_WORD = {"passed": "PASSED", "failed": "FAILED", "error": "ERROR", "skipped": "SKIPPED"}
SSE_VALUES = ("AES256", "aws:kms", "aws:kms:dsse")
_XML_INVALID = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_HTML_INVALID = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")
PRIVATE_ENV = "PIPELINE_TEST_PACK_PRIVATE"


# --------------------------------------------------------------------------------------------------- naming
def _utc(moment: datetime) -> datetime:
    """A datetime in UTC (naive ones are taken as UTC)."""
    return moment.replace(tzinfo=timezone.utc) if moment.tzinfo is None else moment.astimezone(timezone.utc)


def _iso(moment: datetime | None) -> str | None:
    return _utc(moment).isoformat(timespec="seconds").replace("+00:00", "Z") if moment else None


def _case_slug(case: str) -> str:
    from flows.spec import slug  # lazy: flows.spec loads every step kind (boto3), verify needs none of it

    return slug(case) or "case"


def pack_name(result: CaseResult) -> str:
    """``<YYYYmmddTHHMMSSZ>-<first 8 characters of the run id>``: sorts by time, unique per run."""
    run = re.sub(r"[^A-Za-z0-9]+", "", result.flow_run_id or "")[:8] or "local"
    return f"{_utc(result.started_at):%Y%m%dT%H%M%SZ}-{run}"


def default_pack_dir(base: Path, result: CaseResult) -> Path:
    """The pack's default folder: ``<base>/<case-slug>/<YYYYmmddTHHMMSSZ>-<run id prefix>/``."""
    return Path(base) / _case_slug(result.case) / pack_name(result)


def pack_prefix(base_prefix: str, result: CaseResult) -> str:
    """The S3 key prefix of a run's pack under ``base_prefix``: ``<base>/<case-slug>/<time>-<run>/`` (POSIX)."""
    base = base_prefix.strip("/")
    return "/".join(p for p in (base, _case_slug(result.case), pack_name(result)) if p) + "/"


# --------------------------------------------------------------------------------------------------- hashing
def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: Path) -> str:
    """SHA-256 of a file's bytes, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def manifest_sha256(folder: Path) -> str:
    """SHA-256 of a pack's manifest.json: keep it outside the pack to anchor the manifest itself."""
    return sha256_file(Path(folder) / MANIFEST)


@dataclass(frozen=True)
class HashedItem:
    """Something outside the pack whose SHA-256 the run recorded: an uploaded input file or a query result."""

    kind: Literal["input", "query_result"]
    step: str
    label: str
    location: str
    sha256: str
    size: int | None = None
    local_path: str | None = None
    query_id: str | None = None
    rows: int | None = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def _is_sha256(value: Any) -> bool:
    return isinstance(value, str) and bool(_SHA256.match(value.lower()))


def _int_or_none(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _uploads(step: StepResult) -> list[HashedItem]:
    uploads = step.details.get("uploads")
    items = []
    for entry in uploads if isinstance(uploads, list) else []:
        if isinstance(entry, dict) and _is_sha256(entry.get("sha256")):
            location = f"s3://{entry.get('bucket') or step.details.get('bucket', '')}/{entry.get('key', '')}"
            items.append(HashedItem("input", step.number, step.label, location, entry["sha256"].lower(),
                                    size=_int_or_none(entry.get("size")), local_path=entry.get("local_path")))
    return items


def _query_result(step: StepResult) -> list[HashedItem]:
    digest = step.details.get("result_sha256")
    if not _is_sha256(digest):
        return []
    d = step.details
    location = str(d.get("result_location") or d.get("output_location") or f"query {d.get('query_id', '?')}")
    return [HashedItem("query_result", step.number, step.label, location, digest.lower(),
                       size=_int_or_none(d.get("result_size")), query_id=d.get("query_id"),
                       rows=_int_or_none(d.get("row_count")))]


def hashed_items(result: CaseResult) -> list[HashedItem]:
    """Every input file and query result whose SHA-256 a step recorded in its details, in step order."""
    return [item for step in result.steps for item in _uploads(step) + _query_result(step)]


# ---------------------------------------------------------------------------------------------- redaction
def redact_result(result: CaseResult, secrets: Sequence[str]) -> CaseResult:
    """A copy of the result with known secrets masked in its string values (names kept; the variables, as
    values of the spec, also when one *is* a short secret)."""
    data = result.model_dump(mode="json", fallback=str)
    if not secrets:
        return CaseResult.model_validate(data)
    data = redact_json(data, secrets, keep=NAMES)
    data["variables"] = redact_json(data.get("variables") or {}, secrets, exact=True)
    return CaseResult.model_validate(data)


def _redact_item(item: HashedItem, secrets: Sequence[str]) -> HashedItem:
    return HashedItem(**redact_json(item.to_json(), secrets, keep=NAMES)) if secrets else item


# ------------------------------------------------------------------------------------------------- report.json
def _generator_version() -> str:
    try:
        from importlib.metadata import version

        return version("pipeline-test")
    except Exception:  # running from a checkout that was never installed
        return "unknown"


def _canonical(data: Any) -> bytes:
    return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str).encode("utf-8")


def _counts(result: CaseResult) -> dict[str, int]:
    counts = {"total": len(result.steps), "passed": 0, "failed": 0, "error": 0, "skipped": 0}
    for step in result.steps:
        counts[step.status] += 1
    return counts


def spec_copy_name(spec_path: str | Path | None) -> str:
    """The name of the spec's copy in the pack: spec.json for a .json spec, else spec.yaml."""
    return "spec.json" if spec_path and str(spec_path).lower().endswith(".json") else "spec.yaml"


def build_report(result: CaseResult, case: CaseSpec | None, *, spec_text: str | None, spec_path: str | None,
                 items: Sequence[HashedItem], generated_at: datetime, secrets: Sequence[str] = ()) -> dict[str, Any]:
    """The content of report.json (see flows/report.schema.json); ``result`` is already redacted.

    The spec's hashes are of what the pack shows (the copy, ``spec.validated``), so a reviewer can recompute
    them; without secrets in the spec that is the file itself. Hashing the unmasked text instead would let
    anyone confirm a guess of a weak secret offline.
    """
    validated = case.model_dump(mode="json", exclude_unset=True, fallback=str) if case is not None else None
    validated = redact_json(validated, secrets, keep=NAMES, exact=True) if validated is not None else None
    shown_text = (mask_document_text(spec_text, secrets, spec_copy_name(spec_path) == "spec.json")
                  if spec_text is not None else None)
    failure = result.first_failure
    return {
        "schema": REPORT_SCHEMA,
        "schema_version": SCHEMA_VERSION,
        "generated_at": _iso(generated_at),
        "generator": {"name": "pipeline-test", "version": _generator_version()},
        "case": {"name": result.case, "slug": _case_slug(result.case), "description": result.description},
        "spec": {
            "source": spec_path,
            "file": spec_copy_name(spec_path) if shown_text is not None else None,
            "sha256": sha256_bytes(shown_text.encode("utf-8")) if shown_text is not None else None,
            "case_sha256": sha256_bytes(_canonical(validated)) if validated is not None else None,
            "redacted": shown_text is not None and shown_text != spec_text,
            "validated": validated,
        },
        "run": {
            "flow_run_id": result.flow_run_id,
            "ui_url": result.ui_url,
            "started_at": _iso(result.started_at),
            "ended_at": _iso(result.ended_at),
            "duration_s": result.duration_s,
            "aws": redact_json(case.aws.model_dump(mode="json", exclude_none=True), secrets, keep=NAMES)
            if case else {},
        },
        "status": result.status,
        "counts": _counts(result),
        "first_failure": None if failure is None else {
            "number": failure.number, "label": failure.label, "status": failure.status,
            "error": failure.error, "error_code": failure.error_code,
        },
        "variables": result.variables,
        "steps": [s.model_dump(mode="json", fallback=str) for s in result.steps],
        "inputs": [i.to_json() for i in items if i.kind == "input"],
        "query_results": [i.to_json() for i in items if i.kind == "query_result"],
    }


def _json_text(data: Any) -> str:
    return json.dumps(data, indent=2, ensure_ascii=False, default=str) + "\n"


# --------------------------------------------------------------------------------------------------- report.md


def _items_markdown(items: Sequence[HashedItem]) -> list[str]:
    if not items:
        return []
    rows = []
    for i in items:
        if i.kind == "input":
            what = md.Md("input" + (f" {md.cell(md.code(i.local_path))}" if i.local_path else ""))
        else:
            what = md.Md("query result" + (f" {md.cell(md.code(i.query_id))}" if i.query_id else ""))
        rows.append([f"{i.step} {i.label}", what, md.code(i.location), "–" if i.size is None else f"{i.size} B",
                     md.code(i.sha256)])
    return ["## Files and results hashed by the run", "",
            md.table(["step", "what", "location", "size", "SHA-256"], rows), ""]


def _step_section_md(step: StepResult) -> str:
    """A step's evidence as in the UI, plus its details for passed steps (the UI shows those in its own body)."""
    from flows.evidence import step_markdown  # lazy: flows.evidence loads prefect

    text = step_markdown(step, None).rstrip("\n") + "\n"
    if step.details and not step.error:
        details = json.dumps(step.details, indent=2, ensure_ascii=False, default=str)
        text += "\n".join(["", "Details:", "", md.code_block(details, "json"), ""])
    return text


def report_markdown(result: CaseResult, report: dict[str, Any], items: Sequence[HashedItem]) -> str:
    """report.md: the case report of the UI, the spec's hashes, hashed inputs, and every step's evidence."""
    from flows.evidence import case_markdown  # lazy: flows.evidence loads prefect

    spec = report["spec"]
    facts = [("source", md.code(spec["source"] or "(given as a model)")),
             ("SHA-256 of the file", md.code(spec["sha256"] or "–")),
             ("SHA-256 of the validated case", md.code(spec["case_sha256"] or "–"))]
    lines = [case_markdown(result).rstrip("\n"), "", "## Spec", "", md.table(["", ""], facts), ""]
    lines += _items_markdown(items)
    lines += [_step_section_md(s) for s in result.steps]
    lines += ["---", "", f"Written by pipeline-test {md.text(report['generator']['version'])} at "
              f"{report['generated_at']}. Check this pack with `python -m flows.evidence verify <this folder>`.", ""]
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------- report.html
CSS = """
:root { --pass: #116329; --pass-bg: #dafbe1; --fail: #a40e26; --fail-bg: #ffebe9; --err: #6639ba;
  --err-bg: #fbefff; --skip: #57606a; --skip-bg: #eaeef2; --line: #d0d7de; --muted: #57606a; }
* { box-sizing: border-box; -webkit-print-color-adjust: exact; print-color-adjust: exact; }
body { font: 15px/1.5 -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif; color: #1f2328;
  max-width: 1100px; margin: 0 auto; padding: 24px; }
h1 { font-size: 26px; margin: 0 0 4px; } h2 { font-size: 20px; margin: 28px 0 8px; border-bottom: 1px solid
  var(--line); padding-bottom: 4px; } h3 { font-size: 16px; margin: 0 0 8px; }
.muted { color: var(--muted); }
.badge { display: inline-block; padding: 1px 8px; border-radius: 4px; font-weight: 600; font-size: 13px;
  border: 1px solid currentColor; white-space: nowrap; }
.verdict { font-size: 18px; padding: 4px 14px; vertical-align: middle; margin-left: 8px; }
.passed { color: var(--pass); background: var(--pass-bg); } .failed { color: var(--fail); background: var(--fail-bg); }
.error { color: var(--err); background: var(--err-bg); } .skipped { color: var(--skip); background: var(--skip-bg); }
table { border-collapse: collapse; width: 100%; margin: 8px 0 16px; }
th, td { border: 1px solid var(--line); padding: 6px 8px; text-align: left; vertical-align: top; }
th { background: #f6f8fa; } tr { break-inside: avoid; }
table.facts th { width: 220px; }
code, pre { font-family: ui-monospace, SFMono-Regular, Consolas, "Liberation Mono", monospace; font-size: 13px; }
td code { overflow-wrap: anywhere; }
pre { background: #f6f8fa; border: 1px solid var(--line); border-radius: 6px; padding: 10px; white-space: pre-wrap;
  overflow-wrap: anywhere; margin: 6px 0 12px; }
.failure-box { border: 2px solid var(--fail); background: var(--fail-bg); border-radius: 6px; padding: 10px 14px;
  margin: 16px 0; }
.failure-box pre { background: #fff; }
section.step { border: 1px solid var(--line); border-left-width: 6px; border-radius: 6px; padding: 12px 16px;
  margin: 12px 0; }
section.step.passed { border-left-color: var(--pass); background: none; }
section.step.failed { border-left-color: var(--fail); background: none; }
section.step.error { border-left-color: var(--err); background: none; }
section.step.skipped { border-left-color: var(--skip); background: none; }
section.step { color: #1f2328; } section.step.failed h3, section.step.failed .msg { color: var(--fail); }
section.step.error h3, section.step.error .msg { color: var(--err); }
td.nowrap, table.steps td:nth-child(-n+5) { white-space: nowrap; } table.steps td code { overflow-wrap: normal; } td.hash code { font-size: 12px; }
footer { margin-top: 32px; font-size: 13px; color: var(--muted); }
@page { margin: 14mm; }
@media print { body { max-width: none; padding: 0; font-size: 12px; } a { color: inherit; }
  h2, h3 { break-after: avoid; } pre { font-size: 11px; } }
"""
CSP = "default-src 'none'; style-src 'unsafe-inline'; img-src data:; base-uri 'none'; form-action 'none'"


def _e(value: Any) -> str:
    """HTML-escape anything (quotes included; control characters other than line breaks and tabs dropped)."""
    return html.escape(_HTML_INVALID.sub("", "" if value is None else str(value)), quote=True)


def _badge(status: str, extra: str = "") -> str:
    return f'<span class="badge {_e(status)} {extra}">{_e(STATUS_WORD.get(status, status.upper()))}</span>'


def _link(url: str | None, text: str) -> str:
    """A link only for http(s) URLs (never javascript: and such); plain text otherwise."""
    if url and re.match(r"^https?://", url, re.IGNORECASE):
        return f'<a href="{_e(url)}">{_e(text)}</a>'
    return f"<code>{_e(text)}</code>"


def _anchor(step: StepResult) -> str:
    return "step-" + re.sub(r"[^A-Za-z0-9]+", "-", step.number)


def failures_first(steps: Sequence[StepResult]) -> list[StepResult]:
    """Failed and broken steps first, then the others; each part in run order."""
    return [s for s in steps if s.status in ("failed", "error")] + \
        [s for s in steps if s.status not in ("failed", "error")]


def _facts_table(rows: Sequence[tuple[str, str]]) -> str:
    body = "".join(f"<tr><th scope=\"row\">{_e(k)}</th><td>{v}</td></tr>" for k, v in rows)
    return f'<table class="facts">{body}</table>'


def _case_facts(result: CaseResult, report: dict[str, Any]) -> str:
    c, spec = report["counts"], report["spec"]
    rows = [
        ("status", _badge(result.status)),
        ("steps", _e(f"{c['passed']} of {c['total']} passed, {c['failed']} failed, {c['error']} error, "
                     f"{c['skipped']} skipped")),
        ("started", _e(report["run"]["started_at"])),
        ("ended", _e(report["run"]["ended_at"])),
        ("duration", _e(format_duration(result.duration_s))),
    ]
    if result.flow_run_id:
        rows.append(("flow run", _link(result.ui_url, result.flow_run_id)))
    rows.append(("spec", f"<code>{_e(spec['source'] or '(given as a model)')}</code>"))
    if spec["sha256"]:
        rows.append(("spec SHA-256", f"<code>{_e(spec['sha256'])}</code>"))
    if spec["case_sha256"]:
        rows.append(("validated case SHA-256", f"<code>{_e(spec['case_sha256'])}</code>"))
    return _facts_table(rows)


def _failure_box(result: CaseResult) -> str:
    failures = [s for s in result.steps if s.status in ("failed", "error")]
    if not failures:
        return ""
    parts = ['<div class="failure-box" role="alert"><h2 style="border:0;margin-top:0">Failures</h2>']
    for s in failures:
        code = f" <code>{_e(s.error_code)}</code>" if s.error_code else ""
        parts.append(f'<h3><a href="#{_anchor(s)}">Step {_e(s.number)} {_e(s.label)}</a> {_badge(s.status)}{code}'
                     f"</h3><pre>{_e(s.error or '(no message)')}</pre>")
    return "".join(parts) + "</div>"


def _steps_table(result: CaseResult) -> str:
    head = "<tr><th>#</th><th>step</th><th>kind</th><th>status</th><th>duration</th><th>detail</th></tr>"
    rows = []
    for s in failures_first(result.steps):
        duration = "–" if s.status == "skipped" else format_duration(s.duration_s)
        rows.append(f'<tr class="row-{_e(s.status)}"><td>{_e(s.number)}</td><td><a href="#{_anchor(s)}">'
                    f"{_e(s.label)}</a></td><td><code>{_e(s.kind)}</code></td><td>{_badge(s.status)}</td>"
                    f"<td>{_e(duration)}</td><td>{_e(s.error or s.summary)}</td></tr>")
    caption = '<caption class="muted" style="caption-side:bottom;text-align:left">Failures first; # is the run ' \
              "order (end = clean-up).</caption>"
    return f"<table class=\"steps\">{caption}<thead>{head}</thead><tbody>{''.join(rows)}</tbody></table>"


def _step_section(s: StepResult) -> str:
    facts = [("kind", f"<code>{_e(s.kind)}</code>"), ("status", _badge(s.status)),
             ("duration", _e("–" if s.status == "skipped" else format_duration(s.duration_s)))]
    if s.group:
        facts.append(("parallel group", _e(s.group)))
    if s.started_at:
        facts.append(("started", _e(_iso(s.started_at))))
    if s.summary:
        facts.append(("summary", _e(s.summary)))
    if s.request_ids:
        facts.append(("AWS request ids", ", ".join(f"<code>{_e(r)}</code>" for r in s.request_ids)))
    parts = [f'<section class="step {_e(s.status)}" id="{_anchor(s)}">',
             f"<h3>Step {_e(s.number)} &middot; {_e(s.label)} {_badge(s.status)}</h3>"]
    if s.description:
        parts.append(f'<p class="muted"><em>{_e(s.description)}</em></p>')
    if s.error:
        code = f" ({_e(s.error_code)})" if s.error_code else ""
        parts.append(f"<p class=\"msg\"><strong>{'Error' if s.status == 'error' else 'Failure'}{code}:</strong></p>"
                     f"<pre>{_e(s.error)}</pre>")
    parts.append(_facts_table(facts))
    if s.details:
        parts.append("<p><strong>Details</strong></p><pre>"
                     + _e(json.dumps(s.details, indent=2, ensure_ascii=False, default=str)) + "</pre>")
    return "".join(parts) + "</section>"


def _items_table(items: Sequence[HashedItem]) -> str:
    if not items:
        return ""
    rows = "".join(
        f"<tr><td>{_e(i.step)} {_e(i.label)}</td><td>{_e('input' if i.kind == 'input' else 'query result')}"
        f"{('<br><code>' + _e(i.local_path or i.query_id) + '</code>') if (i.local_path or i.query_id) else ''}"
        f"</td><td><code>{_e(i.location)}</code></td><td class=\"nowrap\">{_e('–' if i.size is None else f'{i.size} B')}"
        f"</td><td class=\"hash\"><code>{_e(i.sha256)}</code></td></tr>" for i in items)
    return ("<h2>Files and results hashed by the run</h2><table><thead><tr><th>step</th><th>what</th>"
            f"<th>location</th><th>size</th><th>SHA-256</th></tr></thead><tbody>{rows}</tbody></table>")


def _variables_table(variables: dict[str, Any]) -> str:
    if not variables:
        return ""
    rows = "".join(f"<tr><th scope=\"row\"><code>{_e(k)}</code></th><td><code>{_e(v)}</code></td></tr>"
                   for k, v in variables.items())
    return f'<h2>Variables</h2><table class="facts">{rows}</table>'


def report_html(result: CaseResult, report: dict[str, Any], items: Sequence[HashedItem]) -> str:
    """report.html: one page, no script, no network (a CSP forbids it), readable on screen and on paper."""
    verdict = STATUS_WORD[result.status]
    body = [
        f'<header><h1>{_e(result.case)} {_badge(result.status, "verdict")}</h1>',
        f'<p class="muted">{_e(result.description)}</p>' if result.description else "",
        "</header><main>",
        _case_facts(result, report),
        _failure_box(result),
        "<h2>Steps</h2>", _steps_table(result),
        _items_table(items),
        _variables_table(result.variables),
        "<h2>Step details</h2>", "".join(_step_section(s) for s in failures_first(result.steps)),
        "</main>",
        f"<footer>Evidence pack written by pipeline-test {_e(report['generator']['version'])} at "
        f"{_e(report['generated_at'])}. Machine-readable: report.json; CI: junit.xml. Check that this pack is "
        "intact with <code>python -m flows.evidence verify &lt;this folder&gt;</code>.</footer>",
    ]
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f'<meta http-equiv="Content-Security-Policy" content="{CSP}">'
            '<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{_e(result.case)}: {verdict} - pipeline-test evidence</title>"
            f"<style>{CSS}</style></head>\n<body>\n" + "\n".join(b for b in body if b) + "\n</body></html>\n")


# --------------------------------------------------------------------------------------------------- junit.xml
def _x(text: Any) -> str:
    """Text that XML 1.0 can carry (control characters dropped)."""
    return _XML_INVALID.sub("", "" if text is None else str(text))


def _system_out(s: StepResult) -> str:
    lines = [s.summary] if s.summary else []
    if s.request_ids:
        lines.append("AWS request ids: " + ", ".join(s.request_ids))
    if s.details:
        lines.append(json.dumps(s.details, indent=2, ensure_ascii=False, default=str))
    return "\n".join(lines)


def _testcase(result: CaseResult, s: StepResult) -> ET.Element:
    case = ET.Element("testcase", {"name": _x(f"{s.number} {s.label}"), "classname": _x(result.case),
                                   "time": f"{s.duration_s:.3f}"})
    if s.status in ("failed", "error"):
        tag = "failure" if s.status == "failed" else "error"
        child = ET.SubElement(case, tag, {"message": _x((s.error or s.status)[:2000]),
                                          "type": _x(s.error_code or s.status)})
        child.text = _x(s.error or "")
    elif s.status == "skipped":
        ET.SubElement(case, "skipped", {"message": _x(s.summary or "not run")})
    out = _system_out(s)
    if out:
        ET.SubElement(case, "system-out").text = _x(out)
    return case


def junit_xml(result: CaseResult, report: dict[str, Any]) -> str:
    """junit.xml: one <testsuite> for the case, one <testcase> per step (classname = the case)."""
    c = report["counts"]
    totals = {"tests": str(c["total"]), "failures": str(c["failed"]), "errors": str(c["error"]),
              "time": f"{result.duration_s:.3f}"}
    # <testsuites> takes no "skipped" in the JUnit schema of Jenkins' xUnit plugin (junit-10.xsd); <testsuite> does
    root = ET.Element("testsuites", {"name": "pipeline-test", **totals})
    suite = ET.SubElement(root, "testsuite", {"name": _x(result.case), **totals, "skipped": str(c["skipped"]),
                                              "timestamp": _utc(result.started_at).strftime("%Y-%m-%dT%H:%M:%S")})
    props = ET.SubElement(suite, "properties")
    for name, value in (("status", result.status), ("flow_run_id", result.flow_run_id), ("ui_url", result.ui_url),
                        ("spec_sha256", report["spec"]["sha256"]), ("case_sha256", report["spec"]["case_sha256"])):
        if value:
            ET.SubElement(props, "property", {"name": name, "value": _x(value)})
    for s in result.steps:
        suite.append(_testcase(result, s))
    ET.indent(root)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"


# ---------------------------------------------------------------------------------------------- manifest.json
def pack_files(folder: Path) -> list[str]:
    """Every file under the folder as a relative POSIX path, sorted (the manifest included)."""
    folder = Path(folder)
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())


def build_manifest(folder: Path, result: CaseResult, report: dict[str, Any], items: Sequence[HashedItem]
                   ) -> dict[str, Any]:
    """manifest.json: SHA-256 and size of every file of the pack (itself excepted) and the recorded hashes."""
    files = [{"path": name, "size": (folder / name).stat().st_size, "sha256": sha256_file(folder / name)}
             for name in pack_files(folder) if name != MANIFEST]
    return {
        "schema": MANIFEST_SCHEMA,
        "schema_version": SCHEMA_VERSION,
        "algorithm": "sha256",
        "created_at": report["generated_at"],
        "case": result.case,
        "flow_run_id": result.flow_run_id,
        "status": result.status,
        "spec": {"source": report["spec"]["source"], "sha256": report["spec"]["sha256"],
                 "case_sha256": report["spec"]["case_sha256"]},
        "files": files,
        "inputs": [i.to_json() for i in items if i.kind == "input"],
        "query_results": [i.to_json() for i in items if i.kind == "query_result"],
    }


# ------------------------------------------------------------------------------------------------- write_pack
def _write_text(path: Path, text: str, private: bool = True) -> None:
    """Write UTF-8 with LF line ends on every OS (the hashes must not depend on the platform); a private file
    is created readable by its owner only (0600)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600 if private else 0o666)
    if private:
        os.chmod(path, 0o600)
    with open(fd, "w", encoding="utf-8", newline="\n") as handle:
        handle.write(text)


def private_default() -> bool:
    """Whether packs are private unless said otherwise: yes, unless PIPELINE_TEST_PACK_PRIVATE is false/0/no."""
    return os.environ.get(PRIVATE_ENV, "").strip().lower() not in ("0", "false", "no", "off")


def _prepare_folder(folder: Path, private: bool = True) -> None:
    """Create the folder; refuse one that holds anything, so a pack never mixes with other files. A private
    pack's folder, and every folder created for it, is 0700."""
    if folder.exists() and (not folder.is_dir() or any(folder.iterdir())):
        raise FileExistsError(f"evidence folder {folder} already exists and is not empty; choose a new folder")
    missing = [p for p in [folder, *folder.parents] if not p.exists()]
    for path in reversed(missing):
        path.mkdir(mode=0o700 if private else 0o777, exist_ok=True)
    if private:
        os.chmod(folder, 0o700)


def write_pack(
    result: CaseResult,
    case: CaseSpec | None,
    folder: Path,
    *,
    spec_text: str | None = None,
    spec_path: str | Path | None = None,
    secrets: Iterable[str] = (),
    extra_items: Iterable[HashedItem] = (),
    generated_at: datetime | None = None,
    private: bool | None = None,
) -> Path:
    """Write the evidence pack of a finished run into ``folder`` (new or empty) and return the folder.

    ``case`` is the validated spec (None if the run had none); ``spec_text`` is the spec file's text as the
    run read it, best as ``path.read_bytes().decode("utf-8")`` so the copy and its hash match the file byte
    for byte (``spec_path`` is its path, for the record; the text is read from it when not given);
    ``secrets`` are the run's secret values (its registry), masked in the values every file is built from;
    ``extra_items`` are hashed inputs or query results beyond those in the steps' details. ``private`` (default:
    :func:`private_default`) makes folders 0700 and files 0600. The manifest is written last.
    """
    folder = Path(folder)
    known = [s for s in dict.fromkeys(secrets) if s]
    if spec_text is None and spec_path is not None and Path(spec_path).is_file():
        spec_text = Path(spec_path).read_bytes().decode("utf-8")  # bytes as they are: CRLF stays CRLF
    source = str(spec_path) if spec_path is not None else None
    clean = redact_result(result, known)
    items = [_redact_item(i, known) for i in [*hashed_items(result), *extra_items]]
    report = build_report(clean, case, spec_text=spec_text, spec_path=source, items=items,
                          generated_at=generated_at or datetime.now(timezone.utc), secrets=known)
    files = {
        REPORT_JSON: _json_text(report),
        REPORT_MD: report_markdown(clean, report, items),
        REPORT_HTML: report_html(clean, report, items),
        JUNIT_XML: junit_xml(clean, report),
    }
    if spec_text is not None and report["spec"]["sha256"] is not None:
        files[report["spec"]["file"]] = mask_document_text(spec_text, known, report["spec"]["file"] == "spec.json")
    private = private_default() if private is None else private
    _prepare_folder(folder, private)
    for name, text in files.items():
        _write_text(folder / name, text, private)
    _write_text(folder / MANIFEST, _json_text(build_manifest(folder, clean, report, items)), private)
    return folder


# ----------------------------------------------------------------------------------------------------- verify
def _load_manifest(folder: Path) -> tuple[dict[str, Any] | None, list[str]]:
    path = folder / MANIFEST
    if not path.is_file():
        return None, [f"{MANIFEST}: missing (this folder is not a complete evidence pack)"]
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        return None, [f"{MANIFEST}: unreadable ({exc})"]
    if not isinstance(data, dict) or data.get("schema") != MANIFEST_SCHEMA:
        return None, [f"{MANIFEST}: not an evidence pack manifest (schema is not {MANIFEST_SCHEMA!r})"]
    if data.get("schema_version") != SCHEMA_VERSION or not isinstance(data.get("files"), list):
        return None, [f"{MANIFEST}: unsupported schema_version {data.get('schema_version')!r} "
                      f"(this version reads {SCHEMA_VERSION})"]
    return data, []


def _safe_name(name: Any) -> bool:
    """A manifest entry must be a relative POSIX path inside the pack (no .., no drive, no backslash)."""
    return (isinstance(name, str) and bool(name) and not name.startswith("/") and "\\" not in name
            and ":" not in name and all(part not in ("", ".", "..") for part in name.split("/")))


def _listed(data: dict[str, Any]) -> tuple[dict[str, dict[str, Any]], list[str]]:
    listed: dict[str, dict[str, Any]] = {}
    problems = []
    for entry in data["files"]:
        name = entry.get("path") if isinstance(entry, dict) else None
        if not _safe_name(name) or name == MANIFEST:
            problems.append(f"{MANIFEST}: bad file entry {entry!r}")
        elif not isinstance(entry.get("sha256"), str) or not _SHA256.match(entry["sha256"]):
            problems.append(f"{MANIFEST}: bad sha256 for {name}")
        elif name in listed:
            problems.append(f"{MANIFEST}: {name} listed twice")
        else:
            listed[name] = entry
    return listed, problems


def _check_file(folder: Path, name: str, entry: dict[str, Any]) -> str | None:
    path = folder / name
    if not path.is_file():
        return f"{name}: missing"
    actual = sha256_file(path)
    if actual != entry["sha256"]:
        return f"{name}: changed (sha256 {actual}, manifest says {entry['sha256']})"
    return None


def verify(folder: Path, manifest_sha256_expected: str | None = None) -> list[str]:
    """Check a pack against its manifest; the problems, each starting with the file's name (empty: intact).

    Reports changed and missing files, files that are not in the manifest (extra), and a manifest that does
    not list the pack's required files. With ``manifest_sha256_expected`` the manifest itself is checked too.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return [f"{folder}: not a folder"]
    problems: list[str] = []
    if manifest_sha256_expected and (folder / MANIFEST).is_file():
        actual = manifest_sha256(folder)
        if actual != manifest_sha256_expected.strip().lower():
            problems.append(f"{MANIFEST}: changed (sha256 {actual}, expected {manifest_sha256_expected})")
    data, load_problems = _load_manifest(folder)
    if data is None:
        return problems + load_problems
    listed, problems_listed = _listed(data)
    problems += problems_listed
    problems += [p for name, entry in sorted(listed.items()) if (p := _check_file(folder, name, entry))]
    problems += [f"{name}: not listed in {MANIFEST} (every pack has it)" for name in REQUIRED_FILES
                 if name not in listed]
    problems += [f"{name}: extra (not in {MANIFEST})" for name in pack_files(folder)
                 if name != MANIFEST and name not in listed and name not in REQUIRED_FILES]
    return problems


# ------------------------------------------------------------------------------------------------------ upload
def console_url(bucket: str, prefix: str, region: str | None) -> str:
    """The S3 console's page of a pack's prefix (for a link artifact)."""
    from urllib.parse import quote

    return (f"https://s3.console.aws.amazon.com/s3/buckets/{quote(bucket)}?region={quote(region or 'us-east-1')}"
            f"&prefix={quote(prefix, safe='')}&showversions=false")


def _upload_order(folder: Path) -> list[str]:
    """The pack's files with the manifest last, so a pack cut short by an error has no manifest."""
    names = pack_files(folder)
    return [n for n in names if n != MANIFEST] + [MANIFEST]


def _put_args(name: str, body: bytes, sse: str | None, kms_key_id: str | None) -> dict[str, Any]:
    args: dict[str, Any] = {
        "Body": body,
        "ContentType": CONTENT_TYPES.get(Path(name).suffix.lower(), "application/octet-stream"),
        "ChecksumSHA256": base64.b64encode(hashlib.sha256(body).digest()).decode("ascii"),
        "IfNoneMatch": "*",
    }
    if sse:
        args["ServerSideEncryption"] = sse
    if kms_key_id:
        args["SSEKMSKeyId"] = kms_key_id
    return args


def upload_pack(s3_client: Any, folder: Path, bucket: str, prefix: str, sse: str | None = "AES256",
                kms_key_id: str | None = None) -> list[str]:
    """Upload an intact pack to ``s3://bucket/prefix/`` with server-side encryption; returns the keys.

    Keys are ``prefix`` + the file's POSIX path in the pack, whatever the OS. Each object goes up with its
    SHA-256 (S3 rejects a body that does not match) and only if the key is new (evidence is never replaced);
    the manifest goes last. A pack that fails :func:`verify` is not uploaded.
    """
    from tasks.errors import AWS_ERRORS, aws_error  # lazy: botocore is only needed here

    if sse is not None and sse not in SSE_VALUES:
        raise ValueError(f"sse must be one of {', '.join(SSE_VALUES)} (or None), not {sse!r}")
    if kms_key_id and not (sse or "").startswith("aws:kms"):
        raise ValueError("kms_key_id goes with sse='aws:kms' (or 'aws:kms:dsse')")
    folder = Path(folder)
    problems = verify(folder)
    if problems:
        raise ValueError(f"evidence pack {folder} is not intact, not uploading it: " + "; ".join(problems))
    base = prefix.strip("/")
    keys = []
    for name in _upload_order(folder):
        key = f"{base}/{name}" if base else name
        try:
            s3_client.put_object(Bucket=bucket, Key=key, **_put_args(name, (folder / name).read_bytes(), sse,
                                                                     kms_key_id))
        except AWS_ERRORS as exc:
            raise aws_error("S3 PutObject", f"s3://{bucket}/{key}", exc) from None
        keys.append(key)
    return keys


# --------------------------------------------------------------------------------------------------------- CLI
def main(argv: Sequence[str] | None = None, prog: str = "python -m flows.evidence") -> int:
    """``verify DIR [--manifest-sha256 HEX]``: exit 0 when the pack is intact, 1 (naming the files) when not."""
    parser = argparse.ArgumentParser(prog=prog, description="Evidence packs of pipeline-test runs.")
    commands = parser.add_subparsers(dest="command", required=True)
    check = commands.add_parser("verify", help="check that an evidence pack is intact")
    check.add_argument("folder", type=Path, help="the pack's folder (holds manifest.json)")
    check.add_argument("--manifest-sha256", metavar="HEX",
                       help="the manifest's SHA-256 as recorded elsewhere (the run's log or link artifact)")
    args = parser.parse_args(list(argv) if argv is not None else None)
    problems = verify(args.folder, args.manifest_sha256)
    if problems:
        print(f"Evidence pack {args.folder} is NOT intact:")
        print("\n".join(f"  - {p}" for p in problems))
        return 1
    count = len(pack_files(args.folder)) - 1
    print(f"Evidence pack {args.folder} is intact: {count} file(s) match {MANIFEST} "
          f"(manifest sha256 {manifest_sha256(args.folder)}).")
    return 0


if __name__ == "__main__":
    sys.exit(main(prog="python -m flows.evidence_pack"))
