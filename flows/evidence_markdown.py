"""The markdown of the evidence: a step's evidence, a case's report and summary rows, and the case's artifact key.

No Prefect here: :mod:`flows.evidence` publishes these as UI artifacts, and the evidence pack
(:mod:`flows.pack_formats`) writes the same text into report.md. Every value is escaped by
:mod:`tasks.markdown`: only these templates make headings, verdicts, tables and links.
"""

from __future__ import annotations

import json
from typing import Any

from flows.naming import slug
from flows.results import CaseResult, StepResult
from tasks import markdown as md
from tasks.base import StepOutcome, format_duration

ICON = {"passed": "✅ passed", "failed": "❌ failed", "error": "💥 error", "skipped": "⏭️ skipped"}
#: what a step's status means, for the reader of a report that is not passed
MEANING = {"failed": "a check did not hold", "error": "the step could not do or check what it was asked (AWS "
           "refused, a wait for AWS timed out, a bad input, the run was stopped, a bug)"}


def step_counts(result: CaseResult) -> str:
    """``2 of 5 passed, 1 failed, 1 error, 1 skipped`` (only the passed count when all passed)."""
    count = {status: sum(s.status == status for s in result.steps) for status in ICON}
    text = f"{count['passed']} of {len(result.steps)} passed"
    if count["passed"] < len(result.steps):
        text += f", {count['failed']} failed, {count['error']} error, {count['skipped']} skipped"
    return text
KEY_MAX = 100



def case_key(case: str) -> str:
    """The stable artifact key of a case's summary table: lowercase letters, digits and dashes."""
    return f"case-{slug(case)}"[:KEY_MAX].rstrip("-")


def step_markdown(result: StepResult, outcome: StepOutcome | None) -> str:
    """The evidence of one step: what it was asked, what it did, what it proved (or why it failed).

    Every value goes through :mod:`tasks.markdown`, so only this template makes headings, verdicts and links.
    """
    lines = [f"## Step {md.text(result.number)} · {md.text(result.label)} · {ICON[result.status]}", ""]
    if result.description:
        lines += [md.emphasis(result.description), ""]
    facts: list[tuple[str, Any]] = [("kind", md.code(result.kind)), ("status", ICON[result.status]),
                                    ("duration", format_duration(result.duration_s))]
    if result.group:
        facts.append(("parallel group", result.group))
    if result.started_at:
        facts.append(("started", result.started_at.isoformat(timespec="seconds")))
    if result.request_ids:
        facts.append(("AWS request ids", md.Md(", ".join(md.cell(md.code(r)) for r in result.request_ids[:10]))))
    lines += [md.table(["fact", "value"], facts), ""]
    if result.error:
        code = f" ({md.code(result.error_code)})" if result.error_code else ""
        lines += [("### Error" if result.status == "error" else "### Failure") + code, ""]
        if result.status in MEANING:
            lines += [md.emphasis(MEANING[result.status]), ""]
        lines += [md.code_block(result.error, "text"), ""]
        if result.details:
            lines += ["What the step saw:", "",
                      md.code_block(json.dumps(result.details, indent=2, default=str)[:6000], "json"), ""]
    if outcome is not None:
        lines += ["### What was done and proved", "", outcome.markdown, ""]
        if outcome.links:
            lines += ["### Links", "", md.bullets(md.link(link.text, link.url) for link in outcome.links), ""]
    return "\n".join(lines)


def summary_rows(result: CaseResult) -> list[dict[str, str]]:
    """One row per step: step, kind, status, duration, detail (the failure's message, or the summary)."""
    return [
        {
            "step": f"{s.number} {s.label}",
            "kind": s.kind,
            "status": ICON[s.status],
            "duration": format_duration(s.duration_s) if s.status != "skipped" else "–",
            "detail": (s.error or s.summary or "")[:500],
        }
        for s in result.steps
    ]


def case_markdown(result: CaseResult) -> str:
    """The case report: status, run, variables, and the per-step table, failures first in the text."""
    status = "✅ PASSED" if result.passed else "❌ FAILED"
    lines = [f"# {md.text(result.case)}: {status}", ""]
    if result.description:
        lines += [md.emphasis(result.description), ""]
    facts: list[tuple[str, Any]] = [
        ("started", result.started_at.isoformat(timespec="seconds")),
        ("duration", format_duration(result.duration_s)),
        ("steps", step_counts(result)),
    ]
    if result.flow_run_id:
        run = md.link(result.flow_run_id, result.ui_url) if result.ui_url else md.code(result.flow_run_id)
        facts.append(("flow run", run))
    lines += [md.table(["fact", "value"], facts), ""]
    failure = result.first_failure
    if failure:
        lines += [f"**First failure: step {md.text(failure.number)} {md.code(failure.label)}**, {ICON[failure.status]}"
                  f" ({md.text(MEANING[failure.status])})", "",
                  md.code_block(failure.error or "", "text"), ""]
    lines.append(md.table(["step", "kind", "status", "duration", "detail"],
                          [[r["step"], md.code(r["kind"]), md.Md(r["status"]), r["duration"], r["detail"]]
                           for r in summary_rows(result)]))
    if result.variables:
        lines += ["", "Variables:", "", md.bullets(md.Md(f"{md.code(k)} = {md.code(v)}")
                                                   for k, v in result.variables.items())]
    return "\n".join(lines) + "\n"
