"""What the Prefect UI shows of a run, read back as the UI reads it: step cards in step order in the Artifacts tab,
skipped steps as task runs with their reason, and the deployment a subflow run came from."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path
from typing import Any

import pytest

from flows.evidence.results import result_of
from flows.pipeline_test import pipeline_test
from flows.run.engine import SKIPPED
from tests.helpers import UPLOAD, read_task_runs
from tests.helpers import flow_spec as spec

pytestmark = pytest.mark.usefixtures("prefect_harness")


def tab_artifacts(flow_run_id: str) -> list[Any]:
    """A flow run's Artifacts tab, as Prefect 3.8.8's UI asks for it: its artifacts but results, with no sort
    (the server's default, ID_DESC)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId, ArtifactFilterType
    from prefect.client.schemas.sorting import ArtifactSort

    async def go() -> list[Any]:
        async with get_client() as client:
            return await client.read_artifacts(
                artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id]),
                                               type=ArtifactFilterType(not_any_=["result"])),
                sort=ArtifactSort.ID_DESC)

    return asyncio.run(go())


def test_step_cards_in_step_order_and_a_skipped_step_is_a_task_run_with_its_reason(s3, data_dir: Path) -> None:
    s3.create_bucket(Bucket="flow-bucket")
    s3.put_object(Bucket="flow-bucket", Key="there.csv", Body=b"1")
    checks = [{"kind": "expect_objects", "name": name, "bucket": "{{ bucket }}", "keys": ["there.csv"]}
              for name in ("first", "second", "third")]
    missing = {"kind": "expect_objects", "name": "never", "bucket": "{{ bucket }}", "keys": ["nope.csv"],
               "wait": {"timeout": 0.3}}
    after = {"kind": "expect_objects", "name": "after", "bucket": "{{ bucket }}", "keys": ["there.csv"]}
    state = pipeline_test(spec=spec(UPLOAD, *checks, missing, after, name="Ordered case"), base_dir=str(data_dir),
                          return_state=True)
    result = result_of(state)
    assert state.is_failed() and result is not None
    tab = tab_artifacts(result.flow_run_id)
    cards = [a.description for a in tab if a.type == "markdown" and a.key is None and not a.task_run_id]
    assert cards == ["passed · step 1 land", "passed · step 2 first", "passed · step 3 second",
                     "passed · step 4 third", "FAILED · step 5 never", "skipped · step 6 after",
                     "passed · step end cleanup"]  # no card left pending
    links = [a.description for a in tab if a.task_run_id]  # link cards, with their step's task run, numbered
    assert "step 1 land · " in " ".join(links) and all(re.match(r"step \d \S+ · ", d) for d in links), links
    card = next(a.data for a in tab if a.description == "skipped · step 6 after")
    assert "### Not run" in card and "step 5 'never' failed" in card  # the card says why
    skipped = next(t for t in read_task_runs(result.flow_run_id) if t.name == "after")
    assert skipped.state.type.value == "CANCELLED" and skipped.state.name == SKIPPED
    assert "not run: step 5 'never' failed" in skipped.state.message
    assert result.steps[5].status == "skipped" and result.steps[5].summary == "not run: step 5 'never' failed"
    # the key's history page lists each version by its flow run's name: the verdict comes first in it
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        assert client.read_flow_run(result.flow_run_id).name.startswith("❌ FAILED · ordered-case-")


def test_a_subflow_run_names_the_deployment_of_its_parent() -> None:
    from prefect import flow
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import TaskRunCreate  # noqa: F401 - the client's create_task_run builds it

    from flows.evidence.audit import deployment_of

    @flow(name="ui-order-parent")
    def parent() -> None:
        pass

    with get_client(sync_client=True) as client:
        flow_id = client.create_flow(parent)
        deployment_id = client.create_deployment(flow_id=flow_id, name="nightly-demo")
        root = client.create_flow_run_from_deployment(deployment_id)
        assert deployment_of(client, root) == ("nightly-demo", root.work_pool_name)
        from prefect import task

        @task(name="case")
        def case_task() -> None:
            pass

        link = client.create_task_run(case_task, flow_run_id=root.id, dynamic_key="0")
        child = client.create_flow_run(parent, parent_task_run_id=link.id)
        assert child.deployment_id is None
        assert deployment_of(client, client.read_flow_run(child.id))[0] == "nightly-demo"
        alone = client.create_flow_run(parent)
        assert deployment_of(client, alone) == (None, None)


def test_a_slow_start_says_it_is_still_under_way() -> None:
    import threading

    from flows.demo import progress

    said: list[str] = []
    twice = threading.Event()

    def say(line: str) -> None:
        said.append(line)
        if len(said) >= 2:
            twice.set()

    with progress(say, "starting the local AWS emulator", every=0.01):
        assert twice.wait(30)
    count = len(said)
    assert said[0].startswith("... still starting the local AWS emulator (") and said[0].endswith(" s so far)")
    with progress(say, "never said", every=None):
        pass
    assert len(said) == count  # nothing after the block, nothing when asked for none
