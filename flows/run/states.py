"""The Prefect states of runs that did not end as tests: a run that could not start, and a run found dead.

- **Could not start** (a dead run's changes not yet recovered, locks not obtained, no AWS credentials, ...):
  the flow run ends **Cancelled, named NotRun** (:func:`not_run`). Not Failed: nothing ran and nothing was
  changed, so it is not a test that failed, and the UI shows it grey, not red; Prefect's Cancelled means a run
  that did not go to its end by decision, which is what a refusal is. Prefect runs no cancellation hook for a
  state the flow returns, and the state still carries :class:`~flows.run.recover.CouldNotRun` (the CLI's exit 3; a
  suite counts the case "not run"). An artifact gives the reason and what to do (:func:`not_run_markdown`).
- **Found dead** (killed: its locks freed by the next run, or its changes undone by ``recover``): its flow run,
  left Running forever by the killed process, is set to **Crashed** with a message naming who found it and what
  was done (:func:`mark_crashed`), so the run's page tells the truth.
"""

from __future__ import annotations

import logging
from typing import Any

from prefect.states import Cancelled, Crashed, State

from tasks.kit import markdown as md
from tasks.kit.status import STATUS

#: the name of a could-not-start run's state
NOT_RUN = "NotRun"


def not_run(message: str, data: Any) -> State:
    """The end of a flow run whose case could not start: Cancelled, named NotRun, carrying ``data``."""
    return Cancelled(name=NOT_RUN, message=f"could not run, nothing was changed: {message}", data=data)


def not_run_markdown(case: str, message: str) -> str:
    """The could-not-start artifact: what stopped the case, that nothing was changed, and what to do."""
    return "\n".join([
        f"# {STATUS['not run'].mark} Not run: {md.text(case)}", "",
        "The case **could not start**: no step ran and nothing was changed in AWS. This is not a test that "
        "failed; run the case again once the reason below is dealt with.", "",
        "**Why**", "", md.message(message), "",
        "**What to do**", "",
        md.bullets([
            md.Md(f"a dead run's changes not yet put back: {md.code('python -m flows.pipeline_test recover')} (or "
                  f"run the case with {md.code('--recover')})"),
            md.Md(f"locks held by another run: wait for it, or raise the case's {md.code('lock_timeout')}"),
            md.Md(f"a permission missing (the preflight): grant it, see {md.code('--iam-policy')} in docs/aws.md"),
            "no AWS credentials or the Prefect API unreachable: see docs/running.md (Exit codes)",
        ]),
    ])


def mark_crashed(flow_run_id: str, found_by: str, what: str, logger: logging.Logger | logging.LoggerAdapter | None
                 = None) -> bool:
    """Set a dead run's flow run, if this Prefect server knows it and it has not ended, to Crashed with a message
    naming who found it and ``what`` was done. True when it was set; never raises (a run another server ran is
    not found here)."""
    try:
        from prefect.client.orchestration import get_client

        with get_client(sync_client=True) as client:
            run = client.read_flow_run(flow_run_id)  # type: ignore[arg-type]
            if run.state is not None and run.state.is_final():
                return False
            client.set_flow_run_state(flow_run_id, Crashed(
                message=f"found dead by {found_by}: {what}"), force=True)
        if logger is not None:
            logger.info("Marked the dead run %s Crashed in Prefect", flow_run_id)
        return True
    except Exception as exc:
        if logger is not None:
            logger.debug("Could not mark the dead run %s Crashed: %s", flow_run_id, exc)
        return False
