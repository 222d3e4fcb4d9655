"""junit.xml of the evidence pack: one testcase per step, for Jenkins, GitLab and GitHub."""

from __future__ import annotations

import json
import re
import xml.etree.ElementTree as ET
from typing import Any

from flows.evidence.pack.files import _utc
from flows.evidence.report import CaseReport, Counts
from flows.evidence.results import CaseResult, StepResult
from tasks.kit.status import STATUS

_XML_INVALID = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


def _x(text: Any) -> str:
    """Text that XML 1.0 can carry (control characters dropped)."""
    return _XML_INVALID.sub("", "" if text is None else str(text))


def _system_out(s: StepResult) -> str:
    lines = [s.summary] if s.summary else []
    lines += [f"WARNING: {w}" for w in s.warnings]  # a warned step passes: its warnings go here, no <failure>
    if s.request_ids:
        lines.append("AWS request ids: " + ", ".join(s.request_ids))
    if s.details:
        lines.append(json.dumps(s.details, indent=2, ensure_ascii=False, default=str))
    return "\n".join(lines)


def _testcase(result: CaseResult, s: StepResult) -> ET.Element:
    case = ET.Element("testcase", {"name": _x(f"{s.number} {s.label}"), "classname": _x(result.case),
                                   "time": f"{s.duration_s:.3f}"})
    tag = STATUS[s.status].junit
    if tag == "skipped":
        ET.SubElement(case, "skipped", {"message": _x(s.summary or "not run")})
    elif tag:
        child = ET.SubElement(case, tag, {"message": _x((s.error or s.status)[:2000]),
                                          "type": _x(s.error_code or s.status)})
        child.text = _x(s.error or "")
    out = _system_out(s)
    if out:
        ET.SubElement(case, "system-out").text = _x(out)
    return case


def junit_totals(counts: Counts) -> dict[str, int]:
    """``tests``, ``failures``, ``errors`` and ``skipped`` of steps counted by status (each status counts as its
    JUnit element in tasks/kit/status.py)."""
    by_status = counts.to_json()
    totals = {"tests": counts.total, "failures": 0, "errors": 0, "skipped": 0}
    for status, look in STATUS.items():
        if look.junit:
            key = {"failure": "failures", "error": "errors"}.get(look.junit, look.junit)
            totals[key] += int(by_status.get(status) or 0)
    return totals


def testsuite(result: CaseResult, counts: Counts, spec_sha256: str | None = None,
              case_sha256: str | None = None) -> ET.Element:
    """A case's <testsuite>: one <testcase> per step (classname = the case); a suite's junit.xml has one per case."""
    totals = {name: str(n) for name, n in junit_totals(counts).items()} | {"time": f"{result.duration_s:.3f}"}
    suite = ET.Element("testsuite", {"name": _x(result.case), **totals,
                                     "timestamp": _utc(result.started_at).strftime("%Y-%m-%dT%H:%M:%S")})
    props = ET.SubElement(suite, "properties")
    for name, value in (("status", result.status), ("verdict", result.verdict), ("warnings", str(result.warnings)),
                        ("flow_run_id", result.flow_run_id), ("ui_url", result.ui_url),
                        ("spec_sha256", spec_sha256), ("case_sha256", case_sha256)):
        if value:
            ET.SubElement(props, "property", {"name": name, "value": _x(value)})
    for s in result.steps:
        suite.append(_testcase(result, s))
    return suite


def junit_xml(result: CaseResult, report: CaseReport) -> str:
    """junit.xml: one <testsuite> for the case, one <testcase> per step (classname = the case)."""
    c = report.counts
    totals = {name: str(n) for name, n in junit_totals(c).items() if name != "skipped"}
    # <testsuites> takes no "skipped" in the JUnit schema of Jenkins' xUnit plugin (junit-10.xsd); <testsuite> does
    root = ET.Element("testsuites", {"name": "pipeline-test", **totals, "time": f"{result.duration_s:.3f}"})
    root.append(testsuite(result, c, report.spec.sha256, report.spec.case_sha256))
    ET.indent(root)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"
