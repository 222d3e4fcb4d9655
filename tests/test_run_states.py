"""A run found dead is Crashed in Prefect, not Running forever (flows/run/states.py)."""

from __future__ import annotations

import logging

import pytest
from prefect import flow
from prefect.client.orchestration import get_client
from prefect.states import Completed, Running

from flows.run.states import mark_crashed, not_run

pytestmark = pytest.mark.usefixtures("prefect_harness")


@flow(name="run-states-test")
def _a_flow() -> None:
    pass


def _flow_run(state):  # type: ignore[no-untyped-def]
    with get_client(sync_client=True) as client:
        return client.create_flow_run(_a_flow, state=state)


def _state_of(run_id):  # type: ignore[no-untyped-def]
    with get_client(sync_client=True) as client:
        return client.read_flow_run(run_id).state


def test_a_dead_run_left_running_is_marked_crashed_with_who_found_it_and_what_was_done() -> None:
    run = _flow_run(Running())
    assert mark_crashed(str(run.id), "recover (host h, pid 1)", "2 change(s) put back", logging.getLogger("t"))
    state = _state_of(run.id)
    assert state.type.value == "CRASHED"
    assert state.message == "found dead by recover (host h, pid 1): 2 change(s) put back"


def test_a_run_that_ended_or_that_another_server_ran_is_left_alone() -> None:
    run = _flow_run(Completed())
    assert not mark_crashed(str(run.id), "recover", "nothing")
    assert _state_of(run.id).type.value == "COMPLETED"
    assert not mark_crashed("00000000-0000-0000-0000-000000000000", "recover", "nothing")  # never raises


def test_a_run_that_could_not_start_is_cancelled_named_not_run() -> None:
    state = not_run("locks not obtained", ValueError("x"))
    assert state.type.value == "CANCELLED" and state.name == "NotRun"
    assert state.message == "could not run, nothing was changed: locks not obtained"
