"""The last runs of a case, read back from the Prefect server: one line per run (verdict, start, duration, failed
step, link), so the case's report answers "when did this start failing?".

The runs are found through the case's keyed summary table (``case-<slug>``): each run leaves one version of it,
holding every step's status. Reading the history never fails a case: on any error it is simply left out.

A suite reads the history of all its cases once, before they start (:func:`read_histories`: a request per 200
runs, not two per case), and hands it to each case's run (:data:`SUITE_HISTORY`); a case then adds its own run.
"""

from __future__ import annotations

import json
import logging
import re
from contextvars import ContextVar
from typing import Any, Callable

from tasks.kit.step import format_duration

#: how many runs the case report shows
HISTORY_RUNS = 10
_PASSED = "passed"
#: the words of a step's status cell that do not fail the case (a warned step passes with warnings)
_OK_WORDS = (_PASSED, "warned")
#: the case's duration at the end of its summary table's description ("FAILED · Orders ingestion (2.9 s)")
_OWN_DURATION = re.compile(r"\(([0-9][^()]*)\)\s*$")
#: the most objects Prefect's API returns for one read
PAGE = 200
#: the last runs of every case of the running suite by summary key, read once before its cases start (set by the
#: suite in each case's context); None: a case reads its own
SUITE_HISTORY: ContextVar[dict[str, list[dict[str, Any]]] | None] = ContextVar("pipeline_test_suite_history",
                                                                               default=None)


def first_failed(steps: list[Any]) -> dict[str, Any] | None:
    """The first row of a case's summary table whose step failed the case (not passed, not warned)."""
    return next((s for s in steps if isinstance(s, dict)
                 and not any(word in str(s.get("status", "")) for word in _OK_WORDS)), None)


def history_rows(artifacts: list[Any], runs: dict[str, Any], url_for: Callable[[str], str | None]
                 ) -> list[dict[str, Any]]:
    """The history, newest first, from the summary table's versions and their flow runs (by id)."""
    rows = []
    for artifact in artifacts:
        run_id = str(artifact.flow_run_id) if artifact.flow_run_id else None
        try:
            steps = json.loads(artifact.data) if isinstance(artifact.data, str) else list(artifact.data or [])
        except ValueError:
            steps = []
        failed = first_failed(steps)
        run = runs.get(run_id) if run_id else None
        started = getattr(run, "start_time", None) or artifact.created
        took = getattr(run, "total_run_time", None)
        # the case's own duration, as its report said it (the table's description ends with it): one source, not
        # the flow run's, which also counts Prefect's start and end
        own = _OWN_DURATION.search(str(getattr(artifact, "description", "") or ""))
        rows.append({
            "flow_run_id": run_id,
            "status": "failed" if failed else _PASSED,
            "started": started.strftime("%Y-%m-%d %H:%M:%S UTC") if started else None,
            "duration": own.group(1) if own else format_duration(took.total_seconds()) if took else None,
            "failed_step": failed.get("step") if failed else None,
            "url": url_for(run_id) if run_id else None,
        })
    return rows


def flow_run_url(run_id: str) -> str | None:
    """The flow run's page in the Prefect UI, when a UI URL is configured."""
    from prefect.utilities.urls import url_for

    url = url_for("flow-run", obj_id=run_id)
    return url if url and url.startswith("http") else None


def read_history(key: str, limit: int = HISTORY_RUNS, logger: logging.Logger | logging.LoggerAdapter | None = None
                 ) -> list[dict[str, Any]]:
    """The last ``limit`` runs that left the summary table ``key``, newest first ([] when the server cannot say)."""
    try:
        from prefect.client.orchestration import get_client
        from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey, FlowRunFilter, FlowRunFilterId
        from prefect.client.schemas.sorting import ArtifactSort

        with get_client(sync_client=True) as client:
            artifacts = client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key])),
                                              sort=ArtifactSort.CREATED_DESC, limit=limit)
            ids = [a.flow_run_id for a in artifacts if a.flow_run_id]
            found = client.read_flow_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=ids))) if ids else []
        return history_rows(artifacts, {str(r.id): r for r in found}, flow_run_url)
    except Exception as exc:  # the history is a convenience: never a reason to fail
        if logger is not None:
            logger.warning("Could not read the case's last runs from the Prefect server: %s", exc)
        return []


def read_histories(keys: list[str], limit: int = HISTORY_RUNS,
                   logger: logging.Logger | logging.LoggerAdapter | None = None) -> dict[str, list[dict[str, Any]]]:
    """The last runs of many cases at once (a suite's, before they start): ``limit`` per key, newest first, from
    the newest ``limit`` × len(keys) versions of their summary tables (cases of one suite run about as often).
    A request per :data:`PAGE` versions, and per PAGE flow runs. {} for every key when the server cannot say."""
    out: dict[str, list[dict[str, Any]]] = {key: [] for key in keys}
    if not keys:
        return out
    try:
        from prefect.client.orchestration import get_client
        from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey, FlowRunFilter, FlowRunFilterId
        from prefect.client.schemas.sorting import ArtifactSort

        wanted = limit * len(keys)
        artifacts: list[Any] = []
        with get_client(sync_client=True) as client:
            while len(artifacts) < wanted:
                page = client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=keys)),
                                             sort=ArtifactSort.CREATED_DESC, limit=min(PAGE, wanted - len(artifacts)),
                                             offset=len(artifacts))
                artifacts += page
                if len(page) < PAGE:
                    break
            ids = list(dict.fromkeys(a.flow_run_id for a in artifacts if a.flow_run_id))
            runs: dict[str, Any] = {}
            for start in range(0, len(ids), PAGE):
                chunk = ids[start:start + PAGE]
                runs.update((str(r.id), r) for r in client.read_flow_runs(
                    flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=chunk)), limit=len(chunk)))
        for artifact in artifacts:
            if artifact.key in out and len(out[artifact.key]) < limit:
                out[artifact.key] += history_rows([artifact], runs, flow_run_url)
    except Exception as exc:  # the history is a convenience: never a reason to fail
        if logger is not None:
            logger.warning("Could not read the cases' last runs from the Prefect server: %s", exc)
    return out


def case_history(key: str, this_run: dict[str, Any], limit: int = HISTORY_RUNS,
                 logger: logging.Logger | logging.LoggerAdapter | None = None) -> list[dict[str, Any]]:
    """A case's last runs for its report, this run first: from the suite's read when it runs in a suite (no
    request), else read now (its summary table for this run is already on the server)."""
    suite = SUITE_HISTORY.get()
    if suite is None:
        return read_history(key, limit, logger)
    return [this_run, *(r for r in suite.get(key, []) if r.get("flow_run_id") != this_run.get("flow_run_id"))
            ][:limit]


def this_run_url() -> str | None:
    """This flow run's page in the Prefect UI, when a UI URL is configured (not with a temporary server)."""
    from prefect.runtime import flow_run

    return flow_run_url(flow_run.id) if flow_run.id else None
