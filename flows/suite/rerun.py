"""Re-running what failed: ``--rerun-failed PACK`` reads a suite's evidence pack (:mod:`flows.suite.pack`), verified
first against its manifest, and names the cases (and matrix rows) that failed or could not run in it; the suite
then runs only those, as a new suite run that names the pack and its manifest's SHA-256 (``rerun_of``). No Prefect,
no boto3.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from flows.evidence.pack.verify import MANIFEST, manifest_sha256, verify
from flows.evidence.report import REPORT_JSON, SCHEMA_VERSION, SUITE_REPORT_SCHEMA, RerunOf, read_suite_report
from flows.spec.load import SpecError

#: the verdicts a re-run runs again
RERUN_VERDICTS = ("failed", "not run")


@dataclass
class Rerun:
    """What a suite pack says to re-run: the suite (its name and file or folder as run) and the link to the pack."""

    suite: str
    source: str | None
    link: RerunOf


def read_rerun(pack: Path) -> Rerun:
    """The failed and not-run cases of a suite pack; SpecError (exit 2) when it is not an intact suite pack."""
    where = f"--rerun-failed {pack}"
    if not pack.is_dir():
        raise SpecError(where, ["not a folder (give the suite's evidence pack folder, which holds manifest.json)"])
    problems = verify(pack)
    if problems:
        raise SpecError(where, ["the pack is not intact, so what failed in it cannot be trusted:", *problems[:20]])
    manifest = json.loads((pack / MANIFEST).read_text(encoding="utf-8"))
    if manifest.get("kind") != "suite":
        raise SpecError(where, ["not a suite's evidence pack (a case's pack: run that case again by its spec file)"])
    try:
        report = read_suite_report(pack)
    except OSError as exc:
        raise SpecError(where, [f"{REPORT_JSON}: unreadable ({exc})"]) from None
    except ValueError as exc:  # pydantic's ValidationError too: not JSON, or not a suite report of this version
        raise SpecError(where, [f"{REPORT_JSON}: not a suite report of schema {SUITE_REPORT_SCHEMA!r} version "
                                f"{SCHEMA_VERSION} ({str(exc).splitlines()[0]})"]) from None
    names = [c.case for c in report.cases if c.status in RERUN_VERDICTS]
    link = RerunOf(pack=str(pack.resolve()), manifest_sha256=manifest_sha256(pack),
                   flow_run_id=report.flow_run_id, cases=names)
    return Rerun(suite=report.suite, source=report.source, link=link)
