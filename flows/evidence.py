"""Evidence in the Prefect UI: a markdown artifact per step, and per case a summary table and a report.

The case's artifacts use stable keys derived from the case name (``case-<slug>`` and ``case-<slug>-report``),
so the Artifacts page shows that case's history run after run. Step artifacts carry no key: they show in the
run's Artifacts tab beside the step's task run. Nothing here sees a secret: step outcomes are masked at the
source. Every value is escaped by :mod:`tasks.markdown`: only these templates make headings, verdicts, tables
and links.
"""

from __future__ import annotations

import json
from typing import Any

from prefect.artifacts import create_link_artifact, create_markdown_artifact, create_table_artifact

from flows.results import CaseResult, StepResult
from flows.spec import slug
from tasks import markdown as md
from tasks.base import StepOutcome, format_duration

ICON = {"passed": "✅ passed", "failed": "❌ failed", "error": "💥 error", "skipped": "⏭️ skipped"}
MAX_LINK_ARTIFACTS = 3
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
        lines += ["### Failure" + code, "", md.code_block(result.error, "text"), ""]
        if result.details:
            lines += ["What the step saw:", "",
                      md.code_block(json.dumps(result.details, indent=2, default=str)[:6000], "json"), ""]
    if outcome is not None:
        lines += ["### What was done and proved", "", outcome.markdown, ""]
        if outcome.links:
            lines += ["### Links", "", md.bullets(md.link(link.text, link.url) for link in outcome.links), ""]
    return "\n".join(lines)


def publish_step(result: StepResult, outcome: StepOutcome | None) -> None:
    """Create the step's artifacts (called inside its task run, so they attach to it)."""
    create_markdown_artifact(
        markdown=step_markdown(result, outcome),
        description=f"Step {md.text(result.number)} {md.text(result.label)}: {result.status}",
    )
    if outcome is None:
        return
    for link in [link for link in outcome.links if md.safe_url(link.url)][:MAX_LINK_ARTIFACTS]:
        create_link_artifact(link=md.safe_url(link.url), link_text=md.text(link.text),
                             description=f"Step {md.text(result.label)}: {md.text(link.text)}")
    for name, rows in outcome.tables.items():
        if rows:
            create_table_artifact(table=[{k: md.one_line(v) for k, v in row.items()} for row in rows],
                                  description=f"Step {md.text(result.label)}: {md.text(name)}")


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
        ("steps", f"{sum(s.ok for s in result.steps)} of {len(result.steps)} passed"),
    ]
    if result.flow_run_id:
        run = md.link(result.flow_run_id, result.ui_url) if result.ui_url else md.code(result.flow_run_id)
        facts.append(("flow run", run))
    lines += [md.table(["fact", "value"], facts), ""]
    failure = result.first_failure
    if failure:
        lines += [f"**First failure: step {md.text(failure.number)} {md.code(failure.label)}**", "",
                  md.code_block(failure.error or "", "text"), ""]
    lines.append(md.table(["step", "kind", "status", "duration", "detail"],
                          [[r["step"], md.code(r["kind"]), md.Md(r["status"]), r["duration"], r["detail"]]
                           for r in summary_rows(result)]))
    if result.variables:
        lines += ["", "Variables:", "", md.bullets(md.Md(f"{md.code(k)} = {md.code(v)}")
                                                   for k, v in result.variables.items())]
    return "\n".join(lines) + "\n"


def publish_case(result: CaseResult) -> None:
    """Create the case's keyed summary table and report (called in the flow run)."""
    key = case_key(result.case)
    verdict = "passed" if result.passed else "FAILED"
    create_table_artifact(table=[{k: md.one_line(v) for k, v in row.items()} for row in summary_rows(result)],
                          key=key, description=f"{md.text(result.case)}: {verdict} "
                          f"({format_duration(result.duration_s)})")
    create_markdown_artifact(markdown=case_markdown(result), key=f"{key}-report"[:KEY_MAX],
                             description=f"{md.text(result.case)}: {verdict}")


if __name__ == "__main__":  # python -m flows.evidence verify DIR: check an evidence pack
    from flows.evidence_pack import main

    raise SystemExit(main())
