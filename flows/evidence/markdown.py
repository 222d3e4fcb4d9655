"""The markdown of the evidence: a step's evidence, a case's report and summary rows, and the case's artifact key.

No Prefect here: :mod:`flows.evidence.ui` publishes these as UI artifacts, and the evidence pack
(:mod:`flows.evidence.pack.write`) writes the same text into report.md. Every value is escaped by
:mod:`tasks.kit.markdown`: only these templates make headings, verdicts, tables and links.
"""

from __future__ import annotations

import json
from typing import Any

from flows.evidence.report import Audit
from flows.evidence.results import CaseResult, StepResult, plural
from flows.spec.slugs import slug
from tasks.kit import markdown as md
from tasks.kit.status import MEANING, STATUS, STEP_STATUSES, card_word, marked
from tasks.kit.step import StepOutcome, format_duration

#: the widest code line the Prefect UI shows whole at 1400 px (raw details are broken for display)
CODE_WIDTH = 96


def step_counts(result: CaseResult) -> str:
    """``2 of 5 passed, 1 warned (2 warnings), 1 failed, 1 error, 1 skipped`` (only the passed count when all
    passed; the warned count when some warned)."""
    count = {status: sum(s.status == status for s in result.steps) for status in STEP_STATUSES}
    text = f"{count['passed']} of {len(result.steps)} passed"
    if count["warned"]:
        text += f", {count['warned']} warned ({plural(result.warnings, 'warning')})"
    if count["passed"] + count["warned"] < len(result.steps):
        text += f", {count['failed']} failed, {count['error']} error, {count['skipped']} skipped"
    return text
KEY_MAX = 100



def case_key(case: str) -> str:
    """The stable artifact key of a case's summary table: lowercase letters, digits and dashes."""
    return f"case-{slug(case)}"[:KEY_MAX].rstrip("-")


def step_markdown(result: StepResult, outcome: StepOutcome | None) -> str:
    """The evidence of one step: what it was asked, what it did, what it proved (or why it failed).

    Every value goes through :mod:`tasks.kit.markdown`, so only this template makes headings, verdicts and links.
    """
    lines = [f"## Step {md.text(result.number)} · {md.text(result.label)} · {marked(result.status)}", ""]
    if result.description:
        lines += [md.emphasis(result.description), ""]
    facts: list[tuple[str, Any]] = [("kind", md.code(result.kind)), ("status", marked(result.status)),
                                    ("duration", format_duration(result.duration_s) if result.status != "skipped"
                                     else "–")]
    if result.group:
        facts.append(("parallel group", result.group))
    if result.started_at:
        facts.append(("started", result.started_at.isoformat(timespec="seconds")))
    if result.request_ids:
        facts.append(("AWS request ids", md.Md(", ".join(md.cell(md.code(r)) for r in result.request_ids[:10]))))
    lines += [md.facts(facts), ""]
    if result.warnings:
        lines += [f"### Warnings ({len(result.warnings)})", "", md.emphasis(MEANING["warned"]), "",
                  md.bullets(md.text(w) for w in result.warnings[:50]), ""]
    if result.error:
        code = f" ({md.code(result.error_code)})" if result.error_code else ""
        lines += [("### Error" if result.status == "error" else "### Failure") + code, ""]
        if result.status in MEANING:
            lines += [md.emphasis(MEANING[result.status]), ""]
        lines += [md.message(result.error), ""]
    if result.status == "skipped":  # why it was not run (which step stopped the case)
        lines += ["### Not run", "", md.message(result.summary or "not run"), ""]
    # the step's own evidence: from its outcome while it runs (the UI), else as its result carries it (the pack)
    evidence = outcome.markdown if outcome is not None else result.evidence
    links = [(link.text, link.url) for link in (outcome.links if outcome is not None else result.links)]
    if evidence or outcome is not None:
        lines += ["### What was done and proved", "", evidence, ""]
    if links:
        lines += ["### Links", "", md.bullets(md.link(text, url) for text, url in links), ""]
    if result.error and result.details:  # the raw details last: the readable part comes first
        lines += ["### What the step saw (raw)", "",
                  md.code_block(json.dumps(result.details, indent=2, default=str)[:6000], "json", wrap=CODE_WIDTH), ""]
    return "\n".join(lines)


def step_description(result: StepResult) -> str:
    """The artifact card's description: the verdict first (a card cuts a long description short), FAILED or ERROR
    in capitals so the card shows it, then the step's number and name."""
    return f"{card_word(result.status)} · step {md.text(result.number)} {md.text(result.label)}"


def step_card(result: StepResult, what: str) -> str:
    """The description of a step's other cards (links, tables): its number and name, then what the card holds."""
    return f"step {md.text(result.number)} {md.text(result.label)} · {md.text(what)}"


#: widths of the summary's cells (the full texts are in the step's artifact and in the pack): the UI does not wrap
#: a table's cells, and at 1400 px its table box is about 840 px wide
DETAIL_WIDTH = 52
LABEL_WIDTH = 32


def summary_rows(result: CaseResult) -> list[dict[str, str]]:
    """One row per step: status (first, so it is always seen), step, duration, detail (the failure's message, or
    the summary), each cell short enough that the table fits the UI's width (the kind is in each step's evidence)."""
    return [
        {
            "status": marked(s.status),
            "step": md.shorten(f"{s.number} {s.label}", LABEL_WIDTH),
            "duration": format_duration(s.duration_s) if s.status != "skipped" else "–",
            "detail": md.shorten(s.error or s.summary or "", DETAIL_WIDTH),
        }
        for s in result.steps
    ]


def _history_markdown(history: list[dict[str, Any]]) -> list[str]:
    """The last runs of the case, newest first: verdict, start, duration, failed step, link."""
    rows = []
    for run in history:
        when = run.get("started") or "–"
        link = md.link("open", run["url"]) if run.get("url") else md.code(md.shorten(run.get("flow_run_id"), 12))
        status = run.get("status") or ""
        rows.append([md.Md(marked(status) if status in STATUS else md.text(status or "–")), when,
                     run.get("duration") or "–", md.shorten(run.get("failed_step") or "–", LABEL_WIDTH), link])
    return [f"### Last {len(history)} runs of this case" if len(history) > 1 else "### The last run of this case", "",
            md.table(["verdict", "started", "duration", "failed step", "run"], rows), ""]


def audit_facts(audit: Audit) -> list[tuple[str, Any]]:
    """Who ran the case, where and with what (report.json's ``audit``), as facts."""
    aws = audit.aws
    identity = aws.caller_arn or (f"unknown ({aws.error_code})" if aws.error_code else "–")
    facts: list[tuple[str, Any]] = [
        ("AWS account", md.code(aws.account_id or "–")), ("AWS identity", md.code(identity)),
        ("AWS region", aws.region or "–"),
        ("deployment", audit.deployment or "– (not run from a deployment)"),
        ("work pool", audit.work_pool or "–"), ("host", audit.host or "–"),
        ("OS user", audit.os_user or "–"),
        ("project version", md.Md(md.cell(md.text(audit.project_version or "–"))
                                  + (f", git {md.cell(md.code(audit.git_commit))}" if audit.git_commit else ""))),
        ("Prefect / boto3", f"{audit.prefect_version or '–'} / {audit.boto3_version or '–'}"),
    ]
    return facts


def case_markdown(result: CaseResult, history: list[dict[str, Any]] | None = None) -> str:
    """The case report: verdict, run, first failure (wrapped text), the per-step table (short cells), the
    evidence pack, who ran it, the case's last runs, variables."""
    verdict = "failed" if not result.passed else "warned" if result.warnings else "passed"
    lines = [f"# {md.text(result.case)}: {STATUS[verdict].mark} {md.text(result.verdict)}", ""]
    if result.description:
        lines += [md.emphasis(result.description), ""]
    facts: list[tuple[str, Any]] = [
        ("started", result.started_at.isoformat(timespec="seconds")),
        ("duration", format_duration(result.duration_s)),
        ("steps", step_counts(result)),
    ]
    if result.locks and result.locks.resources:
        held, waited = len(result.locks.resources), result.locks.waited_seconds
        facts.append(("locks", f"{held} held; waited {format_duration(waited)} for them (part of the duration)"
                      if waited >= 0.05 else f"{held} held, no wait"))
    if result.flow_run_id:
        run = md.link(result.flow_run_id, result.ui_url) if result.ui_url else md.code(result.flow_run_id)
        facts.append(("flow run", run))
    lines += [md.facts(facts), ""]
    failure = result.first_failure
    if failure:
        lines += [f"**First failure: step {md.text(failure.number)} {md.code(failure.label)}**, "
                  f"{marked(failure.status)} ({md.text(MEANING[failure.status])})", "",
                  md.message(failure.error or ""), ""]
    # the kind, and each detail whole, are in each step's evidence: the table only cuts its details to fit
    lines.append(md.table(["status", "step", "duration", "detail"],
                          [[md.Md(r["status"]), r["step"], r["duration"], r["detail"]] for r in summary_rows(result)],
                          whole_below=False))
    if result.pack is not None:
        pack = result.pack
        where: list[tuple[str, Any]] = [("folder", md.code(pack.folder)),
                                        ("manifest SHA-256", md.code(pack.manifest_sha256))]
        if pack.s3_uri:
            where.append(("uploaded to", md.link(pack.s3_uri, pack.url) if pack.url else md.code(pack.s3_uri)))
        lines += ["", "### Evidence pack", "", md.facts(where)]
    if result.evidence_error:  # the run proves nothing without it (the CLI exits 4)
        lines += ["", md.Md(f"**No evidence**: {md.text(result.evidence_error)}")]
    if result.notice is not None:
        sent = result.notice
        lines += ["", md.Md("**Slack notice**: " + (f"sent through {md.text(sent.target)}" if sent.sent
                                                    else f"not sent ({md.text(sent.reason)})"))]
    if result.audit:
        lines += ["", "### Who ran it, where", "", md.facts(audit_facts(result.audit))]
    if history:
        lines += [""] + _history_markdown(history)
    if result.variables:
        lines += ["", "Variables:", "", md.bullets(md.Md(f"{md.code(k)} = {md.code(v)}")
                                                   for k, v in result.variables.items())]
    return "\n".join(lines).rstrip("\n") + "\n"
