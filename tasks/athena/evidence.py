"""The evidence of a finished query: summary, details, markdown (SQL, facts, preview, checks), console link."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from tasks.athena.checks import CheckResult
from tasks.athena.client import QueryRun, state_of
from tasks.athena.cost import show_bytes
from tasks.athena.values import ResultDigest, json_safe, result_digest
from tasks.kit import markdown
from tasks.kit.console_links import links_for, literal
from tasks.kit.files import HashedItem, StepFile
from tasks.kit.step import StepOutcome, format_bytes

if TYPE_CHECKING:
    from tasks.athena.reconcile import ReconcileReport
    from tasks.athena.step import AthenaQueryStep

__all__ = ["ResultDigest", "ResultFacts", "console_path", "preview_table", "query_outcome", "reconcile_markdown",
           "result_columns", "result_digest"]


#: the widest code line the Prefect UI shows whole at 1400 px (longer SQL lines are broken for display)
CODE_WIDTH = 96


def console_path(query_id: str) -> str:
    """The query in the Athena console's history (a path for :func:`tasks.kit.console_links.links_for`)."""
    return "athena/home?region={region}#/query-editor/history/" + literal(query_id)


def preview_table(rows: list[dict[str, Any]], columns: list[str]) -> str:
    """Result rows as a markdown table (NULL for a null; every name and value escaped)."""
    if not columns:
        return "_(no columns)_"
    cells = [["NULL" if row.get(c) is None else json_safe(row.get(c)) for c in columns] for row in rows]
    shown = markdown.fitting_columns(columns, cells)  # the UI does not wrap cells: the columns that fit, whole
    table: str = markdown.table(columns[:shown], [row[:shown] for row in cells])
    if shown < len(columns):
        rest = ", ".join(markdown.code(c) for c in columns[shown:])
        table += markdown.Md(f"\n\n{len(columns) - shown} more column(s) not shown here: {rest} (every column is "
                             "in the step's preview table and in the evidence pack)")
    return table


def _facts(run: QueryRun, step: AthenaQueryStep, row_count: int) -> dict[str, Any]:
    """The query's facts for details and evidence (Athena's statistics, in ms and bytes)."""
    stats = run.execution.get("Statistics", {})
    return {
        "query_id": run.query_id,
        "workgroup": run.execution.get("WorkGroup") or step.workgroup,
        "catalog": step.catalog,
        "database": step.database,
        "state": state_of(run.execution),
        "statement_type": run.execution.get("StatementType"),
        "output_location": run.execution.get("ResultConfiguration", {}).get("OutputLocation"),
        "engine_time_ms": stats.get("EngineExecutionTimeInMillis"),
        "queue_time_ms": stats.get("QueryQueueTimeInMillis"),
        "total_time_ms": stats.get("TotalExecutionTimeInMillis"),
        "data_scanned_bytes": stats.get("DataScannedInBytes"),
        "waited_s": round(run.elapsed, 3),
        "row_count": row_count,
        "result_source": run.result.source,
    }


def _seconds(facts: dict[str, Any]) -> float:
    """Athena's total time when it reports one, else how long we waited."""
    total = facts.get("total_time_ms")
    return total / 1000 if total else float(facts["waited_s"])


def _summary(facts: dict[str, Any], checks: list[CheckResult]) -> str:
    """``12 rows, 3 checks passed (1.4 s, 2.1 KB scanned)``."""
    rows = facts["row_count"]
    text = f"{rows} row{'s' if rows != 1 else ''}"
    passed = sum(c.passed for c in checks)
    if checks:
        text += f", {passed} check{'s' if passed != 1 else ''} passed"
        if passed < len(checks):
            text += f", {len(checks) - passed} failed"
    return text + f" ({_seconds(facts):.1f} s, {format_bytes(facts['data_scanned_bytes'])} scanned)"


def _ms(value: Any) -> str:
    return "–" if value is None else f"{value / 1000:.1f} s"


def _markdown(sql: str, step: AthenaQueryStep, facts: dict[str, Any], run: QueryRun,
              preview: list[dict[str, Any]], checks: list[CheckResult]) -> str:
    """The evidence body: SQL, facts, preview rows, checks."""
    fact_rows = [
        ("Query id", markdown.code(facts["query_id"])),
        ("Workgroup", facts["workgroup"]),
        ("Catalog / database", f"{facts['catalog']} / {facts['database'] or '–'}"),
        ("State", facts["state"]),
        ("Engine time", _ms(facts["engine_time_ms"])),
        ("Queue time", _ms(facts["queue_time_ms"])),
        ("Data scanned", format_bytes(facts["data_scanned_bytes"]) if not step.max_scanned_bytes else
         f"{show_bytes(facts['data_scanned_bytes'] or 0)}, at most {show_bytes(step.max_scanned_bytes)}"),
        ("Rows", f"{facts['row_count']} (read from {facts['result_source']})"),
    ]
    if step.parameters:
        fact_rows.insert(1, ("Parameters", markdown.Md(", ".join(markdown.cell(markdown.code(p))
                                                                 for p in step.parameters))))
    parts = []
    if checks:  # the readable part first: verdict, check, expected, actual
        parts.append("**Checks**\n\n" + markdown.table(["verdict", "check", "expected", "actual"],
                                                        [c.row() for c in checks]))
    parts += [
        markdown.code_block(sql.strip(), "sql", wrap=CODE_WIDTH),
        markdown.facts(fact_rows),
        f"**Preview** ({len(preview)} of {facts['row_count']} rows)\n\n"
        + preview_table(preview, run.result.column_names),
    ]
    return "\n\n".join(parts)


_DIFF_TITLES = {"missing": "Rows missing", "unexpected": "Rows unexpected", "differences": "Values that differ"}


def reconcile_markdown(report: ReconcileReport) -> str:
    """The reconciliation's counts and the first differences of each kind."""
    counts = report.counts
    parts = ["**Reconciliation**\n\n" + markdown.table(["Expected rows", "Result rows", "Matched", "Missing",
                                                          "Unexpected", "Differing values"],
                                                         [[report.expected, report.actual, report.matched,
                                                           counts["missing"], counts["unexpected"],
                                                           counts["differences"]]])]
    for kind, title in _DIFF_TITLES.items():
        first = report.first[kind]
        if not first:
            continue
        more = f" (first {len(first)} of {counts[kind]}; all in the evidence pack)" if counts[kind] > len(first) else ""
        parts.append(f"**{title}**{more}\n\n" + preview_table(first, list(first[0])))
    return "\n\n".join(parts)


@dataclass
class ResultFacts:
    """What the evidence needs of a result read row by row: the row count, the preview and the digest."""

    row_count: int
    preview: list[dict[str, Any]]
    sha256: str


def result_columns(run: QueryRun) -> list[dict[str, str]]:
    """The result's columns as the digest and the details show them."""
    return [{"name": c.name, "type": c.type} for c in run.result.columns]


def query_outcome(sql: str, step: AthenaQueryStep, run: QueryRun, checks: list[CheckResult],
                  region: str | None, endpoint: str, reconciled: ReconcileReport | None = None,
                  streamed: ResultFacts | None = None) -> StepOutcome:
    """Summary, details, evidence, preview table and console link of a finished query (its rows from
    ``run.result.rows``, or, when the rows were streamed into checks, from ``streamed``)."""
    columns = result_columns(run)
    if streamed is None:  # rows in memory; a hand-made result (no digest read with it) is digested from its values
        digest = run.result.sha256 or result_digest(
            run.result.columns, [[None if row[c] is None else str(json_safe(row[c])) for c in run.result.column_names]
                                 for row in run.result.rows])
        streamed = ResultFacts(len(run.result.rows), run.result.rows[: step.preview_rows], digest)
    facts = _facts(run, step, streamed.row_count)
    preview = streamed.preview
    safe_preview = json_safe(preview)
    digest = streamed.sha256
    details = {
        "sql": sql,
        "parameters": list(step.parameters),
        **facts,
        "columns": columns,
        "result_sha256": digest,
        "preview": safe_preview,
        "checks": [c.to_dict() for c in checks],
    }
    body = _markdown(sql, step, facts, run, preview, checks)
    files: list[StepFile] = []
    if reconciled is not None:
        details["reconcile"] = reconciled.to_dict()
        body += "\n\n" + reconcile_markdown(reconciled)
        files = [StepFile.of(path, f"reconcile/{path.name}") for path in reconciled.files.values()]
    links = links_for(endpoint, region, console_path(run.query_id), f"Athena query {run.query_id}") if region else []
    return StepOutcome(
        summary=_summary(facts, checks),
        details=details,
        markdown=body,
        links=links,
        tables={"preview": safe_preview},
        request_ids=list(run.request_ids),
        checks=[c.record() for c in checks],
        hashed_items=[HashedItem.query_result(query_id=run.query_id, location=facts["output_location"],
                                              rows=facts["row_count"], sha256=digest)],
        files=files,
    )
