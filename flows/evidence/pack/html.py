"""report.html of the evidence pack: one self-contained page (no network, no script), printable; failures first."""

from __future__ import annotations

import html
import json
import re
from typing import Any, Sequence

from flows.evidence.pack.files import PackItem, _iso
from flows.evidence.report import CaseReport, iso_utc
from flows.evidence.results import CaseResult, StepResult
from tasks.kit.checks import CheckRecord
from tasks.kit.status import css_class, css_rules
from tasks.kit.step import format_duration

_HTML_INVALID = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")

CSS = """
:root { --line: #d0d7de; --muted: #57606a; }
* { box-sizing: border-box; -webkit-print-color-adjust: exact; print-color-adjust: exact; }
body { font: 15px/1.5 -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif; color: #1f2328;
  max-width: 1100px; margin: 0 auto; padding: 24px; }
h1 { font-size: 26px; margin: 0 0 4px; } h2 { font-size: 20px; margin: 28px 0 8px; border-bottom: 1px solid
  var(--line); padding-bottom: 4px; } h3 { font-size: 16px; margin: 0 0 8px; }
.muted { color: var(--muted); }
.badge { display: inline-block; padding: 1px 8px; border-radius: 4px; font-weight: 600; font-size: 13px;
  border: 1px solid currentColor; white-space: nowrap; }
.verdict { font-size: 18px; padding: 4px 14px; vertical-align: middle; margin-left: 8px; }
table { border-collapse: collapse; width: 100%; margin: 8px 0 16px; }
th, td { border: 1px solid var(--line); padding: 6px 8px; text-align: left; vertical-align: top; }
th { background: #f6f8fa; } tr { break-inside: avoid; }
table.facts th { width: 220px; }
code, pre { font-family: ui-monospace, SFMono-Regular, Consolas, "Liberation Mono", monospace; font-size: 13px; }
td code { overflow-wrap: anywhere; }
pre { background: #f6f8fa; border: 1px solid var(--line); border-radius: 6px; padding: 10px; white-space: pre-wrap;
  overflow-wrap: anywhere; margin: 6px 0 12px; }
.failure-box { border: 2px solid var(--failed); background: var(--failed-bg); border-radius: 6px; padding: 10px 14px;
  margin: 16px 0; }
.failure-box pre { background: #fff; }
section.step { border: 1px solid var(--line); border-left-width: 6px; border-radius: 6px; padding: 12px 16px;
  margin: 12px 0; }
section.step { color: #1f2328; }
td.nowrap, table.steps td:nth-child(-n+5) { white-space: nowrap; }
table.steps td code { overflow-wrap: normal; } td.hash code { font-size: 12px; }
footer { margin-top: 32px; font-size: 13px; color: var(--muted); }
@page { margin: 14mm; }
@media print { body { max-width: none; padding: 0; font-size: 12px; } a { color: inherit; }
  h2, h3 { break-after: avoid; } pre { font-size: 11px; } }
""" + css_rules()
CSP = "default-src 'none'; style-src 'unsafe-inline'; img-src data:; base-uri 'none'; form-action 'none'"


def _e(value: Any) -> str:
    """HTML-escape anything (quotes included; control characters other than line breaks and tabs dropped)."""
    return html.escape(_HTML_INVALID.sub("", "" if value is None else str(value)), quote=True)


def badge(status: str, extra: str = "") -> str:
    """A status as a coloured badge (``FAILED``), the same for a step, a check, a case and a suite's case."""
    return f'<span class="badge {_e(css_class(status))} {extra}">{_e(status.upper())}</span>'


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


def _case_facts(result: CaseResult, report: CaseReport) -> str:
    c, spec = report.counts, report.spec
    rows = [
        ("status", badge(result.status) + (f" {_e(result.verdict)}" if result.warnings else "")),
        ("steps", _e(f"{c.passed} of {c.total} passed, "
                     + (f"{c.warned} warned ({result.warnings} warnings), " if c.warned else "")
                     + f"{c.failed} failed, {c.error} error, {c.skipped} skipped")),
        ("started", _e(iso_utc(report.run.started_at))),
        ("ended", _e(iso_utc(report.run.ended_at))),
        ("duration", _e(format_duration(result.duration_s))),
    ]
    if result.flow_run_id:
        rows.append(("flow run", _link(result.ui_url, result.flow_run_id)))
    rows.append(("spec", f"<code>{_e(spec.source or '(given as a model)')}</code>"))
    if spec.sha256:
        rows.append(("spec SHA-256", f"<code>{_e(spec.sha256)}</code>"))
    if spec.case_sha256:
        rows.append(("validated case SHA-256", f"<code>{_e(spec.case_sha256)}</code>"))
    return _facts_table(rows)


def _audit_section(result: CaseResult, report: CaseReport) -> str:
    """Who ran the case, where and with what (report.json's ``audit``)."""
    audit = report.audit
    if audit is None:
        return ""
    aws = audit.aws
    identity = aws.caller_arn or (f"unknown ({aws.error_code})" if aws.error_code else "–")
    rows = [("AWS account", f"<code>{_e(aws.account_id or '–')}</code>"),
            ("AWS identity", f"<code>{_e(identity)}</code>"), ("AWS region", _e(aws.region or "–")),
            ("deployment", _e(audit.deployment or "– (not run from a deployment)")),
            ("work pool", _e(audit.work_pool or "–")), ("host", _e(audit.host or "–")),
            ("OS user", _e(audit.os_user or "–")),
            ("project version", _e(audit.project_version or "–")
             + (f", git <code>{_e(audit.git_commit)}</code>" if audit.git_commit else "")),
            ("Prefect / boto3", _e(f"{audit.prefect_version or '–'} / {audit.boto3_version or '–'}"))]
    return "<h2>Who ran it, where</h2>" + _facts_table(rows)


def _failure_box(result: CaseResult) -> str:
    failures = [s for s in result.steps if s.status in ("failed", "error")]
    if not failures:
        return ""
    parts = ['<div class="failure-box" role="alert"><h2 style="border:0;margin-top:0">Failures</h2>']
    for s in failures:
        code = f" <code>{_e(s.error_code)}</code>" if s.error_code else ""
        parts.append(f'<h3><a href="#{_anchor(s)}">Step {_e(s.number)} {_e(s.label)}</a> {badge(s.status)}{code}'
                     f"</h3><pre>{_e(s.error or '(no message)')}</pre>")
    return "".join(parts) + "</div>"


def _steps_table(result: CaseResult) -> str:
    head = "<tr><th>#</th><th>step</th><th>kind</th><th>status</th><th>duration</th><th>detail</th></tr>"
    rows = []
    for s in failures_first(result.steps):
        duration = "–" if s.status == "skipped" else format_duration(s.duration_s)
        rows.append(f'<tr class="row-{_e(s.status)}"><td>{_e(s.number)}</td><td><a href="#{_anchor(s)}">'
                    f"{_e(s.label)}</a></td><td><code>{_e(s.kind)}</code></td><td>{badge(s.status)}</td>"
                    f"<td>{_e(duration)}</td><td>{_e(s.error or s.summary)}</td></tr>")
    caption = '<caption class="muted" style="caption-side:bottom;text-align:left">Failures first; # is the run ' \
              "order (end = clean-up).</caption>"
    return f"<table class=\"steps\">{caption}<thead>{head}</thead><tbody>{''.join(rows)}</tbody></table>"


def _step_section(s: StepResult) -> str:
    facts = [("kind", f"<code>{_e(s.kind)}</code>"), ("status", badge(s.status)),
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
             f"<h3>Step {_e(s.number)} &middot; {_e(s.label)} {badge(s.status)}</h3>"]
    if s.description:
        parts.append(f'<p class="muted"><em>{_e(s.description)}</em></p>')
    if s.warnings:
        parts.append(f"<p class=\"msg\"><strong>Warnings ({len(s.warnings)}):</strong></p>"
                     + "<ul>" + "".join(f"<li>{_e(w)}</li>" for w in s.warnings[:50]) + "</ul>")
    if s.error:
        code = f" ({_e(s.error_code)})" if s.error_code else ""
        parts.append(f"<p class=\"msg\"><strong>{'Error' if s.status == 'error' else 'Failure'}{code}:</strong></p>"
                     f"<pre>{_e(s.error)}</pre>")
    parts.append(_checks_table(s.checks))
    parts.append(_facts_table(facts))
    if s.details:  # the raw details last: the readable checks come first
        parts.append("<p><strong>Raw details (JSON)</strong></p><pre>"
                     + _e(json.dumps(s.details, indent=2, ensure_ascii=False, default=str)) + "</pre>")
    return "".join(parts) + "</section>"


def _checks_table(checks: Sequence[CheckRecord]) -> str:
    """The step's checks as a readable table (check, expected, actual, verdict), before any JSON: from the typed
    checks its result carries (:class:`tasks.kit.checks.CheckRecord`), never guessed from ``details``."""
    if not checks:
        return ""
    rows = []
    for c in checks:
        name = f"{c.where}: {c.name}" if c.where else c.name
        rows.append(f'<tr class="row-{_e(c.verdict)}"><td><code>{_e(name)}</code></td>'
                    f"<td>{_e(c.expected)}</td><td>{_e(c.actual)}</td><td>{badge(c.verdict)}</td></tr>")
    return ('<table class="checks"><thead><tr><th>check</th><th>expected</th><th>actual</th><th>verdict</th></tr>'
            f"</thead><tbody>{''.join(rows)}</tbody></table>")


def _items_table(items: Sequence[PackItem]) -> str:
    if not items:
        return ""
    rows = "".join(
        f"<tr><td>{_e(i.step)} {_e(i.label)}</td><td>{_e('input' if i.kind == 'input' else 'query result')}"
        f"{('<br><code>' + _e(i.local_path or i.query_id) + '</code>') if (i.local_path or i.query_id) else ''}"
        f"</td><td><code>{_e(i.location)}</code></td>"
        f"<td class=\"nowrap\">{_e('–' if i.size is None else f'{i.size} B')}"
        f"</td><td class=\"hash\"><code>{_e(i.sha256)}</code></td></tr>" for i in items)
    return ("<h2>Files and results hashed by the run</h2><table><thead><tr><th>step</th><th>what</th>"
            f"<th>location</th><th>size</th><th>SHA-256</th></tr></thead><tbody>{rows}</tbody></table>")


def _variables_table(variables: dict[str, Any]) -> str:
    if not variables:
        return ""
    rows = "".join(f"<tr><th scope=\"row\"><code>{_e(k)}</code></th><td><code>{_e(v)}</code></td></tr>"
                   for k, v in variables.items())
    return f'<h2>Variables</h2><table class="facts">{rows}</table>'


def report_html(result: CaseResult, report: CaseReport, items: Sequence[PackItem]) -> str:
    """report.html: one page, no script, no network (a CSP forbids it), readable on screen and on paper."""
    verdict = result.verdict
    body = [
        f'<header><h1>{_e(result.case)} {badge(result.status, "verdict")}</h1>',
        f'<p class="muted">{_e(result.description)}</p>' if result.description else "",
        "</header><main>",
        _case_facts(result, report),
        _failure_box(result),
        "<h2>Steps</h2>", _steps_table(result),
        _items_table(items),
        _variables_table(result.variables),
        _audit_section(result, report),
        "<h2>Step details</h2>", "".join(_step_section(s) for s in failures_first(result.steps)),
        "</main>",
        f"<footer>Evidence pack written by pipeline-test {_e(report.generator.version)} at "
        f"{_e(iso_utc(report.generated_at))}. Machine-readable: report.json; CI: junit.xml. Check that this pack is "
        "intact with <code>python -m flows.pipeline_test verify &lt;this folder&gt;</code>.</footer>",
    ]
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f'<meta http-equiv="Content-Security-Policy" content="{CSP}">'
            '<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{_e(result.case)}: {verdict} - pipeline-test evidence</title>"
            f"<style>{CSS}</style></head>\n<body>\n" + "\n".join(b for b in body if b) + "\n</body></html>\n")
